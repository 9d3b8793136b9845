"""The tile plan (pure data) for every supported size, and tiled_decode's blending, without a real VAE."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from vidtrt.config.model_config import TilingConfig, VAEConfig
from vidtrt.config.tiling import AxisTile, decode, max_tile_latent_shape, plan_tiles, tiled_decode
from vidtrt.errors import ConfigError, EngineError

VAE = VAEConfig()
TILING = TilingConfig()

# The supported-sizes table (height x width, both orientations of every tier/aspect).
SIZES = [
    (544, 960), (960, 544), (624, 832), (832, 624), (720, 720),
    (720, 1280), (1280, 720), (1104, 832), (832, 1104), (960, 960),
]
FRAMES = [1, 5, 33, 129]


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI box has 2 cores shared with other jobs; multithreaded small ops contend badly.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _latent(frames: int, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int, int]:
    return (batch, 16, (frames - 1) // 4 + 1, height // 8, width // 8)


def test_max_tile_latent_shape_defaults():
    assert max_tile_latent_shape(VAE, TILING) == (16, 5, 32, 32)


def test_tiling_must_align_with_compression():
    with pytest.raises(ConfigError):
        plan_tiles((1, 16, 9, 40, 40), VAE, TilingConfig(tile_sample_stride_height=196))
    with pytest.raises(ConfigError):
        max_tile_latent_shape(VAE, TilingConfig(tile_sample_stride_num_frames=10))


def _simulate_axis(axis: tuple[AxisTile, ...], size: int) -> list[dict[int, Fraction]]:
    """Each output sample as {tile index: weight}, by running the plan's 1-D blends exactly as
    tiled_decode does (in place, each tile blended with its already-blended predecessor)."""
    tiles: list[list[dict[int, Fraction]]] = []
    out: list[dict[int, Fraction] | None] = [None] * size
    for n, t in enumerate(axis):
        samples = [{n: Fraction(1)} for _ in range(t.length)]
        if n:
            prev = tiles[-1]
            e = t.blend
            for k in range(e):
                a, b = prev[len(prev) - e + k], samples[k]
                mixed: dict[int, Fraction] = {}
                for src, w in a.items():
                    mixed[src] = mixed.get(src, 0) + w * (1 - Fraction(k, e))
                for src, w in b.items():
                    mixed[src] = mixed.get(src, 0) + w * Fraction(k, e)
                samples[k] = mixed
        tiles.append(samples)
        for k in range(t.keep):
            assert out[t.out_start + k] is None, "kept regions overlap"
            out[t.out_start + k] = samples[k]
    assert all(s is not None for s in out), "output not covered"
    return out  # type: ignore[return-value]


def _check_axis(axis: tuple[AxisTile, ...], size: int, ratio: int, temporal: bool) -> None:
    # Kept regions partition [0, size) in order.
    pos = 0
    for t in axis:
        assert t.out_start == pos and 0 < t.keep <= t.length
        pos += t.keep
    assert pos == size
    for n, t in enumerate(axis):
        # Each tile's samples sit where its latents decode to (after the dropped causal first frame).
        if temporal:
            assert t.drop == (1 if n else 0)
            assert t.length == ratio * (t.latent_len - 1) + 1 - t.drop
            assert t.out_start == (ratio * t.latent_start + 1 if n else 0)
        else:
            assert t.drop == 0 and t.length == ratio * t.latent_len and t.out_start == ratio * t.latent_start
        if n:
            prev = axis[n - 1]
            # The blended head overlays exactly the previous tile's blended-from tail.
            assert 0 < t.blend <= min(prev.length, t.length)
            assert prev.out_start + prev.length - t.blend == t.out_start
        else:
            assert t.blend == 0
    # Weights: every output sample is a convex combination (sums to 1) of tiles that cover it.
    for idx, weights in enumerate(_simulate_axis(axis, size)):
        assert sum(weights.values()) == 1
        assert all(w >= 0 for w in weights.values())
        for src in weights:
            t = axis[src]
            assert t.out_start <= idx < t.out_start + t.length


@pytest.mark.parametrize("frames", FRAMES)
@pytest.mark.parametrize("height,width", SIZES)
def test_plan_covers_supported_sizes(height, width, frames):
    shape = _latent(frames, height, width)
    plan = plan_tiles(shape, VAE, TILING)
    assert plan.output_shape == (1, 3, frames, height, width)
    assert plan.spatial_tiling  # every supported size exceeds one 256 px tile
    assert plan.temporal_tiling == (shape[2] > 4)
    _check_axis(plan.frames, frames, 4, temporal=True)
    _check_axis(plan.rows, height, 8, temporal=False)
    _check_axis(plan.cols, width, 8, temporal=False)
    limit = max_tile_latent_shape(VAE, TILING)
    for tile in plan.tiles:
        assert all(0 < got <= lim for got, lim in zip(tile.latent_shape, limit[1:], strict=True))
    assert plan.max_latent_tile[0] == 16


def test_plan_720p_129_frames():
    plan = plan_tiles(_latent(129, 720, 1280), VAE, TILING)
    assert (len(plan.frames), len(plan.rows), len(plan.cols)) == (11, 4, 7)
    assert plan.num_tiles == 308
    assert plan.max_latent_tile == (16, 5, 32, 32)
    assert [(f.latent_start, f.latent_stop) for f in plan.frames][-2:] == [(27, 32), (30, 33)]
    assert [(r.latent_start, r.latent_stop) for r in plan.rows] == [(0, 32), (24, 56), (48, 80), (72, 90)]


@pytest.mark.parametrize("latent_frames", range(1, 14))
def test_temporal_axis_short_and_odd_clips(latent_frames):
    shape = (1, 16, latent_frames, 32, 32)
    plan = plan_tiles(shape, VAE, TILING)
    frames = 4 * (latent_frames - 1) + 1
    _check_axis(plan.frames, frames, 4, temporal=True)
    assert not plan.spatial_tiling and len(plan.rows) == len(plan.cols) == 1
    # diffusers' chunk starting at the last latent frame decodes to nothing after the drop: not planned.
    assert all(f.length > 0 for f in plan.frames)
    assert plan.temporal_tiling == (latent_frames > 4)


def test_untiled_plan():
    plan = plan_tiles((2, 16, 9, 40, 50), VAE, TILING, spatial=False, temporal=False)
    assert plan.num_tiles == 2 and plan.tiles_per_sample == 1
    assert plan.tiles[0].latent_shape == (9, 40, 50)


def _fake_decoder(calls: list | None = None):
    """A cheap stand-in for the VAE with the real shape contract: nearest 'causal' upsampling of two
    latent channels, plus a per-tile offset (the tile's mean) so that the blends are visible."""

    def decode_tile(z: torch.Tensor) -> torch.Tensor:
        assert z.shape[0] == 1
        if calls is not None:
            calls.append(tuple(z.shape))
        t = z.shape[2]
        src = (torch.arange(4 * (t - 1) + 1) + 3) // 4  # frame 0 <- latent 0, frames 4k-3..4k <- latent k
        x = z[:, :2].index_select(2, src)
        x = x.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)
        return x + z.mean()

    return decode_tile


