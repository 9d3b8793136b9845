"""TeaCache through a real tritonserver (tiny preset): the repository serves the DiT probe model, a request gives
the same frames and the same skip pattern as in process, threshold 0 is bit-identical to uncached, Prometheus
counts the skipped calls, bad values are named, and a repository built without a probe (ONNX artifacts exported
before it existed) refuses teacache per request while it keeps serving."""

from __future__ import annotations

import json

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
TINY = dict(num_frames=1, height=64, width=64, num_inference_steps=20)
TEACACHE = dict(cache_policy="teacache", cache_threshold=0.3, cache_warmup_steps=2)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacache-serving")
    repo = build_repository("tiny", root / "repo")
    assert (repo / "hunyuan_video_dit_probe" / "config.pbtxt").is_file()
    with TritonServer(repo, log_file=root / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600) as server:
        yield server


@pytest.fixture(scope="module")
def pipe():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    return HunyuanVideoPipeline.from_model("tiny")


@pytest.fixture(scope="module")
def client(srv):
    return VideoClient(srv.grpc_url)


def test_same_frames_and_skip_pattern_as_in_process(srv, client, pipe):
    skipped_before = metric(srv, "vidtrt_dit_calls_skipped_total", model="hunyuan_video")
    saved = 0
    for kwargs in (dict(seed=1), dict(seed=2, true_cfg_scale=2.0, num_inference_steps=10)):
        request = GenerationRequest(PROMPT, **{**TINY, **kwargs}, **TEACACHE)
        tally = DitCallTally()
        expected = pipe.run(request, progress=tally)
        result = client.run(request)
        np.testing.assert_array_equal(result.frames, expected)
        steps = [p for p in result.progress if p.stage == "denoise"]
        assert [1 if p.dit_calls else 0 for p in steps] == tally.pattern
        assert 0 < tally.skipped and (result.dit_calls, result.dit_calls_skipped) == (tally.calls, tally.skipped)
        saved += tally.skipped
    assert metric(srv, "vidtrt_dit_calls_skipped_total", model="hunyuan_video") - skipped_before == saved


def test_threshold_zero_bit_identical_to_uncached(client, pipe):
    size = {**TINY, "num_inference_steps": 8}
    uncached = pipe.run(GenerationRequest(PROMPT, seed=3, **size))
    result = client.run(GenerationRequest(PROMPT, seed=3, **size, cache_policy="teacache", cache_threshold=0.0))
    np.testing.assert_array_equal(result.frames, uncached)
    assert (result.dit_calls, result.dit_calls_skipped) == (8, 0)


@pytest.mark.parametrize("kwargs, param", [
    (dict(cache_policy="teacache", cache_threshold=-1.0), "cache_threshold"),
    (dict(cache_policy="teacache", cache_warmup_steps=-3), "cache_warmup_steps"),
    (dict(cache_policy="tea-cache"), "cache_policy"),
])
def test_invalid_values_named_by_the_server(client, kwargs, param):
    with pytest.raises(ServerRequestError) as e:
        client.run(GenerationRequest(PROMPT, **kwargs))
    assert e.value.param == param and "\n" not in str(e.value), str(e.value)


def test_repository_without_probe_refuses_teacache_per_request(tmp_path):
    """An onnxruntime repository from artifacts without dit_probe (an older export): no probe model; teacache is
    an INVALID_ARG naming cache_policy, and the next request (easycache) is served."""
    from onnx_artifacts import tiny_artifacts

    from vidtrt.runtime.engine_components import MANIFEST_NAME

    art = tiny_artifacts()
    old = tmp_path / "artifacts"
    old.mkdir()
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    del manifest["components"]["dit_probe"]
    for f in art.iterdir():
        if f.name != MANIFEST_NAME and not f.name.startswith("dit_probe"):
            (old / f.name).symlink_to(f)
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    repo = build_repository("tiny", tmp_path / "repo", "onnxruntime", artifacts=old)
    assert not (repo / "hunyuan_video_dit_probe").exists()
    with TritonServer(repo, log_file=tmp_path / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600) as server:
        client = VideoClient(server.grpc_url)
        with pytest.raises(ServerRequestError) as e:
            client.run(GenerationRequest(PROMPT, seed=1, **TINY, **TEACACHE))
        assert e.value.param == "cache_policy" and "dit_probe" in str(e.value) and "\n" not in str(e.value)
        result = client.run(GenerationRequest(PROMPT, seed=1, **{**TINY, "num_inference_steps": 4},
                                              cache_policy="easycache", cache_threshold=0.1))
        assert result.frames.shape == (1, 64, 64, 3)
