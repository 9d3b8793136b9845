"""ONNX export of every HunyuanVideo component, driven by the component specs.

``vidtrt export --model tiny|PATH --out DIR [--components ...] [--opset N]`` writes
``DIR/<component>.onnx`` (plus ``<component>.onnx.data`` when the weights go to external data) and
``DIR/manifest.json``, which records the model config fingerprint, opset and each component's spec so
engines can refuse artifacts from another model.

How each file is made (:func:`export_onnx`):

1. ``torch.onnx.export(..., dynamo=True)`` traces the component's module on the spec's export example
   (batch 2, sizes > 1 and distinct) with ``torch.export.Dim`` per dynamic axis, bounded by the spec's
   ranges (an axis with a ``multiple`` becomes ``multiple * Dim``). The DiT traces without its
   padding trim; text padding is per-sample key lengths turned into an O(S) key bias [B, 1, 1, S],
   never a dense mask.
2. The exporter's graph optimiser (constant folding, dead-code removal, e.g. the LLM layers after
   the one the DiT reads) runs unless ``optimize=False``.
3. Graph inputs/outputs must still be dynamic on every spec axis (an axis the trace specialised to a
   number is an error, not a silent static model); their dims are renamed to the spec's axis names.
4. Saved with ``onnx_ir`` -- weights to ``<file>.data`` (external data, 64 KiB-aligned) when they are
   larger than ``EXTERNAL_DATA_BYTES`` or always/never as asked -- and checked with
   ``onnx.checker.check_model`` on the path (which works past 2 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidtrt.config.model_config import EMBEDDED_PRESETS
from vidtrt.config.specs import COMPONENTS, ComponentSpec
from vidtrt.errors import VidtrtError, one_line
from vidtrt.export.options import DEFAULT_OPSET, EXTERNAL_DATA_BYTES, EXTERNAL_DATA_CHOICES, MAX_OPSET, MIN_OPSET
from vidtrt.source.model_source import ModelSource

# `--verify` of an FP8 DiT: ||onnxruntime - torch fake quant|| / ||torch fake quant||. Measured 0 on tiny,
# 2e-4 / 1.3e-2 on a 2 x 128-head, 2 + 2-block DiT (whose FP8 noise vs float32 is 7-12e-2).
FP8_VERIFY_TOL = 5e-2


class ExportError(VidtrtError):
    """An ONNX export failed or produced a model that does not match its spec."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote."""

    component: str
    path: Path
    external_data: Path | None
    weight_bytes: int
    file_bytes: int
    seconds: float
    num_nodes: int

    def manifest_entry(self, spec: ComponentSpec) -> dict:
        return {
            "file": self.path.name,
            "external_data": self.external_data.name if self.external_data else None,
            "bytes": self.file_bytes,
            "weight_bytes": self.weight_bytes,
            "nodes": self.num_nodes,
            "spec": spec.to_dict(),
        }


