"""Sliding-tile (block-sparse) attention settings: the model's defaults, a request's overrides, the per-step choice.

A model config carries :class:`SparseAttentionConfig` (section ``sparse_attention``; in a checkpoint's
``vidtrt.json`` too): the tile size in latent tokens after patching, the window in tiles (one for every
layer, or per layer, and per layer per head) and the step range that runs sparse (steps before
``start_step`` run dense: the first steps lay out the video's structure). A request may override the
window (one for every layer) and the step range (``sparse_window``, ``sparse_steps``). The orchestrator
turns these into one :class:`SparseStep` per denoising step (None: dense) and makes it current for the
DiT call (:func:`sparse_step`); the DiT applies it only when it runs an STA attention backend
(``triton-sta`` / ``triton-fp8-sta``), which reads it through :func:`current_sparse_step`. Over Triton the
BLS model sends it to the DiT model as JSON (:meth:`SparseStep.to_json`). No torch here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from vidtrt.errors import ConfigError, InvalidRequestError

Triple = tuple[int, int, int]
# A layer's window: one (t, h, w) for every head, or one per head.
LayerWindow = Triple | tuple[Triple, ...]


def _triple(value: object) -> Triple | None:
    if (isinstance(value, (tuple, list)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    return None


def _layer_window(value: object, heads: int | None) -> LayerWindow | None:
    t = _triple(value)
    if t is not None:
        return t
    if isinstance(value, (tuple, list)) and value and (heads is None or len(value) == heads):
        per_head = [_triple(v) for v in value]
        if all(p is not None for p in per_head):
            return tuple(per_head)  # type: ignore[arg-type]
    return None


@dataclass(frozen=True)
class SparseAttentionConfig:
    """Sliding-tile attention defaults of a model (used only with the STA attention backends).

    ``tile``: (t, h, w) latent tokens per tile after patching; ``t * h * w`` a multiple of 16 (128 on
    Hopper for full-size blocks). ``window``: (t, h, w) in tiles around a query's tile, for every layer
    unless ``layer_windows`` lists one entry per block (dual-stream blocks first, then single-stream),
    each a (t, h, w) or a list of one (t, h, w) per head. Steps ``[start_step, stop_step)`` run sparse
    (``stop_step`` None: through the last step); the others dense.
    """

    tile: Triple = (4, 8, 8)
    window: Triple = (5, 3, 5)
    layer_windows: tuple = ()
    start_step: int = 10
    stop_step: int | None = None

    def validate(self, num_layers: int | None = None, heads: int | None = None) -> SparseAttentionConfig:
        tile = _triple(self.tile)
        if tile is None or (tile[0] * tile[1] * tile[2]) % 16:
            raise ConfigError(f"sparse_attention.tile {self.tile!r}: accepted three integers >= 1 (t, h, w) whose "
                              "product is a multiple of 16")
        if _triple(self.window) is None:
            raise ConfigError(f"sparse_attention.window {self.window!r}: accepted three integers >= 1 (t, h, w)")
        if self.layer_windows:
            if num_layers is not None and len(self.layer_windows) != num_layers:
                raise ConfigError(f"sparse_attention.layer_windows has {len(self.layer_windows)} entries: accepted "
                                  f"none or one per block ({num_layers})")
            for i, w in enumerate(self.layer_windows):
                if _layer_window(w, heads) is None:
                    raise ConfigError(f"sparse_attention.layer_windows[{i}] {w!r}: accepted (t, h, w) or one (t, h, w) "
                                      f"per head{f' ({heads})' if heads else ''}, integers >= 1")
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) or self.start_step < 0:
            raise ConfigError(f"sparse_attention.start_step {self.start_step!r}: accepted an integer >= 0")
        if self.stop_step is not None and (isinstance(self.stop_step, bool) or not isinstance(self.stop_step, int)
                                           or self.stop_step < self.start_step):
            raise ConfigError(f"sparse_attention.stop_step {self.stop_step!r}: accepted None or an integer >= "
                              f"start_step ({self.start_step})")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparseAttentionConfig:
        names = {"tile", "window", "layer_windows", "start_step", "stop_step"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"sparse_attention: unknown field(s) {unknown}; accepted {sorted(names)}")
        kw = dict(data)
        for k in ("tile", "window"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        if "layer_windows" in kw:
            kw["layer_windows"] = tuple(_freeze(w) for w in kw["layer_windows"] or ())
        return cls(**kw).validate()

    def layer_window_list(self, num_layers: int) -> tuple[LayerWindow, ...]:
        if self.layer_windows:
            return tuple(_freeze(w) for w in self.layer_windows)
        return (tuple(self.window),) * num_layers  # type: ignore[return-value]


def _freeze(w):
    return tuple(_freeze(x) for x in w) if isinstance(w, (list, tuple)) else w


@dataclass(frozen=True)
class SparseStep:
    """What one DiT call runs sparse with: the tile and one window per block (see SparseAttentionConfig)."""

    tile: Triple
    windows: tuple[LayerWindow, ...]

    def to_json(self) -> str:
        return json.dumps({"tile": list(self.tile), "windows": [list(map(list, w)) if isinstance(w[0], tuple)
                                                               else list(w) for w in self.windows]})

    @classmethod
    def from_json(cls, text: str) -> SparseStep:
        try:
            d = json.loads(text)
            tile, windows = _triple(d["tile"]), tuple(_layer_window(w, None) for w in d["windows"])
        except (ValueError, KeyError, TypeError):
            tile, windows = None, (None,)
        if tile is None or any(w is None for w in windows):
            raise InvalidRequestError("sparse_attention", text[:200], 'JSON {"tile": [t, h, w], "windows": [...]}')
        return cls(tile, windows)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ request fields
def parse_window(value: object) -> Triple:
    """A request's ``sparse_window``: "t,h,w" (tiles) -> (t, h, w); InvalidRequestError naming the field."""
    parts = value.split(",") if isinstance(value, str) else None
    out = None
    if parts is not None and len(parts) == 3 and all(p.strip().isdigit() for p in parts):
        out = _triple([int(p) for p in parts])
    if out is None:
        raise InvalidRequestError("sparse_window", value, "'t,h,w': three integers >= 1, the window in tiles")
    return out


