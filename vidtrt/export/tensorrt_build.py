"""TensorRT plans of the DiT and the VAE tile decoder, built with the TensorRT Python API from ONNX.

    vidtrt build --model M --engine tensorrt --precision bf16|fp8 [--artifacts DIR] [--quantized DIR]

What :func:`build_plan` does with one ONNX file (TensorRT 10.x and 11.x alike):

1. ``builder.create_network(flags)`` with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: tensor types
   come from the ONNX (bf16 weights and casts, float8e4m3fn QuantizeLinear/DequantizeLinear), never from
   builder precision flags. TensorRT 11 has only strongly typed networks and removed ``EXPLICIT_BATCH``
   and ``BuilderFlag.FP16/BF16/FP8/INT8``; on 10.x those flags would make TensorRT choose types itself
   (and are errors next to STRONGLY_TYPED), so no build sets them. ``PREFER_AOT_PYTHON_PLUGINS`` is
   added when the graph carries vidtrt plugin nodes and the TensorRT has it (>= 10.9).
2. When the ONNX carries plugin nodes (``vidtrt.kernels.onnx_plugins``: op = plugin name,
   ``plugin_namespace="vidtrt"``, ``aot=1``), the quickly deployable plugins of
   :mod:`vidtrt.kernels.trt_plugins` are registered first (their ``aot_impl`` embeds Triton-compiled PTX,
   so the plan runs without Python, e.g. in Triton's TensorRT backend).
3. ``trt.OnnxParser(network, logger).parse_from_file(path)`` (external data is read from the file's
   folder); the parsed network's I/O must be the component spec's names and dtypes (float32 / int64:
   the BLS orchestrator sends exactly what it sends to the other engines).
4. One optimisation profile per spec bucket (``ComponentSpec.profiles()``: min = opt = max on the bucket's
   axes, the other axes over their range).
5. A timing cache loaded from and saved back to a file (default
   ``$VIDTRT_CACHE/tensorrt/timing-<TensorRT>-<GPU>.cache``), so a rebuild skips the kernel timing.
6. ``builder.build_serialized_network(network, config)`` -> ``<plan>`` and the build manifest
   ``<plan>.json`` (:mod:`vidtrt.runtime.tensorrt_plans`: TensorRT version, GPU name and compute capability,
   model fingerprint, ONNX summary, flags, profiles, I/O), which the engine and ``vidtrt serve`` check.

Where the ONNX comes from: ``--precision bf16`` exports the DiT and the VAE tile decoder in bfloat16 with
float32 inputs/outputs (:func:`export_bf16`, streamed from the checkpoint for the DiT) unless
``--artifacts`` holds such files; ``--precision fp8`` takes the DiT from an FP8 export (``vidtrt export
--quantized DIR``: QuantizeLinear/DequantizeLinear to float8e4m3fn, opset >= 19) in ``--artifacts``, or
makes it from ``--quantized`` when this checkout's exporter offers that, and the VAE in bf16.

TensorRT cannot be installed on this project's machines: CI drives every function here against a
recording stand-in of the ``tensorrt`` module emulating the 10.x and the 11.x API (tests/trt_standin.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vidtrt.config.specs import ComponentSpec
from vidtrt.errors import VidtrtError, one_line
from vidtrt.runtime.tensorrt_plans import (
    PLAN_FILE,
    PLAN_MANIFEST_FORMAT,
    TensorRTHost,
    gpu_identity,
    manifest_path,
    version_key,
    version_text,
)

TRT_PRECISIONS = ("bf16", "fp8")
# Triton component key -> the spec / ONNX component its plan serves (the text encoder stays Python).
TRT_COMPONENTS = {"dit": "dit", "vae_decoder": "vae_decoder_tile", "dit_probe": "dit_probe"}
FP8_MIN_OPSET = 19  # QuantizeLinear / DequantizeLinear to float8e4m3fn
PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_NAMESPACE = "vidtrt"
# ONNX TensorProto element types.
_ONNX = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64",
         16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz"}
_ITEMSIZE = {"float32": 4, "uint8": 1, "int8": 1, "int32": 4, "int64": 8, "bool": 1, "float16": 2, "float64": 8,
             "bfloat16": 2, "float8e4m3fn": 1, "float8e4m3fnuz": 1, "float8e5m2": 1, "float8e5m2fnuz": 1}
FLOAT8E4M3FN = 17
# Builder precision flags that a strongly typed build must not set (removed in TensorRT 11).
WEAK_TYPING_FLAGS = ("FP16", "BF16", "FP8", "INT8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                     "PREFER_PRECISION_CONSTRAINTS")


class TensorRTBuildError(VidtrtError):
    """A TensorRT build cannot run as asked (exit code 2)."""


# ------------------------------------------------------------------------------------------ TensorRT module
def require_tensorrt():
    """``import tensorrt`` or TensorRTBuildError, one line (``vidtrt build`` calls it before any work)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise TensorRTBuildError(
            "--engine tensorrt needs TensorRT, which is not installed here (the tensorrt 10.x/11.x Python package "
            "and libnvinfer: e.g. `pip install tensorrt-cu12-bindings==10.5.0` inside "
            "nvcr.io/nvidia/tritonserver:24.10-py3, see docs/tensorrt.md); nothing was written "
            f"({type(e).__name__})") from None
    if not hasattr(trt, "Builder"):
        raise TensorRTBuildError(f"the tensorrt module at {getattr(trt, '__file__', '?')} has no Builder (a stub "
                                 "package without libnvinfer?); nothing was written")
    return trt


