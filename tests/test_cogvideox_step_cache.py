"""Step caching in the CogVideoX sampler, in process: policy none / threshold 0 bit-identical to uncached frames
(DPM and DDIM, with and without CFG), DiT calls falling as the threshold rises over 24 steps with finite frames,
the flow-matching conversion of the model output inverting exactly, and the request rules that remain."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vidtrt.config.request import GenerationRequest
from vidtrt.errors import InvalidRequestError
from vidtrt.runtime.cogvideox_pipeline import CogVideoXPipeline
from vidtrt.runtime.cogvideox_scheduler import CogVideoXSampler
from vidtrt.runtime.step_cache import DitCallTally

PROMPT = "a cat walks on the grass"
SMALL = dict(num_frames=1, height=32, width=48)


@pytest.fixture(scope="module")
def pipe():
    return CogVideoXPipeline.from_model("tiny-cogvideox")


def _run(pipe, **kw):
    tally = DitCallTally()
    return pipe.run(GenerationRequest(PROMPT, **{**SMALL, **kw}), progress=tally), tally


@pytest.mark.parametrize("solver", ["dpm", "ddim"])
def test_threshold_zero_and_policy_none_bit_identical(pipe, solver):
    config = pipe.config
    if solver != config.scheduler.solver:
        config = dataclasses.replace(config, scheduler=dataclasses.replace(config.scheduler, solver=solver))
        pipe = CogVideoXPipeline(config, pipe.components)  # the same engines
    for cfg in (dict(true_cfg_scale=4.0, negative_prompt="blurry"), dict(true_cfg_scale=1.0)):
        base, tally = _run(pipe, seed=3, num_inference_steps=8, cache_policy="none", **cfg)
        assert (tally.calls, tally.skipped) == (8, 0) and tally.pattern == [1] * 8
        for cache in (dict(cache_policy="easycache", cache_threshold=0.0),
                      dict(cache_policy="none", cache_threshold=1.0)):
            frames, tally = _run(pipe, seed=3, num_inference_steps=8, **cfg, **cache)
            np.testing.assert_array_equal(frames, base)
            assert tally.skipped == 0


def test_calls_fall_as_threshold_rises(pipe):
    steps = 24
    base, _ = _run(pipe, seed=1, num_inference_steps=steps, negative_prompt="blurry")
    calls = []
    for threshold in (0.2, 0.8, 1.5):  # random tiny weights: large relative changes
        frames, tally = _run(pipe, seed=1, num_inference_steps=steps, negative_prompt="blurry",
                             cache_policy="easycache", cache_threshold=threshold, cache_warmup_steps=3)
        assert tally.calls + tally.skipped == steps and tally.pattern[:3] == [1, 1, 1] and tally.pattern[-1] == 1
        assert frames.shape == base.shape and frames.dtype == np.uint8
        calls.append(tally.calls)
    assert calls[0] > calls[-1] and calls == sorted(calls, reverse=True), calls
    assert calls[-1] < steps // 2, calls


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_flow_velocity_round_trip(pipe, prediction):
    config = dataclasses.replace(pipe.config.scheduler, prediction_type=prediction, rescale_betas_zero_snr=False)
    sampler = CogVideoXSampler(config, 10)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    for i in (0, 4, 9):
        back = sampler.model_output(sampler.flow_velocity(out, i, x), i, x)
        torch.testing.assert_close(back, out, rtol=1e-5, atol=1e-5)
    # v-prediction on the zero-terminal-SNR path (a = 0 at the first step): exact too, no division by a
    sampler = CogVideoXSampler(pipe.config.scheduler, 10)
    torch.testing.assert_close(sampler.model_output(sampler.flow_velocity(out, 0, x), 0, x), out)
    # the flow velocity is eps - x0 of x = x0 * a + eps * b
    a2 = float(sampler.alphas_cumprod[int(sampler.timesteps[4])])
    a, b = a2**0.5, (1 - a2) ** 0.5
    x0, eps = torch.randn(3, generator=g), torch.randn(3, generator=g)
    xt = a * x0 + b * eps
    torch.testing.assert_close(sampler.flow_velocity(a * eps - b * x0, 4, xt), eps - x0)
    torch.testing.assert_close(sampler.flow_input(4, xt), (a * x0 + b * eps) / (a + b))


def test_sparse_attention_fields_still_refused(pipe):
    for name in ("sparse_window", "sparse_steps"):
        with pytest.raises(InvalidRequestError) as e:
            GenerationRequest(PROMPT, **{name: "1,1,1" if name == "sparse_window" else "0:"}).validate(pipe.config)
        assert e.value.param == name
    r = GenerationRequest(PROMPT).validate(pipe.config)
    assert (r.cache_policy, r.cache_threshold, r.cache_warmup_steps) == ("none", 0.025, 5)
    assert GenerationRequest(PROMPT, cache_policy="teacache").validate(pipe.config).cache_policy == "teacache"


def test_cache_bench_runs_tiny_cogvideox(tmp_path, capsys):
    from vidtrt.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    rc = main(["cache-bench", "--model", "tiny-cogvideox", "--prompts", str(prompts), "--steps", "12", "--frames", "1",
               "--height", "32", "--width", "48", "--cache-threshold", "0.8", "--cache-warmup-steps", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "model tiny-cogvideox, 12 steps" in out and "true CFG 6" in out
    total = [line.split() for line in out.splitlines() if line.startswith("total")]
    assert [row[3:5] for row in total] == [["uncached", "12"], ["0.8", total[1][4]]] and int(total[1][4]) < 12, out


def test_run_cli_use_dynamic_cfg(pipe, tmp_path, capsys):
    from vidtrt.cli import main

    flags = ["--frames", "1", "--height", "32", "--width", "48", "--steps", "3", "--seed", "7", "--no-progress"]
    rc = main(["run", PROMPT, "--model", "tiny-cogvideox", "-o", str(tmp_path / "v.npy"), "--use-dynamic-cfg", *flags])
    assert rc == 0, capsys.readouterr().err
    kw = dict(height=32, width=48, num_frames=1, num_inference_steps=3, seed=7)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), pipe.generate(PROMPT, use_dynamic_cfg=True, **kw))
    assert not np.array_equal(np.load(tmp_path / "v.npy"), pipe.generate(PROMPT, **kw))
    rc = main(["run", PROMPT, "--model", "tiny", "-o", str(tmp_path / "h.npy"), "--use-dynamic-cfg", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and "use_dynamic_cfg" in err and len(err.strip().splitlines()) == 1, err


def test_run_cli_cache_flags_equal_generate_keywords(pipe, tmp_path, capsys):
    from vidtrt.cli import main

    rc = main(["run", PROMPT, "--model", "tiny-cogvideox", "-o", str(tmp_path / "v.npy"), "--frames", "1", "--height",
               "32", "--width", "48", "--steps", "10", "--seed", "8", "--no-progress", "--cache-policy", "easycache",
               "--cache-threshold", "0.8", "--cache-warmup-steps", "2"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    tally = DitCallTally()
    frames = pipe.generate(PROMPT, height=32, width=48, num_frames=1, num_inference_steps=10, seed=8, progress=tally,
                           cache_policy="easycache", cache_threshold=0.8, cache_warmup_steps=2)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), frames)
    assert 0 < tally.skipped and f"DiT calls {tally.calls} ({tally.skipped} skipped)" in out.out, out.out
