"""In-process CogVideoX generation: the shared orchestrator with CogVideoX's engines and sampling loop.

>>> pipe = CogVideoXPipeline.from_model("tiny-cogvideox")       # or a diffusers CogVideoX folder
>>> frames = pipe.generate("a cat walks on the grass", negative_prompt="blurry", guidance_scale=6.0, seed=1)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vidtrt.config.components import TextEmbeddings
from vidtrt.config.request import GenerationRequest
from vidtrt.errors import ConfigError
from vidtrt.runtime.orchestrator import ProgressCallback
from vidtrt.runtime.pipeline import HunyuanVideoPipeline, KernelChoice
from vidtrt.source.model_source import ModelSource


class CogVideoXTorchDenoiser:
    """The CogVideoX DiT module as a :class:`~vidtrt.config.components.Denoiser`: latents [B, F, C, h, w],
    timesteps [B] (integer DDIM / DPM timesteps), text [B, L, D]; the guidance slot is unused (CFG is
    batched by the sampler). Output float32 on CPU. ``kernels``: attention backend (our Triton kernels serve
    head dim 64); the fused QK-norm + RoPE kernel is HunyuanVideo's RMSNorm flavour and does not apply."""

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "cpu",
                 kernels: KernelChoice | None = None):
        self.module = module
        self.device = torch.device(device)
        self.dtype = next(module.parameters()).dtype
        self.kernels = KernelChoice(kernels.attention, fused_rope=False) if kernels is not None else None

    @torch.inference_mode()
    def __call__(self, latents, timestep, text: TextEmbeddings, guidance=None) -> torch.Tensor:
        d, dt = self.device, self.dtype
        with self.kernels.active() if self.kernels is not None else contextlib.nullcontext():
            out = self.module(latents.to(d, dt), text.prompt_embeds.to(d, dt), timestep.to(d))
        return out.to("cpu", torch.float32)


class CogVideoXPipeline(HunyuanVideoPipeline):
    """Text -> video in this process for a CogVideoX model (``from_model`` / ``run`` as the base class)."""

    @classmethod
    def from_model(cls, model: str | Path | ModelSource = "tiny-cogvideox", device: str = "cpu", dtype=torch.float32,
                   attention: str | None = None, precision: str | None = None, fp8_amax=None):
        """``precision`` ("fp8", "bf16", ...; None: ``dtype``) and ``fp8_amax`` (a quantization state's amax map:
        static FP8 scales) as :meth:`HunyuanVideoPipeline.from_model`."""
        source = ModelSource.open(model)
        if source.family.name != "cogvideox":
            raise ConfigError(f"{source.ref} is a {source.family.name} model; CogVideoXPipeline takes CogVideoX models")
        return super().from_model(source, device, dtype, attention, precision, fp8_amax)

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        use_dynamic_cfg: bool | None = None,
        seed: int | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        prompt_policy: str = "truncate",
        cache_policy: str | None = None,
        cache_threshold: float | None = None,
        cache_warmup_steps: int | None = None,
    ) -> np.ndarray:
        """uint8 frames [num_frames, height, width, 3]; ``None`` takes the model's defaults (guidance 6,
        empty negative prompt). ``guidance_scale``: classifier-free guidance (<= 1: one DiT pass per step).
        ``cache_*``: step caching (:mod:`vidtrt.config.step_cache`; default: the model's, policy none)."""
        request = GenerationRequest(
            prompt=prompt, negative_prompt=negative_prompt, height=height, width=width, num_frames=num_frames,
            num_inference_steps=num_inference_steps, seed=seed, true_cfg_scale=guidance_scale,
            prompt_policy=prompt_policy, use_dynamic_cfg=use_dynamic_cfg, cache_policy=cache_policy,
            cache_threshold=cache_threshold, cache_warmup_steps=cache_warmup_steps,
        )
        return self.run(request, progress, should_cancel)