@dataclass(frozen=True)
class ApiSurface:
    """What this TensorRT offers that the build depends on (10.x and 11.x differ here)."""

    version: str
    major: int
    strongly_typed: bool        # NetworkDefinitionCreationFlag.STRONGLY_TYPED (>= 9.x)
    explicit_batch_flag: bool   # NetworkDefinitionCreationFlag.EXPLICIT_BATCH (deprecated in 10, gone in 11)
    prefer_aot_plugins: bool    # NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS (>= 10.9)
    weak_typing_flags: tuple[str, ...]  # BuilderFlag.FP16/BF16/FP8/... still present (10.x) or not (11)
    python_plugins: bool        # tensorrt.plugin with aot_impl (quickly deployable AOT plugins)

    @classmethod
    def of(cls, trt) -> ApiSurface:
        ndf = trt.NetworkDefinitionCreationFlag
        version = str(getattr(trt, "__version__", "0"))
        trtp = None
        try:
            import importlib

            trtp = importlib.import_module("tensorrt.plugin") if getattr(trt, "plugin", None) is None else trt.plugin
        except (ImportError, OSError):
            trtp = None
        return cls(
            version=version, major=version_key(version)[0],
            strongly_typed=hasattr(ndf, "STRONGLY_TYPED"), explicit_batch_flag=hasattr(ndf, "EXPLICIT_BATCH"),
            prefer_aot_plugins=hasattr(ndf, "PREFER_AOT_PYTHON_PLUGINS"),
            weak_typing_flags=tuple(f for f in WEAK_TYPING_FLAGS if hasattr(trt.BuilderFlag, f)),
            python_plugins=trtp is not None and hasattr(trtp, "aot_impl"),
        )


def network_flags(trt, api: ApiSurface, plugins: bool) -> tuple[int, list[str]]:
    """(bit mask, flag names) for ``create_network``.

    10.x: STRONGLY_TYPED (without it the network is weakly typed). 11.x: no flag for that (every network is
    strongly typed; the enum member is deprecated and ignored, and its value moved from 1 to 0). Both:
    PREFER_AOT_PYTHON_PLUGINS when the graph has plugin nodes and this TensorRT knows it (>= 10.9), by the
    release's own enum value. EXPLICIT_BATCH is never set (implied since 10.0, removed in 11)."""
    if api.major < 10:
        raise TensorRTBuildError(f"TensorRT {api.version} is not supported; accepted TensorRT 10.x or 11.x")
    if api.major == 10 and not api.strongly_typed:
        raise TensorRTBuildError(f"TensorRT {api.version} has no strongly typed networks; accepted TensorRT 10.x "
                                 "or 11.x")
    names = ["STRONGLY_TYPED"] if api.major == 10 else []
    if plugins and api.prefer_aot_plugins:
        names.append("PREFER_AOT_PYTHON_PLUGINS")
    mask = 0
    for name in names:
        mask |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return mask, names


