"""Every dense attention variant (vidtrt.kernels.attention_variants) against the torch reference: unequal
key lengths (full, mid-block, on a block edge, 0), S off the block grid, cross-attention shapes, the
persistent tile loop with fewer programs than tiles; FP8 variants against the block emulation."""

from __future__ import annotations

import pytest
import torch

from vidtrt.kernels.attention_fp8 import quantize_qkv_fp8
from vidtrt.kernels.attention_variants import VARIANTS, Variant, flash_attention_variant, variant_names
from vidtrt.kernels.reference import attention_fp8_emulation, attention_reference, cosine_similarity

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP8_MMA = "fp32" if DEVICE == "cpu" else "sm90"


def _qkv(b, s_q, s_k, h, d, dtype, device, seed=0, k_bias=0.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s_q, h, d, generator=g)
    k = torch.randn(b, s_k, h, d, generator=g) + k_bias * torch.randn(1, 1, h, d, generator=g)
    v = torch.randn(b, s_k, h, d, generator=g)
    return [t.to(dtype).to(device) for t in (q, k, v)]


def _rel(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


# (B, S_q, S_k, key_lengths): lengths full / mid-block / on a 16-key block edge / 0; S off the 32-block grid.
BF16_CASES = [
    (2, 70, 70, [70, 37]),
    (3, 37, 52, [52, 32, 0]),
    (1, 45, 45, None),
]
# The distinct code paths (in the interpreter blocks are 32 x 16 at most, so the 128 / 256-row
# variants run the code of the 128-row ones): each switch alone, all three together, the wrapper of
# the production kernel.
BF16_PATHS = ["bf16-base-tma", "bf16-pipe-tma", "bf16-poly-tma", "bf16-persist-tma", "bf16-persist-pipe-poly-tma"]
FP8_PATHS = ["fp8-base-tma", "fp8-poly-tma", "fp8-pipe-tma", "fp8-pipe-accmma-tma", "fp8-persist-pipe-tma"]
ALL_SWITCHES = "bf16-persist-pipe-poly-tma"


@pytest.mark.parametrize(
    "name, case",
    [(n, BF16_CASES[0]) for n in BF16_PATHS] + [(ALL_SWITCHES, c) for c in BF16_CASES[1:]],
    ids=lambda x: x if isinstance(x, str) else f"B{x[0]}-S{x[1]}x{x[2]}-kl{x[3]}",
)
def test_bf16_variants_fp32_vs_float64(name, case, device):
    """fp32 inputs (exact products): the variant computes attention to 1e-5 (the FMA-pipe exp2 of the
    poly variants: 2e-4, its cubic's relative error is <= 8.6e-5)."""
    b, s_q, s_k, kl = case
    q, k, v = _qkv(b, s_q, s_k, 1, 64, torch.float32, device)
    key_lengths = None if kl is None else torch.tensor(kl, device=device)
    # 16-key blocks: several full blocks, the pipelined prologue / recompute path and the masked tail;
    # 2 persistent programs for 6-9 tiles
    out = flash_attention_variant(q, k, v, key_lengths, variant=name, block_m=32, block_n=16, num_programs=2)
    ref = attention_reference(q, k, v, key_lengths)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert _rel(out, ref) <= (2e-4 if VARIANTS[name].poly_exp else 1e-5), name
    if kl is not None and 0 in kl:
        assert bool((out[kl.index(0)] == 0).all())  # key length 0 -> zeros


def test_every_variant_runs_and_agrees(device):
    """All variants, 128 / 256-row ones included, on one small case (BF16 exact, FP8 cosine)."""
    q, k, v = _qkv(1, 40, 40, 1, 64, torch.float32, device, seed=4)
    kl = torch.tensor([29], device=device)
    ref = attention_reference(q, k, v, kl)
    ops = quantize_qkv_fp8(q, k, v, 32)
    for name, var in VARIANTS.items():
        out = flash_attention_variant(q, k, v, kl, variant=name, quantized=ops if var.fp8 else None, block_n=16)
        if var.fp8:
            assert cosine_similarity(out, ref) >= 0.995, name
        else:
            assert _rel(out, ref) <= 2e-4, name


@pytest.mark.parametrize("name", [ALL_SWITCHES])
def test_bf16_variants_half_precision(name, device):
    q, k, v = _qkv(2, 40, 40, 2, 64, torch.bfloat16, device, seed=1)
    kl = torch.tensor([40, 23], device=device)
    out = flash_attention_variant(q, k, v, kl, variant=name, block_m=16, block_n=16)
    assert out.dtype == torch.bfloat16
    assert _rel(out, attention_reference(q, k, v, kl)) <= 1.5e-2


@pytest.mark.parametrize("name", FP8_PATHS)
def test_fp8_variants_vs_emulation(name, device):
    """The FP8 variants compute the production FP8 algorithm: against its block emulation to 1e-5 in the
    interpreter (fp32 accumulation order); FMA-pipe exp2 moves a few P values across an e4m3 rounding
    boundary (bound 2e-2); cosine vs the fp32 reference >= 0.995 for all."""
    v_ = VARIANTS[name]
    q, k, v = _qkv(2, 45, 45, 1, 64, torch.float32, device, seed=2, k_bias=3.0)
    kl = torch.tensor([45, 21], device=device)
    ops = quantize_qkv_fp8(q, k, v, 32)
    out = flash_attention_variant(q, k, v, kl, variant=name, quantized=ops, block_m=32, block_n=16, num_programs=2)
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert cosine_similarity(out, attention_reference(q, k, v, kl)) >= 0.995
    emu = attention_fp8_emulation(ops.q8, ops.k8, ops.v8, ops.q_scale, ops.k_scale, ops.v_scale, kl, block_n=16,
                                  quant_block=32, fp8_mma=FP8_MMA)  # fmt: skip
    exact = not v_.poly_exp and not v_.acc_in_mma
    tol = (1e-5 if DEVICE == "cpu" else 1e-3) if exact else 2e-2
    assert _rel(out, emu) <= tol, name


def test_fp8_variant_quantizes_itself_and_key_length_zero(device):
    q, k, v = _qkv(2, 33, 33, 1, 64, torch.float32, device, seed=3)
    kl = torch.tensor([0, 20], device=device)
    out = flash_attention_variant(q, k, v, kl, variant="fp8-persist-pipe-tma", block_m=16, block_n=16)
    assert bool((out[0] == 0).all())
    assert cosine_similarity(out[1], attention_reference(q, k, v, kl)[1]) >= 0.995


def test_variant_table_is_consistent():
    for name, v in VARIANTS.items():
        assert name == v.name and v.kernel in ("base", "variant")
        assert name.startswith("fp8-") == v.fp8
        assert (v.block_m // 64) * 4 <= v.num_warps  # one 64-row warpgroup (4 warps) per 64 query rows at most
        assert not (v.acc_in_mma and not v.fp8)
    assert {"bf16-base", "fp8-base-tma"} <= set(VARIANTS)


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        ({"variant": "nope"}, ValueError, "unknown attention variant 'nope'"),
        ({"variant": "bf16-pipe-tma", "block_m": 24}, ValueError, "block_m=24"),
        ({"variant": "fp8-pipe-tma", "block_n": 64}, ValueError, "block_n=64 must divide"),
        ({"variant": "fp8-pipe-tma", "quantized": (1, 2)}, TypeError, "quantized must be an Fp8QKV"),
    ],
)
def test_variant_errors(kwargs, exc, msg):
    q, k, v = _qkv(1, 20, 20, 1, 64, torch.float32, DEVICE)
    if kwargs.get("block_n") == 64:
        kwargs = {**kwargs, "quantized": quantize_qkv_fp8(q, k, v, 32)}
    with pytest.raises(exc) as info:
        flash_attention_variant(q, k, v, **kwargs)
    assert msg in str(info.value) and "\n" not in str(info.value)


