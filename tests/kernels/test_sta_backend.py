"""The sliding-tile backends inside the DiT (interpreter on CPU): tile order once per forward, per-layer
windows, dense steps, the switch in process.

The reference is the DiT run with a test backend that computes sliding-tile attention on the *natural*
token order from 3D coordinates (``sliding_tile_reference``): it knows nothing of the tile permutation,
the padding rows or the block lists, so a mistake in any of them shows.
"""

from __future__ import annotations

import pytest
import torch

from vidtrt.config.model_config import TransformerConfig
from vidtrt.config.sparse_attention import SparseStep, sparse_step
from vidtrt.kernels.sparse_layout import TileGrid, sliding_tile_reference
from vidtrt.models import attention as attn_api
from vidtrt.models.transformer import HunyuanVideoTransformer3D

CFG = dict(num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1, num_refiner_layers=1,
           text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6))
LATENT = (3, 8, 12)  # T', H', W' of the latents: tokens (3, 4, 6) after 2x2 patches
GRID = (3, 4, 6)
TILE = (1, 4, 4)  # 16 tokens: 3 x 1 x 2 tiles, the w axis cut (6 = 4 + 2: padding rows)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = HunyuanVideoTransformer3D(TransformerConfig(**CFG)).eval().to(DEVICE)
    with torch.no_grad():  # adaLN / gates far from zero, so attention moves the output
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2, 8, dtype=torch.int64)
    mask[0, :7] = 1
    mask[1, :3] = 1
    inputs = dict(hidden_states=torch.randn(2, 16, *LATENT, generator=g), timestep=torch.tensor([500.0, 800.0]),
                  encoder_hidden_states=torch.randn(2, 8, 32, generator=g), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(2, 16, generator=g), guidance=torch.tensor([6000.0, 6000.0]))
    return {k: v.to(DEVICE) for k, v in inputs.items()}


def _run(model, backend, step=None):
    with torch.no_grad(), attn_api.use_backend(backend), sparse_step(step):
        return model(**_inputs())


def _reference_backend(windows):
    """Natural-order STA attention per block (the refiner's text-only calls: dense)."""
    calls = iter(range(len(windows)))
    n_img = GRID[0] * GRID[1] * GRID[2]

    def backend(q, k, v, key_lengths):
        if q.shape[1] <= n_img:  # token refiner
            return attn_api._BACKENDS["sdpa"](q, k, v, key_lengths)
        w = windows[next(calls)]
        return sliding_tile_reference(q, k, v, TileGrid(GRID, TILE), w, key_lengths).to(q.dtype)

    return backend


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(("backend", "windows"), [
    ("triton-sta", ((1, 1, 1), (1, 1, 1))),
    ("triton-sta", ((1, 1, 2), ((3, 1, 1), (1, 1, 1)))),
    ("triton-sta-tma", ((1, 1, 2), (1, 1, 1))),
], ids=["own-tile", "per-layer-per-head", "tma"])
def test_dit_with_triton_sta_equals_natural_order_reference(model, backend, windows):
    step = SparseStep(TILE, windows)
    out = _run(model, backend, step)
    attn_api.register_backend("test-sta-reference", _reference_backend(windows))
    ref = _run(model, "test-sta-reference")
    dense = _run(model, "sdpa")
    assert out.shape == dense.shape
    assert _rel(out, ref) <= 1e-5
    assert _rel(out, dense) > 1e-3  # the windows do change the result


def test_window_covering_everything_and_dense_steps_equal_dense(model):
    dense = _run(model, "sdpa")
    assert _rel(_run(model, "triton-sta", SparseStep(TILE, ((9, 9, 9), (9, 9, 9)))), dense) <= 1e-5
    assert _rel(_run(model, "triton-sta", None), dense) <= 1e-5  # a dense step: the dense kernel
    # sdpa ignores a sparse step: the token order is only changed for the STA backends
    assert torch.equal(_run(model, "sdpa", SparseStep(TILE, ((1, 1, 1), (1, 1, 1)))), dense)


def test_wrong_number_of_layer_windows_is_named(model):
    from vidtrt.errors import ConfigError

    with pytest.raises(ConfigError, match="3 layer windows: accepted one per block \\(2\\)"):
        _run(model, "triton-sta", SparseStep(TILE, ((1, 1, 1),) * 3))


def test_fp8_sta_backend_in_the_dit():
    """triton-fp8-sta (head dim 64): close to the exact sliding-tile DiT (cosine as the dense FP8 backend's bound)."""
    cfg = dict(CFG, attention_head_dim=64, rope_axes_dim=(16, 24, 24))
    torch.manual_seed(1)
    m = HunyuanVideoTransformer3D(TransformerConfig(**cfg)).eval().to(DEVICE)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    windows = ((1, 1, 1), (1, 1, 2))
    exact = _run(m, "triton-sta", SparseStep(TILE, windows))
    fp8 = _run(m, "triton-fp8-sta", SparseStep(TILE, windows))
    cos = torch.nn.functional.cosine_similarity(fp8.flatten().double(), exact.flatten().double(), dim=0).item()
    assert cos >= 0.995
