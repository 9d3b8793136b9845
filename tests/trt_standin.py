"""A recording stand-in of the ``tensorrt`` Python module (TensorRT cannot be installed on our machines).

``standin(surface)`` returns a fresh ``tensorrt`` module object (and ``tensorrt.plugin`` where the
surface has it) emulating one release's Python API closely enough to run vidtrt's build and engine code,
and refusing what that release refuses:

- ``"10.5"``  (NGC 24.10): ``NetworkDefinitionCreationFlag`` EXPLICIT_BATCH = 0 (deprecated), STRONGLY_TYPED
  = 1; the weak-typing BuilderFlags (FP16, BF16, FP8, INT8, ...) exist; no ``tensorrt.plugin``.
- ``"10.12"``: as 10.5 plus PREFER_JIT_PYTHON_PLUGINS = 2, PREFER_AOT_PYTHON_PLUGINS = 3 and
  ``tensorrt.plugin`` with ``aot_impl``.
- ``"11"`` (11.4): no EXPLICIT_BATCH; STRONGLY_TYPED = 0 (deprecated, ignored), PREFER_JIT = 1,
  PREFER_AOT = 2; the weak-typing BuilderFlags are gone (AttributeError), every network is strongly typed.

Every call lands in ``trt.calls`` (name, args). Semantics the stand-in checks: network flags are known
enum values of that release; on 10.x a network without STRONGLY_TYPED, or with a weak-typing flag set on
a strongly typed network, fails the build (as TensorRT does); the ONNX parser reads the real file
(``onnx``, no weights), needs the external data files beside it and every plugin node registered with
``tensorrt.plugin`` (AOT impl when the node says ``aot=1``); every dynamic input needs a shape in every
profile with min <= opt <= max and the rank of the input; ``build_serialized_network`` returns a "plan"
(JSON) that this stand-in's ``Runtime`` deserializes into an engine with the same I/O and profiles, whose
``execute_async_v3`` copies an input into an output of the same shape and dtype (else zero-fills), through
the raw addresses it was given.
"""

from __future__ import annotations

import ctypes
import enum
import inspect
import json
import types
from pathlib import Path

import numpy as np

SURFACES = {
    "10.5": {"version": "10.5.0", "net_flags": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, "weak": True,
             "plugin": False},
    "10.12": {"version": "10.12.0", "net_flags": {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1,
                                                  "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3},
              "weak": True, "plugin": True},
    "11": {"version": "11.4.0", "net_flags": {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1,
                                              "PREFER_AOT_PYTHON_PLUGINS": 2}, "weak": False, "plugin": True},
}
WEAK = ["FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
        "DIRECT_IO"]
COMMON_BUILDER_FLAGS = ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS",
                        "SAFETY_SCOPE", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "STRIP_PLAN",
                        "EDITABLE_TIMING_CACHE"]
ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8", 9: "BOOL",
               17: "FP8"}
ITEMSIZE = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT32": 4, "INT64": 8, "INT8": 1, "UINT8": 1, "BOOL": 1, "FP8": 1}
PLAN_MAGIC = "trt-standin-plan"


class StandinError(AssertionError):
    """A call the emulated TensorRT release would reject."""


