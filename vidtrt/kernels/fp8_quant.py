"""FP8 (e4m3) quantization of GEMM activations in one pass: the input side of the FP8 linear layers.

``quantize_rows_fp8(x)``: per-row (per-token) absmax scales, ``scale[m] = max(amax_m, 1e-12) / 448``,
``x8[m, k] = e4m3(clamp(x[m, k] / scale[m], +-448))``; ``quantize_rows_fp8(x, scale=s)``: one static
per-tensor scale ``s`` (a float32 0-d tensor) for every row. Division is IEEE round-to-nearest
(``div_rn``) and the conversion rounds to nearest even, so the result equals the torch reference
(:func:`vidtrt.models.fp8_linear.quantize_fp8` with the same scale) bit for bit, on the GPU and in the
interpreter (which rounds through :func:`round_to_e4m3` first). The torch reference reads x several
times and writes fp32 temporaries; this kernel reads it once per pass (two passes for dynamic
scales, the second mostly from L2) and writes one byte per element.
"""

from __future__ import annotations

import torch

from ._common import FP8_DTYPE, check_device, check_float_tensor, interpreter_active, round_to_e4m3, tl, triton

MIN_AMAX = 1e-12  # a zero row gets a positive scale (its values quantize to 0)

if hasattr(tl.math, "div_rn"):

    @triton.jit
    def _div_rn(x, y):
        return tl.math.div_rn(x, y)  # IEEE division, as torch's

else:  # pragma: no cover - a Triton without div_rn: its fp32 division (within 2 ulp)

    @triton.jit
    def _div_rn(x, y):
        return x / y

__all__ = ["MIN_AMAX", "quantize_rows_fp8"]


@triton.jit
def _quant_rows_kernel(
    X,  # [M, K], row stride stride_xm, unit column stride
    XO,  # fp8 [M, K] contiguous
    SCALE,  # float32 [M] (dynamic: written) or [1] (static: read)
    num_cols,
    stride_xm,
    BLOCK_K: tl.constexpr,
    STATIC: tl.constexpr,
    EXACT_FP8: tl.constexpr = False,  # interpreter: round in fp32 first (see round_to_e4m3)
):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_xm
    o_row = XO + row * num_cols
    if STATIC:
        scale = tl.load(SCALE)
    else:
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, num_cols, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_row + offs, mask=offs < num_cols, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = _div_rn(tl.maximum(tl.max(amax, axis=0), 1e-12), 448.0)
        tl.store(SCALE + row, scale)
    for k0 in range(0, num_cols, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        ok = offs < num_cols
        x = tl.load(x_row + offs, mask=ok, other=0.0).to(tl.float32)
        y = tl.minimum(tl.maximum(_div_rn(x, scale), -448.0), 448.0)
        if EXACT_FP8:
            r = round_to_e4m3(y)
            y = tl.where(r == 0.0, y * 0.0, r)  # keep the sign of zero, as the hardware conversion does
        tl.store(o_row + offs, y.to(XO.dtype.element_ty), mask=ok)


def quantize_rows_fp8(
    x: torch.Tensor, scale: torch.Tensor | None = None, block_k: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the rows of a 2-D activation to float8_e4m3fn.

    Args:
        x: [M, K] bf16 / fp16 / fp32, CUDA (or CPU under ``TRITON_INTERPRET=1``), unit column stride.
        scale: None for per-row dynamic scales, else the static per-tensor scale: float32, 1 element,
            on x's device (values are clamped to +-448 after dividing: saturation, not overflow).
        block_k: columns per loop iteration (a power of 2).
    Returns:
        (x8 float8_e4m3fn [M, K] contiguous, scale float32: [M, 1] dynamic, or ``scale`` as given).
    Raises:
        TypeError / ValueError (one line) for a wrong dtype, rank, device or layout.
    """
    check_float_tensor("x", x, ndim=2)
    check_device("x", x)
    if x.stride(1) != 1:
        raise ValueError(f"x must have unit column stride, got strides {tuple(x.stride())}")
    m, k = x.shape
    x8 = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    if scale is None:
        out_scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    else:
        if scale.dtype != torch.float32 or scale.numel() != 1 or scale.device != x.device:
            raise ValueError(f"scale must be one float32 element on {x.device}, got {scale.dtype} "
                             f"{tuple(scale.shape)} on {scale.device}")
        out_scale = scale
    if m == 0:
        return x8, out_scale
    block = min(block_k, triton.next_power_of_2(k))
    _quant_rows_kernel[(m,)](x, x8, out_scale, k, x.stride(0), BLOCK_K=block, STATIC=scale is not None,
                             EXACT_FP8=interpreter_active(), num_warps=4)  # fmt: skip
    return x8, out_scale

