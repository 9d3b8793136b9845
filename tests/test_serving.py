"""The tiny model through a real tritonserver: same frames as in process, streaming progress, errors,
concurrency, cancellation, component failures, memory, metrics, HTTP.

One server for the module (starting five Python-backend models takes a while on 2 cores).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import numpy as np
import pytest
from server_metrics import metric, tree_rss

from vidtrt.client import ServerRequestError, VideoClient
from vidtrt.config.request import GenerationRequest
from vidtrt.counters import TRACE_ENV
from vidtrt.errors import CancelledError
from vidtrt.export.repository import build_repository
from vidtrt.serving.server import TritonServer

pytestmark = pytest.mark.server

FAIL_GUIDANCE = 77.0  # the test repository's DiT fails requests with this embedded_guidance_scale
PROMPT = "a cat walks on the grass"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    repo = build_repository("tiny", root / "repo", fail_on_guidance=FAIL_GUIDANCE)
    trace = root / "trace.jsonl"  # every model process's resolves / config loads / DiT reads (vidtrt.counters)
    server = TritonServer(repo, log_file=root / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600,
                          env={**os.environ, TRACE_ENV: str(trace)})
    server.trace = trace
    with server:
        yield server


@pytest.fixture(scope="module")
def pipe():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    return HunyuanVideoPipeline.from_model("tiny")


@pytest.fixture(scope="module")
def client(srv):
    return VideoClient(srv.grpc_url)


def test_each_model_process_rebuilds_the_model_from_the_record_once(srv):
    """Six model processes (generation, sync, text encoder, DiT, DiT probe, VAE decoder): each resolves the model
    once, from the repository's record (no config file read), and only the DiT and the DiT probe (TeaCache's,
    which keeps the DiT's embedders and block 0's norm) read the DiT."""
    events = [json.loads(line) for line in srv.trace.read_text().splitlines()]
    by_pid: dict[int, list[str]] = {}
    for e in events:
        by_pid.setdefault(e["pid"], []).append(e["event"] + (":record" if e["detail"].startswith("record:") else ""))
    assert len(by_pid) == 6, by_pid
    per_process = sorted(sorted(v) for v in by_pid.values())
    assert per_process.count(["config_load:record", "resolve:record"]) == 4, per_process
    assert per_process.count(["config_load:record", "dit_read", "resolve:record"]) == 2, per_process


def test_same_seed_same_frames_as_in_process(client, pipe):
    for request in (GenerationRequest(PROMPT, seed=5),
                    GenerationRequest(PROMPT, seed=6, num_frames=5, height=48, width=80, num_inference_steps=3,
                                      true_cfg_scale=2.0, negative_prompt="blurry")):
        expected = pipe.run(request)
        result = client.run(request)
        assert result.frames.dtype == np.uint8 and result.frames.shape == expected.shape
        np.testing.assert_array_equal(result.frames, expected)


def test_progress_once_per_step_in_order_before_the_video(client):
    seen = []
    result = client.run(GenerationRequest(PROMPT, seed=1, num_inference_steps=6), progress=seen.append)
    steps = [p for p in seen if p.stage == "denoise"]
    assert [p.step for p in steps] == [1, 2, 3, 4, 5, 6]
    assert all(p.total == 6 for p in steps)
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(seen, seen[1:], strict=False))
    # then one per VAE tile (the tiny default decodes in 4 tiles)
    assert seen[:6] == steps
    assert [(p.stage, p.step, p.total) for p in seen[6:]] == [("decode", k, 4) for k in range(1, 5)]
    assert result.progress == seen and result.frames.shape == (9, 64, 96, 3)


@pytest.mark.parametrize("kwargs, param", [
    (dict(height=65), "height"),
    (dict(width=2048), "width"),
    (dict(num_frames=8), "num_frames"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(embedded_guidance_scale=-1.0), "embedded_guidance_scale"),
    (dict(embedded_guidance_scale=float("nan")), "embedded_guidance_scale"),
    (dict(flow_shift=0.0), "flow_shift"),
    (dict(seed=-1), "seed"),
    (dict(true_cfg_scale=0.5), "true_cfg_scale"),
    (dict(prompt_policy="shorten"), "prompt_policy"),
    (dict(output_format="gif"), "output_format"),
    (dict(prompt="   "), "prompt"),
    (dict(negative_prompt="bad\x00", true_cfg_scale=2.0), "negative_prompt"),
    (dict(prompt="word " * 200, prompt_policy="error"), "prompt"),  # rejected by the text encoder model
    (dict(negative_prompt="word " * 200, true_cfg_scale=2.0, prompt_policy="error"), "negative_prompt"),
])
def test_invalid_parameter_is_named_and_the_next_request_works(client, kwargs, param):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(ServerRequestError) as e:
        client.run(GenerationRequest(**kwargs))
    assert e.value.param == param, str(e.value)
    assert "\n" not in str(e.value)
    assert client.run(GenerationRequest(PROMPT, seed=2, num_inference_steps=1)).frames.shape == (9, 64, 96, 3)


def test_four_concurrent_clients_get_their_own_videos(srv, pipe):
    seeds = [11, 12, 13, 14]
    requests = {s: GenerationRequest(PROMPT, seed=s, num_inference_steps=5) for s in seeds}
    expected = {s: pipe.run(r) for s, r in requests.items()}
    results: dict[int, object] = {}
    progress: dict[int, list] = {s: [] for s in seeds}

    def go(seed):
        try:
            results[seed] = VideoClient(srv.grpc_url).run(requests[seed], progress=progress[seed].append)
        except Exception as e:  # surfaced by the assertions below
            results[seed] = e

    threads = [threading.Thread(target=go, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for s in seeds:
        assert not isinstance(results[s], Exception), results[s]
        np.testing.assert_array_equal(results[s].frames, expected[s])
        assert [p.step for p in progress[s] if p.stage == "denoise"] == [1, 2, 3, 4, 5]
    assert len({expected[s].tobytes() for s in seeds}) == 4


def test_cancel_mid_generation_stops_within_one_step(srv, client):
    steps_before = metric(srv, "vidtrt_denoising_steps_total", model="hunyuan_video")
    cancelled_before = metric(srv, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="cancelled")
    stop = threading.Event()
    seen = []

    def on_progress(p):
        seen.append(p.step)
        if p.step == 3:
            stop.set()

    t0 = time.perf_counter()
    with pytest.raises(CancelledError):
        client.run(GenerationRequest(PROMPT, seed=3, num_inference_steps=200), progress=on_progress, cancel=stop)
    deadline = time.monotonic() + 30
    while metric(srv, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="cancelled") \
            <= cancelled_before:
        assert time.monotonic() < deadline, "the server never saw the cancellation"
        time.sleep(0.1)
    ran = metric(srv, "vidtrt_denoising_steps_total", model="hunyuan_video") - steps_before
    assert seen[:3] == [1, 2, 3]
    # The tiny model's steps take milliseconds, so the progress stream can lag the server by several steps on a
    # loaded machine (14 seen in a fresh-clone run): the cancel lands within the stream's lag, long before the
    # request's 200 steps. Stopping within one step of the cancel reaching the model is tested in process.
    assert ran <= 3 + 40, f"server ran {ran} steps after a cancel at step 3"
    assert time.perf_counter() - t0 < 60
    assert metric(srv, "vidtrt_generations_in_flight", model="hunyuan_video") == 0
    assert client.run(GenerationRequest(PROMPT, seed=4, num_inference_steps=2)).frames.shape == (9, 64, 96, 3)


def test_component_failure_fails_that_request_only(srv, client, pipe):
    ok_request = GenerationRequest(PROMPT, seed=8, num_inference_steps=6)
    outcome: dict[str, object] = {}

    def good():
        outcome["good"] = VideoClient(srv.grpc_url).run(ok_request)

    t = threading.Thread(target=good)
    t.start()
    with pytest.raises(ServerRequestError) as e:
        client.run(GenerationRequest(PROMPT, seed=9, embedded_guidance_scale=FAIL_GUIDANCE))
    t.join(timeout=300)
    msg = str(e.value)
    assert "hunyuan_video_dit" in msg and "injected DiT failure" in msg and "\n" not in msg
    assert e.value.param is None
    np.testing.assert_array_equal(outcome["good"].frames, pipe.run(ok_request))
    assert srv.is_ready()


def test_nan_from_a_component_fails_that_request_and_counts_as_an_error(srv, client):
    """A DiT answering NaN (what an fp16 overflow looks like) is a failed request with a one-line reason,
    counted as an error, not an all-black video counted as a success; the next request works."""
    before = metric(srv, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="error")
    with pytest.raises(ServerRequestError) as e:
        client.run(GenerationRequest(PROMPT, seed=9, num_inference_steps=3, embedded_guidance_scale=FAIL_GUIDANCE + 1))
    msg = str(e.value)
    assert "NaN/inf at denoising step 1 of 3" in msg and "fp16 overflow" in msg and "\n" not in msg, msg
    assert e.value.param is None
    assert metric(srv, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="error") == before + 1
    assert client.run(GenerationRequest(PROMPT, seed=9, num_inference_steps=1)).frames.std() > 1


def test_mp4_output(client):
    from vidtrt.video_io import decode_mp4

    result = client.run(GenerationRequest(PROMPT, seed=1, num_inference_steps=2, output_format="mp4"))
    assert result.mp4 is not None and result.mp4[4:8] == b"ftyp"
    decoded = decode_mp4(result.mp4)
    assert decoded.shape == result.frames.shape


def test_http_generate_through_the_sync_model(srv, pipe):
    http = VideoClient(srv.http_url, protocol="http")
    assert http.model_name == "hunyuan_video_sync" and http.is_ready()
    request = GenerationRequest(PROMPT, seed=21, num_inference_steps=3)
    np.testing.assert_array_equal(http.run(request).frames, pipe.run(request))
    with pytest.raises(ServerRequestError) as e:
        http.run(GenerationRequest(PROMPT, width=17))
    assert e.value.param == "width"
    mp4 = http.run(GenerationRequest(PROMPT, seed=1, num_inference_steps=1, output_format="mp4")).mp4
    assert mp4 is not None and mp4[4:8] == b"ftyp"


def test_generate_cli_against_the_server(srv, pipe, tmp_path, capsys):
    from vidtrt.cli import main

    out = tmp_path / "cat.npy"
    rc = main(["generate", PROMPT, "--url", srv.grpc_url, "-o", str(out), "--seed", "31", "--steps", "3",
               "--no-progress"])
    assert rc == 0
    np.testing.assert_array_equal(np.load(out), pipe.run(GenerationRequest(PROMPT, seed=31, num_inference_steps=3)))
    rc = main(["generate", PROMPT, "--url", srv.grpc_url, "-o", str(tmp_path / "x.npy"), "--frames", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("vidtrt: error: invalid num_frames=8")
    # exit codes tell a bad request (2) from a server-side failure (3): the DiT answering NaN here
    rc = main(["generate", PROMPT, "--url", srv.grpc_url, "-o", str(tmp_path / "y.npy"), "--steps", "1",
               "--guidance", str(FAIL_GUIDANCE + 1), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and "NaN/inf" in err[-1] and len(err) == 1, err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "y.npy").exists()
    # a model name the server does not serve: one line naming the one it does, before any request
    rc = main(["generate", PROMPT, "--url", srv.grpc_url, "-o", str(tmp_path / "z.npy"), "--model-name", "cogvideox"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'cogvideox'" in err[0] and "it serves hunyuan_video" in err[0], err
    assert not (tmp_path / "z.npy").exists()
    # a component model is served but is not a generation model: one line, before any request
    rc = main(["generate", PROMPT, "--url", srv.grpc_url, "-o", str(tmp_path / "z.npy"), "--model-name",
               "hunyuan_video_dit"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a vidtrt generation model" in err[0], err


def test_metrics_endpoint_shows_the_custom_metrics(srv):
    text = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
    for name in ("vidtrt_generation_requests_total", "vidtrt_generation_latency_seconds_bucket",
                 "vidtrt_generation_latency_seconds_count", "vidtrt_denoising_steps_total",
                 "vidtrt_generations_in_flight"):
        assert f"{name}{{" in text, name
    assert metric(srv, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="success") >= 5
    assert metric(srv, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="invalid") >= 10
    assert metric(srv, "vidtrt_generation_requests_total", model="hunyuan_video", outcome="error") >= 1
    assert metric(srv, "vidtrt_generation_latency_seconds_count", model="hunyuan_video") >= 5


def test_server_memory_is_flat_over_50_requests(srv, client):
    def one(i):
        client.run(GenerationRequest(PROMPT, seed=100 + i, num_inference_steps=2))

    for i in range(5):
        one(i)
    after5 = tree_rss(srv.pid)
    for i in range(5, 50):
        one(i)
    after50 = tree_rss(srv.pid)
    print(f"server tree RSS after 5 requests {after5 / 2**20:.1f} MiB, after 50 {after50 / 2**20:.1f} MiB")
    assert after50 <= after5 * 1.05, (after5, after50)
