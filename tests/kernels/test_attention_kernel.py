"""Flash-attention kernel (BF16/FP16/FP32) vs a float64 reference, key lengths, backend switch."""

from __future__ import annotations

import pytest
import torch

from vidtrt.kernels import _common
from vidtrt.kernels.attention import flash_attention
from vidtrt.kernels.reference import attention_reference
from vidtrt.models import attention as attn_api

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(b, s_q, s_k, h, d, dtype, device, seed=0, packed=False):
    g = torch.Generator().manual_seed(seed)
    if packed and s_q == s_k:
        qkv = torch.randn(b, s_q, 3, h, d, generator=g).to(dtype).to(device)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = torch.randn(b, s_q, h, d, generator=g).to(dtype).to(device)
    k = torch.randn(b, s_k, h, d, generator=g).to(dtype).to(device)
    v = torch.randn(b, s_k, h, d, generator=g).to(dtype).to(device)
    return q, k, v


def _rel_err(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


# (B, S_q, S_k, H, D, key_lengths, block_m, block_n): S not a multiple of the blocks, unequal key
# lengths in a batch (one full, one ending mid-block, one ending exactly on a block edge, one 0),
# lengths above S clamped, cross-attention shapes, D = 64 and 128.
CASES = [
    (2, 40, 40, 2, 64, [40, 23], 16, 16),
    (2, 40, 40, 2, 64, [40, 23], 32, 16),
    (3, 37, 37, 1, 64, [37, 32, 5], 16, 32),
    (2, 20, 20, 2, 128, None, 16, 16),
    (2, 33, 50, 1, 64, [50, 17], 32, 32),
    (2, 24, 24, 1, 64, [0, 99], 16, 16),
    (2, 21, 21, 2, 16, [21, 9], 16, 16),  # toy head dim (the tiny DiT)
    (1, 70, 70, 1, 64, [70], None, None),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-S{c[1]}x{c[2]}-D{c[4]}-kl{c[5]}-bm{c[6]}bn{c[7]}")
def test_fp32_vs_float64_reference(case, device):
    b, s_q, s_k, h, d, kl, bm, bn = case
    q, k, v = _qkv(b, s_q, s_k, h, d, torch.float32, device)
    key_lengths = None if kl is None else torch.tensor(kl, device=device)
    out = flash_attention(q, k, v, key_lengths, block_m=bm, block_n=bn)
    ref = attention_reference(q, k, v, key_lengths)
    assert out.shape == (b, s_q, h, d) and out.dtype == torch.float32
    assert _rel_err(out, ref) <= 1e-5
    if kl is not None and 0 in kl:
        assert bool((out[kl.index(0)] == 0).all())  # key length 0 -> zeros


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-S{c[1]}x{c[2]}-D{c[4]}-kl{c[5]}-bm{c[6]}bn{c[7]}")
def test_tma_descriptors(case, device):
    """tma=True (K / V loaded as [1, BLOCK_N, 1, D] tiles of TMA descriptors) meets the same float64
    tolerance, also when the keys past each sample's length hold inf (never read into the output)."""
    if device == "cuda" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip(reason="TMA needs sm_90+")
    b, s_q, s_k, h, d, kl, bm, bn = case
    q, k, v = _qkv(b, s_q, s_k, h, d, torch.float32, device, seed=3)
    key_lengths = None if kl is None else torch.tensor(kl, device=device)
    ref = attention_reference(q, k, v, key_lengths)
    if kl is not None:
        for i, n in enumerate(kl):
            k[i, n:], v[i, n:] = float("inf"), float("-inf")
    out = flash_attention(q, k, v, key_lengths, block_m=bm, block_n=bn, tma=True)
    assert _rel_err(out, ref) <= 1e-5
    assert _rel_err(flash_attention(q, k, v, key_lengths, block_m=bm, block_n=bn), ref) <= 1e-5


def test_autotune_pre_hook_sets_descriptor_blocks():
    """On a GPU the autotuner gives each config's BLOCK_N to the TMA descriptors (FP8: V transposed);
    plain tensors (the pointer flavour) are left alone."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    from vidtrt.kernels.attention import attention_configs

    t = torch.zeros(1, 64, 1, 64)
    for fp8, v_block in ((False, [1, 32, 1, 64]), (True, [1, 1, 64, 32])):
        cfg = attention_configs((9, 0), 64, fp8)[0]
        k = TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 16, 1, 64])
        v = TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 16, 1, 64])
        cfg.pre_hook({"K": k, "V": v, "BLOCK_N": 32, "HEAD_DIM": 64})
        assert k.block_shape == [1, 32, 1, 64] and v.block_shape == v_block
        cfg.pre_hook({"K": t, "V": t, "BLOCK_N": 32, "HEAD_DIM": 64})  # pointers: nothing to set


@pytest.mark.gpu
def test_key_lengths_equal_dropping_padding(device):
    """Sample b with length n == attention over the first n keys only (varlen semantics)."""
    q, k, v = _qkv(2, 24, 24, 2, 64, torch.float32, device)
    out = flash_attention(q, k, v, torch.tensor([24, 13], device=device), block_m=16, block_n=16)
    alone = flash_attention(q[1:], k[1:, :13], v[1:, :13], block_m=16, block_n=16)
    assert (out[1] - alone[0]).abs().max().item() <= 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype, device):
    q, k, v = _qkv(2, 40, 40, 2, 64, dtype, device, packed=True)
    kl = torch.tensor([40, 23], device=device)
    out = flash_attention(q, k, v, kl, block_m=16, block_n=32)
    ref = attention_reference(q, k, v, kl)
    assert out.dtype == dtype
    assert _rel_err(out, ref) <= 1.5e-2


@pytest.mark.gpu
def test_packed_views_and_int32_lengths(device):
    q, k, v = _qkv(2, 40, 40, 2, 64, torch.float32, device, packed=True)
    assert not q.is_contiguous()
    kl = torch.tensor([31, 40], dtype=torch.int32, device=device)
    out = flash_attention(q, k, v, kl, block_m=32, block_n=32)
    assert _rel_err(out, attention_reference(q, k, v, kl)) <= 1e-5


def test_sm_scale(device):
    q, k, v = _qkv(1, 20, 20, 1, 64, torch.float32, device)
    out = flash_attention(q, k, v, sm_scale=0.3, block_m=16, block_n=16)
    assert _rel_err(out, attention_reference(q, k, v, sm_scale=0.3)) <= 1e-5


@pytest.mark.gpu
def test_backend_switch(device):
    q, k, v = _qkv(2, 24, 24, 2, 64, torch.float32, device)
    kl = torch.tensor([24, 11], device=device)
    before = attn_api.get_backend()
    try:
        attn_api.set_backend("sdpa")
        ref = attn_api.attention(q, k, v, kl)
        attn_api.set_backend("triton")
        assert {"triton", "triton-fp8"} <= set(attn_api.available_backends())
        out = attn_api.attention(q, k, v, kl)
    finally:
        attn_api.set_backend(before)
    assert _rel_err(out, ref) <= 1e-5
    if device == "cpu" or torch.cuda.get_device_capability() >= (9, 0):
        assert "triton-tma" in attn_api.available_backends()
        with attn_api.use_backend("triton-tma"):
            assert _rel_err(attn_api.attention(q, k, v, kl), ref) <= 1e-5


# ---------------------------------------------------------------------------------------------
# wrapper errors
# ---------------------------------------------------------------------------------------------
def _good(device=DEVICE):
    q, k, v = _qkv(2, 20, 20, 2, 64, torch.float32, device)
    return dict(q=q, k=k, v=v, key_lengths=torch.tensor([20, 5], device=device))


ERROR_CASES = [
    ("q type", lambda a: {**a, "q": a["q"].numpy()}, TypeError, "q must be a torch.Tensor"),
    ("ndim", lambda a: {**a, "q": a["q"][0]}, ValueError, "q must have 4 dimensions"),
    ("dtype", lambda a: {**a, "v": a["v"].double()}, TypeError, "v has dtype torch.float64"),
    ("mixed dtypes", lambda a: {**a, "k": a["k"].half()}, TypeError, "q, k, v have dtypes"),
    ("k heads", lambda a: {**a, "k": a["k"][:, :, :1]}, ValueError, "k has shape (2, 20, 1, 64)"),
    ("v shape", lambda a: {**a, "v": a["v"][:, :10]}, ValueError, "v has shape (2, 10, 2, 64)"),
    ("head dim", lambda a: {k_: t[..., :24] if k_ in "qkv" else t for k_, t in a.items()}, ValueError, "head dim 24"),
    (
        "last stride",
        lambda a: {**a, "k": a["k"].transpose(-1, -2).contiguous().transpose(-1, -2)},
        ValueError,
        "k must have a contiguous last dimension",
    ),
    ("kl type", lambda a: {**a, "key_lengths": [20, 5]}, TypeError, "key_lengths must be an int tensor"),
    ("kl dtype", lambda a: {**a, "key_lengths": a["key_lengths"].float()}, TypeError, "key_lengths has dtype"),
    ("kl shape", lambda a: {**a, "key_lengths": a["key_lengths"][:1]}, ValueError, "key_lengths has shape (1,)"),
    ("kl device", lambda a: {**a, "key_lengths": a["key_lengths"].to("meta")}, ValueError, "key_lengths is on meta"),
    ("block", lambda a: {**a, "block_m": 24}, ValueError, "block_m=24"),
    ("block small", lambda a: {**a, "block_n": 8}, ValueError, "block_n=8"),
    ("sm_scale", lambda a: {**a, "sm_scale": -1.0}, ValueError, "sm_scale=-1.0"),
    ("tma type", lambda a: {**a, "tma": 1}, TypeError, "tma must be a bool"),
    ("tma misaligned", lambda a: {**a, "k": _misaligned(a["k"]), "tma": True}, ValueError,
     "tma=True needs k 16-byte aligned"),
]


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values in a buffer starting 4 bytes past a 16-byte boundary (TMA refuses it)."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = flat[1:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c[0])
def test_wrapper_errors(case):
    _, make, exc, msg = case
    with pytest.raises(exc) as info:
        flash_attention(**make(_good()))
    assert msg in str(info.value)
    assert "\n" not in str(info.value)


def test_error_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(_common, "interpreter_active", lambda: False)
    with pytest.raises(ValueError, match="Triton kernels need CUDA tensors"):
        flash_attention(**_good("cpu"))


def test_error_device_mismatch():
    a = _good()
    with pytest.raises(ValueError, match="k is on meta, q is on "):
        flash_attention(**{**a, "k": a["k"].to("meta"), "v": a["v"].to("meta")})
