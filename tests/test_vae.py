"""Our HunyuanVideo VAE decoder vs diffusers' AutoencoderKLHunyuanVideo (tiny, random weights, CPU fp32)."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLHunyuanVideo  # noqa: E402
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import prepare_causal_attention_mask  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vidtrt.config.model_config import TilingConfig, VAEConfig  # noqa: E402
from vidtrt.config.tiling import decode, plan_tiles  # noqa: E402
from vidtrt.models.vae import IGNORED_PREFIXES, HunyuanVideoVAEDecoder, causal_frame_mask  # noqa: E402
from vidtrt.models.vae_official_layout import diffusers_vae_to_official, official_vae_to_diffusers  # noqa: E402

TINY = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
# Small tiles so both spatial and temporal tiling happen at toy sizes (diffusers enable_tiling kwargs).
SMALL_TILES = dict(
    tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_min_num_frames=8,
    tile_sample_stride_height=24, tile_sample_stride_width=24, tile_sample_stride_num_frames=4,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI box has 2 cores shared with other jobs; 2 threads of conv3d contend badly.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * noise)  # GroupNorm scales around 1
            else:
                p.copy_(0.3 * noise)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(diffusers VAE, our decoder loaded from the diffusers safetensors file)."""
    torch.manual_seed(0)
    ref = AutoencoderKLHunyuanVideo(**TINY).eval()
    _randomize(ref, 1)
    folder = tmp_path_factory.mktemp("vae")
    ref.save_pretrained(folder)
    full = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert any(k.startswith("encoder.") for k in full) and any(k.startswith("quant_conv.") for k in full)
    ours = HunyuanVideoVAEDecoder(VAEConfig(**TINY)).eval()
    ours.load_state_dict({k: v for k, v in full.items() if not k.startswith(IGNORED_PREFIXES)}, strict=True)
    return ref, ours


@pytest.mark.parametrize("add_attention", [True, False])
def test_state_dict_keys_equal_diffusers(add_attention):
    ref = AutoencoderKLHunyuanVideo(**TINY, mid_block_add_attention=add_attention)
    ours = HunyuanVideoVAEDecoder(VAEConfig(**TINY, mid_block_add_attention=add_attention))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith(IGNORED_PREFIXES)}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want


def test_full_size_keys_equal_diffusers():
    with torch.device("meta"):
        ref = AutoencoderKLHunyuanVideo()
        ours = HunyuanVideoVAEDecoder(VAEConfig())
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith(IGNORED_PREFIXES)}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want


@pytest.mark.parametrize("frames,hw", [(1, 3), (2, 6), (4, 20), (5, 1)])
def test_causal_frame_mask_equals_diffusers(frames, hw):
    additive = prepare_causal_attention_mask(frames, hw, torch.float32, torch.device("cpu"))
    ours = causal_frame_mask(frames, hw)
    assert ours.dtype == torch.bool
    assert torch.equal(ours, additive == 0)
    assert torch.equal(torch.isinf(additive), ~ours)


def test_bool_mask_equals_additive_mask_in_sdpa():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 1, 3 * 6, 16, generator=g) for _ in range(3))
    additive = prepare_causal_attention_mask(3, 6, torch.float32, torch.device("cpu"), batch_size=2).unsqueeze(1)
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=additive)
    b = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal_frame_mask(3, 6))
    assert _rel(a, b) < 1e-6


@pytest.mark.parametrize(
    "shape",
    [(1, 16, 1, 4, 6), (2, 16, 3, 5, 7), (1, 16, 6, 8, 5), (1, 16, 2, 3, 9)],
    ids=["1frame", "batch2", "6frames", "wide"],
)
def test_untiled_matches_diffusers(pair, shape):
    ref, ours = pair
    ref.disable_tiling()
    ref.use_framewise_decoding = False  # diffusers chunks frames by default even without enable_tiling
    z = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        want = ref.decode(z).sample
        got = ours(z)
    assert got.shape == (shape[0], 3, 4 * (shape[2] - 1) + 1, 8 * shape[3], 8 * shape[4])
    assert _rel(want, got) <= 1e-5