# ------------------------------------------------------------------------------------------------ helpers
def torch_dynamic_shapes(spec: ComponentSpec) -> tuple[dict[int, object] | None, ...]:
    """``torch.export`` dynamic shapes (one dict per input, in spec order) from the spec's axes."""
    from torch.export import Dim

    dims: dict[str, object] = {}
    for axis, rng in spec.axes.items():
        if rng.multiple > 1:
            m = rng.multiple
            dims[axis] = m * Dim(f"{axis}_div{m}", min=math.ceil(rng.min / m), max=rng.max // m)
        else:
            dims[axis] = Dim(axis, min=rng.min, max=rng.max)
    used = {a for t in spec.inputs for a in t.dynamic_axes.values()}
    for axis, (src, scale, offset) in spec.derived.items():  # an input sized by another axis (e.g. 2 x height)
        if axis in used:
            dims[axis] = scale * dims[src] + offset if offset else scale * dims[src]
    out = []
    for t in spec.inputs:
        dyn = {i: dims[a] for i, a in t.dynamic_axes.items()}
        out.append(dyn or None)
    return tuple(out)


@contextlib.contextmanager
def _quiet_export() -> Iterator[io.StringIO]:
    """Silence the exporter's progress prints, warnings and registration logs (kept for errors)."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript",
                                                "torch.fx.experimental.symbolic_shapes", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)




def _weight_bytes(model) -> int:
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.nbytes
    return total


def _fix_io_shapes(model, spec: ComponentSpec, pin: bool = False) -> None:
    """Check the exported inputs/outputs against the spec and name their dynamic dims as the spec does.

    ``pin``: a dim the spec fixes may be symbolic in the graph; it is set to the spec's value (a graph
    traced with a dynamic batch serving a batch-1 spec)."""
    import onnx_ir as ir

    for values, tensors, kind in ((model.graph.inputs, spec.inputs, "input"),
                                  (model.graph.outputs, spec.outputs, "output")):
        names = [v.name for v in values]
        if names != [t.name for t in tensors]:
            raise ExportError(f"{spec.name}: exported {kind}s {names}, the spec says {[t.name for t in tensors]}")
        for value, t in zip(values, tensors, strict=True):
            shape = value.shape
            if shape is None or len(shape) != len(t.shape):
                raise ExportError(f"{spec.name}: exported {kind} {t.name!r} has shape {shape}, "
                                  f"the spec says {list(t.shape)}")
            dims = []
            for i, (got, want) in enumerate(zip(shape, t.shape, strict=True)):
                if isinstance(want, int):
                    if got != want and not (pin and not isinstance(got, int)):
                        raise ExportError(f"{spec.name}: exported {kind} {t.name!r} axis {i} is {got}, "
                                          f"the spec says {want}")
                    dims.append(want)
                else:
                    if isinstance(got, int):
                        raise ExportError(f"{spec.name}: the export specialised {kind} {t.name!r} axis {i} "
                                          f"({want}) to {got}; it must stay dynamic")
                    dims.append(ir.SymbolicDim(want))
            value.shape = ir.Shape(dims)


# ------------------------------------------------------------------------------------------------ export
def _is_meta(value) -> bool:
    raw = getattr(value.const_value, "raw", None)
    return isinstance(raw, torch.Tensor) and raw.is_meta


def bind_weights(model, weights: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> int:
    """Give every meta initializer of ``model`` (a graph traced from a meta-device module) a lazy value:
    ``weights[name]`` converted to ``dtype`` (default: the initializer's own type, bfloat16 included) when it
    is written, one tensor at a time. ``weights`` may be memory-mapped checkpoint tensors in any dtype.
    Returns the number bound."""
    import onnx_ir as ir

    bound = 0
    for name, value in model.graph.initializers.items():
        if not _is_meta(value):
            continue
        src = weights.get(name)
        if src is None:
            raise ExportError(f"no weight for initializer {name!r} (the module was traced on meta and the "
                              f"checkpoint has no tensor of that name)")
        cv = value.const_value
        if tuple(src.shape) != tuple(cv.shape):
            raise ExportError(f"weight {name!r} has shape {list(src.shape)}, the graph expects {list(cv.shape)}")

        def load(src=src, target=cv.dtype):
            if dtype is not None:
                return ir.Tensor(src.detach().to(dtype).contiguous().numpy())
            if target == ir.DataType.BFLOAT16:  # numpy has no bfloat16: the bits, viewed as ml_dtypes'
                bits = src.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy()
                return ir.Tensor(bits.view(target.numpy()))
            return ir.Tensor(src.detach().to(getattr(torch, np.dtype(target.numpy()).name)).contiguous().numpy())

        value.const_value = ir.LazyTensor(load, dtype=cv.dtype, shape=cv.shape, name=name)
        bound += 1
    return bound


def fold_lazy_transposes(model) -> int:
    """``Transpose(W)`` of a lazily bound weight (used once) becomes a lazy initializer holding ``W``
    transposed, computed when the file is written. The optimiser would fold these anyway (it always
    folds Transposes of initializers), but by materialising every transposed weight in RAM at once."""
    import onnx_ir as ir

    folded = 0
    for node in list(model.graph):
        if node.op_type != "Transpose" or node.domain != "":
            continue
        x = node.inputs[0]
        if x is None or not x.is_initializer() or not isinstance(x.const_value, ir.LazyTensor) or len(x.uses()) != 1:
            continue
        src = x.const_value
        perm_attr = node.attributes.get("perm")
        perm = list(perm_attr.value) if perm_attr is not None else list(reversed(range(len(src.shape))))
        shape = ir.Shape([src.shape[p] for p in perm])
        name = f"{x.name}.transposed"

        def load(src=src, perm=perm):
            return ir.Tensor(np.ascontiguousarray(src.numpy().transpose(perm)))

        value = ir.Value(name=name, shape=shape, type=ir.TensorType(src.dtype),
                         const_value=ir.LazyTensor(load, dtype=src.dtype, shape=shape, name=name))
        model.graph.register_initializer(value)
        node.outputs[0].replace_all_uses_with(value)
        model.graph.remove(node, safe=True)
        model.graph.initializers.pop(x.name)
        folded += 1
    return folded


def optimize_graph(model) -> None:
    """What the exporter's ``optimize=True`` does: onnxscript's optimizer (constant folding of small
    tensors, dead code, common subexpressions, duplicate initializers) and its ONNX op fusions."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions

    onnxscript.optimizer.optimize_ir(model)
    onnxscript.rewriter.onnx_fusions.fuse(model)


def trace_onnx(module: torch.nn.Module, spec: ComponentSpec, opset: int = DEFAULT_OPSET, optimize: bool = True,
               weights: Mapping[str, torch.Tensor] | None = None, custom_translation_table: dict | None = None,
               example: Mapping[str, np.ndarray] | None = None):
    """Steps 1-3 of the module docstring: the checked ``onnx_ir`` model of ``module`` (not yet saved).

    ``weights``: ``module`` lives on the meta device (no RAM for weights) and its parameters come from
    this mapping (e.g. the memory-mapped checkpoint), converted lazily when the file is written.
    ``custom_translation_table``: the exporter's, for custom ops (e.g. FP8 Q/DQ, ``onnx_fp8``).
    ``example``: the inputs to trace with (default: the spec's random example at its export axes).
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset} is not supported; accepted: {MIN_OPSET}..{MAX_OPSET} (18 is the dynamo "
                          f"exporter's floor; 23's Attention op takes no [B, 1, 1, S] key mask in onnxruntime)")
    feeds = example if example is not None else spec.example_inputs(spec.export_axes, seed=0)
    device = "meta" if weights is not None else "cpu"
    args = tuple(torch.from_numpy(feeds[n]).to(device) for n in spec.input_names)
    module = module.eval()
    shapes = torch_dynamic_shapes(spec)
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind == p.VAR_POSITIONAL for p in params):  # forward(a, b, *rest): torch.export wants (a, b, (rest...))
        n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        shapes = (*shapes[:n], shapes[n:])
    try:
        with torch.no_grad(), _quiet_export():
            program = torch.onnx.export(
                module, args, input_names=spec.input_names, output_names=spec.output_names, dynamo=True,
                dynamic_shapes=shapes, opset_version=opset, optimize=False, verbose=False,
                custom_translation_table=custom_translation_table,
            )
    except Exception as e:  # the exporter raises many types; one line, the cause chained for debugging
        raise ExportError(f"{spec.name}: ONNX export failed: {one_line(e, with_type=True)}") from e
    model = program.model
    if weights is not None:
        bind_weights(model, weights)
    elif any(_is_meta(v) for v in model.graph.initializers.values()):
        raise ExportError(f"{spec.name}: the module has meta-device weights; pass weights=... to export it")
    if optimize:
        fold_lazy_transposes(model)
        with _quiet_export():
            optimize_graph(model)
    _strip_debug_metadata(model)
    _fix_io_shapes(model, spec)
    return model


# Per-node debug records of the exporter: source stack traces (absolute paths of the exporting machine)
# and FX node dumps. Module scopes ("namespace", "pkg.torch.onnx.name_scopes") stay: they name layers.
_DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


def _strip_debug_metadata(model) -> None:
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for key in _DEBUG_METADATA:
            node.metadata_props.pop(key, None)


def save_onnx(model, spec: ComponentSpec, path: str | Path, external_data: str = "auto",
              metadata: dict[str, str] | None = None, seconds: float = 0.0) -> ExportResult:
    """Step 4: write ``model`` (external data as asked) and run ``onnx.checker`` on the file."""
    import onnx
    import onnx_ir as ir

    if external_data not in EXTERNAL_DATA_CHOICES:
        raise ExportError(f"external_data={external_data!r}; accepted: {list(EXTERNAL_DATA_CHOICES)}")
    t0 = time.perf_counter()
    path = Path(path)
    props = {"vidtrt.component": spec.name, "vidtrt.spec": json.dumps(spec.to_dict())}
    props.update(metadata or {})
    model.metadata_props.update(props)
    model.producer_name = "vidtrt"
    weights = _weight_bytes(model)
    use_external = external_data == "always" or (external_data == "auto" and weights > EXTERNAL_DATA_BYTES)
    data_path = path.with_name(path.name + ".data") if use_external else None
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".data")):
        if stale.exists():
            stale.unlink()
    try:
        if use_external:
            ir.save(model, path, external_data=data_path.name, alignment=65536, max_workers=1,
                    max_in_flight_bytes=256 << 20)
        else:
            ir.save(model, path)
    except (OSError, ValueError) as e:
        raise ExportError(f"{spec.name}: cannot write {path}: {one_line(e)}") from None
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise ExportError(f"{spec.name}: onnx.checker rejects {path}: {one_line(e)}") from None
    size = path.stat().st_size + (data_path.stat().st_size if data_path else 0)
    return ExportResult(spec.name, path, data_path, weights, size, seconds + time.perf_counter() - t0,
                        len(model.graph))


def export_onnx(module: torch.nn.Module, spec: ComponentSpec, path: str | Path, opset: int = DEFAULT_OPSET,
                external_data: str = "auto", optimize: bool = True, metadata: dict[str, str] | None = None,
                weights: Mapping[str, torch.Tensor] | None = None) -> ExportResult:
    """Export one component's module to ``path`` following ``spec`` (see the module docstring);
    ``weights``: see :func:`trace_onnx` (a meta-device module, weights streamed from the mapping)."""
    t0 = time.perf_counter()
    model = trace_onnx(module, spec, opset, optimize, weights)
    result = save_onnx(model, spec, path, external_data, metadata, time.perf_counter() - t0)
    del model
    gc.collect()
    return result


def checkpoint_dtype(source: ModelSource) -> torch.dtype:
    """The floating dtype most of the DiT checkpoint's bytes are stored in (headers / metadata only, no
    data read); FP8 checkpoints dequantize into bfloat16."""
    from collections import Counter

    from vidtrt.source.checkpoints import OFFICIAL_DIT, official_root, read_torch_file, read_weights_dir

    if source.layout == "diffusers":
        tensors, _ = read_weights_dir(source.folder / "transformer")
    else:
        path = official_root(source.folder) / OFFICIAL_DIT
        if not path.exists():
            return torch.bfloat16
        tensors = read_torch_file(path, shapes_only=True)
    sizes: Counter = Counter()
    for t in tensors.values():
        if t.is_floating_point():
            sizes[t.dtype] += t.numel() * t.element_size()
    dtype = sizes.most_common(1)[0][0] if sizes else torch.float32
    return torch.bfloat16 if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else dtype


def streamed_dit(source: ModelSource) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """(float32 DiT on the meta device, its weights memory-mapped from the checkpoint in their stored
    dtype): exporting these keeps the weights out of RAM (each tensor is converted while it is written)."""
    from vidtrt.source.checkpoints import build_on_meta

    mapped = source.load_transformer(checkpoint_dtype(source))
    module_cls = source.family.load("transformer")
    meta = build_on_meta(lambda: module_cls(source.config.transformer)).eval()
    return meta, dict(mapped.state_dict())


def export_components(model: str | Path | ModelSource = "tiny", out: str | Path = "onnx",
                      components: Sequence[str] | None = None, opset: int = DEFAULT_OPSET,
                      external_data: str = "auto", optimize: bool = True,
                      verify: bool = False, log: Callable[[str], None] | None = print,
                      stream_weights: bool = True, quantized: str | Path | None = None) -> dict:
    """Export ``components`` (default: all) of ``model`` into ``out``; returns the manifest written.

    A manifest already in ``out`` from the same model and opset keeps its other components' entries.
    ``verify``: run each file in onnxruntime on two spec shapes and compare with the torch module
    (raises ExportError beyond 1e-4 relative error; loads the module in float32).
    ``stream_weights``: the DiT is traced on the meta device and its weights are streamed from the
    memory-mapped checkpoint into the file (:func:`streamed_dit`): RAM stays at the graph plus one
    tensor whatever the model size. Otherwise it is loaded in float32 first (weights-size RAM).
    ``quantized``: a quantization state folder (``vidtrt quantize``) made for this checkpoint: the DiT is
    written as FP8 Q/DQ ONNX, ``dit_fp8.onnx`` (:mod:`vidtrt.export.onnx_fp8`; at opset max(opset, 19),
    recorded in its manifest entry with ``quantization``); ``verify`` compares it with the torch fake-quant
    DiT (norm relative error <= FP8_VERIFY_TOL).
    """
    from vidtrt.runtime.engine_components import MANIFEST_FORMAT, MANIFEST_NAME, component_module, text_encoder_modules

    source = ModelSource.open(model)
    accepted = exported_components(source)
    names = list(components or accepted)
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise ExportError(f"unknown component {unknown[0]!r} of a {source.family.name} model; "
                          f"accepted: {list(accepted)}")
    state = None
    if quantized is not None and "dit" in names:
        from vidtrt.source.quant_state import QuantState

        state = QuantState.load(quantized, source)  # refused here (one line) before any export work
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)  # after every refusal: a refused export leaves no folder
    except OSError as e:
        raise ExportError(f"cannot create --out folder {out}: {one_line(e)}") from None
    config = source.config
    specs = source.specs(names)
    fingerprint = source.fingerprint
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": {"name": config.name, "source": source.ref if source.ref in EMBEDDED_PRESETS else str(source.folder),
                  "config_sha256": fingerprint, "record": source.to_record()},
        "opset": opset,
        "exporter": {"torch": torch.__version__, "onnx": _version("onnx"), "onnxscript": _version("onnxscript")},
        "components": {},
    }
    old_path = out / MANIFEST_NAME
    if old_path.is_file():
        try:
            old = json.loads(old_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("model", {}).get("config_sha256") == fingerprint and old.get("opset") == opset:
            manifest["components"].update({k: v for k, v in old.get("components", {}).items()
                                           if k not in names and (out / v.get("file", "")).is_file()})
    metadata = {"vidtrt.model": config.name, "vidtrt.config_sha256": fingerprint}
    cache: dict[str, object] = {}

    def module_for(name: str) -> torch.nn.Module:
        # The two VAE components share one module, the two text encoders one load.
        if name.startswith("vae_decoder"):
            if "vae" not in cache:
                cache["vae"] = component_module(source, name)
            return cache["vae"]
        if name in ("llm_text_encoder", "clip_text_encoder"):
            if "text" not in cache:
                _, llm, clip = text_encoder_modules(source)
                cache["text"] = {"llm_text_encoder": llm, "clip_text_encoder": clip}
            return cache["text"][name]
        return component_module(source, name)

    def record(name: str, result: ExportResult, module: torch.nn.Module | None, extra: dict | None = None,
               fp8: bool = False) -> None:
        manifest["components"][name] = {**result.manifest_entry(specs[name]), **(extra or {})}
        note = f", external data {result.external_data.name}" if result.external_data else ""
        if log:
            log(f"{name}: {result.path} ({result.file_bytes / 1e6:.1f} MB{note}, {result.num_nodes} nodes) "
                f"in {result.seconds:.1f}s")
        if verify:
            if fp8:  # vs the torch fake-quant DiT; FP8 rounding flips bound the norm error only
                err = verify_onnx(module, specs[name], result.path, FP8_VERIFY_TOL, norm_relative_error, fp8=True)
            else:
                err = verify_onnx(module or component_module(source, name), specs[name], result.path)
            if log:
                what = "norm relative error vs the fake-quant DiT" if fp8 else "max relative error"
                log(f"{name}: onnxruntime vs torch {what} {err:.2e}")
        _write_json(old_path, manifest)

    done: set[str] = set()
    for name in names:
        if name in done:
            continue
        spec = specs[name]
        module = None if (name == "dit" and stream_weights) else module_for(name)
        if name == "vae_decoder" or (name == "vae_decoder_tile" and "vae_decoder" in names):
            # One trace serves both decoder files: the whole-latents graph (dynamic batch) and, with the
            # batch pinned to 1 at its inputs/outputs, the tile graph (same network, the tile spec).
            t0 = time.perf_counter()
            model_ir = trace_onnx(module, specs["vae_decoder"], opset, optimize)
            traced = time.perf_counter() - t0
            record("vae_decoder", save_onnx(model_ir, specs["vae_decoder"], out / "vae_decoder.onnx",
                                            external_data, metadata, traced), module)
            done.add("vae_decoder")
            if "vae_decoder_tile" in names:
                _fix_io_shapes(model_ir, specs["vae_decoder_tile"], pin=True)
                record("vae_decoder_tile", save_onnx(model_ir, specs["vae_decoder_tile"],
                                                     out / "vae_decoder_tile.onnx", external_data, metadata),
                       module)
                done.add("vae_decoder_tile")
            del model_ir
        elif name == "dit" and state is not None:
            from vidtrt.export.onnx_fp8 import FP8_DIT_FILE, FP8_MIN_OPSET, quantization_record

            dit_opset = max(opset, FP8_MIN_OPSET)
            result, counts = export_fp8_dit(source, state, spec, out / FP8_DIT_FILE, dit_opset, optimize, metadata,
                                            stream_weights)
            fake_quant = state.apply(component_module(source, "dit")) if verify else None
            record(name, result, fake_quant, {"opset": dit_opset, "quantization": quantization_record(state, counts)},
                   fp8=True)
            del fake_quant
            done.add(name)
        elif name == "dit" and stream_weights:
            meta, weights = streamed_dit(source)
            result = export_onnx(meta, spec, out / "dit.onnx", opset, external_data, optimize, metadata, weights)
            del meta, weights
            record(name, result, None)
            done.add(name)
        else:
            record(name, export_onnx(module, spec, out / f"{name}.onnx", opset, external_data, optimize, metadata),
                   module)
            done.add(name)
        del module
        gc.collect()
    return manifest


def exported_components(source: ModelSource) -> tuple[str, ...]:
    """The ONNX components of ``source``'s family (CogVideoX: the DiT and the VAE's frame-batch graph)."""
    if source.family.name == "cogvideox":
        from vidtrt.config.cogvideox_specs import ONNX_COMPONENTS

        return ONNX_COMPONENTS
    return COMPONENTS


def export_fp8_dit(source: ModelSource, state, spec: ComponentSpec, path: str | Path, opset: int = 19,
                   optimize: bool = True, metadata: dict[str, str] | None = None,
                   stream_weights: bool = True, attention_plugin: bool = False) -> tuple[ExportResult, dict[str, int]]:
    """The FP8 DiT of ``state`` (a QuantState) as ``path`` (external data always; see
    :mod:`vidtrt.export.onnx_fp8`); returns the result and the Q/DQ lowering counts.

    ``attention_plugin``: every quantized attention is one ``vidtrt::attention_fp8`` plugin node fed by
    ``QuantizeLinear`` outputs (flavour ``plugin-qdq-fp8`` of :mod:`vidtrt.kernels.onnx_plugins`; opset >= 21),
    the rest of the graph as without it."""
    from vidtrt.export.onnx_fp8 import (
        FP8_MIN_OPSET,
        FP8ExportError,
        fp8_dit_weights,
        lower_fp8_markers,
        translation_table,
    )

    if opset < FP8_MIN_OPSET:
        raise ExportError(f"--opset {opset}: FP8 Q/DQ (float8e4m3fn) needs opset >= {FP8_MIN_OPSET}")
    t0 = time.perf_counter()
    if stream_weights:
        module, weights = streamed_dit(source)
    else:
        module, weights = source.load_transformer(torch.float32), None
    weights = fp8_dit_weights(state, module, weights)
    table = translation_table()
    flavour = contextlib.nullcontext()
    if attention_plugin:
        from vidtrt.kernels import onnx_plugins

        table = {**table, **onnx_plugins.custom_translation_table()}
        flavour = onnx_plugins.plugin_flavour("plugin-qdq-fp8")
    with flavour:
        model = trace_onnx(module.eval(), spec, opset, optimize, weights, custom_translation_table=table)
    try:
        counts = lower_fp8_markers(model)
    except FP8ExportError as e:
        raise ExportError(f"{spec.name}: {e}") from None
    meta = {**(metadata or {}), "vidtrt.quantization": "fp8_e4m3",
            "vidtrt.quant_weights_sha256": state.weights_fingerprint}
    if attention_plugin:
        meta["vidtrt.flavour"] = "plugin-qdq-fp8"
    return save_onnx(model, spec, path, "always", meta, time.perf_counter() - t0), counts


def ensure_exported(model: str | Path | ModelSource, out: str | Path, components: Sequence[str] | None = None,
                    opset: int = DEFAULT_OPSET, log: Callable[[str], None] | None = None) -> dict:
    """Export the ``components`` of ``model`` into ``out`` unless its manifest already lists them for the
    same config, opset and specs with their files present (a cache for tests and services). Concurrent
    callers wait on a lock file."""
    import fcntl

    from vidtrt.runtime.engine_components import MANIFEST_NAME

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        source = ModelSource.open(model)
        names = list(components or exported_components(source))
        specs = source.specs(names)
        try:
            manifest = json.loads((out / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            manifest = {}
        same = (manifest.get("model", {}).get("config_sha256") == source.fingerprint
                and manifest.get("opset") == opset)
        entries = manifest.get("components", {}) if same else {}
        todo = [n for n in names if n not in entries or not (out / entries[n]["file"]).is_file()
                or entries[n].get("spec") != json.loads(json.dumps(specs[n].to_dict()))]
        if todo:
            manifest = export_components(source, out, todo, opset, log=log)
        return manifest


def _version(pkg: str) -> str:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:  # metadata missing in odd installs
        return "unknown"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def verification_axes(spec: ComponentSpec) -> list[dict[str, int]]:
    """Two small axis settings other than the export example: batch 1 at minimum sizes, and batch 2 at
    the smallest bucket (or the export sizes + 1 step)."""
    small = {a: r.clamp(max(r.min, 2 * r.multiple)) for a, r in spec.axes.items()}
    small["batch"] = 1 if "batch" in spec.axes else None
    small = {k: v for k, v in small.items() if v is not None}
    other = {a: spec.axes[a].clamp(v + spec.axes[a].multiple) for a, v in spec.export_axes.items()}
    return [small, other]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (the scale-free error the tests bound)."""
    scale = float(np.abs(want).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - want).max()) / scale


