"""The tiny model's ONNX artifacts (float32, bf16, FP8 with its quantization state), made once per test session and
shared by the test modules.

They live under ``$VIDTRT_CACHE`` (a fresh temporary folder per session, see conftest.py; the FP8 state and
export, which have no staleness check, under this session's own folder in it); each is made under a lock file,
so concurrent callers wait for one another and then reuse what is there
(:func:`vidtrt.export.onnx_export.ensure_exported` and :func:`vidtrt.export.bf16_onnx.export_bf16_components`
re-export only what is missing or stale).

``python tests/onnx_artifacts.py NAME...`` makes the named ones (:data:`PREFETCH`) at the lowest CPU priority:
conftest.py starts that in the background when a session begins, so the exports (about 1.5 min of one core) run
on the core that the mostly single-threaded tests before their first user leave idle.
"""

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

BACKGROUND: subprocess.Popen | None = None  # the prefetching child conftest.py started, if any


def _cache() -> Path:
    return Path(os.environ.get("VIDTRT_CACHE") or tempfile.gettempdir())


def _session() -> Path:
    """This session's folder (conftest.py): for what has no staleness check, unlike the exports in the cache."""
    return Path(os.environ.get("VIDTRT_TEST_SESSION") or _cache() / f"session-{os.getpid()}")


BACKGROUND_NICE = 19


def _renice_background(nice: int) -> None:
    if BACKGROUND is None or BACKGROUND.poll() is not None:
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{BACKGROUND.pid}/task"):  # every thread (torch's pool has its own)
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)


@contextlib.contextmanager
def _waiting(lock: Path) -> Iterator[None]:
    """Around a maker that takes the lock file ``lock``: when the background child holds it (is making that
    artifact now), the child gets this process's CPU priority until the maker returns (where that is not permitted
    it keeps the lowest, with the CPU this waiting process leaves), then the lowest again."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
            busy = False
        except BlockingIOError:
            busy = True
    if busy:
        _renice_background(os.getpriority(os.PRIO_PROCESS, 0))
    try:
        yield
    finally:
        if busy:
            _renice_background(BACKGROUND_NICE)


def tiny_artifacts() -> Path:
    """Every component of the tiny model in float32 ONNX (test_engines.py, test_export.py, test_fp8_quant.py,
    test_repository.py)."""
    from vidtrt.export.onnx_export import ensure_exported

    root = _cache() / "onnx-tiny"
    with _waiting(root / ".export.lock"):  # ensure_exported's own lock
        ensure_exported("tiny", root)
    return root


def tiny_cogvideox_artifacts() -> Path:
    """`vidtrt export --model tiny-cogvideox`: dit.onnx, vae_decoder_batch.onnx (the VAE's frame-batch graph) and
    dit_probe.onnx (test_cogvideox_vae_onnx.py, test_cogvideox_fp8.py, test_cogvideox_serving.py,
    test_cogvideox_teacache.py)."""
    from vidtrt.export.onnx_export import ensure_exported

    root = _cache() / "onnx-tiny-cogvideox"
    with _waiting(root / ".export.lock"):  # ensure_exported's own lock
        ensure_exported("tiny-cogvideox", root)
    return root


def tiny_bf16_artifacts() -> Path:
    """The tiny model's bf16 ONNX of the DiT, the VAE tile and the DiT probe (test_tensorrt_build.py)."""
    from vidtrt.export.bf16_onnx import export_bf16_components
    from vidtrt.source.model_source import ModelSource

    out = _cache() / "onnx-tiny-bf16"
    out.mkdir(parents=True, exist_ok=True)
    with _waiting(out / ".export.lock"), open(out / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        export_bf16_components(ModelSource.open("tiny"), ["dit", "vae_decoder_tile", "dit_probe"], out)
    return out


FP8_CALIB = dict(calib_size=2, calib_steps=2)  # test_fp8_quant.py's calibration: 2 prompts x 2 steps


def tiny_fp8_state() -> tuple[Path, list[str]]:
    """`vidtrt quantize` of tiny (Python API, :data:`FP8_CALIB`): the state folder and the lines it printed
    (test_fp8_quant.py; read only)."""
    from vidtrt.export.quantize import FP8QuantConfig, quantize_model

    root = _session() / "fp8-tiny"
    root.mkdir(parents=True, exist_ok=True)
    state, printed = root / "state", root / "state-printed.json"  # written last: the state is complete
    with _waiting(root / ".state.lock"), open(root / ".state.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not printed.is_file():
            shutil.rmtree(state, ignore_errors=True)
            lines: list[str] = []
            quantize_model("tiny", state, FP8QuantConfig(**FP8_CALIB), log=lines.append)
            printed.write_text(json.dumps(lines))
    return state, json.loads(printed.read_text())


def tiny_fp8_artifacts() -> Path:
    """:func:`tiny_artifacts` with the DiT replaced by the FP8 one of :func:`tiny_fp8_state` (test_fp8_quant.py)."""
    from vidtrt.export.onnx_export import export_components

    state, _ = tiny_fp8_state()
    plain = tiny_artifacts()
    root = _session() / "fp8-tiny"
    folder, done = root / "artifacts", root / "artifacts.done"
    with _waiting(root / ".artifacts.lock"), open(root / ".artifacts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(plain, folder, ignore=shutil.ignore_patterns(".export.lock", "dit.onnx*"))
            export_components("tiny", folder, ["dit"], quantized=state, log=None)
            done.write_text("")
    return folder


# name -> (maker, the test files that read it): conftest.py prefetches the ones a session's tests need
PREFETCH = {
    "tiny_artifacts": (tiny_artifacts, {"test_engines.py", "test_export.py", "test_fp8_quant.py",
                                        "test_repository.py"}),
    "tiny_fp8_artifacts": (tiny_fp8_artifacts, {"test_fp8_quant.py"}),
    "tiny_bf16_artifacts": (tiny_bf16_artifacts, {"test_tensorrt_build.py"}),
    "tiny_cogvideox_artifacts": (tiny_cogvideox_artifacts, {"test_cogvideox_vae_onnx.py", "test_cogvideox_fp8.py",
                                                            "test_cogvideox_serving.py", "test_cogvideox_teacache.py"}),
}


if __name__ == "__main__":
    os.nice(BACKGROUND_NICE)  # only the CPU the tests leave idle
    for name in sys.argv[1:]:
        PREFETCH[name][0]()
