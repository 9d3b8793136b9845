"""In-process HunyuanVideo generation: the orchestrator driven by engines held in this process."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidtrt.config.components import Components, TextEmbeddings
from vidtrt.config.model_config import ModelConfig
from vidtrt.config.request import GenerationRequest, embedded_guidance
from vidtrt.errors import ConfigError
from vidtrt.runtime.orchestrator import ProgressCallback, run_generation
from vidtrt.source.model_source import ModelSource


@dataclass(frozen=True)
class KernelChoice:
    """The DiT kernels one torch engine runs with: an attention backend and whether the fused
    Triton norm+RoPE replaces the PyTorch one. Applied per call (thread-local), so pipelines on
    different devices in one process do not overwrite each other's choice."""

    attention: str = "sdpa"
    fused_rope: bool = False

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        from vidtrt.models.attention import use_backend
        from vidtrt.models.rope import use_qk_norm_rope_impl

        rope_impl = None
        if self.fused_rope:
            from vidtrt.kernels.rope import qk_norm_rope_fused

            rope_impl = qk_norm_rope_fused
        with use_backend(self.attention), use_qk_norm_rope_impl(rope_impl):
            yield


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this process can use: ConfigError (one line) for an unknown name or a
    CUDA device this build / machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"invalid device {str(device)!r}: accepted 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"invalid device {str(device)!r}: accepted 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: this torch build or machine has no CUDA; accepted here: 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def select_kernels(device: str | torch.device, attention: str | None = None) -> KernelChoice:
    """The DiT's kernels for ``device`` (checked now: an unknown backend or a missing triton fails here).

    CUDA: our Triton-language kernels (fused QK-norm + 3D RoPE, flash attention ``triton`` unless
    ``attention`` names another backend). CPU: the torch path (``sdpa``) unless told otherwise.
    """
    from vidtrt.models.attention import check_backend

    on_cuda = torch.device(device).type == "cuda"
    choice = KernelChoice(check_backend(attention or ("triton" if on_cuda else "sdpa")), fused_rope=on_cuda)
    if on_cuda:
        import vidtrt.kernels.rope  # noqa: F401  (fails here, not at the first step, without triton)
    return choice


def check_run_choices(device: str | torch.device, attention: str | None, head_dim: int) -> KernelChoice:
    """What ``vidtrt run`` checks before any weights load: the device exists here, the attention backend is
    known, installed, runs on that device (our kernels: CUDA, or the Triton interpreter when
    ``TRITON_INTERPRET=1``) and supports the model's ``head_dim``; TMA flavours need Hopper. ConfigError
    (one line) otherwise; the kernel choice when all is well."""
    import os

    from vidtrt.models.attention import KERNEL_BACKENDS

    dev = check_device(device)
    name = attention or ("triton" if dev.type == "cuda" else "sdpa")
    if name in KERNEL_BACKENDS and dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(f"attention backend {name!r} runs on CUDA only (--device cuda); accepted on CPU: 'sdpa'")
    choice = select_kernels(dev, name)
    if name in KERNEL_BACKENDS:
        from vidtrt.kernels.attention import SUPPORTED_HEAD_DIMS
        from vidtrt.kernels.attention_fp8 import FP8_HEAD_DIMS

        dims = FP8_HEAD_DIMS if "fp8" in name else SUPPORTED_HEAD_DIMS
        if head_dim not in dims:
            raise ConfigError(f"attention backend {name!r} does not support this model's head dim {head_dim}; "
                              f"accepted head dims {list(dims)} (or --attention sdpa)")
        if name.endswith("-tma") and dev.type == "cuda" and torch.cuda.get_device_capability(dev) < (9, 0):
            raise ConfigError(f"attention backend {name!r} needs Hopper (sm_90+) TMA; accepted here: "
                              f"{name.removesuffix('-tma')!r}")
    return choice


class TorchDenoiser:
    """The DiT module as a :class:`~vidtrt.config.components.Denoiser` (inputs cast to the module's dtype).

    ``kernels``: the attention backend / norm+RoPE this engine runs with (None: the process-wide
    defaults of ``vidtrt.models.attention`` and ``vidtrt.models.rope``).
    """

    def __init__(
        self, module: torch.nn.Module, device: str | torch.device = "cpu", kernels: KernelChoice | None = None
    ):
        self.module = module
        self.device = torch.device(device)
        self.dtype = next(module.parameters()).dtype
        self.kernels = kernels

    @torch.inference_mode()
    def __call__(self, latents, timestep, text: TextEmbeddings, guidance) -> torch.Tensor:
        d, dt = self.device, self.dtype
        with self.kernels.active() if self.kernels is not None else contextlib.nullcontext():
            out = self.module(
                latents.to(d, dt),
                timestep.to(d, torch.float32),  # as diffusers: the sinusoid sees the exact 1000 * sigma, not bf16
                text.prompt_embeds.to(d, dt),
                text.attention_mask.to(d),
                text.pooled.to(d, dt),
                guidance.to(d, dt),
            )
        return out.to("cpu", torch.float32)


