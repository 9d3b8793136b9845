"""Tiled VAE decode: the tile plan (pure Python) and the blend (torch), equal to diffusers'
``AutoencoderKLHunyuanVideo.tiled_decode`` / ``_temporal_tiled_decode``.

How diffusers decodes latents [B, C, T', H', W'] (tile sizes and strides in output pixels/frames,
``TilingConfig``; latent sizes are those divided by the compression ratios):

* Temporal ("framewise", on by default in diffusers even without ``enable_tiling``) when
  T' > tile_frames / 4: chunks start every stride_frames / 4 latent frames and span
  tile_frames / 4 + 1 latent frames. Every chunk after the first drops its first decoded frame
  (it re-decodes the last frame of the previous chunk's latent as a causal "first frame"). Chunk i
  blends its first ``tile_frames - stride_frames`` frames with the previous chunk's last frames, then
  keeps stride_frames frames (the first chunk stride_frames + 1).
* Spatial (``enable_tiling``) when H' or W' > the latent tile size, inside every temporal chunk:
  tiles start every stride / 8 latent rows/columns and span tile / 8; tile (i, j) blends its top rows
  with tile (i-1, j) and then its left columns with tile (i, j-1) -- both neighbours already blended
  (diffusers blends in place, raster order) -- and keeps the top-left stride x stride pixels.
* Blend over an extent e (clipped to both tiles' lengths): ``b[k] = a[-e + k] (1 - k/e) + b[k] (k/e)``.

``plan_tiles`` computes all of this as data; the Triton BLS model reuses it without torch.
``tiled_decode`` runs a plan with any ``decode_tile`` (one call per tile, batch 1) and streams the
blend, holding only the previous chunk's tail, the previous tile row and the output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vidtrt.config.model_config import TilingConfig, VAEConfig
from vidtrt.errors import ConfigError, EngineError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis (a temporal chunk, a row of tiles or a column of tiles).

    latent_start, latent_stop: the latent slice decoded.
    drop: decoded samples thrown away at the front (1 for every temporal chunk after the first).
    length: decoded samples after the drop.
    blend: leading samples blended with the last ``blend`` samples of the previous tile on this axis
        (0 for the first tile).
    keep: leading samples (after blending) that land in the output.
    out_start: output index of this tile's first sample after the drop; its kept samples fill
        ``[out_start, out_start + keep)``.
    """

    latent_start: int
    latent_stop: int
    drop: int
    length: int
    blend: int
    keep: int
    out_start: int

    @property
    def latent_len(self) -> int:
        return self.latent_stop - self.latent_start

    @property
    def latent_slice(self) -> slice:
        return slice(self.latent_start, self.latent_stop)


