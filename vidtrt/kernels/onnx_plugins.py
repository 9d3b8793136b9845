"""ONNX export flavour whose graph carries the TensorRT plugin nodes instead of decomposed ops.

Pieces:
  * torch custom ops ``torch.ops.vidtrt.{qk_norm_rope, qk_norm_rope_fp8, attention, attention_fp8}``
    (eager: the Triton kernels on CUDA, the torch references on CPU; fake impls for export);
  * ONNX schemas + translations: each op becomes one node ``<name>`` in domain ``trt.plugins``
    with ``plugin_namespace="vidtrt"``, ``plugin_version="1"``, ``aot=1`` (TensorRT's ONNX parser
    maps such a node to the quickly deployable plugin of ``kernels/trt_plugins.py``);
  * the flavour switch: ``plugin_flavour()`` routes the DiT's ``qk_norm_rope`` and ``attention``
    through the custom ops (attention backends ``trt-plugin`` / ``trt-plugin-fp8``);
  * ``export_onnx(..., flavour="plugin" | "plugin-fp8" | "decomposed")``;
  * ``reference_functions()``: the plugins' math as ONNX model-local functions (exported from the
    torch references). Attached to a plugin graph they let ONNX Runtime run it, which checks the
    plugin nodes' wiring on CPU; never attach them to a graph meant for TensorRT.

The FP8 flavour quantizes in the graph (per-(batch, head) absmax scales of q and smoothed k,
per-channel absmax of v, v transposed to [B, H, D, S16] before the cast, tokens zero-padded to a
multiple of 16 so that the kernel's V rows are 16-byte aligned) and calls the
``attention_fp8`` plugin; the norm + RoPE stays the bf16 plugin there, because the DiT joins text
and image q/k before attention. ``qk_norm_rope_fp8`` is for graphs that feed the rotated q/k to
attention directly (static scale: ``safe_fp8_scale``).
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterator
from typing import Any

import onnx
import torch
from onnx.defs import OpSchema

from .reference import (
    FP8_DTYPE,
    FP8_MAX,
    attention_reference,
    key_padding_mask,
    qk_norm_rope_reference,
)

PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_NAMESPACE = "vidtrt"
PLUGIN_VERSION = "1"
PLUGIN_ATTRS = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION, "aot": 1}
FP8_OPSET = 21  # Cast to FLOAT8E4M3FN needs >= 19

# op name -> (inputs with type var, outputs with type var, extra attributes)
_FLOAT = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
SCHEMAS: dict[str, dict[str, Any]] = {
    "qk_norm_rope": {
        "inputs": [("q", "T"), ("k", "T"), ("weight_q", "W"), ("weight_k", "W"), ("cos", "F"), ("sin", "F")],
        "outputs": [("q_out", "T"), ("k_out", "T")],
        "attrs": {"eps": OpSchema.AttrType.FLOAT},
    },
    "qk_norm_rope_fp8": {
        "inputs": [("q", "T"), ("k", "T"), ("weight_q", "W"), ("weight_k", "W"), ("cos", "F"), ("sin", "F"),
                   ("q_scale", "F"), ("k_scale", "F")],
        "outputs": [("q_out", "Q"), ("k_out", "Q")],
        "attrs": {"eps": OpSchema.AttrType.FLOAT},
    },  # fmt: skip
    "attention": {
        "inputs": [("q", "T"), ("k", "T"), ("v", "T"), ("key_lengths", "I")],
        "outputs": [("out", "T")],
        "attrs": {},
    },
    "attention_fp8": {
        "inputs": [("q8", "Q"), ("k8", "Q"), ("v8t", "Q"), ("q_scale", "F"), ("k_scale", "F"), ("v_scale", "F"),
                   ("key_lengths", "I")],
        "outputs": [("out", "O")],
        "attrs": {},
    },  # fmt: skip
    # block-sparse (sliding-tile): the layout as three int32 tensors (graph inputs of the STA export)
    "attention_sta": {
        "inputs": [("q", "T"), ("k", "T"), ("v", "T"), ("key_lengths", "I"), ("kv_idx", "I"), ("kv_cnt", "I"),
                   ("kv_end", "I")],
        "outputs": [("out", "T")],
        "attrs": {},
    },  # fmt: skip
    "attention_sta_fp8": {
        "inputs": [("q8", "Q"), ("k8", "Q"), ("v8t", "Q"), ("q_scale", "F"), ("k_scale", "F"), ("v_scale", "F"),
                   ("key_lengths", "I"), ("kv_idx", "I"), ("kv_cnt", "I"), ("kv_end", "I")],
        "outputs": [("out", "O")],
        "attrs": {},
    },  # fmt: skip
}
_TYPE_CONSTRAINTS = {
    "T": _FLOAT,
    "W": _FLOAT,
    "F": ["tensor(float)"],
    "I": ["tensor(int32)"],
    "Q": ["tensor(float8e4m3fn)"],
    "O": ["tensor(bfloat16)"],
}


def register_onnx_schemas() -> None:
    """Register the plugin ops' schemas in domain ``trt.plugins`` (needed by onnxscript; idempotent)."""
    fp = OpSchema.FormalParameter
    for name, sch in SCHEMAS.items():
        if onnx.defs.has(name, PLUGIN_DOMAIN):
            continue
        used = sorted({t for _, t in sch["inputs"] + sch["outputs"]})
        attrs = [OpSchema.Attribute(a, t, a) for a, t in sch["attrs"].items()]
        attrs += [
            OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
            OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version"),
            OpSchema.Attribute("aot", OpSchema.AttrType.INT, "1: use the ahead-of-time implementation"),
        ]
        onnx.defs.register_schema(
            OpSchema(
                name, PLUGIN_DOMAIN, 1, doc=f"vidtrt TensorRT plugin {name}",
                inputs=[fp(n, t) for n, t in sch["inputs"]], outputs=[fp(n, t) for n, t in sch["outputs"]],
                type_constraints=[(t, _TYPE_CONSTRAINTS[t], t) for t in used], attributes=attrs,
            )  # fmt: skip
        )


