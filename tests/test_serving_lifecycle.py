"""A request's life around the generation, through a real tritonserver started by `vidtrt serve` (a
subprocess, signalled as a user would): the bounded queue, deadlines between steps and VAE tiles,
cancellation and progress during the decode, and the drain on SIGTERM (last: it ends the server).

One server for the module: max_concurrent 2 and max_queue 1 (stream), one sync instance with queue 1.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from server_metrics import metric

from vidtrt.client import ServerRequestError, VideoClient
from vidtrt.config.request import GenerationRequest
from vidtrt.errors import CancelledError
from vidtrt.export.repository import build_repository

pytestmark = pytest.mark.server

PROMPT = "a cat walks on the grass"
BIG = dict(height=256, width=256, num_frames=33)  # the tiny model's largest video: 108 VAE tiles, seconds of decode
BIG_TILES = 108
EXIT_TIMEOUT = 10  # vidtrt serve --exit-timeout: the drain limit


@dataclass
class Serve:
    proc: subprocess.Popen
    grpc_url: str
    http_url: str
    metrics_url: str
    log: Path
    stderr: Path


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    repo = build_repository("tiny", root / "repo", max_concurrent_generations=2, max_queue_size=1, sync_instances=1)
    log, err = root / "tritonserver.log", root / "serve.stderr"
    cmd = [sys.executable, "-m", "vidtrt.serving.server", "--repository", str(repo), "--http-port", "0",
           "--grpc-port", "0",
           "--metrics-port", "0", "--log-file", str(log), "--exit-timeout", str(EXIT_TIMEOUT)]
    with open(err, "w") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("Ctrl-C")):
            line = proc.stdout.readline()
            assert line, f"vidtrt serve ended before it was ready: {err.read_text()[-2000:]}"
            lines.append(line)
        url = {ln.split()[0]: ln.split()[1] for ln in lines if ln.startswith("  ")}
        yield Serve(proc, url["gRPC"], url["HTTP"].removeprefix("http://"), url["metrics"], log, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def wait_for(cond, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Generation(threading.Thread):
    """One streaming generation on its own thread: ``progress`` as it arrives, then ``result`` or ``error``."""

    def __init__(self, url: str, request: GenerationRequest, protocol: str = "grpc", timeout_s: float | None = None):
        super().__init__(daemon=True)
        self.client = VideoClient(url, protocol=protocol, timeout_s=timeout_s)
        self.request, self.cancel = request, threading.Event()
        self.progress: list = []
        self.result = self.error = None
        self.ended_at = None

    def run(self) -> None:
        try:
            self.result = self.client.run(self.request, progress=self.progress.append, cancel=self.cancel)
        except Exception as e:  # asserted by the tests
            self.error = e
        self.ended_at = time.monotonic()

    def steps(self, stage: str = "denoise") -> list[int]:
        return [p.step for p in self.progress if p.stage == stage]


def pending(serve: Serve) -> float:
    return metric(serve, "vidtrt_generations_in_flight") + metric(serve, "vidtrt_generations_queued")


def test_queue_bound_answers_unavailable(serve):
    """Stream: 2 running + 1 waiting (max_concurrent 2, max_queue 1), the next is answered UNAVAILABLE at
    once, counted as rejected; sync (HTTP): 1 running + 1 in Triton's queue, the next gets 503."""
    rejected = metric(serve, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="rejected")
    held = [Generation(serve.grpc_url, GenerationRequest(PROMPT, seed=s, num_inference_steps=200, **BIG))
            for s in (1, 2, 3)]
    for g in held:
        g.start()
    try:
        wait_for(lambda: sum(bool(g.progress) for g in held) == 2, what="two running generations")
        wait_for(lambda: metric(serve, "vidtrt_generations_queued", model="hunyuan_video") == 1, what="one waiting")
        waiting = next(g for g in held if not g.progress)
        t0 = time.monotonic()
        with pytest.raises(ServerRequestError) as e:
            VideoClient(serve.grpc_url).run(GenerationRequest(PROMPT, num_inference_steps=1))
        assert time.monotonic() - t0 < 5
        assert e.value.status == "UNAVAILABLE" and "\n" not in str(e.value)
        assert str(e.value).startswith("unavailable: server busy: 2 generations running and 1 waiting"), str(e.value)
        assert "max_queue_size 1" in str(e.value)
        assert metric(serve, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="rejected") \
            == rejected + 1
        assert not waiting.progress  # still waiting for a worker thread
    finally:
        for g in held:
            g.cancel.set()
        for g in held:
            g.join(60)
    assert all(isinstance(g.error, CancelledError) for g in held), [g.error for g in held]
    wait_for(lambda: pending(serve) == 0, what="the cancelled generations to end")

    # The sync model (HTTP): its queue is Triton's, bounded by the same flag.
    sync = [Generation(serve.http_url, GenerationRequest(PROMPT, seed=s, num_inference_steps=60), "http")
            for s in (4, 5)]
    sync[0].start()
    wait_for(lambda: metric(serve, "vidtrt_generations_in_flight", model="hunyuan_video_sync") == 1,
             what="the sync model running one request")
    sync[1].start()
    wait_for(lambda: metric(serve, "nv_inference_pending_request_count", model="hunyuan_video_sync") >= 1,
             what="one request in the sync model's queue")
    with pytest.raises(ServerRequestError) as e:
        VideoClient(serve.http_url, protocol="http").run(GenerationRequest(PROMPT, num_inference_steps=1))
    assert e.value.status == "UNAVAILABLE" and "Exceeds maximum queue size" in str(e.value), (e.value.status, e.value)
    for g in sync:
        g.join(120)
        assert g.error is None and g.result.frames.shape == (9, 64, 96, 3), g.error