def test_custom_variant_object(device):
    q, k, v = _qkv(1, 24, 24, 1, 64, torch.float32, device)
    custom = Variant("mine", fp8=False, kernel="variant", persistent=True, pipeline=True)
    out = flash_attention_variant(q, k, v, variant=custom, block_m=16, block_n=16, num_programs=1)
    assert _rel(out, attention_reference(q, k, v)) <= 1e-5


def test_variant_names():
    assert variant_names(fp8=True) + variant_names(fp8=False) == sorted(VARIANTS, key=lambda n: not VARIANTS[n].fp8)
    assert set(BF16_PATHS) <= set(variant_names(fp8=False)) and set(FP8_PATHS) <= set(variant_names(fp8=True))


def test_one_level_accumulation_model():
    """The emulation of the ACC_IN_MMA variants: with fp32 products it is the two-level algorithm (what the
    interpreter runs); with Hopper's FP22 model it truncates the running sum too, so it moves the output,
    by less than the check's 2e-2 bound here, and keeps the accuracy vs exact attention."""
    q, k, v = _qkv(1, 8, 512, 1, 64, torch.float32, "cpu", seed=6)
    ops = quantize_qkv_fp8(q, k, v) if DEVICE == "cpu" else None
    if ops is None:
        pytest.skip(reason="CPU emulation test")
    args = (ops.q8, ops.k8, ops.v8, ops.q_scale, ops.k_scale, ops.v_scale)
    two32 = attention_fp8_emulation(*args, block_n=64)
    assert torch.equal(attention_fp8_emulation(*args, block_n=64, one_level=True), two32)
    two = attention_fp8_emulation(*args, block_n=64, fp8_mma="sm90")
    one = attention_fp8_emulation(*args, block_n=64, fp8_mma="sm90", one_level=True)
    assert 0 < _rel(one, two) <= 2e-2
    ref = attention_reference(q, k, v)
    assert cosine_similarity(one, ref) >= 0.995