def standin(surface: str = "11"):
    """(trt module, trtp module or None) emulating ``surface`` (a key of SURFACES)."""
    s = SURFACES[surface]
    trt = types.ModuleType("tensorrt")
    trt.__version__ = s["version"]
    trt.__file__ = f"<standin tensorrt {s['version']}>"
    trt.calls = []
    trt.surface = surface

    def rec(name, *args):
        trt.calls.append((name, args))

    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", s["net_flags"])
    flags = COMMON_BUILDER_FLAGS + (WEAK if s["weak"] else [])
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {f: i for i, f in enumerate(flags)})
    trt.DataType = enum.IntEnum("DataType", {n: i for i, n in enumerate(ITEMSIZE)})
    for alias, n in (("float32", "FLOAT"), ("float16", "HALF"), ("bfloat16", "BF16"), ("int32", "INT32"),
                     ("int64", "INT64"), ("int8", "INT8"), ("uint8", "UINT8"), ("bool", "BOOL"), ("fp8", "FP8")):
        setattr(trt, alias, trt.DataType[n])
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "TACTIC_SHARED_MEMORY": 3})

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, severity=1):
            rec("Logger", severity)

    class Tensor:
        def __init__(self, name, dtype, shape):
            self.name, self.dtype, self.shape = name, dtype, tuple(shape)

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.parsed = None
            self.meta = {}

        @property
        def strongly_typed(self):
            if surface == "11":
                return True
            return bool(self.flags >> int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) & 1)

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class ParserError:
        def __init__(self, text):
            self.text = text

        def __str__(self):
            return self.text

    class OnnxParser:
        def __init__(self, network, logger):
            rec("OnnxParser", network)
            self.network, self.errors = network, []

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return ParserError(self.errors[i])

        def parse(self, *a, **k):
            raise StandinError("vidtrt parses from the file (parse_from_file keeps external data next to it)")

        def parse_from_file(self, path):
            import onnx

            rec("parse_from_file", path)
            p = Path(path)
            model = onnx.load(str(p), load_external_data=False)
            for t in model.graph.initializer:
                for e in t.external_data:
                    if e.key == "location" and not (p.parent / e.value).is_file():
                        self.errors.append(f"external data {e.value} not found")
                        return False
            for node in model.graph.node:
                attrs = {a.name: a for a in node.attribute}
                if "plugin_namespace" in attrs:
                    pid = f"{attrs['plugin_namespace'].s.decode()}::{node.op_type}"
                    reg = trt.plugin_registry.get(pid) if trtp is not None else None
                    want = "aot" if ("aot" in attrs and attrs["aot"].i) else "impl"
                    if reg is None or want not in reg:
                        self.errors.append(f"node {node.name}: plugin {pid} ({want}) not registered")
                        return False
                    # Plugin fields: the node's other attributes, by name and type, must be the registered
                    # signature's attributes; its inputs, the signature's tensors.
                    fields = {k: a for k, a in attrs.items() if k not in ("plugin_namespace", "plugin_version", "aot")}
                    params = list(inspect.signature(reg["desc"]).parameters.values())
                    tensors = [q for q in params if q.annotation in ("trtp.TensorDesc", trtp.TensorDesc)]
                    declared = {q.name: q.annotation for q in params if q not in tensors}
                    if len(node.input) != len(tensors) or set(fields) != set(declared):
                        self.errors.append(f"node {node.name}: {pid} takes {len(tensors)} inputs and fields "
                                           f"{sorted(declared)}, the node has {len(node.input)} and {sorted(fields)}")
                        return False
                    kinds = {"float": onnx.AttributeProto.FLOAT, "int": onnx.AttributeProto.INT,
                             "str": onnx.AttributeProto.STRING}
                    bad = [k for k, a in fields.items() if kinds.get(str(declared[k])) != a.type]
                    if bad:
                        self.errors.append(f"node {node.name}: field {bad[0]} has the wrong type for {pid}")
                        return False

            def tensors(values):
                out = []
                for v in values:
                    tt = v.type.tensor_type
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
                    out.append(Tensor(v.name, trt.DataType[ONNX_TO_TRT[tt.elem_type]], dims))
                return out

            net = self.network
            net.inputs, net.outputs = tensors(model.graph.input), tensors(model.graph.output)
            net.parsed = str(p)
            net.meta = {m.key: m.value for m in model.metadata_props}
            net.onnx_dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                             for v in list(model.graph.input) + list(model.graph.output)}
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's keyword names
            rec("set_shape", name, tuple(min), tuple(opt), tuple(max))
            if not (len(min) == len(opt) == len(max)):
                raise StandinError(f"profile ranks differ for {name}")
            if not all(a <= b <= c for a, b, c in zip(min, opt, max, strict=True)):
                raise StandinError(f"profile for {name} needs min <= opt <= max: {min} {opt} {max}")
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return memoryview(self.data + b"|entry")

    class BuilderConfig:
        def __init__(self):
            self.flags, self.profiles, self.pools = set(), [], {}
            self.cache = None
            self.builder_optimization_level = 3

        def set_flag(self, flag):
            rec("set_flag", flag)
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool, size):
            rec("set_memory_pool_limit", pool, size)
            self.pools[pool] = size

        def create_timing_cache(self, data):
            rec("create_timing_cache", bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            rec("set_timing_cache", cache, ignore_mismatch)
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            rec("add_optimization_profile", dict(profile.shapes))
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            rec("Builder", logger)

        def create_network(self, flags=0):
            rec("create_network", flags)
            known = 0
            for f in trt.NetworkDefinitionCreationFlag:
                known |= 1 << int(f)
            if flags & ~known:
                raise StandinError(f"unknown network creation flags {flags:#x} for TensorRT {trt.__version__}")
            names = {f.name for f in trt.NetworkDefinitionCreationFlag if flags >> int(f) & 1}
            if {"PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"} <= names:
                raise StandinError("PREFER_AOT and PREFER_JIT together")
            return Network(flags)

        def create_builder_config(self):
            rec("create_builder_config")
            return BuilderConfig()

        def create_optimization_profile(self):
            rec("create_optimization_profile")
            return Profile()

        def build_serialized_network(self, network, config):
            rec("build_serialized_network", network, config)
            if network.parsed is None:
                raise StandinError("building a network that was never parsed")
            if not network.strongly_typed:
                raise StandinError(f"TensorRT {trt.__version__}: weakly typed network (vidtrt builds strongly typed)")
            weak = [f for f in config.flags if f.name in WEAK]
            if weak:
                return None  # TensorRT 10.x: precision flags on a strongly typed network are an error
            if not config.profiles:
                raise StandinError("dynamic inputs and no optimisation profile")
            for i, prof in enumerate(config.profiles):
                for t in network.inputs:
                    if -1 in t.shape:
                        if t.name not in prof.shapes:
                            raise StandinError(f"profile {i} lacks dynamic input {t.name}")
                        for row in prof.shapes[t.name]:
                            if len(row) != len(t.shape) or any(d != -1 and d != r for d, r in zip(t.shape, row,
                                                                                                       strict=True)):
                                raise StandinError(f"profile {i} shape {row} does not fit {t.name} {t.shape}")
            plan = {"magic": PLAN_MAGIC, "version": trt.__version__,
                    "io": [[t.name, "INPUT", t.dtype.name, list(t.shape)] for t in network.inputs]
                    + [[t.name, "OUTPUT", t.dtype.name, list(t.shape)] for t in network.outputs],
                    "dims": network.onnx_dims, "spec": network.meta.get("vidtrt.spec"),
                    "profiles": [{n: [list(r) for r in rows] for n, rows in p.shapes.items()} for p in config.profiles],
                    "flags": network.flags}
            return memoryview(json.dumps(plan).encode())

    class ExecutionContext:
        def __init__(self, engine):
            self.engine, self.profile = engine, 0
            self.shapes, self.addresses = {}, {}

        def set_optimization_profile_async(self, index, stream):
            rec("set_optimization_profile_async", index, stream)
            if not 0 <= index < self.engine.num_optimization_profiles:
                return False
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            rec("set_input_shape", name, tuple(shape))
            lo, _, hi = self.engine.plan["profiles"][self.profile][name]
            if not all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            rec("set_tensor_address", name, ptr)
            self.addresses[name] = ptr

        def _axes(self):
            axes = {}
            for name, shape in self.shapes.items():
                for d, v in zip(self.engine.plan["dims"][name], shape, strict=True):
                    if isinstance(d, str):
                        axes[d] = v
            spec = json.loads(self.engine.plan["spec"] or "{}")
            for d, (src, scale, offset) in spec.get("derived", {}).items():
                if src in axes:
                    axes[d] = scale * axes[src] + offset
            return axes

        def get_tensor_shape(self, name):
            axes = self._axes()
            return tuple(axes.get(d, -1) if isinstance(d, str) else d for d in self.engine.plan["dims"][name])

        def execute_async_v3(self, stream):
            rec("execute_async_v3", stream)
            io = {n: (mode, dt) for n, mode, dt, _ in self.engine.plan["io"]}
            for name in io:
                if name not in self.addresses:
                    raise StandinError(f"no address for {name}")
            for name, (mode, dt) in io.items():
                if mode != "OUTPUT":
                    continue
                shape = self.get_tensor_shape(name)
                nbytes = int(np.prod(shape)) * ITEMSIZE[dt]
                src = next((n for n, (m, d) in io.items() if m == "INPUT" and d == dt and self.shapes.get(n) == shape),
                           None)
                if src is not None:
                    ctypes.memmove(self.addresses[name], self.addresses[src], nbytes)
                else:
                    ctypes.memset(self.addresses[name], 0, nbytes)
            return True

    class Engine:
        def __init__(self, plan):
            self.plan = plan

        num_io_tensors = property(lambda self: len(self.plan["io"]))
        num_optimization_profiles = property(lambda self: len(self.plan["profiles"]))

        def get_tensor_name(self, i):
            return self.plan["io"][i][0]

        def _row(self, name):
            return next(r for r in self.plan["io"] if r[0] == name)

        def get_tensor_mode(self, name):
            return trt.TensorIOMode[self._row(name)[1]]

        def get_tensor_dtype(self, name):
            return trt.DataType[self._row(name)[2]]

        def get_tensor_profile_shape(self, name, index):
            return [tuple(r) for r in self.plan["profiles"][index][name]]

        def create_execution_context(self):
            rec("create_execution_context")
            return ExecutionContext(self)

    class Runtime:
        def __init__(self, logger):
            rec("Runtime", logger)

        def deserialize_cuda_engine(self, data):
            rec("deserialize_cuda_engine", len(data))
            try:
                plan = json.loads(bytes(data))
            except ValueError:
                return None
            if plan.get("magic") != PLAN_MAGIC or plan.get("version") != trt.__version__:
                return None
            return Engine(plan)

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.plugin_registry = {}
    trtp = _plugin_module(trt) if s["plugin"] else None
    if trtp is not None:
        trt.plugin = trtp
    return trt, trtp


def _plugin_module(trt):
    """``tensorrt.plugin`` (quickly deployable plugins): decorators record into ``trt.plugin_registry``."""
    trtp = types.ModuleType("tensorrt.plugin")

    def deco(kind):
        def outer(pid):
            def inner(fn):
                trt.calls.append((f"plugin.{kind}", (pid,)))
                trt.plugin_registry.setdefault(pid, {})[kind] = fn
                return fn

            return inner

        return outer

    trtp.register, trtp.autotune, trtp.aot_impl, trtp.impl = deco("desc"), deco("autotune"), deco("aot"), deco("impl")

    class TensorDesc:
        def __init__(self, shape_expr=(), dtype=None):
            self.shape_expr, self.dtype = tuple(shape_expr), dtype

        def like(self):
            return TensorDesc(self.shape_expr, self.dtype)

    class AutoTuneCombination:
        def __init__(self, io_types=None, layouts=None, tactics=None):
            self.io_types, self.layouts, self._tactics = io_types, layouts, tactics

        def tactics(self, t):
            self._tactics = list(t)

    trtp.TensorDesc, trtp.AutoTuneCombination = TensorDesc, AutoTuneCombination
    trtp.from_shape_expr = lambda shape, dtype: TensorDesc(shape, dtype)
    trtp.cdiv = lambda a, b: -(-a // b)
    trtp.KernelLaunchParams = type("KernelLaunchParams", (), {})
    trtp.SymInt32 = lambda e: e
    trtp.SymIntExprs = type("SymIntExprs", (list,), {"from_tuple": classmethod(lambda cls, t: cls(t))})
    return trtp


def install(monkeypatch, surface: str):
    """Put the stand-in of ``surface`` on ``sys.modules`` (``tensorrt`` and, where it exists,
    ``tensorrt.plugin``); returns the trt module."""
    import importlib
    import sys

    trt, trtp = standin(surface)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if trtp is not None:
        monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    else:
        monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)  # import fails like on 10.5
    from vidtrt.kernels import trt_plugins

    importlib.reload(trt_plugins)  # forget the module-level import and registrations of another run
    return trt


def calls(trt, name: str) -> list[tuple]:
    return [args for n, args in trt.calls if n == name]
