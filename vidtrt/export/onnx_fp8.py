"""FP8 ONNX of the DiT: standard-domain ``QuantizeLinear`` / ``DequantizeLinear`` (float8e4m3fn, opset >= 19)
from a quantization state (``vidtrt quantize``).

    vidtrt export --model M --quantized STATE --out DIR

How ``dit_fp8.onnx`` is made (``vidtrt.export.onnx_export.export_components`` with ``quantized``):

1. The DiT becomes its fake-quant twin (:meth:`QuantState.apply`): every FP8 rounding point is one
   ``vidtrt::fp8_qdq`` op. The dynamo exporter turns each into a marker node ``vidtrt.fp8::FP8QDQ``
   (:func:`translation_table`); the graph is optimised with the markers in place (they block constant
   folding of quantized weights into float tensors).
2. :func:`lower_fp8_markers` replaces every marker, in the default domain:
   - on a weight (an initializer used once): an FP8 initializer holding ``saturate(W / s)`` (computed
     lazily while the file is written, so a streamed checkpoint stays out of RAM) and one
     ``DequantizeLinear``; a ``Transpose`` right after it is folded into the FP8 initializer (axis
     adjusted), so MatMul/Gemm read ``DQ(W8)`` directly -- TensorRT's weight pattern;
   - on an activation: ``QuantizeLinear -> DequantizeLinear`` with the scalar scale;
   zero points are float8e4m3fn zeros shaped like the scale (that is what makes the type FP8).
3. Saved with external data always (``dit_fp8.onnx.data``) and checked with ``onnx.checker``.

onnxruntime runs it on CPU with basic graph optimisations (its higher levels move Transposes onto FP8
tensors, which it then rejects). It equals the torch fake-quant model on tiny; on wider models float32
rounding differences upstream of a quantizer flip single FP8 roundings, so only the norm error is
small (docs/fp8.md, "FP8 ONNX").
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from vidtrt.errors import VidtrtError
from vidtrt.source.quant_state import QuantState

FP8_DOMAIN = "vidtrt.fp8"
MARKER = "FP8QDQ"
QUANTIZE_MARKER = "FP8Q"  # quantize only (FP8 output to a plugin node): lowered to one QuantizeLinear
FP8_MIN_OPSET = 19  # QuantizeLinear / DequantizeLinear with float8e4m3fn
FP8_DIT_FILE = "dit_fp8.onnx"


class FP8ExportError(VidtrtError):
    """The FP8 graph cannot be lowered to standard Q/DQ (a non-constant scale, an opset below 19)."""


def register_marker_schema() -> None:
    """Schema of the marker op (onnxscript needs one to emit it; idempotent)."""
    import onnx
    from onnx.defs import OpSchema

    fp = OpSchema.FormalParameter
    if not onnx.defs.has(MARKER, FP8_DOMAIN):
        onnx.defs.register_schema(OpSchema(
            MARKER, FP8_DOMAIN, 1, doc="FP8 e4m3 quantize-dequantize (lowered to QuantizeLinear/DequantizeLinear)",
            inputs=[fp("x", "T"), fp("scale", "F")], outputs=[fp("y", "T")],
            type_constraints=[("T", ["tensor(float)"], "x"), ("F", ["tensor(float)"], "scale")],
            attributes=[OpSchema.Attribute("axis", OpSchema.AttrType.INT, "channel axis; -1 with a scalar scale")],
        ))
    if not onnx.defs.has(QUANTIZE_MARKER, FP8_DOMAIN):
        onnx.defs.register_schema(OpSchema(
            QUANTIZE_MARKER, FP8_DOMAIN, 1, doc="FP8 e4m3 quantize, per tensor (lowered to QuantizeLinear)",
            inputs=[fp("x", "T"), fp("scale", "F")], outputs=[fp("y", "Q")],
            type_constraints=[("T", ["tensor(float)"], "x"), ("F", ["tensor(float)"], "scale"),
                              ("Q", ["tensor(float8e4m3fn)"], "y")],
        ))


def translation_table() -> dict:
    """``custom_translation_table`` entry: ``vidtrt::fp8_qdq`` -> the marker node."""
    import onnxscript

    register_marker_schema()
    dom = onnxscript.values.Opset(FP8_DOMAIN, 1)

    def fp8_qdq(x, scale, axis: int):
        return dom.FP8QDQ(x, scale, axis=axis)

    def fp8_quantize(x, scale):
        return dom.FP8Q(x, scale)

    return {torch.ops.vidtrt.fp8_qdq.default: fp8_qdq, torch.ops.vidtrt.fp8_quantize.default: fp8_quantize}


def quantize_weight_fp8(w: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    """``saturate_e4m3(w / scale)`` as an ml_dtypes float8_e4m3fn array (torch's rounding: nearest even)."""
    import ml_dtypes

    from vidtrt.models.fp8 import FP8_E4M3_MAX

    s = torch.from_numpy(np.asarray(scale, dtype=np.float32))
    if s.ndim == 1 and axis is not None:
        shape = [1] * w.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    q = (torch.from_numpy(np.asarray(w, dtype=np.float32)) / s).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    return q.to(torch.float8_e4m3fn).view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)


def _const_numpy(value) -> np.ndarray | None:
    cv = getattr(value, "const_value", None)
    return None if cv is None else np.asarray(cv.numpy())


