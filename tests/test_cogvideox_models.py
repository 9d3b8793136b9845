"""CogVideoX DiT, VAE decoder and schedulers vs diffusers 0.42 (the oracle) on random tiny configs of each
variant: 2B-like (3D sin-cos, DDIM), 5B-like (3D RoPE, DPM), 1.5-like (RoPE, time patched by 2). fp32,
relative error <= 1e-5, fresh random weights and inputs, several sizes (odd aspect ratios, one latent frame,
batch 2)."""

import dataclasses

import pytest
import torch

from vidtrt.config.cogvideox_config import (
    COGVIDEOX_PRESETS,
    CogVideoXSchedulerConfig,
    CogVideoXTransformerConfig,
    CogVideoXVAEConfig,
)
from vidtrt.models.cogvideox_transformer import CogVideoXTransformer3D
from vidtrt.models.cogvideox_vae import CogVideoXVAEDecoder
from vidtrt.runtime.cogvideox_scheduler import CogVideoXSampler

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5
VARIANTS = {
    "2b": dict(use_rotary_positional_embeddings=False),
    "5b": dict(use_rotary_positional_embeddings=True),
    "1.5": dict(use_rotary_positional_embeddings=True, patch_size_t=2, patch_bias=False),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def tiny_dit_config(variant: str) -> CogVideoXTransformerConfig:
    return CogVideoXTransformerConfig(num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=24,
                                      time_embed_dim=20, sample_width=12, sample_height=8, sample_frames=9,
                                      max_text_seq_length=7, **VARIANTS[variant]).validate()


def reference_rope(ref, height_px: int, width_px: int, frames: int):
    """The RoPE tables diffusers' pipeline hands its transformer."""
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline

    holder = type("P", (), {"transformer": ref, "vae_scale_factor_spatial": 8})()
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(holder, height_px, width_px, frames, "cpu")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformer_matches_diffusers(variant):
    torch.manual_seed(hash(variant) % 1000)
    cfg = tiny_dit_config(variant)
    ref = diffusers.CogVideoXTransformer3DModel(**dataclasses.asdict(cfg)).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.3)  # make every term matter (diffusers' init leaves some near zero)
    ours = CogVideoXTransformer3D(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # diffusers names, as they are
    pt = cfg.patch_size_t or 1
    # (latent frames, h, w): default grid, odd aspect ratios, one latent frame (1.5: one token frame)
    for frames, h, w in [(3 * pt, 8, 12), (pt, 4, 10), (2 * pt, 8, 4), (pt, 6, 6)]:
        x = torch.randn(2, frames, 16, h, w)
        text = torch.randn(2, 7, 24)
        t = torch.tensor([999, 421])
        rope = reference_rope(ref, 8 * h, 8 * w, frames) if cfg.use_rotary_positional_embeddings else None
        with torch.no_grad():
            want = ref(x, text, t, image_rotary_emb=rope, return_dict=False)[0]
            got = ours(x, text, t)
        assert got.shape == want.shape == x.shape
        assert rel(want, got) <= TOL, (variant, frames, h, w, rel(want, got))


def test_transformer_rejects_grid_beyond_15_rope():
    ours = CogVideoXTransformer3D(tiny_dit_config("1.5"))
    with pytest.raises(ValueError, match="exceeds the RoPE grid"):
        ours(torch.randn(1, 2, 16, 4, 14), torch.randn(1, 7, 24), torch.tensor([1]))


# latent frames: 1 (minimum), 3 (a first batch of three), 5 and 7 (conv cache across batches); odd sizes
@pytest.mark.parametrize("groups,layers,sizes", [(4, 1, [(1, 4, 6), (3, 5, 3), (5, 2, 3), (7, 3, 2)]),
                                                 (2, 2, [(3, 3, 2)])])
def test_vae_decoder_matches_diffusers(groups, layers, sizes):
    torch.manual_seed(7 + layers)
    cfg = CogVideoXVAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=layers, norm_num_groups=groups,
                             sample_height=64, sample_width=96).validate()
    ref = diffusers.AutoencoderKLCogVideoX(**dataclasses.asdict(cfg)).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.2)
    ours = CogVideoXVAEDecoder(cfg).eval()
    state = {k: v for k, v in ref.state_dict().items() if k.startswith("decoder.")}
    ours.load_state_dict(state, strict=True)
    for t, h, w in sizes:
        z = torch.randn(1, 16, t, h, w)
        with torch.no_grad():
            want = ref.decode(z).sample
            got = ours(z)
        assert got.shape == want.shape == (1, 3, 4 * (t - 1) + 1, 8 * h, 8 * w)
        assert rel(want, got) <= TOL, (t, h, w, rel(want, got))


