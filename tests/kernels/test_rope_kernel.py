"""Fused QK RMSNorm + 3D RoPE kernel vs its torch reference (interpreter on CPU, CUDA on GPUs)."""

from __future__ import annotations

import pytest
import torch

from vidtrt.kernels import _common
from vidtrt.kernels.reference import FP8_MAX, rotate_pairs
from vidtrt.kernels.rope import fused_qk_norm_rope, qk_norm_rope_reference, safe_fp8_scale

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The CI bar (interpreter, numpy fp32) is 1e-6; GPU fp32 uses FMA contraction and approximate division.
FP32_TOL = 1e-6 if DEVICE == "cpu" else 4e-6


def _rope_tables(n: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ang = torch.rand(n, dim // 2, generator=g) * 6.0
    cos = ang.cos().repeat_interleave(2, dim=-1).contiguous()
    sin = ang.sin().repeat_interleave(2, dim=-1).contiguous()
    return cos, sin


def _inputs(b, s, h, d, n, dtype, device, seed=0, packed=True):
    g = torch.Generator().manual_seed(seed)
    if packed:  # q, k as strided views of a fused qkv projection, as the DiT produces them
        qkv = torch.randn(b, s, 3, h, d, generator=g).to(dtype)
        q, k = qkv[:, :, 0], qkv[:, :, 1]
    else:
        q, k = (torch.randn(b, s, h, d, generator=g).to(dtype) for _ in range(2))
    wq = 0.5 + 0.5 * torch.rand(d, generator=g)
    wk = 0.5 + 0.5 * torch.rand(d, generator=g)
    cos, sin = _rope_tables(n, d, seed)
    return [t.to(device) for t in (q, k, wq, wk, cos, sin)]


# (B, S, H, D, num_image_tokens): text tail, all image, all text, odd sizes, D = 64 / 128.
SHAPES = [(2, 24, 4, 64, 17), (1, 9, 3, 128, 9), (2, 5, 2, 64, 0), (3, 7, 1, 32, 4)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("packed", [True, False])
def test_fp32_matches_reference(shape, packed, device):
    q, k, wq, wk, cos, sin = _inputs(*shape, torch.float32, device, packed=packed)
    n = shape[4]
    qo, ko = fused_qk_norm_rope(q, k, wq, wk, cos, sin, n)
    qr, kr = qk_norm_rope_reference(q, k, wq, wk, cos, sin, n)
    assert qo.shape == q.shape and qo.dtype == torch.float32 and qo.is_contiguous()
    err = max((qo - qr).abs().max().item(), (ko - kr).abs().max().item())
    assert err <= FP32_TOL, err


def test_reference_semantics():
    """The reference itself: RMSNorm then x cos + rot(x) sin on image tokens only."""
    q, k, wq, wk, cos, sin = _inputs(1, 6, 2, 32, 4, torch.float64, "cpu")
    qr, _ = qk_norm_rope_reference(q, k, wq, wk, cos, sin, 4)
    normed = q / q.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * wq
    assert torch.allclose(qr[:, 4:].double(), normed[:, 4:].float().double(), atol=1e-6)
    x = normed[:, :4].float()
    expect = x * cos[None, :, None] + rotate_pairs(x) * sin[None, :, None]
    assert torch.allclose(qr[:, :4].float(), expect, atol=1e-6)
    # rot maps (x0, x1) -> (-x1, x0)
    assert rotate_pairs(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-2.0, 1.0, -4.0, 3.0]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,ulp", [(torch.bfloat16, 2.0**-7), (torch.float16, 2.0**-10)])
def test_half_precision_matches_reference(dtype, ulp, device):
    q, k, wq, wk, cos, sin = _inputs(2, 24, 4, 64, 17, dtype, device)
    qo, ko = fused_qk_norm_rope(q, k, wq, wk, cos, sin, 17)
    qr, kr = qk_norm_rope_reference(q, k, wq, wk, cos, sin, 17)
    assert qo.dtype == dtype and ko.dtype == dtype
    for out, ref in ((qo, qr), (ko, kr)):
        # same fp32 math, one rounding to the output dtype: at most one ulp apart
        tol = ulp * ref.float().abs().clamp_min(2.0**-6) * 1.01
        assert bool(((out.float() - ref.float()).abs() <= tol).all())


@pytest.mark.gpu
@pytest.mark.parametrize("per_head", [False, True])
def test_fp8_output(per_head, device):
    b, s, h, d, n = 2, 24, 4, 64, 17
    q, k, wq, wk, cos, sin = _inputs(b, s, h, d, n, torch.bfloat16, device)
    if per_head:
        scale = (safe_fp8_scale(wq), torch.linspace(0.01, 0.05, h, device=device))
    else:
        scale = safe_fp8_scale(wq)
    qo, ko = fused_qk_norm_rope(q, k, wq, wk, cos, sin, n, fp8_scale=scale)
    qr, kr = qk_norm_rope_reference(q, k, wq, wk, cos, sin, n, fp8_scale=scale)
    assert qo.dtype == torch.float8_e4m3fn and ko.dtype == torch.float8_e4m3fn
    for out, ref in ((qo, qr), (ko, kr)):
        o, r = out.float(), ref.float()
        # identical up to fp32 noise landing on an fp8 rounding boundary: rare one-step flips
        step = torch.exp2(torch.floor(torch.log2(r.abs().clamp_min(2.0**-6))) - 3)
        assert bool(((o - r).abs() <= step * 1.01).all())
        assert (o != r).float().mean().item() < 0.01
    # the safe per-tensor scale never saturates: dequantized q is the bf16 result within fp8 precision
    if not per_head:
        qf, _ = qk_norm_rope_reference(q.float(), k.float(), wq, wk, cos, sin, n)
        deq = qo.float() * scale
        assert qo.float().abs().max().item() < FP8_MAX
        rel = (deq - qf).norm() / qf.norm()
        assert rel.item() < 0.05


def test_safe_fp8_scale_bound():
    w = torch.tensor([0.5, -2.0, 1.0, 1.5])
    assert safe_fp8_scale(w) == pytest.approx(2.0 * 2.0 / FP8_MAX)
    # worst case: all energy in one channel of the largest weight
    x = torch.zeros(1, 1, 1, 4)
    x[..., 1] = 100.0
    cos, sin = _rope_tables(1, 4)
    y, _ = qk_norm_rope_reference(x, x, w, w, cos, sin, 1)
    assert y.abs().max().item() <= safe_fp8_scale(w) * FP8_MAX * (1 + 1e-6)


@pytest.mark.gpu
def test_empty_and_eps(device):
    q, k, wq, wk, cos, sin = _inputs(1, 4, 2, 32, 4, torch.float32, device)
    qo, ko = fused_qk_norm_rope(q[:0], k[:0], wq, wk, cos, sin, 4)
    assert qo.shape == (0, 4, 2, 32)
    qo, _ = fused_qk_norm_rope(q, k, wq, wk, cos, sin, 4, eps=1e-2)
    qr, _ = qk_norm_rope_reference(q, k, wq, wk, cos, sin, 4, eps=1e-2)
    assert (qo - qr).abs().max().item() <= FP32_TOL


# ---------------------------------------------------------------------------------------------
# wrapper errors: every check, one line naming the argument
# ---------------------------------------------------------------------------------------------
def _good(device=DEVICE):
    q, k, wq, wk, cos, sin = _inputs(1, 6, 2, 32, 4, torch.float32, device, packed=False)
    return dict(q=q, k=k, weight_q=wq, weight_k=wk, cos=cos, sin=sin, num_image_tokens=4)


def _bad(**over):
    args = _good()
    args.update(over)
    return args


ERROR_CASES = [
    ("q", lambda a: _bad(q=a["q"].numpy()), TypeError, "q must be a torch.Tensor"),
    ("ndim", lambda a: _bad(q=a["q"][0], k=a["k"][0]), ValueError, "q must have 4 dimensions"),
    ("int dtype", lambda a: _bad(q=a["q"].long(), k=a["k"].long()), TypeError, "q has dtype torch.int64"),
    ("k shape", lambda a: _bad(k=a["k"][:, :5]), ValueError, "k has shape"),
    ("k dtype", lambda a: _bad(k=a["k"].half()), TypeError, "k has dtype torch.float16, q has"),
    ("head dim", lambda a: _bad(q=a["q"][..., :24], k=a["k"][..., :24]), ValueError, "head dim 24"),
    ("head dim small", lambda a: _bad(q=a["q"][..., :8], k=a["k"][..., :8]), ValueError, "head dim 8"),
    ("weight shape", lambda a: _bad(weight_q=a["weight_q"][:16]), ValueError, "weight_q has shape"),
    ("weight type", lambda a: _bad(weight_k=[1.0] * 32), TypeError, "weight_k must be a torch.Tensor"),
    ("cos dtype", lambda a: _bad(cos=a["cos"].double()), TypeError, "cos has dtype torch.float64"),
    ("sin shape", lambda a: _bad(sin=a["sin"][:3]), ValueError, "sin has shape (3, 32)"),
    ("cos contiguous", lambda a: _bad(cos=a["cos"].t().contiguous().t()), ValueError, "cos must be contiguous"),
    ("n range", lambda a: _bad(num_image_tokens=7), ValueError, "num_image_tokens=7: accepted 0..S=6"),
    ("n negative", lambda a: _bad(num_image_tokens=-1), ValueError, "num_image_tokens=-1"),
    ("n type", lambda a: _bad(num_image_tokens=4.0), TypeError, "num_image_tokens must be an int"),
    ("eps", lambda a: {**_good(), "eps": 0.0}, ValueError, "eps=0.0"),
    ("fp8 negative", lambda a: {**_good(), "fp8_scale": -1.0}, ValueError, "fp8_scale (q)=-1.0"),
    ("fp8 shape", lambda a: {**_good(), "fp8_scale": torch.ones(3, device=DEVICE)}, ValueError, "shape [] or [H=2]"),
    ("fp8 type", lambda a: {**_good(), "fp8_scale": "0.1"}, TypeError, "must be a float or a float tensor"),
    ("fp8 int tensor", lambda a: {**_good(), "fp8_scale": torch.ones(2, dtype=torch.int32)}, TypeError, "floating"),
    ("fp8 device", lambda a: {**_good(), "fp8_scale": torch.ones(2, device="meta")}, ValueError, "is on meta"),
    ("k device", lambda a: _bad(k=a["k"].to("meta")), ValueError, "k is on meta, q is on"),
    ("weight device", lambda a: _bad(weight_q=a["weight_q"].to("meta")), ValueError, "weight_q is on meta"),
    ("cos device", lambda a: _bad(cos=a["cos"].to("meta")), ValueError, "cos is on meta"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c[0])
def test_wrapper_errors(case):
    _, make, exc, msg = case
    with pytest.raises(exc) as info:
        fused_qk_norm_rope(**make(_good()))
    assert msg in str(info.value)
    assert "\n" not in str(info.value)


def test_error_non_contiguous_last_dim():
    a = _good()
    q = a["q"].permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # stride(-1) != 1
    with pytest.raises(ValueError, match="q must have a contiguous last dimension"):
        fused_qk_norm_rope(**{**a, "q": q, "k": a["k"]})


def test_error_block_rows():
    with pytest.raises(ValueError, match="block_rows=3"):
        fused_qk_norm_rope(**_good(), block_rows=3)


def test_error_cpu_without_interpreter(monkeypatch):
    monkeypatch.setattr(_common, "interpreter_active", lambda: False)
    with pytest.raises(ValueError, match="Triton kernels need CUDA tensors"):
        fused_qk_norm_rope(**_good("cpu"))


def test_error_meta_device():
    a = _good()
    with pytest.raises(ValueError, match="q is on meta"):
        fused_qk_norm_rope(**{**a, "q": a["q"].to("meta"), "k": a["k"].to("meta")})


# ---------------------------------------------------------------------------------------------
# DiT integration: drop-in for vidtrt.models.rope.qk_norm_rope
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [24, 17])
def test_dit_hook_matches_torch_path(dtype, n, device):
    from vidtrt.kernels.rope import install_fused_qk_norm_rope, qk_norm_rope_fused
    from vidtrt.models import rope as dit_rope
    from vidtrt.models.transformer import RMSNorm

    q, k, _, _, cos, sin = _inputs(2, 24, 4, 64, n, dtype, device)
    norm_q, norm_k = RMSNorm(64).to(device), RMSNorm(64).to(device)
    with torch.no_grad():
        norm_q.weight.uniform_(0.5, 1.0)
        norm_k.weight.uniform_(0.5, 1.0)
    expect = dit_rope.qk_norm_rope_torch(q, k, norm_q, norm_k, cos, sin, n)
    calls = []
    install_fused_qk_norm_rope()
    try:
        import vidtrt.kernels.rope as krope

        orig = krope.fused_qk_norm_rope
        krope.fused_qk_norm_rope = lambda *a, **kw: calls.append(1) or orig(*a, **kw)
        got = dit_rope.qk_norm_rope(q, k, norm_q, norm_k, cos, sin, n)
    finally:
        krope.fused_qk_norm_rope = orig
        install_fused_qk_norm_rope(False)
    assert calls == [1]  # the kernel ran
    for g_, e_ in zip(got, expect, strict=True):
        assert g_.dtype == e_.dtype and g_.shape == e_.shape
        if dtype == torch.float32:
            assert (g_ - e_).abs().max().item() <= FP32_TOL
        else:  # torch rounds the normalized values to bf16 before the RoPE, the kernel does not
            assert (g_.float() - e_.float()).abs().max().item() <= 2 * 2.0**-7 * e_.float().abs().max().item()
    # unsupported input (e.g. different eps) -> the torch path, same result
    norm_k.eps = 1e-5
    ref = dit_rope.qk_norm_rope_torch(q, k, norm_q, norm_k, cos, sin, n)
    out = qk_norm_rope_fused(q, k, norm_q, norm_k, cos, sin, n)
    assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))
