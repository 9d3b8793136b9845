"""A generation request and its validation against a model's limits.

Every rule raises :class:`~vidtrt.errors.InvalidRequestError` naming the parameter, the value
and what is accepted; both transports (in process and Triton) call :meth:`GenerationRequest.validate`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from vidtrt.config.model_config import ModelConfig
from vidtrt.config.sparse_attention import parse_steps, parse_window
from vidtrt.config.step_cache import StepCacheParams
from vidtrt.errors import InvalidRequestError

logger = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 20_000
MAX_GUIDANCE = 100.0
MAX_FLOW_SHIFT = 100.0
PROMPT_POLICIES = ("truncate", "error")
OUTPUT_FORMATS = ("frames", "mp4")


@dataclass
class GenerationRequest:
    """One text-to-video request. ``None`` fields take the model's defaults in :meth:`resolved`.

    Units: ``height``/``width`` in pixels (multiples of 16), ``num_frames`` in video frames (4k + 1),
    ``embedded_guidance_scale`` as diffusers' ``guidance_scale`` (the DiT gets it x 1000),
    ``true_cfg_scale`` 1.0 = off (one DiT pass per step), > 1 = classifier-free guidance with
    ``negative_prompt``.
    """

    prompt: str
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    embedded_guidance_scale: float | None = None
    flow_shift: float | None = None
    seed: int | None = None
    true_cfg_scale: float | None = None
    # What to do when the prompt has more tokens than the text encoder takes.
    prompt_policy: str = "truncate"
    output_format: str = "frames"
    # Step caching (vidtrt.config.step_cache): policy name, threshold, warm-up steps.
    cache_policy: str | None = None
    cache_threshold: float | None = None
    cache_warmup_steps: int | None = None
    # Sliding-tile attention (STA backends only; None: the model's sparse_attention config):
    # "t,h,w" window in tiles for every layer; "start:stop" / "start:" steps that run sparse.
    sparse_window: str | None = None
    sparse_steps: str | None = None
    # CogVideoX: diffusers' use_dynamic_cfg (the CFG scale follows a cosine schedule over the steps);
    # None: the model's default (false; HunyuanVideo has no such default and accepts only false).
    use_dynamic_cfg: bool | None = None

    def resolved(self, config: ModelConfig) -> GenerationRequest:
        """A copy with every ``None`` replaced by the model's default (not yet validated)."""
        d = config.defaults
        fill = {
            "height": d.height,
            "width": d.width,
            "num_frames": d.num_frames,
            "num_inference_steps": d.num_inference_steps,
            "embedded_guidance_scale": d.embedded_guidance_scale,
            "flow_shift": d.flow_shift,
            "seed": d.seed,
            "true_cfg_scale": d.true_cfg_scale,
            "cache_policy": d.cache_policy,
            "cache_threshold": d.cache_threshold,
            "cache_warmup_steps": d.cache_warmup_steps,
            "use_dynamic_cfg": getattr(d, "use_dynamic_cfg", False),
        }
        out = dataclasses.replace(self)
        for k, v in fill.items():
            if getattr(out, k) is None:
                setattr(out, k, v)
        if out.negative_prompt is None and out.true_cfg_scale is not None and out.true_cfg_scale > 1.0:
            out.negative_prompt = d.negative_prompt
        return out

    def validate(self, config: ModelConfig) -> GenerationRequest:
        """Resolve defaults and check every field; returns the resolved request (validating that one
        again against the same config returns it as it is: checks and warnings happen once)."""
        if getattr(self, "_validated_for", None) is config:
            return self
        r = self.resolved(config)
        d = config.defaults
        _check_text("prompt", r.prompt, required=True)
        if r.negative_prompt is not None:
            _check_text("negative_prompt", r.negative_prompt, required=False)
        _check_int("height", r.height, 16, d.max_height, multiple=16)
        _check_int("width", r.width, 16, d.max_width, multiple=16)
        _check_frames(r.num_frames, d.max_num_frames, getattr(d, "frame_step", config.vae.temporal_compression_ratio),
                      getattr(d, "min_num_frames", 1))
        _check_int("num_inference_steps", r.num_inference_steps, 1, d.max_num_inference_steps)
        _check_float("embedded_guidance_scale", r.embedded_guidance_scale, 0.0, MAX_GUIDANCE)
        _check_float("flow_shift", r.flow_shift, 0.0, MAX_FLOW_SHIFT, low_open=True)
        _check_float("true_cfg_scale", r.true_cfg_scale, 1.0, MAX_GUIDANCE)
        _check_int("seed", r.seed, 0, MAX_SEED)
        if r.prompt_policy not in PROMPT_POLICIES:
            raise InvalidRequestError("prompt_policy", r.prompt_policy, f"one of {list(PROMPT_POLICIES)}")
        if r.output_format not in OUTPUT_FORMATS:
            raise InvalidRequestError("output_format", r.output_format, f"one of {list(OUTPUT_FORMATS)}")
        r.step_cache.validate(d.max_num_inference_steps, getattr(config, "family", "hunyuan_video"))
        if r.sparse_window is not None:
            parse_window(r.sparse_window)
        if r.sparse_steps is not None:
            parse_steps(r.sparse_steps, r.num_inference_steps)
        family_rules = getattr(config, "check_request", None)  # a family's own rules (CogVideoX)
        if not isinstance(r.use_dynamic_cfg, bool) or (r.use_dynamic_cfg and family_rules is None):
            raise InvalidRequestError("use_dynamic_cfg", r.use_dynamic_cfg, "false (true only for CogVideoX models)")
        if not hasattr(config, "sparse_attention"):  # a family without a sliding-tile schedule (CogVideoX)
            for name in ("sparse_window", "sparse_steps"):
                if getattr(r, name) is not None:
                    raise InvalidRequestError(name, getattr(r, name), f"none for {config.name} (sliding-tile "
                                              "attention is HunyuanVideo's, so far)")
        if family_rules is not None:
            family_rules(r)
        if r.negative_prompt is not None and not r.do_true_cfg:
            logger.warning("negative_prompt is ignored: true_cfg_scale is %g, and only true CFG (true_cfg_scale > 1, "
                           "two DiT calls per step) uses it", r.true_cfg_scale)
        r._validated_for = config  # not a field: copies and equality ignore it
        return r

    @property
    def do_true_cfg(self) -> bool:
        return self.true_cfg_scale is not None and self.true_cfg_scale > 1.0

    @property
    def step_cache(self) -> StepCacheParams:
        """The step cache fields as one value (of a resolved request)."""
        return StepCacheParams(self.cache_policy, self.cache_threshold, self.cache_warmup_steps)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int, high: int, multiple: int = 1) -> None:
    accepted = f"an integer in [{low}, {high}]" + (f" that is a multiple of {multiple}" if multiple > 1 else "")
    if not _is_int(value) or not low <= value <= high or value % multiple:
        raise InvalidRequestError(name, value, accepted)


