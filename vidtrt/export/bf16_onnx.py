"""bfloat16 ONNX of the DiT and the VAE decoder behind float32 inputs/outputs.

A strongly typed TensorRT network (the only kind TensorRT 11 builds) runs each op in the type the ONNX
gives it, so a bf16 plan needs a bf16 graph. :class:`Bf16Io` wraps a component in bfloat16 behind the
spec's float32 inputs/outputs: the Triton config, the BLS orchestrator and the other engines keep sending
float32, and the casts are the graph's first and last ops. The export itself is
:func:`vidtrt.export.onnx_export.trace_onnx` + ``save_onnx`` (dynamo, spec axes, optimiser, checker);
the DiT is traced on the meta device and its weights are streamed from the checkpoint, converted to
bfloat16 one tensor at a time while the file is written.

onnxruntime's CPU provider lacks bfloat16 kernels for most ops, so these files are checked with
``onnx.checker`` and against the spec (the fp32 export of the same modules is what onnxruntime verifies
against torch); on a GPU the plan itself is compared with the torch engine (docs/tensorrt.md).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from vidtrt.export import onnx_export
from vidtrt.export.options import DEFAULT_OPSET

BF16_MANIFEST_FORMAT = "vidtrt-onnx-bf16/1"
BF16_COMPONENTS = ("dit", "vae_decoder_tile", "vae_decoder", "dit_probe")


class Bf16Io(nn.Module):
    """``module`` run in ``dtype``: floating inputs cast to it, floating outputs cast back to float32.

    Use :func:`bf16_io`, which gives ``forward`` one named parameter per spec input (``torch.export`` matches
    dynamic shapes to parameters, so ``*args`` will not do)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.module = module
        self.dtype = dtype

    def run(self, *args: torch.Tensor):
        args = tuple(a.to(self.dtype) if a.is_floating_point() else a for a in args)
        out = self.module(*args)
        if isinstance(out, tuple):
            return tuple(o.float() if o.is_floating_point() else o for o in out)
        return out.float()


def bf16_io(module: nn.Module, input_names: Sequence[str], dtype: torch.dtype = torch.bfloat16) -> Bf16Io:
    """A :class:`Bf16Io` of ``module`` whose ``forward`` takes ``input_names`` positionally."""
    if not all(n.isidentifier() for n in input_names):
        raise ValueError(f"input names must be identifiers: {list(input_names)}")
    args = ", ".join(input_names)
    scope: dict = {}
    exec(f"def forward(self, {args}):\n    return self.run({args})\n", scope)  # noqa: S102 - names checked above
    cls = type("Bf16IoModule", (Bf16Io,), {"forward": scope["forward"]})
    return cls(module, dtype)


def export_bf16_components(source, names: Sequence[str], out: str | Path, opset: int = DEFAULT_OPSET,
                           log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Export ``names`` (of :data:`BF16_COMPONENTS`) of ``source`` (a ModelSource) into ``out``; returns
    ``{name: path}``. Files already listed in ``out/manifest.json`` for the same model fingerprint, opset and
    spec are reused."""
    from vidtrt.runtime.engine_components import MANIFEST_NAME, component_module

    unknown = [n for n in names if n not in BF16_COMPONENTS]
    if unknown:
        raise onnx_export.ExportError(f"no bf16 export for {unknown[0]!r}; accepted {list(BF16_COMPONENTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = source.specs(list(names))
    manifest_file = out / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        manifest = {}
    if (manifest.get("model", {}).get("config_sha256") != source.fingerprint or manifest.get("opset") != opset
            or manifest.get("precision") != "bf16"):
        manifest = {"format": BF16_MANIFEST_FORMAT, "precision": "bf16", "opset": opset,
                    "model": {"name": source.config.name, "config_sha256": source.fingerprint,
                              "record": source.to_record()},
                    "components": {}}
    metadata = {"vidtrt.model": source.config.name, "vidtrt.config_sha256": source.fingerprint,
                "vidtrt.precision": "bf16"}
    paths: dict[str, Path] = {}
    for name in names:
        spec = specs[name]
        entry = manifest["components"].get(name)
        if (entry and (out / entry["file"]).is_file()
                and entry.get("spec") == json.loads(json.dumps(spec.to_dict()))):
            paths[name] = out / entry["file"]
            continue
        t0 = time.perf_counter()
        if name == "dit":
            meta, weights = onnx_export.streamed_dit(source)
            module = bf16_io(meta.to(torch.bfloat16), spec.input_names)
            weights = {f"module.{k}": v for k, v in weights.items()}
        else:
            module, weights = bf16_io(component_module(source, name, torch.bfloat16), spec.input_names), None
        model = onnx_export.trace_onnx(module, spec, opset, True, weights)
        result = onnx_export.save_onnx(model, spec, out / f"{name}.onnx", "auto", metadata,
                                       time.perf_counter() - t0)
        del model, module, weights
        gc.collect()
        manifest["components"][name] = result.manifest_entry(spec)
        onnx_export._write_json(manifest_file, manifest)
        paths[name] = result.path
        if log:
            log(f"{name}: bf16 ONNX {result.path} ({result.file_bytes / 1e6:.1f} MB, {result.num_nodes} nodes) "
                f"in {result.seconds:.1f}s")
    return paths


# ------------------------------------------------------------------------------------------ verification
def upcast_to_float32(model):
    """A copy of the bf16 ONNX ``model`` (``onnx.ModelProto``, weights loaded) with every bfloat16 type made
    float32: initializers and constants converted (their bf16-rounded values kept), ``Cast(to=BFLOAT16)``
    turned into ``Cast(to=FLOAT)``, intermediate type annotations dropped. onnxruntime's CPU provider runs
    that, which checks the bf16 graph's wiring against torch (:func:`verify_bf16_onnx`)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT

    def up(t):
        if t.data_type == bf16:
            arr = numpy_helper.to_array(t).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))

    def graphs(g):
        yield g
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(a.g)
                for sub in a.graphs:
                    yield from graphs(sub)

    for g in graphs(m.graph):
        for t in g.initializer:
            up(t)
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    up(a.t)
                elif node.op_type == "Cast" and a.name == "to" and a.i == bf16:
                    a.i = f32
        del g.value_info[:]
        for v in list(g.input) + list(g.output):
            if v.type.tensor_type.elem_type == bf16:
                v.type.tensor_type.elem_type = f32
    return m


def verify_bf16_onnx(path: str | Path, module: nn.Module, spec, axes_list, tol: float = 1e-4) -> float:
    """Run :func:`upcast_to_float32` of ``path`` in onnxruntime and ``module`` (float32 with bf16-rounded
    weights) in torch on each of ``axes_list``; returns the worst relative error (ExportError beyond ``tol``)."""
    import onnx
    import onnxruntime as ort

    up = upcast_to_float32(onnx.load(str(path)))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(up.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, axes in enumerate(axes_list):
        feeds = spec.example_inputs(axes, seed=200 + i)
        got = sess.run(spec.output_names, feeds)
        with torch.no_grad():
            want = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
        want = want if isinstance(want, tuple) else (want,)
        for name, g, w in zip(spec.output_names, got, want, strict=True):
            err = onnx_export.relative_error(g, w.float().numpy())
            worst = max(worst, err)
            if not err <= tol:
                raise onnx_export.ExportError(f"{spec.name}: the bf16 ONNX (upcast) differs from torch by {err:.2e} "
                                              f"(> {tol:g}) on {name!r} at {axes}")
    return worst