@pytest.mark.parametrize("solver,snr,steps", [("ddim", 3.0, 7), ("dpm", 1.0, 6), ("dpm", 3.0, 50), ("ddim", 1.0, 1)])
def test_scheduler_matches_diffusers(solver, snr, steps):
    cfg = CogVideoXSchedulerConfig(solver=solver, snr_shift_scale=snr)
    kwargs = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "solver"}
    cls = diffusers.CogVideoXDDIMScheduler if solver == "ddim" else diffusers.CogVideoXDPMScheduler
    ref = cls(**kwargs)
    ref.set_timesteps(steps)
    ours = CogVideoXSampler(cfg, steps)
    assert torch.equal(ref.timesteps, ours.timesteps)
    g_ref = torch.Generator().manual_seed(steps)
    g_ours = torch.Generator().manual_seed(steps)
    x_ref = torch.randn(1, 3, 4, 5, 6, generator=g_ref)
    x_ours = torch.randn(1, 3, 4, 5, 6, generator=g_ours)
    old = None
    for i, t in enumerate(ref.timesteps):
        v = torch.randn_like(x_ref)
        if solver == "ddim":
            x_ref = ref.step(v, t, x_ref, return_dict=False)[0]
        else:
            back = ref.timesteps[i - 1] if i > 0 else None
            x_ref, old = ref.step(v, old, t, back, x_ref, generator=g_ref, return_dict=False)
        x_ours = ours.step(v, i, x_ours, g_ours)
    assert torch.equal(x_ref, x_ours)  # same arithmetic, same noise draws: bit-identical


def test_presets_validate_and_differ():
    configs = {name: make() for name, make in COGVIDEOX_PRESETS.items()}
    assert len({c.fingerprint() for c in configs.values()}) == len(configs)
    five, one5 = configs["cogvideox-5b"], configs["cogvideox1.5-5b"]
    assert five.transformer.inner_dim == 48 * 64 and five.transformer.num_layers == 42
    assert configs["cogvideox-2b"].transformer.inner_dim == 30 * 64
    assert one5.latent_frames(81) == (22, 1)  # 21 latent frames padded to a multiple of patch_size_t
    assert five.latent_frames(49) == (13, 0)
    # diffusers' 720x480 tiling: 240x360-pixel tiles, 200x288 strides
    t = configs["cogvideox-2b"].tiling
    assert (t.tile_sample_min_height, t.tile_sample_min_width, t.tile_sample_stride_height,
            t.tile_sample_stride_width) == (240, 360, 200, 288)


def test_transformer_with_our_triton_attention_kernel(monkeypatch):
    """The DiT through the backend switch with our flash-attention kernel (Triton interpreter on CPU; head dim
    64 as the released models) equals the PyTorch SDPA path."""
    pytest.importorskip("triton")
    from vidtrt.models import attention as attn
    from vidtrt.models.attention import check_backend, use_backend

    check_backend("triton")
    kernel, calls = attn._BACKENDS["triton"], []
    monkeypatch.setitem(attn._BACKENDS, "triton", lambda *a: calls.append(1) or kernel(*a))

    torch.manual_seed(3)
    cfg = dataclasses.replace(tiny_dit_config("5b"), num_attention_heads=1, attention_head_dim=64, num_layers=1)
    dit = CogVideoXTransformer3D(cfg).eval()
    x, text, t = torch.randn(1, 1, 16, 4, 6), torch.randn(1, 7, 24), torch.tensor([700])
    with torch.no_grad():
        want = dit(x, text, t)
        with use_backend("triton"):
            got = dit(x, text, t)
    assert len(calls) == cfg.num_layers and rel(want, got) <= 1e-4
