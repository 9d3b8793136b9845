"""The generation program, written once; both transports drive it.

    validate request -> encode text -> seeded noise -> N x (DiT velocity, Euler step)
                     -> tiled VAE decode (one call per tile) -> uint8 frames [F, H, W, 3]

The three components arrive as callables (:class:`vidtrt.config.components.Components`): engines in
process, BLS requests inside Triton. Nothing here knows which.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vidtrt.config.components import Components, TextEmbeddings
from vidtrt.config.families import family_of_config
from vidtrt.config.lifecycle import Deadline
from vidtrt.config.model_config import ModelConfig
from vidtrt.config.request import GenerationRequest
from vidtrt.config.sparse_attention import sparse_step, step_schedule
from vidtrt.errors import CancelledError, DeadlineExceededError, InvalidRequestError, NonFiniteError
from vidtrt.runtime.scheduler import euler_step, flow_match_sigmas, initial_noise, timesteps_from_sigmas
from vidtrt.runtime.step_cache import make_step_cache, require_probe
from vidtrt.video_io import to_uint8_frames


@dataclass(frozen=True)
class ProgressEvent:
    """One finished unit of work, ``step`` of ``total`` (1-based); ``elapsed_s`` counts from the request's start.

    ``stage`` says which: ``"denoise"``, a denoising step (one per step, first); ``"decode"``, a VAE tile of
    the tiled decode (one per tile, after the last step; ``total`` = tiles of the whole decode).
    ``dit_calls`` / ``dit_calls_skipped`` (denoising steps only): DiT calls the step made (0 when step caching
    reused its last transformation; 2 with true CFG) and those it saved.
    """

    step: int
    total: int
    elapsed_s: float
    stage: str = "denoise"
    dit_calls: int | None = None
    dit_calls_skipped: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]
# Checked before every step and every tile: truthy = cancel; a string says why (it lands in the message).
CancelCheck = Callable[[], bool | str | None]


_OVERFLOW_HINT = " (fp16 overflow is the usual cause: use precision bf16 or fp32); nothing was written"


def _encode_negative(components: Components, r: GenerationRequest, default: str) -> TextEmbeddings:
    """The negative prompt's embeddings; a rejection of it (too long with prompt_policy 'error')
    names ``negative_prompt``, not ``prompt``, whether the text encoder runs here or remotely. The
    model's ``default`` negative prompt is the model's text, not the caller's: it is truncated to fit
    whatever the policy (the ``tiny`` preset's limit is shorter than HunyuanVideo's default)."""
    policy = "truncate" if r.negative_prompt == default else r.prompt_policy
    try:
        return components.encode_text([r.negative_prompt], policy)
    except InvalidRequestError as e:
        if e.param != "prompt":
            raise
        raise e.renamed("negative_prompt") from None


def check_cancel(should_cancel: CancelCheck | None, deadline: Deadline | None, where: str) -> None:
    """Raise CancelledError if ``should_cancel()`` says so (its string, if any, is the reason), else
    DeadlineExceededError if ``deadline`` passed; ``where`` ends the message (``before step 3 of 50``)."""
    if should_cancel is not None:
        reason = should_cancel()
        if reason:
            detail = f" ({reason})" if isinstance(reason, str) else ""
            raise CancelledError(f"generation cancelled{detail} {where}")
    if deadline is not None and deadline.expired():
        raise DeadlineExceededError(deadline.message(where))


def denoise(
    request: GenerationRequest,
    config: ModelConfig,
    components: Components,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    start_time: float | None = None,
    deadline: Deadline | None = None,
) -> torch.Tensor:
    """Text encoding and the denoising loop for a validated request: final latents float32 [1, C, T', h, w]."""
    r = request
    start = time.perf_counter() if start_time is None else start_time
    check_cancel(should_cancel, deadline, "before text encoding")  # e.g. cancelled while queued
    require_probe(r.step_cache, components.probe)  # teacache without a served DiT probe: refused before any work
    text = components.encode_text([r.prompt], r.prompt_policy)
    negative: TextEmbeddings | None = None
    if r.do_true_cfg:
        negative = _encode_negative(components, r, config.defaults.negative_prompt)

    latents = initial_noise(config.latent_shape(1, r.num_frames, r.height, r.width), r.seed)
    sigmas = flow_match_sigmas(r.num_inference_steps, r.flow_shift)
    timesteps = timesteps_from_sigmas(sigmas)
    guidance = torch.tensor([r.embedded_guidance_scale], dtype=torch.float32) * 1000.0

    total = r.num_inference_steps
    probe = None if components.probe is None else functools.partial(_probe, components.probe, timesteps, text, guidance)
    cache = make_step_cache(r.step_cache, total, probe)  # vidtrt.runtime.step_cache: one decision for both CFG branches
    calls_per_step = 2 if negative is not None else 1
    tc = config.transformer
    sparse_at = step_schedule(config.sparse_attention, tc.num_layers + tc.num_single_layers, r.sparse_window,
                              r.sparse_steps, total)  # used by the STA attention backends only
    for i in range(total):
        check_cancel(should_cancel, deadline, f"before step {i + 1} of {total}")
        t = timesteps[i].expand(1)
        dit = functools.partial(_velocity, components, latents, t, text, negative, guidance, r.true_cfg_scale)
        with sparse_step(sparse_at(i)):
            velocity, called = cache.velocity(i, latents, dit)
        latents = euler_step(latents, velocity, sigmas[i], sigmas[i + 1])
        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteError(f"the DiT produced NaN/inf at denoising step {i + 1} of {total}{_OVERFLOW_HINT}")
        if progress is not None:
            calls = calls_per_step if called else 0
            progress(ProgressEvent(step=i + 1, total=total, elapsed_s=time.perf_counter() - start,
                                   dit_calls=calls, dit_calls_skipped=calls_per_step - calls))
    return latents


def _probe(probe, timesteps: torch.Tensor, text: TextEmbeddings, guidance: torch.Tensor, step: int,
           latents: torch.Tensor, prev_step: int, prev_latents: torch.Tensor) -> float:
    """TeaCache's signal between two steps, from the conditional branch (its pooled text): a Python float."""
    rel = probe(latents, timesteps[step].expand(1), prev_latents, timesteps[prev_step].expand(1), text.pooled, guidance)
    return float(rel.reshape(-1)[0])


def _velocity(components: Components, latents: torch.Tensor, t: torch.Tensor, text: TextEmbeddings,
              negative: TextEmbeddings | None, guidance: torch.Tensor, true_cfg_scale: float) -> torch.Tensor:
    """One step's DiT velocity: the conditional call, and with ``negative`` the unconditional one, combined."""
    velocity = components.dit(latents, t, text, guidance)
    if negative is not None:
        uncond = components.dit(latents, t, negative, guidance)
        velocity = uncond + true_cfg_scale * (velocity - uncond)
    return velocity


def decode_latents(
    latents: torch.Tensor,
    config: ModelConfig,
    components: Components,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    start_time: float | None = None,
    deadline: Deadline | None = None,
) -> np.ndarray:
    """Final latents [1, C, T', h, w] -> uint8 frames [F, H, W, 3] through the tiled decode (diffusers'
    tile plan, :func:`vidtrt.config.tiling.plan_tiles`). Cancellation and the deadline are checked before every
    tile; ``progress`` gets a ``"decode"`` event after every tile."""
    from vidtrt.config.tiling import plan_tiles, tiled_decode

    start = time.perf_counter() if start_time is None else start_time
    z = latents / config.vae.scaling_factor
    plan = plan_tiles(tuple(z.shape), config.vae, config.tiling)
    total = plan.num_tiles
    done = 0

    def decode_tile(tile: torch.Tensor) -> torch.Tensor:
        nonlocal done
        check_cancel(should_cancel, deadline, f"before VAE tile {done + 1} of {total}")
        out = components.decode_tile(tile)
        done += 1
        if progress is not None:
            progress(ProgressEvent(step=done, total=total, elapsed_s=time.perf_counter() - start, stage="decode"))
        return out

    video = tiled_decode(z, decode_tile, plan)
    if not bool(torch.isfinite(video).all()):
        raise NonFiniteError(f"the VAE decoder produced NaN/inf pixels{_OVERFLOW_HINT}")
    return to_uint8_frames(video)


def run_generation(
    request: GenerationRequest,
    config: ModelConfig,
    components: Components,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    deadline: Deadline | None = None,
) -> np.ndarray:
    """Run one request end to end.

    Returns uint8 frames [num_frames, height, width, 3]. ``progress`` gets one event per denoising step,
    then one per VAE tile (:class:`ProgressEvent`, ``stage``). Raises
    :class:`~vidtrt.errors.InvalidRequestError` before any work for a bad request,
    :class:`~vidtrt.errors.CancelledError` when ``should_cancel()`` turns truthy and
    :class:`~vidtrt.errors.DeadlineExceededError` once ``deadline`` passed (both checked before text
    encoding, every step and every VAE tile), :class:`~vidtrt.errors.NonFiniteError` as soon as the
    latents (after any step) or the decoded video hold NaN/inf, instead of an all-black video.
    """
    start = time.perf_counter()
    r = request.validate(config)
    sample = denoise if getattr(config, "family", None) is None else family_of_config(config).load("sampler")
    with torch.inference_mode():
        latents = sample(r, config, components, progress, should_cancel, start, deadline)
        return decode_latents(latents, config, components, progress, should_cancel, start, deadline)
