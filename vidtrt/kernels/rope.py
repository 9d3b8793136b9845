"""Fused per-head QK RMSNorm + 3D RoPE (interleaved pairs) for q and k in one kernel.

For every (batch, token, head) row of D channels, in fp32:
    y = x * rsqrt(mean(x^2) + eps) * w                      (RMSNorm with weight [D])
    y = y * cos[s] + rot(y) * sin[s]   if s < num_image_tokens (text tokens: norm only)
rot maps each pair (y_2j, y_2j+1) -> (-y_2j+1, y_2j). Output in the input dtype, or float8_e4m3fn
holding ``clamp(y / scale, +-448)`` (per-tensor or per-head scale) for the FP8 attention.

One launch handles q and k (same shape): each program does BLOCK_R rows of both. Argument order
is the TensorRT AOT plugin order: input pointers, int32 scalars, output pointers, then constexprs.
"""

from __future__ import annotations

import torch

from ._common import (
    FP8_DTYPE,
    check_device,
    check_float_tensor,
    next_power_of_2,
    round_to_e4m3,
    tl,
    triton,
)
from .reference import qk_norm_rope_reference, safe_fp8_scale

__all__ = [
    "fused_qk_norm_rope",
    "install_fused_qk_norm_rope",
    "qk_norm_rope_fused",
    "qk_norm_rope_reference",
    "rope_launch_config",
    "safe_fp8_scale",
]


