"""``--precision fp8`` for the torch engine: the DiT with FP8 GEMMs (:mod:`vidtrt.models.fp8_linear`) and
FP8 attention (the ``triton-fp8`` backends), everything else bf16.

CUDA needs compute capability 8.9+ (Ada, Hopper: FP8 tensor cores and ``torch._scaled_mm``). On CPU the
same model runs with the GEMMs emulated at the same rounding points (slow, exact: what tests use) and
SDPA attention unless another backend is named.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vidtrt.errors import ConfigError
from vidtrt.models.fp8_linear import Fp8LinearConfig, swap_linears_to_fp8
from vidtrt.source.model_source import ModelSource

FP8_MIN_CAPABILITY = (8, 9)


def check_fp8_device(dev: torch.device) -> None:
    """ConfigError (one line) if ``dev`` is a CUDA device without FP8 tensor cores."""
    if dev.type == "cuda":
        cap = torch.cuda.get_device_capability(dev)
        if cap < FP8_MIN_CAPABILITY:
            raise ConfigError(f"precision 'fp8' needs a GPU with compute capability 8.9+ (Ada, Hopper); "
                              f"{torch.cuda.get_device_name(dev)} is {cap[0]}.{cap[1]}; accepted here: "
                              "--precision bf16")


def fp8_default_attention(dev: torch.device, head_dim: int) -> str:
    """The attention backend ``--precision fp8`` runs when none is named: FP8 attention on CUDA
    (``triton-fp8-tma`` on Hopper, else ``triton-fp8``; ``triton`` for a head dim FP8 attention does not
    take), ``sdpa`` elsewhere."""
    if dev.type != "cuda":
        return "sdpa"
    from vidtrt.kernels.attention_fp8 import FP8_HEAD_DIMS

    if head_dim not in FP8_HEAD_DIMS:
        return "triton"
    return "triton-fp8-tma" if torch.cuda.get_device_capability(dev) >= (9, 0) else "triton-fp8"


def load_fp8_transformer(source: ModelSource, device: str | torch.device = "cpu",
                         amax: Mapping[str, torch.Tensor] | None = None,
                         config: Fp8LinearConfig | None = None) -> torch.nn.Module:
    """The DiT of ``source`` on ``device``: bf16 modules, the token-wise Linear layers as FP8.

    The bf16 weights are read where the checkpoint loader puts them (memory-mapped on the host), each
    Linear quantized on ``device`` one at a time (never a second copy of the weights), then the rest
    moves to ``device``. ``amax``: a quantization state's amax map (static input scales; see
    :func:`vidtrt.models.fp8_linear.swap_linears_to_fp8`); None: dynamic per-token scales. ``config``
    default: the family's layer set (``ModelFamily.fp8_keep_bf16``), dynamic per-token activations.
    """
    dev = torch.device(device)
    module = source.load_transformer(torch.bfloat16)
    config = config or Fp8LinearConfig(keep_bf16=tuple(source.family.load("fp8_keep_bf16")))
    swap_linears_to_fp8(module, amax, config, device=dev)
    return module.to(dev).eval()
