"""Official Tencent HunyuanVideo DiT layout <-> diffusers names, and the weight-only FP8 file."""

from __future__ import annotations

import math
import random

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from vidtrt.config.model_config import TransformerConfig  # noqa: E402
from vidtrt.errors import CheckpointError  # noqa: E402
from vidtrt.models.official_layout import (  # noqa: E402
    dequantize_fp8,
    diffusers_to_official,
    official_to_diffusers,
    unwrap_official,
)
from vidtrt.models.transformer import HunyuanVideoTransformer3D  # noqa: E402
from vidtrt.testing import rel_err as rel  # noqa: E402

KWARGS = dict(
    num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2, num_refiner_layers=2,
    text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6), mlp_ratio=3.0,
)
HIDDEN = 32
MLP = 96


def _random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A diffusers-layout state dict with every tensor random."""
    model = diffusers.HunyuanVideoTransformer3DModel(**KWARGS)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        noise = torch.randn(p.shape, generator=gen)
        sd[name] = noise / math.sqrt(p[0].numel()) if p.ndim > 1 else 1 + 0.2 * noise if "norm" in name else 0.1 * noise
    return sd


@pytest.fixture(scope="module")
def diffusers_sd():
    return _random_state_dict(random.randrange(2**31))


def _inputs(batch: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 8, dtype=torch.int64)
    mask[0, 5:] = 0
    return dict(
        hidden_states=torch.randn(batch, 16, 2, 4, 6, generator=gen),
        timestep=torch.rand(batch, generator=gen) * 1000,
        encoder_hidden_states=torch.randn(batch, 8, 32, generator=gen),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, 16, generator=gen),
        guidance=torch.full((batch,), 6000.0),
    )


def _model(sd: dict[str, torch.Tensor]) -> HunyuanVideoTransformer3D:
    model = HunyuanVideoTransformer3D(TransformerConfig(**KWARGS)).eval()
    model.load_state_dict(sd, strict=True)
    return model


def test_official_names_and_fused_shapes(diffusers_sd):
    off = diffusers_to_official(diffusers_sd)
    assert off["double_blocks.0.img_attn_qkv.weight"].shape == (3 * HIDDEN, HIDDEN)
    assert off["double_blocks.1.txt_attn_qkv.bias"].shape == (3 * HIDDEN,)
    assert off["single_blocks.1.linear1.weight"].shape == (3 * HIDDEN + MLP, HIDDEN)
    assert off["single_blocks.0.linear2.weight"].shape == (HIDDEN, HIDDEN + MLP)
    assert off["txt_in.individual_token_refiner.blocks.1.self_attn_qkv.weight"].shape == (3 * HIDDEN, HIDDEN)
    assert off["img_in.proj.weight"].shape == (HIDDEN, 16, 1, 2, 2)
    for key in ("vector_in.in_layer.weight", "guidance_in.mlp.2.bias", "time_in.mlp.0.weight",
                "txt_in.c_embedder.linear_1.weight", "txt_in.t_embedder.mlp.2.weight",
                "double_blocks.0.img_mod.linear.weight", "single_blocks.0.modulation.linear.bias",
                "single_blocks.0.q_norm.weight", "double_blocks.0.txt_attn_k_norm.weight",
                "final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight"):
        assert key in off, key
    assert not any(k.startswith(("transformer_blocks", "context_embedder", "norm_out")) for k in off)
    # q | k | v | mlp order of the fused single-stream projection; shift | scale of the final adaLN
    linear1 = off["single_blocks.1.linear1.weight"]
    assert torch.equal(linear1[HIDDEN : 2 * HIDDEN], diffusers_sd["single_transformer_blocks.1.attn.to_k.weight"])
    assert torch.equal(linear1[3 * HIDDEN :], diffusers_sd["single_transformer_blocks.1.proj_mlp.weight"])
    final = off["final_layer.adaLN_modulation.1.bias"]
    assert torch.equal(final[:HIDDEN], diffusers_sd["norm_out.linear.bias"][HIDDEN:])  # shift
    assert torch.equal(final[HIDDEN:], diffusers_sd["norm_out.linear.bias"][:HIDDEN])  # scale


def test_round_trips_are_identity(diffusers_sd):
    off = diffusers_to_official(diffusers_sd)
    back = official_to_diffusers(off)
    assert set(back) == set(diffusers_sd)
    assert all(torch.equal(back[k], diffusers_sd[k]) for k in diffusers_sd)
    again = diffusers_to_official(back)
    assert set(again) == set(off)
    assert all(torch.equal(again[k], off[k]) for k in off)


def test_agrees_with_diffusers_converter(diffusers_sd):
    """diffusers' own official->diffusers converter gives the same tensors.

    Its single-stream ``linear1`` split hard-codes hidden size 3072, so those keys (checked by the
    round trip and the output test) are left out here.
    """
    from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers

    off = diffusers_to_official(diffusers_sd)
    off_no_linear1 = {k: v for k, v in off.items() if ".linear1." not in k}
    theirs = convert_hunyuan_video_transformer_to_diffusers(dict(off_no_linear1))
    ours = official_to_diffusers(off_no_linear1)
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_model_from_official_checkpoint_gives_identical_outputs(diffusers_sd, tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": diffusers_to_official(diffusers_sd)}, path)
    loaded = unwrap_official(torch.load(path, map_location="cpu", weights_only=True))
    from_official = _model(official_to_diffusers(loaded))
    from_diffusers = _model(diffusers_sd)
    inputs = _inputs(2, random.randrange(2**31))
    with torch.no_grad():
        assert torch.equal(from_official(**inputs), from_diffusers(**inputs))


def _quantize(official: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Hand-made official FP8 file: block Linear weights as E4M3 with a per-tensor absmax scale."""
    fp8_max = torch.finfo(torch.float8_e4m3fn).max
    quantized, scales = {}, {}
    for key, w in official.items():
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and w.ndim == 2 and module.startswith(("double_blocks", "single_blocks")):
            scale = w.abs().max() / fp8_max
            quantized[key] = (w / scale).to(torch.float8_e4m3fn)
            scales[module] = scale.reshape(1).to(torch.bfloat16).float()  # stored like the official map
        else:
            quantized[key] = w.to(torch.bfloat16)
    return quantized, scales


