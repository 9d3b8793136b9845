"""3D rotary position embedding (RoPE) of the HunyuanVideo DiT, from real cos/sin tables.

No complex numbers and no Python loops over dynamic sizes, so the functions trace and export
(ONNX) with symbolic ``t, h, w``.

Layout: image tokens are flattened ``t -> h -> w`` (the patch order of ``Conv3d(...).flatten(2)``);
the head channels are split ``[t | h | w]`` by ``config.rope_axes_dim``. Within each axis of width
``d`` the frequencies are ``w_k = theta^(-2k/d)`` for ``k < d/2``, each used by one adjacent
(interleaved) channel pair ``(x_2k, x_2k+1)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch
import torch.nn as nn

from vidtrt.config.model_config import TransformerConfig

# A replacement for qk_norm_rope (same signature), e.g. a fused CUDA kernel; None = the PyTorch code.
QKNormRope = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]
_qk_norm_rope_impl: QKNormRope | None = None  # the process-wide default
_UNSET = object()
_scoped_impl: ContextVar = ContextVar("vidtrt_qk_norm_rope_impl", default=_UNSET)  # per thread / task


def set_qk_norm_rope_impl(fn: QKNormRope | None) -> None:
    """Route every :func:`qk_norm_rope` call through ``fn`` (same signature and result); None restores
    the PyTorch implementation. ``fn`` may fall back to :func:`qk_norm_rope_torch` for inputs it does
    not handle (e.g. CPU tensors). A :func:`use_qk_norm_rope_impl` block overrides this default."""
    global _qk_norm_rope_impl
    _qk_norm_rope_impl = fn


@contextlib.contextmanager
def use_qk_norm_rope_impl(fn: QKNormRope | None) -> Iterator[None]:
    """Within the block, this thread / task routes :func:`qk_norm_rope` through ``fn`` (None: PyTorch)."""
    token = _scoped_impl.set(fn)
    try:
        yield
    finally:
        _scoped_impl.reset(token)


def get_qk_norm_rope_impl() -> QKNormRope | None:
    """The implementation :func:`qk_norm_rope` uses here and now (None: the PyTorch code)."""
    fn = _scoped_impl.get()
    return _qk_norm_rope_impl if fn is _UNSET else fn


def _axis_angles(dim: int, length: int | torch.SymInt, theta: float, device: torch.device) -> torch.Tensor:
    """Rotation angles (radians) of one axis: [length, dim], every frequency repeated for its pair."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))  # [dim/2]
    inv_freq = torch.stack((inv_freq, inv_freq), dim=-1).flatten()  # [dim]: w0 w0 w1 w1 ...
    pos = torch.arange(length, dtype=torch.float32, device=device)  # [length]
    return pos[:, None] * inv_freq[None, :]


def rope_cos_sin(
    config: TransformerConfig,
    t: int | torch.SymInt,
    h: int | torch.SymInt,
    w: int | torch.SymInt,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of the image tokens of a ``t x h x w`` latent grid (after patching).

    Returns:
        (cos, sin), each float32 [t * h * w, head_dim]; row ``(i * h + j) * w + k`` is position (i, j, k).
    """
    d_t, d_h, d_w = config.rope_axes_dim
    theta = float(config.rope_theta)
    a_t = _axis_angles(d_t, t, theta, device)  # [t, d_t]
    a_h = _axis_angles(d_h, h, theta, device)  # [h, d_h]
    a_w = _axis_angles(d_w, w, theta, device)  # [w, d_w]

    def grid(f) -> torch.Tensor:
        # Evaluate cos/sin on the 1-D axes (cheap), then broadcast to the 3-D grid.
        g_t = f(a_t)[:, None, None, :].expand(t, h, w, d_t)
        g_h = f(a_h)[None, :, None, :].expand(t, h, w, d_h)
        g_w = f(a_w)[None, None, :, :].expand(t, h, w, d_w)
        return torch.cat((g_t, g_h, g_w), dim=-1).reshape(t * h * w, d_t + d_h + d_w)

    return grid(torch.cos), grid(torch.sin)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs: ``x' = x * cos + rot(x) * sin``, computed in float32.

    ``rot`` maps each pair ``(x_2j, x_2j+1) -> (-x_2j+1, x_2j)``.

    Args:
        x: [B, S, H, D] queries or keys (any float dtype).
        cos, sin: [S, D] float32 (from :func:`rope_cos_sin`).
    Returns:
        [B, S, H, D] in x's dtype.
    """
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))  # [B, S, H, D/2, 2]
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    out = xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.to(x.dtype)


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    norm_q: nn.Module,
    norm_k: nn.Module,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_image_tokens: int | torch.SymInt,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q and k, then RoPE on the first ``num_image_tokens`` tokens only.

    The one place both block types normalise and rotate q/k: a fused kernel replaces this function
    on CUDA. Tokens after the image tokens (text) are normalised but not rotated.

    Args:
        q, k: [B, S, H, D]; tokens [0, num_image_tokens) are image tokens in t -> h -> w order.
        norm_q, norm_k: RMSNorm over D (``weight`` [D], ``eps``).
        cos, sin: [num_image_tokens, D] float32.
    Returns:
        (q, k), [B, S, H, D] each, in the dtype the norms produce.
    """
    impl = get_qk_norm_rope_impl()
    if impl is not None:
        return impl(q, k, norm_q, norm_k, cos, sin, num_image_tokens)
    return qk_norm_rope_torch(q, k, norm_q, norm_k, cos, sin, num_image_tokens)


def qk_norm_rope_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    norm_q: nn.Module,
    norm_k: nn.Module,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_image_tokens: int | torch.SymInt,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of :func:`qk_norm_rope` (the reference for fused kernels)."""
    q = norm_q(q)
    k = norm_k(k)
    if num_image_tokens == q.shape[1]:
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    n = num_image_tokens
    q = torch.cat((apply_rotary(q[:, :n], cos, sin), q[:, n:]), dim=1)
    k = torch.cat((apply_rotary(k[:, :n], cos, sin), k[:, n:]), dim=1)
    return q, k
