"""Step caching in the denoising loop: call the DiT only when its output is expected to have changed.

The orchestrator asks a :class:`StepCache` for each step's velocity, handing it the latents and a callable
that runs the DiT (both branches under true CFG). The cache sees only the DiT's input and output, so it
works with any engine (torch, onnxruntime, TensorRT, remote Triton components) and in both transports.
Parameters and the policies' definitions: :mod:`vidtrt.config.step_cache`.

True CFG: the step's velocity is ``u + s (c - u)``, an affine combination of the two branches with
weights summing to 1, so reusing each branch's ``output - input`` is the same as reusing the guided
velocity's: one decision and one cache per step cover both branches, which therefore always skip or
call together (0 or 2 DiT calls per step). TeaCache probes the conditional branch only (its pooled text), so
its one decision covers both branches as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vidtrt.config.step_cache import TEACACHE_COEFFICIENTS, StepCacheParams
from vidtrt.errors import InvalidRequestError

# (step, latents, prev_step, prev_latents) -> relative L1 change of the DiT's first-block modulated input from
# step prev_step to step (the conditional branch's; :mod:`vidtrt.models.dit_probe`), or for CogVideoX of its
# timestep embedding (:mod:`vidtrt.models.cogvideox_probe`).
ProbeFn = Callable[[int, torch.Tensor, int, torch.Tensor], float]


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


def rescale(coefficients: tuple[float, ...], x: float) -> float:
    """``numpy.poly1d(coefficients)(x)`` (highest power first) in float64, by Horner's rule."""
    out = 0.0
    for c in coefficients:
        out = out * x + float(c)
    return out


class TeaCache(StepCache):
    """TeaCache on the DiT probe (see :mod:`vidtrt.config.step_cache` for the rule).

    ``probe(step, latents, prev_step, prev_latents)`` gives the relative L1 change of block 0's modulated
    input between two consecutive steps (computed or not, as TeaCache compares each step with the one
    before). After a warm-up of ``max(warmup_steps, 1)`` steps, each step but the last adds
    ``rescale(coefficients, change)`` to the accumulator and reuses ``x_t + (v_c - x_c)`` (the last computed
    step's transformation, TeaCache's cached residual at the DiT's boundary) while it stays below the
    threshold (compared in float32 precision, as the wire carries it). ``coefficients``: the rescaling
    polynomial, highest power first (default: the HunyuanVideo one of
    :data:`~vidtrt.config.step_cache.TEACACHE_COEFFICIENTS`). ``changes`` keeps every probed value (None for
    steps not probed), for inspection.
    """

    def __init__(self, params: StepCacheParams, total_steps: int, probe: ProbeFn,
                 coefficients: tuple[float, ...] | None = None):
        super().__init__(params, total_steps)
        self.threshold = float(np.float32(params.threshold))
        self.probe = probe
        self.coefficients = tuple(coefficients or TEACACHE_COEFFICIENTS["hunyuan_video"])
        self.accumulated = 0.0
        self.prev_latents: torch.Tensor | None = None
        self.transform: torch.Tensor | None = None
        self.changes: list[float | None] = []

    def _reuse(self, step: int, latents: torch.Tensor, prev: torch.Tensor | None) -> bool:
        if step < max(self.params.warmup_steps, 1) or step >= self.total_steps - 1 or prev is None \
                or self.transform is None:
            self.accumulated = 0.0
            self.changes.append(None)
            return False
        change = float(self.probe(step, latents, step - 1, prev))
        self.changes.append(change)
        self.accumulated += rescale(self.coefficients, change)
        if self.accumulated < self.threshold:
            return True
        self.accumulated = 0.0
        return False

    def velocity(self, step, latents, compute):
        prev, self.prev_latents = self.prev_latents, latents
        if self._reuse(step, latents, prev):
            return latents + self.transform, False
        out = compute().to(torch.float32)
        self.transform = out - latents
        return out, True


def require_probe(params: StepCacheParams, probe: object | None) -> None:
    """InvalidRequestError (``cache_policy``) when ``params`` ask for TeaCache and no DiT probe is served
    (a model repository or artifacts folder without ``dit_probe``); checked before any work."""
    if params.policy == "teacache" and params.skips and probe is None:
        raise InvalidRequestError("cache_policy", params.policy, "'none' or 'easycache' here: this deployment "
                                  "serves no DiT probe (dit_probe), which teacache needs; rebuild or re-export with it")


def make_step_cache(params: StepCacheParams, total_steps: int, probe: ProbeFn | None = None,
                    family: str = "hunyuan_video") -> StepCache:
    """The cache of one generation (``params`` validated): a plain :class:`StepCache` when it cannot skip
    (policy ``none`` or threshold 0), so such requests run exactly the uncached loop. ``probe``: the DiT
    probe TeaCache needs (``teacache`` without one: InvalidRequestError); ``family``: the key of its
    TeaCache coefficients in :data:`~vidtrt.config.step_cache.TEACACHE_COEFFICIENTS` (``teacache_variant``)."""
    if not params.skips:
        return StepCache(params, total_steps)
    if params.policy == "teacache":
        require_probe(params, probe)
        return TeaCache(params, total_steps, probe, TEACACHE_COEFFICIENTS[family])
    return EasyCache(params, total_steps)


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
