"""TensorRT plans and the machine they were built for: the build manifest next to each plan, and the check
that refuses a plan from another TensorRT version or GPU with one line.

A TensorRT plan only deserializes in the TensorRT release that built it (we build without
version-compatible mode) and is tuned for one GPU model; anything else fails inside TensorRT with a long
log, or loads and runs slower. So ``vidtrt build --engine tensorrt`` writes ``<plan>.json`` beside every
``<plan>`` (format :data:`PLAN_MANIFEST_FORMAT`):

    {"format": ..., "component": "dit", "tensorrt_version": "10.5.0", "gpu": {"name": "NVIDIA H200",
     "compute_capability": "9.0"}, "model": {"name": ..., "fingerprint": ...}, "precision": "bf16" | "fp8",
     "onnx": {...}, "network_flags": [...], "builder_flags": [...], "profiles": [...], "io": [...], ...}

and both :class:`vidtrt.runtime.engines.TensorRTEngine` and the ``vidtrt serve`` pre-flight
(:func:`check_repository_plans`) compare it with :func:`host_identity` before TensorRT sees the plan.

The TensorRT version of a host comes from the ``tensorrt`` Python package when it imports, else from
``libnvinfer`` itself (Triton's TensorRT backend needs only the library, e.g. in NGC's tritonserver image);
the GPU from torch's CUDA runtime. Nothing here imports TensorRT at module import.
"""

from __future__ import annotations

import ctypes
import json
import re
from dataclasses import dataclass
from pathlib import Path

from vidtrt.errors import EngineError, one_line

PLAN_MANIFEST_FORMAT = "vidtrt-tensorrt-plan/1"
PLAN_FILE = "model.plan"  # Triton's TensorRT backend's default_model_filename
LIBNVINFER = ("libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so")


def manifest_path(plan: str | Path) -> Path:
    """``<plan>.json``: the build manifest of ``plan``."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def version_key(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a TensorRT version string ('10.5.0', '10.5.0.18', '11.4.0.post1')."""
    nums = [int(n) for n in re.findall(r"\d+", str(version))[:3]]
    return tuple(nums + [0] * (3 - len(nums)))


def version_text(version: str) -> str:
    return ".".join(str(n) for n in version_key(version))


@dataclass(frozen=True)
class TensorRTHost:
    """What a plan is tied to: the TensorRT release (major.minor.patch) and the GPU model."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"

    def describe(self) -> str:
        sm = self.compute_capability.replace(".", "")
        return f"TensorRT {version_text(self.tensorrt_version)} on {self.gpu_name} (sm_{sm})"

    def to_dict(self) -> dict:
        return {"tensorrt_version": self.tensorrt_version,
                "gpu": {"name": self.gpu_name, "compute_capability": self.compute_capability}}

    @classmethod
    def from_manifest(cls, manifest: dict) -> TensorRTHost:
        gpu = manifest.get("gpu") or {}
        return cls(str(manifest.get("tensorrt_version", "?")), str(gpu.get("name", "?")),
                   str(gpu.get("compute_capability", "?")))


def libnvinfer_version() -> str | None:
    """The TensorRT version of the ``libnvinfer`` this process can load, or None.

    TensorRT 11 (and late 10.x) export ``getInferLib{Major,Minor,Patch}Version``; 10.x has
    ``getInferLibVersion`` = major * 10000 + minor * 100 + patch."""
    for name in LIBNVINFER:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            parts = [getattr(lib, f"getInferLib{p}Version")() for p in ("Major", "Minor", "Patch")]
            return ".".join(str(int(p)) for p in parts)
        except AttributeError:
            pass
        try:
            v = int(lib.getInferLibVersion())
        except AttributeError:
            continue
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    return None


def tensorrt_version(trt=None) -> str | None:
    """The TensorRT version: ``trt.__version__`` of the given (or importable) ``tensorrt`` module, else
    ``libnvinfer``'s, else None."""
    if trt is None:
        try:
            import tensorrt as trt
        except (ImportError, OSError):
            trt = None
    if trt is not None and getattr(trt, "__version__", None):
        return str(trt.__version__)
    return libnvinfer_version()


