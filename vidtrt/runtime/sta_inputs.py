"""The host side of the sliding-tile plugin graph: its extra inputs for one request shape and step.

The STA plugin export of the DiT (``vidtrt.export.sta_onnx``, spec ``dit_spec(config, sparse=True)``) takes,
next to the DiT's own inputs, the tile order and the block-sparse layouts as tensors
(:func:`vidtrt.config.specs.sta_inputs` lists them). They depend on the video's size, the text length fed
(after the engine trimmed the text to its bucket), the step's windows and the model's tile, never on the
values, so :class:`StaInputs` makes them once per (size, text length, window) and reuses them for every step
and request of that shape. A dense step (no current :class:`~vidtrt.config.sparse_attention.SparseStep`)
gets a window covering the whole video: the block-sparse kernels then visit every key block, which is
dense attention (the same graph serves the dense first steps; its layout is the largest, MAXK = every key
block).

:class:`vidtrt.runtime.engine_components.EngineDenoiser` adds these feeds before calling its engine, the
same for onnxruntime (the graph with the plugins' reference functions) and a TensorRT plan
(:class:`vidtrt.runtime.engines.TensorRTEngine`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from vidtrt.config.model_config import ModelConfig
from vidtrt.config.sparse_attention import PLUGIN_BLOCKS, SparseStep, window_groups
from vidtrt.config.specs import sta_grid
from vidtrt.errors import EngineError
from vidtrt.kernels.sparse_layout import TileGrid, sliding_tile_layout


class StaInputs:
    """Makes the STA plugin graph's extra feeds (names and dtypes of ``dit_spec(config, sparse=True)``).

    ``config``: the model config the graph was exported from (its ``sparse_attention.tile`` and layer
    windows fix the graph's tile and which layers share a layout)."""

    def __init__(self, config: ModelConfig):
        tc = config.transformer
        self.config = config
        self.tile = tuple(config.sparse_attention.tile)
        self.heads = tc.num_attention_heads
        self.num_layers = tc.num_layers + tc.num_single_layers
        self.groups, self.layer_group = window_groups(config.sparse_attention.layer_window_list(self.num_layers))
        # first layer of each group: where a step's window for that layout is read
        self.group_first = tuple(self.layer_group.index(g) for g in range(len(self.groups)))
        # layouts per group in the graph (its sta_kv_idx_<g> [Hl, ...]): one for a window uniform over heads
        self.layout_heads = tuple(self.heads if isinstance(w[0], (tuple, list)) else 1 for w in self.groups)

    def windows(self, step: SparseStep | None, tiles: tuple[int, int, int]) -> tuple:
        """One window per layout group for ``step`` (None: dense, a window covering ``tiles``)."""
        if step is None:
            return (tuple(tiles),) * len(self.groups)
        if tuple(step.tile) != self.tile:
            raise EngineError(f"sparse step tile {list(step.tile)}: this STA plugin graph was exported with tile "
                              f"{list(self.tile)} (model config sparse_attention.tile)")
        if len(step.windows) != self.num_layers:
            raise EngineError(f"sparse step has {len(step.windows)} layer windows: accepted one per block "
                              f"({self.num_layers})")
        out = []
        for g, first in enumerate(self.group_first):
            w = step.windows[first]
            layers = [i for i, gi in enumerate(self.layer_group) if gi == g]
            if any(step.windows[i] != w for i in layers):
                raise EngineError(f"sparse step gives blocks {layers} different windows; this STA plugin graph shares "
                                  "one layout among them (the model config's layer_windows): accepted one window for "
                                  "all of them")
            out.append(w)
        return tuple(out)

    def feeds(self, latent_shape: tuple[int, ...], text_length: int, step: SparseStep | None) -> dict[str, np.ndarray]:
        """The extra inputs for latents of ``latent_shape`` ([B, C, T', H', W'] or (T', H', W')) and
        ``text_length`` text tokens (what the engine is fed), at ``step``."""
        t, h, w = (int(d) for d in latent_shape[-3:])
        grid_tiles = sta_grid(self.config, t, h, w)
        grid, tiles = grid_tiles[:3], grid_tiles[3:]
        out = {"sta_tile_rows": _tile_rows(grid, self.tile)}
        for g, window in enumerate(self.windows(step, tiles)):
            hl = self.layout_heads[g]
            if hl == 1 and isinstance(window[0], (tuple, list)):
                if any(tuple(w) != tuple(window[0]) for w in window):
                    raise EngineError(f"sparse step gives the layers of window {list(self.groups[g])} one window per "
                                      "head; this STA plugin graph takes one layout for all heads there (the model "
                                      "config's layer_windows): accepted one window for all heads")
                window = tuple(window[0])
            kv_idx, kv_cnt, kv_end = _layout(grid, self.tile, window, int(text_length), hl)
            out[f"sta_kv_idx_{g}"], out[f"sta_kv_cnt_{g}"] = kv_idx, kv_cnt
            out["sta_kv_end"] = kv_end
        return out


@functools.lru_cache(maxsize=64)
def _tile_rows(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> np.ndarray:
    tiles = TileGrid(grid, tile)
    n = tiles.num_tokens
    rows = torch.full((tiles.padded_tokens,), n, dtype=torch.int64)
    rows[tiles.permutation()] = torch.arange(n)
    return rows.numpy()  # cached: callers must not modify it


# 720p, 24 heads: a sparse layout per head is ~25 MB of int32 per group, a dense one ~170 MB; one for all heads
# (heads=1: a window uniform over heads) is 1/24 of that
@functools.lru_cache(maxsize=8)
def _layout(grid, tile, window, text_length: int, heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layout arrays [heads, NQB, MAXK], [heads, NQB, 2], [NKB]; heads = 1: one uniform window."""
    tiles = TileGrid(grid, tile)
    per_head = isinstance(window[0], (tuple, list))
    lay = sliding_tile_layout(tiles, window, tiles.padded_tokens + text_length, *PLUGIN_BLOCKS,
                              heads=heads if per_head else None)
    kv_idx = lay.kv_idx.expand(heads, -1, -1).contiguous().numpy()  # a uniform window read per head: copies
    kv_cnt = lay.kv_cnt.expand(heads, -1, -1).contiguous().numpy()
    kv_end = lay.kv_end.contiguous().numpy()
    return kv_idx, kv_cnt, kv_end  # cached: callers must not modify them