def parse_steps(value: object, max_steps: int) -> tuple[int, int | None]:
    """A request's ``sparse_steps``: "start:stop" or "start:" (through the last step) -> (start, stop)."""
    accepted = f"'start:stop' or 'start:' with 0 <= start <= stop <= {max_steps} (steps before start run dense)"
    if not isinstance(value, str) or value.count(":") != 1:
        raise InvalidRequestError("sparse_steps", value, accepted)
    a, b = (p.strip() for p in value.split(":"))
    if not a.isdigit() or (b and not b.isdigit()):
        raise InvalidRequestError("sparse_steps", value, accepted)
    start, stop = int(a), (int(b) if b else None)
    if start > max_steps or (stop is not None and not start <= stop <= max_steps):
        raise InvalidRequestError("sparse_steps", value, accepted)
    return start, stop


def step_schedule(cfg: SparseAttentionConfig, num_layers: int, window: str | None, steps: str | None,
                  max_steps: int):
    """step index (0-based) -> SparseStep or None (dense), from the model's config and a request's overrides."""
    windows = ((parse_window(window),) * num_layers if window is not None else cfg.layer_window_list(num_layers))
    start, stop = parse_steps(steps, max_steps) if steps is not None else (cfg.start_step, cfg.stop_step)
    sparse = SparseStep(tuple(cfg.tile), windows)  # type: ignore[arg-type]

    def at(step: int) -> SparseStep | None:
        return sparse if start <= step and (stop is None or step < stop) else None

    return at


# ------------------------------------------------------------------------------------------ the plugin graph
# (BLOCK_M, BLOCK_N) of the vidtrt::attention_sta(_fp8) TensorRT plugins (compiled into their payloads): the
# layouts fed to an STA plugin graph are made with these blocks, so a tile must hold a multiple of 128 tokens.
PLUGIN_BLOCKS = (128, 64)


def window_groups(windows: tuple[LayerWindow, ...]) -> tuple[tuple[LayerWindow, ...], tuple[int, ...]]:
    """(distinct layer windows in first-use order, each layer's index into them): the STA plugin graph takes
    one layout per distinct window of the model config, and its layers share them (``dit_spec(sparse=True)``)."""
    distinct: list[LayerWindow] = []
    index = []
    for w in windows:
        if w not in distinct:
            distinct.append(w)
        index.append(distinct.index(w))
    return tuple(distinct), tuple(index)


# ------------------------------------------------------------------------------------------ the current step
_current: ContextVar[SparseStep | None] = ContextVar("vidtrt_sparse_step", default=None)


@contextlib.contextmanager
def sparse_step(step: SparseStep | None) -> Iterator[None]:
    """Within the block, DiT calls in this thread / task run ``step`` (None: dense)."""
    token = _current.set(step)
    try:
        yield
    finally:
        _current.reset(token)


def current_sparse_step() -> SparseStep | None:
    return _current.get()