def gpu_identity(device: int | str = 0) -> tuple[str, str]:
    """(name, "major.minor") of a CUDA device, or EngineError when this process has no CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        raise EngineError("TensorRT plans need a CUDA GPU and this process sees none "
                          "(torch.cuda.is_available() is False)")
    dev = torch.device(device if isinstance(device, str) else f"cuda:{device}")
    major, minor = torch.cuda.get_device_capability(dev)
    return torch.cuda.get_device_name(dev), f"{major}.{minor}"


def host_identity(trt=None, device: int | str = 0) -> TensorRTHost:
    """This machine's :class:`TensorRTHost` (``trt``: the tensorrt module to ask, default the importable one
    or libnvinfer). EngineError, one line, when it has no TensorRT or no GPU."""
    version = tensorrt_version(trt)
    if version is None:
        raise EngineError("TensorRT is not installed here (neither the tensorrt Python package nor libnvinfer "
                          "loads), so the repository's tensorrt_plan models cannot run; serve it in an NGC "
                          "tritonserver container (nvcr.io/nvidia/tritonserver:24.10-py3 has TensorRT 10.5)")
    name, cc = gpu_identity(device)
    return TensorRTHost(version, name, cc)


def read_plan_manifest(plan: str | Path) -> dict:
    """The build manifest of ``plan`` (EngineError, one line, when it is missing or unreadable)."""
    path = manifest_path(plan)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{plan} has no build manifest {path.name} next to it; rebuild it with "
                          "`vidtrt build --engine tensorrt`") from None
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read the build manifest {path}: {one_line(e)}") from None
    if not isinstance(data, dict) or data.get("format") != PLAN_MANIFEST_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise EngineError(f"{path} is not a vidtrt TensorRT build manifest (format {got!r}, "
                          f"expected {PLAN_MANIFEST_FORMAT!r})")
    return data


def plan_mismatch(manifest: dict, host: TensorRTHost) -> str | None:
    """Why a plan built as ``manifest`` says cannot run on ``host`` (None: it can)."""
    built = TensorRTHost.from_manifest(manifest)
    if version_key(built.tensorrt_version) != version_key(host.tensorrt_version):
        return "another TensorRT version"
    if built.compute_capability != host.compute_capability or built.gpu_name != host.gpu_name:
        return "another GPU"
    return None


def check_plan(plan: str | Path, host: TensorRTHost, fingerprint: str | None = None) -> dict:
    """The manifest of ``plan`` after checking it was built for ``host`` (and, when given, from the model
    with ``fingerprint``). Raises EngineError with one line naming both machines and the fix."""
    plan = Path(plan)
    if not plan.is_file():
        raise EngineError(f"TensorRT plan not found: {plan} (build it with `vidtrt build --engine tensorrt`)")
    manifest = read_plan_manifest(plan)
    why = plan_mismatch(manifest, host)
    if why:
        built = TensorRTHost.from_manifest(manifest)
        raise EngineError(f"{plan} was built for {built.describe()}, this machine has {host.describe()} "
                          f"({why}); rebuild it here with `vidtrt build --engine tensorrt`")
    got = (manifest.get("model") or {}).get("fingerprint")
    if fingerprint is not None and got != fingerprint:
        raise EngineError(f"{plan} was built from model config {str(got)[:12]}, not {fingerprint[:12]}; "
                          "rebuild the repository with `vidtrt build --engine tensorrt`")
    return manifest


def _config_platform(config_text: str) -> str | None:
    m = re.search(r'^\s*(platform|backend)\s*:\s*"([^"]+)"', config_text, re.M)
    return m.group(2) if m else None


def tensorrt_models(repository: str | Path) -> list[Path]:
    """Model folders of ``repository`` whose config.pbtxt is a TensorRT model (``platform:
    "tensorrt_plan"`` or ``backend: "tensorrt"``)."""
    out = []
    for cfg in sorted(Path(repository).glob("*/config.pbtxt")):
        if _config_platform(cfg.read_text()) in ("tensorrt_plan", "tensorrt"):
            out.append(cfg.parent)
    return out


def check_repository_plans(repository: str | Path, host: TensorRTHost | None = None) -> list[dict]:
    """Pre-flight of a repository before tritonserver loads it: every TensorRT model's plan (newest version
    folder) must have been built for this machine. Returns their manifests ([] when the repository has no
    TensorRT model, without looking for TensorRT). Raises EngineError with one line otherwise."""
    models = tensorrt_models(repository)
    if not models:
        return []
    host = host or host_identity()
    manifests = []
    for model in models:
        versions = sorted((p for p in model.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        if not versions:
            raise EngineError(f"{model.name}: no version folder with a {PLAN_FILE}")
        manifests.append(check_plan(versions[-1] / PLAN_FILE, host))
    return manifests
