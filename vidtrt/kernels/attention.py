"""Flash-attention forward (non-causal) for [B, S, H, D] with per-sample key lengths.

Online softmax in fp32 (exp2 with log2(e) folded into the scale), BF16/FP16 tensor-core products
(fp32 inputs use exact IEEE products, for tests). Keys at index >= key_lengths[b] are skipped: the
loop stops at the sample's length, and only the last partial key block is masked, so text padding
costs neither a mask tensor nor FLOPs. A sample with key length 0 gets zeros.

The DiT reaches it through the attention backends of :mod:`vidtrt.kernels.backends`. Argument
order of the kernel is the TensorRT AOT plugin order: input pointers, int32 scalars, output
pointers, then constexprs.
"""

from __future__ import annotations

import functools
import math

import torch

from ._common import (
    FLOAT_DTYPES,
    LOG2E,
    check_device,
    check_float_tensor,
    cuda_capability,
    tl,
    triton,
)
from ._configs import attention_config_dicts
from .reference import attention_reference

__all__ = [
    "attention_reference",
    "attention_configs",
    "check_attention_inputs",
    "flash_attention",
]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)  # tuned for 64 / 128; the small ones serve toy models


@triton.jit
def _attn_fwd_kernel(
    # inputs
    Q,
    K,
    V,
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
    stride_ob,
    stride_os,
    stride_oh,
    # outputs
    Out,
    # constexprs
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QK_SCALE: tl.constexpr,  # softmax scale * log2(e)
    DOT_F32: tl.constexpr,  # products in fp32 (fp32 inputs; bf16 in the interpreter, which lacks bf16 dots)
    KV_DESC: tl.constexpr = False,  # K, V are TMA tensor descriptors [B, S, H, D] (block [1, BLOCK_N, 1, D])
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
    n_full = (kl // BLOCK_N) * BLOCK_N
    # Stage 0: full key blocks, no masks. Stage 1: the last partial block (at most one), masked.
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
            p = tl.math.exp2(s * QK_SCALE - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if KV_DESC:
                v = V.load([b, start_n, h, 0]).reshape(BLOCK_N, HEAD_DIM)
                if stage == 1:  # keys in [kl, S_k) hold data: P is 0 there, but 0 * inf would be NaN
                    v = tl.where(n_ok[:, None], v, 0.0)
            elif stage == 0:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0)
            p_lp = p.to(Q.dtype.element_ty)  # P rounded to the input precision for the PV product
            if DOT_F32:
                acc = tl.dot(p_lp.to(tl.float32), v.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(p_lp, v, acc)
            m_i = m_new

    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # key length 0 -> zeros
    out = acc / l_i[:, None]
    o_ptrs = Out + b64 * stride_ob + h64 * stride_oh + offs_m.to(tl.int64)[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None])


# ----------------------------------------------------------------------------------------------
# Block sizes
# ----------------------------------------------------------------------------------------------
def _descriptor_blocks(nargs: dict, v_transposed: bool = False) -> None:
    """Autotuner pre-hook: TMA descriptors of K / V get the block shape of the config being run
    (``v_transposed``: the FP8 kernel's V descriptor spans the transposed [B, H, D, S] buffer)."""
    bn, d = nargs["BLOCK_N"], nargs["HEAD_DIM"]
    for name, block in (("K", [1, bn, 1, d]), ("V", [1, 1, d, bn] if v_transposed else [1, bn, 1, d])):
        if hasattr(nargs.get(name), "block_shape"):  # a TensorDescriptor (plain tensors have no block shape)
            nargs[name].block_shape = block


def attention_configs(capability: tuple[int, int], head_dim: int, fp8: bool = False) -> list[triton.Config]:
    """Autotuning candidates per GPU generation (see ``_configs.attention_config_dicts``)."""
    return [
        triton.Config(
            {"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]}, num_warps=c["num_warps"], num_stages=c["num_stages"],
            pre_hook=functools.partial(_descriptor_blocks, v_transposed=fp8),
        )
        for c in attention_config_dicts(capability, head_dim, fp8)
    ]


_AUTOTUNED: dict = {}


def _autotuned(kernel, capability: tuple[int, int], head_dim: int, fp8: bool):
    """One autotuner per (kernel, GPU generation, head dim); re-tunes per sequence length."""
    key = (kernel, capability, head_dim, fp8)
    if key not in _AUTOTUNED:
        _AUTOTUNED[key] = triton.autotune(
            configs=attention_configs(capability, head_dim, fp8), key=["seq_q", "seq_k", "HEAD_DIM", "KV_DESC"]
        )(kernel)
    return _AUTOTUNED[key]


def default_blocks(seq_q: int, seq_k: int) -> tuple[int, int]:
    """Interpreter / forced-config default: large blocks, few programs."""
    bm = 64 if seq_q > 32 else 32 if seq_q > 16 else 16
    bn = 64 if seq_k > 32 else 32 if seq_k > 16 else 16
    return bm, bn


# ----------------------------------------------------------------------------------------------
# Wrapper
# ----------------------------------------------------------------------------------------------
def check_key_lengths(key_lengths, batch: int, device) -> torch.Tensor | None:
    if key_lengths is None:
        return None
    if not isinstance(key_lengths, torch.Tensor):
        raise TypeError(f"key_lengths must be an int tensor [B] or None, got {type(key_lengths).__name__}")
    if key_lengths.dtype not in (torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"key_lengths has dtype {key_lengths.dtype}: accepted an integer tensor [B]")
    if tuple(key_lengths.shape) != (batch,):
        raise ValueError(f"key_lengths has shape {tuple(key_lengths.shape)}: accepted [B={batch}]")
    if key_lengths.device != device:
        raise ValueError(f"key_lengths is on {key_lengths.device}, q is on {device}: accepted the same device")
    return key_lengths.to(torch.int32).contiguous()


def check_attention_inputs(q, k, v, dtypes=FLOAT_DTYPES, head_dims=SUPPORTED_HEAD_DIMS) -> None:
    """Shapes / dtypes / strides / devices of q, k, v [B, S, H, D] (k and v may have another S)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(name, t, ndim=4, dtypes=dtypes)
    bsz, _, heads, dim = q.shape
    if k.shape[0] != bsz or k.shape[2] != heads or k.shape[3] != dim:
        raise ValueError(f"k has shape {tuple(k.shape)}, q has {tuple(q.shape)}: accepted the same B, H, D")
    if v.shape != k.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}, k has {tuple(k.shape)}: accepted the same shape")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v have dtypes {q.dtype}, {k.dtype}, {v.dtype}: accepted one dtype")
    if dim not in head_dims:
        raise ValueError(f"head dim {dim} is not supported: accepted {', '.join(map(str, head_dims))}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q is on {q.device}: accepted the same device")
    check_device("q", q)


def tma_descriptor(name: str, t: torch.Tensor, block_shape: list[int]):
    """A TMA descriptor over ``t`` (last dim contiguous, 16-byte aligned base and strides)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    esize = t.element_size()
    if t.stride(-1) != 1 or t.data_ptr() % 16 or any((st * esize) % 16 for st in t.stride()[:-1]):
        raise ValueError(
            f"tma=True needs {name} 16-byte aligned with strides that are multiples of 16 bytes, got strides "
            f"{t.stride()} ({t.dtype}); use tma=False"
        )
    return TensorDescriptor(t, list(t.shape), list(t.stride()), list(block_shape))


def check_tma(tma, device: torch.device) -> None:
    if not isinstance(tma, bool):
        raise TypeError(f"tma must be a bool, got {type(tma).__name__}")
    if tma and device.type == "cuda" and cuda_capability(device) < (9, 0):
        raise ValueError("tma=True needs a Hopper-or-newer GPU (sm_90+, TMA); use tma=False")


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor | None = None,
    *,
    sm_scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    tma: bool = False,
    warp_specialize: bool = False,
) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v over each sample's first key_lengths[b] keys.

    Args:
        q: [B, S_q, H, D]; k, v: [B, S_k, H, D]; bf16 / fp16 / fp32, one dtype; D in {16, 32, 64, 128};
            last dim contiguous (other strides free: views of a fused qkv projection are fine).
        key_lengths: int [B] on q's device, or None (all keys). Clamped to [0, S_k] in the kernel
            (no host sync); length 0 gives zeros.
        sm_scale: default 1 / sqrt(D).
        block_m, block_n, num_warps, num_stages: force a config (default: autotuned on CUDA,
            large blocks in the interpreter).
        tma: load K / V through TMA tensor descriptors (Hopper's bulk tensor copies, completing on
            mbarriers) instead of per-thread async copies; needs 16-byte aligned k / v with strides
            that are multiples of 16 bytes. Off by default until measured faster on a GPU.
        warp_specialize: mark the unmasked key loop ``tl.range(..., warp_specialize=True)`` (Triton's
            automatic warp specialization). With Triton 3.6 and 3.9 this changes nothing on Hopper (sm_90a:
            same SASS; the pass partitions loops on Blackwell only), so it is off by default.
    Returns:
        [B, S_q, H, D] in q's dtype, contiguous.
    """
    check_attention_inputs(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride(-1) == 1), got {t.stride()}")
    bsz, seq_q, heads, dim = q.shape
    seq_k = k.shape[1]
    kl = check_key_lengths(key_lengths, bsz, q.device)
    scale = (1.0 / math.sqrt(dim)) if sm_scale is None else float(sm_scale)
    if not scale > 0:
        raise ValueError(f"sm_scale={sm_scale!r}: accepted a positive float")
    for name, val in (("block_m", block_m), ("block_n", block_n)):
        if val is not None and (val < 16 or val & (val - 1)):
            raise ValueError(f"{name}={val}: accepted a power of two >= 16")
    out = torch.empty((bsz, seq_q, heads, dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    args = (
        q, k, v, kl,
        seq_q, seq_k, heads,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        out,
    )  # fmt: skip
    dot_f32 = q.dtype == torch.float32 or (q.device.type == "cpu" and q.dtype == torch.bfloat16)
    const = {"HEAD_DIM": dim, "QK_SCALE": scale * LOG2E, "DOT_F32": dot_f32, "KV_DESC": tma,
             "WARP_SPEC": bool(warp_specialize)}
    forced = block_m is not None or block_n is not None or q.device.type != "cuda"
    dbm, dbn = default_blocks(seq_q, seq_k)
    bm, bn = block_m or dbm, block_n or dbn
    check_tma(tma, q.device)
    if tma:  # block shape set here for a forced config, by the autotuner's pre-hook otherwise
        args = (q, tma_descriptor("k", k, [1, bn, 1, dim]), tma_descriptor("v", v, [1, bn, 1, dim]), *args[3:])
    if forced:
        grid = (triton.cdiv(seq_q, bm), bsz * heads)
        _attn_fwd_kernel[grid](
            *args, **const, BLOCK_M=bm, BLOCK_N=bn, num_warps=num_warps or 4, num_stages=num_stages or 2
        )
        return out
    tuned = _autotuned(_attn_fwd_kernel, cuda_capability(q.device), dim, False)
    grid = lambda meta: (triton.cdiv(seq_q, meta["BLOCK_M"]), bsz * heads)
    tuned[grid](*args, **const)
    return out
