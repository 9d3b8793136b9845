"""Step caching parameters: which policy skips DiT calls, its threshold and its warm-up steps.

One parameter set, carried by every transport as three request fields (``cache_policy``,
``cache_threshold``, ``cache_warmup_steps``; :class:`~vidtrt.config.request.GenerationRequest`), defaults per
model in :class:`~vidtrt.config.model_config.SamplerDefaults`. The policies themselves run in the
orchestrator (:mod:`vidtrt.runtime.step_cache`), so every engine and both transports get them.

Policies (``CACHE_POLICIES``):

- ``none``: every step calls the DiT (the frames are bit-identical to a build without caching).
- ``easycache``: runtime-adaptive reuse in the spirit of EasyCache (Zhou et al. 2025, arXiv 2507.02860).
  After a computed step it keeps the DiT's transformation ``output - input`` and the rate ``k`` at which
  the output changed relative to the input between the last two computed steps. At each later step it
  adds ``k * mean|x_t - x_{t-1}| / mean|last output|`` (the estimated relative change of the output) to an
  accumulator; while the accumulator stays below ``threshold`` the step reuses ``x_t + (output - input)``
  instead of calling the DiT; once it passes, the DiT runs and the accumulator restarts at 0. The first
  ``warmup_steps`` steps and the last step always call the DiT. ``threshold`` 0 never skips.
- ``teacache``: TeaCache (Liu et al. 2024, arXiv 2411.19108) on the first double-stream block's modulated
  image input, ``norm1(x_embedder(x)) * (1 + scale) + shift``, computed by the stateless ``dit_probe``
  component (:mod:`vidtrt.models.dit_probe`). At each step after the warm-up it adds
  ``poly(rel_l1)`` to an accumulator, ``rel_l1 = mean|m_t - m_{t-1}| / mean|m_{t-1}|`` the relative L1
  change of that modulated input since the previous step and ``poly`` the per-model rescaling polynomial
  (:data:`TEACACHE_COEFFICIENTS`); while the accumulator stays below ``threshold`` the step reuses the last
  computed step's ``output - input``; once it passes, the DiT runs and the accumulator restarts at 0. The
  first ``max(warmup_steps, 1)`` steps and the last step always call the DiT. CogVideoX models use
  TeaCache4CogVideoX's indicator instead, the timestep embedding ``time_embedding(sinusoid(t))``
  (:mod:`vidtrt.models.cogvideox_probe`), with their per-variant coefficients (:func:`teacache_variant`).

No torch here (layer 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vidtrt.errors import InvalidRequestError

CACHE_POLICIES: tuple[str, ...] = ("none", "easycache", "teacache")
# TeaCache's rescaling polynomial per model variant, highest power first (numpy.poly1d order), as published in
# github.com/ali-vilab/TeaCache (commit 7c10efc, 2025-06-08):
# - hunyuan_video: TeaCache4HunyuanVideo/teacache_sample_video.py, ``coefficients``;
# - cogvideox-2b, cogvideox-5b: eval/teacache/experiments/cogvideox.py (TeaCache4CogVideoX; 2B: no RoPE, 5B:
#   RoPE), also TeaCache4CogVideoX1.5/teacache_sample_video.py ``coefficients_dict`` "CogVideoX-2b" / "-5b";
# - cogvideox1.5-5b: TeaCache4CogVideoX1.5/teacache_sample_video.py ``coefficients_dict["CogVideoX1.5-5B"]``
#   (text-to-video; the -I2V variants have their own, not served here).
# Each was fitted on the released weights' trajectories: it maps those weights' indicator change to their
# output change, and means little for other weights (the random-weight presets included). The HunyuanVideo
# indicator is block 0's modulated input, the CogVideoX one the timestep embedding (see the policies above).
TEACACHE_COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "hunyuan_video": (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02),
    "cogvideox-2b": (-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00, -3.61568434e-03),
    "cogvideox-5b": (-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02),
    "cogvideox1.5-5b": (2.50210439e02, -1.65061612e02, 3.57804877e01, -7.81551492e-01, 3.58559703e-02),
}
TEACACHE_FAMILIES: tuple[str, ...] = ("hunyuan_video", "cogvideox")  # the families with a DiT probe


def teacache_variant(config) -> str:
    """The :data:`TEACACHE_COEFFICIENTS` key of a resolved model config: ``hunyuan_video``, or for CogVideoX
    by its DiT's architecture as TeaCache chooses (eval/teacache/experiments/cogvideox.py): ``patch_size_t``
    set -> ``cogvideox1.5-5b``; else RoPE -> ``cogvideox-5b`` (tiny-cogvideox, a 5B-architecture preset, gets
    this one); else ``cogvideox-2b`` (sin-cos positions)."""
    family = getattr(config, "family", "hunyuan_video")
    if family != "cogvideox":
        return family
    tc = config.transformer
    if tc.patch_size_t is not None:
        return "cogvideox1.5-5b"
    return "cogvideox-5b" if tc.use_rotary_positional_embeddings else "cogvideox-2b"


MAX_CACHE_THRESHOLD = 10.0  # an accumulated relative change of 10x the output's size: beyond any useful value
# Request field names (the wire, the Python keywords and the CLI flags' dests).
CACHE_FIELDS = ("cache_policy", "cache_threshold", "cache_warmup_steps")


@dataclass(frozen=True)
class StepCacheParams:
    """The step cache of one request.

    ``policy``: one of :data:`CACHE_POLICIES`. ``threshold``: the accumulated estimated relative change of
    the DiT's output (dimensionless, mean absolute change / mean absolute output) at which the DiT is
    called again; 0 = never skip. ``warmup_steps``: the first steps that always call the DiT (the last step
    always does too).
    """

    policy: str = "none"
    threshold: float = 0.0
    warmup_steps: int = 0

    @property
    def skips(self) -> bool:
        """Whether this setting can skip a DiT call at all (a policy other than none, threshold > 0)."""
        return self.policy != "none" and self.threshold > 0.0

    def validate(self, max_warmup_steps: int, family: str = "hunyuan_video") -> StepCacheParams:
        """Raise InvalidRequestError naming the request field (``cache_policy``, ``cache_threshold``,
        ``cache_warmup_steps``) and what it accepts; returns self. ``family``: the model's family (``teacache``
        needs one of :data:`TEACACHE_FAMILIES`)."""
        if not isinstance(self.policy, str) or self.policy not in CACHE_POLICIES:
            raise InvalidRequestError("cache_policy", self.policy, f"one of {list(CACHE_POLICIES)}")
        if self.policy == "teacache" and family not in TEACACHE_FAMILIES:
            accepted = [p for p in CACHE_POLICIES if p != "teacache"]
            raise InvalidRequestError("cache_policy", self.policy, f"one of {accepted} for {family} models (teacache "
                                      f"needs a DiT probe and fitted coefficients: {list(TEACACHE_FAMILIES)})")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
                or not 0.0 <= t <= MAX_CACHE_THRESHOLD:
            raise InvalidRequestError("cache_threshold", t, f"a finite number in [0, {MAX_CACHE_THRESHOLD:g}] "
                                      "(0 = never skip a DiT call)")
        w = self.warmup_steps
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= max_warmup_steps:
            raise InvalidRequestError("cache_warmup_steps", w, f"an integer in [0, {max_warmup_steps}]")
        return self
