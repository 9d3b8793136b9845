"""The kernels as attention backends of the DiT: "triton", "triton-fp8" and their TMA flavours
"triton-tma", "triton-fp8-tma", and the sliding-tile backends "triton-sta" / "triton-fp8-sta" (and their
TMA flavours "triton-sta-tma" / "triton-fp8-sta-tma"), each
``backend(q, k, v, key_lengths) -> out`` ([B, S, H, D]).

:mod:`vidtrt.models.attention` imports this module when such a backend is first asked for
(``use_backend`` / ``set_backend``; torch engines carry a ``vidtrt.runtime.pipeline.KernelChoice``) and
registers what it lists. The STA backends run the block-sparse kernels with the window of the DiT block
running now (:func:`vidtrt.kernels.sparse_layout.current_tile_window`, set by :mod:`vidtrt.models.sparse_tiles`
while the DiT holds its tokens in tile order); anywhere else (dense steps, the token refiner) they
run the dense kernels.
"""

from __future__ import annotations

import functools

import torch

from .attention import flash_attention
from .attention_fp8 import flash_attention_fp8
from .block_sparse import block_sparse_attention, block_sparse_attention_fp8
from .sparse_layout import BlockSparseLayout, TileGrid, current_tile_window, sliding_tile_layout


def _triton(q, k, v, key_lengths):
    return flash_attention(q, k, v, key_lengths)


def _triton_tma(q, k, v, key_lengths):
    return flash_attention(q, k, v, key_lengths, tma=True)


def _triton_fp8(q, k, v, key_lengths):
    return flash_attention_fp8(q, k, v, key_lengths)


def _triton_fp8_tma(q, k, v, key_lengths):
    return flash_attention_fp8(q, k, v, key_lengths, tma=True)


def sta_blocks(tile_tokens: int, on_gpu: bool) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the STA kernels: on a GPU 128 x 64 (the dense kernels' best Hopper tile)
    when the tile allows, else the largest power of two dividing the tile; 32 x 32 at most in the
    interpreter (few programs, fast tests)."""
    p = tile_tokens & -tile_tokens  # largest power of two dividing the tile
    if p < 16:
        raise ValueError(f"sliding-tile attention: a tile of {tile_tokens} tokens; accepted a multiple of 16")
    return (min(128, p), min(64, p)) if on_gpu else (min(32, p), min(32, p))


@functools.lru_cache(maxsize=128)  # 720p: ~8 MB of int32 per layout; 60 blocks may each have their own window
def sta_layout(tiles: TileGrid, window, seq_len: int, heads: int, device: str) -> BlockSparseLayout:
    """The sliding-tile layout of one (grid, window, sequence length), cached (a few per step)."""
    bm, bn = sta_blocks(tiles.tile_tokens, torch.device(device).type == "cuda")
    per_head = isinstance(window[0], tuple)
    return sliding_tile_layout(tiles, window, seq_len, bm, bn, heads=heads if per_head else None, device=device)


def _sta(fp8: bool, tma: bool = False):
    dense = {(False, False): _triton, (False, True): _triton_tma, (True, False): _triton_fp8,
             (True, True): _triton_fp8_tma}[fp8, tma]  # fmt: skip
    sparse = block_sparse_attention_fp8 if fp8 else block_sparse_attention

    def run(q, k, v, key_lengths):
        current = current_tile_window()
        if current is None:
            return dense(q, k, v, key_lengths)
        tiles, window = current
        layout = sta_layout(tiles, window, q.shape[1], q.shape[2], str(q.device))
        return sparse(q, k, v, layout, key_lengths, tma=tma)

    return run


ATTENTION_BACKENDS = {"triton": _triton, "triton-tma": _triton_tma, "triton-fp8": _triton_fp8,
                      "triton-fp8-tma": _triton_fp8_tma, "triton-sta": _sta(False),
                      "triton-fp8-sta": _sta(True), "triton-sta-tma": _sta(False, True),
                      "triton-fp8-sta-tma": _sta(True, True)}  # fmt: skip
