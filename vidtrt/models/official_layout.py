"""Convert the DiT weights of the official Tencent HunyuanVideo release to diffusers' names and back.

Official file: ``transformers/mp_rank_00_model_states.pt`` with the state dict under ``"module"``
(see :func:`unwrap_official`). Layout differences, besides names:
  * fused projections: ``img_attn_qkv`` / ``txt_attn_qkv`` / refiner ``self_attn_qkv`` = cat(q, k, v)
    on dim 0; single-stream ``linear1`` = cat(q, k, v, mlp_in) on dim 0;
  * ``final_layer.adaLN_modulation.1`` produces (shift, scale), diffusers' ``norm_out.linear``
    (scale, shift): the two halves are swapped.
Weight-only FP8 files (``..._fp8.pt`` + ``..._fp8_map.pt``) are dequantized by :func:`dequantize_fp8`
before conversion (the map uses official module names).

All functions are pure: they return new dicts and never modify their input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from vidtrt.errors import CheckpointError

# Top-level modules: official -> diffusers (parameters ".weight"/".bias" follow the module name).
_TOP = {
    "img_in.proj": "x_embedder.proj",
    "time_in.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.mlp.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.mlp.2": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_FINAL_ADALN = ("final_layer.adaLN_modulation.1", "norm_out.linear")  # halves swapped

# Repeated blocks: (official prefix, diffusers prefix, renamed submodules, fused submodules).
# A fused official module is the dim-0 concatenation of the listed diffusers modules; None in the
# list means "the remainder" (the MLP input of single-stream linear1, whose width is not 3 x hidden).
_BLOCKS = [
    (
        "double_blocks",
        "transformer_blocks",
        {
            "img_mod.linear": "norm1.linear",
            "txt_mod.linear": "norm1_context.linear",
            "img_attn_q_norm": "attn.norm_q",
            "img_attn_k_norm": "attn.norm_k",
            "txt_attn_q_norm": "attn.norm_added_q",
            "txt_attn_k_norm": "attn.norm_added_k",
            "img_attn_proj": "attn.to_out.0",
            "txt_attn_proj": "attn.to_add_out",
            "img_mlp.fc1": "ff.net.0.proj",
            "img_mlp.fc2": "ff.net.2",
            "txt_mlp.fc1": "ff_context.net.0.proj",
            "txt_mlp.fc2": "ff_context.net.2",
        },
        {
            "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
            "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
        },
    ),
    (
        "single_blocks",
        "single_transformer_blocks",
        {
            "linear2": "proj_out",
            "q_norm": "attn.norm_q",
            "k_norm": "attn.norm_k",
            "modulation.linear": "norm.linear",
        },
        {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")},
    ),
    (
        "txt_in.individual_token_refiner.blocks",
        "context_embedder.token_refiner.refiner_blocks",
        {
            "norm1": "norm1",
            "norm2": "norm2",
            "self_attn_proj": "attn.to_out.0",
            "mlp.fc1": "ff.net.0.proj",
            "mlp.fc2": "ff.net.2",
            "adaLN_modulation.1": "norm_out.linear",
        },
        {"self_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v")},
    ),
]


def unwrap_official(obj: Mapping) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded official ``.pt`` (under "module", "model" or "state_dict")."""
    for key in ("module", "model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            return dict(obj[key])
    return dict(obj)


def _split_param(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    if param not in ("weight", "bias") or not module:
        raise CheckpointError(f"unexpected parameter {key!r} in DiT checkpoint; accepted: '<module>.weight|bias'")
    return module, param


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat((b, a), dim=0)


def _match_block(module: str, prefix: str) -> tuple[str, str] | None:
    m = re.fullmatch(re.escape(prefix) + r"\.(\d+)\.(.+)", module)
    return (m.group(1), m.group(2)) if m else None


def official_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official HunyuanVideo DiT state dict -> diffusers ``HunyuanVideoTransformer3DModel`` names.

    Raises CheckpointError on a key it does not know (so a wrong file fails loudly, by name).
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        module, param = _split_param(key)
        if module in _TOP:
            out[f"{_TOP[module]}.{param}"] = tensor
            continue
        if module == _FINAL_ADALN[0]:
            out[f"{_FINAL_ADALN[1]}.{param}"] = _swap_halves(tensor)
            continue
        for off_prefix, dif_prefix, renames, fused in _BLOCKS:
            hit = _match_block(module, off_prefix)
            if hit is None:
                continue
            index, sub = hit
            base = f"{dif_prefix}.{index}"
            if sub in renames:
                out[f"{base}.{renames[sub]}.{param}"] = tensor
            elif sub in fused:
                parts = fused[sub]
                if parts[-1] == "proj_mlp":  # linear1: q, k, v of width hidden, then the MLP input
                    hidden = _hidden_size(sd, module)
                    sizes = [hidden, hidden, hidden, tensor.shape[0] - 3 * hidden]
                    if sizes[-1] <= 0:
                        raise CheckpointError(f"{key}: {tuple(tensor.shape)} too small for q, k, v of width {hidden}")
                    pieces = torch.split(tensor, sizes, dim=0)
                else:
                    if tensor.shape[0] % len(parts):
                        raise CheckpointError(f"{key}: dim 0 ({tensor.shape[0]}) is not a multiple of {len(parts)}")
                    pieces = tensor.chunk(len(parts), dim=0)
                for name, piece in zip(parts, pieces, strict=True):
                    out[f"{base}.{name}.{param}"] = piece
            else:
                raise CheckpointError(f"unknown official DiT parameter {key!r}")
            break
        else:
            raise CheckpointError(f"unknown official DiT parameter {key!r}")
    return out


def _hidden_size(sd: Mapping[str, torch.Tensor], module: str) -> int:
    """Model width of a single-stream block, from its ``linear2`` (out = hidden) or linear1 input."""
    prefix = module.rpartition(".")[0]
    for key, dim in ((f"{prefix}.linear2.weight", 0), (f"{prefix}.linear2.bias", 0), (f"{module}.weight", 1)):
        if key in sd:
            return int(sd[key].shape[dim])
    raise CheckpointError(f"cannot infer the hidden size of {module!r}: no linear2 or linear1 weight")


def diffusers_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``HunyuanVideoTransformer3DModel`` state dict -> official HunyuanVideo names (inverse)."""
    top = {v: k for k, v in _TOP.items()}
    out: dict[str, torch.Tensor] = {}
    # Fused groups: (official key) -> {part name: tensor}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    group_parts: dict[str, tuple[str, ...]] = {}
    for key, tensor in sd.items():
        module, param = _split_param(key)
        if module in top:
            out[f"{top[module]}.{param}"] = tensor
            continue
        if module == _FINAL_ADALN[1]:
            out[f"{_FINAL_ADALN[0]}.{param}"] = _swap_halves(tensor)
            continue
        for off_prefix, dif_prefix, renames, fused in _BLOCKS:
            hit = _match_block(module, dif_prefix)
            if hit is None:
                continue
            index, sub = hit
            base = f"{off_prefix}.{index}"
            inverse = {v: k for k, v in renames.items()}
            if sub in inverse:
                out[f"{base}.{inverse[sub]}.{param}"] = tensor
                break
            owner = next((name for name, parts in fused.items() if sub in parts), None)
            if owner is None:
                raise CheckpointError(f"unknown diffusers DiT parameter {key!r}")
            fused_key = f"{base}.{owner}.{param}"
            groups.setdefault(fused_key, {})[sub] = tensor
            group_parts[fused_key] = fused[owner]
            break
        else:
            raise CheckpointError(f"unknown diffusers DiT parameter {key!r}")
    for fused_key, pieces in groups.items():
        parts = group_parts[fused_key]
        missing = [p for p in parts if p not in pieces]
        if missing:
            raise CheckpointError(f"cannot build {fused_key!r}: missing {missing}")
        out[fused_key] = torch.cat([pieces[p] for p in parts], dim=0)
    return out


def dequantize_fp8(
    sd: Mapping[str, torch.Tensor],
    scale_map: Mapping[str, torch.Tensor | float],
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Dequantize the official weight-only FP8 (E4M3) DiT: ``w = (w_fp8.float() * scale).to(dtype)``.

    The official runtime (``hyvideo/modules/fp8_optimization.py``) computes the same product in the
    compute dtype after rounding the scale to it (``w.to(bf16) * scale.to(bf16)``); computing in
    float32 and rounding once differs from that by at most one bf16 ulp.

    Args:
        sd: official state dict from ``..._fp8.pt``; float8_e4m3fn tensors are the quantized Linear
            weights of ``double_blocks`` / ``single_blocks``, everything else is stored as is.
        scale_map: ``..._fp8_map.pt``: official *module* name (e.g. ``double_blocks.0.img_attn_qkv``)
            -> per-tensor scale (0-d or 1-element tensor). A full parameter name is accepted too.
        dtype: dtype of the dequantized weights (other tensors are returned unchanged).
    Returns:
        A new state dict in the official layout with no float8 tensors.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if tensor.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
            out[key] = tensor
            continue
        module = key.removesuffix(".weight")
        scale = scale_map.get(module, scale_map.get(key))
        if scale is None:
            raise CheckpointError(f"FP8 tensor {key!r} has no scale in the fp8 map (looked up {module!r})")
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if scale.numel() != 1:
            raise CheckpointError(
                f"fp8 scale of {module!r} must be per-tensor (1 value), got shape {tuple(scale.shape)}"
            )
        out[key] = (tensor.to(torch.float32) * scale.reshape(())).to(dtype)
    return out
