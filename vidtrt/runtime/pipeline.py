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


def check_family_choices(source: ModelSource, precision: str | None = None, sp_degree: int = 1) -> None:
    """What only HunyuanVideo's DiT has so far: sequence parallelism (``sp_degree`` > 1; FP8 runs every
    family). ConfigError (one line) for another family, before any weight loads."""
    name = source.family.name
    if name == "hunyuan_video":
        return
    if sp_degree != 1:
        raise ConfigError(f"sequence parallelism runs HunyuanVideo's DiT only, so far (not {name}); accepted "
                          "here: 1 process")


def check_run_choices(device: str | torch.device, attention: str | None, head_dim: int,
                      precision: str | None = None) -> KernelChoice:
    """What ``vidtrt run`` checks before any weights load: the device exists here, the attention backend is
    known, installed, runs on that device (our kernels: CUDA, or the Triton interpreter when
    ``TRITON_INTERPRET=1``) and supports the model's ``head_dim``; TMA flavours need Hopper; precision
    ``fp8`` needs FP8 tensor cores on CUDA and defaults to FP8 attention. ConfigError (one line)
    otherwise; the kernel choice when all is well."""
    import os

    from vidtrt.models.attention import KERNEL_BACKENDS

    dev = check_device(device)
    if precision == "fp8":
        from vidtrt.runtime.fp8_engine import check_fp8_device, fp8_default_attention

        check_fp8_device(dev)
        attention = attention or fp8_default_attention(dev, head_dim)
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


def torch_denoiser(source: ModelSource, device="cpu", dtype=torch.float32, attention: str | None = None,
                   *, sp_degree: int = 1, precision: str | None = None, fp8_amax=None) -> TorchDenoiser:
    """The DiT of ``source`` on ``device`` in ``dtype`` as a Denoiser (``attention``: see select_kernels).

    ``sp_degree`` > 1: over that many processes (:class:`vidtrt.runtime.parallel_dit.ParallelDenoiser`).
    ``precision="fp8"``: bf16 with FP8 GEMMs and FP8 attention (:mod:`vidtrt.runtime.fp8_engine`;
    ``dtype`` is ignored); ``fp8_amax``: a quantization state's amax map (static input scales). The two do
    not combine (ConfigError)."""
    if precision == "fp8":
        from vidtrt.runtime.fp8_engine import load_fp8_transformer

        if sp_degree != 1:
            raise ConfigError(f"precision fp8 runs in one process; sequence parallelism (degree {sp_degree}) "
                              "accepts fp32, bf16 or fp16")
        kernels = check_run_choices(device, attention, source.config.transformer.attention_head_dim, "fp8")
        return source.family.load("torch_denoiser")(load_fp8_transformer(source, device, fp8_amax), device, kernels)
    kernels = select_kernels(device, attention)
    if sp_degree != 1:
        if "sta" in kernels.attention.split("-"):
            raise ConfigError(f"attention {kernels.attention!r} (sliding-tile) does not combine with sequence "
                              "parallelism: use a dense backend with sp_degree > 1")
        if source.family.name != "hunyuan_video":
            raise ConfigError(f"sequence parallelism runs HunyuanVideo's DiT only, so far (not {source.family.name})")
        from vidtrt.runtime.parallel_dit import ParallelDenoiser

        return ParallelDenoiser(source, sp_degree, device, dtype, kernels.attention, fused_rope=kernels.fused_rope)
    return source.family.load("torch_denoiser")(source.load_transformer(dtype).to(device), device, kernels)


def torch_tile_decoder(source: ModelSource, device="cpu", dtype=torch.float32) -> TorchTileDecoder:
    """The VAE decoder of ``source`` on ``device`` in ``dtype`` as a DecodeTile."""
    return TorchTileDecoder(source.load_vae_decoder(dtype).to(device), device)


def torch_text_encoder(source: ModelSource, device="cpu", dtype=torch.float32):
    """The text encoder of ``source`` (an EncodeText; it runs on CPU: ``device`` is accepted for symmetry)."""
    return source.load_text_encoder(dtype)


