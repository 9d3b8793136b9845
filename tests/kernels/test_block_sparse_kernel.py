"""Block-sparse / sliding-tile attention kernels (BF16 path in fp32, FP8) vs masked dense torch references.

Interpreter-sized: tiles of 32 tokens, blocks of 32, a handful of programs per case. The strong check
runs the whole sliding-tile path (tile permutation with padding, layout, kernel, inverse permutation)
against :func:`sliding_tile_reference`, which masks natural-order attention from 3D coordinates and
knows nothing of layouts or permutations.
"""

from __future__ import annotations

import functools

import pytest
import torch

from vidtrt.kernels.attention import flash_attention
from vidtrt.kernels.block_sparse import block_sparse_attention, block_sparse_attention_fp8
from vidtrt.kernels.reference import attention_reference
from vidtrt.kernels.sparse_layout import (
    TileGrid,
    block_sparse_reference,
    sliding_tile_layout,
    sliding_tile_reference,
)


def _rel_err(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _to_tiles(x, tiles: TileGrid, pad_scale: float = 3.0):
    """natural [B, n_img + L, H, D] -> [B, padded + L, H, D] in tile order (pad rows random: must not matter)."""
    b, s, h, d = x.shape
    n_img = tiles.num_tokens
    out = torch.randn(b, tiles.padded_tokens + s - n_img, h, d, dtype=x.dtype, device=x.device) * pad_scale
    out[:, tiles.permutation(x.device)] = x[:, :n_img]
    out[:, tiles.padded_tokens:] = x[:, n_img:]
    return out


def _from_tiles(y, tiles: TileGrid):
    return torch.cat((y[:, tiles.permutation(y.device)], y[:, tiles.padded_tokens:]), 1)


def _inputs(b, s, h, d, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=g).to(dtype).to(device) for _ in range(3)]


# (grid, tile, window, text tokens, key lengths (text kept per sample), heads): grids off the tile
# grid on every axis, windows smaller / larger than the grid, per-head windows, a sample whose key
# length cuts all text (text block fully masked for it), batch 2 with unequal lengths.
STA_CASES = [
    ((3, 5, 6), (2, 4, 4), (1, 1, 1), 10, [7, 3], 1),
    ((3, 5, 6), (2, 4, 4), (2, 1, 2), 10, [10, 0], 1),
    ((3, 3, 9), (1, 4, 8), [(1, 1, 1), (9, 9, 9)], 20, [20, 13], 2),
    ((2, 4, 4), (2, 4, 4), (1, 1, 1), 7, None, 1),
    # 64-token tiles, 32-row query blocks: the edge tile (1, 1, 0) holds 6 tokens, its second query block
    # none (skipped: counts 0) and its key blocks 6 and 0 valid keys
    ((3, 5, 6), (2, 4, 8), (1, 2, 1), 10, [7, 3], 1),
]


@pytest.mark.parametrize("case", STA_CASES, ids=lambda c: f"g{c[0]}-t{c[1]}-w{c[2]}-txt{c[3]}")
def test_sliding_tile_fp32_vs_masked_reference(case, device):
    grid, tile, window, n_txt, txt_lens, heads = case
    tiles = TileGrid(grid, tile)
    n_img = tiles.num_tokens
    b = 1 if txt_lens is None else len(txt_lens)
    q, k, v = _inputs(b, n_img + n_txt, heads, 64, torch.float32, device, seed=sum(grid))
    kl = None if txt_lens is None else torch.tensor([n_img + t for t in txt_lens], device=device)
    ref = sliding_tile_reference(q, k, v, tiles, window, kl)
    s_pad = tiles.padded_tokens + n_txt
    layout = sliding_tile_layout(tiles, window, s_pad, 32, 32, heads=heads, device=device)
    kl_pad = None if kl is None else kl - n_img + tiles.padded_tokens
    out = block_sparse_attention(*(_to_tiles(t, tiles) for t in (q, k, v)), layout, kl_pad)
    out = _from_tiles(out, tiles)
    assert out.shape == q.shape
    assert _rel_err(out, ref) <= 1e-5
    if tiles.tiles != (1, 1, 1):  # more than one tile: sparse, and the dense answer differs
        assert layout.density() < 0.9
        assert _rel_err(attention_reference(q, k, v, kl), ref) > 1e-3


def test_layout_reference_agrees_with_kernel_and_skips_blocks(device):
    """Generic layout path: the layout-masked reference equals the kernel; a smaller window lists fewer blocks."""
    tiles = TileGrid((4, 4, 8), (1, 4, 8))  # 4 tiles of 32
    s = tiles.padded_tokens + 16
    q, k, v = _inputs(2, s, 2, 32, torch.float32, device, seed=3)
    kl = torch.tensor([s, s - 9], device=device)
    narrow = sliding_tile_layout(tiles, (1, 1, 1), s, 32, 32, device=device)
    wide = sliding_tile_layout(tiles, (3, 1, 1), s, 32, 32, device=device)
    assert narrow.kv_cnt[0, 0, 1] == 2 and wide.kv_cnt[0, 0, 1] == 4  # own tile + text vs 3 tiles + text
    out = block_sparse_attention(q, k, v, narrow, kl)
    assert _rel_err(out, block_sparse_reference(q, k, v, narrow, kl)) <= 1e-5