def _check_frames(value: object, max_frames: int, ratio: int, min_frames: int = 1) -> None:
    lo = min_frames
    examples = f"{lo}, {lo + ratio}, {lo + 2 * ratio}, ..., {max_frames}"
    accepted = f"{ratio}k + 1 frames in [{lo}, {max_frames}] (e.g. {examples})"
    if not _is_int(value) or not lo <= value <= max_frames or (value - 1) % ratio:
        raise InvalidRequestError("num_frames", value, accepted)


def _check_float(name: str, value: object, low: float, high: float, low_open: bool = False) -> None:
    bracket = "(" if low_open else "["
    accepted = f"a finite number in {bracket}{low:g}, {high:g}]"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise InvalidRequestError(name, value, accepted)


def _check_text(name: str, value: object, required: bool) -> None:
    if not isinstance(value, str):
        raise InvalidRequestError(name, value, "a string")
    if required and not value.strip():
        raise InvalidRequestError(name, value, "a non-empty string")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequestError(name, f"<{len(value)} characters>", f"at most {MAX_PROMPT_CHARS} characters")
    if "\x00" in value:
        raise InvalidRequestError(name, value, "text without NUL characters")


def embedded_guidance(embedded_guidance_scale: float | None, guidance_scale: float | None) -> float | None:
    """The one guidance name is ``embedded_guidance_scale`` (HunyuanVideo's: the DiT embeds it); callers
    that take keyword arguments also accept diffusers' spelling ``guidance_scale`` for it. Both given and
    different: InvalidRequestError."""
    if guidance_scale is None:
        return embedded_guidance_scale
    if embedded_guidance_scale is not None and embedded_guidance_scale != guidance_scale:
        raise InvalidRequestError(
            "guidance_scale", guidance_scale,
            f"diffusers' name for embedded_guidance_scale, which is {embedded_guidance_scale!r}: give one of them",
        )
    return guidance_scale
