"""FP8 (e4m3) flash-attention forward, in the spirit of FlashAttention-3 FP8 and SageAttention2.

Quantization (``quantize_qkv_fp8``):
  * q, k: per (batch, head, block of ``quant_block`` tokens) absmax scales, optional "smooth K"
    (subtract the per-channel mean of k over tokens first: softmax is invariant to adding the same
    vector to every key, and the mean is what makes k's channels hard to quantize);
  * v: per (batch, head, channel) absmax over tokens (the scale factors out of the PV sum), stored
    transposed ([B, H, D, S16], tokens contiguous, rows padded to 16 tokens) because Hopper's FP8
    wgmma wants the reduction dimension contiguous for both operands, and 16-byte aligned rows let
    the key-block loop copy V with 16-byte async copies (checked in the sm_90a SASS);
  * P = exp2(...) in [0, 1] is quantized as fp8(P * 448) for the PV product (static scale).
Kernel: S = (q8 k8^T) * q_scale[row] * k_scale[block] * sm_scale, online softmax in fp32,
acc += (P8 V8) per key block, O = acc / (448 l) * v_scale[channel]. Accumulation: within each
product the tensor cores' own (on Hopper an e8m13 "FP22" accumulator, not fp32: modelled by
``reference.sm90_fp8_matmul``); across key blocks fp32 registers (two-level accumulation, as in
SageAttention2: each block's P8 V8 starts from zero and is added to ``acc`` in fp32, checked in the
TTGIR). On an H200 this moves O by ~1e-2 of max |O| against fp32 accumulation throughout, with the
same accuracy against exact attention (cosine and max error unchanged to 1e-5 in the emulation).

Callers holding FP8 tensors already (e.g. ``fused_qk_norm_rope(..., fp8_scale=...)`` output)
pass them with their scales to ``flash_attention_fp8``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import (
    FLOAT_DTYPES,
    FP8_DTYPE,
    FP8_MAX,
    LOG2E,
    check_device,
    check_float_tensor,
    cuda_capability,
    next_power_of_2,
    round_to_e4m3,
    tl,
    triton,
)
from .attention import _autotuned, check_attention_inputs, check_key_lengths, check_tma, tma_descriptor
from .reference import attention_fp8_emulation, quantize_per_block_reference, quantize_per_channel_reference

FP8_HEAD_DIMS = (64, 128)  # the QK^T product has K = D: FP8 tensor cores need K >= 32

__all__ = [
    "Fp8QKV",
    "attention_fp8_emulation",
    "flash_attention_fp8",
    "quantize_per_block",
    "quantize_per_block_reference",
    "quantize_per_channel_reference",
    "quantize_qkv_fp8",
    "quantize_v_per_channel",
]

DEFAULT_QUANT_BLOCK = 128


# ----------------------------------------------------------------------------------------------
# Quantization kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _quant_per_block_kernel(
    X,
    MEAN,  # float32 [B, H, D] subtracted first ("smooth K") or None
    seq_len,
    num_heads,
    num_blocks,
    stride_xb,
    stride_xs,
    stride_xh,
    XO,  # fp8 [B, S, H, D] contiguous
    SCALE,  # float32 [B, H, num_blocks]
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    EXACT_FP8: tl.constexpr = False,  # interpreter: round in fp32 first (see round_to_e4m3)
):
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    offs_s = pid_blk * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = (offs_s < seq_len)[:, None]
    s64 = offs_s.to(tl.int64)[:, None]
    x = tl.load(X + b * stride_xb + h * stride_xh + s64 * stride_xs + offs_d[None, :], mask=ok, other=0.0)
    x = x.to(tl.float32)
    if MEAN is not None:
        mean = tl.load(MEAN + (b * num_heads + h) * HEAD_DIM + offs_d)
        x = tl.where(ok, x - mean[None, :], 0.0)
    amax = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
    scale = tl.maximum(amax, 1e-12) / 448.0
    y = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
    if EXACT_FP8:
        y = round_to_e4m3(y)
    out_off = ((b * seq_len + s64) * num_heads + h) * HEAD_DIM + offs_d[None, :]
    tl.store(XO + out_off, y.to(XO.dtype.element_ty), mask=ok)
    tl.store(SCALE + (b * num_heads + h) * num_blocks + pid_blk, scale)


@triton.jit
def _quant_v_kernel(
    V,
    V_SCALE,  # float32 [B, H, D]
    seq_len,
    num_heads,
    seq_pad,
    stride_vb,
    stride_vs,
    stride_vh,
    VO,  # fp8 [B, H, D, seq_pad] (tokens contiguous)
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
    EXACT_FP8: tl.constexpr = False,
):
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = (offs_s < seq_len)[:, None]
    s64 = offs_s.to(tl.int64)[:, None]
    v = tl.load(V + b * stride_vb + h * stride_vh + s64 * stride_vs + offs_d[None, :], mask=ok, other=0.0)
    sc = tl.load(V_SCALE + (b * num_heads + h) * HEAD_DIM + offs_d)
    y = tl.minimum(tl.maximum(v.to(tl.float32) / sc[None, :], -448.0), 448.0)
    if EXACT_FP8:
        y = round_to_e4m3(y)
    out_off = ((b * num_heads + h) * HEAD_DIM + offs_d[None, :]).to(tl.int64) * seq_pad + s64
    tl.store(VO + out_off, y.to(VO.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------------------------
# FP8 attention kernel
# ----------------------------------------------------------------------------------------------
@triton.jit
def _attn_fwd_fp8_kernel(
    # inputs
    Q,  # fp8 [B, Sq, H, D] (strided)
    K,  # fp8 [B, Sk, H, D] (strided)
    V,  # fp8, element (b, s, h, d) at b*svb + s*svs + h*svh + d*svd
    Q_SCALE,  # float32, (b, h, block) at b*sqsb + h*sqsh + block*sqsn
    K_SCALE,
    V_SCALE,  # float32, (b, h, d) at b*svsb + h*svsh + d
    KEY_LENS,  # int32 [B] or None
    # int32 scalars
    seq_q,
    seq_k,
    num_heads,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_vd,
    stride_qsb,
    stride_qsh,
    stride_qsn,
    stride_ksb,
    stride_ksh,
    stride_ksn,
    stride_vsb,
    stride_vsh,
    stride_ob,
    stride_os,
    stride_oh,
    # outputs
    Out,
    # constexprs
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    Q_QBLOCK: tl.constexpr,  # tokens per q scale
    K_QBLOCK: tl.constexpr,  # tokens per k scale (a multiple of BLOCK_N)
    QK_SCALE: tl.constexpr,  # softmax scale * log2(e)
    EXACT_FP8: tl.constexpr = False,  # interpreter: round P in fp32 first (see round_to_e4m3)
    KV_DESC: tl.constexpr = False,  # K: TMA descriptor [B, S, H, D]; V: over the transposed [B, H, D, S] buffer
    WARP_SPEC: tl.constexpr = False,  # tl.range(warp_specialize=True) on the unmasked loop (Triton >= 3.4)
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    if KEY_LENS is not None:
        kl = tl.load(KEY_LENS + b)
        kl = tl.minimum(tl.maximum(kl, 0), seq_k)
    else:
        kl = seq_k

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < seq_q
    q = tl.load(
        Q + b64 * stride_qb + h64 * stride_qh + offs_m.to(tl.int64)[:, None] * stride_qs + offs_d[None, :],
        mask=m_ok[:, None],
        other=0.0,
    )
    q_sc = tl.load(
        Q_SCALE + b64 * stride_qsb + h64 * stride_qsh + (offs_m // Q_QBLOCK) * stride_qsn, mask=m_ok, other=1.0
    )
    q_sc = q_sc * QK_SCALE
    if not KV_DESC:
        k_base = K + b64 * stride_kb + h64 * stride_kh
        v_base = V + b64 * stride_vb + h64 * stride_vh
    ks_base = K_SCALE + b64 * stride_ksb + h64 * stride_ksh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_full = (kl // BLOCK_N) * BLOCK_N
    for stage in tl.static_range(2):
        if stage == 0:
            lo = 0
            hi = n_full
        else:
            lo = n_full
            hi = kl
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WARP_SPEC and stage == 0):
            if stage == 1:
                n_ok = (start_n + offs_n) < kl
            if KV_DESC:  # bulk tensor copies; rows past S_k arrive as zeros, rows past kl are masked below
                k = K.load([b, start_n, h, 0]).reshape(BLOCK_N, HEAD_DIM)
            else:
                rows = (start_n + offs_n).to(tl.int64)
                k_ptrs = k_base + rows[:, None] * stride_ks + offs_d[None, :]
                v_ptrs = v_base + rows[:, None] * stride_vs + offs_d[None, :].to(tl.int64) * stride_vd
                if stage == 0:
                    k = tl.load(k_ptrs)
                else:
                    k = tl.load(k_ptrs, mask=n_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k))  # fp8 x fp8 -> fp32
            if stage == 1:
                s = tl.where(n_ok[None, :], s, float("-inf"))
            row_scale = q_sc * tl.load(ks_base + (start_n // K_QBLOCK) * stride_ksn)
            m_new = tl.maximum(m_i, tl.max(s, 1) * row_scale)
            p = tl.math.exp2(s * row_scale[:, None] - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            if KV_DESC:
                v = tl.trans(V.load([b, h, 0, start_n]).reshape(HEAD_DIM, BLOCK_N))
                if stage == 1:  # keys in [kl, S_k) hold data: P is 0 there, but 0 * NaN would be NaN
                    v = tl.where(n_ok[:, None], v, 0.0)
            elif stage == 0:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
            p_q = p * 448.0
            if EXACT_FP8:
                p_q = round_to_e4m3(p_q)
            p8 = p_q.to(Q.dtype.element_ty)
            acc = acc * alpha[:, None] + tl.dot(p8, v)
            m_i = m_new

    v_sc = tl.load(V_SCALE + b64 * stride_vsb + h64 * stride_vsh + offs_d)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # key length 0 -> zeros
    out = acc * (1.0 / 448.0) / l_i[:, None] * v_sc[None, :]
    o_ptrs = Out + b64 * stride_ob + h64 * stride_oh + offs_m.to(tl.int64)[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None])


# ----------------------------------------------------------------------------------------------
# Wrappers
# ----------------------------------------------------------------------------------------------
class Fp8QKV(NamedTuple):
    """FP8 attention operands: q8/k8/v8 [B, S, H, D] float8_e4m3fn views (v8 is a transposed
    [B, H, D, S16] buffer seen as [B, S, H, D]); q_scale/k_scale float32 [B, H, ceil(S / quant_block)];
    v_scale float32 [B, H, D]; x ~= x8 * scale."""

    q8: torch.Tensor
    k8: torch.Tensor
    v8: torch.Tensor
    q_scale: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    quant_block: int


def _check_quant_block(quant_block: int) -> None:
    if isinstance(quant_block, bool) or not isinstance(quant_block, int) or quant_block < 16:
        raise ValueError(f"quant_block={quant_block!r}: accepted a power of two >= 16")
    if quant_block & (quant_block - 1):
        raise ValueError(f"quant_block={quant_block!r}: accepted a power of two >= 16")


def quantize_per_block(
    x: torch.Tensor, quant_block: int = DEFAULT_QUANT_BLOCK, smooth: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, S, H, D] -> (x8 fp8 [B, S, H, D] contiguous, scale float32 [B, H, ceil(S / quant_block)]).

    smooth=True subtracts the per-(batch, head) channel mean over tokens first (use for k only).
    """
    check_float_tensor("x", x, ndim=4)
    _check_quant_block(quant_block)
    if x.stride(-1) != 1:
        raise ValueError(f"x must have a contiguous last dimension (stride(-1) == 1), got {x.stride()}")
    check_device("x", x)
    bsz, seq, heads, dim = x.shape
    nb = triton.cdiv(seq, quant_block)
    x8 = torch.empty((bsz, seq, heads, dim), dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((bsz, heads, nb), dtype=torch.float32, device=x.device)
    if x8.numel() == 0:
        return x8, scale
    mean = x.float().mean(dim=1).contiguous() if smooth else None
    _quant_per_block_kernel[(nb, bsz * heads)](
        x, mean, seq, heads, nb, x.stride(0), x.stride(1), x.stride(2), x8, scale,
        HEAD_DIM=dim, BLOCK=quant_block, EXACT_FP8=x.device.type != "cuda", num_warps=4,
    )  # fmt: skip
    return x8, scale


def quantize_v_per_channel(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v [B, S, H, D] -> (v8, scale float32 [B, H, D]); v8 is a [B, S, H, D] view of a
    [B, H, D, S_pad] fp8 buffer (tokens contiguous, rows padded to 16 bytes)."""
    check_float_tensor("v", v, ndim=4)
    if v.stride(-1) != 1:
        raise ValueError(f"v must have a contiguous last dimension (stride(-1) == 1), got {v.stride()}")
    check_device("v", v)
    bsz, seq, heads, dim = v.shape
    seq_pad = max(16, triton.cdiv(seq, 16) * 16)
    buf = torch.zeros((bsz, heads, dim, seq_pad), dtype=FP8_DTYPE, device=v.device)
    scale = (v.abs().amax(dim=1).float().clamp_min(1e-12) / FP8_MAX).contiguous() if seq else None
    if scale is None:
        scale = torch.ones((bsz, heads, dim), dtype=torch.float32, device=v.device)
    if v.numel():
        block_s = 128 if v.device.type == "cuda" else min(256, next_power_of_2(seq))
        _quant_v_kernel[(triton.cdiv(seq, block_s), bsz * heads)](
            v, scale, seq, heads, seq_pad, v.stride(0), v.stride(1), v.stride(2), buf,
            HEAD_DIM=dim, BLOCK_S=block_s, EXACT_FP8=v.device.type != "cuda", num_warps=4,
        )  # fmt: skip
    return buf[..., :seq].permute(0, 3, 1, 2), scale


def quantize_qkv_fp8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    quant_block: int = DEFAULT_QUANT_BLOCK,
    smooth_k: bool = True,
) -> Fp8QKV:
    """Quantize attention inputs for ``flash_attention_fp8`` (see the module docstring)."""
    check_attention_inputs(q, k, v, head_dims=FP8_HEAD_DIMS)
    _check_quant_block(quant_block)
    q8, qs = quantize_per_block(q, quant_block)
    k8, ks = quantize_per_block(k, quant_block, smooth=smooth_k)
    v8, vs = quantize_v_per_channel(v)
    return Fp8QKV(q8, k8, v8, qs, ks, vs, quant_block)


def _scale_tensor(name: str, scale, device) -> torch.Tensor:
    """A user-given scale (positive float or float32 tensor on q's device) as a float32 tensor."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a float32 tensor, got {type(scale).__name__}")
    if not isinstance(scale, torch.Tensor):
        if not scale > 0:
            raise ValueError(f"{name}={scale!r}: accepted a positive number")
        scale = torch.tensor(float(scale), dtype=torch.float32, device=device)
    if scale.dtype != torch.float32:
        raise TypeError(f"{name} has dtype {scale.dtype}: accepted torch.float32")
    if scale.device != device:
        raise ValueError(f"{name} is on {scale.device}, q is on {device}: accepted the same device")
    return scale


def _token_scale_view(name: str, scale, bsz: int, heads: int, seq: int, quant_block: int, device):
    """-> (tensor, (stride_b, stride_h, stride_block)) for [], [H], [B, H] or [B, H, NB] scales."""
    scale = _scale_tensor(name, scale, device)
    nb = triton.cdiv(seq, quant_block)
    shape = tuple(scale.shape)
    if shape in ((), (1,)):
        return scale.reshape(1), (0, 0, 0)
    if shape == (heads,):
        return scale.contiguous(), (0, 1, 0)
    if shape == (bsz, heads):
        scale = scale.contiguous()
        return scale, (heads, 1, 0)
    if shape == (bsz, heads, nb):
        scale = scale.contiguous()
        return scale, (heads * nb, nb, 1)
    raise ValueError(
        f"{name} has shape {shape}: accepted [], [H={heads}], [B={bsz}, H] or [B, H, ceil(S/{quant_block})={nb}]"
    )


def _channel_scale_view(name: str, scale, bsz: int, heads: int, dim: int, device):
    scale = _scale_tensor(name, scale, device)
    shape = tuple(scale.shape)
    if shape in ((), (1,)):
        return scale.reshape(1).expand(dim).contiguous(), (0, 0)
    if shape == (heads,):
        return scale.view(heads, 1).expand(heads, dim).contiguous(), (0, dim)
    if shape == (bsz, heads):
        return scale.view(bsz, heads, 1).expand(bsz, heads, dim).contiguous(), (heads * dim, dim)
    if shape == (bsz, heads, dim):
        return scale.contiguous(), (heads * dim, dim)
    raise ValueError(f"{name} has shape {shape}: accepted [], [H={heads}], [B={bsz}, H] or [B, H, D={dim}]")


def flash_attention_fp8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor | None = None,
    *,
    q_scale=None,
    k_scale=None,
    v_scale=None,
    quant_block: int = DEFAULT_QUANT_BLOCK,
    smooth_k: bool = True,
    out_dtype: torch.dtype | None = None,
    sm_scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    tma: bool = False,
    warp_specialize: bool = False,
) -> torch.Tensor:
    """Attention with FP8 e4m3 QK^T and PV products (fp32 softmax and accumulation).

    Two ways in:
      * q, k, v in bf16 / fp16 / fp32: quantized here (``quantize_qkv_fp8``: per-block q/k scales
        of ``quant_block`` tokens, smooth K, per-channel v); output in q's dtype.
      * q, k, v already float8_e4m3fn with q_scale, k_scale ([], [H], [B, H] or
        [B, H, ceil(S / quant_block)] float32) and v_scale ([], [H], [B, H] or [B, H, D]) such that
        x ~= x8 * scale; output in out_dtype (default bf16). v8 may be any strided [B, S, H, D] view
        (fastest: tokens contiguous, as ``quantize_v_per_channel`` makes it).
    key_lengths, sm_scale and the block arguments as in ``flash_attention``; block_n must divide
    quant_block when k has per-block scales. ``tma=True``: K and V through TMA descriptors (Hopper);
    v8 must then have tokens contiguous with 16-byte aligned rows (``quantize_v_per_channel``'s layout).
    ``warp_specialize``: as in ``flash_attention`` (no effect on Hopper with Triton 3.6-3.9).
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    _check_quant_block(quant_block)
    if q.dtype == FP8_DTYPE:
        check_attention_inputs(q, k, v, dtypes=(FP8_DTYPE,), head_dims=FP8_HEAD_DIMS)
        if q_scale is None or k_scale is None or v_scale is None:
            raise ValueError("float8 q, k, v need q_scale, k_scale and v_scale")
        out_dtype = out_dtype or torch.bfloat16
        q8, k8, v8 = q, k, v
    else:
        check_attention_inputs(q, k, v, head_dims=FP8_HEAD_DIMS)
        if q_scale is not None or k_scale is not None or v_scale is not None:
            raise ValueError("q_scale / k_scale / v_scale are only accepted with float8_e4m3fn q, k, v")
        out_dtype = out_dtype or q.dtype
        q8, k8, v8, q_scale, k_scale, v_scale, _ = quantize_qkv_fp8(q, k, v, quant_block, smooth_k)
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype={out_dtype}: accepted {', '.join(str(d) for d in FLOAT_DTYPES)}")
    if q.device.type == "cuda" and cuda_capability(q.device) < (8, 9):
        raise ValueError(
            f"FP8 attention needs compute capability >= 8.9 (Ada / Hopper), this GPU is "
            f"sm_{''.join(map(str, cuda_capability(q.device)))}; use the 'triton' backend"
        )
    for name, t in (("q", q8), ("k", k8), ("v", v8)):
        if name != "v" and t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride(-1) == 1), got {t.stride()}")
    bsz, seq_q, heads, dim = q8.shape
    seq_k = k8.shape[1]
    kl = check_key_lengths(key_lengths, bsz, q.device)
    qs, (qsb, qsh, qsn) = _token_scale_view("q_scale", q_scale, bsz, heads, seq_q, quant_block, q.device)
    ks, (ksb, ksh, ksn) = _token_scale_view("k_scale", k_scale, bsz, heads, seq_k, quant_block, q.device)
    vs, (vsb, vsh) = _channel_scale_view("v_scale", v_scale, bsz, heads, dim, q.device)
    scale = (1.0 / math.sqrt(dim)) if sm_scale is None else float(sm_scale)
    if not scale > 0:
        raise ValueError(f"sm_scale={sm_scale!r}: accepted a positive float")
    for name, val in (("block_m", block_m), ("block_n", block_n)):
        if val is not None and (val < 16 or val & (val - 1)):
            raise ValueError(f"{name}={val}: accepted a power of two >= 16")
    if block_n is not None and ksn != 0 and quant_block % block_n:
        raise ValueError(f"block_n={block_n} must divide quant_block={quant_block} (per-block k scales)")

    out = torch.empty((bsz, seq_q, heads, dim), dtype=out_dtype, device=q.device)
    if out.numel() == 0:
        return out
    args = (
        q8, k8, v8, qs, ks, vs, kl,
        seq_q, seq_k, heads,
        q8.stride(0), q8.stride(1), q8.stride(2),
        k8.stride(0), k8.stride(1), k8.stride(2),
        v8.stride(0), v8.stride(1), v8.stride(2), v8.stride(3),
        qsb, qsh, qsn, ksb, ksh, ksn, vsb, vsh,
        out.stride(0), out.stride(1), out.stride(2),
        out,
    )  # fmt: skip
    const = {
        "HEAD_DIM": dim,
        "Q_QBLOCK": quant_block,
        "K_QBLOCK": quant_block,
        "QK_SCALE": scale * LOG2E,
        "EXACT_FP8": q.device.type != "cuda",
    }
    check_tma(tma, q.device)
    const["KV_DESC"] = tma
    const["WARP_SPEC"] = bool(warp_specialize)
    forced = block_m is not None or block_n is not None or q.device.type != "cuda"
    small_qblock = quant_block < 128 and ksn != 0  # key blocks must not straddle k-scale blocks
    if forced:
        bm = block_m or (64 if seq_q > 32 else 32 if seq_q > 16 else 16)
        bn = block_n or min(quant_block, 64 if seq_k > 32 else 32 if seq_k > 16 else 16)
        warps, stages = num_warps or 4, num_stages or 2
    else:  # the small-quant-block config, or the descriptors' initial block (the autotuner resets it)
        bm, bn, warps, stages = 128, quant_block if small_qblock else 64, 8, 3
    if tma:  # block shapes set here for a fixed config, by the autotuner's pre-hook otherwise
        args = (q8, tma_descriptor("k", k8, [1, bn, 1, dim]),
                tma_descriptor("v (as its [B, H, D, S] buffer)", v8.permute(0, 2, 3, 1), [1, 1, dim, bn]),
                *args[3:])  # fmt: skip
    if forced or small_qblock:
        grid = (triton.cdiv(seq_q, bm), bsz * heads)
        _attn_fwd_fp8_kernel[grid](*args, **const, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
        return out
    tuned = _autotuned(_attn_fwd_fp8_kernel, cuda_capability(q.device), dim, True)
    grid = lambda meta: (triton.cdiv(seq_q, meta["BLOCK_M"]), bsz * heads)
    tuned[grid](*args, **const)
    return out