def norm_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want|| (float64): the error of FP8 graphs, where float32 rounding differences
    upstream of a quantizer flip single FP8 roundings (see ``onnx_fp8``), so the max error is no bound."""
    want64 = want.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - want64) / (np.linalg.norm(want64) or 1.0))


def verify_onnx(module: torch.nn.Module, spec: ComponentSpec, path: Path, tol: float = 1e-4,
                metric: Callable[[np.ndarray, np.ndarray], float] = relative_error, fp8: bool | None = None) -> float:
    """Run ``path`` in onnxruntime and ``module`` in torch on :func:`verification_axes`; the worst error
    (``metric``, default :func:`relative_error`). ``fp8``: a Q/DQ graph (see OnnxRuntimeEngine)."""
    from vidtrt.runtime.engines import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(path, spec, fp8=fp8)
    worst = 0.0
    for i, axes in enumerate(verification_axes(spec)):
        feeds = spec.example_inputs(axes, seed=100 + i)
        got = engine.run(feeds)
        with torch.no_grad():
            want = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
        want = want if isinstance(want, tuple) else (want,)
        for name, w in zip(spec.output_names, want, strict=True):
            err = metric(got[name], w.float().numpy())
            worst = max(worst, err)
            if not err <= tol:
                raise ExportError(f"{spec.name}: onnxruntime differs from torch by {err:.2e} (> {tol:g}) on "
                                  f"{name!r} at {axes}")
    return worst


# ------------------------------------------------------------------------------------------------ CLI


def export_main(args: argparse.Namespace) -> int:
    quantized = getattr(args, "quantized", None)
    manifest = export_components(args.model, args.out, args.components, args.opset, args.external_data,
                                 optimize=not args.no_optimize, verify=args.verify,
                                 stream_weights=not args.no_stream_weights,
                                 log=lambda line: print(line, file=sys.stdout, flush=True), quantized=quantized)
    print(f"wrote {Path(args.out) / 'manifest.json'} ({len(manifest['components'])} components, "
          f"model {manifest['model']['name']}, opset {manifest['opset']})")
    return 0
