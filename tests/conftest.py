"""Suite-wide settings: a private cache for the embedded tiny model, the Triton interpreter on CPU; the
container build context (and its vidtrt wheel), made once per session; the shared ONNX artifacts started in the
background when the session begins; a CogVideoX server shared by the serving tests that only read from it."""

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Before anything imports triton: kernels run in the interpreter on machines without a GPU.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One tiny checkpoint for the whole session (servers started by tests inherit this too).
os.environ.setdefault("VIDTRT_CACHE", tempfile.mkdtemp(prefix="vidtrt-test-cache-"))
# This session's own folder (inside the cache) for artifacts that have no staleness check of their own
# (tests/onnx_artifacts.py): a cache kept between sessions never hands them to the next one.
os.environ.setdefault("VIDTRT_TEST_SESSION", tempfile.mkdtemp(prefix="session-", dir=os.environ["VIDTRT_CACHE"]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Before torch starts its OpenMP pool (as `vidtrt` itself does): idle workers sleep instead of spinning, which on a
# loaded 2-core machine made torch-heavy tests 3-6x slower (test_step_cache_serving.py 300 s -> 92 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def pytest_collection_finish(session) -> None:
    """Start making the ONNX artifacts (tests/onnx_artifacts.py) that the collected tests read, in one child process
    at the lowest CPU priority: they are made beside the tests that run first, and their users find them made
    (or wait on the export's lock for the rest, then reuse it). Their users call the same cached, locked makers as
    without it, so a child that fails or is stopped costs nothing but its own time. VIDTRT_TEST_PREFETCH=0: off."""
    import onnx_artifacts

    if session.config.option.collectonly or os.environ.get("VIDTRT_TEST_PREFETCH", "1") == "0":
        return
    files = {item.path.name for item in session.items}
    names = [name for name, (_, users) in onnx_artifacts.PREFETCH.items() if files & users]
    if not names:
        return
    spec = importlib.util.find_spec("vidtrt")  # the child imports the vidtrt this session tests
    root = str(Path(spec.origin).parents[1]) if spec and spec.origin else ""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    log = open(Path(os.environ["VIDTRT_CACHE"]) / "prefetch.log", "w")  # noqa: SIM115 - the child writes it
    onnx_artifacts.BACKGROUND = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("onnx_artifacts.py")), *names], env=env, stdout=log,
        stderr=subprocess.STDOUT)
    log.close()


def pytest_sessionfinish(session) -> None:
    import onnx_artifacts

    proc = onnx_artifacts.BACKGROUND
    if proc is not None and proc.poll() is None:  # still exporting (the session stopped early): stop it
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def triton_context(tmp_path_factory) -> Path:
    """The Docker build context deploy/triton/build-context.sh makes (Dockerfile, constraints.txt and the vidtrt
    wheel built from a plain copy of this checkout): one wheel build for tests/test_container_recipe.py and
    tests/test_wheel.py."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("triton") / "context"
    r = subprocess.run(["bash", str(root / "deploy" / "triton" / "build-context.sh"), str(out)],
                       env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"build-context.sh: {r.stdout[-2000:]}{r.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def cogvideox_server(tmp_path_factory):
    """One real tritonserver on the default tiny CogVideoX repository (``build_repository("tiny-cogvideox")``),
    shared by the serving tests that only send it requests and read metric deltas (test_cogvideox_serving.py,
    test_cogvideox_step_cache_serving.py, test_cogvideox_teacache_serving.py): a server start costs 15-30 s on
    2 cores. A test that changes it (unloads a model) must restore it before it ends; tests that stop, drain or
    overload a server, or need another repository, start their own."""
    from vidtrt.export.repository import build_repository
    from vidtrt.serving.server import TritonServer

    root = tmp_path_factory.mktemp("cogvideox-serving")
    repo = build_repository("tiny-cogvideox", root / "repo")
    with TritonServer(repo, log_file=root / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600) as server:
        yield server
