"""FP8 (e4m3) fake quantization of the DiT from calibrated amax values: what an FP8 engine computes,
in float32 torch, exactly as ONNX ``QuantizeLinear`` / ``DequantizeLinear`` define it.

One quantize-dequantize (``fp8_qdq``) is ``y = float(saturate_e4m3(x / s)) * s`` with the scale
``s = amax / 448`` (per tensor, or per channel along ``axis``), rounding to nearest even. The op is
registered as ``vidtrt::fp8_qdq`` so the ONNX exporter can turn every one of them into a standard
Q/DQ pair (``vidtrt.export.onnx_fp8``); in eager mode it is plain torch arithmetic.

:func:`apply_fp8` turns a float DiT into its fake-quant twin in place: every ``nn.Linear`` becomes an
:class:`FP8Linear` (input and weight quantizers, parameters kept, ``state_dict`` unchanged) and every
attention module (:class:`~vidtrt.models.attention.QuantizableAttention`) gets q / k / v / softmax
quantizers, so its attention runs the explicit ``softmax(Q8 K8^T / sqrt(D)) -> P8 @ V8`` path.
Quantizer names are ModelOpt's: ``<linear>.input_quantizer``, ``<linear>.weight_quantizer``,
``<attention>.q_quantizer`` / ``.k_quantizer`` / ``.v_quantizer`` / ``.softmax_quantizer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidtrt.models.attention import ATTENTION_QUANTIZERS, QuantizableAttention

FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn
# Smallest scale: amax at or below ModelOpt's epsilon (2^-24) quantizes with scale 1 as ModelOpt does.
_AMAX_EPS = 1.0 / (1 << 24)
LINEAR_QUANTIZERS = ("input_quantizer", "weight_quantizer")


def fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    """The Q/DQ scale of an amax: float32 ``amax / 448`` (1 where amax <= 2^-24, as ModelOpt); same shape."""
    amax = amax.detach().to(torch.float32)
    return torch.where(amax <= _AMAX_EPS, torch.ones_like(amax), amax / FP8_E4M3_MAX)


def fp8_qdq_reference(x: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Quantize to float8_e4m3fn (saturating, nearest-even) and back, in x's dtype.

    Args:
        x: any float tensor.
        scale: float32, a scalar (per tensor) or [x.shape[axis]] (per channel along ``axis``).
    """
    s = scale.to(torch.float32)
    if s.ndim == 1 and axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    q = (x.to(torch.float32) / s).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.to(torch.float32) * s).to(x.dtype)


@torch.library.custom_op("vidtrt::fp8_qdq", mutates_args=())
def fp8_qdq(x: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    """:func:`fp8_qdq_reference` as one op (``axis`` -1 with a scalar scale = per tensor)."""
    return fp8_qdq_reference(x, scale, None if scale.ndim == 0 else axis)


@fp8_qdq.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("vidtrt::fp8_quantize", mutates_args=())
def fp8_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``saturate_e4m3(x / scale)`` as float8_e4m3fn (per-tensor ``scale``): the quantize half of
    :func:`fp8_qdq`, for graphs that hand FP8 tensors to a kernel (ONNX: one ``QuantizeLinear``)."""
    return (x.to(torch.float32) / scale.to(torch.float32)).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


@fp8_quantize.register_fake
def _(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.float8_e4m3fn)


class FP8Quantizer(nn.Module):
    """One fake quantizer: ``amax`` (float32 scalar, or [C] per channel along ``axis``) as a
    non-persistent buffer, so the owning module's ``state_dict`` is the checkpoint's."""

    def __init__(self, amax: torch.Tensor, axis: int | None = None):
        super().__init__()
        amax = torch.as_tensor(amax, dtype=torch.float32).detach().clone()
        if amax.ndim > 1:
            amax = amax.reshape(-1) if amax.numel() > 1 else amax.reshape(())
        if amax.ndim == 1 and amax.numel() == 1:
            amax = amax.reshape(())
        if amax.ndim == 1 and axis is None:
            raise ValueError("a per-channel amax needs an axis")
        self.axis = axis if amax.ndim == 1 else None
        self.register_buffer("amax", amax, persistent=False)
        self.register_buffer("scale", fp8_scale(amax), persistent=False)
        self.enabled = True

    @property
    def is_enabled(self) -> bool:
        return self.enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        axis = -1 if self.axis is None else self.axis
        return fp8_qdq(x, self.scale.to(x.device), axis)

    def extra_repr(self) -> str:
        per = "per tensor" if self.amax.ndim == 0 else f"per channel [{self.amax.numel()}] along axis {self.axis}"
        return f"fp8 e4m3, {per}, enabled={self.enabled}"


class FP8Linear(nn.Linear):
    """``nn.Linear`` with FP8 Q/DQ on its input (per tensor) and weight (per tensor or per output
    channel): ``linear(qdq(x), qdq(W), b)``, bias in full precision. Parameters as ``nn.Linear``."""

    input_quantizer: FP8Quantizer
    weight_quantizer: FP8Quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


@contextlib.contextmanager
def fp8_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every FP8Quantizer of ``model`` passes its input through: the model computes
    exactly what it did before :func:`apply_fp8` (one model serves as its own unquantized reference)."""
    quantizers = [m for m in model.modules() if isinstance(m, FP8Quantizer)]
    before = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield model
    finally:
        for q, was in zip(quantizers, before, strict=True):
            q.enabled = was


def quantizer_names(model: nn.Module, attention: bool = True) -> list[str]:
    """Every quantizer :func:`apply_fp8` attaches to ``model``, as ``<module path>.<quantizer>``
    (``attention=False``: the Linear layers' only)."""
    names = []
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear):
            names += [f"{path}.{q}" for q in LINEAR_QUANTIZERS]
        elif isinstance(module, QuantizableAttention) and attention:
            names += [f"{path}.{q}" for q in ATTENTION_QUANTIZERS]
    return names


def apply_fp8(model: nn.Module, amax: Mapping[str, torch.Tensor]) -> nn.Module:
    """Make ``model`` its FP8 fake-quant twin, in place (see the module docstring); returns it.

    ``amax``: one tensor per name of :func:`quantizer_names` (weight amax may be per output channel:
    [out_features]); attention quantizers all present or all absent (attention left unquantized).
    ValueError naming the first missing or unexpected name.
    """
    attention = any(name.rsplit(".", 1)[-1] in ATTENTION_QUANTIZERS for name in amax)
    wanted = quantizer_names(model, attention)
    missing = [n for n in wanted if n not in amax]
    if missing:
        raise ValueError(f"no amax for quantizer {missing[0]!r} ({len(missing)} of {len(wanted)} missing)")
    extra = sorted(set(amax) - set(wanted))
    if extra:
        raise ValueError(f"amax for {extra[0]!r}, which this model does not have ({len(extra)} unexpected)")
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and not isinstance(module, FP8Linear):
            module.__class__ = FP8Linear
            w = torch.as_tensor(amax[f"{path}.weight_quantizer"])
            device = module.weight.device
            module.input_quantizer = FP8Quantizer(amax[f"{path}.input_quantizer"]).to(device)
            module.weight_quantizer = FP8Quantizer(w, axis=0 if w.numel() > 1 else None).to(device)
        elif isinstance(module, QuantizableAttention) and attention:
            for q in ATTENTION_QUANTIZERS:
                setattr(module, q, FP8Quantizer(amax[f"{path}.{q}"]).to(next(module.parameters()).device))
    return model