def load_components(model: str | Path | ModelSource = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32,
                    attention: str | None = None, precision: str | None = None, fp8_amax=None,
                    sp_degree: int = 1) -> tuple[ModelConfig, Components]:
    """Config and the three torch-engine components of a model ('tiny', a folder or a ModelSource).
    ``device``, ``attention``, ``precision`` and ``sp_degree`` (DiT processes) are checked before any weight
    loads (:func:`check_run_choices`). ``precision`` (fp32, bf16, fp16, fp8; None: ``dtype``) wins over
    ``dtype``; fp8: the DiT's GEMMs and attention in FP8 (``fp8_amax``: static scales from a quantization
    state), the rest bf16."""
    from vidtrt.config.model_config import precision_dtype_name, resolve_precision
    from vidtrt.models.sequence_parallel import check_degree

    source = ModelSource.open(model)
    check_family_choices(source, precision, sp_degree)
    if precision is not None:
        precision = resolve_precision(precision, str(device))
        dtype = getattr(torch, precision_dtype_name(precision))
    check_run_choices(device, attention, source.config.transformer.attention_head_dim, precision)
    check_degree(source.config.transformer.num_attention_heads, sp_degree)
    if precision == "fp8" and sp_degree != 1:
        raise ConfigError(f"precision fp8 runs in one process; sequence parallelism (degree {sp_degree}) "
                          "accepts fp32, bf16 or fp16")
    from vidtrt.runtime.dit_probe import probe_of

    dit = torch_denoiser(source, device, dtype, attention, sp_degree=sp_degree, precision=precision, fp8_amax=fp8_amax)
    components = Components(
        encode_text=torch_text_encoder(source, device, dtype),
        dit=dit,
        decode_tile=torch_tile_decoder(source, device, dtype),
        probe=probe_of(dit),  # TeaCache's signal, on the DiT's own weights (None: no probe for this DiT)
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
                   attention: str | None = None, precision: str | None = None, fp8_amax=None,
                   sp_degree: int = 1):
        """The torch-engine pipeline of ``model`` ('tiny', 'small', a checkpoint folder or a ModelSource);
        ``precision`` ("fp8", "bf16", ...; None: ``dtype``), ``fp8_amax``: see :func:`load_components`;
        ``sp_degree`` > 1 runs the DiT over that many processes (call :meth:`close` when done)."""
        return cls(*load_components(model, device, dtype, attention, precision, fp8_amax, sp_degree))

    def close(self) -> None:
        """Stop the DiT's worker processes, if it has any (sequence parallelism)."""
        close = getattr(self.components.dit, "close", None)
        if close is not None:
            close()

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
        cache_policy: str | None = None,
        cache_threshold: float | None = None,
        cache_warmup_steps: int | None = None,
        sparse_window: str | None = None,
        sparse_steps: str | None = None,
    ) -> np.ndarray:
        """uint8 frames [num_frames, height, width, 3]; ``None`` arguments take the model's defaults.

        ``guidance_scale``: diffusers' name for ``embedded_guidance_scale`` (give either). ``cache_*``: step
        caching (:mod:`vidtrt.config.step_cache`); ``progress`` events say per step whether the DiT ran
        (``dit_calls``). ``sparse_window`` / ``sparse_steps``: sliding-tile attention (STA backends), see
        GenerationRequest."""
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
            cache_policy=cache_policy,
            cache_threshold=cache_threshold,
            cache_warmup_steps=cache_warmup_steps,
            sparse_window=sparse_window,
            sparse_steps=sparse_steps,
        )
        return self.run(request, progress, should_cancel)

    def run(self, request: GenerationRequest, progress=None, should_cancel=None) -> np.ndarray:
        return run_generation(request, self.config, self.components, progress, should_cancel)


def generate(prompt: str, model: str | Path = "tiny", **kwargs) -> np.ndarray:
    """One-shot convenience: load ``model`` and generate (see :meth:`HunyuanVideoPipeline.generate`)."""
    return HunyuanVideoPipeline.from_model(model).generate(prompt, **kwargs)
