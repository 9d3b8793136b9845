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
BF16_COMPONENTS = ("dit", "vae_decoder_tile", "vae_decoder")


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
