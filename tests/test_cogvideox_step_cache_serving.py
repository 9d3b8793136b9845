"""The tiny CogVideoX model through a real tritonserver with step caching and dynamic CFG: the same frames and
skip pattern as in process (gRPC progress and final response), ``use_dynamic_cfg`` carried by the wire, and
``vidtrt generate`` finding the served generation model (cogvideox) without ``--model-name``."""

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
    """The session's shared server on the default tiny CogVideoX repository (conftest.py): every check here reads
    metric deltas, and the one test that unloads a model loads it again."""
    return cogvideox_server


@pytest.fixture(scope="module")
def pipe():
    from vidtrt.runtime.cogvideox_pipeline import CogVideoXPipeline

    return CogVideoXPipeline.from_model("tiny-cogvideox")


def test_same_frames_and_skip_pattern_as_in_process(srv, pipe):
    client = VideoClient(srv.grpc_url, model_name="cogvideox")
    skipped_before = metric(srv, "vidtrt_dit_calls_skipped_total", model="cogvideox")
    saved = 0
    # random tiny weights change a lot from step to step: 0.8 skips about 9 of 20 steps
    for kwargs in (dict(seed=1, cache_threshold=0.8), dict(seed=2, cache_threshold=1.5, use_dynamic_cfg=True)):
        request = GenerationRequest(PROMPT, **SMALL, **kwargs, num_inference_steps=20, cache_policy="easycache",
                                    cache_warmup_steps=3)
        tally = DitCallTally()
        expected = pipe.run(request, progress=tally)
        result = client.run(request)
        np.testing.assert_array_equal(result.frames, expected)
        steps = [p for p in result.progress if p.stage == "denoise"]
        assert [1 if p.dit_calls else 0 for p in steps] == tally.pattern
        assert 0 < tally.skipped and (result.dit_calls, result.dit_calls_skipped) == (tally.calls, tally.skipped)
        saved += tally.skipped
    assert metric(srv, "vidtrt_dit_calls_skipped_total", model="cogvideox") - skipped_before == saved
    # the wire carries use_dynamic_cfg: with it the frames differ from the same request without it
    assert not np.array_equal(pipe.run(GenerationRequest(PROMPT, **SMALL, seed=2, num_inference_steps=3)),
                              client.generate(PROMPT, **SMALL, seed=2, num_inference_steps=3, use_dynamic_cfg=True))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_generate_cli_finds_the_served_model(srv, pipe, tmp_path, capsys, protocol):
    from vidtrt.cli import main

    url = srv.grpc_url if protocol == "grpc" else srv.http_url
    rc = main(["generate", PROMPT, "--url", url, "--protocol", protocol, "-o", str(tmp_path / "v.npy"), "--seed", "4",
               "--frames", "1", "--height", "32", "--width", "48", "--steps", "3", "--negative-prompt", "blurry",
               "--use-dynamic-cfg", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    expected = pipe.generate(PROMPT, negative_prompt="blurry", height=32, width=48, num_frames=1,
                             num_inference_steps=3, seed=4, use_dynamic_cfg=True)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), expected)
    assert VideoClient(url, protocol=protocol).served_generation_model() == "cogvideox"


def test_generate_cli_without_a_ready_generation_model_is_one_line(srv, tmp_path, capsys):
    """Last in the module: unloads the sync model, so HTTP has no generation model left to find (then loads it
    again: the server is shared)."""
    from vidtrt.cli import main

    status, body = srv._admin("/v2/repository/models/cogvideox_sync/unload")
    assert status == 200, body
    try:
        rc = main(["generate", PROMPT, "--url", srv.http_url, "--protocol", "http", "-o", str(tmp_path / "v.npy")])
    finally:  # the server is shared (conftest.py cogvideox_server): leave it as it was
        _load_again(srv, "cogvideox_sync")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no vidtrt generation model" in err[0] and "--model-name" in err[0], err
    assert not (tmp_path / "v.npy").exists()


def _load_again(srv, model: str) -> None:
    """Load ``model`` through the restricted repository API and wait for it (the launcher's ``_admin`` gives up
    after 10 s; loading a model takes longer than that on a loaded machine)."""
    import urllib.request

    from vidtrt.serving.server import ADMIN_HEADER

    req = urllib.request.Request(f"http://{srv.http_url}/v2/repository/models/{model}/load", data=b"{}",
                                 method="POST", headers={ADMIN_HEADER: srv._admin_token})
    with urllib.request.urlopen(req, timeout=600) as r:
        assert r.status == 200
    assert srv.is_ready()
