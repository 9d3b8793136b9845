"""TeaCache for CogVideoX through a real tritonserver (tiny-cogvideox, torch repository): the repository serves
``cogvideox_dit_probe``, a request gives the same frames and skip pattern as in process (CFG batched, with and
without dynamic CFG), threshold 0 is bit-identical to uncached, and Prometheus counts the skipped calls."""

from __future__ import annotations

import numpy as np
import pytest
from server_metrics import metric

from vidtrt.client import VideoClient
from vidtrt.config.request import GenerationRequest
from vidtrt.runtime.step_cache import DitCallTally

pytestmark = pytest.mark.server

PROMPT = "a cat walks on the grass"
SMALL = dict(num_frames=1, height=32, width=48, negative_prompt="blurry")


@pytest.fixture(scope="module")
def srv(cogvideox_server):
    """The session's shared server on the default tiny CogVideoX repository (conftest.py), which serves the probe."""
    assert (cogvideox_server.repository / "cogvideox_dit_probe" / "config.pbtxt").is_file()
    return cogvideox_server


@pytest.fixture(scope="module")
def pipe():
    from vidtrt.runtime.cogvideox_pipeline import CogVideoXPipeline

    return CogVideoXPipeline.from_model("tiny-cogvideox")


def test_same_frames_and_skip_pattern_as_in_process(srv, pipe):
    client = VideoClient(srv.grpc_url, model_name="cogvideox")
    skipped_before = metric(srv, "vidtrt_dit_calls_skipped_total", model="cogvideox")
    saved = 0
    for kwargs in (dict(seed=1, cache_threshold=0.6), dict(seed=2, cache_threshold=0.3, use_dynamic_cfg=True)):
        request = GenerationRequest(PROMPT, **SMALL, **kwargs, num_inference_steps=16, cache_policy="teacache",
                                    cache_warmup_steps=2)
        tally = DitCallTally()
        expected = pipe.run(request, progress=tally)
        result = client.run(request)
        np.testing.assert_array_equal(result.frames, expected)
        steps = [p for p in result.progress if p.stage == "denoise"]
        assert [1 if p.dit_calls else 0 for p in steps] == tally.pattern
        assert 0 < tally.skipped and (result.dit_calls, result.dit_calls_skipped) == (tally.calls, tally.skipped)
        saved += tally.skipped
    assert metric(srv, "vidtrt_dit_calls_skipped_total", model="cogvideox") - skipped_before == saved


def test_threshold_zero_bit_identical_to_uncached(srv, pipe):
    client = VideoClient(srv.grpc_url, model_name="cogvideox")
    uncached = pipe.run(GenerationRequest(PROMPT, **SMALL, seed=3, num_inference_steps=6))
    result = client.run(GenerationRequest(PROMPT, **SMALL, seed=3, num_inference_steps=6, cache_policy="teacache",
                                          cache_threshold=0.0))
    np.testing.assert_array_equal(result.frames, uncached)
    assert (result.dit_calls, result.dit_calls_skipped) == (6, 0)