@pytest.mark.parametrize("heads_windows", [(1, (9, 9, 9)), (2, [(9, 9, 9), (2, 2, 2)])])
def test_window_covering_everything_equals_dense(device, heads_windows):
    heads, window = heads_windows
    tiles = TileGrid((3, 5, 6), (2, 4, 4))
    n_img, n_txt = tiles.num_tokens, 12
    q, k, v = _inputs(2, n_img + n_txt, heads, 64, torch.float32, device, seed=5)
    kl = torch.tensor([n_img + 12, n_img + 4], device=device)
    dense = flash_attention(q, k, v, kl, block_m=32, block_n=32)
    layout = sliding_tile_layout(tiles, window, tiles.padded_tokens + n_txt, 32, 32, heads=heads, device=device)
    out = _from_tiles(block_sparse_attention(*(_to_tiles(t, tiles) for t in (q, k, v)), layout,
                                             kl - n_img + tiles.padded_tokens), tiles)
    assert _rel_err(out, dense) <= 1e-5


def test_fp8_sliding_tile_close_to_reference(device):
    """FP8 products: cosine vs the exact masked reference as for the dense FP8 kernel (>= 0.995)."""
    tiles = TileGrid((3, 5, 6), (2, 4, 4))
    n_img, n_txt, heads = tiles.num_tokens, 10, 2
    q, k, v = _inputs(2, n_img + n_txt, heads, 64, torch.float32, device, seed=7)
    kl = torch.tensor([n_img + 10, n_img + 6], device=device)
    ref = sliding_tile_reference(q, k, v, tiles, (1, 1, 2), kl)
    layout = sliding_tile_layout(tiles, (1, 1, 2), tiles.padded_tokens + n_txt, 32, 32, device=device)
    tq, tk, tv = (_to_tiles(t, tiles, pad_scale=1.0) for t in (q, k, v))
    out = _from_tiles(block_sparse_attention_fp8(tq, tk, tv, layout, kl - n_img + tiles.padded_tokens,
                                                 quant_block=32), tiles)
    cos = torch.nn.functional.cosine_similarity(out.double().flatten(), ref.flatten(), dim=0).item()
    assert cos >= 0.995
    assert torch.isfinite(out).all()


def test_bad_layouts_are_named(device):
    tiles = TileGrid((2, 4, 4), (2, 4, 4))
    q, k, v = _inputs(1, 40, 1, 64, torch.float32, device, seed=1)
    layout = sliding_tile_layout(tiles, (1, 1, 1), 40, 32, 32, device=device)
    with pytest.raises(ValueError, match="kv_idx has shape"):
        block_sparse_attention(q[:, :20], k, v, layout)
    with pytest.raises(ValueError, match="accepted a multiple of the blocks"):
        sliding_tile_layout(tiles, (1, 1, 1), 40, 64, 32)
    with pytest.raises(ValueError, match="window="):
        sliding_tile_layout(tiles, (1, 0, 1), 40, 32, 32)


@pytest.mark.parametrize("fp8", [False, True], ids=["fp32", "fp8"])
def test_layout_shared_by_all_heads_equals_per_head_copies(device, fp8):
    """A [1, NQB, MAXK] layout (head strides 0: what the STA plugins get for a window uniform over heads) gives
    exactly what its H contiguous copies give."""
    tiles = TileGrid((2, 4, 8), (1, 4, 8))  # 2 tiles of 32
    s, heads = tiles.padded_tokens + 9, 3
    q, k, v = _inputs(2, s, heads, 64, torch.float32, device, seed=11)
    kl = torch.tensor([s, s - 5], device=device)
    shared = sliding_tile_layout(tiles, (1, 1, 1), s, 32, 32, device=device)
    assert shared.kv_idx.shape[0] == 1 and shared.density() < 0.9
    copies = shared._replace(kv_idx=shared.kv_idx.expand(heads, -1, -1).contiguous(),
                             kv_cnt=shared.kv_cnt.expand(heads, -1, -1).contiguous())
    run = functools.partial(block_sparse_attention_fp8, quant_block=32) if fp8 else block_sparse_attention
    out = run(q, k, v, shared, kl)
    assert torch.equal(out, run(q, k, v, copies, kl))
    ref = block_sparse_reference(q, k, v, shared, kl)
    if fp8:  # as test_fp8_sliding_tile_close_to_reference
        assert torch.nn.functional.cosine_similarity(out.double().flatten(), ref.flatten(), dim=0).item() >= 0.995
    else:
        assert _rel_err(out, ref) <= 1e-5
