"""The FP8 GEMM activation quantizer (vidtrt.kernels.fp8_quant) against its torch reference
(vidtrt.models.fp8_linear.quantize_rows_reference): the same bytes and scales, on CUDA or in the
interpreter."""

from __future__ import annotations

import pytest
import torch

from vidtrt.kernels.fp8_quant import quantize_rows_fp8
from vidtrt.models.fp8_linear import quantize_rows_reference


def _rows(m: int, k: int, dtype, device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Rows spanning six decades (DiT tokens differ this much), one zero row, one row of tiny values.
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m)[:, None]
    x[1] = 0.0
    x[2] = x[2] * 1e-30
    return x.to(dtype).to(device)


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,block", [(37, 200, 64), (5, 96, 128), (3, 1000, 256)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_dynamic_rows_equal_reference(device, m, k, block, dtype):
    x = _rows(m, k, dtype, device, seed=m + k)
    x8, scale = quantize_rows_fp8(x, block_k=block)
    r8, rscale = quantize_rows_reference(x)
    assert x8.dtype == torch.float8_e4m3fn and scale.shape == (m, 1)
    assert torch.equal(scale, rscale)
    assert torch.equal(x8.view(torch.uint8), r8.view(torch.uint8))  # bytes: the sign of zero too
    assert float(x8.float().abs().amax(dim=1)[0]) == 448.0  # each row's absmax lands on the e4m3 limit


@pytest.mark.gpu
@pytest.mark.parametrize("value", [0.01, 3.7])
def test_static_scale_equals_reference_and_saturates(device, value):
    x = _rows(19, 160, torch.bfloat16, device, seed=3)
    scale = torch.tensor([value], dtype=torch.float32, device=device)
    x8, s = quantize_rows_fp8(x, scale, block_k=64)
    r8, _ = quantize_rows_reference(x, scale)
    assert s is scale
    assert torch.equal(x8.view(torch.uint8), r8.view(torch.uint8))
    assert float(x8.float().abs().max()) == 448.0  # rows far above the calibrated range clamp, no inf/NaN
    assert bool(torch.isfinite(x8.float()).all())


@pytest.mark.gpu
def test_strided_rows_and_bad_arguments(device):
    x = _rows(8, 64, torch.bfloat16, device, seed=5)
    wide = torch.zeros(8, 80, dtype=torch.bfloat16, device=device)
    wide[:, :64] = x
    x8, s = quantize_rows_fp8(wide[:, :64], block_k=32)  # row stride 80
    r8, rs = quantize_rows_reference(x)
    assert torch.equal(x8.view(torch.uint8), r8.view(torch.uint8)) and torch.equal(s, rs)
    with pytest.raises(ValueError, match="unit column stride"):
        quantize_rows_fp8(x.t())
    with pytest.raises(ValueError, match="one float32 element"):
        quantize_rows_fp8(x, torch.ones(2, device=device))
    with pytest.raises(TypeError, match="dtype"):
        quantize_rows_fp8(x.to(torch.int32))
