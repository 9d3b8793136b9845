"""Engines: "run this component on these arrays", interchangeable behind one interface.

- :class:`TorchEngine`: the project's PyTorch module (Triton-language kernels on CUDA).
- :class:`OnnxRuntimeEngine`: the exported ONNX in onnxruntime (CUDA / TensorRT execution
  providers when installed, CPU otherwise).
- :class:`TensorRTEngine`: a TensorRT 10.x plan built from the same ONNX (thin; TensorRT is not
  installable on our machines, so everything up to the TensorRT call is what is tested).

Every engine checks its inputs against the component's :class:`~vidtrt.specs.ComponentSpec` and
answers with float32/int64 numpy arrays named by the spec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vidtrt.errors import EngineError
from vidtrt.specs import ComponentSpec

ENGINE_KINDS = ("torch", "onnxruntime", "tensorrt")


class Engine(Protocol):
    spec: ComponentSpec

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class TorchEngine:
    """A torch callable taking the spec's inputs positionally and returning its outputs (tensor or tuple)."""

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


def onnxruntime_providers(requested: Sequence[str] | None = None) -> list[str]:
    """TensorRT / CUDA execution providers when this onnxruntime has them, CPU always last."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise EngineError(f"onnxruntime provider {unknown[0]!r} is not available; available: {available}")
        return list(requested)
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or ["CPUExecutionProvider"]


class OnnxRuntimeEngine:
    """An exported component in onnxruntime.

    ``threads``: intra-op threads (0 = onnxruntime's default); ``providers``: execution providers in
    priority order (default: TensorRT, CUDA when installed, then CPU). FP8 (Q/DQ) graphs load with
    basic graph optimisations only (onnxruntime's full level moves Transposes onto FP8 data).
    """

    def __init__(self, path: str | Path, spec: ComponentSpec, threads: int = 0,
                 providers: Sequence[str] | None = None, fp8: bool | None = None):
        import onnxruntime as ort

        self.path, self.spec = Path(path), spec
        if not self.path.exists():
            raise EngineError(f"{spec.name}: ONNX file not found: {self.path} (run `vidtrt export` first)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        if fp8 is None:
            fp8 = "fp8" in self.path.name
        if fp8:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=onnxruntime_providers(providers))
        except Exception as e:  # onnxruntime raises its own exception types for corrupt models
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(f"{spec.name}: cannot load ONNX file {self.path}: {first[:300]}") from None
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(spec.input_names):
            raise EngineError(f"{spec.name}: {self.path} has inputs {names}, the spec expects {spec.input_names}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_inputs(feeds)
        outs = self.session.run(self.spec.output_names, dict(feeds))
        return dict(zip(self.spec.output_names, outs, strict=True))


class TensorRTEngine:
    """A TensorRT 10.x plan (``.plan``) with one optimisation profile per bucket.

    Untested here: TensorRT cannot be installed on this project's machines. Input checks run first,
    so a bad request fails the same way as with the other engines.
    """

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
