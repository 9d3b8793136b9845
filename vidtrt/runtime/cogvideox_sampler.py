"""CogVideoX's sampling loop: the family's ``sampler`` (:class:`vidtrt.config.families.ModelFamily`).

    encode prompt (+ negative prompt) -> seeded noise [1, F', C, h, w] -> N x (one batched DiT pass over
    [uncond; cond] (CFG, scale optionally dynamic), DDIM / DPM step) -> latents [1, C, F, h, w]

Same signature and the same cancellation / deadline / progress / NaN rules as the HunyuanVideo loop
(:func:`vidtrt.runtime.orchestrator.denoise`), so :func:`~vidtrt.runtime.orchestrator.run_generation` and the
tiled decode are shared. As diffusers' ``CogVideoXPipeline``: one CPU generator seeded with the request's seed
draws the initial latents and then the DPM solver's noise; CogVideoX1.5 samples
``patch_size_t``-padded latent frames and drops the leading extra ones before decoding. The CFG scale is the
request's ``true_cfg_scale`` (CFG is on when it is > 1, diffusers' ``guidance_scale``).
"""

from __future__ import annotations

import time

import torch

from vidtrt.config.components import Components, TextEmbeddings
from vidtrt.config.lifecycle import Deadline
from vidtrt.config.request import GenerationRequest
from vidtrt.errors import NonFiniteError
from vidtrt.runtime.cogvideox_scheduler import CogVideoXSampler, dynamic_cfg_scale
from vidtrt.runtime.orchestrator import (
    _OVERFLOW_HINT,
    CancelCheck,
    ProgressCallback,
    ProgressEvent,
    _encode_negative,
    check_cancel,
)


def _batch(a: TextEmbeddings, b: TextEmbeddings) -> TextEmbeddings:
    return TextEmbeddings(prompt_embeds=torch.cat([a.prompt_embeds, b.prompt_embeds]),
                          attention_mask=torch.cat([a.attention_mask, b.attention_mask]),
                          pooled=torch.cat([a.pooled, b.pooled]))


def denoise(
    request: GenerationRequest,
    config,
    components: Components,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    start_time: float | None = None,
    deadline: Deadline | None = None,
) -> torch.Tensor:
    """Text encoding and the denoising loop for a validated request: final latents float32 [1, C, T', h, w]
    (``config``: a :class:`~vidtrt.config.cogvideox_config.CogVideoXModelConfig`). The DiT component takes
    latents [B, F', C, h, w] (diffusers' layout), timesteps [B] and the text embeddings."""
    r = request
    start = time.perf_counter() if start_time is None else start_time
    check_cancel(should_cancel, deadline, "before text encoding")
    text = components.encode_text([r.prompt], r.prompt_policy)
    cfg = r.do_true_cfg
    if cfg:
        text = _batch(_encode_negative(components, r, config.defaults.negative_prompt), text)

    frames, extra = config.latent_frames(r.num_frames)
    s = config.vae.spatial_compression_ratio
    generator = torch.Generator(device="cpu").manual_seed(r.seed)
    latents = torch.randn((1, frames, config.latent_channels, r.height // s, r.width // s), generator=generator,
                          dtype=torch.float32)
    sampler = CogVideoXSampler(config.scheduler, r.num_inference_steps)
    unused = torch.zeros(2 if cfg else 1, dtype=torch.float32)  # the Denoiser protocol's guidance slot

    total = r.num_inference_steps
    for i, t in enumerate(sampler.timesteps):
        check_cancel(should_cancel, deadline, f"before step {i + 1} of {total}")
        model_in = torch.cat([latents, latents]) if cfg else latents
        v = components.dit(model_in, t.expand(model_in.shape[0]), text, unused).float()
        if cfg:
            scale = r.true_cfg_scale
            if r.use_dynamic_cfg:
                scale = dynamic_cfg_scale(scale, int(t), total)
            uncond, cond = v.chunk(2)
            v = uncond + scale * (cond - uncond)
        latents = sampler.step(v, i, latents, generator)
        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteError(f"the DiT produced NaN/inf at denoising step {i + 1} of {total}{_OVERFLOW_HINT}")
        if progress is not None:
            progress(ProgressEvent(step=i + 1, total=total, elapsed_s=time.perf_counter() - start,
                                   dit_calls=1, dit_calls_skipped=0))  # CFG batched: one call per step
    return latents[:, extra:].permute(0, 2, 1, 3, 4).contiguous()
