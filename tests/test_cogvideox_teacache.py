"""TeaCache for CogVideoX in process: the probe (the DiT's timestep-embedding change, TeaCache4CogVideoX's
indicator) against diffusers' own time_proj / time_embedding, its ONNX export in onnxruntime against torch, the
coefficients chosen per variant, threshold 0 bit-identical to uncached, fewer DiT calls as the threshold rises,
one probe call and one decision per step for the batched CFG pair, and the one-line refusal without a probe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vidtrt.config.cogvideox_config import COGVIDEOX_PRESETS, CogVideoXTransformerConfig
from vidtrt.config.request import GenerationRequest
from vidtrt.config.step_cache import TEACACHE_COEFFICIENTS, teacache_variant
from vidtrt.errors import InvalidRequestError
from vidtrt.models.cogvideox_probe import CogVideoXDiTProbe
from vidtrt.models.cogvideox_transformer import CogVideoXTransformer3D
from vidtrt.runtime.cogvideox_pipeline import CogVideoXPipeline
from vidtrt.runtime.dit_probe import TorchCogVideoXProbe
from vidtrt.runtime.step_cache import DitCallTally

PROMPT = "a cat walks on the grass"
SMALL = dict(num_frames=1, height=32, width=48, negative_prompt="blurry")
# The three released architectures at toy width (as tests/test_cogvideox_models.py).
VARIANTS = {
    "cogvideox-2b": dict(use_rotary_positional_embeddings=False),
    "cogvideox-5b": dict(use_rotary_positional_embeddings=True),
    "cogvideox1.5-5b": dict(use_rotary_positional_embeddings=True, patch_size_t=2, patch_bias=False),
}


def _dit_config(variant: str) -> CogVideoXTransformerConfig:
    return CogVideoXTransformerConfig(num_attention_heads=2, attention_head_dim=16, num_layers=1, text_embed_dim=24,
                                      time_embed_dim=20, sample_width=12, sample_height=8, sample_frames=9,
                                      max_text_seq_length=7, **VARIANTS[variant]).validate()


@pytest.fixture(scope="module")
def pipe():
    return CogVideoXPipeline.from_model("tiny-cogvideox")


def _run(pipe, **kw):
    tally = DitCallTally()
    return pipe.run(GenerationRequest(PROMPT, **{**SMALL, **kw}), progress=tally), tally


# ------------------------------------------------------------------------------------------- the probe
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_probe_equals_teacache_indicator_from_diffusers_modules(variant):
    """Our probe on our DiT vs TeaCache4CogVideoX's rel-L1 of ``emb = time_embedding(time_proj(t))`` computed
    here from diffusers' own modules (same random weights), in float64; through the DitProbe adapter with
    latents of several shapes (1 latent frame, odd aspect, batch 2), which it does not read."""
    diffusers = pytest.importorskip("diffusers")
    cfg = _dit_config(variant)
    torch.manual_seed(len(variant))
    ref = diffusers.CogVideoXTransformer3DModel(**dataclasses.asdict(cfg)).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.3)
    ours = CogVideoXTransformer3D(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    probe = CogVideoXDiTProbe(ours)
    assert probe.time_embedding is ours.time_embedding  # the DiT's own module, no copy
    adapter = TorchCogVideoXProbe(probe)
    pt = cfg.patch_size_t or 1

    def emb(t):
        return ref.time_embedding(ref.time_proj(t).to(torch.float32)).double()

    g = torch.Generator().manual_seed(11)
    for batch, frames, h, w in [(1, pt, 4, 6), (2, 3 * pt, 6, 4), (2, 2 * pt, 8, 10), (1, pt, 2, 14)]:
        t = torch.randint(0, 1000, (batch,), generator=g)
        t_prev = torch.clamp(t + torch.randint(1, 60, (batch,), generator=g), max=999)
        with torch.no_grad():
            a, b = emb(t), emb(t_prev)
            want = (a - b).abs().mean(dim=1) / b.abs().mean(dim=1)
            got = probe(t, t_prev)
            x, x_prev = torch.randn(batch, frames, 16, h, w, generator=g), torch.randn(batch, frames, 16, h, w,
                                                                                         generator=g)
            via = adapter(x, t.float(), x_prev, t_prev.float())
        assert got.dtype == torch.float32 and got.shape == (batch,) and (got > 0).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
        torch.testing.assert_close(via, got, rtol=0, atol=0)
        # TeaCache's own formula: one mean over the whole (batch, channel) tensor; equal rows give the row value
        same = torch.cat([t[:1], t[:1]])
        whole = (emb(same) - emb(t_prev[:1].repeat(2))).abs().mean() / emb(t_prev[:1].repeat(2)).abs().mean()
        torch.testing.assert_close(probe(same, t_prev[:1].repeat(2)).double(), whole.repeat(2), rtol=1e-5, atol=0)
    with torch.no_grad():
        assert torch.equal(probe(torch.tensor([500]), torch.tensor([500])), torch.zeros(1))


def test_coefficients_follow_the_variant():
    """2B (sin-cos), 5B (RoPE) and 1.5 (patch_size_t) get TeaCache's published polynomials; tiny-cogvideox (a
    5B architecture) gets the 5B one."""
    want = {"cogvideox-2b": "cogvideox-2b", "cogvideox-5b": "cogvideox-5b", "cogvideox1.5-5b": "cogvideox1.5-5b",
            "tiny-cogvideox": "cogvideox-5b"}
    for preset, variant in want.items():
        assert teacache_variant(COGVIDEOX_PRESETS[preset]()) == variant
    assert TEACACHE_COEFFICIENTS["cogvideox-2b"][0] == pytest.approx(-31.0658903)
    assert TEACACHE_COEFFICIENTS["cogvideox-5b"][-1] == pytest.approx(-0.0523162339)
    assert TEACACHE_COEFFICIENTS["cogvideox1.5-5b"][0] == pytest.approx(250.210439)
    assert len({TEACACHE_COEFFICIENTS[v] for v in VARIANTS}) == 3


def test_onnx_probe_in_onnxruntime_matches_torch(tmp_path):
    """The probe exported through its spec (``vidtrt export`` of a CogVideoX model, optional component), in
    onnxruntime, vs the torch probe (batch 1 and 2, fresh random timesteps); the onnxruntime engines pick it up
    and a generation with it makes the same decisions as in torch."""
    from vidtrt.export.onnx_export import export_components, exported_components
    from vidtrt.runtime.engine_components import engine_dit_probe
    from vidtrt.source.model_source import ModelSource

    source = ModelSource.open("tiny-cogvideox")
    assert "dit_probe" in exported_components(source)
    manifest = export_components(source, tmp_path, components=["dit_probe"], verify=True, log=None)
    assert "dit_probe" in manifest["components"]
    onnx_probe = engine_dit_probe(source, "onnxruntime", tmp_path, providers=["CPUExecutionProvider"])
    torch_probe = engine_dit_probe(source, "torch")
    assert onnx_probe.spec.input_names == ["timestep", "prev_timestep"]
    g = np.random.default_rng(5)
    for batch in (1, 2, 2):
        t = g.integers(0, 1000, batch).astype(np.float32)
        feeds = {"timestep": t, "prev_timestep": np.minimum(t + g.integers(1, 80, batch), 999).astype(np.float32)}
        got, want = onnx_probe.run(feeds)["rel_l1"], torch_probe.run(feeds)["rel_l1"]
        assert got.shape == (batch,) and got.dtype == np.float32 and (want > 0).all()
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=0)


# ------------------------------------------------------------------------------------------- generations
def test_threshold_zero_and_long_warmup_bit_identical_to_uncached(pipe):
    assert pipe.components.probe is not None
    for cfg in (dict(true_cfg_scale=4.0), dict(true_cfg_scale=1.0)):
        base, _ = _run(pipe, seed=3, num_inference_steps=6, cache_policy="none", **cfg)
        for cache in (dict(cache_threshold=0.0, cache_warmup_steps=0),
                      dict(cache_threshold=5.0, cache_warmup_steps=50)):
            frames, tally = _run(pipe, seed=3, num_inference_steps=6, cache_policy="teacache", **cfg, **cache)
            np.testing.assert_array_equal(frames, base)
            assert tally.skipped == 0


def _counting(pipe, rows):
    def counting_probe(*args):
        rows.append(args[1].numel())
        return pipe.components.probe(*args)

    return CogVideoXPipeline(pipe.config, dataclasses.replace(pipe.components, probe=counting_probe))


def test_calls_fall_as_threshold_rises_and_one_probe_per_step(pipe, monkeypatch):
    """24 steps, CFG batched, the rescaling polynomial set to the identity (the tiny preset's random time
    embedding changes by about 0.6 per step, far outside the range the published polynomials were fitted on;
    see the next test): DiT calls fall as the threshold rises; every step calls the DiT once or not at all (one
    decision for both branches) and the probe runs once per probed step, on one row."""
    steps, warmup, rows = 24, 2, []
    monkeypatch.setitem(TEACACHE_COEFFICIENTS, teacache_variant(pipe.config), (1.0, 0.0))
    counted = _counting(pipe, rows)
    base, _ = _run(pipe, seed=1, num_inference_steps=steps)
    calls, patterns = [], []
    for threshold in (0.3, 1.5, 3.0):
        rows.clear()
        frames, tally = _run(counted, seed=1, num_inference_steps=steps, cache_policy="teacache",
                             cache_threshold=threshold, cache_warmup_steps=warmup)
        assert tally.calls + tally.skipped == steps and tally.pattern[:warmup] == [1] * warmup
        assert tally.pattern[-1] == 1 and set(tally.pattern) <= {0, 1}
        assert rows == [1] * (steps - warmup - 1)
        assert frames.shape == base.shape and frames.dtype == np.uint8
        calls.append(tally.calls)
        patterns.append("".join(map(str, tally.pattern)))
    assert calls[0] == steps and calls == sorted(calls, reverse=True) and calls[-1] < steps // 2, (calls, patterns)


def test_published_5b_polynomial_on_the_random_tiny_preset(pipe):
    """tiny-cogvideox gets the 5B polynomial, which is negative for changes above about 0.35; the random preset's
    timestep embedding changes by 0.4-1.2 per step, so (as in TeaCache) the sum stays negative and every probed
    step reuses, whatever the positive threshold. Warm-up and the last step still call the DiT."""
    from vidtrt.runtime.cogvideox_scheduler import CogVideoXSampler
    from vidtrt.runtime.step_cache import rescale

    steps = 12
    ts = CogVideoXSampler(pipe.config.scheduler, steps).timesteps
    probe = pipe.components.probe
    changes = [float(probe(None, ts[i].reshape(1), None, ts[i - 1].reshape(1))[0]) for i in range(1, steps)]
    assert min(changes) > 0.35 and all(rescale(TEACACHE_COEFFICIENTS["cogvideox-5b"], c) < 0 for c in changes)
    for threshold in (0.01, 2.0):
        _, tally = _run(pipe, seed=4, num_inference_steps=steps, cache_policy="teacache", cache_threshold=threshold,
                        cache_warmup_steps=3)
        assert tally.pattern == [1, 1, 1] + [0] * (steps - 4) + [1]


def test_teacache_without_probe_refused_before_any_work(pipe):
    def no_work(*a, **k):
        raise AssertionError("teacache without a probe must be refused before any work")

    bare = CogVideoXPipeline(pipe.config, dataclasses.replace(pipe.components, encode_text=no_work, dit=no_work,
                                                              probe=None))
    with pytest.raises(InvalidRequestError) as e:
        bare.run(GenerationRequest(PROMPT, **SMALL, cache_policy="teacache", cache_threshold=0.1))
    assert e.value.param == "cache_policy" and "\n" not in str(e.value) and "dit_probe" in str(e.value)


def test_cli_run_with_teacache_reports_skipped_calls(tmp_path, capsys):
    from vidtrt.cli import main

    rc = main(["run", PROMPT, "--model", "tiny-cogvideox", "-o", str(tmp_path / "x.npy"), "--steps", "16",
               "--frames", "1", "--height", "32", "--width", "48", "--cache-policy", "teacache",
               "--cache-threshold", "0.1", "--cache-warmup-steps", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "x.npy").is_file(), out
    calls, skipped = [int(v) for v in out.split("DiT calls ")[1].replace("(", "").split()[:2]]
    assert (calls, skipped) == (3, 13), out  # the 5B polynomial on the random preset: see the test above


def test_onnxruntime_engines_and_repository_pick_up_the_exported_probe(pipe, tmp_path, monkeypatch):
    """`vidtrt export` of tiny-cogvideox holds dit_probe: the onnxruntime components carry it and make the torch
    pipeline's decisions (identity polynomial, 16 steps), and `vidtrt build --engine onnxruntime` serves it as
    cogvideox_dit_probe. Artifacts without it (an older export): no probe, no probe model, teacache refused."""
    import json

    from onnx_artifacts import tiny_cogvideox_artifacts

    from vidtrt.export.repository import build_repository
    from vidtrt.runtime.engine_components import MANIFEST_NAME, load_pipeline_with_engine

    art = tiny_cogvideox_artifacts()
    ort = load_pipeline_with_engine("tiny-cogvideox", "onnxruntime", art, providers=["CPUExecutionProvider"])
    assert ort.components.probe is not None
    monkeypatch.setitem(TEACACHE_COEFFICIENTS, "cogvideox-5b", (1.0, 0.0))
    kwargs = dict(seed=2, num_inference_steps=16, cache_policy="teacache", cache_threshold=1.5, cache_warmup_steps=2)
    _, want = _run(pipe, **kwargs)
    _, got = _run(ort, **kwargs)
    assert got.pattern == want.pattern and 0 < got.skipped < 14, (got.pattern, want.pattern)
    assert (build_repository("tiny-cogvideox", tmp_path / "repo", "onnxruntime", artifacts=art)
            / "cogvideox_dit_probe" / "config.pbtxt").is_file()

    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((art / MANIFEST_NAME).read_text())
    del manifest["components"]["dit_probe"]
    for f in art.iterdir():
        if f.name != MANIFEST_NAME and not f.name.startswith("dit_probe"):
            (old / f.name).symlink_to(f)
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    bare = load_pipeline_with_engine("tiny-cogvideox", "onnxruntime", old, providers=["CPUExecutionProvider"])
    assert bare.components.probe is None
    with pytest.raises(InvalidRequestError) as e:
        bare.run(GenerationRequest(PROMPT, **SMALL, cache_policy="teacache", cache_threshold=0.1))
    assert e.value.param == "cache_policy"
    assert not (build_repository("tiny-cogvideox", tmp_path / "repo-old", "onnxruntime", artifacts=old)
                / "cogvideox_dit_probe").exists()
