"""Block-sparse attention layouts and the sliding-tile token order (pure torch, no triton import).

Sliding-tile attention (STA, Zhang et al. 2025) for a video of ``T x H x W`` latent tokens: the grid
is cut into tiles of ``tile = (tt, th, tw)`` tokens; a query attends to the keys of the
``window = (wt, wh, ww)`` tiles around its own tile (per axis the window is shifted to stay inside
the grid, so every query sees the same number of tiles; a window at least as large as the grid
covers the whole axis) and to every text token. Text queries attend to everything.

Token order: the image tokens are permuted so that each tile is one contiguous run of
``TILE = tt * th * tw`` rows, tiles in (t, h, w) order; a tile cut by the grid's edge holds its
valid tokens first (local t -> h -> w order) and padding rows after them. The padded image part
has ``num_tiles * TILE`` rows, then the text tokens follow. With ``TILE`` a multiple of the
kernel's query and key block sizes, a 3D window is a set of whole key blocks, and a query block
lies in one tile.

Layout (what the block-sparse kernels read), for ``Hl`` = 1 (all heads alike) or H:
  * ``kv_idx`` int32 [Hl, NQB, MAXK]: per query block the key blocks to visit, first those whose
    keys are all valid (``kv_cnt[..., 0]`` of them: no mask), then the others (partial tiles and text
    blocks: masked with ``kv_end`` and the sample's key length), ``kv_cnt[..., 1]`` in all;
  * ``kv_end`` int32 [NKB]: one past the last valid key of each key block (text blocks: the
    sequence length; the per-sample key length cuts them in the kernel).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from typing import NamedTuple

import torch

from .reference import key_padding_mask

__all__ = [
    "BlockSparseLayout",
    "TileGrid",
    "block_sparse_reference",
    "current_layout_tensors",
    "current_tile_window",
    "dense_mask_from_layout",
    "layout_tensors",
    "sliding_tile_layout",
    "sliding_tile_mask",
    "sliding_tile_reference",
    "tile_window",
]

Triple = tuple[int, int, int]


class BlockSparseLayout(NamedTuple):
    """Which key blocks each query block visits (see the module docstring)."""

    kv_idx: torch.Tensor  # int32 [Hl, NQB, MAXK]
    kv_cnt: torch.Tensor  # int32 [Hl, NQB, 2]: (blocks without mask, all blocks)
    kv_end: torch.Tensor  # int32 [NKB]
    block_m: int
    block_n: int
    seq_len: int

    def density(self, key_lengths: torch.Tensor | None = None) -> float:
        """Visited key blocks / all key blocks, over query blocks and heads (1.0 = dense)."""
        nkb = math.ceil(self.seq_len / self.block_n)
        return float(self.kv_cnt[..., 1].float().mean()) / nkb

    def to(self, device) -> BlockSparseLayout:
        return self._replace(kv_idx=self.kv_idx.to(device), kv_cnt=self.kv_cnt.to(device),
                             kv_end=self.kv_end.to(device))


class TileGrid(NamedTuple):
    """A ``grid = (T, H, W)`` video token grid cut into ``tile = (tt, th, tw)`` tiles."""

    grid: Triple
    tile: Triple

    @property
    def tiles(self) -> Triple:
        return tuple(math.ceil(g / t) for g, t in zip(self.grid, self.tile, strict=True))  # type: ignore[return-value]

    @property
    def tile_tokens(self) -> int:
        return self.tile[0] * self.tile[1] * self.tile[2]

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def padded_tokens(self) -> int:
        nt, nh, nw = self.tiles
        return nt * nh * nw * self.tile_tokens

    def tile_valid(self, device=None) -> torch.Tensor:
        """int64 [num_tiles]: valid tokens of each tile (tiles in t -> h -> w order)."""
        ext = []
        for g, t, n in zip(self.grid, self.tile, self.tiles, strict=True):
            ext.append(torch.clamp(g - torch.arange(n, device=device) * t, max=t))
        return (ext[0][:, None, None] * ext[1][None, :, None] * ext[2][None, None, :]).flatten()

    def permutation(self, device=None) -> torch.Tensor:
        """int64 [T*H*W]: row of natural token ``(t*H + h)*W + w`` in the padded tile order."""
        (gt, gh, gw), (tt, th, tw) = self.grid, self.tile
        nt, nh, nw = self.tiles
        t = torch.arange(gt, device=device)[:, None, None]
        h = torch.arange(gh, device=device)[None, :, None]
        w = torch.arange(gw, device=device)[None, None, :]
        vh = torch.clamp(gh - (h // th) * th, max=th)  # valid extents of the token's tile
        vw = torch.clamp(gw - (w // tw) * tw, max=tw)
        tile_id = ((t // tt) * nh + h // th) * nw + w // tw
        local = ((t % tt) * vh + h % th) * vw + w % tw
        return (tile_id * self.tile_tokens + local).flatten()

    def tile_coords(self, device=None) -> torch.Tensor:
        """int64 [T*H*W, 3]: tile coordinates of every natural-order token."""
        (gt, gh, gw), (tt, th, tw) = self.grid, self.tile
        t = torch.arange(gt, device=device)[:, None, None].expand(gt, gh, gw)
        h = torch.arange(gh, device=device)[None, :, None].expand(gt, gh, gw)
        w = torch.arange(gw, device=device)[None, None, :].expand(gt, gh, gw)
        return torch.stack((t // tt, h // th, w // tw), -1).reshape(-1, 3)


def window_start(center: torch.Tensor, window: int, n: int) -> torch.Tensor:
    """First tile of the window of ``window`` tiles around ``center`` on an axis of ``n`` tiles
    (shifted to stay inside; the whole axis when the window covers it)."""
    if window >= n:
        return torch.zeros_like(center)
    return torch.clamp(center - window // 2, 0, n - window)


def _axis_in_window(q: torch.Tensor, k: torch.Tensor, window: int, n: int) -> torch.Tensor:
    start = window_start(q, window, n)
    return (k >= start) & (k < start + min(window, n))


def check_triple(name: str, value, low: int = 1) -> Triple:
    if (not isinstance(value, (tuple, list)) or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in value)):
        raise ValueError(f"{name}={value!r}: accepted three integers >= {low} (t, h, w)")
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def _windows_per_head(window, heads: int | None) -> list[Triple]:
    """One (t, h, w) window, or one per head -> a list of per-head windows (length 1 = all heads)."""
    if isinstance(window, (tuple, list)) and len(window) and isinstance(window[0], (tuple, list)):
        wins = [check_triple("window", w) for w in window]
        if heads is not None and len(wins) != heads:
            raise ValueError(f"window lists {len(wins)} per-head windows: accepted one (t, h, w) or {heads}")
        return wins
    return [check_triple("window", window)]


def sliding_tile_layout(
    tiles: TileGrid,
    window,
    seq_len: int,
    block_m: int,
    block_n: int,
    heads: int | None = None,
    device=None,
) -> BlockSparseLayout:
    """The block-sparse layout of sliding-tile attention over ``[padded image tokens; text]``.

    Args:
        tiles: the token grid and tile size (``tile_tokens`` a multiple of block_m and block_n).
        window: (wt, wh, ww) in tiles, or a list of such triples, one per head (``heads`` of them).
        seq_len: rows of q / k: ``tiles.padded_tokens`` + text tokens.
    Raises ValueError for block sizes that do not divide the tile or a sequence shorter than the image.
    """
    tt = tiles.tile_tokens
    if tt % block_m or tt % block_n:
        raise ValueError(f"tile {tiles.tile} has {tt} tokens: accepted a multiple of the blocks {block_m} x {block_n}")
    s_img = tiles.padded_tokens
    if seq_len < s_img:
        raise ValueError(f"seq_len {seq_len} < padded image tokens {s_img}")
    nt, nh, nw = tiles.tiles
    n_tiles = nt * nh * nw
    nqb = math.ceil(seq_len / block_m)
    nkb = math.ceil(seq_len / block_n)
    bpt = tt // block_n  # key blocks per tile
    kb_img = n_tiles * bpt
    valid = tiles.tile_valid(device)  # [n_tiles]
    blk = torch.arange(nkb, device=device)
    off = (blk % bpt) * block_n
    kv_valid = torch.where(blk < kb_img, torch.clamp(valid[torch.clamp(blk // bpt, max=n_tiles - 1)] - off, 0, block_n),
                           torch.full_like(blk, -1))  # -1: text block
    kv_end = torch.where(kv_valid >= 0, blk * block_n + kv_valid, torch.full_like(blk, seq_len)).to(torch.int32)
    # 0: all keys valid (no mask), 1: masked (partial tile, text), 2: empty (skipped)
    kclass = torch.where(kv_valid == block_n, 0, torch.where(kv_valid == 0, 2, 1))
    text_blocks = torch.arange(kb_img, nkb, device=device)

    # query blocks holding only padding rows (tiles cut by the grid's edge) visit nothing
    qb = torch.arange(nqb, device=device)
    qpt = tt // block_m
    q_valid = valid[torch.clamp(qb // qpt, max=n_tiles - 1)] - (qb % qpt) * block_m
    q_live = ((qb >= n_tiles * qpt) | (q_valid > 0)).long()
    coords = torch.stack(torch.meshgrid(torch.arange(nt, device=device), torch.arange(nh, device=device),
                                        torch.arange(nw, device=device), indexing="ij"), -1).reshape(-1, 3)
    per_head = []
    for wt, wh, ww in _windows_per_head(window, heads):
        ok = torch.ones((n_tiles, n_tiles), dtype=torch.bool, device=device)
        for axis, (w, n) in enumerate(zip((wt, wh, ww), (nt, nh, nw), strict=True)):
            ok &= _axis_in_window(coords[:, None, axis], coords[None, :, axis], w, n)
        # [n_tiles (query), n_tiles * bpt (key blocks)] allowed, then the text blocks
        allowed = ok[:, :, None].expand(n_tiles, n_tiles, bpt).reshape(n_tiles, kb_img)
        rows_img = allowed.repeat_interleave(tt // block_m, dim=0)  # query blocks of the image part
        n_text_q = nqb - rows_img.shape[0]
        rows = torch.cat((rows_img, torch.ones((n_text_q, kb_img), dtype=torch.bool, device=device)), 0)
        rows = torch.cat((rows, torch.ones((nqb, len(text_blocks)), dtype=torch.bool, device=device)), 1)
        key = torch.where(rows, kclass[None, :], 3)  # 3: not in the window
        order = torch.sort(key, dim=1, stable=True)
        n_full = (key == 0).sum(1) * q_live
        n_all = ((key == 0) | (key == 1)).sum(1) * q_live
        per_head.append((order.indices.to(torch.int32), torch.stack((n_full, n_all), 1).to(torch.int32)))
    maxk = max(int(c[:, 1].max()) for _, c in per_head) if nqb else 0
    maxk = max(maxk, 1)
    kv_idx = torch.stack([i[:, :maxk] for i, _ in per_head]).contiguous()
    kv_cnt = torch.stack([c for _, c in per_head]).contiguous()
    return BlockSparseLayout(kv_idx, kv_cnt, kv_end, block_m, block_n, seq_len)


_window: ContextVar = ContextVar("vidtrt_sta_window", default=None)


@contextlib.contextmanager
def tile_window(tiles: TileGrid, window) -> Iterator[None]:
    """Within the block, this thread's STA attention calls use ``window`` over ``tiles`` (q, k, v in tile order)."""
    token = _window.set((tiles, window))
    try:
        yield
    finally:
        _window.reset(token)


