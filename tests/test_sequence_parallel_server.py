"""A 2-rank sequence-parallel DiT model in a real tritonserver (`vidtrt build --sp-degree 2`, CPU, gloo): the
same frames as one process; a worker killed mid-request fails that request with one line and the next
request is served by a restarted group; a worker killed between requests costs no request."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest

from vidtrt.client import ServerRequestError, VideoClient
from vidtrt.config.request import GenerationRequest
from vidtrt.export.repository import RepositoryError, build_repository
from vidtrt.serving.server import TritonServer

pytestmark = pytest.mark.server

PROMPT = "a cat walks on the grass"
REQUEST = dict(num_frames=5, height=48, width=80, num_inference_steps=2)


SEEN: set[int] = set()  # every DiT worker pid seen, checked gone after the server stops


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp-serving")
    repo = build_repository("tiny", root / "repo", sp_degree=2, sync_model=False)
    with TritonServer(repo, log_file=root / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600) as server:
        yield server
    # The server's end ends the DiT model, and with it (finalize, or the workers' parent watch) its workers.
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in SEEN) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in SEEN if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"DiT workers outlived the server: {left}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def expected():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_model("tiny")
    return {seed: pipe.run(GenerationRequest(PROMPT, seed=seed, **REQUEST)) for seed in (1, 2, 3, 4)}


def workers_of(pid: int) -> list[psutil.Process]:
    """The live DiT worker processes under ``pid`` (tritonserver)."""
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if "vidtrt.runtime.parallel_dit" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    SEEN.update(p.pid for p in out)
    return out


def test_build_writes_the_degree_and_refuses_bad_ones(srv, tmp_path):
    assert json.loads((srv.repository / "vidtrt-repository.json").read_text())["sp_degree"] == 2
    dit_config = (srv.repository / "hunyuan_video_dit" / "config.pbtxt").read_text()
    assert 'key: "sp_degree" value { string_value: "2" }' in dit_config
    assert "instance_group [ { kind: KIND_CPU count: 1 } ]" in dit_config
    out = tmp_path / "x"
    with pytest.raises(RepositoryError, match=r"invalid sp_degree=0: accepted an integer >= 1"):
        build_repository("tiny", out, sp_degree=0)
    with pytest.raises(RepositoryError, match="needs --engine torch"):
        build_repository("tiny", out, sp_degree=2, engine="onnxruntime", artifacts=tmp_path)
    with pytest.raises(RepositoryError, match="--dit-instances 2 is not accepted"):
        build_repository("tiny", out, sp_degree=2, dit_instances=2)
    gpu = build_repository("tiny", out, sp_degree=2, device="cuda")  # writing it needs no GPU
    assert "instance_group [ { kind: KIND_GPU gpus: [ 0 ] count: 1 } ]" in (
        gpu / "hunyuan_video_dit" / "config.pbtxt").read_text()


def test_same_frames_as_one_process(srv, expected):
    assert len(workers_of(srv.pid)) == 1
    result = VideoClient(srv.grpc_url).run(GenerationRequest(PROMPT, seed=1, **REQUEST))
    np.testing.assert_array_equal(result.frames, expected[1])


def test_killed_worker_fails_the_request_with_one_line_then_the_next_is_served(srv, expected):
    client = VideoClient(srv.grpc_url)
    (victim,) = workers_of(srv.pid)
    victim.send_signal(signal.SIGSTOP)  # frozen: the DiT call waits for it in a collective
    box: dict = {}

    def call():
        try:
            box["result"] = client.run(GenerationRequest(PROMPT, seed=2, **REQUEST))
        except Exception as e:  # noqa: BLE001 - inspected below
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    time.sleep(2.0)
    victim.send_signal(signal.SIGKILL)
    t.join(timeout=120)
    assert not t.is_alive(), "the request hung"
    err = box.get("error")
    assert isinstance(err, ServerRequestError), box
    msg = str(err)
    assert "\n" not in msg, msg
    assert f"DiT worker rank 1 of 2 (pid {victim.pid}) killed by SIGKILL" in msg, msg
    assert "restarted the group (2 ranks)" in msg, msg
    # The next request: served by the fresh group, same frames as one process.
    result = client.run(GenerationRequest(PROMPT, seed=3, **REQUEST))
    np.testing.assert_array_equal(result.frames, expected[3])
    (fresh,) = workers_of(srv.pid)
    assert fresh.pid != victim.pid


def test_worker_killed_between_requests_costs_no_request(srv, expected):
    (victim,) = workers_of(srv.pid)
    os.kill(victim.pid, signal.SIGKILL)
    time.sleep(0.5)
    result = VideoClient(srv.grpc_url).run(GenerationRequest(PROMPT, seed=4, **REQUEST))
    np.testing.assert_array_equal(result.frames, expected[4])
    assert [p.pid for p in workers_of(srv.pid)] != [victim.pid]
