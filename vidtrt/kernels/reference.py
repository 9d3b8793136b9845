"""Torch references of the kernels: the definitions the Triton kernels are tested against.

Pure torch (no triton import), so the ONNX decomposed flavour and CPU callers can use them too.
Layout everywhere: [B, S, H, D].
"""

from __future__ import annotations

import math

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0


# ----------------------------------------------------------------------------------------------
# QK RMSNorm + 3D RoPE
# ----------------------------------------------------------------------------------------------
def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """rot(x) for interleaved pairs: (x_2j, x_2j+1) -> (-x_2j+1, x_2j)."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def rms_norm_rope_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_image_tokens: int,
    eps: float = 1e-6,
    fp8_scale: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-head RMSNorm (weight [D]) then RoPE on tokens [0, num_image_tokens), all in fp32.

    x: [B, S, H, D]; cos, sin: [num_image_tokens, D] (each frequency repeated for its pair).
    Returns x's dtype, or float8_e4m3fn holding ``clamp(y / fp8_scale, +-448)`` when fp8_scale is
    given (a number, a 0-d tensor or a per-head [H] tensor).
    """
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.float()
    n = num_image_tokens
    img = xf[:, :n]
    c = cos.float()[None, :, None, :]
    s = sin.float()[None, :, None, :]
    img = img * c + rotate_pairs(img) * s
    y = torch.cat([img, xf[:, n:]], dim=1)
    if fp8_scale is None:
        return y.to(x.dtype)
    scale = torch.as_tensor(fp8_scale, dtype=torch.float32, device=x.device)
    if scale.ndim == 1:
        scale = scale.view(1, 1, -1, 1)
    return (y / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def qk_norm_rope_reference(q, k, weight_q, weight_k, cos, sin, num_image_tokens, eps=1e-6, fp8_scale=None):
    """Reference of ``fused_qk_norm_rope``: the same math applied to q and to k."""
    qs, ks = fp8_scale if isinstance(fp8_scale, tuple) else (fp8_scale, fp8_scale)
    return (
        rms_norm_rope_reference(q, weight_q, cos, sin, num_image_tokens, eps, qs),
        rms_norm_rope_reference(k, weight_k, cos, sin, num_image_tokens, eps, ks),
    )


def safe_fp8_scale(weight: torch.Tensor, head_dim: int | None = None) -> float:
    """A static FP8 scale that can never overflow after RMSNorm + RoPE.

    After RMSNorm the head vector has RMS 1, so |x_i| <= sqrt(D) before the weight; RoPE rotates
    pairs, so |y_i| <= sqrt(D) * max|w|. Dividing by sqrt(D) * max|w| / 448 keeps |y| <= 448.
    """
    d = head_dim or weight.numel()
    return float(math.sqrt(d) * weight.detach().abs().max().float().item() / FP8_MAX)


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------
def key_padding_mask(key_lengths: torch.Tensor | None, batch: int, seq_k: int, device) -> torch.Tensor | None:
    """bool [B, S_k], True for valid keys (index < key_lengths[b]); None when all keys are valid."""
    if key_lengths is None:
        return None
    idx = torch.arange(seq_k, device=device)
    return idx[None, :] < key_lengths.to(device=device, dtype=torch.int64).view(batch, 1)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention, non-causal, in ``compute_dtype``; keys >= key_lengths[b] are ignored.

    A sample with key length 0 gets zeros (the kernels' convention). Returns compute_dtype.
    """
    b, _, _, d = q.shape
    s_k = k.shape[1]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    qf, kf, vf = (t.to(compute_dtype) for t in (q, k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
    mask = key_padding_mask(key_lengths, b, s_k, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    if mask is not None:
        p = torch.nan_to_num(p, nan=0.0)  # all keys masked -> zeros
    return torch.einsum("bhqk,bkhd->bqhd", p, vf)


# ----------------------------------------------------------------------------------------------
# FP8 quantization (SageAttention / FlashAttention-3 style) and an emulation of the FP8 kernel
# ----------------------------------------------------------------------------------------------
def quantize_per_block_reference(x: torch.Tensor, block: int, smooth: torch.Tensor | None = None):
    """Per (batch, head, block of ``block`` tokens) absmax scaling to float8_e4m3fn.

    x: [B, S, H, D]; smooth: optional [B, H, D] vector subtracted from every token first.
    Returns (x8 [B, S, H, D] fp8, scale float32 [B, H, ceil(S / block)]) with x ~= x8 * scale.
    """
    bsz, s, h, d = x.shape
    xf = x.float()
    if smooth is not None:
        xf = xf - smooth.float()[:, None, :, :]
    nb = -(-s // block)
    pad = nb * block - s
    xp = torch.nn.functional.pad(xf, (0, 0, 0, 0, 0, pad))
    blocks = xp.view(bsz, nb, block, h, d)
    amax = blocks.abs().amax(dim=(2, 4))  # [B, nb, H]
    scale = (amax.clamp_min(1e-12) / FP8_MAX).permute(0, 2, 1).contiguous()  # [B, H, nb]
    per_token = scale.permute(0, 2, 1).repeat_interleave(block, dim=1)[:, :s]  # [B, S, H]
    x8 = (xf / per_token[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return x8, scale


def quantize_per_channel_reference(v: torch.Tensor):
    """Per (batch, head, channel) absmax over tokens: (v8 [B, S, H, D] fp8, scale float32 [B, H, D])."""
    vf = v.float()
    scale = (vf.abs().amax(dim=1).clamp_min(1e-12) / FP8_MAX).contiguous()  # [B, H, D]
    v8 = (vf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return v8, scale


def _expand_token_scale(scale: torch.Tensor, batch: int, heads: int, seq: int, block: int) -> torch.Tensor:
    """Any of [], [H], [B, H], [B, H, NB] -> per token float32 [B, S, H]."""
    sc = scale.float()
    if sc.ndim == 0:
        return sc.expand(batch, seq, heads)
    if sc.ndim == 1:
        return sc.view(1, 1, heads).expand(batch, seq, heads)
    if sc.ndim == 2:
        return sc.view(batch, 1, heads).expand(batch, seq, heads)
    return sc.permute(0, 2, 1).repeat_interleave(block, dim=1)[:, :seq]


def _expand_channel_scale(scale: torch.Tensor, batch: int, heads: int, dim: int) -> torch.Tensor:
    """Any of [], [H], [B, H], [B, H, D] -> float32 [B, H, D]."""
    sc = scale.float()
    if sc.ndim == 0:
        return sc.expand(batch, heads, dim)
    if sc.ndim == 1:
        return sc.view(1, heads, 1).expand(batch, heads, dim)
    if sc.ndim == 2:
        return sc.view(batch, heads, 1).expand(batch, heads, dim)
    return sc


# Hopper's FP8 tensor cores do not accumulate in fp32 (SageAttention2, arXiv 2411.10958, and DeepSeek-V3,
# arXiv 2412.19437, measured it; vLLM's and FlashAttention-3's two-level accumulation fixes answer it): each
# WGMMA k-step of 32 products is summed with the incoming accumulator as fixed-point numbers aligned to the
# largest of them, keeping 13 bits below its leading one (truncated), and the result keeps 13 mantissa bits
# (an e8m13 "FP22" value). Triton's default on sm_90 (max_num_imprecise_acc = 2**30) never promotes within a
# tl.dot, so in our FP8 kernel: q.k^T over D = 128 (4 k-steps) and P.V over one key block of BLOCK_N
# (BLOCK_N / 32 k-steps) are FP22, and the fp32 accumulator across key blocks is real fp32.
SM90_FP8_K_STEP = 32
SM90_FP8_ACC_BITS = 13
FP8_MMA_MODELS = ("fp32", "sm90")


def _truncate_to_grid(x: torch.Tensor, ulp: torch.Tensor) -> torch.Tensor:
    """x rounded toward zero to a multiple of ulp (float64 in, exact for the magnitudes used here)."""
    return torch.trunc(x / ulp) * ulp


def _exponent(x: torch.Tensor) -> torch.Tensor:
    """floor(log2|x|) (0 where x == 0), float64."""
    ax = x.abs()
    return torch.floor(torch.log2(torch.where(ax > 0, ax, torch.ones_like(ax))))


def sm90_fp8_matmul(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b as Hopper's FP8 WGMMA computes it within one ``tl.dot`` (model above; float64 internally).

    a: [..., M, K], b: [..., K, N], both holding fp8 (e4m3) values in any float dtype (products of two
    e4m3 values are exact in float64). Returns float32 [..., M, N]. Per k-step of
    ``SM90_FP8_K_STEP``: the products and the accumulator are truncated to the grid
    2**(e - SM90_FP8_ACC_BITS), e the exponent of the largest of them, summed exactly, and the sum is
    truncated to SM90_FP8_ACC_BITS mantissa bits. ``acc`` [..., M, N]: the accumulator the product adds
    to (a wgmma with its C operand), default zeros.
    """
    a64, b64 = a.double(), b.double()
    k = a64.shape[-1]
    if acc is None:
        acc = torch.zeros(*a64.shape[:-1], b64.shape[-1], dtype=torch.float64, device=a.device)
    else:
        acc = acc.double()
    for start in range(0, k, SM90_FP8_K_STEP):
        stop = min(start + SM90_FP8_K_STEP, k)
        prods = a64[..., :, start:stop, None] * b64[..., None, start:stop, :]  # [..., M, k, N]
        addends = torch.cat([prods, acc.unsqueeze(-2)], dim=-2)
        top = addends.abs().amax(dim=-2)
        ulp = torch.exp2(_exponent(top) - SM90_FP8_ACC_BITS).unsqueeze(-2)
        total = _truncate_to_grid(addends, ulp).sum(dim=-2)
        acc = _truncate_to_grid(total, torch.exp2(_exponent(total) - SM90_FP8_ACC_BITS))
    return acc.float()


def attention_fp8_emulation(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    key_lengths: torch.Tensor | None = None,
    block_n: int = 64,
    quant_block: int = 128,
    fp8_mma: str = "fp32",
    one_level: bool = False,
) -> torch.Tensor:
    """Torch emulation of the FP8 kernel's algorithm, block by block (float32 math).

    S = (q8 k8^T) * q_scale_row * k_scale_block / sqrt(D); online softmax over key blocks of
    ``block_n``; P quantized as fp8(P * 448) for the PV product; O = acc / (448 l) * v_scale.
    Returns float32 [B, S, H, D]. Same rounding points as the kernel.

    fp8_mma: how the two FP8 products accumulate. "fp32": exactly (the Triton interpreter, and what
    the kernel would do with fp32 tensor-core accumulation): the kernel on CPU agrees to fp32
    accumulation-order noise. "sm90": Hopper's FP22 accumulation within each product
    (:func:`sm90_fp8_matmul`), fp32 across key blocks: the kernel on an H100/H200. The two differ by
    ~1e-2 of max |O| at S = 1000 (0.0131 measured on an H200 between the kernel and "fp32").
    one_level: P8 V8 accumulates into the running accumulator inside the product (the ACC_IN_MMA
    variants of ``attention_variants``), so with "sm90" the whole sum goes through the FP22 accumulator.
    """
    if fp8_mma not in FP8_MMA_MODELS:
        raise ValueError(f"fp8_mma={fp8_mma!r}: accepted {FP8_MMA_MODELS}")
    matmul = torch.matmul if fp8_mma == "fp32" else sm90_fp8_matmul
    bsz, s_q, h, d = q8.shape
    s_k = k8.shape[1]
    qs = _expand_token_scale(q_scale, bsz, h, s_q, quant_block)  # [B, Sq, H]
    ks = _expand_token_scale(k_scale, bsz, h, s_k, quant_block)  # [B, Sk, H]
    vs = _expand_channel_scale(v_scale, bsz, h, d)  # [B, H, D]
    qf = q8.float().permute(0, 2, 1, 3)  # [B, H, Sq, D]
    kf = k8.float().permute(0, 2, 1, 3)
    vf = v8.float().permute(0, 2, 1, 3)
    # log2 domain, as the kernel: exp2(s * scale * log2(e) - m) == exp(s * scale - m / log2(e))
    row_scale = qs.permute(0, 2, 1) * (math.log2(math.e) / math.sqrt(d))  # [B, H, Sq]
    lengths = [s_k] * bsz if key_lengths is None else [min(max(int(n), 0), s_k) for n in key_lengths.tolist()]
    out = torch.zeros(bsz, h, s_q, d, dtype=torch.float32, device=q8.device)
    for b in range(bsz):
        m = torch.full((h, s_q), float("-inf"), device=q8.device)
        l_sum = torch.zeros(h, s_q, device=q8.device)
        acc = torch.zeros(h, s_q, d, device=q8.device)
        for start in range(0, lengths[b], block_n):
            stop = min(start + block_n, lengths[b])
            scores = matmul(qf[b], kf[b, :, start:stop].transpose(-1, -2))  # [H, Sq, n]
            scores = scores * (row_scale[b][..., None] * ks[b, start:stop].permute(1, 0)[:, None, :])
            m_new = torch.maximum(m, scores.amax(dim=-1))
            p = torch.exp2(scores - m_new[..., None])
            alpha = torch.exp2(m - m_new)
            l_sum = l_sum * alpha + p.sum(dim=-1)
            p8 = (p * FP8_MAX).to(FP8_DTYPE).float()
            if one_level and fp8_mma == "sm90":
                acc = sm90_fp8_matmul(p8, vf[b, :, start:stop], acc * alpha[..., None])
            else:
                acc = acc * alpha[..., None] + matmul(p8, vf[b, :, start:stop])
            m = m_new
        l_safe = torch.where(l_sum == 0, torch.ones_like(l_sum), l_sum)
        out[b] = acc / (l_safe[..., None] * FP8_MAX) * vs[b][:, None, :]
    return out.permute(0, 2, 1, 3)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().flatten(), b.double().flatten()
    return float((a64 @ b64) / (a64.norm() * b64.norm()).clamp_min(1e-300))