def current_tile_window():
    """(TileGrid, window) set by :func:`tile_window`, or None (the STA backends then attend densely)."""
    return _window.get()


_layout_tensors: ContextVar = ContextVar("vidtrt_sta_layout_tensors", default=None)


@contextlib.contextmanager
def layout_tensors(kv_idx: torch.Tensor, kv_cnt: torch.Tensor, kv_end: torch.Tensor) -> Iterator[None]:
    """Within the block, the STA plugin backends (``vidtrt.kernels.onnx_plugins``) attend with this layout,
    given as tensors (the graph inputs of the STA plugin export: kv_idx [H or 1, NQB, MAXK], kv_cnt [H or 1, NQB, 2],
    kv_end [NKB] int32, 128 x 64 blocks)."""
    token = _layout_tensors.set((kv_idx, kv_cnt, kv_end))
    try:
        yield
    finally:
        _layout_tensors.reset(token)


def current_layout_tensors():
    """(kv_idx, kv_cnt, kv_end) set by :func:`layout_tensors`, or None (the plugin backends attend densely)."""
    return _layout_tensors.get()


# ----------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------
def dense_mask_from_layout(layout: BlockSparseLayout, seq_k: int, device=None) -> torch.Tensor:
    """bool [Hl, S_q, S_k]: the keys each query row may see under ``layout`` (before key lengths)."""
    hl, nqb, _ = layout.kv_idx.shape
    bm, bn = layout.block_m, layout.block_n
    nkb = math.ceil(seq_k / bn)
    idx, cnt = layout.kv_idx.long().cpu(), layout.kv_cnt.long().cpu()
    block_ok = torch.zeros((hl, nqb, nkb), dtype=torch.bool)
    for hh in range(hl):
        for qb in range(nqb):
            block_ok[hh, qb, idx[hh, qb, : cnt[hh, qb, 1]]] = True
    keys = torch.arange(seq_k)
    in_block = keys < layout.kv_end.long().cpu()[keys // bn]
    mask = block_ok.repeat_interleave(bm, 1).repeat_interleave(bn, 2)[:, :, :seq_k] & in_block[None, None, :]
    return mask.to(device)


def _masked_attention(q, k, v, allowed, key_lengths, compute_dtype, sm_scale):
    """allowed bool [Hl, S_q, S_k] (Hl 1 or H) -> softmax attention in compute_dtype; no key -> zeros."""
    b, s_q, heads, d = q.shape
    s_k = k.shape[1]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    qf, kf, vf = (t.to(compute_dtype) for t in (q, k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
    mask = allowed[None, :, :s_q, :s_k].to(q.device)
    kp = key_padding_mask(key_lengths, b, s_k, q.device)
    if kp is not None:
        mask = mask & kp[:, None, None, :]
    scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, vf)


def block_sparse_reference(q, k, v, layout: BlockSparseLayout, key_lengths=None,
                           compute_dtype=torch.float64, sm_scale=None) -> torch.Tensor:
    """What the block-sparse kernels compute: dense attention masked by ``layout`` and key lengths."""
    return _masked_attention(q, k, v, dense_mask_from_layout(layout, k.shape[1]), key_lengths, compute_dtype,
                             sm_scale)


def sliding_tile_mask(tiles: TileGrid, window, seq_len: int, heads: int | None = None) -> torch.Tensor:
    """bool [Hl, S, S] over the *natural* token order ``[image (t, h, w order); text]`` (no padding):
    the definition of sliding-tile attention, independent of layouts and permutations."""
    n_img = tiles.num_tokens
    nt, nh, nw = tiles.tiles
    c = tiles.tile_coords()
    masks = []
    for win in _windows_per_head(window, heads):
        ok = torch.ones((n_img, n_img), dtype=torch.bool)
        for axis, n in enumerate((nt, nh, nw)):
            ok &= _axis_in_window(c[:, None, axis], c[None, :, axis], win[axis], n)
        m = torch.ones((seq_len, seq_len), dtype=torch.bool)
        m[:n_img, :n_img] = ok
        masks.append(m)
    return torch.stack(masks)


def sliding_tile_reference(q, k, v, tiles: TileGrid, window, key_lengths=None, compute_dtype=torch.float64,
                           sm_scale=None) -> torch.Tensor:
    """Sliding-tile attention over natural-order q, k, v [B, T*H*W + L, H, D] (keys >= key_lengths[b]
    ignored), in compute_dtype."""
    mask = sliding_tile_mask(tiles, window, q.shape[1], heads=q.shape[2])
    return _masked_attention(q, k, v, mask, key_lengths, compute_dtype, sm_scale)
