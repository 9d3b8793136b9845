"""The HTTP request-size guard in front of a real tritonserver (vidtrt.serving.http_guard): bodies over the limit get
413 whatever their URL, framing or content type, and the server keeps serving.

Without the guard, a body of ~4 MB sent as application/x-www-form-urlencoded (urllib's and curl -d's default)
to any URL kills the bundled tritonserver 2.51 with SIGSEGV (libevhtp parses it into stack buffers), and so
does an /infer input with a huge shape in a request of a few hundred bytes.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from test_server_launcher import make_repo

from vidtrt.serving.server import DEFAULT_MAX_REQUEST_BYTES, TritonServer

pytestmark = pytest.mark.server

LIMIT = DEFAULT_MAX_REQUEST_BYTES
MiB = 2**20


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    with TritonServer(make_repo(root / "repo"), log_file=root / "server.log", exit_timeout_s=3) as server:
        yield server


def post(srv: TritonServer, path: str, body: bytes, content_type: str | None = None) -> tuple[int, dict]:
    """POST with urllib: without ``content_type`` it sends application/x-www-form-urlencoded."""
    req = urllib.request.Request(f"http://{srv.http_url}{path}", data=body,
                                 headers={"Content-Type": content_type} if content_type else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def identity_body(size: int) -> bytes:
    """A valid request for the identity model, exactly ``size`` bytes long (its string input pads it)."""
    def body(pad: int) -> bytes:
        return json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
                                      {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["a" * pad]}]}).encode()
    out = body(size - len(body(0)))
    assert len(out) == size
    return out


def padded_json(size: int) -> bytes:
    """Valid JSON of exactly ``size`` bytes (trailing whitespace): it reaches Triton, which refuses it."""
    return b'{"inputs": []}'.ljust(size)


def assert_serving(srv: TritonServer) -> None:
    assert srv.process.poll() is None, srv.log_summary()
    assert srv.is_ready()
    status, answer = post(srv, "/v2/models/identity/infer", identity_body(200), "application/json")
    assert status == 200 and answer["outputs"][0]["data"] == [2.0, 4.0], answer


def assert_413(status: int, answer: dict, size: int | None) -> None:
    assert status == 413, (status, answer)
    assert f"limit of {LIMIT} bytes" in answer["error"] and "--max-request-bytes" in answer["error"]
    if size is not None:
        assert f"of {size} bytes" in answer["error"]


def test_the_limit_is_exact_and_bodies_up_to_it_reach_triton(srv):
    status, answer = post(srv, "/v2/models/nope/infer", padded_json(LIMIT))
    assert status == 404 and "unknown model" in answer["error"]
    assert_413(*post(srv, "/v2/models/nope/infer", b"x" * (LIMIT + 1)), LIMIT + 1)
    for content_type in (None, "application/json"):
        body = identity_body(LIMIT)
        status, answer = post(srv, "/v2/models/identity/infer", body, content_type)
        assert status == 200 and answer["outputs"][1]["data"][0] == json.loads(body)["inputs"][1]["data"][0] + "!"
        assert_413(*post(srv, "/v2/models/identity/infer", identity_body(LIMIT + 1), content_type), LIMIT + 1)
    assert_serving(srv)


@pytest.mark.parametrize("size", [5 * MiB, 40 * MiB])
@pytest.mark.parametrize("kind, content_type", [("raw", None), ("json", None), ("json", "application/json"),
                                                ("raw", "application/octet-stream")])
@pytest.mark.parametrize("model", ["identity", "nope"])
def test_oversized_bodies_are_413_and_the_server_keeps_serving(srv, size, kind, content_type, model):
    body = b"x" * size if kind == "raw" else identity_body(size)
    assert_413(*post(srv, f"/v2/models/{model}/infer", body, content_type), size)
    assert_serving(srv)


def test_chunked_bodies_are_counted(srv):
    def chunked(path: str, body: bytes) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)
        try:
            conn.putrequest("POST", path)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.putheader("Content-Type", "application/x-www-form-urlencoded")
            conn.endheaders()
            for i in range(0, len(body), 65536):
                piece = body[i:i + 65536]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    for size in (LIMIT + 1, 5 * MiB):
        assert_413(*chunked("/v2/models/nope/infer", b"x" * size), None)
    status, answer = chunked("/v2/models/identity/infer", identity_body(1000))
    assert status == 200 and answer["outputs"][0]["data"] == [2.0, 4.0]
    assert_serving(srv)


def test_expect_100_continue_over_the_limit_is_413_before_any_body(srv):
    """curl sends ``Expect: 100-continue`` before a large body: the answer is 413 at once, not "continue"."""
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=10) as s:
        s.sendall(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\n\r\n" % (50 * MiB))
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert_serving(srv)


def test_a_shape_larger_than_the_body_is_400(srv):
    """Triton 2.51 allocates an input's buffer from its JSON shape before it looks at the data: a shape of
    10^12 elements (std::bad_alloc, SIGABRT) or 2^62 (SIGSEGV) in a request of 150 bytes kills it."""
    for shape in ([10**12], [2**62], [2**31, 2**31]):
        body = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": [1.0]},
                                      {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode()
        status, answer = post(srv, "/v2/models/identity/infer", body, "application/json")
        assert status == 400 and f"more elements than a request body of {len(body)} bytes" in answer["error"]
    assert_serving(srv)


@pytest.mark.parametrize("model", ["identity", "nope"])
def test_an_infer_body_that_is_not_json_is_400_not_a_server_error(srv, model):
    """tritonserver 2.51 answers a body that does not parse with 500, as if it had failed itself."""
    for body in (b'{"inputs": [', b"x" * 1000, b"[" * 100_000):
        status, answer = post(srv, f"/v2/models/{model}/infer", body, "application/json")
        assert status == 400 and "JSON" in answer["error"], (body[:20], status, answer)
    assert_serving(srv)


def test_form_bodies_cannot_crash_tritonserver_over_a_raised_limit(tmp_path):
    """With the limit raised past the crash threshold, form-encoded bodies reach Triton without their content
    type, so libevhtp's form parser never runs on them."""
    with TritonServer(make_repo(tmp_path / "repo"), log_file=tmp_path / "server.log", exit_timeout_s=3,
                      max_request_bytes=16 * MiB) as server:
        for size in (8 * MiB, 16 * MiB):
            status, answer = post(server, "/v2/models/nope/infer", padded_json(size))
            assert status == 404 and "unknown model" in answer["error"], answer
            time.sleep(0.2)
            assert server.process.poll() is None, server.log_summary()
        status, answer = post(server, "/v2/models/nope/infer", b"x" * (16 * MiB + 1))
        assert status == 413 and f"limit of {16 * MiB} bytes" in answer["error"]
        assert server.is_ready()


def test_grpc_takes_large_messages_without_crashing(srv):
    """gRPC is not behind the guard: tritonserver 2.51 accepts messages up to 2 GiB there (it has no option
    for a lower limit) and answers them normally (1.5 GB measured); 6 MiB, over gRPC's default 4 MiB, show it."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(srv.grpc_url)
    x = grpcclient.InferInput("x", [1], "FP32")
    x.set_data_from_numpy(np.ones(1, np.float32))
    s = grpcclient.InferInput("s", [1], "BYTES")
    s.set_data_from_numpy(np.array([b"a" * (6 * MiB)], np.object_))
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [x, s])
    assert len(client.infer("identity", [x, s]).as_numpy("t")[0]) == 6 * MiB + 1
    client.close()
    assert_serving(srv)
