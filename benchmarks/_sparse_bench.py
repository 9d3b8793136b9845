"""Sliding-tile attention rows shared by ``bench_attention.py`` and ``gpu_sparse_attention_check.py``.

A case is a HunyuanVideo token grid (720x1280x129 -> 33 x 45 x 80 tokens + 256 text; 544x960x129 -> 33 x 34 x
60 + 256), a tile and a window. The kernels run on the padded tile order (``TileGrid.padded_tokens`` + text);
FLOPs are counted on the key blocks the kernel visits (``4 * B * H * D * BLOCK_M * BLOCK_N`` per visited
(query block, key block) pair), and ``density`` is that over the dense FLOPs of the unpadded sequence, so
``1 / density`` is the speedup a perfectly efficient sparse kernel would get; ``speedup`` is measured:
the dense kernel's time (same flavour, unpadded sequence) over the sparse one's.
"""

from __future__ import annotations

import itertools
import math

import torch

# sequence length -> (token grid after patching, text tokens)
HUNYUAN_CASES = {119_056: ((33, 45, 80), 256), 67_576: ((33, 34, 60), 256)}
DEFAULT_TILE = (4, 8, 8)


def window_for_density(tiles, target: float) -> tuple[int, int, int]:
    """The window (in tiles) whose image-part density prod(min(w, n) / n) is closest to ``target``, most
    balanced across axes among equals (every query tile sees exactly prod(min(w, n)) tiles)."""
    nt = tiles.tiles
    best = None
    for w in itertools.product(*(range(1, n + 1) for n in nt)):
        fr = [wi / ni for wi, ni in zip(w, nt, strict=True)]
        d = math.prod(fr)
        key = (round(abs(d - target), 3), max(fr) - min(fr))
        if best is None or key < best[0]:
            best = (key, w)
    return best[1]


def visited_pairs(layout) -> int:
    return int(layout.kv_cnt[..., 1].sum())


def sparse_case(grid, n_text: int, window, tile=DEFAULT_TILE, device="cuda", heads: int = 24):
    """(TileGrid, layout, padded sequence length) of one case (per-head window lists allowed)."""
    from vidtrt.kernels.backends import sta_blocks
    from vidtrt.kernels.sparse_layout import TileGrid, sliding_tile_layout

    tiles = TileGrid(tuple(grid), tuple(tile))
    s_pad = tiles.padded_tokens + n_text
    bm, bn = sta_blocks(tiles.tile_tokens, torch.device(device).type == "cuda")
    layout = sliding_tile_layout(tiles, window, s_pad, bm, bn, heads=heads if isinstance(window[0], tuple) else None,
                                 device=device)
    return tiles, layout, s_pad


def sparse_rows(seq: int, grid, n_text: int, batch: int, heads: int, head_dim: int, dtype, device: str,
                text_valid: int, dense_ms: dict[str, float], bench_ms, log, windows: dict[str, tuple],
                tile=DEFAULT_TILE, tma: bool = True, flavours=None) -> list[dict]:
    """Rows for every (window name, flavour): ms, TFLOP/s on visited blocks, density, speedup vs ``dense_ms``
    (flavour -> ms of the dense kernel at ``seq``: ``bf16``, ``bf16-tma``, ``fp8``, ``fp8-tma``).
    ``flavours``: which to run (default all four, the TMA ones only with ``tma``)."""
    rows = []
    for wname, window in windows.items():
        rows += _window_rows(seq, grid, n_text, batch, heads, head_dim, dtype, device, text_valid, dense_ms,
                             bench_ms, log, wname, window, tile, tma, flavours)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def _window_rows(seq, grid, n_text, batch, heads, head_dim, dtype, device, text_valid, dense_ms, bench_ms, log,
                 wname, window, tile, tma, wanted=None) -> list[dict]:
    from vidtrt.kernels.attention_fp8 import quantize_qkv_fp8
    from vidtrt.kernels.block_sparse import block_sparse_attention, block_sparse_attention_fp8

    rows = []
    n_img = grid[0] * grid[1] * grid[2]
    dense_flops = 4.0 * batch * heads * head_dim * seq * seq
    tiles, layout, s_pad = sparse_case(grid, n_text, window, tile, device)
    pairs = visited_pairs(layout) * (heads if layout.kv_idx.shape[0] == 1 else 1)
    flops = 4.0 * batch * head_dim * layout.block_m * layout.block_n * pairs
    density = flops / dense_flops
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, s_pad, heads, head_dim, device=device, dtype=dtype) for _ in range(3))
    kl = torch.full((batch,), tiles.padded_tokens + text_valid, dtype=torch.int32, device=device)
    ops = quantize_qkv_fp8(q, k, v)
    kw = dict(q_scale=ops.q_scale, k_scale=ops.k_scale, v_scale=ops.v_scale, quant_block=ops.quant_block,
              out_dtype=dtype)  # fmt: skip
    flavours = {
        "bf16": lambda: block_sparse_attention(q, k, v, layout, kl),
        "fp8": lambda: block_sparse_attention_fp8(ops.q8, ops.k8, ops.v8, layout, kl, **kw),
    }
    if tma:
        flavours["bf16-tma"] = lambda: block_sparse_attention(q, k, v, layout, kl, tma=True)
        flavours["fp8-tma"] = lambda: block_sparse_attention_fp8(ops.q8, ops.k8, ops.v8, layout, kl, **kw, tma=True)
    for flavour, fn in flavours.items():
        if wanted is not None and flavour not in wanted:
            continue
        method = f"sta-{flavour} {wname}"
        try:
            fn()
            ms = bench_ms(fn, device, device == "cuda")
        except Exception as e:  # noqa: BLE001 - one failing flavour must not hide the others
            rows.append({"seq": seq, "method": method, "error": str(e).splitlines()[0][:200]})
            log(f"  S={seq:>7} {method:<28} failed: {str(e).splitlines()[0][:100]}")
            continue
        base = dense_ms.get(flavour)
        row = {"seq": seq, "method": method, "ms": round(ms, 4),
               "tflops": round(flops / (ms * 1e-3) / 1e12, 2), "density": round(density, 4),
               "window": [list(w) for w in window] if isinstance(window[0], tuple) else list(window),
               "tile": list(tile), "padded_seq": s_pad, "image_tokens": n_img,
               "speedup_vs_dense": round(base / ms, 3) if base else None}  # fmt: skip
        rows.append(row)
        log(f"  S={seq:>7} {method:<28} {ms:10.3f} ms  {row['tflops']:8.1f} TFLOP/s (visited)  "
            f"density {density:.3f}  speedup {row['speedup_vs_dense']}x")
    return rows


def default_windows(grid, n_text: int, tile=DEFAULT_TILE) -> dict[str, tuple]:
    """The config's default window and windows near 25 % and 50 % density."""
    from vidtrt.config.sparse_attention import SparseAttentionConfig
    from vidtrt.kernels.sparse_layout import TileGrid

    tiles = TileGrid(tuple(grid), tuple(tile))
    return {"default": tuple(SparseAttentionConfig().window), "d25": window_for_density(tiles, 0.25),
            "d50": window_for_density(tiles, 0.5)}
