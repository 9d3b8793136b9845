"""CogVideoX's sampling loop: the family's ``sampler`` (:class:`vidtrt.config.families.ModelFamily`).

    encode prompt (+ negative prompt) -> seeded noise [1, F', C, h, w] -> N x (one batched DiT pass over
    [uncond; cond] (CFG, scale optionally dynamic), DDIM / DPM step) -> latents [1, C, F, h, w]

Same signature and the same cancellation / deadline / progress / NaN rules as the HunyuanVideo loop
(:func:`vidtrt.runtime.orchestrator.denoise`) and the same step cache (:mod:`vidtrt.runtime.step_cache`), so
:func:`~vidtrt.runtime.orchestrator.run_generation` and the tiled decode are shared. As diffusers'
``CogVideoXPipeline``: one CPU generator seeded with the request's seed draws the initial latents and then the
DPM solver's noise; CogVideoX1.5 samples ``patch_size_t``-padded latent frames and drops the leading extra
ones before decoding. The CFG scale is the request's ``true_cfg_scale`` (CFG is on when it is > 1, diffusers'
``guidance_scale``).

Step caching: the batched CFG call is one decision (1 DiT call or 0 per step). EasyCache is defined for
flow-matching models, whose DiT maps x = (1 - s) x0 + s eps to the velocity eps - x0. CogVideoX's DiT is a
v-prediction model on the variance-preserving path x_t = a x0 + b eps (a = sqrt(alpha_bar_t), b =
sqrt(1 - alpha_bar_t)), v = a eps - b x0; the same point in flow-matching terms is x_t / (a + b) with
s = b / (a + b), and its velocity is eps - x0 = (a + b) v + (b - a) x_t (the sampler's ``flow_input`` /
``flow_velocity`` / ``model_output``). The cache sees that pair (input
x_t / (a + b), output eps - x0), so its transformation and change estimates mean what they mean for
HunyuanVideo; a reused step's flow velocity is mapped back to v for the DDIM / DPM step. A step that calls
the DiT hands the sampler the DiT's own (guided) v, so policy none and threshold 0 are bit-identical to the
uncached loop. The DPM solver's state follows: its previous x0 is the one of the v the step used (computed
or reused), and every step draws its Gaussian noise from the generator whether or not it called the DiT,
so the noise stream of a cached run is the uncached run's.

TeaCache (``cache_policy teacache``) decides from ``components.probe``, the relative change of the DiT's
timestep embedding between consecutive steps (:mod:`vidtrt.models.cogvideox_probe`, one probe row for the
batched CFG pair), rescaled by the coefficients of the DiT's variant
(:func:`vidtrt.config.step_cache.teacache_variant`); the reuse is the same flow-space transformation.
"""

from __future__ import annotations

import time

import torch

from vidtrt.config.components import Components, TextEmbeddings
from vidtrt.config.lifecycle import Deadline
from vidtrt.config.request import GenerationRequest
from vidtrt.config.step_cache import teacache_variant
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
from vidtrt.runtime.step_cache import make_step_cache, require_probe


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
    require_probe(r.step_cache, components.probe)  # teacache without a served probe: refused before any work
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
    probe = None
    if components.probe is not None:
        timesteps, probe_fn = sampler.timesteps, components.probe

        def probe(step: int, _latents, prev_step: int, _prev) -> float:  # the timestep embedding's change only
            rel = probe_fn(_latents, timesteps[step].reshape(1), _prev, timesteps[prev_step].reshape(1), None, None)
            return float(rel.reshape(-1)[0])

    cache = make_step_cache(r.step_cache, total, probe, teacache_variant(config))
    for i, t in enumerate(sampler.timesteps):
        check_cancel(should_cancel, deadline, f"before step {i + 1} of {total}")
        computed: list[torch.Tensor] = []

        def flow_velocity(i=i, latents=latents, t=t, computed=computed) -> torch.Tensor:
            model_in = torch.cat([latents, latents]) if cfg else latents
            v = components.dit(model_in, t.expand(model_in.shape[0]), text, unused).float()
            if cfg:
                scale = r.true_cfg_scale
                if r.use_dynamic_cfg:
                    scale = dynamic_cfg_scale(scale, int(t), total)
                uncond, cond = v.chunk(2)
                v = uncond + scale * (cond - uncond)
            computed.append(v)
            return sampler.flow_velocity(v, i, latents)

        flow, called = cache.velocity(i, sampler.flow_input(i, latents), flow_velocity)
        v = computed[0] if called else sampler.model_output(flow, i, latents)
        latents = sampler.step(v, i, latents, generator)
        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteError(f"the DiT produced NaN/inf at denoising step {i + 1} of {total}{_OVERFLOW_HINT}")
        if progress is not None:  # CFG batched: one DiT call per step
            progress(ProgressEvent(step=i + 1, total=total, elapsed_s=time.perf_counter() - start,
                                   dit_calls=int(called), dit_calls_skipped=int(not called)))
    return latents[:, extra:].permute(0, 2, 1, 3, 4).contiguous()