def _diffusers_reference(z: torch.Tensor, decode_tile, tiling: TilingConfig, spatial: bool) -> torch.Tensor:
    """diffusers' AutoencoderKLHunyuanVideo tiled/temporal decode, run with ``decode_tile`` as its
    decoder (post_quant_conv = identity)."""
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKLHunyuanVideo(
        block_out_channels=(4, 4, 4, 4), layers_per_block=1, norm_num_groups=2
    ).eval()
    vae.decoder = _Wrap(decode_tile)
    vae.post_quant_conv = torch.nn.Identity()
    if spatial:
        vae.enable_tiling(**vars(tiling))
    else:
        vae.disable_tiling()
    with torch.no_grad():
        return vae.decode(z).sample


class _Wrap(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, z):
        return torch.cat([self.fn(z[i : i + 1]) for i in range(z.shape[0])])


@pytest.mark.parametrize(
    "latent_shape",
    [(1, 16, 9, 68, 120), (1, 16, 1, 90, 40), (2, 16, 6, 33, 25), (1, 16, 7, 30, 20)],
    ids=["544x960x33", "1frame-720x320", "batch2-short", "temporal-only"],
)
def test_tiled_decode_bit_equal_to_diffusers_blending(latent_shape):
    """Default tile sizes, realistic shapes: our streamed blend equals diffusers' loops exactly."""
    z = torch.randn(latent_shape, generator=torch.Generator().manual_seed(sum(latent_shape)))
    calls: list = []
    got = decode(z, _fake_decoder(calls), VAE, TILING)
    want = _diffusers_reference(z, _fake_decoder(), TILING, spatial=True)
    assert got.shape == want.shape
    assert torch.equal(got, want)
    plan = plan_tiles(latent_shape, VAE, TILING)
    assert len(calls) == plan.num_tiles
    limit = max_tile_latent_shape(VAE, TILING)
    assert all(c[1] == 16 and all(a <= b for a, b in zip(c[2:], limit[1:], strict=True)) for c in calls)


def test_tiled_decode_reconstructs_position_faithful_decoder():
    """With a decoder whose output depends only on the global position, tiling must be invisible:
    misplaced tiles or blends would show up as differences."""

    def faithful(z):
        return _fake_decoder()(z) - z.mean()

    z = torch.randn(1, 16, 11, 50, 70, generator=torch.Generator().manual_seed(0))
    whole = faithful(z)
    tiled = decode(z, faithful, VAE, TILING)
    assert torch.allclose(tiled, whole, rtol=0, atol=1e-6)


def test_decode_tile_may_reuse_its_output_buffer():
    """Engines return the same output buffer every call; tiled_decode must copy before keeping."""
    buf: dict = {}

    def reusing(z):
        out = _fake_decoder()(z)
        if buf.get("t") is None or buf["t"].shape != out.shape:
            buf["t"] = torch.empty_like(out)
        buf["t"].copy_(out)
        return buf["t"]

    z = torch.randn(1, 16, 9, 40, 40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(decode(z, reusing, VAE, TILING), decode(z, _fake_decoder(), VAE, TILING))


def test_wrong_tile_output_shape_is_an_engine_error():
    plan = plan_tiles((1, 16, 2, 40, 40), VAE, TILING)
    with pytest.raises(EngineError):
        tiled_decode(torch.zeros(1, 16, 2, 40, 40), lambda z: torch.zeros(1, 3, 5, 8, 8), plan)
    with pytest.raises(ValueError):
        tiled_decode(torch.zeros(1, 16, 3, 40, 40), _fake_decoder(), plan)
