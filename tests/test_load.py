"""Under load, through the real tritonserver: four streaming clients at once while a fifth sends hostile
requests and a sixth walks away mid-generation. The four get their own, correct videos, the server keeps
serving, the abandoned generation is cancelled (not counted a success), and the whole server's memory
stays flat over 100 more requests of every kind.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from server_metrics import metric, tree_rss

from vidtrt.client import ServerRequestError, VideoClient
from vidtrt.config.request import GenerationRequest
from vidtrt.errors import CancelledError
from vidtrt.export.repository import build_repository
from vidtrt.serving.server import TritonServer

pytestmark = pytest.mark.server

PROMPT = "a cat walks on the grass"
MiB = 2**20


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    repo = build_repository("tiny", root / "repo", max_concurrent_generations=6)
    with TritonServer(repo, log_file=root / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600) as server:
        yield server


@pytest.fixture(scope="module")
def pipe():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    return HunyuanVideoPipeline.from_model("tiny")


def hostile(srv: TritonServer) -> list[int]:
    """Requests that have taken servers down: an oversized form body (urllib's default content type), an
    /infer input whose shape claims 10^12 elements, invalid JSON, a gRPC request with a bad parameter.
    Returns the HTTP status codes."""
    codes = []
    for path, body, ctype in (
        ("/v2/models/hunyuan_video_sync/infer", b"x" * (5 * MiB), None),
        ("/v2/models/nope/infer", b"x" * (5 * MiB), None),
        ("/v2/models/hunyuan_video_sync/infer", json.dumps({"inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [10**12], "data": ["a"]}]}).encode(), "application/json"),
        ("/v2/models/hunyuan_video_sync/infer", b'{"inputs": [', "application/json"),
    ):
        req = urllib.request.Request(f"http://{srv.http_url}{path}", data=body,
                                     headers={"Content-Type": ctype} if ctype else {})
        try:
            codes.append(urllib.request.urlopen(req, timeout=60).status)
        except urllib.error.HTTPError as e:
            codes.append(e.code)
        except (ConnectionError, http.client.HTTPException) as e:  # a guard may close after answering
            codes.append(type(e).__name__)
    with pytest.raises(ServerRequestError) as e:
        VideoClient(srv.grpc_url).run(GenerationRequest(PROMPT, height=65))
    assert e.value.param == "height"
    return codes


def walk_away_http(srv: TritonServer) -> None:
    """Start a long non-streaming generation over HTTP and close the socket without reading the answer."""
    body = json.dumps({"inputs": [
        {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [PROMPT]},
        {"name": "num_inference_steps", "datatype": "INT32", "shape": [1], "data": [40]},
    ]}).encode()
    host, port = srv.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v2/models/hunyuan_video_sync/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.5)


def test_four_streams_survive_hostile_and_vanishing_clients_and_memory_stays_flat(srv, pipe):
    seeds = [21, 22, 23, 24]
    requests = {s: GenerationRequest(PROMPT, seed=s, num_inference_steps=6) for s in seeds}
    expected = {s: pipe.run(r) for s, r in requests.items()}
    results: dict[object, object] = {}
    cancelled_before = metric(srv, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="cancelled")

    def stream(seed):
        try:
            results[seed] = VideoClient(srv.grpc_url).run(requests[seed])
        except Exception as e:  # surfaced by the assertions below
            results[seed] = e

    def vanishing_grpc():
        stop = threading.Event()
        try:
            VideoClient(srv.grpc_url).run(GenerationRequest(PROMPT, seed=5, num_inference_steps=200),
                                          progress=lambda p: p.step >= 2 and stop.set(), cancel=stop)
            results["vanish"] = "finished"
        except CancelledError:
            results["vanish"] = "cancelled"
        except Exception as e:
            results["vanish"] = e

    def attacker():
        try:
            results["hostile"] = hostile(srv)
            walk_away_http(srv)
        except Exception as e:
            results["hostile"] = e

    threads = [threading.Thread(target=stream, args=(s,)) for s in seeds]
    threads += [threading.Thread(target=vanishing_grpc), threading.Thread(target=attacker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    for s in seeds:
        assert not isinstance(results[s], Exception), results[s]
        np.testing.assert_array_equal(results[s].frames, expected[s])
    assert results["vanish"] == "cancelled"
    codes = results["hostile"]
    assert not isinstance(codes, Exception), codes
    assert all(isinstance(c, int) and 400 <= c < 500 for c in codes), codes
    assert srv.is_ready() and srv.process.poll() is None
    deadline = time.monotonic() + 30
    while metric(srv, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="cancelled") \
            <= cancelled_before:
        assert time.monotonic() < deadline, "the abandoned stream was never cancelled server-side"
        time.sleep(0.2)

    # 100 more requests of every kind: streaming, sync over HTTP, bad parameters, oversized bodies
    client, http_client = VideoClient(srv.grpc_url), VideoClient(srv.http_url, protocol="http")
    small = dict(num_inference_steps=1, num_frames=1, height=32, width=32)

    def one(i):
        kind = i % 4
        if kind == 0:
            assert client.run(GenerationRequest(PROMPT, seed=i, **small)).frames.shape == (1, 32, 32, 3)
        elif kind == 1:
            assert http_client.run(GenerationRequest(PROMPT, seed=i, **small)).frames.shape == (1, 32, 32, 3)
        elif kind == 2:
            with pytest.raises(ServerRequestError):
                client.run(GenerationRequest(PROMPT, num_frames=8))
        else:
            req = urllib.request.Request(f"http://{srv.http_url}/v2/models/hunyuan_video_sync/infer",
                                         data=b"x" * (2 * MiB))
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=60)
            assert e.value.code == 413

    for i in range(20):
        one(i)
    after20 = tree_rss(srv.pid)
    for i in range(20, 120):
        one(i)
    after120 = tree_rss(srv.pid)
    print(f"server tree RSS after 20 requests {after20 / MiB:.1f} MiB, after 120 {after120 / MiB:.1f} MiB")
    assert after120 <= after20 * 1.05, (after20, after120)
    assert metric(srv, "vidtrt_generations_in_flight", model="hunyuan_video") == 0