# ------------------------------------------------------------------------------------------ ONNX inspection
@dataclass
class OnnxSummary:
    """What the build needs to know about an ONNX file, read without its external data."""

    path: Path
    opset: int
    inputs: list[tuple[str, str]]
    outputs: list[tuple[str, str]]
    weight_bytes: dict[str, int]  # initializer bytes per element type
    fp8_quantize: int             # QuantizeLinear nodes producing float8e4m3fn
    fp8_dequantize: int           # DequantizeLinear nodes reading float8e4m3fn
    plugin_nodes: list[str]       # op types of vidtrt plugin nodes
    external_data: list[str]
    metadata: dict[str, str] = field(default_factory=dict)
    plugin_functions: list[str] = field(default_factory=list)  # reference ONNX functions of plugin ops attached

    @property
    def main_float_type(self) -> str | None:
        floats = {k: v for k, v in self.weight_bytes.items() if k.startswith(("float", "bfloat"))}
        return max(floats, key=floats.get) if floats else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = self.path.name
        return d


def inspect_onnx(path: str | Path) -> OnnxSummary:
    """Read ``path``'s graph (not its weights): I/O types, weight bytes per type, FP8 Q/DQ and plugin nodes."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise TensorRTBuildError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and others on corrupt files
        raise TensorRTBuildError(f"cannot read ONNX file {path}: {one_line(e)}") from None
    g = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    init_types: dict[str, int] = {}
    weight_bytes: Counter = Counter()
    external: list[str] = []
    for t in g.initializer:
        init_types[t.name] = t.data_type
        name = _ONNX.get(t.data_type, str(t.data_type))
        n = 1
        for d in t.dims:
            n *= int(d)
        weight_bytes[name] += n * _ITEMSIZE.get(name, 4)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in external:
                external.append(loc)
    for node in g.node:  # Constant nodes holding tensors count as types too
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    init_types[node.output[0]] = a.t.data_type
    value_types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    fp8: set[str] = {n for n, dt in {**value_types, **init_types}.items() if dt == FLOAT8E4M3FN}
    q = dq = 0
    plugins: list[str] = []
    for node in g.node:  # topological order: a Q's output is known before its DQ reads it
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx"):
            zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
            out_dt = attrs["output_dtype"].i if "output_dtype" in attrs else None
            if out_dt == FLOAT8E4M3FN or (zp is not None and init_types.get(zp) == FLOAT8E4M3FN):
                q += 1
                fp8.add(node.output[0])
        elif node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx"):
            if node.input[0] in fp8:
                dq += 1
        ns = attrs.get("plugin_namespace")
        if node.domain == PLUGIN_DOMAIN or (ns is not None and ns.s.decode() == PLUGIN_NAMESPACE):
            plugins.append(node.op_type)

    def io(values):
        return [(v.name, _ONNX.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))) for v in values]

    return OnnxSummary(path, opset, io(g.input), io(g.output), dict(weight_bytes), q, dq, plugins, external,
                       {p.key: p.value for p in model.metadata_props if p.key != "vidtrt.spec"},
                       sorted(f.name for f in model.functions if f.domain == PLUGIN_DOMAIN))


def check_onnx(summary: OnnxSummary, spec: ComponentSpec, precision: str, fingerprint: str | None = None,
               fp8_required: bool = False) -> None:
    """The ONNX must serve ``spec`` (names and dtypes of the I/O), be from the model with ``fingerprint``
    (when its metadata says), and hold FP8 Q/DQ when ``fp8_required``, else mostly bf16 weights.
    TensorRTBuildError, one line, otherwise."""
    p = summary.path
    want_in = [(t.name, t.dtype) for t in spec.inputs]
    want_out = [(t.name, t.dtype) for t in spec.outputs]
    if sorted(summary.inputs) != sorted(want_in) or sorted(summary.outputs) != sorted(want_out):
        raise TensorRTBuildError(f"{spec.name}: {p} has I/O {summary.inputs} -> {summary.outputs}; the spec (and "
                                 f"the BLS orchestrator) use {want_in} -> {want_out}")
    got = summary.metadata.get("vidtrt.config_sha256")
    if fingerprint and got and got != fingerprint:
        raise TensorRTBuildError(f"{spec.name}: {p} was exported from model config {got[:12]}, not {fingerprint[:12]}; "
                                 "export it again from this model")
    if summary.plugin_functions:
        raise TensorRTBuildError(f"{spec.name}: {p} carries reference functions of its plugin ops "
                                 f"({', '.join(summary.plugin_functions)}: the onnxruntime check file); build from the "
                                 "export without them")
    missing = [f for f in summary.external_data if not (p.parent / f).is_file()]
    if missing:
        raise TensorRTBuildError(f"{spec.name}: {p} needs its external data file {p.parent / missing[0]}, which is "
                                 "missing")
    main = summary.main_float_type
    if fp8_required:
        if not summary.fp8_quantize and not summary.fp8_dequantize:
            raise TensorRTBuildError(f"{spec.name}: --precision fp8 needs an FP8 ONNX (QuantizeLinear/"
                                     f"DequantizeLinear to float8e4m3fn), and {p} has none; make it with "
                                     "`vidtrt export --quantized DIR`")
        if summary.opset < FP8_MIN_OPSET:
            raise TensorRTBuildError(f"{spec.name}: {p} is opset {summary.opset}; FP8 Q/DQ need opset >= "
                                     f"{FP8_MIN_OPSET}")
    elif main not in ("bfloat16", None):
        raise TensorRTBuildError(f"{spec.name}: {p} holds {main} weights, so a strongly typed plan would compute in "
                                 f"{main}; --precision {precision} builds it from the bf16 export (`vidtrt build "
                                 "--engine tensorrt` makes it when --artifacts holds none)")


# ------------------------------------------------------------------------------------------ build config
@dataclass(frozen=True)
class TensorRTBuildConfig:
    """Settings of one plan build (like ModelOpt's configs: a dataclass with ``validate()``).

    ``workspace_gib``: the builder's workspace pool limit (0 = TensorRT's default, the whole GPU);
    ``optimization_level``: ``IBuilderConfig.builder_optimization_level`` (0..5, TensorRT's default 3);
    ``timing_cache``: file the timing cache is loaded from and saved to (None = no cache);
    ``profiles``: ``"buckets"`` (one per spec bucket) or ``"range"`` (one over the whole range).
    """

    precision: str = "bf16"
    workspace_gib: float = 0.0
    optimization_level: int = 3
    timing_cache: Path | None = None
    profiles: str = "buckets"

    def validate(self) -> TensorRTBuildConfig:
        if self.precision not in TRT_PRECISIONS:
            raise TensorRTBuildError(f"invalid --precision {self.precision!r} for --engine tensorrt: accepted "
                                     f"{list(TRT_PRECISIONS)}")
        if not 0 <= self.optimization_level <= 5:
            raise TensorRTBuildError(f"invalid optimization level {self.optimization_level}: accepted 0..5")
        if self.workspace_gib < 0:
            raise TensorRTBuildError(f"invalid workspace {self.workspace_gib} GiB: accepted >= 0 (0 = all)")
        if self.profiles not in ("buckets", "range"):
            raise TensorRTBuildError(f"invalid profiles {self.profiles!r}: accepted ['buckets', 'range']")
        return self


def default_timing_cache(host: TensorRTHost) -> Path:
    """``$VIDTRT_CACHE/tensorrt/timing-<TensorRT>-sm<CC>-<GPU>.cache``: one per TensorRT release and GPU."""
    from vidtrt import paths

    gpu = "".join(c if c.isalnum() else "-" for c in host.gpu_name).strip("-")
    cc = host.compute_capability.replace(".", "")
    return paths.cache_dir() / "tensorrt" / f"timing-{version_text(host.tensorrt_version)}-sm{cc}-{gpu}.cache"


def spec_profiles(spec: ComponentSpec, which: str = "buckets") -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """The (min, opt, max) shapes per input of each optimisation profile."""
    return spec.profiles() if which == "buckets" else [spec.profile()]


# ------------------------------------------------------------------------------------------ the build
def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _parser_errors(parser) -> str:
    errors = [str(parser.get_error(i)) for i in range(int(parser.num_errors))]
    return "; ".join(" ".join(e.split()) for e in errors[:3]) or "no error recorded"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build_plan(onnx_path: str | Path, spec: ComponentSpec, plan_path: str | Path, config: TensorRTBuildConfig,
               *, model: Mapping[str, str], trt=None, host: TensorRTHost | None = None,
               fp8_required: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Build the plan of ``spec`` from ``onnx_path`` into ``plan_path`` (module docstring, steps 1-6); returns
    the build manifest written next to it. ``model``: {"name", "fingerprint"} of the model it serves.
    ``trt``: the tensorrt module (default ``import tensorrt``); ``host``: this machine (default: its
    TensorRT version and GPU 0). Raises TensorRTBuildError with one line; writes nothing on failure."""
    config = config.validate()
    trt = trt or require_tensorrt()
    api = ApiSurface.of(trt)
    if host is None:
        name, cc = gpu_identity(0)
        host = TensorRTHost(api.version, name, cc)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    summary = inspect_onnx(onnx_path)
    check_onnx(summary, spec, config.precision, model.get("fingerprint"), fp8_required)
    t0 = time.perf_counter()

    plugin_ids: list[str] = []
    if summary.plugin_nodes:
        if not api.python_plugins:
            ops = ", ".join(sorted(set(summary.plugin_nodes)))
            raise TensorRTBuildError(
                f"{spec.name}: {onnx_path} carries vidtrt plugin nodes ({ops}) "
                f"and TensorRT {api.version} has no quickly deployable AOT plugins (tensorrt.plugin.aot_impl, "
                ">= 10.9); export without plugin nodes or use a newer TensorRT")
        from vidtrt.kernels import trt_plugins

        plugin_ids = trt_plugins.register_plugins()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    mask, flag_names = network_flags(trt, api, bool(summary.plugin_nodes))
    network = builder.create_network(mask)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise TensorRTBuildError(f"{spec.name}: TensorRT's ONNX parser rejects {onnx_path}: {_parser_errors(parser)}")
    _check_network_io(trt, network, spec, onnx_path)

    bconf = builder.create_builder_config()
    if config.workspace_gib:
        bconf.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * (1 << 30)))
    bconf.builder_optimization_level = int(config.optimization_level)
    cache_bytes = b""
    if config.timing_cache is not None and Path(config.timing_cache).is_file():
        cache_bytes = Path(config.timing_cache).read_bytes()
    cache = bconf.create_timing_cache(cache_bytes)
    if not bconf.set_timing_cache(cache, ignore_mismatch=False):
        raise TensorRTBuildError(f"{spec.name}: the timing cache {config.timing_cache} does not fit TensorRT "
                                 f"{api.version} on {host.gpu_name}; delete it to start a new one")

    profiles = spec_profiles(spec, config.profiles)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        if bconf.add_optimization_profile(profile) < 0:
            raise TensorRTBuildError(f"{spec.name}: TensorRT rejects the optimisation profile {shapes}")

    if log:
        log(f"{spec.name}: building a TensorRT {api.version} plan from {onnx_path.name} ({config.precision}, "
            f"{len(profiles)} profile(s), network flags {'|'.join(flag_names)})")
    serialized = builder.build_serialized_network(network, bconf)
    if serialized is None:
        raise TensorRTBuildError(f"{spec.name}: TensorRT could not build a plan from {onnx_path} (its log above "
                                 "says why)")
    data = bytes(serialized)
    if config.timing_cache is not None:
        _write_atomic(Path(config.timing_cache), bytes(bconf.get_timing_cache().serialize()))

    manifest = {
        "format": PLAN_MANIFEST_FORMAT,
        "component": spec.name,
        **host.to_dict(),
        "tensorrt_api": {"major": api.major, "explicit_batch_flag": api.explicit_batch_flag,
                         "weak_typing_flags": list(api.weak_typing_flags)},
        "model": {"name": model.get("name"), "fingerprint": model.get("fingerprint")},
        "precision": config.precision,
        "onnx": {**summary.to_dict(), "sha256": _file_sha256(onnx_path)},
        "strongly_typed": True,
        "network_flags": flag_names,
        "builder_flags": [],  # strongly typed: types come from the ONNX, no precision flags
        "builder_optimization_level": int(config.optimization_level),
        "workspace_gib": config.workspace_gib,
        "timing_cache": Path(config.timing_cache).name if config.timing_cache is not None else None,
        "plugins": plugin_ids,
        "profiles": [{n: [list(s) for s in rows] for n, rows in shapes.items()} for shapes in profiles],
        "io": {"inputs": [t.to_dict() for t in spec.inputs], "outputs": [t.to_dict() for t in spec.outputs]},
        "plan": {"file": plan_path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _write_atomic(plan_path, data)
    _write_atomic(manifest_path(plan_path), (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def _check_network_io(trt, network, spec: ComponentSpec, onnx_path: Path) -> None:
    """The parsed network's inputs/outputs must be the spec's names and dtypes (what Triton's config declares)."""
    from vidtrt.runtime.engines import tensorrt_dtype_name

    got_in = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    got_out = {network.get_output(i).name: network.get_output(i) for i in range(network.num_outputs)}
    if sorted(got_in) != sorted(spec.input_names) or sorted(got_out) != sorted(spec.output_names):
        raise TensorRTBuildError(f"{spec.name}: TensorRT parsed {onnx_path} with inputs {sorted(got_in)} and outputs "
                                 f"{sorted(got_out)}; the spec says {spec.input_names} -> {spec.output_names}")
    for t in spec.inputs + spec.outputs:
        tensor = got_in.get(t.name) or got_out[t.name]
        dtype = tensorrt_dtype_name(trt, tensor.dtype)
        if dtype != t.dtype:
            raise TensorRTBuildError(f"{spec.name}: TensorRT typed {t.name!r} of {onnx_path} as {dtype}; the spec "
                                     f"says {t.dtype}")
        if len(tensor.shape) != len(t.shape):
            raise TensorRTBuildError(f"{spec.name}: TensorRT parsed {t.name!r} with rank {len(tensor.shape)}; the "
                                     f"spec says {list(t.shape)}")


# ------------------------------------------------------------------------------------------ ONNX sources
def export_bf16(source, names: Sequence[str], out: str | Path, opset: int = 18,
                log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Export ``names`` (``dit``, ``vae_decoder_tile``) of ``source`` in bfloat16 behind float32 I/O into
    ``out`` (``<name>.onnx`` + external data when large); returns their paths. Reuses files whose
    ``manifest.json`` entry matches the model, opset and spec. The DiT is traced on the meta device and its
    weights streamed from the checkpoint (RAM ~ graph + one tensor)."""
    from vidtrt.export import bf16_onnx

    return bf16_onnx.export_bf16_components(source, names, out, opset=opset, log=log)


def _quantized_dit(source, quantized: Path, out: Path, log) -> Path:
    """The FP8 DiT ONNX made from a quantization state with this checkout's exporter (``vidtrt export
    --quantized``), when it has one."""
    import inspect

    from vidtrt.export import onnx_export

    if "quantized" not in inspect.signature(onnx_export.export_components).parameters:
        raise TensorRTBuildError("this vidtrt's exporter has no --quantized; run `vidtrt export --quantized "
                                 f"{quantized} --out DIR` where it exists and pass --artifacts DIR")
    manifest = onnx_export.export_components(source, out, ["dit"], quantized=quantized, log=log)
    return out / manifest["components"]["dit"]["file"]


def onnx_sources(source, precision: str, work: Path, artifacts: str | Path | None = None,
                 quantized: str | Path | None = None, log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """The ONNX file of each Triton component key in :data:`TRT_COMPONENTS` for ``precision``."""
    from vidtrt.runtime.engine_components import MANIFEST_NAME

    paths: dict[str, Path] = {}
    listed: dict[str, dict] = {}
    if artifacts is not None:
        artifacts = Path(artifacts)
        try:
            listed = json.loads((artifacts / MANIFEST_NAME).read_text()).get("components", {})
        except (OSError, ValueError) as e:
            raise TensorRTBuildError(f"--artifacts {artifacts}: cannot read {MANIFEST_NAME}: {one_line(e)}") from None
    for key, name in TRT_COMPONENTS.items():
        entry = listed.get(name)
        if entry is None:
            continue
        path = artifacts / entry["file"]
        if precision == "fp8" and key == "dit":
            paths[key] = path  # checked (FP8 Q/DQ present) by build_plan
        elif inspect_onnx(path).main_float_type == "bfloat16":
            paths[key] = path
        elif log:  # e.g. the float32 `vidtrt export`: the strongly typed plan would run in float32
            log(f"{name}: {path} is not a bf16 export; exporting {name} in bf16 instead")
    if precision == "fp8" and "dit" not in paths:
        if quantized is None:
            raise TensorRTBuildError("--precision fp8 needs the FP8 DiT ONNX: --artifacts DIR from `vidtrt export "
                                     "--quantized STATE --out DIR`, or --quantized STATE")
        paths["dit"] = _quantized_dit(source, Path(quantized), work / "onnx-fp8", log)
    todo = [TRT_COMPONENTS[k] for k in TRT_COMPONENTS if k not in paths]
    if todo:
        made = export_bf16(source, todo, work / "onnx-bf16", log=log)
        for key, name in TRT_COMPONENTS.items():
            paths.setdefault(key, made[name])
    return paths


@dataclass
class PlanSet:
    """The plans of one repository build: Triton component key -> (plan path, manifest)."""

    plans: dict[str, Path]
    manifests: dict[str, dict]
    host: TensorRTHost


def check_family(family) -> None:
    """TensorRTBuildError (one line) for a model family (a ModelFamily) without TensorRT plans (CogVideoX, so far)."""
    if family.name != "hunyuan_video":
        raise TensorRTBuildError(f"TensorRT plans are built for HunyuanVideo only, so far (not "
                                 f"{family.name}: its VAE is a frame-batch graph the plan component does not "
                                 "loop over); accepted engines here: torch, onnxruntime")


def build_plans(source, precision: str, work: str | Path, *, artifacts: str | Path | None = None,
                quantized: str | Path | None = None, config: TensorRTBuildConfig | None = None, trt=None,
                host: TensorRTHost | None = None, log: Callable[[str], None] | None = print) -> PlanSet:
    """ONNX (:func:`onnx_sources`) -> one plan per :data:`TRT_COMPONENTS` entry in ``work/plans-<precision>/``
    (``config.timing_cache`` None: :func:`default_timing_cache`)."""
    check_family(source.family)  # before TensorRT is imported: the same line on any machine
    trt = trt or require_tensorrt()
    if host is None:
        name, cc = gpu_identity(0)
        host = TensorRTHost(ApiSurface.of(trt).version, name, cc)
    config = config or TensorRTBuildConfig(precision=precision)
    if config.timing_cache is None:
        config = dataclasses.replace(config, timing_cache=default_timing_cache(host))
    config = config.validate()
    work = Path(work)
    specs = source.specs(list(TRT_COMPONENTS.values()))
    onnx_paths = onnx_sources(source, precision, work, artifacts, quantized, log)
    model = {"name": source.config.name, "fingerprint": source.fingerprint}
    plans, manifests = {}, {}
    for key, name in TRT_COMPONENTS.items():
        plan = work / f"plans-{precision}" / f"{name}.plan"
        manifests[key] = build_plan(onnx_paths[key], specs[name], plan, config, model=model, trt=trt, host=host,
                                    fp8_required=precision == "fp8" and key == "dit", log=log)
        plans[key] = plan
    return PlanSet(plans, manifests, host)


# ------------------------------------------------------------------------------------------ Triton config
def plan_config_pbtxt(template: Path, *, key: str, name: str, spec: ComponentSpec, manifest: Mapping,
                      doc: str, per_call: str, count: int, model: str, fingerprint: str) -> str:
    """``config.pbtxt`` of a ``tensorrt_plan`` component model: I/O from the spec (checked against the plan's
    manifest), dynamic dims -1, ``max_batch_size: 0``, every optimisation profile listed on the instance group."""
    import string

    from vidtrt.serving.component_io import spec_io_pbtxt

    io = manifest.get("io", {})
    names = [t["name"] for t in io.get("inputs", [])], [t["name"] for t in io.get("outputs", [])]
    if names != (spec.input_names, spec.output_names):
        raise TensorRTBuildError(f"{name}: the plan's I/O {names} is not the {spec.name} spec's "
                                 f"{spec.input_names} -> {spec.output_names}; rebuild it")
    profiles = ", ".join(f'"{i}"' for i in range(len(manifest.get("profiles", [])) or 1))
    values = dict(name=name, template="tensorrt_plan", doc=doc, per_call=per_call, io=spec_io_pbtxt(key, spec),
                  count=count, profiles=profiles, component=key, model=model, fingerprint=fingerprint,
                  precision=manifest.get("precision", "?"), tensorrt_version=manifest.get("tensorrt_version", "?"),
                  gpu=(manifest.get("gpu") or {}).get("name", "?"), plan_file=PLAN_FILE,
                  num_profiles=len(manifest.get("profiles", [])))
    return string.Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})


def main_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
