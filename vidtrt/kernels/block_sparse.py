"""Block-sparse flash attention (BF16 / FP16 / fp32 and FP8 e4m3) driven by per-query-block key-block lists.

Each program (one query block of one (batch, head)) reads its list from a
:class:`~vidtrt.kernels.sparse_layout.BlockSparseLayout` and visits only those key blocks: first the
ones whose keys are all valid (no mask, the hot loop), then the masked ones (tiles cut by the grid's
edge, whose valid keys end at ``kv_end[block]``, and the text blocks, cut by the sample's key length).
Key blocks not listed cost nothing. The math per visited block is the dense kernels'
(:mod:`vidtrt.kernels.attention`, :mod:`vidtrt.kernels.attention_fp8`): online softmax in fp32,
exp2 with log2(e) folded into the scale; the FP8 kernel uses the same per-block q / k scales, smooth
K, per-channel v and P quantized as fp8(P * 448).

The layout fixes BLOCK_M / BLOCK_N (its blocks are the kernel's tiles), so only warps and stages
are tuned. Argument order: input pointers, int32 scalars, output pointer, constexprs (the AOT
plugin order of the dense kernels).
"""

from __future__ import annotations

import math

import torch

from ._common import FLOAT_DTYPES, FP8_DTYPE, LOG2E, cuda_capability, round_to_e4m3, tl, triton
from .attention import check_attention_inputs, check_key_lengths, check_tma, tma_descriptor
from .attention_fp8 import (
    DEFAULT_QUANT_BLOCK,
    FP8_HEAD_DIMS,
    _channel_scale_view,
    _check_quant_block,
    _token_scale_view,
    quantize_qkv_fp8,
)
from .sparse_layout import BlockSparseLayout, block_sparse_reference

__all__ = ["block_sparse_attention", "block_sparse_attention_fp8", "block_sparse_reference", "check_layout"]


