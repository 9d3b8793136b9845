"""The one attention entry point of the models; faster backends (our kernels) are registered here.

Layout everywhere: q, k, v are [B, S, H, D] (sequence-major, as the projections produce them).
Text padding is expressed as per-sample key lengths (keys at index >= length are ignored), never
as a dense S x S mask.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidtrt.errors import ConfigError

# backend(q, k, v, key_lengths) -> out; key_lengths is an int tensor [B] or None (all keys valid).
AttentionBackend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

_BACKENDS: dict[str, AttentionBackend] = {}
_current = "sdpa"  # the process-wide default (set_backend)
# A per-thread / per-task choice (use_backend) that wins over the default: two pipelines in one
# process (e.g. one on CUDA with the Triton kernels, one on CPU) each run with their own backend.
_scoped: ContextVar[str | None] = ContextVar("vidtrt_attention_backend", default=None)


def register_backend(name: str, fn: AttentionBackend) -> None:
    _BACKENDS[name] = fn


# Backends of vidtrt.kernels.backends, registered here when one is first asked for (needs triton).
KERNEL_BACKENDS = ("triton", "triton-tma", "triton-fp8", "triton-fp8-tma", "triton-sta", "triton-fp8-sta",
                   "triton-sta-tma", "triton-fp8-sta-tma")


def available_backends() -> list[str]:
    return sorted(set(_BACKENDS) | set(KERNEL_BACKENDS))


def check_backend(name: str) -> str:
    """``name`` if it is a usable backend (importing the kernels it needs), else a ConfigError."""
    if name in KERNEL_BACKENDS and name not in _BACKENDS:
        try:
            from vidtrt.kernels.backends import ATTENTION_BACKENDS
        except ImportError as e:
            raise ConfigError(f"attention backend {name!r} needs the triton package ({e})") from None
        for kernel_name, fn in ATTENTION_BACKENDS.items():
            register_backend(kernel_name, fn)
    if name not in _BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; accepted: {available_backends()}")
    return name


def set_backend(name: str) -> None:
    """Select the process-wide default attention backend (a :func:`use_backend` block overrides it)."""
    global _current
    _current = check_backend(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, this thread / task uses backend ``name`` (other threads are unaffected)."""
    token = _scoped.set(check_backend(name))
    try:
        yield
    finally:
        _scoped.reset(token)


def get_backend() -> str:
    """The backend :func:`attention` uses here and now."""
    return _scoped.get() or _current


def _tracing() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def key_length_bias(key_lengths: torch.Tensor, num_keys: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive key-padding bias [B, 1, 1, S_k]: 0 for keys < length, -inf after (O(S), not S x S)."""
    keep = torch.arange(num_keys, device=key_lengths.device)[None, :] < key_lengths[:, None].to(torch.int64)
    zero = torch.zeros((), dtype=dtype, device=key_lengths.device)
    return torch.where(keep, zero, torch.full((), float("-inf"), dtype=dtype, device=key_lengths.device))[
        :, None, None, :
    ]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None) -> torch.Tensor:
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, S, D]
    if key_lengths is None:
        return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
    if _tracing():
        # Graph capture (ONNX export, torch.compile): no host sync on lengths; a per-key bias, exact
        # because every sample has at least one valid key (the image tokens).
        bias = key_length_bias(key_lengths, k.shape[1], q.dtype)
        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias).transpose(1, 2)
    lengths = key_lengths.tolist()
    s_k = k.shape[1]
    if all(n == s_k for n in lengths):
        return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
    # Exact varlen semantics without a mask tensor: each sample attends over its own valid keys.
    outs = [
        F.scaled_dot_product_attention(qt[b : b + 1], kt[b : b + 1, :, :n], vt[b : b + 1, :, :n])
        for b, n in enumerate(lengths)
    ]
    return torch.cat(outs, dim=0).transpose(1, 2)


register_backend("sdpa", _sdpa)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention, non-causal, scale 1/sqrt(D).

    Args:
        q, k, v: [B, S, H, D] (same S for q and k/v here: self-attention over the joint sequence).
        key_lengths: int [B]; sample b attends only to keys [0, key_lengths[b]). None = all keys.
    Returns:
        [B, S, H, D] in q's dtype.
    """
    return _BACKENDS[get_backend()](q, k, v, key_lengths)


# Names of the quantizers an FP8 attention carries (ModelOpt's MHA quantization: the BMM inputs).
ATTENTION_QUANTIZERS = ("q_quantizer", "k_quantizer", "v_quantizer", "softmax_quantizer")


def quantized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None,
                        q_quantizer: Callable, k_quantizer: Callable, v_quantizer: Callable,
                        softmax_quantizer: Callable) -> torch.Tensor:
    """Attention with fake-quantized BMM inputs, in float32, written out (no fused kernel):
    ``S = Q8 K8^T / sqrt(D) (+ key bias)``, ``P = softmax(S)``, ``O = P8 V8`` where ``X8`` is a
    quantizer's output. Shapes and key lengths as :func:`attention`; returns q's dtype."""
    dtype = q.dtype
    qt, kt, vt = (x.transpose(1, 2).to(torch.float32) for x in (q, k, v))  # [B, H, S, D]
    qt, kt, vt = q_quantizer(qt), k_quantizer(kt), v_quantizer(vt)
    scores = torch.matmul(qt, kt.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if key_lengths is not None:
        scores = scores + key_length_bias(key_lengths, k.shape[1], scores.dtype)
    probs = softmax_quantizer(torch.softmax(scores, dim=-1))
    return torch.matmul(probs, vt).transpose(1, 2).to(dtype)


# An override of quantized_attention (same arguments) for this thread / task: the FP8 Q/DQ export's plugin
# flavour replaces the written-out attention by one FP8 attention plugin node (vidtrt.kernels.onnx_plugins).
_quantized_impl: ContextVar[Callable | None] = ContextVar("vidtrt_quantized_attention", default=None)


@contextlib.contextmanager
def use_quantized_attention_impl(fn: Callable | None) -> Iterator[None]:
    """Within the block, quantized attention (quantizers attached) runs ``fn`` instead of
    :func:`quantized_attention` (None: the default)."""
    token = _quantized_impl.set(fn)
    try:
        yield
    finally:
        _quantized_impl.reset(token)


class QuantizableAttention(nn.Module):
    """Base of the modules that run attention: :meth:`attend` is :func:`attention`, unless q / k / v /
    softmax quantizers (:data:`ATTENTION_QUANTIZERS`) are attached as child modules (FP8 fake quant,
    ``vidtrt.models.fp8``, or ModelOpt's calibration), then :func:`quantized_attention`. Without them
    (or with all of them disabled, ModelOpt's ``is_enabled``) the output is exactly the plain one."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None,
               plain: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """``plain(q, k, v, key_lengths=...)`` (default :func:`attention`) runs unquantized attention (the DiT
        passes its sequence-parallel wrapper)."""
        quantizers = [getattr(self, name, None) for name in ATTENTION_QUANTIZERS]
        if any(qz is None for qz in quantizers) or not any(getattr(qz, "is_enabled", True) for qz in quantizers):
            return attention(q, k, v, key_lengths) if plain is None else plain(q, k, v, key_lengths=key_lengths)
        return (_quantized_impl.get() or quantized_attention)(q, k, v, key_lengths, *quantizers)