def test_dequantize_fp8_file(diffusers_sd, tmp_path):
    official = diffusers_to_official(diffusers_sd)
    quantized, scales = _quantize(official)
    torch.save(quantized, tmp_path / "mp_rank_00_model_states_fp8.pt")
    torch.save(scales, tmp_path / "mp_rank_00_model_states_fp8_map.pt")
    sd = torch.load(tmp_path / "mp_rank_00_model_states_fp8.pt", weights_only=True)
    scale_map = torch.load(tmp_path / "mp_rank_00_model_states_fp8_map.pt", weights_only=True)
    # 5 Linears per stream in a double block, 3 in a single block
    assert sum(t.dtype == torch.float8_e4m3fn for t in sd.values()) == 2 * 10 + 2 * 3

    deq = dequantize_fp8(sd, scale_map)
    assert set(deq) == set(official)
    for key, t in deq.items():
        module = key.removesuffix(".weight")
        if module in scale_map:
            assert t.dtype == torch.float32
            assert torch.equal(t, sd[key].float() * scale_map[module])
            assert rel(t, official[key]) < 0.05, key  # E4M3 keeps ~3 mantissa bits
        else:
            assert t is sd[key]  # untouched
    assert all(t.dtype == torch.bfloat16 for t in dequantize_fp8(sd, scale_map, torch.bfloat16).values())

    # the dequantized model runs and stays close to the full-precision one
    model = _model({k: v.float() for k, v in official_to_diffusers(deq).items()})
    inputs = _inputs(1, random.randrange(2**31))
    with torch.no_grad():
        assert rel(model(**inputs), _model(diffusers_sd)(**inputs)) < 0.2


def test_fp8_without_scale_is_an_error(diffusers_sd):
    quantized, scales = _quantize(diffusers_to_official(diffusers_sd))
    del scales["single_blocks.1.linear2"]
    with pytest.raises(CheckpointError, match="single_blocks.1.linear2"):
        dequantize_fp8(quantized, scales)


def test_unknown_keys_are_errors(diffusers_sd):
    off = diffusers_to_official(diffusers_sd)
    with pytest.raises(CheckpointError, match="double_blocks.0.img_attn_qkvx.weight"):
        official_to_diffusers({**off, "double_blocks.0.img_attn_qkvx.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="mystery"):
        diffusers_to_official({**diffusers_sd, "mystery.weight": torch.zeros(1)})
    partial = {k: v for k, v in diffusers_sd.items() if k != "transformer_blocks.0.attn.to_k.weight"}
    with pytest.raises(CheckpointError, match="img_attn_qkv"):
        diffusers_to_official(partial)