# ----------------------------------------------------------------------------------------------
# torch custom ops
# ----------------------------------------------------------------------------------------------
Tensor = torch.Tensor


@torch.library.custom_op("vidtrt::qk_norm_rope", mutates_args=())
def qk_norm_rope_op(
    q: Tensor, k: Tensor, weight_q: Tensor, weight_k: Tensor, cos: Tensor, sin: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    n = cos.shape[0]
    if q.is_cuda:
        from .rope import fused_qk_norm_rope

        return fused_qk_norm_rope(q, k, weight_q, weight_k, cos.float().contiguous(), sin.float().contiguous(), n, eps)
    return qk_norm_rope_reference(q, k, weight_q, weight_k, cos, sin, n, eps)


@qk_norm_rope_op.register_fake
def _(q, k, weight_q, weight_k, cos, sin, eps):
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format
    )


@torch.library.custom_op("vidtrt::qk_norm_rope_fp8", mutates_args=())
def qk_norm_rope_fp8_op(
    q: Tensor, k: Tensor, weight_q: Tensor, weight_k: Tensor, cos: Tensor, sin: Tensor, q_scale: Tensor,
    k_scale: Tensor, eps: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    n = cos.shape[0]
    if q.is_cuda:
        from .rope import fused_qk_norm_rope

        return fused_qk_norm_rope(q, k, weight_q, weight_k, cos.float().contiguous(), sin.float().contiguous(), n,
                                  eps, fp8_scale=(q_scale, k_scale))  # fmt: skip
    return qk_norm_rope_reference(q, k, weight_q, weight_k, cos, sin, n, eps, fp8_scale=(q_scale, k_scale))


@qk_norm_rope_fp8_op.register_fake
def _(q, k, weight_q, weight_k, cos, sin, q_scale, k_scale, eps):
    return q.new_empty(q.shape, dtype=FP8_DTYPE), k.new_empty(k.shape, dtype=FP8_DTYPE)


@torch.library.custom_op("vidtrt::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor) -> Tensor:
    if q.is_cuda:
        from .attention import flash_attention

        return flash_attention(q, k, v, key_lengths)
    return attention_reference(q, k, v, key_lengths, compute_dtype=torch.float32).to(q.dtype)


@attention_op.register_fake
def _(q, k, v, key_lengths):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _dequant_attention(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths):
    q = q8.float() * q_scale[:, None, :, None]
    k = k8.float() * k_scale[:, None, :, None]
    v = (v8t[..., : k8.shape[1]].float() * v_scale[..., None]).permute(0, 3, 1, 2)  # [B,H,D,S16] -> [B,S,H,D]
    return attention_reference(q, k, v, key_lengths, compute_dtype=torch.float32).to(torch.bfloat16)


@torch.library.custom_op("vidtrt::attention_fp8", mutates_args=())
def attention_fp8_op(
    q8: Tensor, k8: Tensor, v8t: Tensor, q_scale: Tensor, k_scale: Tensor, v_scale: Tensor, key_lengths: Tensor
) -> Tensor:
    if q8.is_cuda:
        from .attention_fp8 import flash_attention_fp8

        v8 = v8t[..., : k8.shape[1]].permute(0, 3, 1, 2)
        return flash_attention_fp8(q8, k8, v8, key_lengths, q_scale=q_scale, k_scale=k_scale,
                                   v_scale=v_scale, out_dtype=torch.bfloat16)  # fmt: skip
    return _dequant_attention(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths)


@attention_fp8_op.register_fake
def _(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths):
    return q8.new_empty(q8.shape, dtype=torch.bfloat16)


def _layout(kv_idx: Tensor, kv_cnt: Tensor, kv_end: Tensor, seq_len: int):
    from vidtrt.config.sparse_attention import PLUGIN_BLOCKS

    from .sparse_layout import BlockSparseLayout

    return BlockSparseLayout(kv_idx, kv_cnt, kv_end, *PLUGIN_BLOCKS, seq_len)


@torch.library.custom_op("vidtrt::attention_sta", mutates_args=())
def attention_sta_op(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor, kv_idx: Tensor, kv_cnt: Tensor,
                     kv_end: Tensor) -> Tensor:
    layout = _layout(kv_idx, kv_cnt, kv_end, q.shape[1])
    if q.is_cuda:
        from .block_sparse import block_sparse_attention

        return block_sparse_attention(q, k, v, layout, key_lengths)
    from .sparse_layout import block_sparse_reference

    return block_sparse_reference(q, k, v, layout, key_lengths, compute_dtype=torch.float32).to(q.dtype)


@attention_sta_op.register_fake
def _(q, k, v, key_lengths, kv_idx, kv_cnt, kv_end):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("vidtrt::attention_sta_fp8", mutates_args=())
def attention_sta_fp8_op(q8: Tensor, k8: Tensor, v8t: Tensor, q_scale: Tensor, k_scale: Tensor, v_scale: Tensor,
                         key_lengths: Tensor, kv_idx: Tensor, kv_cnt: Tensor, kv_end: Tensor) -> Tensor:
    layout = _layout(kv_idx, kv_cnt, kv_end, q8.shape[1])
    if q8.is_cuda:
        from .block_sparse import block_sparse_attention_fp8

        v8 = v8t[..., : k8.shape[1]].permute(0, 3, 1, 2)
        return block_sparse_attention_fp8(q8, k8, v8, layout, key_lengths, q_scale=q_scale, k_scale=k_scale,
                                          v_scale=v_scale, out_dtype=torch.bfloat16)  # fmt: skip
    from .sparse_layout import block_sparse_reference

    q = q8.float() * q_scale[:, None, :, None]
    k = k8.float() * k_scale[:, None, :, None]
    v = (v8t[..., : k8.shape[1]].float() * v_scale[..., None]).permute(0, 3, 1, 2)
    return block_sparse_reference(q, k, v, layout, key_lengths, compute_dtype=torch.float32).to(torch.bfloat16)


@attention_sta_fp8_op.register_fake
def _(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, kv_idx, kv_cnt, kv_end):
    return q8.new_empty(q8.shape, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# ONNX translations
# ----------------------------------------------------------------------------------------------
def custom_translation_table() -> dict:
    """``torch.onnx.export(..., dynamo=True, custom_translation_table=...)`` entries of the plugin ops."""
    import onnxscript

    register_onnx_schemas()
    plug = onnxscript.values.Opset(PLUGIN_DOMAIN, 1)

    def rope(q, k, weight_q, weight_k, cos, sin, eps: float):
        return plug.qk_norm_rope(q, k, weight_q, weight_k, cos, sin, eps=eps, **PLUGIN_ATTRS, _outputs=2)

    def rope_fp8(q, k, weight_q, weight_k, cos, sin, q_scale, k_scale, eps: float):
        return plug.qk_norm_rope_fp8(q, k, weight_q, weight_k, cos, sin, q_scale, k_scale, eps=eps, **PLUGIN_ATTRS,
                                     _outputs=2)  # fmt: skip

    def attn(q, k, v, key_lengths):
        return plug.attention(q, k, v, key_lengths, **PLUGIN_ATTRS)

    def attn_fp8(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths):
        return plug.attention_fp8(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, **PLUGIN_ATTRS)

    def attn_sta(q, k, v, key_lengths, kv_idx, kv_cnt, kv_end):
        return plug.attention_sta(q, k, v, key_lengths, kv_idx, kv_cnt, kv_end, **PLUGIN_ATTRS)

    def attn_sta_fp8(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, kv_idx, kv_cnt, kv_end):
        return plug.attention_sta_fp8(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, kv_idx, kv_cnt, kv_end,
                                      **PLUGIN_ATTRS)  # fmt: skip

    ops = torch.ops.vidtrt
    return {
        ops.qk_norm_rope.default: rope,
        ops.qk_norm_rope_fp8.default: rope_fp8,
        ops.attention.default: attn,
        ops.attention_fp8.default: attn_fp8,
        ops.attention_sta.default: attn_sta,
        ops.attention_sta_fp8.default: attn_sta_fp8,
    }


# ----------------------------------------------------------------------------------------------
# Flavour switch for the DiT (vidtrt.models.rope / vidtrt.models.attention hooks)
# ----------------------------------------------------------------------------------------------
def _full_lengths(key_lengths: Tensor | None, q: Tensor, k: Tensor) -> Tensor:
    if key_lengths is None:
        return torch.full((q.shape[0],), k.shape[1], dtype=torch.int32, device=q.device)
    return key_lengths.to(torch.int32)


def attention_plugin_backend(q, k, v, key_lengths):
    """Attention backend ``trt-plugin``: one ``vidtrt::attention`` node."""
    return torch.ops.vidtrt.attention(q, k, v, _full_lengths(key_lengths, q, k))


def quantize_for_fp8_plugin(q: Tensor, k: Tensor, v: Tensor):
    """In-graph FP8 quantization for ``vidtrt::attention_fp8``: (q8, k8, v8t, q_scale [B,H],
    k_scale [B,H], v_scale [B,H,D]); k is smoothed (token mean removed) first. v8t is [B, H, D, S16]
    (tokens zero-padded to a multiple of 16: the kernel's V rows are 16-byte aligned)."""
    qf, kf = q.float(), k.float()
    kf = kf - kf.mean(dim=1, keepdim=True)
    q_scale = (qf.abs().amax(dim=(1, 3)) / FP8_MAX).clamp_min(1e-12)
    k_scale = (kf.abs().amax(dim=(1, 3)) / FP8_MAX).clamp_min(1e-12)
    q8 = (qf / q_scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    k8 = (kf / k_scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    vt = v.float().permute(0, 2, 3, 1)  # [B, H, D, S]: transpose before the cast
    v_scale = (vt.abs().amax(dim=-1) / FP8_MAX).clamp_min(1e-12)
    vt = torch.nn.functional.pad(vt, (0, (-v.shape[1]) % 16))
    v8t = (vt / v_scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q8, k8, v8t, q_scale, k_scale, v_scale


def attention_fp8_plugin_backend(q, k, v, key_lengths):
    """Attention backend ``trt-plugin-fp8``: in-graph quantization + one ``vidtrt::attention_fp8`` node."""
    q8, k8, v8t, qs, ks, vs = quantize_for_fp8_plugin(q, k, v)
    out = torch.ops.vidtrt.attention_fp8(q8, k8, v8t, qs, ks, vs, _full_lengths(key_lengths, q, k))
    return out.to(q.dtype)


def attention_sta_plugin_backend(q, k, v, key_lengths):
    """Attention backend ``trt-plugin-sta``: one ``vidtrt::attention_sta`` node inside a DiT block of the
    sliding-tile plugin graph (layout tensors current, ``sparse_layout.layout_tensors``), else ``attention``."""
    from .sparse_layout import current_layout_tensors

    layout = current_layout_tensors()
    if layout is None:
        return attention_plugin_backend(q, k, v, key_lengths)
    return torch.ops.vidtrt.attention_sta(q, k, v, _full_lengths(key_lengths, q, k), *layout)


def attention_sta_fp8_plugin_backend(q, k, v, key_lengths):
    """Attention backend ``trt-plugin-sta-fp8``: in-graph quantization + ``vidtrt::attention_sta_fp8`` (the
    token refiner: ``attention_fp8``)."""
    from .sparse_layout import current_layout_tensors

    layout = current_layout_tensors()
    if layout is None:
        return attention_fp8_plugin_backend(q, k, v, key_lengths)
    q8, k8, v8t, qs, ks, vs = quantize_for_fp8_plugin(q, k, v)
    out = torch.ops.vidtrt.attention_sta_fp8(q8, k8, v8t, qs, ks, vs, _full_lengths(key_lengths, q, k), *layout)
    return out.to(q.dtype)


def quantized_attention_fp8_plugin(q, k, v, key_lengths, q_quantizer, k_quantizer, v_quantizer, softmax_quantizer):
    """Drop-in for ``vidtrt.models.attention.quantized_attention`` in the FP8 Q/DQ graph (flavour
    ``plugin-qdq-fp8``): q, k, v quantized with the calibrated per-tensor scales (``vidtrt::fp8_quantize``, one
    ``QuantizeLinear`` each once lowered; v transposed to [B, H, D, S16] and zero-padded first) and one
    ``vidtrt::attention_fp8`` node. The softmax quantizer is not used: the kernel quantizes P itself as
    fp8(P * 448) against its running row max (= a softmax amax of 1); the result is cast back to q's dtype."""
    from vidtrt.models.fp8 import fp8_quantize

    for name, qz in (("q", q_quantizer), ("k", k_quantizer), ("v", v_quantizer)):
        if getattr(qz, "scale", None) is None or qz.scale.ndim != 0:
            raise ValueError(f"the FP8 attention plugin takes per-tensor {name} scales; the {name} quantizer has "
                             f"{getattr(qz, 'scale', None)!r}")
    b, s, h, d = q.shape
    q8 = fp8_quantize(q, q_quantizer.scale)
    k8 = fp8_quantize(k, k_quantizer.scale)
    vt = torch.nn.functional.pad(v.permute(0, 2, 3, 1), (0, (-s) % 16))  # [B, H, D, S16]
    v8t = fp8_quantize(vt, v_quantizer.scale)
    ones = q.new_ones((b, h), dtype=torch.float32)
    out = torch.ops.vidtrt.attention_fp8(q8, k8, v8t, ones * q_quantizer.scale, ones * k_quantizer.scale,
                                         ones[..., None].expand(b, h, d) * v_quantizer.scale,
                                         _full_lengths(key_lengths, q, k))  # fmt: skip
    return out.to(q.dtype)


def qk_norm_rope_plugin(q, k, norm_q, norm_k, cos, sin, num_image_tokens):
    """Drop-in for ``vidtrt.models.rope.qk_norm_rope``: one ``vidtrt::qk_norm_rope`` node."""
    eps = float(getattr(norm_q, "eps", 1e-6))
    cos = cos[:num_image_tokens]
    sin = sin[:num_image_tokens]
    return torch.ops.vidtrt.qk_norm_rope(q, k, norm_q.weight, norm_k.weight, cos, sin, eps)


def _register_backends() -> None:
    from vidtrt.models.attention import register_backend

    register_backend("trt-plugin", attention_plugin_backend)
    register_backend("trt-plugin-fp8", attention_fp8_plugin_backend)
    register_backend("trt-plugin-sta", attention_sta_plugin_backend)
    register_backend("trt-plugin-sta-fp8", attention_sta_fp8_plugin_backend)


_register_backends()

FLAVOURS = ("decomposed", "plugin", "plugin-fp8")  # for any module (export_onnx)
# for the DiT's graphs: the sliding-tile graph (vidtrt.export.sta_onnx) and the FP8 Q/DQ graph's attention
DIT_FLAVOURS = ("plugin-sta", "plugin-sta-fp8", "plugin-qdq-fp8")
_FLAVOUR_BACKENDS = {"plugin": "trt-plugin", "plugin-fp8": "trt-plugin-fp8", "plugin-sta": "trt-plugin-sta",
                     "plugin-sta-fp8": "trt-plugin-sta-fp8"}


@contextlib.contextmanager
def plugin_flavour(flavour: str = "plugin") -> Iterator[None]:
    """Within the block the DiT's norm+RoPE and attention go through the plugin custom ops
    (``decomposed``: the PyTorch code; ``plugin``; ``plugin-fp8``: FP8 attention plugin; ``plugin-sta`` /
    ``plugin-sta-fp8``: the block-sparse plugins inside the DiT blocks of a sliding-tile graph, whose layout
    tensors ``vidtrt.models.sparse_tiles.GraphTilePlan`` makes current, the dense ones elsewhere)."""
    from vidtrt.models import attention as attn_api
    from vidtrt.models import rope as rope_api

    if flavour not in FLAVOURS + DIT_FLAVOURS:
        raise ValueError(f"flavour={flavour!r}: accepted {', '.join(FLAVOURS + DIT_FLAVOURS)}")
    quantized = None
    if flavour == "decomposed":
        backend, rope_impl = "sdpa", None
    elif flavour == "plugin-qdq-fp8":
        # the FP8 Q/DQ graph (float32 between its Q/DQ): only its quantized attention becomes a plugin node;
        # the norm + RoPE plugin takes bf16 / fp16 only, so it stays decomposed there
        backend, rope_impl, quantized = "sdpa", None, quantized_attention_fp8_plugin
    else:
        backend = _FLAVOUR_BACKENDS[flavour]
        rope_impl = qk_norm_rope_plugin
    with (attn_api.use_backend(backend), rope_api.use_qk_norm_rope_impl(rope_impl),
          attn_api.use_quantized_attention_impl(quantized)):
        yield


def export_onnx(module: torch.nn.Module, args: tuple, flavour: str = "plugin", path: str | None = None,
                dynamic_shapes: Any = None, opset_version: int | None = None, **kwargs) -> onnx.ModelProto:
    """Dynamo ONNX export of ``module`` in one flavour; returns the ModelProto (and saves it to ``path``)."""
    opset = opset_version or (FP8_OPSET if flavour.endswith("fp8") else 18)
    with plugin_flavour(flavour), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        prog = torch.onnx.export(
            module, args, dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=opset,
            custom_translation_table=custom_translation_table() if flavour != "decomposed" else None,
            verbose=False, **kwargs,
        )  # fmt: skip
    model = prog.model_proto
    if path:
        onnx.save(model, path)
    return model


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == PLUGIN_DOMAIN]


# ----------------------------------------------------------------------------------------------
# Reference ONNX functions (for ONNX Runtime checks of plugin graphs on CPU)
# ----------------------------------------------------------------------------------------------
# Each function is the export of a torch module below, traced with every size symbolic (batch, tokens, heads,
# head dim, image tokens, layout sizes), so that nothing of the small example is baked into the function: the
# softmax scale 1/sqrt(D) is computed from q's last dimension in the graph, ``eps`` is the calling node's
# attribute (the traced ``eps`` input becomes a Constant referencing the function attribute), and T-typed
# outputs take the type of the node's first input (the example is float16; its output casts become CastLike).
_EXAMPLE_DTYPE = torch.float16
_ATTR_INPUTS = {"eps": ("value_float", onnx.AttributeProto.FLOAT)}  # traced input -> Constant of node attribute


def _softmax_scale(q: Tensor):
    return q.shape[-1] ** -0.5  # symbolic at export: Shape -> Gather -> ... (not a constant)


def _norm_rope(x, w, cos, sin, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
    n = cos.shape[0]
    img = xf[:, :n]
    pairs = img.unflatten(-1, (-1, 2))
    rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    img = img * cos[None, :, None, :] + rot * sin[None, :, None, :]
    return torch.cat((img, xf[:, n:]), dim=1)


class _RopeRef(torch.nn.Module):
    def forward(self, q, k, weight_q, weight_k, cos, sin, eps):  # eps: 0-d float32 (the node's attribute)
        return (_norm_rope(q, weight_q, cos, sin, eps).to(q.dtype),
                _norm_rope(k, weight_k, cos, sin, eps).to(k.dtype))  # fmt: skip


class _RopeFp8Ref(torch.nn.Module):
    def forward(self, q, k, weight_q, weight_k, cos, sin, q_scale, k_scale, eps):
        return tuple((_norm_rope(x, w, cos, sin, eps) / s[None, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
                     .to(FP8_DTYPE) for x, w, s in ((q, weight_q, q_scale), (k, weight_k, k_scale)))


class _AttnRef(torch.nn.Module):
    def __init__(self, fp8: bool):
        super().__init__()
        self.fp8 = fp8

    def forward(self, q, k, v, q_scale_or_lengths, k_scale=None, v_scale=None, key_lengths=None):
        if self.fp8:
            q = q.float() * q_scale_or_lengths[:, None, :, None]
            k = k.float() * k_scale[:, None, :, None]
            # [B,H,D,S16] -> [B,S,H,D]; cast first (ONNX Slice takes no float8 before opset 23)
            v = (v.float()[..., : k.shape[1]] * v_scale[..., None]).permute(0, 3, 1, 2)
            out_dtype = torch.bfloat16
        else:
            key_lengths = q_scale_or_lengths
            out_dtype = q.dtype
        qf, kf, vf = q.float(), k.float(), v.float()
        scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * _softmax_scale(qf)
        keep = key_padding_mask(key_lengths, q.shape[0], k.shape[1], q.device)
        bias = torch.where(keep, torch.zeros((), device=q.device), torch.full((), float("-inf"), device=q.device))
        p = torch.softmax(scores + bias[:, None, None, :], dim=-1)
        return torch.einsum("bhqk,bkhd->bqhd", p, vf).to(out_dtype)


class _StaRef(torch.nn.Module):
    """attention_sta(_fp8) written out: dense attention masked by the layout (128 x 64 blocks: the plugins'
    compiled block sizes, not the example's), per-sample key lengths; a query that sees no key (padding rows)
    gives zeros, as the kernels do. The layout has one entry per head or one for all heads (Hl = 1)."""

    def __init__(self, fp8: bool):
        super().__init__()
        self.fp8 = fp8

    def forward(self, q, k, v, a3, a4, a5, a6, a7=None, a8=None, a9=None):
        from vidtrt.config.sparse_attention import PLUGIN_BLOCKS

        if self.fp8:
            q_scale, k_scale, v_scale, key_lengths, kv_idx, kv_cnt, kv_end = a3, a4, a5, a6, a7, a8, a9
            q = q.float() * q_scale[:, None, :, None]
            k = k.float() * k_scale[:, None, :, None]
            v = (v.float()[..., : k.shape[1]] * v_scale[..., None]).permute(0, 3, 1, 2)
            out_dtype = torch.bfloat16
        else:
            key_lengths, kv_idx, kv_cnt, kv_end = a3, a4, a5, a6
            out_dtype = q.dtype
        bm, bn = PLUGIN_BLOCKS
        dev = q.device
        pos = torch.arange(q.shape[1], device=dev)
        listed = torch.arange(kv_idx.shape[2], device=dev)[None, None, :] < kv_cnt[..., 1:2]  # [Hl, NQB, MAXK]
        blocks = torch.arange(kv_end.shape[0], device=dev)
        block_ok = ((kv_idx[..., None] == blocks) & listed[..., None]).any(2)  # [Hl, NQB, NKB]
        # head h reads layout entry h % Hl (Hl = H or 1; a broadcast would make the exporter specialise Hl).
        # Hl as a tensor: the exporter has no remainder by a symbolic int
        num_layouts = torch.ones_like(kv_cnt[:, 0, 0], dtype=torch.int64).sum()
        block_ok = block_ok.index_select(0, torch.arange(q.shape[2], device=dev) % num_layouts)
        allowed = block_ok.index_select(1, pos // bm).index_select(2, pos // bn)  # [H, S, S]
        key_ok = (pos < kv_end.index_select(0, pos // bn))[None, :] & (pos[None, :] < key_lengths[:, None])
        keep = allowed[None] & key_ok[:, None, None, :]  # [B, H, S, S]
        qf, kf, vf = q.float(), k.float(), v.float()
        scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * _softmax_scale(qf)
        scores = scores.masked_fill(~keep, float("-inf"))
        p = torch.where(keep.any(-1, keepdim=True), torch.softmax(scores, dim=-1), torch.zeros((), device=dev))
        return torch.einsum("bhqk,bkhd->bqhd", p, vf).to(out_dtype)


def _graph_to_function(model: onnx.ModelProto, name: str, attrs: list[str]) -> onnx.FunctionProto:
    graph_inputs = [i.name for i in model.graph.input]
    first = graph_inputs[0]
    nodes = []
    for init in model.graph.initializer:
        nodes.append(onnx.helper.make_node("Constant", [], [init.name], value=init))
    for inp in graph_inputs:
        if inp in _ATTR_INPUTS:
            kind, attr_type = _ATTR_INPUTS[inp]
            ref = onnx.AttributeProto(name=kind, ref_attr_name=inp, type=attr_type)
            node = onnx.helper.make_node("Constant", [], [inp])
            node.attribute.append(ref)
            nodes.append(node)
    example = onnx.helper.np_dtype_to_tensor_dtype(torch.empty((), dtype=_EXAMPLE_DTYPE).numpy().dtype)
    for node in model.graph.node:
        cast_to = {a.name: a.i for a in node.attribute}.get("to") if node.op_type == "Cast" else None
        if cast_to == example:  # the example's T: cast like the node's first input instead
            node = onnx.helper.make_node("CastLike", [node.input[0], first], list(node.output), name=node.name)
        nodes.append(node)
    return onnx.helper.make_function(
        PLUGIN_DOMAIN, name, [i for i in graph_inputs if i not in _ATTR_INPUTS],
        [o.name for o in model.graph.output], nodes,
        opset_imports=[o for o in model.opset_import if o.domain == ""], attributes=attrs,
    )  # fmt: skip


def reference_functions(names=None, opset_version: int = FP8_OPSET) -> list[onnx.FunctionProto]:
    """FunctionProtos computing plugin ops with standard ONNX ops (the torch references, exported).

    names: the ops wanted (default all; the FP8 ones need opset >= 19). Any batch, token count, head count,
    head dim (even for the norm + RoPE ops), node ``eps`` and T in float / float16 / bfloat16."""
    out = []
    for name in names or list(SCHEMAS):
        f = onnx.FunctionProto()
        f.CopyFrom(_reference_function(name, int(opset_version)))
        out.append(f)
    return out


@functools.cache
def _reference_function(name: str, opset_version: int) -> onnx.FunctionProto:
    from torch.export import Dim

    # example sizes: all > 1 and distinct where they are separate axes (size 1 would be specialised)
    b, s, h, d, n = 2, 6, 3, 16, 4
    dyn_b, dyn_s, dyn_h = Dim("B", min=1, max=4096), Dim("S", min=2, max=100000), Dim("H", min=1, max=1024)
    dyn_d = 2 * Dim("D2", min=1, max=512)  # even: RoPE rotates pairs
    dyn_n = Dim("n_img", min=1, max=100000)
    dyn_s16 = Dim("S16", min=2, max=100016)  # v8t's padded token count
    # distinct example tensors: the exporter merges inputs that are the same Python object
    t = lambda *shape: torch.randn(*shape).to(_EXAMPLE_DTYPE)  # noqa: E731
    f32 = lambda *shape: torch.randn(*shape)  # noqa: E731
    f8 = lambda *shape: torch.randn(*shape).to(FP8_DTYPE)  # noqa: E731
    kl = torch.full((b,), s, dtype=torch.int32)
    eps = torch.tensor(1e-6)
    x4 = {0: dyn_b, 1: dyn_s, 2: dyn_h, 3: dyn_d}
    bh, bhd = {0: dyn_b, 1: dyn_h}, {0: dyn_b, 1: dyn_h, 2: dyn_d}
    rope_args = (t(b, s, h, d), t(b, s, h, d), t(d), t(d), f32(n, d), f32(n, d))
    rope_dyn = (x4, x4, {0: dyn_d}, {0: dyn_d}, {0: dyn_n, 1: dyn_d}, {0: dyn_n, 1: dyn_d})
    specs = {
        "qk_norm_rope": (_RopeRef(), (*rope_args, eps), (*rope_dyn, None)),
        "qk_norm_rope_fp8": (_RopeFp8Ref(), (*rope_args, f32(h), f32(h), eps),
                             (*rope_dyn, {0: dyn_h}, {0: dyn_h}, None)),
        "attention": (_AttnRef(False), (t(b, s, h, d), t(b, s, h, d), t(b, s, h, d), kl), (x4, x4, x4, {0: dyn_b})),
        "attention_fp8": (_AttnRef(True),
                          (f8(b, s, h, d), f8(b, s, h, d), f8(b, h, d, 16), f32(b, h), f32(b, h), f32(b, h, d), kl),
                          (x4, x4, {**bhd, 3: dyn_s16}, bh, bh, bhd, {0: dyn_b})),
    }  # fmt: skip
    # sliding-tile: S = 200 rows -> 2 query blocks of 128, 4 key blocks of 64 (sizes > 1: nothing specialises)
    s2 = 200
    kv_idx = torch.tensor([[[0, 3, 1], [1, 2, 3]]] * h, dtype=torch.int32)
    kv_cnt = torch.tensor([[[1, 2], [2, 3]]] * h, dtype=torch.int32)
    kv_end = torch.tensor([64, 128, 150, s2], dtype=torch.int32)
    kl2 = torch.full((b,), s2, dtype=torch.int32)
    dyn_hl, dyn_nqb = Dim("Hl", min=1, max=1024), Dim("NQB", min=1, max=10000)
    lay_dyn = ({0: dyn_hl, 1: dyn_nqb, 2: Dim("MAXK", min=1, max=20000)}, {0: dyn_hl, 1: dyn_nqb},
               {0: Dim("NKB", min=1, max=20000)})
    specs["attention_sta"] = (_StaRef(False), (t(b, s2, h, d), t(b, s2, h, d), t(b, s2, h, d), kl2, kv_idx, kv_cnt,
                                               kv_end), (x4, x4, x4, {0: dyn_b}, *lay_dyn))
    specs["attention_sta_fp8"] = (_StaRef(True), (f8(b, s2, h, d), f8(b, s2, h, d), f8(b, h, d, 208), f32(b, h),
                                                  f32(b, h), f32(b, h, d), kl2, kv_idx, kv_cnt, kv_end),
                                  (x4, x4, {**bhd, 3: dyn_s16}, bh, bh, bhd, {0: dyn_b}, *lay_dyn))  # fmt: skip
    mod, args, dyn = specs[name]
    attrs = [*SCHEMAS[name]["attrs"], *PLUGIN_ATTRS]
    with contextlib.redirect_stdout(io.StringIO()):
        prog = torch.onnx.export(mod, args, dynamo=True, dynamic_shapes=dyn, opset_version=opset_version,
                                 verbose=False)  # fmt: skip
    return _graph_to_function(prog.model_proto, name, attrs)


def attach_reference_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose plugin nodes ONNX Runtime can execute (for CPU checks only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    used = sorted({n.op_type for n in plugin_nodes(model)})
    opset = next(o.version for o in model.opset_import if o.domain == "")
    out.functions.extend(reference_functions(used, opset_version=opset))
    return out
