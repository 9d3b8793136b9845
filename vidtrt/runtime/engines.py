"""Engines: "run this component on these arrays", interchangeable behind one interface.

- :class:`TorchEngine`: the project's PyTorch module (Triton-language kernels on CUDA).
- :class:`OnnxRuntimeEngine`: the exported ONNX in onnxruntime (CUDA / TensorRT execution
  providers when installed, CPU otherwise).
- :class:`TensorRTEngine`: a TensorRT 10.x plan built from the same ONNX (thin; TensorRT is not
  installable on our machines, so everything up to the TensorRT call is what is tested).

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
    """A TensorRT 10.x plan (``.plan``) with one optimisation profile per bucket.

    Untested here: TensorRT cannot be installed on this project's machines. Input checks run first,
    so a bad request fails the same way as with the other engines.
    """

    kind = "tensorrt"

    def __init__(self, path: str | Path, spec: ComponentSpec, device: str = "cuda"):
        self.path, self.spec = Path(path), spec
        trt = import_tensorrt()
        if not self.path.exists():
            raise EngineError(f"{spec.name}: TensorRT plan not found: {self.path} (run `vidtrt build` on a GPU)")
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{spec.name}: {self.path} is not a TensorRT plan for this TensorRT/GPU")
        self.context = self.engine.create_execution_context()
        self.device = torch.device(device)

    @torch.inference_mode()
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover - needs TensorRT
        self.spec.check_inputs(feeds)
        stream = torch.cuda.current_stream(self.device)
        keep = []
        for name in self.spec.input_names:
            x = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device)
            keep.append(x)
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
        outputs = {}
        for t in self.spec.outputs:
            shape = tuple(self.context.get_tensor_shape(t.name))
            y = torch.empty(shape, dtype=getattr(torch, t.dtype), device=self.device)
            self.context.set_tensor_address(t.name, y.data_ptr())
            outputs[t.name] = y
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"{self.spec.name}: TensorRT execution failed")
        stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outputs.items()}


def import_tensorrt():
    """``import tensorrt`` or a one-line EngineError saying how to get it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise EngineError(
            "TensorRT is not installed (needs the tensorrt 10.x Python package and libnvinfer from NVIDIA, e.g. "
            f"an NGC TensorRT/Triton container); use --engine onnxruntime or torch instead ({type(e).__name__})"
        ) from None
    return trt