def test_deadline_between_steps_and_between_tiles(serve):
    """Triton's request timeout is the deadline: the generation stops at the first step (or VAE tile)
    after it, answers DEADLINE_EXCEEDED in one line, counts as 'deadline'; a generation beside it and the
    next one are served."""
    before = metric(serve, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="deadline")
    beside = Generation(serve.grpc_url, GenerationRequest(PROMPT, seed=7, num_inference_steps=40))
    in_steps = Generation(serve.grpc_url, GenerationRequest(PROMPT, seed=8, num_inference_steps=200, **BIG),
                          timeout_s=1.0)
    in_steps.start()
    beside.start()
    in_steps.join(60)
    beside.join(60)
    e = in_steps.error
    assert isinstance(e, ServerRequestError) and e.status == "DEADLINE_EXCEEDED", repr(e)
    msg = str(e)
    assert re.fullmatch(r"deadline exceeded: the request's timeout of 1 s passed before step (\d+) of 200; "
                        r"generation cancelled", msg), msg
    assert in_steps.steps()[-1] < 200 and not in_steps.steps("decode")
    assert beside.error is None and beside.result.frames.shape == (9, 64, 96, 3)

    # Between VAE tiles: one step, then a decode of 108 tiles that outlasts the timeout.
    in_decode = Generation(serve.grpc_url, GenerationRequest(PROMPT, seed=9, num_inference_steps=1, **BIG),
                           timeout_s=2.0)
    in_decode.run()
    e = in_decode.error
    assert isinstance(e, ServerRequestError) and e.status == "DEADLINE_EXCEEDED", repr(e)
    m = re.fullmatch(r"deadline exceeded: the request's timeout of 2 s passed before VAE tile (\d+) of 108; "
                     r"generation cancelled", str(e))
    assert m and 1 < int(m.group(1)) < BIG_TILES, str(e)
    assert metric(serve, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="deadline") == before + 2

    # HTTP (the sync model): the same deadline through Triton's "timeout" request parameter.
    t0 = time.monotonic()
    with pytest.raises(ServerRequestError) as e:
        VideoClient(serve.http_url, protocol="http", timeout_s=1.0).run(
            GenerationRequest(PROMPT, seed=10, num_inference_steps=200, **BIG))
    assert e.value.status == "DEADLINE_EXCEEDED" and str(e.value).startswith("deadline exceeded: "), str(e.value)
    assert time.monotonic() - t0 < 10
    assert metric(serve, "vidtrt_generation_requests_total", model="hunyuan_video_sync", outcome="deadline") == 1
    assert VideoClient(serve.grpc_url).run(GenerationRequest(PROMPT, num_inference_steps=1)).frames.std() > 1


