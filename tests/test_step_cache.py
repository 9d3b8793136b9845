"""Step caching in process: the EasyCache rule step by step, bit-identical frames when it cannot skip, fewer DiT
calls as the threshold rises on the small preset (through the `vidtrt cache-bench` harness), true CFG branches
deciding together, and every cache parameter checked with one line naming it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from vidtrt.config.model_config import SamplerDefaults, tiny_config
from vidtrt.config.request import GenerationRequest
from vidtrt.config.step_cache import StepCacheParams
from vidtrt.errors import ConfigError, InvalidRequestError
from vidtrt.runtime.step_cache import DitCallTally, EasyCache, StepCache, make_step_cache

PROMPT = "a cat walks on the grass"


@pytest.fixture(scope="module")
def pipe():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    return HunyuanVideoPipeline.from_model("tiny")


# ------------------------------------------------------------------------------------------- the rule
def test_easycache_rule_step_by_step():
    """The DiT here is v = 2 x + 1 elementwise (so k = 2 exactly); inputs are chosen so the accumulator's
    sums are easy to follow: warm-up 1, threshold 0.5, 7 steps."""
    fn = lambda x: 2.0 * x + 1.0  # noqa: E731
    xs = [torch.full((1, 2, 1, 2, 2), v, dtype=torch.float32) for v in (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.1)]
    cache = EasyCache(StepCacheParams("easycache", 0.5, 1), total_steps=len(xs))
    called, outs = [], []
    for i, x in enumerate(xs):
        out, c = cache.velocity(i, x, lambda x=x: fn(x))
        called.append(c)
        outs.append(out)
    # step 0: warm-up; 1: no k yet (one computed step) -> computed, k = |3-1| / |1-0| = 2, |v1| = 3;
    # step 2: acc = 2 * 0.5 / 3 = 0.333 < 0.5 -> reuse x2 + (v1 - x1) = 1.5 + 2 = 3.5;
    # step 3: acc += 2 * 0.5 / 3 -> 0.667 >= 0.5 -> computed (acc = 0), k = |5 - 3| / |2 - 1| = 2, |v3| = 5;
    # step 4: acc = 2 * 0.5 / 5 = 0.2 -> reuse 2.5 + 3 = 5.5; step 5: acc = 0.4 -> reuse 3 + 3 = 6;
    # step 6: the last step -> computed.
    assert called == [True, True, False, True, False, False, True]
    for i, expect in enumerate([1.0, 3.0, 3.5, 5.0, 5.5, 6.0, 7.2]):
        torch.testing.assert_close(outs[i], torch.full_like(xs[0], expect), rtol=0, atol=1e-6)


def test_warmup_and_last_step_always_call_and_threshold_scales_the_skips():
    torch.manual_seed(0)
    xs = [torch.randn(1, 4, 2, 4, 4)]
    for _ in range(19):
        xs.append(xs[-1] * 0.95 + 0.05 * torch.randn_like(xs[0]))

    def pattern(threshold, warmup=4):
        cache = make_step_cache(StepCacheParams("easycache", threshold, warmup), len(xs))
        return [cache.velocity(i, x, lambda x=x: torch.tanh(x) * 3)[1] for i, x in enumerate(xs)]

    counts = [sum(pattern(t)) for t in (0.0, 0.05, 0.2, 1.0, 10.0)]
    assert counts[0] == 20 and counts == sorted(counts, reverse=True) and counts[-1] < counts[1], counts
    for t in (0.05, 1.0, 10.0):
        p = pattern(t)
        assert all(p[:4]) and p[-1], p
    assert sum(pattern(10.0, warmup=19)) == 20  # warm-up covers every step


def test_policies_that_cannot_skip_run_the_plain_loop():
    for params in (StepCacheParams("none", 1.0, 0), StepCacheParams("easycache", 0.0, 0)):
        assert type(make_step_cache(params, 10)) is StepCache
    assert type(make_step_cache(StepCacheParams("easycache", 0.1, 0), 10)) is EasyCache


# ------------------------------------------------------------------------------------------- bit identity
def _uncached_frames(pipe, request: GenerationRequest) -> np.ndarray:
    """The denoising loop written out here without any cache (the reference the hook must not change)."""
    from vidtrt.runtime.orchestrator import decode_latents
    from vidtrt.runtime.scheduler import euler_step, flow_match_sigmas, initial_noise, timesteps_from_sigmas

    r = request.validate(pipe.config)
    c = pipe.components
    with torch.inference_mode():
        text = c.encode_text([r.prompt], r.prompt_policy)
        neg = c.encode_text([r.negative_prompt], "truncate") if r.do_true_cfg else None
        latents = initial_noise(pipe.config.latent_shape(1, r.num_frames, r.height, r.width), r.seed)
        sigmas = flow_match_sigmas(r.num_inference_steps, r.flow_shift)
        ts = timesteps_from_sigmas(sigmas)
        g = torch.tensor([r.embedded_guidance_scale], dtype=torch.float32) * 1000.0
        for i in range(r.num_inference_steps):
            v = c.dit(latents, ts[i].expand(1), text, g)
            if neg is not None:
                u = c.dit(latents, ts[i].expand(1), neg, g)
                v = u + r.true_cfg_scale * (v - u)
            latents = euler_step(latents, v, sigmas[i], sigmas[i + 1])
        return decode_latents(latents, pipe.config, c)


@pytest.mark.parametrize("kwargs", [
    dict(seed=3, num_inference_steps=6),
    dict(seed=4, num_frames=1, height=48, width=80, num_inference_steps=5),
    dict(seed=5, num_frames=5, height=64, width=48, num_inference_steps=4, true_cfg_scale=2.5,
         negative_prompt="blurry"),
])
def test_threshold_zero_and_policy_none_are_bit_identical_to_uncached(pipe, kwargs):
    expected = _uncached_frames(pipe, GenerationRequest(PROMPT, **kwargs))
    for cache in (dict(cache_policy="none", cache_threshold=5.0, cache_warmup_steps=0),
                  dict(cache_policy="easycache", cache_threshold=0.0, cache_warmup_steps=0),
                  dict(cache_policy="easycache", cache_threshold=5.0, cache_warmup_steps=200)):
        tally = DitCallTally()
        frames = pipe.run(GenerationRequest(PROMPT, **kwargs, **cache), progress=tally)
        np.testing.assert_array_equal(frames, expected)
        assert tally.skipped == 0 and tally.pattern == [1] * kwargs["num_inference_steps"]


def test_true_cfg_branches_call_or_skip_together(pipe):
    calls: list[int] = []
    dit = pipe.components.dit

    def counting_dit(*args):
        calls[-1] += 1
        return dit(*args)

    events = []

    def on_progress(e):
        if e.stage == "denoise":
            events.append(e)
            calls.append(0)

    components = dataclasses.replace(pipe.components, dit=counting_dit)
    from vidtrt.runtime.orchestrator import run_generation

    calls.append(0)
    request = GenerationRequest(PROMPT, seed=9, num_inference_steps=16, true_cfg_scale=3.0, cache_policy="easycache",
                                cache_threshold=0.5, cache_warmup_steps=2)
    frames = run_generation(request, pipe.config, components, progress=on_progress)
    per_step = calls[:-1]
    assert len(per_step) == 16 and set(per_step) <= {0, 2} and 0 in per_step, per_step
    assert [e.dit_calls for e in events] == per_step
    assert all(e.dit_calls + e.dit_calls_skipped == 2 for e in events)
    assert per_step[:2] == [2, 2] and per_step[-1] == 2
    assert frames.dtype == np.uint8


def test_python_api_takes_the_cache_keywords(pipe):
    tally = DitCallTally()
    kw = dict(cache_policy="easycache", cache_threshold=1.0, cache_warmup_steps=2)
    frames = pipe.generate(PROMPT, seed=8, num_inference_steps=10, progress=tally, **kw)
    assert tally.skipped > 0 and tally.calls + tally.skipped == 10 and tally.pattern[:2] == [1, 1]
    np.testing.assert_array_equal(frames, pipe.run(GenerationRequest(PROMPT, seed=8, num_inference_steps=10, **kw)))


# ------------------------------------------------------------------------------------------- the harness
def test_small_preset_calls_fall_as_threshold_rises_and_harness_prints_psnr(tmp_path, capsys):
    """`vidtrt cache-bench` on the small preset, 30 steps: DiT calls and PSNR fall as the threshold rises, every
    run finishes (the orchestrator stops with NonFiniteError on NaN/inf latents) and each row prints PSNR and
    SSIM. (Threshold 0 giving the uncached video is tested above, bit for bit.)"""
    import json

    from vidtrt.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat walks on the grass\n\nwaves crash against black rocks\n")
    out = tmp_path / "bench.json"
    rc = main(["cache-bench", "--model", "small", "--prompts", str(prompts), "--steps", "30", "--frames", "1",
               "--height", "64", "--width", "64", "--cache-threshold", "0.1,1", "--cache-warmup-steps", "3",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 2 * 3
    for prompt in ("a cat walks on the grass", "waves crash against black rocks"):
        mine = [r for r in runs if r["prompt"] == prompt]
        assert [r["threshold"] for r in mine] == [None, 0.1, 1.0]
        calls = [r["dit_calls"] for r in mine]
        assert calls[0] == 30 and calls == sorted(calls, reverse=True) and calls[-1] < calls[1] < 30, calls
        assert math.isinf(float(mine[0]["psnr_db"])) and mine[0]["ssim"] == 1.0
        assert math.inf > mine[1]["psnr_db"] > mine[2]["psnr_db"] > 0  # error grows with the skips
        for r in mine[1:]:
            assert r["pattern"][:3] == [1, 1, 1] and r["pattern"][-1] == 1
            assert r["dit_calls"] + r["dit_calls_skipped"] == 30
    lines = text.splitlines()
    rows = [ln for ln in lines if ln.startswith(("a cat", "waves", "total"))]
    assert len(rows) == 6 + 3, text
    for ln in rows:  # ... threshold, DiT calls, wall s, speed-up, PSNR dB, SSIM
        psnr, ssim = ln.split()[-2:]
        assert (psnr == "inf" or float(psnr) > 0) and 0 < float(ssim) <= 1, ln
    total_rows = {ln.split()[3]: ln.split() for ln in rows if ln.startswith("total")}
    assert set(total_rows) == {"uncached", "0.1", "1"}, total_rows
    assert total_rows["uncached"][-2] == "inf" and float(total_rows["0.1"][-2]) > float(total_rows["1"][-2]) > 0


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, param", [
    (dict(cache_policy="magic"), "cache_policy"),
    (dict(cache_policy=""), "cache_policy"),
    (dict(cache_threshold=-0.1), "cache_threshold"),
    (dict(cache_threshold=float("nan")), "cache_threshold"),
    (dict(cache_threshold=float("inf")), "cache_threshold"),
    (dict(cache_threshold=11.0), "cache_threshold"),
    (dict(cache_threshold="0.1"), "cache_threshold"),
    (dict(cache_threshold=True), "cache_threshold"),
    (dict(cache_warmup_steps=-1), "cache_warmup_steps"),
    (dict(cache_warmup_steps=201), "cache_warmup_steps"),
    (dict(cache_warmup_steps=2.5), "cache_warmup_steps"),
])
def test_invalid_cache_parameter_is_named(kwargs, param):
    with pytest.raises(InvalidRequestError) as e:
        GenerationRequest(PROMPT, **kwargs).validate(tiny_config())
    assert e.value.param == param and "\n" not in str(e.value)
    assert str(e.value).startswith(f"invalid {param}=") and "accepted" in str(e.value)


def test_cache_defaults_come_from_the_model_and_are_checked():
    r = GenerationRequest(PROMPT).validate(tiny_config())
    assert (r.cache_policy, r.cache_threshold, r.cache_warmup_steps) == ("none", 0.025, 5)
    config = dataclasses.replace(tiny_config(), defaults=dataclasses.replace(
        tiny_config().defaults, cache_policy="easycache", cache_threshold=0.1, cache_warmup_steps=2))
    r = GenerationRequest(PROMPT, cache_threshold=0.2).validate(config)
    assert r.step_cache == StepCacheParams("easycache", 0.2, 2)
    with pytest.raises(ConfigError, match="cache_policy"):
        SamplerDefaults(cache_policy="magic").validate()
    with pytest.raises(ConfigError, match="cache_warmup_steps"):
        SamplerDefaults(cache_warmup_steps=5000).validate()


def test_wire_carries_the_cache_fields():
    from vidtrt.config import request_io

    r = GenerationRequest(PROMPT, cache_policy="easycache", cache_threshold=0.05, cache_warmup_steps=3)
    back = request_io.inputs_to_request(request_io.request_to_inputs(r))
    assert (back.cache_policy, back.cache_warmup_steps) == ("easycache", 3)
    assert back.cache_threshold == float(np.float32(0.05))
    with pytest.raises(InvalidRequestError, match="cache_warmup_steps"):
        request_io.request_to_inputs(GenerationRequest(PROMPT, cache_warmup_steps="3"))
    p = request_io.progress_outputs(2, 30, 0.5, 0, 1)
    assert int(p["dit_calls"][0]) == 0 and int(p["dit_calls_skipped"][0]) == 1
    f = request_io.final_outputs(np.zeros((1, 16, 16, 3), np.uint8), None, 20, 10)
    assert int(f["dit_calls_total"][0]) == 20 and int(f["dit_calls_skipped_total"][0]) == 10


@pytest.mark.parametrize("argv, flag", [
    (["--cache-policy", "magic"], "--cache-policy"),
    (["--cache-threshold", "-1"], "--cache-threshold"),
    (["--cache-warmup-steps", "-2"], "--cache-warmup-steps"),
])
def test_cli_rejects_bad_cache_flags_in_one_line(tmp_path, capsys, argv, flag):
    from vidtrt.cli import main

    rc = main(["run", PROMPT, "-o", str(tmp_path / "x.npy"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"vidtrt: error: invalid {flag} "), err
    assert not (tmp_path / "x.npy").exists()


def test_cli_run_reports_dit_calls(tmp_path, capsys):
    from vidtrt.cli import main

    rc = main(["run", PROMPT, "-o", str(tmp_path / "x.npy"), "--steps", "12", "--cache-policy", "easycache",
               "--cache-threshold", "1", "--cache-warmup-steps", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("\n") == 1, out
    calls, skipped = [int(v) for v in out.split("DiT calls ")[1].replace("(", "").split()[:2]]
    assert calls + skipped == 12 and skipped > 0, out


def test_checkpoint_vidtrt_json_sets_the_cache_defaults(tmp_path, capsys):
    """A checkpoint folder's vidtrt.json "defaults" turn caching on for every request to that model; a bad value
    there stops at open with one line naming the field."""
    import json
    import shutil

    from vidtrt.cli import main
    from vidtrt.source.model_source import ModelSource

    folder = tmp_path / "model"
    shutil.copytree(ModelSource.open("tiny").folder, folder)
    overrides = json.loads((folder / "vidtrt.json").read_text())
    overrides["defaults"] = {**overrides.get("defaults", {}), "cache_policy": "easycache", "cache_threshold": 1.0,
                             "cache_warmup_steps": 2}
    (folder / "vidtrt.json").write_text(json.dumps(overrides))
    rc = main(["run", PROMPT, "--model", str(folder), "--steps", "10", "-o", str(tmp_path / "v.npy"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "DiT calls " in out and "(0 skipped)" not in out, out
    overrides["defaults"]["cache_policy"] = "magic"
    (folder / "vidtrt.json").write_text(json.dumps(overrides))
    rc = main(["run", PROMPT, "--model", str(folder), "-o", str(tmp_path / "w.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cache_policy" in err[0], err