def lower_fp8_markers(model) -> dict[str, int]:
    """Step 2 of the module docstring, in place; returns counts (weights, activations, transposes folded)."""
    import ml_dtypes
    import onnx_ir as ir

    graph = model.graph
    counts = {"weights": 0, "activations": 0, "transposes_folded": 0}
    for node in list(graph):
        if node.domain == FP8_DOMAIN and node.op_type == QUANTIZE_MARKER:
            x, scale_value = node.inputs
            if _const_numpy(scale_value) is None or _const_numpy(scale_value).ndim:
                raise FP8ExportError(f"FP8 quantize scale {scale_value.name!r} is not a constant scalar")
            zp = ir.Value(name=f"{node.name}_zero_point", shape=ir.Shape([]),
                          type=ir.TensorType(ir.DataType.FLOAT8E4M3FN),
                          const_value=ir.tensor(np.zeros((), dtype=ml_dtypes.float8_e4m3fn),
                                                name=f"{node.name}_zero_point"))
            graph.register_initializer(zp)
            q = ir.node("QuantizeLinear", [x, scale_value, zp], {}, name=f"{node.name}_q")
            graph.insert_before(node, q)
            node.outputs[0].replace_all_uses_with(q.outputs[0])
            graph.remove(node, safe=False)
            counts["quantize_only"] = counts.get("quantize_only", 0) + 1
            continue
        if node.domain != FP8_DOMAIN or node.op_type != MARKER:
            continue
        x, scale_value = node.inputs
        scale = _const_numpy(scale_value)
        if scale is None:
            raise FP8ExportError(f"FP8 scale {scale_value.name!r} is not a constant")
        axis_attr = node.attributes.get("axis")
        axis = None if scale.ndim == 0 or axis_attr is None or axis_attr.value < 0 else int(axis_attr.value)
        zp = ir.Value(name=f"{node.name}_zero_point", shape=ir.Shape(list(scale.shape)),
                      type=ir.TensorType(ir.DataType.FLOAT8E4M3FN),
                      const_value=ir.tensor(np.zeros(scale.shape, dtype=ml_dtypes.float8_e4m3fn),
                                            name=f"{node.name}_zero_point"))
        graph.register_initializer(zp)
        attrs = {"axis": axis} if axis is not None else {}
        out = node.outputs[0]
        if x.is_initializer() and x.const_value is not None and len(x.uses()) == 1:
            src, w_shape = x.const_value, list(x.shape)
            users = [u.node for u in out.uses()]
            transpose = users[0] if (len(users) == 1 and users[0].op_type == "Transpose" and users[0].domain == ""
                                     and len(w_shape) == 2) else None
            perm = None
            if transpose is not None:
                perm_attr = transpose.attributes.get("perm")
                perm = list(perm_attr.value) if perm_attr is not None else [1, 0]
                if perm != [1, 0]:
                    transpose, perm = None, None
            shape = [w_shape[1], w_shape[0]] if perm else w_shape
            name = f"{x.name}.fp8" + (".transposed" if perm else "")

            def load(src=src, scale=scale, axis=axis, perm=perm):
                q = quantize_weight_fp8(src.numpy(), scale, axis)
                return ir.Tensor(np.ascontiguousarray(q.T) if perm else q)

            w8 = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT8E4M3FN),
                          const_value=ir.LazyTensor(load, dtype=ir.DataType.FLOAT8E4M3FN, shape=ir.Shape(shape),
                                                    name=name))
            graph.register_initializer(w8)
            dq_attrs = dict(attrs)
            if perm and axis is not None:
                dq_attrs["axis"] = 1 - axis
            dq = ir.node("DequantizeLinear", [w8, scale_value, zp], dq_attrs, name=f"{node.name}_dq")
            graph.insert_before(node, dq)
            if transpose is not None:
                transpose.outputs[0].replace_all_uses_with(dq.outputs[0])
                graph.remove(transpose, safe=False)
                counts["transposes_folded"] += 1
            else:
                out.replace_all_uses_with(dq.outputs[0])
            dq.outputs[0].name = f"{x.name}.dequantized"
            graph.remove(node, safe=False)
            graph.initializers.pop(x.name)
            counts["weights"] += 1
        else:
            q = ir.node("QuantizeLinear", [x, scale_value, zp], attrs, name=f"{node.name}_q")
            dq = ir.node("DequantizeLinear", [q.outputs[0], scale_value, zp], attrs, name=f"{node.name}_dq")
            graph.insert_before(node, [q, dq])
            out.replace_all_uses_with(dq.outputs[0])
            graph.remove(node, safe=False)
            counts["activations"] += 1
    graph.opset_imports.pop(FP8_DOMAIN, None)
    model.opset_imports.pop(FP8_DOMAIN, None)
    if model.opset_imports.get("", 0) < FP8_MIN_OPSET:
        raise FP8ExportError(f"FP8 Q/DQ needs opset >= {FP8_MIN_OPSET}; the graph has {model.opset_imports.get('')}")
    return counts


def fp8_dit_weights(state: QuantState, module: torch.nn.Module,
                    weights: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """Make ``module`` (our DiT; on the meta device when ``weights`` are streamed) the FP8 fake-quant twin
    to trace, in place; with ``weights`` (initializer name -> tensor), add every quantizer's scale to
    them (the scales are buffers, meta too) and return them."""
    state.apply(module)
    if weights is None:
        return None
    for name, scale in state.scales().items():
        weights[f"{name}.scale"] = scale
    return weights


def quantization_record(state: QuantState, counts: Mapping[str, int] | None = None) -> dict:
    """What the artifacts manifest records about the FP8 DiT."""
    record = {"format": "fp8_e4m3", "state_format": "vidtrt-fp8-quant/1",
              "model_fingerprint": state.model_fingerprint, "weights_fingerprint": state.weights_fingerprint,
              "modelopt_version": state.modelopt_version, "quant_config": dict(state.config),
              "quality": dict(state.quality), "quantizers": len(state.amax)}
    if counts:
        record["qdq"] = dict(counts)
    return record
