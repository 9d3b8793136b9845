"""Step caching in the denoising loop: call the DiT only when its output is expected to have changed.

The orchestrator asks a :class:`StepCache` for each step's velocity, handing it the latents and a callable
that runs the DiT (both branches under true CFG). The cache sees only the DiT's input and output, so it
works with any engine (torch, onnxruntime, TensorRT, remote Triton components) and in both transports.
Parameters and the policies' definitions: :mod:`vidtrt.config.step_cache`.

True CFG: the step's velocity is ``u + s (c - u)``, an affine combination of the two branches with
weights summing to 1, so reusing each branch's ``output - input`` is the same as reusing the guided
velocity's: one decision and one cache per step cover both branches, which therefore always skip or
call together (0 or 2 DiT calls per step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vidtrt.config.step_cache import StepCacheParams


def _mean_abs(x: torch.Tensor) -> float:
    """mean |x| in float64 (a Python float): the same value whatever the thread count."""
    return float(x.to(torch.float64).abs().mean())


class StepCache:
    """Decides, step by step, whether the DiT runs; policy ``none`` (every step calls it).

    :meth:`velocity` returns (velocity float32 like ``compute()``'s, whether ``compute`` was called).
    Subclasses implement the other policies. One instance serves one generation.
    """

    def __init__(self, params: StepCacheParams, total_steps: int):
        self.params = params
        self.total_steps = total_steps

    def velocity(self, step: int, latents: torch.Tensor, compute: Callable[[], torch.Tensor]
                 ) -> tuple[torch.Tensor, bool]:
        """The velocity at 0-based ``step`` for ``latents`` [B, C, T', H', W'] (float32)."""
        return compute(), True


class EasyCache(StepCache):
    """Runtime-adaptive reuse of the DiT's transformation (EasyCache-style; see
    :mod:`vidtrt.config.step_cache` for the rule).

    State after a computed step: its input ``x_c`` and output ``v_c``, the transformation ``v_c - x_c``,
    and ``k = mean|v_c - v_c'| / mean|x_c - x_c'|`` between the last two computed steps (c' the one
    before). A later step t adds ``k * mean|x_t - x_{t-1}| / mean|v_c|`` to the accumulator and reuses
    ``x_t + (v_c - x_c)`` while the sum stays below the threshold. The threshold is compared in float32
    precision (what the wire carries), so a request gives the same decisions in process and in the server.
    """

    def __init__(self, params: StepCacheParams, total_steps: int):
        super().__init__(params, total_steps)
        self.threshold = float(np.float32(params.threshold))
        self.accumulated = 0.0
        self.k: float | None = None
        self.prev_input: torch.Tensor | None = None
        self.last_input: torch.Tensor | None = None
        self.last_output: torch.Tensor | None = None
        self.last_output_size = 0.0
        self.transform: torch.Tensor | None = None

    def _reuse(self, step: int, latents: torch.Tensor) -> bool:
        if step < self.params.warmup_steps or step >= self.total_steps - 1:
            self.accumulated = 0.0
            return False
        if self.k is None or self.prev_input is None or self.last_output_size <= 0.0:
            return False
        self.accumulated += self.k * _mean_abs(latents - self.prev_input) / self.last_output_size
        if self.accumulated < self.threshold:
            return True
        self.accumulated = 0.0
        return False

    def velocity(self, step, latents, compute):
        reuse = self.transform is not None and self._reuse(step, latents)
        self.prev_input = latents
        if reuse:
            return latents + self.transform, False
        out = compute().to(torch.float32)
        if self.last_output is not None:
            input_change = _mean_abs(latents - self.last_input)
            self.k = _mean_abs(out - self.last_output) / input_change if input_change > 0.0 else None
        self.transform = out - latents
        self.last_input, self.last_output = latents, out
        self.last_output_size = _mean_abs(out)
        return out, True


_POLICIES: dict[str, type[StepCache]] = {"none": StepCache, "easycache": EasyCache}


def make_step_cache(params: StepCacheParams, total_steps: int) -> StepCache:
    """The cache of one generation (``params`` validated): a plain :class:`StepCache` when it cannot skip
    (policy ``none`` or threshold 0), so such requests run exactly the uncached loop."""
    if not params.skips:
        return StepCache(params, total_steps)
    return _POLICIES[params.policy](params, total_steps)


@dataclass
class DitCallTally:
    """Sums the DiT calls made / saved from denoising progress events (``dit_calls``,
    ``dit_calls_skipped``); ``pattern`` is 1 per step that called the DiT, 0 per reused step. Pass it
    the events (it is a progress callback) and, optionally, ``forward`` to pass them on."""

    forward: Callable | None = None
    calls: int = 0
    skipped: int = 0

    def __post_init__(self) -> None:
        self.pattern: list[int] = []

    def __call__(self, event) -> None:
        if getattr(event, "stage", "denoise") == "denoise" and getattr(event, "dit_calls", None) is not None:
            self.calls += event.dit_calls
            self.skipped += event.dit_calls_skipped
            self.pattern.append(1 if event.dit_calls else 0)
        if self.forward is not None:
            self.forward(event)
