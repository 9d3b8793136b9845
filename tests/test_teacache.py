"""TeaCache in process: the DiT probe against diffusers' own block-0 modulation, its ONNX export in onnxruntime
against torch, the rule step by step, bit-identical frames when it cannot skip, fewer DiT calls as the threshold
rises on the small preset, true CFG deciding once per step, and refusals (bad values, no probe) in one
line naming the field, before any work."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from vidtrt.config.model_config import TransformerConfig, tiny_config
from vidtrt.config.request import GenerationRequest
from vidtrt.config.step_cache import TEACACHE_COEFFICIENTS, StepCacheParams
from vidtrt.errors import InvalidRequestError
from vidtrt.models.dit_probe import HunyuanVideoDiTProbe
from vidtrt.models.transformer import HunyuanVideoTransformer3D
from vidtrt.runtime.step_cache import DitCallTally, StepCache, TeaCache, make_step_cache, rescale

PROMPT = "a cat walks on the grass"
THRESHOLDS = "0.1,0.3"  # cache-bench on small, 30 steps: 17 and 8 DiT calls of 30 (docs/step-caching.md)
# Two architectures (as tests/test_transformer.py): with and without the guidance embedder.
CONFIGS = {
    "guidance": dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=1,
                     num_refiner_layers=1, text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6)),
    "no-guidance": dict(num_attention_heads=4, attention_head_dim=24, num_layers=1, num_single_layers=1,
                        num_refiner_layers=1, text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(8, 8, 8),
                        mlp_ratio=2.0, guidance_embeds=False),
}


@pytest.fixture(scope="module")
def pipe():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    return HunyuanVideoPipeline.from_model("tiny")


# ------------------------------------------------------------------------------------------- the probe
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("batch, frames, height, width", [(1, 1, 4, 6), (2, 3, 6, 4), (2, 2, 8, 10)])
def test_probe_equals_diffusers_block0_modulated_input(tmp_path, name, batch, frames, height, width):
    """Our probe on our DiT vs the relative L1 change computed here from diffusers' own x_embedder,
    time_text_embed and transformer_blocks[0].norm1 (same random weights), in float64; fresh random inputs."""
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import load_file

    from vidtrt.testing import randomize_parameters

    kwargs = CONFIGS[name]
    ref = diffusers.HunyuanVideoTransformer3DModel(**kwargs).eval()
    randomize_parameters(ref, seed=7 + batch + frames)
    ref.save_pretrained(tmp_path)
    ours = HunyuanVideoTransformer3D(TransformerConfig(**kwargs)).eval()
    ours.load_state_dict(load_file(str(tmp_path / "diffusion_pytorch_model.safetensors")), strict=True)
    probe = HunyuanVideoDiTProbe(ours)
    assert probe.x_embedder is ours.x_embedder and probe.norm1 is ours.transformer_blocks[0].norm1  # no copy

    g = torch.Generator().manual_seed(batch * 100 + frames)
    x = torch.randn(batch, 16, frames, height, width, generator=g)
    x_prev = x + 0.3 * torch.randn(x.shape, generator=g)
    t, t_prev = torch.rand(batch, generator=g) * 1000, torch.rand(batch, generator=g) * 1000
    pooled = torch.randn(batch, kwargs["pooled_projection_dim"], generator=g)
    guidance = torch.full((batch,), 6000.0) if kwargs.get("guidance_embeds", True) else None

    def modulated(hidden, timestep):
        temb = ref.time_text_embed(timestep, pooled, guidance)
        temb = temb[0] if isinstance(temb, tuple) else temb
        return ref.transformer_blocks[0].norm1(ref.x_embedder(hidden), emb=temb)[0].double()

    with torch.no_grad():
        a, b = modulated(x, t), modulated(x_prev, t_prev)
        want = (a - b).abs().mean(dim=(1, 2)) / b.abs().mean(dim=(1, 2))
        args = (x, t, pooled, *(() if guidance is None else (guidance,)), x_prev, t_prev)
        got = probe(*args)
    assert got.dtype == torch.float32 and got.shape == (batch,)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
    with torch.no_grad():  # the same step twice: no change
        assert torch.equal(probe(x, t, pooled, *(() if guidance is None else (guidance,)), x, t), torch.zeros(batch))


def test_probe_spec_drives_export_profiles_and_triton_config():
    from vidtrt.config.specs import component_specs, dit_spec
    from vidtrt.export.tensorrt_build import spec_profiles
    from vidtrt.serving.component_io import spec_io_pbtxt

    config = tiny_config()
    spec = component_specs(config, names=("dit_probe",))["dit_probe"]
    dit = dit_spec(config)
    assert spec.input_names == ["hidden_states", "timestep", "pooled_projections", "guidance", "prev_hidden_states",
                                "prev_timestep"]
    assert spec.output_names == ["rel_l1"] and "text_length" not in spec.axes
    assert spec.buckets == dit.buckets
    profiles = spec_profiles(spec)
    assert len(profiles) == len(dit.buckets)
    assert profiles[0]["prev_hidden_states"] == profiles[0]["hidden_states"]
    pbtxt = spec_io_pbtxt("dit_probe", spec)
    assert 'name: "rel_l1" data_type: TYPE_FP32 dims: [ -1 ]' in pbtxt


def test_onnx_probe_in_onnxruntime_matches_torch(tmp_path):
    """The probe exported through its spec, in onnxruntime, vs the torch probe on several spec shapes (batch 2,
    one latent frame, odd aspect; fresh random inputs). The engine loaders pick it up from the artifacts; an
    artifacts folder without it gives no probe, and teacache is then refused in one line before any work."""
    from onnx_artifacts import tiny_artifacts

    from vidtrt.runtime.engine_components import MANIFEST_NAME, engine_dit_probe, load_engine_components
    from vidtrt.runtime.orchestrator import run_generation
    from vidtrt.source.model_source import ModelSource

    art = tiny_artifacts()
    source = ModelSource.open("tiny")
    onnx_probe = engine_dit_probe(source, "onnxruntime", art, providers=["CPUExecutionProvider"])
    torch_probe = engine_dit_probe(source, "torch")
    spec = onnx_probe.spec
    step = spec.axes["latent_height"].multiple
    shapes = [(2, 1, 2, 3), (1, 2, 3, 2), (2, 3, 4, 4)]
    for seed, (b, t, h, w) in enumerate(shapes):
        axes = {"batch": b, "latent_frames": t, "latent_height": h * step, "latent_width": w * step}
        feeds = spec.example_inputs(axes, seed=100 + seed)
        got, want = onnx_probe.run(feeds)["rel_l1"], torch_probe.run(feeds)["rel_l1"]
        assert got.shape == (b,) and got.dtype == np.float32 and (want > 0).all()
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=0)

    config, components = load_engine_components("tiny", "onnxruntime", art, providers=["CPUExecutionProvider"])
    assert components.probe is not None
    # the same artifacts less the probe (an export from before it existed)
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    del manifest["components"]["dit_probe"]
    for f in art.iterdir():
        if f.name != MANIFEST_NAME and not f.name.startswith("dit_probe"):
            (tmp_path / f.name).symlink_to(f)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    config, components = load_engine_components("tiny", "onnxruntime", tmp_path, providers=["CPUExecutionProvider"])
    assert components.probe is None

    def no_work(*a, **k):
        raise AssertionError("teacache without a probe must be refused before any work")

    components = dataclasses.replace(components, encode_text=no_work, dit=no_work)
    with pytest.raises(InvalidRequestError) as e:
        run_generation(GenerationRequest(PROMPT, cache_policy="teacache", cache_threshold=0.1), config, components)
    assert e.value.param == "cache_policy" and "\n" not in str(e.value) and "dit_probe" in str(e.value)


# ------------------------------------------------------------------------------------------- the rule
def test_teacache_rule_step_by_step():
    """A probe that reports fixed changes; coefficients (1, 0) (rescale(x) = x) make the sums easy: warm-up 2,
    threshold 0.5, 8 steps."""
    changes = {2: 0.2, 3: 0.2, 4: 0.2, 5: 0.4, 6: 0.1}
    seen = []

    def probe(step, latents, prev_step, prev_latents):
        seen.append((step, prev_step, float(latents.flatten()[0]), float(prev_latents.flatten()[0])))
        return changes[step]

    xs = [torch.full((1, 2, 1, 2, 2), float(v)) for v in range(8)]
    cache = TeaCache(StepCacheParams("teacache", 0.5, 2), 8, probe, coefficients=(1.0, 0.0))
    called, outs = [], []
    for i, x in enumerate(xs):
        out, c = cache.velocity(i, x, lambda x=x: 2 * x + 1)
        called.append(c)
        outs.append(out)
    # 0, 1: warm-up; 2: acc 0.2 -> reuse; 3: 0.4 -> reuse; 4: 0.6 -> call (acc 0); 5: 0.4 -> reuse;
    # 6: 0.5 -> call; 7: the last step -> call (not probed)
    assert called == [True, True, False, False, True, False, True, True]
    assert [s[:2] for s in seen] == [(2, 1), (3, 2), (4, 3), (5, 4), (6, 5)]
    assert all(now == step and prev == prev_step for step, prev_step, now, prev in seen)  # the latents of each step
    assert cache.changes == [None, None, 0.2, 0.2, 0.2, 0.4, 0.1, None]
    # reused steps: x_t + (v_c - x_c) of the last computed step (v = 2x + 1: transformation x_c + 1)
    for i, expect in enumerate([1, 3, 2 + 2, 3 + 2, 9, 5 + 5, 13, 15]):
        torch.testing.assert_close(outs[i], torch.full_like(xs[0], float(expect)), rtol=0, atol=0)


def test_rescale_is_the_published_polynomial():
    coeffs = TEACACHE_COEFFICIENTS["hunyuan_video"]
    assert coeffs[0] == pytest.approx(733.226126) and coeffs[-1] == pytest.approx(0.0961237896)
    for x in (0.0, 0.01, 0.1, 0.37):
        assert rescale(coeffs, x) == pytest.approx(float(np.poly1d(coeffs)(x)), rel=1e-12)


def test_policies_that_cannot_skip_run_the_plain_loop():
    for params in (StepCacheParams("teacache", 0.0, 0), StepCacheParams("none", 1.0, 0)):
        assert type(make_step_cache(params, 10)) is StepCache  # no probe needed either
    assert type(make_step_cache(StepCacheParams("teacache", 0.1, 0), 10, probe=lambda *a: 0.0)) is TeaCache
    with pytest.raises(InvalidRequestError, match="cache_policy"):
        make_step_cache(StepCacheParams("teacache", 0.1, 0), 10)


# ------------------------------------------------------------------------------------------- generations
def test_threshold_zero_and_long_warmup_bit_identical_to_uncached(pipe):
    for kwargs in (dict(seed=3, num_inference_steps=6),
                   dict(seed=5, num_frames=5, height=64, width=48, num_inference_steps=4, true_cfg_scale=2.5)):
        expected = pipe.run(GenerationRequest(PROMPT, **kwargs, cache_policy="none"))
        for cache in (dict(cache_threshold=0.0, cache_warmup_steps=0), dict(cache_threshold=5.0,
                                                                            cache_warmup_steps=200)):
            tally = DitCallTally()
            frames = pipe.run(GenerationRequest(PROMPT, **kwargs, cache_policy="teacache", **cache), progress=tally)
            np.testing.assert_array_equal(frames, expected)
            assert tally.skipped == 0


def test_true_cfg_probes_once_and_branches_call_or_skip_together(pipe):
    from vidtrt.runtime.orchestrator import run_generation

    dit_calls, probe_calls, per_step = [0], [0], []
    dit, probe = pipe.components.dit, pipe.components.probe

    def counting_dit(*args):
        dit_calls[0] += 1
        return dit(*args)

    def counting_probe(*args):
        probe_calls[0] += 1
        assert args[0].shape[0] == 1 and args[4].shape[0] == 1  # the conditional branch only
        return probe(*args)

    def on_progress(e):
        if e.stage == "denoise":
            per_step.append(dit_calls[0])
            dit_calls[0] = 0

    components = dataclasses.replace(pipe.components, dit=counting_dit, probe=counting_probe)
    request = GenerationRequest(PROMPT, seed=9, num_inference_steps=16, true_cfg_scale=3.0, cache_policy="teacache",
                                cache_threshold=0.3, cache_warmup_steps=2)
    run_generation(request, pipe.config, components, progress=on_progress)
    assert len(per_step) == 16 and set(per_step) <= {0, 2} and 0 in per_step, per_step
    assert probe_calls[0] == 16 - 2 - 1  # every step after the warm-up but the last, once


def test_small_preset_calls_fall_as_threshold_rises(tmp_path, capsys):
    """`vidtrt cache-bench --cache-policy teacache` on the small preset, 30 steps: DiT calls fall as the threshold
    rises, the error grows, warm-up and last step always call."""
    from vidtrt.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat walks on the grass\n")
    out = tmp_path / "bench.json"
    rc = main(["cache-bench", "--model", "small", "--prompts", str(prompts), "--steps", "30", "--frames", "1",
               "--height", "64", "--width", "64", "--cache-policy", "teacache", "--cache-threshold", THRESHOLDS,
               "--cache-warmup-steps", "3", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "teacache rescaling polynomial" in text
    runs = json.loads(out.read_text())["runs"]
    calls = [r["dit_calls"] for r in runs]
    assert calls[0] == 30 and calls == sorted(calls, reverse=True) and calls[-1] < calls[1] < 30, calls
    psnr = [float(r["psnr_db"]) for r in runs]
    assert psnr[0] == float("inf") and psnr[1:] == sorted(psnr[1:], reverse=True), psnr
    for r in runs[1:]:
        assert r["pattern"][:3] == [1, 1, 1] and r["pattern"][-1] == 1



# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("kwargs, param", [
    (dict(cache_policy="teacache", cache_threshold=-0.1), "cache_threshold"),
    (dict(cache_policy="teacache", cache_threshold=float("nan")), "cache_threshold"),
    (dict(cache_policy="teacache", cache_warmup_steps=-1), "cache_warmup_steps"),
    (dict(cache_policy="TeaCache"), "cache_policy"),
])
def test_invalid_teacache_values_are_named(kwargs, param):
    with pytest.raises(InvalidRequestError) as e:
        GenerationRequest(PROMPT, **kwargs).validate(tiny_config())
    assert e.value.param == param and "\n" not in str(e.value) and "accepted" in str(e.value)


def test_cli_run_with_teacache_reports_skipped_calls(tmp_path, capsys):
    from vidtrt.cli import main

    rc = main(["run", PROMPT, "-o", str(tmp_path / "x.npy"), "--steps", "12", "--frames", "1", "--height", "64",
               "--width", "64", "--cache-policy", "teacache", "--cache-threshold", "0.3", "--cache-warmup-steps", "2",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "x.npy").is_file(), out
    calls, skipped = [int(v) for v in out.split("DiT calls ")[1].replace("(", "").split()[:2]]
    assert calls + skipped == 12 and 0 < skipped < 12, out
