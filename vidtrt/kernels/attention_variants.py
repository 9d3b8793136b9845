"""Dense attention kernel variants toward FlashAttention-3 on Hopper, one GPU run picks the winner.

The production kernels (``attention.flash_attention``, ``attention_fp8.flash_attention_fp8``) stay as
they are; this module holds variants of them, each a named, fixed configuration (no autotuning: the
GPU check times every variant once at the HunyuanVideo lengths and names the fastest correct one).
``flash_attention_variant(q, k, v, key_lengths, variant=NAME)`` runs one; ``VARIANTS`` lists them;
``docs/attention-kernels.md`` says why each might win and what its sm_90a SASS shows.

What the variants change (constexpr switches of one kernel per dtype, all Triton 3.6-compatible):
  * PERSISTENT: a grid of (#SMs x ``ctas_per_sm``) programs, each looping over (batch, head, q-block)
    tiles, q-block fastest, so programs running together read the same head's K / V (L2 reuse), no
    tail wave and no per-tile launch; the tile loop's bounds are runtime values.
  * PIPELINE: software pipelining by hand of the QK^T product: the scores of key block j + 1 are
    issued before the softmax of block j (FA3's intra-warpgroup overlap, written in the program
    order; whether the compiler keeps the wgmma in flight across the softmax is what the SASS shows).
    The last iteration recomputes the last block's scores instead of branching (1 / (2 n_blocks) more
    QK^T work).
  * POLY_EXP: half of the exp2 of the softmax on the FMA pipe (Cody-Waite split + cubic, relative error
    <= 8.6e-5, FA4's trick): on Hopper the MUFU unit does 16 exp2 / clock / SM, the tensor cores 8 (BF16)
    or 16 (FP8) score elements at head dim 128, so FP8 attention is as exp-bound as it is MMA-bound.
    Columns are split in interleaved pairs, which the wgmma accumulator layout keeps in one thread.
  * ACC_IN_MMA (FP8): P8 V8 accumulates into the running fp32 accumulator inside the wgmma (one
    level) instead of a fresh product added in fp32 (two levels, the production kernel): 64 fewer
    live registers per thread at 128 x 128, but the whole sum then goes through Hopper's FP8
    accumulator (~13-bit mantissa, ``reference.sm90_fp8_matmul``): the GPU check measures the error.
  * block shapes / warps / stages: BLOCK_M 256 on 16 warps (four 64-row warpgroups share each K / V
    tile: half the shared-memory traffic per FLOP), BLOCK_N 128.
FP8 variants read V pre-transposed ([B, H, D, S16], tokens contiguous: what ``quantize_v_per_channel``
writes), the layout Hopper's FP8 wgmma needs for the PV product (K-major B operand).

Key lengths, S off the block grid and key length 0 behave as in the production kernels (tested in
the interpreter against the torch reference for every variant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._common import LOG2E, cuda_capability, round_to_e4m3, tl, triton
from .attention import (
    check_attention_inputs,
    check_key_lengths,
    flash_attention,
    tma_descriptor,
)
from .attention_fp8 import (
    FP8_HEAD_DIMS,
    Fp8QKV,
    flash_attention_fp8,
    quantize_qkv_fp8,
)

__all__ = ["VARIANTS", "Variant", "flash_attention_variant", "variant_backend", "variant_names"]


@dataclass(frozen=True)
class Variant:
    """One named kernel configuration. ``kernel``: "base" runs the production kernel with this fixed
    config (the control), "variant" the kernel of this module."""

    name: str
    fp8: bool
    kernel: str  # "base" | "variant"
    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    tma: bool = True
    persistent: bool = False
    pipeline: bool = False
    poly_exp: bool = False
    acc_in_mma: bool = False
    ctas_per_sm: int = 1  # persistent grid = #SMs x this
    why: str = ""


def _v(name, fp8, kernel="variant", **kw) -> Variant:
    return Variant(name=name, fp8=fp8, kernel=kernel, **kw)


# Ordered by expected value: the GPU check times them in this order and stops at its budget.
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    # BF16
    _v("bf16-base-tma", False, "base", why="production kernel, K / V by TMA (control; 476-505 TFLOP/s on an H200)"),
    _v("bf16-pipe-tma", False, pipeline=True, why="exp2 of block j while QK^T of block j+1 runs"),
    _v("bf16-pipe-poly-tma", False, pipeline=True, poly_exp=True, why="overlap + half the exp2 on the FMA pipe"),
    _v("bf16-persist-pipe-poly-tma", False, persistent=True, pipeline=True, poly_exp=True, why="all three"),
    _v("bf16-bn128-tma", False, "base", block_n=128, num_stages=2, why="128 x 128 tiles (FA3's shape)"),
    _v("bf16-bm256w16-tma", False, block_m=256, num_warps=16, num_stages=2,
       why="four warpgroups share each K / V tile"),
    _v("bf16-poly-tma", False, poly_exp=True, why="half the exp2 on the FMA pipe, no overlap"),
    _v("bf16-persist-tma", False, persistent=True, why="persistent tiles, grid = #SMs"),
    _v("bf16-base", False, "base", tma=False, why="production kernel, tactic 0, 16-byte async copies (control)"),
    # FP8 (V pre-transposed [B, H, D, S16])
    _v("fp8-base-tma", True, "base", why="production FP8 kernel, TMA (control; 630-659 TFLOP/s on an H200)"),
    _v("fp8-pipe-tma", True, pipeline=True, why="exp2 of block j while QK^T of block j+1 runs"),
    _v("fp8-pipe-poly-tma", True, pipeline=True, poly_exp=True, why="overlap + FMA exp2 (FP8 is exp-bound)"),
    _v("fp8-poly-tma", True, poly_exp=True, why="half the exp2 on the FMA pipe (FP8 is exp-bound)"),
    _v("fp8-pipe-accmma-tma", True, pipeline=True, acc_in_mma=True, why="overlap + one-level accumulation"),
    _v("fp8-persist-pipe-tma", True, persistent=True, pipeline=True, why="persistent + overlap"),
    _v("fp8-bn128-poly-tma", True, block_n=128, num_stages=2, poly_exp=True, why="128 x 128 tiles + FMA exp2"),
    _v("fp8-bm256w16-poly-tma", True, block_m=256, num_warps=16, num_stages=2, poly_exp=True,
       why="four warpgroups share each K / V tile"),
    _v("fp8-accmma-tma", True, acc_in_mma=True, why="one-level accumulation: fewer registers"),
)}  # fmt: skip


def variant_names(fp8: bool | None = None) -> list[str]:
    return [n for n, v in VARIANTS.items() if fp8 is None or v.fp8 == fp8]


# ----------------------------------------------------------------------------------------------
# Shared pieces of the kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _exp2_fma(x):
    """2^x for finite x <= 0 on the FMA pipe: x = j + f (j = floor x, f in [0, 1)), 2^f by a cubic
    (relative error <= 8.6e-5, below bf16's and far below e4m3's rounding of P), 2^j added to the
    exponent bits. Inputs below -126 give 2^-126-ish (P is 0 after rounding either way)."""
    x = tl.maximum(x, -126.0)
    j = tl.floor(x)
    f = x - j
    p = f * 0.0770652 + 0.227647  # minimax (relative error) cubic with p(0) = 1: max 8.6e-5
    p = p * f + 0.69511634
    p = p * f + 1.0
    bits = p.to(tl.int32, bitcast=True) + (j.to(tl.int32) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _softmax_exp2(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, POLY_EXP: tl.constexpr):
    """exp2 of a [BLOCK_M, BLOCK_N] score tile; POLY_EXP: odd columns on the FMA pipe (finite x only)."""
    if POLY_EXP:
        a, b = tl.split(tl.reshape(x, [BLOCK_M, BLOCK_N // 2, 2]))
        return tl.reshape(tl.join(tl.math.exp2(a), _exp2_fma(b)), [BLOCK_M, BLOCK_N])
    else:
        return tl.math.exp2(x)


@triton.jit
def _load_k(K, k_base, b, h, start_n, lim, stride_ks, offs_n, offs_d, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
            MASKED: tl.constexpr, KV_DESC: tl.constexpr):
    """Key rows [start_n, start_n + BLOCK_N) as [BLOCK_N, D]; MASKED: rows >= lim read as 0 (pointers)."""
    if KV_DESC:  # rows past S_k arrive as zeros; the caller masks rows past the key length
        return K.load([b, start_n, h, 0]).reshape(BLOCK_N, HEAD_DIM)
    else:
        rows = (start_n + offs_n).to(tl.int64)
        ptrs = k_base + rows[:, None] * stride_ks + offs_d[None, :]
        if MASKED:
            return tl.load(ptrs, mask=(start_n + offs_n < lim)[:, None], other=0.0)
        else:
            return tl.load(ptrs)


@triton.jit
def _tile_order(tile, n_m):
    """(batch * head, q-block) of a persistent tile: q-blocks fastest, so concurrent programs share K / V."""
    return tile // n_m, tile % n_m


# ----------------------------------------------------------------------------------------------
# BF16 / FP16 / FP32 (tests) variant kernel
# ----------------------------------------------------------------------------------------------
@triton.jit
def _bf16_step(q, k, v, acc, m_i, l_i, n_ok, QK_SCALE: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, MASKED: tl.constexpr, POLY_EXP: tl.constexpr):
    """One key block of the online softmax."""
    if DOT_F32:
        s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    if MASKED:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * QK_SCALE)
    x = s * QK_SCALE - m_new[:, None]
    if MASKED:
        p = tl.math.exp2(x)  # -inf entries: MUFU gives exact zeros
    else:
        p = _softmax_exp2(x, BLOCK_M, BLOCK_N, POLY_EXP)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if MASKED:  # keys in [kl, S_k) may hold data (TMA): P is 0 there, but 0 * inf would be NaN
        v = tl.where(n_ok[:, None], v, 0.0)
    p_lp = p.to(k.dtype)  # P rounded to the input precision for the PV product
    if DOT_F32:
        acc = tl.dot(p_lp.to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(p_lp, v, acc)
    return acc, m_new, l_i


@triton.jit
def _bf16_tile(Q, K, V, Out, b, h, pid_m, kl, seq_q, stride_qb, stride_qs, stride_qh, stride_kb, stride_ks,
               stride_kh, stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_SCALE: tl.constexpr,
               DOT_F32: tl.constexpr, KV_DESC: tl.constexpr, PIPELINE: tl.constexpr, POLY_EXP: tl.constexpr):
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < seq_q
    q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + offs_m.to(tl.int64)[:, None] * stride_qs + offs_d[None, :],
                mask=m_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    if KV_DESC:
        k_base = K
        v_base = V
    else:
        k_base = K + b64 * stride_kb + h64 * stride_kh
        v_base = V + b64 * stride_vb + h64 * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_full = (kl // BLOCK_N) * BLOCK_N
    n_ok = offs_n < BLOCK_N  # unmasked blocks: unused
    if PIPELINE:
        k = _load_k(K, k_base, b, h, 0, n_full, stride_ks, offs_n, offs_d, BLOCK_N, HEAD_DIM, True, KV_DESC)
        if DOT_F32:
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        for start_n in tl.range(0, n_full, BLOCK_N):
            # order: rescale (waits for the previous PV), issue the next QK^T, exp2 while it runs, PV
            m_new = tl.maximum(m_i, tl.max(s, 1) * QK_SCALE)
            alpha = tl.math.exp2(m_i - m_new)
            acc = acc * alpha[:, None]
            nxt = tl.minimum(start_n + BLOCK_N, n_full - BLOCK_N)  # last iteration: recompute, unused
            k = _load_k(K, k_base, b, h, nxt, n_full, stride_ks, offs_n, offs_d, BLOCK_N, HEAD_DIM, False, KV_DESC)
            if DOT_F32:
                s_next = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                s_next = tl.dot(q, tl.trans(k))
            p = _softmax_exp2(s * QK_SCALE - m_new[:, None], BLOCK_M, BLOCK_N, POLY_EXP)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _load_k(V, v_base, b, h, start_n, n_full, stride_vs, offs_n, offs_d, BLOCK_N, HEAD_DIM, False, KV_DESC)
            p_lp = p.to(k.dtype)
            if DOT_F32:
                acc = tl.dot(p_lp.to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(p_lp, v, acc)
            m_i = m_new
            s = s_next
    else:
        for start_n in tl.range(0, n_full, BLOCK_N):
            k = _load_k(K, k_base, b, h, start_n, kl, stride_ks, offs_n, offs_d, BLOCK_N, HEAD_DIM, False, KV_DESC)
            v = _load_k(V, v_base, b, h, start_n, kl, stride_vs, offs_n, offs_d, BLOCK_N, HEAD_DIM, False, KV_DESC)
            acc, m_i, l_i = _bf16_step(q, k, v, acc, m_i, l_i, n_ok, QK_SCALE, BLOCK_M, BLOCK_N, DOT_F32, False,
                                       POLY_EXP)
    for start_n in tl.range(n_full, kl, BLOCK_N):  # the last partial key block (at most one), masked
        n_ok = (start_n + offs_n) < kl
        k = _load_k(K, k_base, b, h, start_n, kl, stride_ks, offs_n, offs_d, BLOCK_N, HEAD_DIM, True, KV_DESC)
        v = _load_k(V, v_base, b, h, start_n, kl, stride_vs, offs_n, offs_d, BLOCK_N, HEAD_DIM, True, KV_DESC)
        acc, m_i, l_i = _bf16_step(q, k, v, acc, m_i, l_i, n_ok, QK_SCALE, BLOCK_M, BLOCK_N, DOT_F32, True, POLY_EXP)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # key length 0 -> zeros
    out = acc / l_i[:, None]
    o_ptrs = Out + b64 * stride_ob + h64 * stride_oh + offs_m.to(tl.int64)[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None])


@triton.jit(do_not_specialize=["seq_q", "seq_k", "num_heads", "num_bh"])
def _attn_variant_kernel(
    Q, K, V, KEY_LENS,
    seq_q, seq_k, num_heads, num_bh,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    Out,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_SCALE: tl.constexpr,
    DOT_F32: tl.constexpr, KV_DESC: tl.constexpr, PERSISTENT: tl.constexpr, PIPELINE: tl.constexpr,
    POLY_EXP: tl.constexpr,
):  # fmt: skip
    n_m = tl.cdiv(seq_q, BLOCK_M)
    if PERSISTENT:
        n_tiles = n_m * num_bh
        for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            bh, pid_m = _tile_order(tile, n_m)
            b = bh // num_heads
            h = bh % num_heads
            kl = seq_k
            if KEY_LENS is not None:
                kl = tl.minimum(tl.maximum(tl.load(KEY_LENS + b), 0), seq_k)
            _bf16_tile(Q, K, V, Out, b, h, pid_m, kl, seq_q, stride_qb, stride_qs, stride_qh, stride_kb, stride_ks,
                       stride_kh, stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
                       HEAD_DIM, BLOCK_M, BLOCK_N, QK_SCALE, DOT_F32, KV_DESC, PIPELINE, POLY_EXP)
    else:
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // num_heads
        h = bh % num_heads
        kl = seq_k
        if KEY_LENS is not None:
            kl = tl.minimum(tl.maximum(tl.load(KEY_LENS + b), 0), seq_k)
        _bf16_tile(Q, K, V, Out, b, h, pid_m, kl, seq_q, stride_qb, stride_qs, stride_qh, stride_kb, stride_ks,
                   stride_kh, stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
                   HEAD_DIM, BLOCK_M, BLOCK_N, QK_SCALE, DOT_F32, KV_DESC, PIPELINE, POLY_EXP)


# ----------------------------------------------------------------------------------------------
# FP8 variant kernel (q8, k8 [B, S, H, D] with per-block scales; v8 transposed [B, H, D, S16])
# ----------------------------------------------------------------------------------------------
@triton.jit
def _load_vt(V, v_base, b, h, start_n, lim, stride_vs, stride_vd, offs_n, offs_d, BLOCK_N: tl.constexpr,
             HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, KV_DESC: tl.constexpr):
    """FP8 V rows [start_n, +BLOCK_N) as [BLOCK_N, D] from the transposed buffer (tokens contiguous)."""
    if KV_DESC:
        return tl.trans(V.load([b, h, 0, start_n]).reshape(HEAD_DIM, BLOCK_N))
    else:
        ptrs = v_base + (start_n + offs_n).to(tl.int64)[:, None] * stride_vs + offs_d[None, :].to(tl.int64) * stride_vd
        if MASKED:
            return tl.load(ptrs, mask=(start_n + offs_n < lim)[:, None], other=0.0)
        else:
            return tl.load(ptrs)


@triton.jit
def _fp8_step(q, k, v, acc, m_i, l_i, n_ok, row_scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, POLY_EXP: tl.constexpr, ACC_IN_MMA: tl.constexpr, EXACT_FP8: tl.constexpr):
    s = tl.dot(q, tl.trans(k))  # fp8 x fp8 -> fp32
    if MASKED:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * row_scale)
    x = s * row_scale[:, None] - m_new[:, None]
    if MASKED:
        p = tl.math.exp2(x)
    else:
        p = _softmax_exp2(x, BLOCK_M, BLOCK_N, POLY_EXP)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.where(n_ok[:, None], v, 0.0)
    p_q = p * 448.0
    if EXACT_FP8:
        p_q = round_to_e4m3(p_q)
    p8 = p_q.to(k.dtype)
    if ACC_IN_MMA:
        acc = tl.dot(p8, v, acc * alpha[:, None])
    else:
        acc = acc * alpha[:, None] + tl.dot(p8, v)
    return acc, m_new, l_i


@triton.jit
def _fp8_tile(Q, K, V, Q_SCALE, K_SCALE, V_SCALE, Out, b, h, pid_m, kl, seq_q,
              stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
              stride_vd, stride_qsb, stride_qsh, stride_qsn, stride_ksb, stride_ksh, stride_ksn, stride_vsb,
              stride_vsh, stride_ob, stride_os, stride_oh,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, Q_QBLOCK: tl.constexpr,
              K_QBLOCK: tl.constexpr, QK_SCALE: tl.constexpr, EXACT_FP8: tl.constexpr, KV_DESC: tl.constexpr,
              PIPELINE: tl.constexpr, POLY_EXP: tl.constexpr, ACC_IN_MMA: tl.constexpr):  # fmt: skip
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < seq_q
    q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + offs_m.to(tl.int64)[:, None] * stride_qs + offs_d[None, :],
                mask=m_ok[:, None], other=0.0)
    q_sc = tl.load(Q_SCALE + b64 * stride_qsb + h64 * stride_qsh + (offs_m // Q_QBLOCK) * stride_qsn, mask=m_ok,
                   other=1.0) * QK_SCALE
    if KV_DESC:
        k_base = K
        v_base = V
    else:
        k_base = K + b64 * stride_kb + h64 * stride_kh
        v_base = V + b64 * stride_vb + h64 * stride_vh
    ks_base = K_SCALE + b64 * stride_ksb + h64 * stride_ksh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_full = (kl // BLOCK_N) * BLOCK_N
    n_ok = offs_n < BLOCK_N
    if PIPELINE:
        k = _load_k(K, k_base, b, h, 0, n_full, stride_ks, offs_n, offs_d, BLOCK_N, HEAD_DIM, True, KV_DESC)
        s = tl.dot(q, tl.trans(k))
        for start_n in tl.range(0, n_full, BLOCK_N):
            row_scale = q_sc * tl.load(ks_base + (start_n // K_QBLOCK) * stride_ksn)
            m_new = tl.maximum(m_i, tl.max(s, 1) * row_scale)
            alpha = tl.math.exp2(m_i - m_new)
            nxt = tl.minimum(start_n + BLOCK_N, n_full - BLOCK_N)
            k = _load_k(K, k_base, b, h, nxt, n_full, stride_ks, offs_n, offs_d, BLOCK_N, HEAD_DIM, False, KV_DESC)
            if not ACC_IN_MMA:
                acc = acc * alpha[:, None]
            s_next = tl.dot(q, tl.trans(k))
            p = _softmax_exp2(s * row_scale[:, None] - m_new[:, None], BLOCK_M, BLOCK_N, POLY_EXP)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _load_vt(V, v_base, b, h, start_n, n_full, stride_vs, stride_vd, offs_n, offs_d, BLOCK_N, HEAD_DIM,
                         False, KV_DESC)
            p_q = p * 448.0
            if EXACT_FP8:
                p_q = round_to_e4m3(p_q)
            p8 = p_q.to(k.dtype)
            if ACC_IN_MMA:
                acc = tl.dot(p8, v, acc * alpha[:, None])
            else:
                acc = acc + tl.dot(p8, v)
            m_i = m_new
            s = s_next
    else:
        for start_n in tl.range(0, n_full, BLOCK_N):
            k = _load_k(K, k_base, b, h, start_n, kl, stride_ks, offs_n, offs_d, BLOCK_N, HEAD_DIM, False, KV_DESC)
            v = _load_vt(V, v_base, b, h, start_n, kl, stride_vs, stride_vd, offs_n, offs_d, BLOCK_N, HEAD_DIM,
                         False, KV_DESC)
            row_scale = q_sc * tl.load(ks_base + (start_n // K_QBLOCK) * stride_ksn)
            acc, m_i, l_i = _fp8_step(q, k, v, acc, m_i, l_i, n_ok, row_scale, BLOCK_M, BLOCK_N, False, POLY_EXP,
                                      ACC_IN_MMA, EXACT_FP8)
    for start_n in tl.range(n_full, kl, BLOCK_N):
        n_ok = (start_n + offs_n) < kl
        k = _load_k(K, k_base, b, h, start_n, kl, stride_ks, offs_n, offs_d, BLOCK_N, HEAD_DIM, True, KV_DESC)
        v = _load_vt(V, v_base, b, h, start_n, kl, stride_vs, stride_vd, offs_n, offs_d, BLOCK_N, HEAD_DIM, True,
                     KV_DESC)
        row_scale = q_sc * tl.load(ks_base + (start_n // K_QBLOCK) * stride_ksn)
        acc, m_i, l_i = _fp8_step(q, k, v, acc, m_i, l_i, n_ok, row_scale, BLOCK_M, BLOCK_N, True, POLY_EXP,
                                  ACC_IN_MMA, EXACT_FP8)
    v_sc = tl.load(V_SCALE + b64 * stride_vsb + h64 * stride_vsh + offs_d)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc * (1.0 / 448.0) / l_i[:, None] * v_sc[None, :]
    o_ptrs = Out + b64 * stride_ob + h64 * stride_oh + offs_m.to(tl.int64)[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None])


@triton.jit(do_not_specialize=["seq_q", "seq_k", "num_heads", "num_bh"])
def _attn_fp8_variant_kernel(
    Q, K, V, Q_SCALE, K_SCALE, V_SCALE, KEY_LENS,
    seq_q, seq_k, num_heads, num_bh,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_vd,
    stride_qsb, stride_qsh, stride_qsn, stride_ksb, stride_ksh, stride_ksn, stride_vsb, stride_vsh,
    stride_ob, stride_os, stride_oh,
    Out,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, Q_QBLOCK: tl.constexpr,
    K_QBLOCK: tl.constexpr, QK_SCALE: tl.constexpr, EXACT_FP8: tl.constexpr, KV_DESC: tl.constexpr,
    PERSISTENT: tl.constexpr, PIPELINE: tl.constexpr, POLY_EXP: tl.constexpr, ACC_IN_MMA: tl.constexpr,
):  # fmt: skip
    n_m = tl.cdiv(seq_q, BLOCK_M)
    if PERSISTENT:
        n_tiles = n_m * num_bh
        for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            bh, pid_m = _tile_order(tile, n_m)
            b = bh // num_heads
            h = bh % num_heads
            kl = seq_k
            if KEY_LENS is not None:
                kl = tl.minimum(tl.maximum(tl.load(KEY_LENS + b), 0), seq_k)
            _fp8_tile(Q, K, V, Q_SCALE, K_SCALE, V_SCALE, Out, b, h, pid_m, kl, seq_q, stride_qb, stride_qs,
                      stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_vd,
                      stride_qsb, stride_qsh, stride_qsn, stride_ksb, stride_ksh, stride_ksn, stride_vsb, stride_vsh,
                      stride_ob, stride_os, stride_oh, HEAD_DIM, BLOCK_M, BLOCK_N, Q_QBLOCK, K_QBLOCK, QK_SCALE,
                      EXACT_FP8, KV_DESC, PIPELINE, POLY_EXP, ACC_IN_MMA)
    else:
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // num_heads
        h = bh % num_heads
        kl = seq_k
        if KEY_LENS is not None:
            kl = tl.minimum(tl.maximum(tl.load(KEY_LENS + b), 0), seq_k)
        _fp8_tile(Q, K, V, Q_SCALE, K_SCALE, V_SCALE, Out, b, h, pid_m, kl, seq_q, stride_qb, stride_qs, stride_qh,
                  stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_vd, stride_qsb, stride_qsh,
                  stride_qsn, stride_ksb, stride_ksh, stride_ksn, stride_vsb, stride_vsh, stride_ob, stride_os,
                  stride_oh, HEAD_DIM, BLOCK_M, BLOCK_N, Q_QBLOCK, K_QBLOCK, QK_SCALE, EXACT_FP8, KV_DESC, PIPELINE,
                  POLY_EXP, ACC_IN_MMA)


# ----------------------------------------------------------------------------------------------
# Wrapper
# ----------------------------------------------------------------------------------------------
def _num_programs(v: Variant, n_tiles: int, device: torch.device, num_programs: int | None) -> int:
    if num_programs is not None:
        return max(1, min(int(num_programs), n_tiles))
    if device.type != "cuda":
        return max(1, min(3, n_tiles))  # interpreter: a few programs, several tiles each
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(sms * v.ctas_per_sm, n_tiles))


def _get_variant(variant) -> Variant:
    if isinstance(variant, Variant):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown attention variant {variant!r}: accepted {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def flash_attention_variant(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor | None = None,
    *,
    variant: str | Variant,
    quantized: Fp8QKV | None = None,
    sm_scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_programs: int | None = None,
) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v over each sample's first key_lengths[b] keys, by one named variant.

    Args:
        q, k, v: [B, S, H, D] (k, v may have another S), one float dtype, last dim contiguous. BF16
            variants: bf16 / fp16 / fp32, D in {16, 32, 64, 128}. FP8 variants: D in {64, 128};
            quantized here with ``quantize_qkv_fp8`` unless ``quantized`` (its output for these q, k, v)
            is given, which is how the benchmark times the kernel alone.
        key_lengths: int [B] or None, as in ``flash_attention``.
        variant: a name of ``VARIANTS`` (or a ``Variant``).
        block_m, block_n: override the variant's tile (the interpreter tests use small tiles; on a CPU
            the default is 32 x 32 at most); num_programs: the persistent grid (default #SMs x
            ``ctas_per_sm`` on CUDA, 3 in the interpreter).
    Returns:
        [B, S_q, H, D] in q's dtype (FP8 variants: q's dtype too).
    Raises:
        ValueError / TypeError: an unknown variant, bad shapes / dtypes / devices (one line).
    """
    v_ = _get_variant(variant)
    on_gpu = q.device.type == "cuda" if isinstance(q, torch.Tensor) else False
    bm = block_m or (v_.block_m if on_gpu else min(v_.block_m, 32))
    bn = block_n or (v_.block_n if on_gpu else min(v_.block_n, 32))
    for name, val in (("block_m", bm), ("block_n", bn)):
        if val < 16 or val & (val - 1):
            raise ValueError(f"{name}={val}: accepted a power of two >= 16")
    if v_.kernel == "base":  # the production kernels, fixed config
        cfg = dict(block_m=bm, block_n=bn, num_warps=v_.num_warps if on_gpu else 4,
                   num_stages=v_.num_stages if on_gpu else 2, tma=v_.tma and _tma_ok(q), sm_scale=sm_scale)  # fmt: skip
        if not v_.fp8:
            return flash_attention(q, k, v, key_lengths, **cfg)
        ops = quantized or quantize_qkv_fp8(q, k, v)
        return flash_attention_fp8(ops.q8, ops.k8, ops.v8, key_lengths, q_scale=ops.q_scale,
                                   k_scale=ops.k_scale, v_scale=ops.v_scale, quant_block=ops.quant_block,
                                   out_dtype=q.dtype, **cfg)  # fmt: skip
    if v_.fp8:
        return _run_fp8(v_, q, k, v, key_lengths, quantized, sm_scale, bm, bn, num_programs, on_gpu)
    return _run_bf16(v_, q, k, v, key_lengths, sm_scale, bm, bn, num_programs, on_gpu)


