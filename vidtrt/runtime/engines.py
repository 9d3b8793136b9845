"""Engines: "run this component on these arrays", interchangeable behind one interface.

- :class:`TorchEngine`: the project's PyTorch module (Triton-language kernels on CUDA).
- :class:`OnnxRuntimeEngine`: the exported ONNX in onnxruntime (CUDA / TensorRT execution
  providers when installed, CPU otherwise).
- :class:`TensorRTEngine`: a TensorRT 10.x / 11.x plan built from the same ONNX (TensorRT is not
  installable on our machines: CI runs it against a recording stand-in of the ``tensorrt`` module).

Every engine checks its inputs against the component's :class:`~vidtrt.config.specs.ComponentSpec` and
answers with numpy arrays named by the spec. Errors (missing or corrupt file, input outside the spec)
are one-line :class:`~vidtrt.errors.EngineError` naming the file or input and what is accepted.

Components built from engines (the pipeline's callables) live in :mod:`vidtrt.runtime.engine_components`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vidtrt.config.specs import ONNX_DTYPES, ComponentSpec
from vidtrt.errors import EngineError, one_line

ENGINE_KINDS = ("torch", "onnxruntime", "tensorrt")


class Engine(Protocol):
    """Runs one component: ``run(feeds)`` takes the spec's inputs by name and returns its outputs by name."""

    spec: ComponentSpec

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class TorchEngine:
    """A torch callable taking the spec's inputs positionally and returning its outputs (tensor or tuple).

    Floating inputs are cast to ``dtype`` on ``device``; outputs come back as float32 numpy arrays.
    """

    kind = "torch"

    def __init__(self, spec: ComponentSpec, fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
                 device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.spec, self.fn, self.device, self.dtype = spec, fn, torch.device(device), dtype

    @torch.inference_mode()
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_inputs(feeds)
        args = []
        for t in self.spec.inputs:
            x = torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(self.device)
            args.append(x.to(self.dtype) if x.is_floating_point() else x)
        out = self.fn(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return {t.name: o.to("cpu", torch.float32).numpy() for t, o in zip(self.spec.outputs, outs, strict=True)}


# ------------------------------------------------------------------------------------------ onnxruntime
def _tensorrt_libs_present() -> bool:
    for name in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def onnxruntime_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Execution providers: ``requested`` (checked against this onnxruntime), else TensorRT (when its
    libraries load) and CUDA when this onnxruntime has them, CPU always last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise EngineError(f"onnxruntime execution provider {unknown[0]!r} is not available; "
                              f"accepted: {available}")
        return list(requested)
    preferred = []
    if "TensorrtExecutionProvider" in available and _tensorrt_libs_present():
        preferred.append("TensorrtExecutionProvider")
    if "CUDAExecutionProvider" in available:
        preferred.append("CUDAExecutionProvider")
    return preferred + ["CPUExecutionProvider"]


def _external_data_files(path: Path) -> list[str]:
    """Names of the external data files an ONNX file refers to (reads the graph only, not the data)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and others on corrupt files
        raise EngineError(f"cannot read ONNX file {path}: {one_line(e)}") from None
    files = []
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in init.external_data if e.key == "location"), None)
            if loc and loc not in files:
                files.append(loc)
    return files


class OnnxRuntimeEngine:
    """An exported component in onnxruntime.

    ``threads``: intra-op threads (0 = onnxruntime's default, one per core); ``inter_threads``:
    inter-op threads (0 = default); ``providers``: execution providers in priority order (default:
    TensorRT, CUDA when installed, then CPU); ``session_options``: extra ``SessionOptions`` attributes
    (e.g. ``{"enable_mem_pattern": False}``); ``graph_optimization``: "all" (default), "extended",
    "basic" or "disabled". FP8 (Q/DQ) graphs load with basic graph optimisations (onnxruntime's higher
    levels move Transposes onto FP8 data); ``fp8=None`` guesses that from the file name.
    """

    kind = "onnxruntime"
    _LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}

    def __init__(self, path: str | Path, spec: ComponentSpec, threads: int = 0,
                 providers: Sequence[str] | None = None, fp8: bool | None = None, inter_threads: int = 0,
                 graph_optimization: str | None = None, session_options: Mapping[str, Any] | None = None):
        import onnxruntime as ort

        self.path, self.spec = Path(path), spec
        if not self.path.is_file():
            raise EngineError(f"{spec.name}: ONNX file not found: {self.path} (run `vidtrt export` first)")
        for name in _external_data_files(self.path):
            if not (self.path.parent / name).is_file():
                raise EngineError(f"{spec.name}: {self.path} needs its external data file "
                                  f"{self.path.parent / name}, which is missing")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        if inter_threads:
            opts.inter_op_num_threads = int(inter_threads)
        if fp8 is None:
            fp8 = "fp8" in self.path.name
        level = graph_optimization or ("basic" if fp8 else "all")
        if level not in self._LEVELS:
            raise EngineError(f"graph_optimization {level!r} is not valid; accepted: {list(self._LEVELS)}")
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self._LEVELS[level])
        for key, value in (session_options or {}).items():
            if not hasattr(opts, key):
                raise EngineError(f"onnxruntime SessionOptions has no attribute {key!r}")
            setattr(opts, key, value)
        self.providers = onnxruntime_providers(providers)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt models
            raise EngineError(f"{spec.name}: cannot load ONNX file {self.path}: {one_line(e)}") from None
        self._check_signature()

    def _check_signature(self) -> None:
        """The file's inputs/outputs must be the spec's: names, element types, ranks, fixed sizes."""
        import onnxruntime as ort  # noqa: F401  (types come from the session)

        type_names = {f"tensor({'float' if k == 'float32' else 'double' if k == 'float64' else k})": k
                      for k in ONNX_DTYPES}
        got_in = {i.name: i for i in self.session.get_inputs()}
        got_out = {o.name: o for o in self.session.get_outputs()}
        if sorted(got_in) != sorted(self.spec.input_names):
            raise EngineError(f"{self.spec.name}: {self.path} has inputs {sorted(got_in)}, "
                              f"the spec expects {self.spec.input_names} (exported from another model?)")
        missing = [n for n in self.spec.output_names if n not in got_out]
        if missing:
            raise EngineError(f"{self.spec.name}: {self.path} lacks output {missing[0]!r}; "
                              f"it has {sorted(got_out)}")
        for t in self.spec.inputs + self.spec.outputs:
            arg = got_in.get(t.name) or got_out[t.name]
            dtype = type_names.get(arg.type, arg.type)
            if dtype != t.dtype:
                raise EngineError(f"{self.spec.name}: {self.path} declares {t.name!r} as {arg.type}, "
                                  f"the spec says {t.dtype}")
            shape = list(arg.shape)
            if len(shape) != len(t.shape) or any(
                isinstance(want, int) and got != want for got, want in zip(shape, t.shape, strict=True)
            ):
                raise EngineError(f"{self.spec.name}: {self.path} declares {t.name!r} with shape {shape}, "
                                  f"the spec says {list(t.shape)}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_inputs(feeds)
        outs = self.session.run(self.spec.output_names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return dict(zip(self.spec.output_names, outs, strict=True))


class TensorRTEngine:
    """A TensorRT plan (``model.plan``) built by ``vidtrt build --engine tensorrt``: one optimisation profile
    per spec bucket (or one over the whole range), I/O named and typed as the spec.

    The plan's build manifest (``model.plan.json``, :mod:`vidtrt.runtime.tensorrt_plans`) is checked first: a
    plan from another TensorRT version or GPU is refused with one line before TensorRT deserializes it.
    Runs through the name-based API that TensorRT 10.x and 11.x share (``set_optimization_profile_async``,
    ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); the profile is the first whose
    min..max holds the request's shapes. ``trt``: the tensorrt module (default: ``import tensorrt``).

    TensorRT cannot be installed on this project's machines: CI runs this class against a recording stand-in
    of the ``tensorrt`` module (``device="cpu"`` there); on a GPU it needs ``device="cuda[:N]"``.
    """

    kind = "tensorrt"

    def __init__(self, path: str | Path, spec: ComponentSpec, device: str = "cuda", trt=None,
                 fingerprint: str | None = None):
        from vidtrt.runtime.tensorrt_plans import check_plan, host_identity

        self.path, self.spec = Path(path), spec
        trt = trt or import_tensorrt()
        self.trt = trt
        if not self.path.is_file():
            raise EngineError(f"{spec.name}: TensorRT plan not found: {self.path} (run `vidtrt build --engine "
                              "tensorrt` on the GPU that serves it)")
        self.device = torch.device(device)
        host = host_identity(trt, self.device.index or 0) if self.device.type == "cuda" else None
        if host is not None:
            self.manifest = check_plan(self.path, host, fingerprint)
        else:  # the CPU stand-in: no GPU to compare with
            from vidtrt.runtime.tensorrt_plans import read_plan_manifest

            self.manifest = read_plan_manifest(self.path)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # TensorRT deserializes onto the current CUDA device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{spec.name}: TensorRT could not deserialize {self.path} (corrupt, or built by another "
                              "TensorRT / for another GPU)")
        self.dtypes = self._check_io()
        self.profiles = [
            {n: tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(n, i))
             for n in spec.input_names}
            for i in range(self.engine.num_optimization_profiles)
        ]
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{spec.name}: TensorRT could not create an execution context for {self.path} "
                              "(out of GPU memory?)")
        self.profile = 0  # a new context starts on profile 0

    def _check_io(self) -> dict[str, torch.dtype]:
        """The plan's I/O must be the spec's names and dtypes; returns each tensor's torch dtype."""
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if sorted(inputs) != sorted(self.spec.input_names) or sorted(outputs) != sorted(self.spec.output_names):
            raise EngineError(f"{self.spec.name}: {self.path} has inputs {inputs} and outputs {outputs}; the spec "
                              f"expects {self.spec.input_names} -> {self.spec.output_names}")
        dtypes = {}
        for t in self.spec.inputs + self.spec.outputs:
            got = tensorrt_dtype_name(trt, engine.get_tensor_dtype(t.name))
            if got != t.dtype:
                raise EngineError(f"{self.spec.name}: {self.path} declares {t.name!r} as {got}, "
                                  f"the spec says {t.dtype}")
            dtypes[t.name] = getattr(torch, got)
        return dtypes

    def select_profile(self, shapes: Mapping[str, Sequence[int]]) -> int:
        """Index of the first optimisation profile whose min..max holds every input shape."""
        for i, prof in enumerate(self.profiles):
            if all(all(lo <= s <= hi for s, lo, hi in zip(shapes[n], prof[n][0], prof[n][2], strict=True))
                   for n in self.spec.input_names):
                return i
        raise EngineError(f"{self.spec.name}: no optimisation profile of {self.path} holds input shapes "
                          f"{ {n: list(s) for n, s in shapes.items()} } (the plan's buckets: rebuild it for this size)")

    @torch.inference_mode()
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_inputs(feeds)
        shapes = {n: tuple(int(d) for d in feeds[n].shape) for n in self.spec.input_names}
        index = self.select_profile(shapes)
        cuda = self.device.type == "cuda"
        stream = torch.cuda.current_stream(self.device) if cuda else None
        handle = stream.cuda_stream if cuda else 0
        if index != self.profile:
            if not self.context.set_optimization_profile_async(index, handle):
                raise EngineError(f"{self.spec.name}: TensorRT refused optimisation profile {index}")
            self.profile = index
        keep = []
        for name in self.spec.input_names:
            x = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device, self.dtypes[name]).contiguous()
            keep.append(x)
            if not self.context.set_input_shape(name, shapes[name]):
                raise EngineError(f"{self.spec.name}: TensorRT rejects input {name!r} of shape {list(shapes[name])}")
            self.context.set_tensor_address(name, x.data_ptr())
        outputs = {}
        for t in self.spec.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                raise EngineError(f"{self.spec.name}: TensorRT could not infer the shape of {t.name!r} ({list(shape)})")
            y = torch.empty(shape, dtype=self.dtypes[t.name], device=self.device)
            self.context.set_tensor_address(t.name, y.data_ptr())
            outputs[t.name] = y
        if not self.context.execute_async_v3(handle):
            raise EngineError(f"{self.spec.name}: TensorRT execution failed")
        if stream is not None:
            stream.synchronize()
        del keep
        return {k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in outputs.items()}


# TensorRT DataType member -> the spec's dtype names (looked up by name: 10.x and 11.x share them).
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
               "INT8": "int8", "UINT8": "uint8", "BOOL": "bool", "FP8": "float8_e4m3fn"}


def tensorrt_dtype_name(trt, dtype) -> str:
    """The spec dtype name ('float32', 'bfloat16', 'int64', ...) of a ``trt.DataType``."""
    for member, name in _TRT_DTYPES.items():
        if getattr(trt.DataType, member, object()) == dtype:
            return name
    return str(dtype)


def import_tensorrt():
    """``import tensorrt`` or a one-line EngineError saying how to get it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise EngineError(
            "TensorRT is not installed (needs the tensorrt 10.x or 11.x Python package and libnvinfer from NVIDIA, "
            "e.g. an NGC TensorRT/Triton container); use --engine onnxruntime or torch instead "
            f"({type(e).__name__})"
        ) from None
    return trt
