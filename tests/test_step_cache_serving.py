"""Step caching through a real tritonserver serving the `small` preset: the same frames and the same skip
pattern as in process, bit-identical frames when the cache cannot skip, the calls in progress / final responses
(gRPC and HTTP) and Prometheus, and cache parameters rejected naming the field."""

from __future__ import annotations

import numpy as np
import pytest
from server_metrics import metric

from vidtrt.client import ServerRequestError, VideoClient
from vidtrt.config.request import GenerationRequest
from vidtrt.export.repository import build_repository
from vidtrt.runtime.step_cache import DitCallTally
from vidtrt.serving.server import TritonServer

pytestmark = pytest.mark.server

PROMPT = "a cat walks on the grass"
# 30 steps on the small preset at its smallest sizes (one latent frame): seconds per request on 2 CPU cores.
SMALL = dict(num_frames=1, height=64, width=64, num_inference_steps=30)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("step-cache-serving")
    repo = build_repository("small", root / "repo")
    with TritonServer(repo, log_file=root / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600) as server:
        yield server


@pytest.fixture(scope="module")
def pipe():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    return HunyuanVideoPipeline.from_model("small")


@pytest.fixture(scope="module")
def client(srv):
    return VideoClient(srv.grpc_url)


def _in_process(pipe, request):
    tally = DitCallTally()
    return pipe.run(request, progress=tally), tally


def test_same_frames_and_skip_pattern_as_in_process(srv, client, pipe):
    before = metric(srv, "vidtrt_dit_calls_skipped_total", model="hunyuan_video")
    calls_before = metric(srv, "vidtrt_dit_calls_total", model="hunyuan_video")
    saved = made = 0
    # 30 steps; then true CFG (two DiT calls per step, deciding together) at 12 steps
    for kwargs in (dict(seed=1, cache_threshold=0.2),
                   dict(seed=2, cache_threshold=0.1, true_cfg_scale=2.0, num_inference_steps=12)):
        request = GenerationRequest(PROMPT, **{**SMALL, **kwargs}, cache_policy="easycache", cache_warmup_steps=3)
        expected, tally = _in_process(pipe, request)
        result = client.run(request)
        np.testing.assert_array_equal(result.frames, expected)
        steps = [p for p in result.progress if p.stage == "denoise"]
        assert [1 if p.dit_calls else 0 for p in steps] == tally.pattern
        assert 0 < tally.skipped and (result.dit_calls, result.dit_calls_skipped) == (tally.calls, tally.skipped)
        assert sum(p.dit_calls for p in steps) == tally.calls
        saved, made = saved + tally.skipped, made + tally.calls
    assert metric(srv, "vidtrt_dit_calls_skipped_total", model="hunyuan_video") - before == saved
    assert metric(srv, "vidtrt_dit_calls_total", model="hunyuan_video") - calls_before == made


def test_threshold_zero_and_policy_none_bit_identical_to_uncached(client, pipe):
    size = {**SMALL, "num_inference_steps": 10}
    uncached, tally = _in_process(pipe, GenerationRequest(PROMPT, seed=3, **size))
    assert tally.skipped == 0
    for cache in (dict(cache_policy="easycache", cache_threshold=0.0), dict(cache_policy="none", cache_threshold=1.0)):
        result = client.run(GenerationRequest(PROMPT, seed=3, **size, **cache))
        np.testing.assert_array_equal(result.frames, uncached)
        assert (result.dit_calls, result.dit_calls_skipped) == (10, 0)
        assert all(p.dit_calls == 1 and p.dit_calls_skipped == 0 for p in result.progress if p.stage == "denoise")


def test_client_generate_takes_the_cache_keywords(client, pipe):
    kw = dict(cache_policy="easycache", cache_threshold=0.2, cache_warmup_steps=3)
    frames = client.generate(PROMPT, seed=6, **SMALL, **kw)
    np.testing.assert_array_equal(frames, pipe.generate(PROMPT, seed=6, **SMALL, **kw))


def test_http_final_response_reports_the_calls(srv, pipe):
    request = GenerationRequest(PROMPT, seed=4, **SMALL, cache_policy="easycache", cache_threshold=0.2,
                                cache_warmup_steps=3)
    expected, tally = _in_process(pipe, request)
    result = VideoClient(srv.http_url, protocol="http").run(request)
    np.testing.assert_array_equal(result.frames, expected)
    assert (result.dit_calls, result.dit_calls_skipped) == (tally.calls, tally.skipped)


@pytest.mark.parametrize("kwargs, param", [
    (dict(cache_policy="magic"), "cache_policy"),
    (dict(cache_threshold=-1.0), "cache_threshold"),
    (dict(cache_threshold=float("nan")), "cache_threshold"),
    (dict(cache_warmup_steps=-3), "cache_warmup_steps"),
])
def test_invalid_cache_parameter_is_named_by_the_server(client, kwargs, param):
    with pytest.raises(ServerRequestError) as e:
        client.run(GenerationRequest(PROMPT, **kwargs))
    assert e.value.param == param and "\n" not in str(e.value), str(e.value)


def test_generate_cli_sends_the_cache_flags_and_prints_the_calls(srv, pipe, tmp_path, capsys):
    from vidtrt.cli import main

    flags = ["--cache-policy", "easycache", "--cache-threshold", "0.2", "--cache-warmup-steps", "3"]
    rc = main(["generate", PROMPT, "--url", srv.grpc_url, "-o", str(tmp_path / "v.npy"), "--seed", "5", "--frames", "1",
               "--height", "64", "--width", "64", "--steps", "30", "--no-progress", *flags])
    out = capsys.readouterr().out
    expected, tally = _in_process(pipe, GenerationRequest(PROMPT, seed=5, **SMALL, cache_policy="easycache",
                                                          cache_threshold=0.2, cache_warmup_steps=3))
    assert rc == 0 and f"DiT calls {tally.calls} ({tally.skipped} skipped)" in out, out
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), expected)