def _tma_ok(q: torch.Tensor) -> bool:
    return q.device.type != "cuda" or cuda_capability(q.device) >= (9, 0)


def _scale(sm_scale, dim: int) -> float:
    scale = (1.0 / math.sqrt(dim)) if sm_scale is None else float(sm_scale)
    if not scale > 0:
        raise ValueError(f"sm_scale={sm_scale!r}: accepted a positive float")
    return scale


def _run_bf16(v_, q, k, v, key_lengths, sm_scale, bm, bn, num_programs, on_gpu):
    check_attention_inputs(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride(-1) == 1), got {t.stride()}")
    bsz, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    kl = check_key_lengths(key_lengths, bsz, q.device)
    scale = _scale(sm_scale, dim)
    out = torch.empty((bsz, seq_q, heads, dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    tma = v_.tma and _tma_ok(q)
    kk, vv = k, v
    if tma:
        kk, vv = tma_descriptor("k", k, [1, bn, 1, dim]), tma_descriptor("v", v, [1, bn, 1, dim])
    dot_f32 = q.dtype == torch.float32 or (not on_gpu and q.dtype == torch.bfloat16)
    n_tiles = triton.cdiv(seq_q, bm) * bsz * heads
    grid = ((_num_programs(v_, n_tiles, q.device, num_programs),) if v_.persistent
            else (triton.cdiv(seq_q, bm), bsz * heads))  # fmt: skip
    _attn_variant_kernel[grid](
        q, kk, vv, kl, seq_q, seq_k, heads, bsz * heads,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2), out,
        HEAD_DIM=dim, BLOCK_M=bm, BLOCK_N=bn, QK_SCALE=scale * LOG2E, DOT_F32=dot_f32, KV_DESC=tma,
        PERSISTENT=v_.persistent, PIPELINE=v_.pipeline, POLY_EXP=v_.poly_exp,
        num_warps=v_.num_warps if on_gpu else 4, num_stages=v_.num_stages if on_gpu else 2,
    )  # fmt: skip
    return out


def _run_fp8(v_, q, k, v, key_lengths, quantized, sm_scale, bm, bn, num_programs, on_gpu):
    check_attention_inputs(q, k, v, head_dims=FP8_HEAD_DIMS)
    if on_gpu and cuda_capability(q.device) < (8, 9):
        raise ValueError("FP8 attention needs compute capability >= 8.9 (Ada / Hopper); use a bf16 variant")
    ops = quantized or quantize_qkv_fp8(q, k, v)
    if not isinstance(ops, Fp8QKV):
        raise TypeError(f"quantized must be an Fp8QKV (quantize_qkv_fp8's output), got {type(ops).__name__}")
    if ops.quant_block % bn:
        raise ValueError(f"block_n={bn} must divide the quantization block {ops.quant_block}")
    q8, k8, v8 = ops.q8, ops.k8, ops.v8
    bsz, seq_q, heads, dim = q8.shape
    seq_k = k8.shape[1]
    if v8.stride(1) != 1:
        raise ValueError("FP8 variants need v8 with tokens contiguous (quantize_v_per_channel's layout)")
    kl = check_key_lengths(key_lengths, bsz, q.device)
    scale = _scale(sm_scale, dim)
    out = torch.empty((bsz, seq_q, heads, dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    nb_q, nb_k = ops.q_scale.shape[-1], ops.k_scale.shape[-1]
    tma = v_.tma and _tma_ok(q)
    kk, vv = k8, v8
    if tma:
        kk = tma_descriptor("k", k8, [1, bn, 1, dim])
        vv = tma_descriptor("v (as its [B, H, D, S] buffer)", v8.permute(0, 2, 3, 1), [1, 1, dim, bn])
    n_tiles = triton.cdiv(seq_q, bm) * bsz * heads
    grid = ((_num_programs(v_, n_tiles, q.device, num_programs),) if v_.persistent
            else (triton.cdiv(seq_q, bm), bsz * heads))  # fmt: skip
    qs, ks, vs = ops.q_scale.contiguous(), ops.k_scale.contiguous(), ops.v_scale.contiguous()
    _attn_fp8_variant_kernel[grid](
        q8, kk, vv, qs, ks, vs, kl, seq_q, seq_k, heads, bsz * heads,
        q8.stride(0), q8.stride(1), q8.stride(2), k8.stride(0), k8.stride(1), k8.stride(2),
        v8.stride(0), v8.stride(1), v8.stride(2), v8.stride(3),
        heads * nb_q, nb_q, 1, heads * nb_k, nb_k, 1, heads * dim, dim,
        out.stride(0), out.stride(1), out.stride(2), out,
        HEAD_DIM=dim, BLOCK_M=bm, BLOCK_N=bn, Q_QBLOCK=ops.quant_block, K_QBLOCK=ops.quant_block,
        QK_SCALE=scale * LOG2E, EXACT_FP8=not on_gpu, KV_DESC=tma, PERSISTENT=v_.persistent,
        PIPELINE=v_.pipeline, POLY_EXP=v_.poly_exp, ACC_IN_MMA=v_.acc_in_mma,
        num_warps=v_.num_warps if on_gpu else 4, num_stages=v_.num_stages if on_gpu else 2,
    )  # fmt: skip
    return out


def variant_backend(name: str):
    """An attention backend ``(q, k, v, key_lengths) -> out`` running variant ``name`` (to register the
    GPU run's winner with ``vidtrt.models.attention.register_backend``)."""
    v_ = _get_variant(name)

    def run(q, k, v, key_lengths):
        return flash_attention_variant(q, k, v, key_lengths, variant=v_)

    return run