def test_generate_cli_timeout_is_the_server_deadline(serve, tmp_path, capsys):
    from vidtrt.cli import main

    rc = main(["generate", PROMPT, "--url", serve.grpc_url, "-o", str(tmp_path / "x.npy"), "--steps", "200",
               "--height", "256", "--width", "256", "--frames", "33", "--timeout", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and err[0].startswith("vidtrt: error: deadline exceeded: "), err
    assert not (tmp_path / "x.npy").exists()


def test_client_never_cancels_a_request_the_server_ended(serve, monkeypatch):
    """Cancelling a gRPC stream after the generation model's last response makes tritonserver 2.51 keep the
    model referenced for good (it can never unload: the drain below would wait in vain). VideoClient
    cancels only requests still running: not after an error response, not after the video."""
    calls: list[bool] = []

    def spied(client):
        real = client._thread_client()
        stop = real.stop_stream
        monkeypatch.setattr(real, "stop_stream",
                            lambda cancel_requests=False: calls.append(cancel_requests) or stop(cancel_requests))
        return client

    with pytest.raises(ServerRequestError) as e:  # ended by the server's deadline
        spied(VideoClient(serve.grpc_url, timeout_s=0.5)).run(
            GenerationRequest(PROMPT, num_inference_steps=200, **BIG))
    assert e.value.status == "DEADLINE_EXCEEDED"
    assert spied(VideoClient(serve.grpc_url)).run(GenerationRequest(PROMPT, num_inference_steps=1)).frames.size
    assert calls and not any(calls), calls  # stream closed (close() closes it again), never cancelled
    calls.clear()
    stop = threading.Event()
    with pytest.raises(CancelledError):  # still running: cancelled on the server
        spied(VideoClient(serve.grpc_url)).run(GenerationRequest(PROMPT, num_inference_steps=200, **BIG),
                                               progress=lambda p: stop.set(), cancel=stop)
    assert calls[0] is True, calls


def test_cancel_during_the_decode_stops_it_and_tiles_show_progress(serve):
    """Progress per VAE tile after the steps; a cancel during the decode stops it within a tile (before:
    the decode ran on and the request counted as a success)."""
    tiles = metric(serve, "vidtrt_vae_tiles_total", model="hunyuan_video")
    outcome = {o: metric(serve, "vidtrt_generation_requests_total", model="hunyuan_video", outcome=o)
               for o in ("cancelled", "success")}
    g = Generation(serve.grpc_url, GenerationRequest(PROMPT, seed=11, num_inference_steps=2, **BIG))
    g.start()
    wait_for(lambda: len(g.steps("decode")) >= 3, what="three decode progress responses")
    g.cancel.set()
    g.join(60)
    assert isinstance(g.error, CancelledError), repr(g.error)
    wait_for(lambda: metric(serve, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="cancelled")
             == outcome["cancelled"] + 1, what="the server to count the cancel")
    seen = g.steps("decode")
    assert g.steps() == [1, 2] and seen == list(range(1, len(seen) + 1))
    assert all(p.total == BIG_TILES for p in g.progress if p.stage == "decode")
    assert [p.stage for p in g.progress] == ["denoise"] * 2 + ["decode"] * len(seen)  # steps first
    decoded = metric(serve, "vidtrt_vae_tiles_total", model="hunyuan_video") - tiles
    assert decoded <= len(seen) + 2 < BIG_TILES, f"the server decoded {decoded} tiles after a cancel at {len(seen)}"
    assert metric(serve, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="success") \
        == outcome["success"]


def test_generate_cli_shows_decode_progress(serve, tmp_path, capsys):
    from vidtrt.cli import main

    rc = main(["generate", PROMPT, "--url", serve.grpc_url, "-o", str(tmp_path / "cat.npy"), "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 0 and np.load(tmp_path / "cat.npy").shape == (9, 64, 96, 3)
    assert "denoising (server)" in err and "2/2" in err
    assert "decoding (server): 100%" in err and "4/4" in err and "tile" in err, err


def test_sigterm_drains_in_flight_generations_then_unloads_bls_first(serve):
    """SIGTERM to `vidtrt serve` mid-generation: new requests get UNAVAILABLE; a generation that ends
    within --exit-timeout gets its whole video; one that would not is cancelled at the limit with a clear
    message; the generation models unload before the components; exit code 0."""
    # short: ~25 steps left at the signal, a few seconds alone; it shares 2 cores with long (and, in CI, with
    # whatever else runs), so it is kept well inside the 10 s limit (100 steps missed it on a loaded machine)
    short = Generation(serve.grpc_url, GenerationRequest(PROMPT, seed=12, num_inference_steps=30))
    long = Generation(serve.grpc_url, GenerationRequest(PROMPT, seed=13, num_inference_steps=200, true_cfg_scale=2.0,
                                                        **BIG))
    long.start()
    short.start()
    wait_for(lambda: len(short.steps()) >= 5 and long.progress, what="both generations running")
    t0 = time.monotonic()
    serve.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining:" in serve.stderr.read_text(), 30, "vidtrt serve to start draining")

    with pytest.raises(ServerRequestError) as e:  # new requests while draining, both transports
        VideoClient(serve.grpc_url).run(GenerationRequest(PROMPT, num_inference_steps=1))
    assert e.value.status == "UNAVAILABLE" and "shutting down" in str(e.value), str(e.value)
    with pytest.raises(ServerRequestError) as e:
        VideoClient(serve.http_url, protocol="http").run(GenerationRequest(PROMPT, num_inference_steps=1))
    assert e.value.status == "UNAVAILABLE" and "shutting down" in str(e.value), str(e.value)

    try:
        rc = serve.proc.wait(EXIT_TIMEOUT + 60)
    except subprocess.TimeoutExpired:
        log_tail = "\n".join(serve.log.read_text().splitlines()[-40:])
        raise AssertionError(f"vidtrt serve still running: {serve.stderr.read_text()[-3000:]}\n{log_tail}") from None
    took = time.monotonic() - t0
    short.join(10)
    long.join(10)
    assert short.error is None, repr(short.error)
    assert short.result.frames.shape == (9, 64, 96, 3) and short.steps() == list(range(1, 31))
    assert short.steps("decode") == [1, 2, 3, 4]
    assert isinstance(long.error, ServerRequestError) and long.error.status == "CANCELLED", repr(long.error)
    expected = (f"generation cancelled (server shutting down: in-flight generations had {EXIT_TIMEOUT} s to finish "
                "(vidtrt serve --exit-timeout)) before ")
    assert str(long.error).startswith(expected), str(long.error)
    assert EXIT_TIMEOUT - 1 < long.ended_at - t0 < EXIT_TIMEOUT + 15
    assert rc == 0, serve.stderr.read_text()[-3000:]
    assert took < EXIT_TIMEOUT + 40, took

    log = serve.log.read_text()
    order = re.findall(r"successfully unloaded '(\w+)'", log)
    assert sorted(order) == sorted(["hunyuan_video", "hunyuan_video_sync", "hunyuan_video_text_encoder",
                                    "hunyuan_video_dit", "hunyuan_video_vae_decoder", "hunyuan_video_dit_probe"]), order
    assert set(order[:2]) == {"hunyuan_video", "hunyuan_video_sync"}, order
    assert "Server not ready" not in log and "Exit timeout expired" not in log
    assert "draining: unloaded hunyuan_video, hunyuan_video_sync" in serve.stderr.read_text()