def test_untiled_float64_is_exact(pair):
    """Same algorithm, not just close: in float64 the difference is at rounding level."""
    ref, ours = pair
    ref64 = AutoencoderKLHunyuanVideo(**TINY).eval().double()
    ref64.load_state_dict(ref.state_dict())
    ref64.use_framewise_decoding = False
    ours64 = HunyuanVideoVAEDecoder(VAEConfig(**TINY)).eval().double()
    ours64.load_state_dict(ours.state_dict())
    z = torch.randn(1, 16, 3, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(ref64.decode(z).sample, ours64(z)) < 1e-12


@pytest.mark.parametrize(
    "shape",
    [(1, 16, 6, 5, 7), (1, 16, 1, 7, 4), (1, 16, 5, 4, 4), (2, 16, 3, 4, 5)],
    ids=["spatial+temporal", "1frame-spatial", "temporal-short", "batch2-both"],
)
def test_tiled_matches_diffusers(pair, shape):
    ref, ours = pair
    ref.enable_tiling(**SMALL_TILES)
    ref.use_framewise_decoding = True
    vae, tiling = VAEConfig(**TINY), TilingConfig(**SMALL_TILES)
    plan = plan_tiles(shape, vae, tiling)
    if shape[2] > 2:
        assert plan.temporal_tiling
    if max(shape[3:]) > 4:
        assert plan.spatial_tiling
    calls = []

    def decode_tile(z):
        assert z.shape[0] == 1
        calls.append(tuple(z.shape))
        return ours(z)

    z = torch.randn(shape, generator=torch.Generator().manual_seed(7 + sum(shape)))
    with torch.no_grad():
        want = ref.decode(z).sample
        got = decode(z, decode_tile, vae, tiling)
    assert got.shape == want.shape
    assert len(calls) == plan.num_tiles
    assert _rel(want, got) <= 1e-4


def test_diffusers_default_framewise_only(pair):
    """diffusers without enable_tiling still chunks frames; decode(enable_tiling=False, framewise=True)
    reproduces that, and with both off it is one call."""
    ref, ours = pair
    ref.disable_tiling()
    ref.use_framewise_decoding = True
    ref.tile_sample_min_num_frames, ref.tile_sample_stride_num_frames = 8, 4
    vae, tiling = VAEConfig(**TINY), TilingConfig(**SMALL_TILES)
    z = torch.randn(1, 16, 4, 5, 6, generator=torch.Generator().manual_seed(11))
    calls = []

    def decode_tile(x):
        calls.append(tuple(x.shape))
        return ours(x)

    with torch.no_grad():
        want = ref.decode(z).sample
        got = decode(z, decode_tile, vae, tiling, enable_tiling=False, framewise=True)
        assert _rel(want, got) <= 1e-4
        assert all(c[3:] == (5, 6) for c in calls) and len(calls) == 3
        calls.clear()
        untiled = decode(z, decode_tile, vae, tiling, enable_tiling=False)
    assert calls == [(1, 16, 4, 5, 6)]
    with torch.no_grad():
        assert torch.equal(untiled, ours(z))


def test_official_layout_round_trip(pair):
    ref, ours = pair
    full = ref.state_dict()
    official = diffusers_vae_to_official(full)
    back = official_vae_to_diffusers(official)
    assert back.keys() == full.keys()
    assert all(torch.equal(back[k], full[k]) for k in full)
    # The containers official .pt files come in: {"state_dict": ...} and "vae."-prefixed training dumps.
    wrapped = {"state_dict": {**{f"vae.{k}": v for k, v in official.items()}, "loss.logvar": torch.zeros(1)}}
    unwrapped = official_vae_to_diffusers(wrapped)
    assert unwrapped.keys() == full.keys()
    loaded = HunyuanVideoVAEDecoder(VAEConfig(**TINY)).eval()
    loaded.load_state_dict({k: v for k, v in unwrapped.items() if not k.startswith(IGNORED_PREFIXES)}, strict=True)
    z = torch.randn(1, 16, 2, 3, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded(z), ours(z))


def test_export_dynamic_shapes():
    """No Python branches on sizes: one exported program serves 1..5 frames and any tile height/width."""
    from torch.export import Dim

    model = HunyuanVideoVAEDecoder(VAEConfig(**TINY)).eval()
    _randomize(model, 2)
    dyn = {"z": {2: Dim("t", min=1, max=5), 3: Dim("h", min=2, max=32), 4: Dim("w", min=2, max=32)}}
    program = torch.export.export(model, (torch.randn(1, 16, 3, 4, 5),), dynamic_shapes=dyn)
    for shape in [(1, 16, 1, 4, 6), (1, 16, 5, 3, 2)]:
        z = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(program.module()(z), model(z), rtol=0, atol=1e-6)
