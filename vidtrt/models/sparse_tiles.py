"""The DiT side of sliding-tile attention: the tile token order, once per forward, and the current layer.

With an STA attention backend (``triton-sta`` / ``triton-fp8-sta``) and a sparse step current
(:func:`vidtrt.config.sparse_attention.current_sparse_step`), the DiT permutes its image tokens into the
padded tile order of :class:`vidtrt.kernels.sparse_layout.TileGrid` right after the patch embedding
(and the RoPE tables with them) and back right before the output projection. Everything between
(norms, modulation, MLPs, the fused QK-norm + RoPE kernel) works token by token, so it runs unchanged
on the permuted order: the permutation costs two gathers per forward instead of two per attention
call. Padding rows (tiles cut by the grid's edge) ride along and are never keys (the layout masks
them) nor outputs. Each block runs inside :meth:`TilePlan.layer`, which tells the backend its window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch

from vidtrt.config.sparse_attention import LayerWindow, current_sparse_step
from vidtrt.errors import ConfigError
from vidtrt.kernels.sparse_layout import TileGrid, layout_tensors, tile_window

TILED_BACKENDS = ("triton-sta", "triton-fp8-sta", "triton-sta-tma", "triton-fp8-sta-tma")


class TilePlan:
    """One forward's tile order: ``grid`` (T', H', W') tokens after patching, ``windows`` one per block."""

    def __init__(self, tiles: TileGrid, windows: tuple[LayerWindow, ...], device):
        self.tiles = tiles
        self.windows = windows
        self.perm = tiles.permutation(device)  # natural token -> row of the padded tile order

    def enter(self, img: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """img [B, S_img, C], cos / sin [S_img, D] -> the same in tile order with padding rows
        ([B, padded, C]; padding: zeros, cos 1, sin 0)."""
        b, _, c = img.shape
        n = self.tiles.padded_tokens
        x = img.new_zeros((b, n, c))
        x[:, self.perm] = img
        cos_t = cos.new_ones((n, cos.shape[1]))
        sin_t = sin.new_zeros((n, sin.shape[1]))
        cos_t[self.perm] = cos
        sin_t[self.perm] = sin
        return x, cos_t, sin_t

    def leave(self, img: torch.Tensor) -> torch.Tensor:
        """[B, padded, C] in tile order -> [B, S_img, C] in the natural t -> h -> w order."""
        return img[:, self.perm]

    def layer(self, index: int):
        """Context for block ``index``: the STA backends attend with its window."""
        return tile_window(self.tiles, self.windows[index])


class GraphTilePlan:
    """The tile order and layouts as tensors: the graph inputs of the sliding-tile plugin export
    (``vidtrt.config.specs.sta_inputs``), so one graph serves every video size, window and step.

    ``tile_rows`` int64 [P]: the natural image token of each tile-order row (``S_img``: a padding row);
    ``layouts``: one (kv_idx, kv_cnt, kv_end) per distinct window, ``layer_group[i]`` the one of block i.
    Entering gathers the rows (a zero row / cos 1 / sin 0 for padding); leaving scatters them back (the
    padding rows all land on one extra row, dropped), so both are one Gather / ScatterND in the graph."""

    def __init__(self, tile_rows: torch.Tensor, layouts, layer_group: tuple[int, ...]):
        self.rows, self.layouts, self.layer_group = tile_rows, layouts, layer_group
        self.num_tokens = None

    def enter(self, img: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, s, c = img.shape
        self.num_tokens = s
        x = torch.cat((img, img.new_zeros((b, 1, c))), 1).index_select(1, self.rows)
        cos_t = torch.cat((cos, cos.new_ones((1, cos.shape[1]))), 0).index_select(0, self.rows)
        sin_t = torch.cat((sin, sin.new_zeros((1, sin.shape[1]))), 0).index_select(0, self.rows)
        return x, cos_t, sin_t

    def leave(self, img: torch.Tensor) -> torch.Tensor:
        b, _, c = img.shape
        out = img.new_zeros((b, self.num_tokens + 1, c))
        out[:, self.rows] = img
        return out[:, : self.num_tokens]

    def layer(self, index: int):
        return layout_tensors(*self.layouts[self.layer_group[index]])


_graph_plan: ContextVar[GraphTilePlan | None] = ContextVar("vidtrt_graph_tile_plan", default=None)


@contextlib.contextmanager
def graph_tile_plan(plan: GraphTilePlan) -> Iterator[None]:
    """Within the block the DiT runs in ``plan``'s tile order whatever the backend and step (the STA plugin
    export and its eager twin)."""
    token = _graph_plan.set(plan)
    try:
        yield
    finally:
        _graph_plan.reset(token)


def tile_plan(grid: tuple[int, int, int], num_blocks: int, device, exporting: bool = False):
    """The forward's TilePlan when the attention backend is an STA one and a sparse step is current (or the
    :class:`GraphTilePlan` set by :func:`graph_tile_plan`)."""
    from vidtrt.models.attention import get_backend

    graph = _graph_plan.get()
    if graph is not None:
        if len(graph.layer_group) != num_blocks:
            raise ConfigError(f"the graph tile plan has {len(graph.layer_group)} layer windows: accepted one per "
                              f"block ({num_blocks})")
        return graph
    step = current_sparse_step()
    if exporting or step is None or get_backend() not in TILED_BACKENDS:
        return None
    if len(step.windows) != num_blocks:
        raise ConfigError(f"sparse step has {len(step.windows)} layer windows: accepted one per block ({num_blocks})")
    return TilePlan(TileGrid(tuple(int(g) for g in grid), tuple(step.tile)), step.windows, device)


def block_scope(plan: TilePlan | None, index: int):
    """Context for block ``index`` (dual-stream blocks first, then single-stream): its window, if any."""
    return plan.layer(index) if plan is not None else contextlib.nullcontext()