@triton.jit
def _sparse_fwd_kernel(
    Q,
    K,
    V,
    KEY_LENS,  # int32 [B] or None
    KV_IDX,  # int32, (hl, qblock, i) at hl*stride_ih + qblock*stride_iq + i
    KV_CNT,  # int32, (hl, qblock, 0 / 1) at hl*stride_ch + qblock*2
    KV_END,  # int32 [NKB]
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
    stride_ob,
    stride_os,
    stride_oh,
    stride_ih,  # 0 when all heads share one layout
    stride_iq,
    stride_ch,
    Out,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QK_SCALE: tl.constexpr,
    DOT_F32: tl.constexpr,
    KV_DESC: tl.constexpr = False,
    WARP_SPEC: tl.constexpr = False,  # tl.range(warp_specialize=True) on the unmasked loop (Triton >= 3.4)
):
    # last query blocks first: the text rows attend to every block (the longest programs), so they start early
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
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
    idx_base = KV_IDX + h64 * stride_ih + pid_m.to(tl.int64) * stride_iq
    cnt_base = KV_CNT + h64 * stride_ch + pid_m * 2
    n_full = tl.load(cnt_base)
    n_all = tl.load(cnt_base + 1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + b64 * stride_qb + h64 * stride_qh
    if not KV_DESC:
        k_base = K + b64 * stride_kb + h64 * stride_kh
        v_base = V + b64 * stride_vb + h64 * stride_vh
    m_ok = offs_m < seq_q
    q = tl.load(q_base + offs_m.to(tl.int64)[:, None] * stride_qs + offs_d[None, :], mask=m_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # Stage 0: listed blocks whose keys are all valid (no mask). Stage 1: the masked ones.
    for stage in tl.static_range(2):
        if stage == 0:
            lo = 0
            hi = n_full
        else:
            lo = n_full
            hi = n_all
        for i in tl.range(lo, hi, warp_specialize=WARP_SPEC and stage == 0):
            start_n = tl.load(idx_base + i) * BLOCK_N
            if stage == 1:
                n_ok = (start_n + offs_n) < tl.minimum(tl.load(KV_END + start_n // BLOCK_N), kl)
            if KV_DESC:
                k = K.load([b, start_n, h, 0]).reshape(BLOCK_N, HEAD_DIM)
            else:
                rows = (start_n + offs_n).to(tl.int64)
                k_ptrs = k_base + rows[:, None] * stride_ks + offs_d[None, :]
                v_ptrs = v_base + rows[:, None] * stride_vs + offs_d[None, :]
                if stage == 0:
                    k = tl.load(k_ptrs)
                else:
                    k = tl.load(k_ptrs, mask=n_ok[:, None], other=0.0)
            if DOT_F32:
                s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            if stage == 1:
                s = tl.where(n_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1) * QK_SCALE)
            # a fully masked block leaves m at -inf: keep exp2 finite (p = 0 there anyway)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s * QK_SCALE - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if KV_DESC:
                v = V.load([b, start_n, h, 0]).reshape(BLOCK_N, HEAD_DIM)
                if stage == 1:
                    v = tl.where(n_ok[:, None], v, 0.0)
            elif stage == 0:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
            p_lp = p.to(Q.dtype.element_ty)
            if DOT_F32:
                acc = tl.dot(p_lp.to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(p_lp, v, acc)
            m_i = m_new

    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # no key -> zeros
    out = acc / l_i[:, None]
    o_ptrs = Out + b64 * stride_ob + h64 * stride_oh + offs_m.to(tl.int64)[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None])


@triton.jit
def _sparse_fwd_fp8_kernel(
    Q,
    K,
    V,  # fp8, (b, s, h, d) at b*svb + s*svs + h*svh + d*svd
    Q_SCALE,
    K_SCALE,
    V_SCALE,
    KEY_LENS,
    KV_IDX,
    KV_CNT,
    KV_END,
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
    stride_ih,
    stride_iq,
    stride_ch,
    Out,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    Q_QBLOCK: tl.constexpr,
    K_QBLOCK: tl.constexpr,
    QK_SCALE: tl.constexpr,
    EXACT_FP8: tl.constexpr = False,
    KV_DESC: tl.constexpr = False,
    WARP_SPEC: tl.constexpr = False,  # tl.range(warp_specialize=True) on the unmasked loop (Triton >= 3.4)
):
    # last query blocks first: the text rows attend to every block (the longest programs), so they start early
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
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
    idx_base = KV_IDX + h64 * stride_ih + pid_m.to(tl.int64) * stride_iq
    cnt_base = KV_CNT + h64 * stride_ch + pid_m * 2
    n_full = tl.load(cnt_base)
    n_all = tl.load(cnt_base + 1)

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
    for stage in tl.static_range(2):
        if stage == 0:
            lo = 0
            hi = n_full
        else:
            lo = n_full
            hi = n_all
        for i in tl.range(lo, hi, warp_specialize=WARP_SPEC and stage == 0):
            start_n = tl.load(idx_base + i) * BLOCK_N
            if stage == 1:
                n_ok = (start_n + offs_n) < tl.minimum(tl.load(KV_END + start_n // BLOCK_N), kl)
            if KV_DESC:
                k = K.load([b, start_n, h, 0]).reshape(BLOCK_N, HEAD_DIM)
            else:
                rows = (start_n + offs_n).to(tl.int64)
                k_ptrs = k_base + rows[:, None] * stride_ks + offs_d[None, :]
                v_ptrs = v_base + rows[:, None] * stride_vs + offs_d[None, :].to(tl.int64) * stride_vd
                if stage == 0:
                    k = tl.load(k_ptrs)
                else:
                    k = tl.load(k_ptrs, mask=n_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k))
            if stage == 1:
                s = tl.where(n_ok[None, :], s, float("-inf"))
            row_scale = q_sc * tl.load(ks_base + (start_n // K_QBLOCK) * stride_ksn)
            m_new = tl.maximum(m_i, tl.max(s, 1) * row_scale)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s * row_scale[:, None] - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            if KV_DESC:
                v = tl.trans(V.load([b, h, 0, start_n]).reshape(HEAD_DIM, BLOCK_N))
                if stage == 1:
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
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc * (1.0 / 448.0) / l_i[:, None] * v_sc[None, :]
    o_ptrs = Out + b64 * stride_ob + h64 * stride_oh + offs_m.to(tl.int64)[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None])


# ----------------------------------------------------------------------------------------------
# Wrappers
# ----------------------------------------------------------------------------------------------
def check_layout(layout: BlockSparseLayout, seq_q: int, seq_k: int, heads: int, device) -> None:
    """The layout fits q [B, seq_q, heads, D] / k [B, seq_k, ...]; ValueError / TypeError naming the field."""
    if not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout must be a BlockSparseLayout, got {type(layout).__name__}")
    bm, bn = layout.block_m, layout.block_n
    for name, val in (("block_m", bm), ("block_n", bn)):
        if val < 16 or val & (val - 1):
            raise ValueError(f"layout.{name}={val}: accepted a power of two >= 16")
    nqb, nkb = math.ceil(seq_q / bm), math.ceil(seq_k / bn)
    for name, t, shape in (("kv_idx", layout.kv_idx, None), ("kv_cnt", layout.kv_cnt, None),
                           ("kv_end", layout.kv_end, (nkb,))):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or not t.is_contiguous():
            raise TypeError(f"layout.{name} must be a contiguous int32 tensor")
        if t.device != device:
            raise ValueError(f"layout.{name} is on {t.device}, q is on {device}: accepted the same device")
        if shape is not None and tuple(t.shape) != shape:
            raise ValueError(f"layout.{name} has shape {tuple(t.shape)}: accepted {list(shape)}")
    hl = layout.kv_idx.shape[0]
    if layout.kv_idx.ndim != 3 or hl not in (1, heads) or layout.kv_idx.shape[1] != nqb:
        raise ValueError(f"layout.kv_idx has shape {tuple(layout.kv_idx.shape)}: accepted [1 or H={heads}, "
                         f"ceil(S_q / {bm})={nqb}, MAXK]")
    if tuple(layout.kv_cnt.shape) != (hl, nqb, 2):
        raise ValueError(f"layout.kv_cnt has shape {tuple(layout.kv_cnt.shape)}: accepted [{hl}, {nqb}, 2]")


def _layout_args(layout: BlockSparseLayout, heads: int):
    hl = layout.kv_idx.shape[0]
    return (layout.kv_idx.stride(0) if hl == heads and hl > 1 else 0, layout.kv_idx.stride(1),
            layout.kv_cnt.stride(0) if hl == heads and hl > 1 else 0)


def _launch_config(device, num_warps, num_stages) -> tuple[int, int]:
    if device.type != "cuda":
        return num_warps or 4, num_stages or 1
    if cuda_capability(device)[0] >= 9:
        return num_warps or 8, num_stages or 3
    return num_warps or 4, num_stages or 2


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockSparseLayout,
    key_lengths: torch.Tensor | None = None,
    *,
    sm_scale: float | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    tma: bool = False,
) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v over the key blocks ``layout`` lists and each sample's keys < key_lengths[b].

    Args:
        q: [B, S_q, H, D]; k, v: [B, S_k, H, D]; bf16 / fp16 / fp32; D in {16, 32, 64, 128}; last dim contiguous.
        layout: :class:`BlockSparseLayout` (its block sizes are the kernel's; e.g. ``sliding_tile_layout``).
            Listed unmasked blocks must lie below every sample's key length (true for sliding-tile
            layouts: only text blocks are cut by key lengths).
        key_lengths: int [B] or None; tma: K / V by TMA descriptors (Hopper).
    Returns:
        [B, S_q, H, D] in q's dtype; query rows that see no key get zeros.
    """
    check_attention_inputs(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride(-1) == 1), got {t.stride()}")
    bsz, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    check_layout(layout, seq_q, seq_k, heads, q.device)
    kl = check_key_lengths(key_lengths, bsz, q.device)
    scale = (1.0 / math.sqrt(dim)) if sm_scale is None else float(sm_scale)
    if not scale > 0:
        raise ValueError(f"sm_scale={sm_scale!r}: accepted a positive float")
    check_tma(tma, q.device)
    out = torch.empty((bsz, seq_q, heads, dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    bm, bn = layout.block_m, layout.block_n
    kk, vv = k, v
    if tma:
        kk, vv = tma_descriptor("k", k, [1, bn, 1, dim]), tma_descriptor("v", v, [1, bn, 1, dim])
    dot_f32 = q.dtype == torch.float32 or (q.device.type == "cpu" and q.dtype == torch.bfloat16)
    warps, stages = _launch_config(q.device, num_warps, num_stages)
    grid = (triton.cdiv(seq_q, bm), bsz * heads)
    _sparse_fwd_kernel[grid](
        q, kk, vv, kl, layout.kv_idx, layout.kv_cnt, layout.kv_end,
        seq_q, seq_k, heads,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        *_layout_args(layout, heads),
        out,
        HEAD_DIM=dim, BLOCK_M=bm, BLOCK_N=bn, QK_SCALE=scale * LOG2E, DOT_F32=dot_f32, KV_DESC=tma,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def block_sparse_attention_fp8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockSparseLayout,
    key_lengths: torch.Tensor | None = None,
    *,
    q_scale=None,
    k_scale=None,
    v_scale=None,
    quant_block: int = DEFAULT_QUANT_BLOCK,
    smooth_k: bool = True,
    out_dtype: torch.dtype | None = None,
    sm_scale: float | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    tma: bool = False,
) -> torch.Tensor:
    """Block-sparse attention with FP8 e4m3 QK^T and PV products (as ``flash_attention_fp8``: bf16 / fp16 /
    fp32 inputs are quantized here; float8 inputs come with their scales). ``layout.block_n`` must divide
    ``quant_block`` (key blocks never straddle a k-scale block)."""
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
        raise ValueError("FP8 attention needs compute capability >= 8.9 (Ada / Hopper); use 'triton-sta'")
    for name, t in (("q", q8), ("k", k8)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride(-1) == 1), got {t.stride()}")
    bsz, seq_q, heads, dim = q8.shape
    seq_k = k8.shape[1]
    check_layout(layout, seq_q, seq_k, heads, q.device)
    bm, bn = layout.block_m, layout.block_n
    kl = check_key_lengths(key_lengths, bsz, q.device)
    qs, (qsb, qsh, qsn) = _token_scale_view("q_scale", q_scale, bsz, heads, seq_q, quant_block, q.device)
    ks, (ksb, ksh, ksn) = _token_scale_view("k_scale", k_scale, bsz, heads, seq_k, quant_block, q.device)
    vs, (vsb, vsh) = _channel_scale_view("v_scale", v_scale, bsz, heads, dim, q.device)
    if ksn != 0 and quant_block % bn:
        raise ValueError(f"layout.block_n={bn} must divide quant_block={quant_block} (per-block k scales)")
    scale = (1.0 / math.sqrt(dim)) if sm_scale is None else float(sm_scale)
    if not scale > 0:
        raise ValueError(f"sm_scale={sm_scale!r}: accepted a positive float")
    check_tma(tma, q.device)
    out = torch.empty((bsz, seq_q, heads, dim), dtype=out_dtype, device=q.device)
    if out.numel() == 0:
        return out
    kk, vv = k8, v8
    if tma:
        kk = tma_descriptor("k", k8, [1, bn, 1, dim])
        vv = tma_descriptor("v (as its [B, H, D, S] buffer)", v8.permute(0, 2, 3, 1), [1, 1, dim, bn])
    warps, stages = _launch_config(q.device, num_warps, num_stages)
    grid = (triton.cdiv(seq_q, bm), bsz * heads)
    _sparse_fwd_fp8_kernel[grid](
        q8, kk, vv, qs, ks, vs, kl, layout.kv_idx, layout.kv_cnt, layout.kv_end,
        seq_q, seq_k, heads,
        q8.stride(0), q8.stride(1), q8.stride(2),
        k8.stride(0), k8.stride(1), k8.stride(2),
        v8.stride(0), v8.stride(1), v8.stride(2), v8.stride(3),
        qsb, qsh, qsn, ksb, ksh, ksn, vsb, vsh,
        out.stride(0), out.stride(1), out.stride(2),
        *_layout_args(layout, heads),
        out,
        HEAD_DIM=dim, BLOCK_M=bm, BLOCK_N=bn, Q_QBLOCK=quant_block, K_QBLOCK=quant_block,
        QK_SCALE=scale * LOG2E, EXACT_FP8=q.device.type != "cuda", KV_DESC=tma,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out