@triton.jit
def _qk_norm_rope_kernel(
    # inputs
    Q,
    K,
    WQ,
    WK,
    COS,
    SIN,
    Q_SCALE,  # float32 [H] (FP8 output) or None
    K_SCALE,
    # int32 scalars
    n_rows,  # B * S * H
    seq_len,
    num_heads,
    num_image_tokens,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    # outputs: contiguous [B, S, H, D]
    QO,
    KO,
    # constexprs
    HEAD_DIM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    EPS: tl.constexpr,
    EXACT_FP8: tl.constexpr = False,  # interpreter: round to e4m3 in fp32 first (see round_to_e4m3)
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, HEAD_DIM)
    row_ok = rows < n_rows
    h = rows % num_heads
    t = rows // num_heads
    s = t % seq_len
    b = (t // seq_len).to(tl.int64)
    h64 = h.to(tl.int64)
    s64 = s.to(tl.int64)

    # cos / sin of the row's token; text tokens (s >= num_image_tokens) get cos 1, sin 0. Every head
    # of a token reads the same cos / sin row: keep those in L2 (q / k are streamed once: evict first).
    is_img = row_ok & (s < num_image_tokens)
    cs_off = s64[:, None] * HEAD_DIM + cols[None, :]
    cs = tl.load(COS + cs_off, mask=is_img[:, None], other=1.0, eviction_policy="evict_last").to(tl.float32)
    sn = tl.load(SIN + cs_off, mask=is_img[:, None], other=0.0, eviction_policy="evict_last").to(tl.float32)
    wq = tl.load(WQ + cols).to(tl.float32)
    wk = tl.load(WK + cols).to(tl.float32)
    out_off = rows.to(tl.int64)[:, None] * HEAD_DIM + cols[None, :]

    for which in tl.static_range(2):
        if which == 0:
            in_off = b * stride_qb + s64 * stride_qs + h64 * stride_qh
            x = tl.load(Q + in_off[:, None] + cols[None, :], mask=row_ok[:, None], other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
            w = wq
        else:
            in_off = b * stride_kb + s64 * stride_ks + h64 * stride_kh
            x = tl.load(K + in_off[:, None] + cols[None, :], mask=row_ok[:, None], other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
            w = wk
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / HEAD_DIM + EPS)
        y = x * rstd[:, None] * w[None, :]
        # rot(y): pairs (even, odd) -> (-odd, even), in registers.
        even, odd = tl.split(tl.reshape(y, (BLOCK_R, HEAD_DIM // 2, 2)))
        y_rot = tl.reshape(tl.join(-odd, even), (BLOCK_R, HEAD_DIM))
        y = y * cs + y_rot * sn
        if which == 0:
            if Q_SCALE is not None:
                sc = tl.load(Q_SCALE + h, mask=row_ok, other=1.0)
                y = tl.minimum(tl.maximum(y / sc[:, None], -448.0), 448.0)
                if EXACT_FP8:
                    y = round_to_e4m3(y)
            tl.store(QO + out_off, y.to(QO.dtype.element_ty), mask=row_ok[:, None])
        else:
            if K_SCALE is not None:
                sc = tl.load(K_SCALE + h, mask=row_ok, other=1.0)
                y = tl.minimum(tl.maximum(y / sc[:, None], -448.0), 448.0)
                if EXACT_FP8:
                    y = round_to_e4m3(y)
            tl.store(KO + out_off, y.to(KO.dtype.element_ty), mask=row_ok[:, None])


def rope_launch_config(n_rows: int, head_dim: int, on_gpu: bool) -> tuple[int, int]:
    """(BLOCK_R, num_warps). GPU: ~4K elements per tensor per program on 8 warps (sm_90a, D = 128:
    78 registers, 16-byte loads; on 4 warps 136-150 registers cut the warps in flight per SM by
    half); interpreter: few big programs."""
    if on_gpu:
        block_r = max(1, 4096 // head_dim)
        return block_r, 8
    return min(256, next_power_of_2(max(n_rows, 1))), 4


def _scale_tensor(name: str, scale, num_heads: int, device) -> torch.Tensor:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a float tensor of shape [] or [H], got {type(scale).__name__}")
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {scale.dtype}")
        if scale.ndim == 0 or (scale.ndim == 1 and scale.numel() == 1):
            t = scale.reshape(1).expand(num_heads)
        elif scale.ndim == 1 and scale.numel() == num_heads:
            t = scale
        else:
            raise ValueError(f"{name} must have shape [] or [H={num_heads}], got {tuple(scale.shape)}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, q is on {device}: accepted the same device")
        return t.to(torch.float32).contiguous()
    if not scale > 0:
        raise ValueError(f"{name}={scale!r}: accepted a positive number")
    return torch.full((num_heads,), float(scale), dtype=torch.float32, device=device)


def fused_qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    weight_q: torch.Tensor,
    weight_k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_image_tokens: int,
    eps: float = 1e-6,
    fp8_scale=None,
    *,
    block_rows: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm + RoPE of q and k in one kernel launch.

    Args:
        q, k: [B, S, H, D] bf16 / fp16 / fp32, same shape and dtype; last dim contiguous (other
            strides free, e.g. views of a fused qkv projection). D a power of two, 16..256.
        weight_q, weight_k: [D] RMSNorm weights (any float dtype; used in fp32).
        cos, sin: float32 [num_image_tokens, D], contiguous; each frequency repeated for its pair.
        num_image_tokens: tokens [0, n) are rotated, [n, S) (text) only normalized; 0 <= n <= S.
        eps: RMSNorm epsilon (HunyuanVideo: 1e-6).
        fp8_scale: None for outputs in q's dtype; otherwise float8_e4m3fn outputs holding
            clamp(y / scale, +-448). A number, a tensor [] or [H], or a (q_scale, k_scale) pair.
            ``safe_fp8_scale(weight)`` gives a scale that cannot overflow.
    Returns:
        (q_out, k_out), contiguous [B, S, H, D].
    """
    check_float_tensor("q", q, ndim=4)
    check_float_tensor("k", k, ndim=4)
    if k.shape != q.shape:
        raise ValueError(f"k has shape {tuple(k.shape)}, q has {tuple(q.shape)}: accepted the same shape")
    if k.dtype != q.dtype:
        raise TypeError(f"k has dtype {k.dtype}, q has {q.dtype}: accepted the same dtype")
    bsz, seq, heads, dim = q.shape
    if dim < 16 or dim > 256 or dim & (dim - 1):
        raise ValueError(f"head dim {dim} is not supported: accepted a power of two in [16, 256]")
    for name, t in (("q", q), ("k", k)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride(-1) == 1), got {t.stride()}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q is on {q.device}: accepted the same device")
    check_device("q", q)
    for name, w in (("weight_q", weight_q), ("weight_k", weight_k)):
        check_float_tensor(name, w, ndim=1)
        if w.shape[0] != dim:
            raise ValueError(f"{name} has shape {tuple(w.shape)}: accepted [D={dim}]")
        if w.device != q.device:
            raise ValueError(f"{name} is on {w.device}, q is on {q.device}: accepted the same device")
    if isinstance(num_image_tokens, bool) or not isinstance(num_image_tokens, int):
        raise TypeError(f"num_image_tokens must be an int, got {type(num_image_tokens).__name__}")
    if not 0 <= num_image_tokens <= seq:
        raise ValueError(f"num_image_tokens={num_image_tokens}: accepted 0..S={seq}")
    for name, t in (("cos", cos), ("sin", sin)):
        check_float_tensor(name, t, ndim=2, dtypes=(torch.float32,))
        if tuple(t.shape) != (num_image_tokens, dim):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}: accepted [num_image_tokens={num_image_tokens}, D={dim}]"
            )
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q is on {q.device}: accepted the same device")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps={eps!r}: accepted a positive float")

    if fp8_scale is None:
        q_scale = k_scale = None
        out_dtype = q.dtype
    else:
        qs, ks = fp8_scale if isinstance(fp8_scale, tuple) else (fp8_scale, fp8_scale)
        q_scale = _scale_tensor("fp8_scale (q)", qs, heads, q.device)
        k_scale = _scale_tensor("fp8_scale (k)", ks, heads, q.device)
        out_dtype = FP8_DTYPE

    q_out = torch.empty((bsz, seq, heads, dim), dtype=out_dtype, device=q.device)
    k_out = torch.empty_like(q_out)
    n_rows = bsz * seq * heads
    if n_rows == 0:
        return q_out, k_out
    on_gpu = q.device.type == "cuda"
    block_r, warps = rope_launch_config(n_rows, dim, on_gpu)
    if block_rows is not None:
        if block_rows < 1 or block_rows & (block_rows - 1):
            raise ValueError(f"block_rows={block_rows}: accepted a power of two")
        block_r = block_rows
    cos_c = cos if num_image_tokens > 0 else torch.ones((1, dim), dtype=torch.float32, device=q.device)
    sin_c = sin if num_image_tokens > 0 else torch.zeros((1, dim), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(n_rows, block_r),)
    _qk_norm_rope_kernel[grid](
        q, k, weight_q, weight_k, cos_c, sin_c, q_scale, k_scale,
        n_rows, seq, heads, num_image_tokens,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        q_out, k_out,
        HEAD_DIM=dim, BLOCK_R=block_r, EPS=float(eps), EXACT_FP8=not on_gpu and q_scale is not None,
        num_warps=num_warps or warps,
    )  # fmt: skip
    return q_out, k_out



# ----------------------------------------------------------------------------------------------
# DiT integration: a drop-in for vidtrt.models.rope.qk_norm_rope
# ----------------------------------------------------------------------------------------------
def _tracing() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def qk_norm_rope_fused(q, k, norm_q, norm_k, cos, sin, num_image_tokens):
    """Same signature and result as ``vidtrt.models.rope.qk_norm_rope``: the fused kernel on CUDA
    tensors (and on CPU when the Triton interpreter is active, for tests); the PyTorch code for
    everything else (CPU, graph capture / export, shapes or norms the kernel does not take).

    The kernel keeps the normalized values in fp32 up to the RoPE (the PyTorch code rounds them to
    the activation dtype in between), so bf16 results can differ by an ulp.
    """
    from vidtrt.models.rope import qk_norm_rope_torch

    from ._common import interpreter_active

    eps_q, eps_k = getattr(norm_q, "eps", None), getattr(norm_k, "eps", None)
    w_q, w_k = getattr(norm_q, "weight", None), getattr(norm_k, "weight", None)
    usable = (
        not _tracing()
        and (q.device.type == "cuda" or (q.device.type == "cpu" and interpreter_active()))
        and q.shape == k.shape
        and q.dtype == k.dtype
        and q.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and q.shape[-1] in (16, 32, 64, 128, 256)
        and q.stride(-1) == 1
        and k.stride(-1) == 1
        and isinstance(w_q, torch.Tensor)
        and isinstance(w_k, torch.Tensor)
        and eps_q is not None
        and eps_q == eps_k
        and not isinstance(num_image_tokens, torch.SymInt)
    )
    if not usable:
        return qk_norm_rope_torch(q, k, norm_q, norm_k, cos, sin, num_image_tokens)
    n = int(num_image_tokens)
    cos = cos[:n].to(torch.float32).contiguous()
    sin = sin[:n].to(torch.float32).contiguous()
    return fused_qk_norm_rope(q, k, w_q.detach(), w_k.detach(), cos, sin, n, float(eps_q))


def install_fused_qk_norm_rope(enable: bool = True) -> None:
    """Route the DiT's ``qk_norm_rope`` through :func:`qk_norm_rope_fused` (None restores torch)."""
    from vidtrt.models.rope import set_qk_norm_rope_impl

    set_qk_norm_rope_impl(qk_norm_rope_fused if enable else None)