@dataclass(frozen=True)
class Tile:
    """One ``decode_tile`` call: chunk ``t``, row ``i``, column ``j`` of the plan."""

    t: int
    i: int
    j: int
    frames: AxisTile
    rows: AxisTile
    cols: AxisTile

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(t, h, w) of the latent tile."""
        return (self.frames.latent_len, self.rows.latent_len, self.cols.latent_len)


@dataclass(frozen=True)
class TilePlan:
    """Everything ``tiled_decode`` does, as data.

    Decode order: for every chunk in ``frames``, tiles in raster order over ``rows`` x ``cols``.
    ``output_shape`` [B, C_out, F, H, W] is the final crop (the kept regions partition it exactly).
    """

    latent_shape: tuple[int, int, int, int, int]
    output_shape: tuple[int, int, int, int, int]
    frames: tuple[AxisTile, ...]
    rows: tuple[AxisTile, ...]
    cols: tuple[AxisTile, ...]
    temporal_tiling: bool
    spatial_tiling: bool

    @property
    def tiles(self) -> list[Tile]:
        return [
            Tile(t, i, j, ft, rt, ct)
            for t, ft in enumerate(self.frames)
            for i, rt in enumerate(self.rows)
            for j, ct in enumerate(self.cols)
        ]

    @property
    def tiles_per_sample(self) -> int:
        return len(self.frames) * len(self.rows) * len(self.cols)

    @property
    def num_tiles(self) -> int:
        """decode_tile calls for the whole batch."""
        return self.latent_shape[0] * self.tiles_per_sample

    @property
    def max_latent_tile(self) -> tuple[int, int, int, int]:
        """(C, t, h, w): the largest latent tile of this plan."""
        return (
            self.latent_shape[1],
            max(a.latent_len for a in self.frames),
            max(a.latent_len for a in self.rows),
            max(a.latent_len for a in self.cols),
        )


def _check_ratios(vae: VAEConfig, tiling: TilingConfig) -> None:
    tiling.validate()
    s, t = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    for name in ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height",
                 "tile_sample_stride_width"):
        if getattr(tiling, name) % s:
            raise ConfigError(f"tiling {name}={getattr(tiling, name)} must be a multiple of the spatial ratio {s}")
    for name in ("tile_sample_min_num_frames", "tile_sample_stride_num_frames"):
        if getattr(tiling, name) % t:
            raise ConfigError(f"tiling {name}={getattr(tiling, name)} must be a multiple of the temporal ratio {t}")


def max_tile_latent_shape(vae: VAEConfig, tiling: TilingConfig) -> tuple[int, int, int, int]:
    """(C, t, h, w): the largest latent tile a tiled decode hands ``decode_tile`` ([16, 5, 32, 32] for
    the defaults). Smaller tiles occur at the right/bottom/last edges and for short clips."""
    _check_ratios(vae, tiling)
    s, r = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    return (
        vae.latent_channels,
        tiling.tile_sample_min_num_frames // r + 1,
        tiling.tile_sample_min_height // s,
        tiling.tile_sample_min_width // s,
    )


def _single(n_latent: int, length: int) -> tuple[AxisTile, ...]:
    return (AxisTile(0, n_latent, 0, length, 0, length, 0),)


def _spatial_axis(n_latent: int, ratio: int, tile_px: int, stride_px: int) -> tuple[AxisTile, ...]:
    tile_lat, stride_lat = tile_px // ratio, stride_px // ratio
    blend_px = tile_px - stride_px
    out: list[AxisTile] = []
    pos = 0
    for start in range(0, n_latent, stride_lat):
        stop = min(start + tile_lat, n_latent)
        length = (stop - start) * ratio
        blend = min(out[-1].length, length, blend_px) if out else 0
        keep = min(stride_px, length)
        out.append(AxisTile(start, stop, 0, length, blend, keep, pos))
        pos += keep
    return tuple(out)


def _temporal_axis(n_latent: int, ratio: int, tile_frames: int, stride_frames: int) -> tuple[AxisTile, ...]:
    tile_lat, stride_lat = tile_frames // ratio, stride_frames // ratio
    blend_frames = tile_frames - stride_frames
    out: list[AxisTile] = []
    pos = 0
    for start in range(0, n_latent, stride_lat):
        stop = min(start + tile_lat + 1, n_latent)
        decoded = ratio * (stop - start - 1) + 1
        drop = 1 if out else 0
        length = decoded - drop
        if length == 0:
            # A last chunk of one latent frame decodes to one frame, which is dropped: diffusers
            # decodes it for nothing (blend extent 0, nothing kept). Skipping it is exact.
            continue
        blend = min(out[-1].length, length, blend_frames) if out else 0
        keep = min(stride_frames + (0 if out else 1), length)
        out.append(AxisTile(start, stop, drop, length, blend, keep, pos))
        pos += keep
    return tuple(out)


def plan_tiles(
    latent_shape: tuple[int, ...],
    vae: VAEConfig,
    tiling: TilingConfig,
    *,
    spatial: bool = True,
    temporal: bool = True,
) -> TilePlan:
    """The tile plan diffusers follows for latents of ``latent_shape`` (B, C, T', H', W').

    ``spatial``/``temporal`` enable each kind of tiling (diffusers' ``use_tiling`` /
    ``use_framewise_decoding``); each applies only when the latents exceed the tile on that axis
    (spatial: H' or W' greater than the latent tile; temporal: T' greater than tile_frames / 4).
    """
    if len(latent_shape) != 5 or any(int(d) < 1 for d in latent_shape):
        raise ValueError(f"latent_shape must be 5 positive sizes (B, C, T', H', W'), got {tuple(latent_shape)}")
    b, c, t, h, w = (int(d) for d in latent_shape)
    if c != vae.latent_channels:
        raise ValueError(f"latent_shape has {c} channels; the VAE takes {vae.latent_channels}")
    _check_ratios(vae, tiling)
    s, r = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    out_f, out_h, out_w = r * (t - 1) + 1, s * h, s * w

    tile_t = tiling.tile_sample_min_num_frames // r
    temporal_tiling = temporal and t > tile_t
    spatial_tiling = spatial and (h > tiling.tile_sample_min_height // s or w > tiling.tile_sample_min_width // s)

    if temporal_tiling:
        frames = _temporal_axis(t, r, tiling.tile_sample_min_num_frames, tiling.tile_sample_stride_num_frames)
    else:
        frames = _single(t, out_f)
    if spatial_tiling:
        rows = _spatial_axis(h, s, tiling.tile_sample_min_height, tiling.tile_sample_stride_height)
        cols = _spatial_axis(w, s, tiling.tile_sample_min_width, tiling.tile_sample_stride_width)
    else:
        rows, cols = _single(h, out_h), _single(w, out_w)

    for axis, size in ((frames, out_f), (rows, out_h), (cols, out_w)):
        end = axis[-1].out_start + axis[-1].keep
        if end != size:  # kept regions must partition the output: a plan bug, not a user error
            raise AssertionError(f"tile plan covers {end} samples of {size}: {axis}")
    return TilePlan((b, c, t, h, w), (b, vae.out_channels, out_f, out_h, out_w), frames, rows, cols,
                    temporal_tiling, spatial_tiling)


def _blend(a: torch.Tensor, b: torch.Tensor, e: int, dim: int) -> None:
    """In place on ``b``: its first ``e`` samples along ``dim`` ramp from ``a``'s last ``e`` to ``b``'s own.

    The ratios k/e and 1 - k/e are computed in double precision and rounded once, as diffusers'
    Python-float scalars are, so in float32 this is bit-identical to diffusers' per-index loop.
    Half-precision tiles blend in float32 and round once."""
    import torch

    if e <= 0:
        return
    compute = torch.float32 if b.dtype in (torch.float16, torch.bfloat16) else b.dtype
    shape = [1] * b.dim()
    shape[dim] = e
    w_b = torch.tensor([k / e for k in range(e)], dtype=torch.float64).to(compute).to(b.device).view(shape)
    w_a = torch.tensor([1 - k / e for k in range(e)], dtype=torch.float64).to(compute).to(b.device).view(shape)
    tail = a.narrow(dim, a.shape[dim] - e, e).to(compute)
    head = b.narrow(dim, 0, e)
    head.copy_(tail * w_a + head.to(compute) * w_b)


def tiled_decode(
    latents: torch.Tensor,
    decode_tile: Callable[[torch.Tensor], torch.Tensor],
    plan: TilePlan,
) -> torch.Tensor:
    """Decode ``latents`` [B, C, T', H', W'] by ``plan``: video [B, C_out, F, H, W].

    ``decode_tile`` gets latents [1, C, t, h, w] and returns [1, C_out, 4(t-1)+1, 8h, 8w]; it is called
    ``plan.tiles_per_sample`` times per sample, samples of the batch one after another. Its outputs are
    copied before anything is modified or kept, so it may return a reused buffer.
    """
    if tuple(latents.shape) != plan.latent_shape:
        raise ValueError(f"latents {tuple(latents.shape)} do not match the plan's {plan.latent_shape}")
    tail_len = max(a.blend for a in plan.frames)
    out = None
    for bi in range(plan.latent_shape[0]):
        prev_tail = None  # last frames of the previous chunk, after its own blending
        for ft in plan.frames:
            chunk = _decode_chunk(latents[bi : bi + 1], decode_tile, plan, ft)
            if out is None:
                out = chunk.new_empty((plan.latent_shape[0], chunk.shape[1], *plan.output_shape[2:]))
            if prev_tail is not None:
                _blend(prev_tail, chunk, ft.blend, 2)
            out[bi : bi + 1, :, ft.out_start : ft.out_start + ft.keep] = chunk[:, :, : ft.keep]
            if tail_len > 0:
                prev_tail = chunk[:, :, ft.length - min(ft.length, tail_len) :].clone()
    return out


def _decode_chunk(z: torch.Tensor, decode_tile, plan: TilePlan, ft: AxisTile) -> torch.Tensor:
    """One temporal chunk [1, C_out, ft.length, H, W]: tiles decoded, first frame dropped, rows and
    columns blended in diffusers' raster order, kept regions assembled. A fresh tensor."""
    tiled = len(plan.rows) > 1 or len(plan.cols) > 1
    chunk = None
    prev_row: list = []
    for ri, rt in enumerate(plan.rows):
        row: list = []
        for ci, ct in enumerate(plan.cols):
            tile_lat = z[:, :, ft.latent_slice, rt.latent_slice, ct.latent_slice]
            dec = decode_tile(tile_lat)
            expected = (ft.length + ft.drop, rt.length, ct.length)
            if dec.dim() != 5 or dec.shape[0] != 1 or tuple(dec.shape[2:]) != expected:
                raise EngineError(
                    f"decode_tile returned {tuple(dec.shape)} for latents {tuple(tile_lat.shape)}; "
                    f"expected [1, C, {expected[0]}, {expected[1]}, {expected[2]}]"
                )
            dec = dec[:, :, ft.drop :]
            if chunk is None:
                chunk = dec.new_empty((1, dec.shape[1], ft.length, plan.output_shape[3], plan.output_shape[4]))
            if tiled:
                dec = dec.clone()  # blended in place and kept as a neighbour
                if ri > 0:
                    _blend(prev_row[ci], dec, rt.blend, 3)
                if ci > 0:
                    _blend(row[ci - 1], dec, ct.blend, 4)
                row.append(dec)
            y, x = rt.out_start, ct.out_start
            chunk[:, :, :, y : y + rt.keep, x : x + ct.keep] = dec[:, :, :, : rt.keep, : ct.keep]
        prev_row = row
    return chunk


def decode(
    latents: torch.Tensor,
    decode_tile: Callable[[torch.Tensor], torch.Tensor],
    vae: VAEConfig,
    tiling: TilingConfig,
    enable_tiling: bool = True,
    *,
    framewise: bool | None = None,
) -> torch.Tensor:
    """Decode latents [B, C, T', H', W'] (already divided by the scaling factor) into video
    [B, C_out, 4(T'-1)+1, 8H', 8W'], tiling like diffusers when the latents exceed a tile.

    ``enable_tiling`` is diffusers' ``vae.enable_tiling()`` (spatial tiling); ``framewise`` is
    ``use_framewise_decoding`` (temporal chunks), default: the same as ``enable_tiling``. Note that
    diffusers' own default is ``enable_tiling=False, framewise=True``. With both off, or latents no
    larger than one tile, ``decode_tile`` is called once per sample on the whole latents.
    """
    plan = plan_tiles(tuple(latents.shape), vae, tiling, spatial=enable_tiling,
                      temporal=enable_tiling if framewise is None else framewise)
    return tiled_decode(latents, decode_tile, plan)
