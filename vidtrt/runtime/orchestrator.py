"""The generation program, written once; both transports drive it.

    validate request -> encode text -> seeded noise -> N x (DiT velocity, Euler step)
                     -> tiled VAE decode -> uint8 frames [F, H, W, 3]

The three components arrive as callables (:class:`vidtrt.config.components.Components`): engines in
process, BLS requests inside Triton. Nothing here knows which.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from vidtrt.config.components import Components, TextEmbeddings
from vidtrt.config.model_config import ModelConfig
from vidtrt.config.request import GenerationRequest
from vidtrt.errors import CancelledError, InvalidRequestError, NonFiniteError
from vidtrt.runtime.scheduler import euler_step, flow_match_sigmas, initial_noise, timesteps_from_sigmas
from vidtrt.video_io import to_uint8_frames


@dataclass(frozen=True)
class ProgressEvent:
    """One finished denoising step: ``step`` is 1-based, ``elapsed_s`` counts from the request's start."""

    step: int
    total: int
    elapsed_s: float


ProgressCallback = Callable[[ProgressEvent], None]


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


def denoise(
    request: GenerationRequest,
    config: ModelConfig,
    components: Components,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    start_time: float | None = None,
) -> torch.Tensor:
    """Text encoding and the denoising loop for a validated request: final latents float32 [1, C, T', h, w]."""
    r = request
    start = time.perf_counter() if start_time is None else start_time
    if should_cancel is not None and should_cancel():  # e.g. cancelled while queued behind other requests
        raise CancelledError("generation cancelled before text encoding")
    text = components.encode_text([r.prompt], r.prompt_policy)
    negative: TextEmbeddings | None = None
    if r.do_true_cfg:
        negative = _encode_negative(components, r, config.defaults.negative_prompt)

    latents = initial_noise(config.latent_shape(1, r.num_frames, r.height, r.width), r.seed)
    sigmas = flow_match_sigmas(r.num_inference_steps, r.flow_shift)
    timesteps = timesteps_from_sigmas(sigmas)
    guidance = torch.tensor([r.embedded_guidance_scale], dtype=torch.float32) * 1000.0

    total = r.num_inference_steps
    for i in range(total):
        if should_cancel is not None and should_cancel():
            raise CancelledError(f"generation cancelled before step {i + 1} of {total}")
        t = timesteps[i].expand(1)
        velocity = components.dit(latents, t, text, guidance)
        if negative is not None:
            uncond = components.dit(latents, t, negative, guidance)
            velocity = uncond + r.true_cfg_scale * (velocity - uncond)
        latents = euler_step(latents, velocity, sigmas[i], sigmas[i + 1])
        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteError(f"the DiT produced NaN/inf at denoising step {i + 1} of {total}{_OVERFLOW_HINT}")
        if progress is not None:
            progress(ProgressEvent(step=i + 1, total=total, elapsed_s=time.perf_counter() - start))
    return latents


def decode_latents(latents: torch.Tensor, config: ModelConfig, components: Components) -> np.ndarray:
    """Final latents [1, C, T', h, w] -> uint8 frames [F, H, W, 3] through the tiled decode."""
    from vidtrt.config.tiling import decode

    video = decode(latents / config.vae.scaling_factor, components.decode_tile, config.vae, config.tiling)
    if not bool(torch.isfinite(video).all()):
        raise NonFiniteError(f"the VAE decoder produced NaN/inf pixels{_OVERFLOW_HINT}")
    return to_uint8_frames(video)


def run_generation(
    request: GenerationRequest,
    config: ModelConfig,
    components: Components,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Run one request end to end.

    Returns uint8 frames [num_frames, height, width, 3]. Raises
    :class:`~vidtrt.errors.InvalidRequestError` before any work for a bad request, and
    :class:`~vidtrt.errors.CancelledError` when ``should_cancel()`` turns true (checked before every
    step and before the decode), :class:`~vidtrt.errors.NonFiniteError` as soon as the latents (after
    any step) or the decoded video hold NaN/inf, instead of an all-black video.
    """
    start = time.perf_counter()
    r = request.validate(config)
    with torch.inference_mode():
        latents = denoise(r, config, components, progress, should_cancel, start)
        if should_cancel is not None and should_cancel():
            raise CancelledError("generation cancelled before the VAE decode")
        return decode_latents(latents, config, components)