class TorchTileDecoder:
    """The VAE decoder module as a :class:`~vidtrt.config.components.DecodeTile`."""

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "cpu"):
        self.module = module
        self.device = torch.device(device)
        self.dtype = next(module.parameters()).dtype

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return self.module(latents.to(self.device, self.dtype)).to("cpu", torch.float32)


def torch_denoiser(source: ModelSource, device="cpu", dtype=torch.float32, attention: str | None = None
                   ) -> TorchDenoiser:
    """The DiT of ``source`` on ``device`` in ``dtype`` as a Denoiser (``attention``: see select_kernels)."""
    kernels = select_kernels(device, attention)
    return source.family.load("torch_denoiser")(source.load_transformer(dtype).to(device), device, kernels)


def torch_tile_decoder(source: ModelSource, device="cpu", dtype=torch.float32) -> TorchTileDecoder:
    """The VAE decoder of ``source`` on ``device`` in ``dtype`` as a DecodeTile."""
    return TorchTileDecoder(source.load_vae_decoder(dtype).to(device), device)


def torch_text_encoder(source: ModelSource, device="cpu", dtype=torch.float32):
    """The text encoder of ``source`` (an EncodeText; it runs on CPU: ``device`` is accepted for symmetry)."""
    return source.load_text_encoder(dtype)


def load_components(model: str | Path | ModelSource = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32,
                    attention: str | None = None) -> tuple[ModelConfig, Components]:
    """Config and the three torch-engine components of a model ('tiny', a folder or a ModelSource).
    ``device`` and ``attention`` are checked before any weight loads (:func:`check_run_choices`)."""
    source = ModelSource.open(model)
    check_run_choices(device, attention, source.config.transformer.attention_head_dim)
    components = Components(
        encode_text=torch_text_encoder(source, device, dtype),
        dit=torch_denoiser(source, device, dtype, attention),
        decode_tile=torch_tile_decoder(source, device, dtype),
    )
    return source.config, components


class HunyuanVideoPipeline:
    """Text -> video in this process.

    >>> pipe = HunyuanVideoPipeline.from_model("tiny")
    >>> frames = pipe.generate("a cat walks on the grass", seed=1)   # uint8 [F, H, W, 3]
    """

    def __init__(self, config: ModelConfig, components: Components):
        self.config = config
        self.components = components

    @classmethod
    def from_model(cls, model: str | Path | ModelSource = "tiny", device: str = "cpu", dtype=torch.float32,
                   attention: str | None = None):
        """The torch-engine pipeline of ``model`` ('tiny', 'small', a checkpoint folder or a ModelSource)."""
        return cls(*load_components(model, device, dtype, attention))

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        embedded_guidance_scale: float | None = None,
        flow_shift: float | None = None,
        seed: int | None = None,
        true_cfg_scale: float | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        prompt_policy: str = "truncate",
        guidance_scale: float | None = None,
    ) -> np.ndarray:
        """uint8 frames [num_frames, height, width, 3]; ``None`` arguments take the model's defaults.

        ``guidance_scale``: diffusers' name for ``embedded_guidance_scale`` (give either)."""
        embedded_guidance_scale = embedded_guidance(embedded_guidance_scale, guidance_scale)
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            embedded_guidance_scale=embedded_guidance_scale,
            flow_shift=flow_shift,
            seed=seed,
            true_cfg_scale=true_cfg_scale,
            prompt_policy=prompt_policy,
        )
        return self.run(request, progress, should_cancel)

    def run(self, request: GenerationRequest, progress=None, should_cancel=None) -> np.ndarray:
        return run_generation(request, self.config, self.components, progress, should_cancel)


def generate(prompt: str, model: str | Path = "tiny", **kwargs) -> np.ndarray:
    """One-shot convenience: load ``model`` and generate (see :meth:`HunyuanVideoPipeline.generate`)."""
    return HunyuanVideoPipeline.from_model(model).generate(prompt, **kwargs)
