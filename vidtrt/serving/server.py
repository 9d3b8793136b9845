"""Launching a real Triton Inference Server on a vidtrt model repository.

Where the ``tritonserver`` binary comes from, in order: an explicit path, ``$VIDTRT_TRITONSERVER``,
``tritonserver`` on ``PATH`` (NGC containers: ``/opt/tritonserver/bin``), then the binary bundled in
the ``nvidia-pytriton`` wheel (``pytriton/tritonserver/bin/tritonserver``, Triton 2.51 with the
Python backend). For the bundled binary a backend directory ``<cache>/python/`` is assembled from the
wheel (``libtriton_python.so``, ``triton_python_backend_utils.py`` and the Python-backend stub built
for the running Python), the wheel's shared libraries go on ``LD_LIBRARY_PATH``, and the running
interpreter's ``bin`` goes first on ``PATH`` so the stub imports this environment's packages (vidtrt,
torch).

:class:`TritonServer` is a context manager (tests, benchmarks); :func:`serve_main` is ``vidtrt serve``.

Shutdown. tritonserver 2.51 on SIGTERM waits only for requests *it* counts as in flight, and a decoupled
BLS request is not one once ``execute`` has returned: it logs "Found 0 model versions that have in-flight
inferences" and unloads every model at once, so a running generation's next call to the DiT fails with
"Server not ready" within a second. Its repository API (unload) answers only before that, while the
server is READY. So :meth:`TritonServer.shutdown` (``vidtrt serve`` on SIGINT/SIGTERM) drains first
(:meth:`TritonServer.drain`): the generation models stop taking requests (UNAVAILABLE) and finish or,
after the limit, cancel what runs; then they are unloaded, and only then is tritonserver signalled,
which unloads the components nobody calls any more. For the unload the server runs with
``--model-control-mode=explicit --load-model=*`` (every model loaded at start, as before), its
repository API restricted to requests carrying a random per-launch token: an open load API would let
any client load model code.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from vidtrt import paths
from vidtrt.config import lifecycle
from vidtrt.errors import VidtrtError

INSTALL_HINT = (
    "install the Triton Inference Server binary with `pip install --no-deps nvidia-pytriton==0.7.0` "
    "(bundles tritonserver 2.51 + the Python backend), run inside an NGC tritonserver container, "
    "or pass --tritonserver PATH"
)


class ServerError(VidtrtError):
    """tritonserver is missing, died, or did not become ready."""


# The largest HTTP request body `vidtrt serve` (and TritonServer) lets through to tritonserver; larger ones
# get 413 from the guard in front of it (vidtrt.serving.http_guard: bodies of a few MB crash the bundled 2.51).
# The largest valid request is two prompts of MAX_PROMPT_CHARS = 20,000 characters: at most 240,000 bytes
# each as JSON (a character outside the BMP escaped as two \uXXXX, 12 bytes), 80,000 each as binary tensor
# data, plus a few scalars: under 0.5 MiB. 1 MiB leaves twice that.
DEFAULT_MAX_REQUEST_BYTES = 2**20


def describe_exit(returncode: int | None) -> str:
    """How a process ended, from its return code: ``"was killed by SIGSEGV (signal 11)"``,
    ``"exited with code 1"``; ``"stopped"`` when there is none."""
    if returncode is None:
        return "stopped"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        hint = " (the kernel's out-of-memory killer sends this one)" if -returncode == signal.SIGKILL else ""
        return f"was killed by {name} (signal {-returncode}){hint}"
    return f"exited with code {returncode}"

ADMIN_HEADER = "vidtrt-admin-token"  # header the restricted repository API (load/unload/index) requires
DRAIN_GRACE_S = 60.0  # after the drain limit: for cancelled generations to reach a step/tile boundary and unload
# tritonserver's own --exit-timeout-secs under `vidtrt serve`: after the drain it only unloads the components
# (measured ~5 s of backend-stub teardown on 2 cores); a short drain limit must not make it give up on that.
MIN_TRITON_EXIT_TIMEOUT_S = 30
# An idle generation model unloads in ~2-3 s. One that does not is held by tritonserver 2.51 itself: a client
# that cancelled a gRPC stream after the model's final response leaves the model referenced for good.
UNLOAD_WAIT_S = 30.0


# ----------------------------------------------------------------------------------------------
# Finding the binary and its backend directory


def _pytriton_dir() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_tritonserver(explicit: str | os.PathLike | None = None) -> Path:
    """Path to a ``tritonserver`` executable; raises :class:`ServerError` (one line) if there is none."""
    if explicit:
        p = Path(explicit)
        if p.is_dir():
            p = p / "bin" / "tritonserver" if (p / "bin" / "tritonserver").exists() else p / "tritonserver"
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise ServerError(f"tritonserver not found at {str(explicit)!r} (not an executable file); {INSTALL_HINT}")
        return p
    env = os.environ.get("VIDTRT_TRITONSERVER")
    if env:
        return find_tritonserver(env)
    which = shutil.which("tritonserver")
    if which:
        return Path(which)
    bundled = bundled_tritonserver()
    if bundled is not None:
        return bundled
    raise ServerError(f"no tritonserver binary found (not on PATH, nvidia-pytriton not installed); {INSTALL_HINT}")


def bundled_tritonserver() -> Path | None:
    """The ``tritonserver`` bundled with the nvidia-pytriton wheel, or None."""
    root = _pytriton_dir()
    if root is None:
        return None
    p = root / "tritonserver" / "bin" / "tritonserver"
    return p if p.is_file() else None


def _is_bundled(binary: Path) -> bool:
    bundled = bundled_tritonserver()
    return bundled is not None and binary.resolve() == bundled.resolve()


def _bundled_libs_dir() -> Path | None:
    root = _pytriton_dir()
    if root is None:
        return None
    libs = root.parent / "nvidia_pytriton.libs"
    return libs if libs.is_dir() else None


def python_backend_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Assemble (once, cached) a Triton backend directory holding ``python/`` for the running Python.

    Returns the directory to pass as ``--backend-directory``.
    """
    root = _pytriton_dir()
    if root is None:
        raise ServerError(f"nvidia-pytriton is not installed, so there is no bundled Python backend; {INSTALL_HINT}")
    ts = root / "tritonserver"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    src = {
        "libtriton_python.so": ts / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": ts / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": ts / "python_backend_stubs" / pyver / "triton_python_backend_stub",
    }
    missing = [str(p) for p in src.values() if not p.is_file()]
    if missing:
        raise ServerError(
            f"the nvidia-pytriton wheel lacks {missing[0]} (no Python-backend stub for Python {pyver}?); {INSTALL_HINT}"
        )
    key = hashlib.sha1(
        "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in src.values()).encode()
    ).hexdigest()[:12]
    out = Path(cache_dir) if cache_dir else paths.cache_dir() / f"triton_backends-py{pyver}-{key}"
    py = out / "python"
    if all((py / name).is_file() for name in src):
        return out
    tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=_ensure_dir(out.parent)))
    (tmp / "python").mkdir()
    for name, path in src.items():
        shutil.copy2(path, tmp / "python" / name)
    (tmp / "python" / "triton_python_backend_stub").chmod(0o755)
    try:
        tmp.rename(out)
    except OSError:  # another process won the race, or a partial directory exists
        if not all((py / name).is_file() for name in src):
            shutil.rmtree(out, ignore_errors=True)
            try:
                tmp.rename(out)
            except OSError:
                if not all((py / name).is_file() for name in src):
                    raise ServerError(f"could not assemble the Python backend directory {out}") from None
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _ensure_dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# Settings for the model processes (each set only where the environment does not already set it).
PROCESS_ENV_DEFAULTS = {
    # Python-backend models print tracebacks promptly.
    "PYTHONUNBUFFERED": "1",
    # Every model instance is its own stub process with its own OpenMP pool. Busy-waiting workers of the
    # stub that just answered steal the cores from the next one in the chain (BLS -> DiT -> BLS ...):
    # measured 5.8 s vs 0.42 s per tiny request on 2 cores. Sleep instead of spinning.
    "OMP_WAIT_POLICY": "PASSIVE",
    # glibc hands freed activation buffers back to the OS after every call and page-faults them in again on
    # the next (an idle stub between calls makes this the common case): the VAE tile decode took 277 ms
    # per tiny request in the stub vs 184 ms with freed memory kept in the heap (32 MiB mmap threshold,
    # 512 MiB trim threshold). Memory stays flat per request either way.
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(512 * 2**20),
}


# The stub environment's NumPy: the last 1.x release, the one the bundled stub was verified with.
STUB_NUMPY = "numpy==1.26.4"


def _numpy_major() -> int | None:
    try:
        from importlib.metadata import version

        return int(version("numpy").split(".")[0])
    except Exception:
        return None


def stub_python_env(auto_install: bool = True) -> Path | None:
    """The Python environment the bundled Python-backend stub must run in, or None for this one.

    Needed when this environment has NumPy >= 2 (see the module docstring). Made once under the cache
    directory (``$VIDTRT_TRITON_STUB_ENV`` overrides the place) with ``pip install --no-deps`` of
    :data:`STUB_NUMPY`;
    raises :class:`ServerError` if it is missing and ``auto_install`` is False or the install fails.
    """
    major = _numpy_major()
    if major is None or major < 2:
        return None
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    site_dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    key = hashlib.sha1("|".join([sys.prefix, *site_dirs, STUB_NUMPY]).encode()).hexdigest()[:12]
    root = Path(os.environ.get("VIDTRT_TRITON_STUB_ENV") or paths.cache_dir() / f"triton_stub_env-py{pyver}-{key}")
    marker = root / ".vidtrt-complete"
    if marker.is_file():
        return root
    if not auto_install:
        raise ServerError(
            f"the Triton Python-backend stub environment {root} is missing (the bundled stub needs numpy<2); "
            "create it with `python -m vidtrt.serving.server --prepare`"
        )
    print(f"vidtrt: creating the Triton Python-backend stub environment {root} (numpy<2 for the bundled stub)",
          file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=".stub-env-", dir=_ensure_dir(root.parent)))
    try:
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base_python, "-m", "venv", "--without-pip", str(tmp)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sp = tmp / "lib" / f"python{pyver}" / "site-packages"
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
             "--target", str(sp), STUB_NUMPY],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        if r.returncode != 0:
            last = [ln for ln in r.stdout.splitlines() if ln.strip() and "is ignored" not in ln][-1:]
            raise ServerError(f"could not pip install numpy<2 for the Triton stub environment: {' '.join(last)}")
        # Everything else comes from this environment, after the stub env's own numpy.
        (sp / "zz_vidtrt_base_env.pth").write_text(
            "".join(f"import site; site.addsitedir({d!r})\n" for d in site_dirs)
        )
        (tmp / ".vidtrt-complete").write_text(f"numpy<2 overlay for {sys.prefix}\n")
        if (root / ".vidtrt-complete").exists():
            return root  # another process finished first and may be serving from it: keep theirs
        if root.exists():  # a partial leftover of an interrupted build
            shutil.rmtree(root, ignore_errors=True)
        try:
            tmp.rename(root)
        except OSError:
            if not (root / ".vidtrt-complete").exists():
                raise ServerError(f"could not create the Triton stub environment at {root}") from None
    except subprocess.CalledProcessError as e:
        detail = e.stderr.decode(errors="replace")[-300:]
        raise ServerError(f"could not create the Triton stub environment: {detail}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def server_env(binary: Path, base: dict[str, str] | None = None, auto_install: bool = True) -> dict[str, str]:
    """Environment for tritonserver: bundled libs + libpython on LD_LIBRARY_PATH; the Python environment
    for the backend stub first on PATH (the stub embeds whatever ``python3`` it finds there)."""
    env = dict(os.environ if base is None else base)
    lib_dirs: list[str] = []
    if _is_bundled(binary):
        libs = _bundled_libs_dir()
        if libs is not None:
            lib_dirs.append(str(libs))
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir() and _is_bundled(binary):  # the wheel's binary needs our libpython; an
        lib_dirs.append(libdir)  # installed one (NGC image) has its own, and /usr/lib must not shadow CUDA compat
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
    bin_dirs = [str(Path(sys.executable).parent)]
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    stub_env = stub_python_env(auto_install) if _is_bundled(binary) else None
    if stub_env is not None:
        bin_dirs.insert(0, str(stub_env / "bin"))
        env["VIRTUAL_ENV"] = str(stub_env)
    env["PATH"] = os.pathsep.join([*bin_dirs, env.get("PATH", "")])
    for key, value in PROCESS_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# tritonserver starts through this one-liner (argv: the parent's pid, then the command): it asks Linux to
# SIGTERM it when its parent dies, so a killed test run leaves no server, then execs it (same PID). Not a
# subprocess preexec_fn: with one, subprocess must fork() rather than vfork(), fork() runs this process's
# atfork handlers in the child, and gRPC's (any tritonclient.grpc client here) restart its poller threads
# there; closing the inherited descriptors before exec then made the child abort now and then (SIGABRT,
# "Epoll1Poller ... epoll_wait error: Bad file descriptor") before tritonserver even started.
_EXEC_WITH_PDEATHSIG = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):  # the parent died before prctl
    sys.exit(1)
for name in ("SIGPIPE", "SIGXFSZ"):  # what Python ignores, as subprocess restores them: not inherited
    signal.signal(getattr(signal, name), signal.SIG_DFL)
os.execv(sys.argv[2], sys.argv[2:])
"""


# ----------------------------------------------------------------------------------------------
# The server


class TritonServer:
    """A tritonserver process serving ``repository``.

    Ports given as 0 are picked free on the loopback interface. Logs go to ``log_file`` (default: a file
    in a fresh temporary directory). With ``max_request_bytes`` (default :data:`DEFAULT_MAX_REQUEST_BYTES`)
    the HTTP port is an :class:`~vidtrt.serving.http_guard.HttpGuard` that answers 413 to larger bodies and forwards
    the rest to tritonserver's own HTTP port, a private one on 127.0.0.1 (``triton_http_port``); 0 or None
    lets tritonserver bind the HTTP port itself, with no limit. ``start()`` returns once ``/v2/health/ready``
    answers 200 (every model loaded); if the process dies or is not ready within ``ready_timeout_s`` it raises
    a one-line :class:`ServerError` carrying the log's last lines.

    >>> with TritonServer("build/repo") as srv:            # doctest: +SKIP
    ...     client = tritonclient.grpc.InferenceServerClient(srv.grpc_url)
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        address: str = "127.0.0.1",
        tritonserver: str | os.PathLike | None = None,
        backend_directory: str | os.PathLike | None = None,
        log_file: str | os.PathLike | None = None,
        log_verbose: int = 0,
        ready_timeout_s: float = 300.0,
        exit_timeout_s: int = 10,
        extra_args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        max_request_bytes: int | None = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.address = address
        self._requested_ports = (int(http_port), int(grpc_port), int(metrics_port))
        self.http_port, self.grpc_port, self.metrics_port = self._requested_ports
        self._explicit_binary = tritonserver
        self._backend_directory = backend_directory
        self._log_file = Path(log_file) if log_file else None
        self.log_verbose = log_verbose
        self.ready_timeout_s = ready_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = list(extra_args)
        self._env = env
        self.max_request_bytes = int(max_request_bytes or 0)
        if self.max_request_bytes < 0:
            raise ServerError(f"max_request_bytes must be >= 0 (0 = no limit), got {max_request_bytes}")
        # tritonserver's own HTTP port: the public one without a guard, a private loopback one behind it
        self.triton_http_port = 0
        self._guard = None
        self.process: subprocess.Popen | None = None
        self.binary: Path | None = None
        self._log_handle = None
        self._log_start = 0
        self._tmpdir: str | None = None
        self._admin_token = secrets.token_hex(16)
        self._drain_dir: str | None = None

    # -- endpoints --------------------------------------------------------------------------------
    @property
    def _host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http`` (``http://`` + this for curl)."""
        return f"{self._host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"{self._host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus text endpoint (``http://host:port/metrics``)."""
        return f"http://{self._host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        if self._log_file is None:
            self._tmpdir = tempfile.mkdtemp(prefix="vidtrt-tritonserver-")
            self._log_file = Path(self._tmpdir) / "tritonserver.log"
        return self._log_file

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # -- life cycle -------------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The tritonserver command line (binary resolved, ports chosen)."""
        binary = self.binary or find_tritonserver(self._explicit_binary)
        cmd = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--http-port={self.triton_http_port if self.max_request_bytes else self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={'127.0.0.1' if self.max_request_bytes else self.address}",
            f"--grpc-address={self.address}",
            f"--metrics-address={self.address}",
            f"--log-verbose={self.log_verbose}",
            # The repository is generated with complete configs: never let Triton guess.
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            # No GPUs here; on GPU machines Triton's GPU metrics come back automatically when allowed.
            "--allow-gpu-metrics=false",
        ]
        cmd += self._model_control_args()
        backend_dir = self._backend_directory
        if backend_dir is None and _is_bundled(binary):
            backend_dir = python_backend_dir()
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        return cmd + self.extra_args

    def _model_control_args(self) -> list[str]:
        """Explicit model control (for :meth:`drain`'s ordered unload), every model loaded at start; the
        repository API only for requests with this launch's token. Left out when the extra flags choose
        a model control mode themselves."""
        if any(a.startswith("--model-control-mode") for a in self.extra_args):
            return []
        token = f"model-repository:{ADMIN_HEADER}={self._admin_token}"
        return ["--model-control-mode=explicit", "--load-model=*",
                f"--http-restricted-api={token}", f"--grpc-restricted-protocol={token}"]

    @property
    def explicit_model_control(self) -> bool:
        return bool(self._model_control_args())

    @property
    def drain_file(self) -> Path:
        """The file :meth:`drain` writes; the generation models watch it (``$VIDTRT_DRAIN_FILE``)."""
        if self._drain_dir is None:
            self._drain_dir = tempfile.mkdtemp(prefix="vidtrt-drain-")
        return Path(self._drain_dir) / "drain.json"

    def start(self) -> TritonServer:
        """Start the server and wait until every model is ready."""
        if not self.repository.is_dir():
            raise ServerError(f"model repository {str(self.repository)!r} is not a directory")
        self.binary = find_tritonserver(self._explicit_binary)
        auto_ports = 0 in self._requested_ports
        attempts = 3 if auto_ports else 1
        for attempt in range(attempts):
            self._pick_ports()
            try:
                self._launch()
                self._wait_ready()
                return self
            except ServerError as e:
                self.stop()
                port_clash = "address already in use" in str(e).lower() or "failed to start" in str(e).lower()
                if not (auto_ports and port_clash and attempt + 1 < attempts):
                    raise
        raise AssertionError("unreachable")

    def _pick_ports(self) -> None:
        chosen: set[int] = set()
        ports = []
        for p in (*self._requested_ports, 0):
            while p == 0 or p in chosen:
                p = free_port(self._host if len(ports) < 3 else "127.0.0.1")
            chosen.add(p)
            ports.append(p)
        self.http_port, self.grpc_port, self.metrics_port, internal = ports
        self.triton_http_port = internal if self.max_request_bytes else self.http_port

    def _launch(self) -> None:
        assert self.binary is not None
        cmd = self.command()
        if self.max_request_bytes:
            from vidtrt.serving.http_guard import HttpGuard

            try:
                self._guard = HttpGuard(self.address, self.http_port, "127.0.0.1", self.triton_http_port,
                                        self.max_request_bytes).start()
            except OSError as e:
                raise ServerError(f"cannot listen for HTTP on {self.address}:{self.http_port}: {e}") from None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_path, "ab")
        self._log_start = self._log_handle.tell()
        self._log_handle.write(("$ " + " ".join(cmd).replace(self._admin_token, "***") + "\n").encode())
        self._log_handle.flush()
        if sys.platform.startswith("linux"):
            cmd = [sys.executable, "-I", "-S", "-c", _EXEC_WITH_PDEATHSIG, str(os.getpid()), *cmd]
        env = server_env(self.binary, self._env)
        env[lifecycle.DRAIN_FILE_ENV] = str(self.drain_file)
        self.process = subprocess.Popen(
            cmd,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: stop() reaches the backend stubs too
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://{self._host}:{self.http_port}/v2/health/ready"
        while True:
            rc = self.process.poll() if self.process else -1
            if rc is not None:
                raise ServerError(f"tritonserver {describe_exit(rc)} before it was ready: {self.log_summary()}")
            # Ready = our process bound our ports (its own log says so) and answers /v2/health/ready: a
            # server left over on the same ports must not pass for this one.
            if self._started_services() and _http_ok(url):
                if self.process.poll() is None:
                    return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver not ready after {self.ready_timeout_s:.0f} s: {self.log_summary()}"
                )
            time.sleep(0.2)

    def _started_services(self) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        # The metrics service binds a few tens of ms after the other two: wait for all three.
        http = f"127.0.0.1:{self.triton_http_port}" if self.max_request_bytes else f"{self.address}:{self.http_port}"
        return (f"Started HTTPService at {http}" in text
                and f"Started GRPCInferenceService at {self.address}:{self.grpc_port}" in text
                and f"Started Metrics Service at {self.address}:{self.metrics_port}" in text)

    def is_ready(self) -> bool:
        return self.process is not None and self.process.poll() is None and _http_ok(
            f"http://{self._host}:{self.http_port}/v2/health/ready"
        )

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the server (Triton finishes in-flight requests for up to ``exit_timeout_s``), then
        SIGKILL its process group if it lingers. Returns the exit code (None if never started)."""
        proc, self.process = self.process, None
        rc = None
        if proc is not None:
            timeout_s = self.exit_timeout_s + 10 if timeout_s is None else timeout_s
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            # Backend stubs live in the server's process group; make sure none outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            rc = proc.returncode
        guard, self._guard = self._guard, None
        if guard is not None:  # after tritonserver: answers in flight went through it until the end
            guard.stop()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._drain_dir is not None:
            shutil.rmtree(self._drain_dir, ignore_errors=True)
            self._drain_dir = None
        return rc

    # -- graceful shutdown ------------------------------------------------------------------------
    def generation_models(self) -> list[str]:
        """The repository's generation (BLS) models, from the manifest ``vidtrt build`` writes ([] without)."""
        try:
            manifest = json.loads((self.repository / "vidtrt-repository.json").read_text())
        except (OSError, ValueError):
            return []
        return [m for m in (manifest.get("generation_model"), manifest.get("sync_model")) if m]

    def generations_pending(self) -> float | None:
        """Generations running or waiting in the generation models (their vidtrt_generations_* gauges),
        None when the metrics cannot be read."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
                text = r.read().decode(errors="replace")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        values = re.findall(r"^vidtrt_generations_(?:in_flight|queued)\{[^}]*\} ([0-9.e+-]+)$", text, re.M)
        return sum(float(v) for v in values)

    def _admin(self, path: str) -> tuple[int, str]:
        """POST to the restricted repository API: (HTTP status, body); (0, reason) when unreachable."""
        req = urllib.request.Request(f"http://{self._host}:{self.http_port}{path}", data=b"{}", method="POST",
                                     headers={ADMIN_HEADER: self._admin_token})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError, ValueError) as e:
            return 0, str(e)

    def _states(self, names: list[str]) -> dict[str, str]:
        status, body = self._admin("/v2/repository/index")
        if status != 200:
            return {}
        try:
            return {m["name"]: m.get("state", "") for m in json.loads(body) if m.get("name") in names}
        except (ValueError, TypeError, AttributeError):
            return {}

    def drain(self, limit_s: float | None = None, *, grace_s: float = DRAIN_GRACE_S,
              say=lambda line: None, abort=lambda: False, tick=lambda: None) -> bool:
        """Let the generations in flight finish, then unload the generation models; the server keeps running.

        1. The drain file is written: the generation models answer new requests UNAVAILABLE ("the
           server is shutting down") and cancel generations still running ``limit_s`` (default
           ``exit_timeout_s``) from now at their next denoising step or VAE tile ("generation cancelled
           (server shutting down ...)"); nothing else changes, the components keep serving them.
        2. Wait until the generation models have nothing running or waiting (their gauges).
        3. Unload them through the repository API and wait until they are gone ("successfully unloaded"
           in the log, before any component's).

        Steps 2-3 end at ``limit_s + grace_s`` at the latest, or when ``abort()`` turns true (a second
        Ctrl-C). ``say`` gets one line per stage; ``tick`` is called while waiting. Returns True when the
        generation models were unloaded (or there were none), False when it gave up.
        """
        if self.process is None or self.process.poll() is not None:
            return False
        limit_s = float(self.exit_timeout_s if limit_s is None else limit_s)
        models = self.generation_models()
        lifecycle.start_drain(self.drain_file, limit_s)
        give_up = time.monotonic() + limit_s + grace_s

        def wait(done, until: float | None = None) -> bool:
            until = give_up if until is None else min(give_up, until)
            while not done():
                if abort() or time.monotonic() > until or self.process is None or self.process.poll() is not None:
                    return False
                tick()
                time.sleep(0.2)
            return True

        pending = self.generations_pending()
        if pending:
            say(f"draining: {pending:g} generation(s) in flight; new requests are answered UNAVAILABLE; "
                f"still running after {limit_s:g} s they are cancelled")
        else:
            say("draining: no generation in flight; new requests are answered UNAVAILABLE")
        if not wait(lambda: not self.generations_pending()):  # None (no metrics) -> go on to the unload
            say(f"draining: generations still in flight after {limit_s + grace_s:g} s; stopping anyway")
            return False
        if not models or not self.explicit_model_control:
            return True
        for name in models:
            status, body = self._admin(f"/v2/repository/models/{name}/unload")
            if status != 200:
                say(f"draining: could not unload {name}: {status} {body.strip()[:200]}")
                return False
        done = wait(lambda: all(self._states(models).get(m) not in ("READY", "UNLOADING", "LOADING", None)
                                for m in models), time.monotonic() + UNLOAD_WAIT_S)
        if done:
            say(f"draining: unloaded {', '.join(models)}")
        else:
            states = self._states(models)
            say("draining: the generation models did not unload (" + ", ".join(
                f"{m}: {states.get(m, 'state unknown')}" for m in models) + "), with no generation pending: "
                "tritonserver 2.51 keeps a model referenced after a client cancels a gRPC stream the model had "
                "already answered; stopping anyway (tritonserver will run into its exit timeout)")
        return done

    def shutdown(self, limit_s: float | None = None, **drain_kwargs) -> int | None:
        """:meth:`drain`, then :meth:`stop` (SIGTERM: tritonserver unloads the components and exits)."""
        try:
            self.drain(limit_s, **drain_kwargs)
        finally:
            rc = self.stop()
        return rc

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- logs -------------------------------------------------------------------------------------
    def log_tail(self, n: int = 20) -> list[str]:
        """The last ``n`` non-empty lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
        return lines[-n:]

    def _run_lines(self) -> list[str]:
        """The non-empty lines of this run of the server (the log file may hold earlier runs before it)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [ln.rstrip() for ln in text.splitlines() if ln.strip()]

    def log_summary(self, n: int = 4) -> str:
        """One line saying why the server failed, from this run's log: the fatal signal Triton caught
        (``Signal (11) received.``, its stack trace left in the log) and Triton's error lines (``E...``, less
        the ones every machine without a GPU logs); without either, its last lines (less that noise and tables)."""
        lines = self._run_lines()
        fatal = [ln.strip() for ln in lines if _SIGNAL_LINE.match(ln)]
        fatal = [ln for ln in fatal if _SIGNAL_LINE.match(ln).group(1) not in ("2", "15")] or fatal[-1:]
        meaningful = [ln for ln in lines if not any(h in ln.lower() for h in _NOISE)]
        errors = [ln for ln in meaningful if _LOG_LEVEL.match(ln) and ln[0] == "E"]
        picked = fatal[-1:]
        picked += errors[-(n - len(picked)):] if errors else []
        if not picked:
            other = [ln for ln in meaningful if ln.lstrip()[:1] not in ("+", "|", "$") and not _STACK_FRAME.match(ln)]
            picked = (other or lines)[-n:]
        frames = sum(1 for ln in lines if _STACK_FRAME.match(ln))
        trace = f"stack trace of {frames} frames and " if fatal and frames else ""
        return " | ".join(s.strip()[:400] for s in picked) + f" ({trace}full log: {self.log_path})"


# Triton's log: "I1130 05:34:21.187371 22533 grpc_server.cc:2558] ..." (levels I, W, E); what its handler for
# fatal signals prints ("Signal (11) received." then " 0# 0x... in /path/binary" per stack frame).
_LOG_LEVEL = re.compile(r"^[IWE]\d{4} ")
_SIGNAL_LINE = re.compile(r"^\s*Signal \((\d+)\) received")
_STACK_FRAME = re.compile(r"^\s*\d+# ")
# What every run on a machine without an NVIDIA GPU/driver logs (two of them as errors), unrelated to any failure.
_NOISE = ("nvml", "dcgm", "cudadriverhelper has not been initialized", "unable to allocate pinned system memory")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------
# `vidtrt serve`


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``vidtrt serve``."""
    parser.add_argument("--repository", "--model-repository", dest="repository", required=True, metavar="DIR",
                        help="model repository written by `vidtrt build` (one folder per Triton model)")
    parser.add_argument("--http-port", type=int, default=8000,
                        help="HTTP/REST port (0 = pick a free one; default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0 = pick a free one; default 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002,
                        help="Prometheus metrics port (0 = pick a free one; default 8002)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address the three endpoints bind to (default 127.0.0.1: this machine only; "
                             "0.0.0.0 = every interface, for other machines to reach it)")
    parser.add_argument("--tritonserver", metavar="PATH", default=None,
                        help="tritonserver binary (default: $VIDTRT_TRITONSERVER, PATH, "
                             "then the nvidia-pytriton wheel's)")
    parser.add_argument("--max-request-bytes", type=_non_negative_int, default=DEFAULT_MAX_REQUEST_BYTES,
                        metavar="N",
                        help="largest HTTP request body let through to tritonserver; larger ones get 413 "
                             f"(default {DEFAULT_MAX_REQUEST_BYTES} = 1 MiB, twice the largest valid request; "
                             "0 = no limit, and a body of a few MB then crashes the bundled tritonserver 2.51)")
    parser.add_argument("--log-file", default=None, metavar="FILE",
                        help="write the server log here (default: a temporary file, removed after a clean stop; "
                             "its lines from the moment the server is ready are copied to this terminal)")
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level (default 0)")
    parser.add_argument("--ready-timeout", type=float, default=600.0,
                        help="seconds to wait for every model to load before giving up (default 600)")
    parser.add_argument("--exit-timeout", type=int, default=30,
                        help="on SIGINT/SIGTERM, seconds in-flight generations get to finish (new requests "
                             "are answered UNAVAILABLE); then they are cancelled at their next step or VAE tile, "
                             "the generation models unload, then the components (default 30; a second Ctrl-C "
                             "stops at once)")
    parser.add_argument("triton_args", nargs=argparse.REMAINDER,
                        help="after `--`: extra flags passed to tritonserver unchanged")
    return parser


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of bytes >= 0, got {text!r}")
    return value


def _preflight_tensorrt(repository, tritonserver, extra: list[str]) -> None:
    """A repository with tensorrt_plan models needs a tritonserver with the TensorRT backend (not the
    pip-bundled one) and plans built for this machine's TensorRT and GPU: one line each, before starting."""
    from vidtrt.runtime.tensorrt_plans import check_repository_plans, tensorrt_models

    models = tensorrt_models(repository)
    if not models:
        return
    binary = find_tritonserver(tritonserver)
    backends = next((Path(a.split("=", 1)[1]) for a in extra if a.startswith("--backend-directory=")),
                    binary.resolve().parent.parent / "backends")
    if _is_bundled(binary) or not (backends / "tensorrt").is_dir():
        raise ServerError(f"{models[0].name} is a tensorrt_plan model and {binary} has no TensorRT backend "
                          f"({backends / 'tensorrt'} missing); serve this repository with NGC's tritonserver "
                          "(nvcr.io/nvidia/tritonserver:24.10-py3, docs/tensorrt.md)")
    check_repository_plans(repository)  # a plan for another TensorRT / GPU


def serve_main(args: argparse.Namespace) -> int:
    """Run tritonserver in the foreground until SIGINT/SIGTERM (forwarded for a clean shutdown)."""
    extra = [a for a in (args.triton_args or []) if a != "--"]
    _preflight_tensorrt(args.repository, args.tritonserver, extra)
    log_file = args.log_file
    follow = log_file is None
    if follow:
        log_file = str(Path(tempfile.mkdtemp(prefix="vidtrt-serve-")) / "tritonserver.log")
    srv = TritonServer(
        args.repository, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        address=args.address, tritonserver=args.tritonserver, log_file=log_file, log_verbose=args.log_verbose,
        ready_timeout_s=args.ready_timeout, exit_timeout_s=max(args.exit_timeout, MIN_TRITON_EXIT_TIMEOUT_S),
        extra_args=extra, max_request_bytes=getattr(args, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES),
    )
    stop = {"signal": None, "count": 0}

    def on_signal(signum, _frame):
        stop["signal"] = signum
        stop["count"] += 1

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _check_repository(srv.repository)
        print(f"starting {srv.command()[0]} on {srv.repository} (log: {srv.log_path})", file=sys.stderr, flush=True)
        srv.start()
        models = ", ".join(sorted(p.name for p in srv.repository.iterdir() if (p / "config.pbtxt").is_file()))
        print(f"ready: models {models}", flush=True)
        print(f"  gRPC    {srv.grpc_url}        (streaming progress: vidtrt generate --url {srv.grpc_url})", flush=True)
        print(f"  HTTP    http://{srv.http_url}", flush=True)
        if srv.max_request_bytes:
            print(f"          request bodies up to {srv.max_request_bytes} bytes (larger: 413)", flush=True)
        print(f"  metrics {srv.metrics_url}", flush=True)
        print("Ctrl-C to stop", flush=True)
        pos = srv.log_path.stat().st_size if follow else 0
        while stop["signal"] is None:
            if srv.process is None or srv.process.poll() is not None:
                rc = srv.process.returncode if srv.process else None
                if follow:
                    _copy_new(srv.log_path, pos)
                print(f"error: tritonserver {describe_exit(rc)}: {srv.log_summary()}", file=sys.stderr)
                return 2
            if follow:
                pos = _copy_new(srv.log_path, pos)
            time.sleep(0.3)
        name = signal.Signals(stop["signal"]).name
        print(f"\nreceived {name}: shutting down tritonserver (draining: up to {args.exit_timeout} s for "
              "generations in flight; Ctrl-C again to stop now)", file=sys.stderr, flush=True)
        follow_pos = [pos]

        def tick() -> None:
            if follow:
                follow_pos[0] = _copy_new(srv.log_path, follow_pos[0])

        rc = srv.shutdown(args.exit_timeout, say=lambda line: print(line, file=sys.stderr, flush=True),
                          abort=lambda: stop["count"] > 1, tick=tick)
        pos = follow_pos[0]
        if follow:
            _copy_new(srv.log_path, pos)
        clean = rc in (0, None, -signal.SIGTERM)
        if follow and clean:  # everything was copied to the terminal; a failed run keeps its log
            shutil.rmtree(Path(log_file).parent, ignore_errors=True)
        return 0 if clean else 2
    except VidtrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        srv.stop()
        for s, h in old.items():
            signal.signal(s, h)


def _check_repository(repository: Path) -> None:
    """ServerError (one line) unless ``repository`` is a folder holding at least one Triton model
    (``<model>/config.pbtxt``): tritonserver itself would start on an empty one and serve nothing."""
    if not repository.is_dir():
        raise ServerError(f"model repository {str(repository)!r} is not a directory (build one with `vidtrt build`)")
    if not any((p / "config.pbtxt").is_file() for p in repository.iterdir()):
        raise ServerError(f"{str(repository)!r} holds no Triton model (no <model>/config.pbtxt): pass a folder "
                          "`vidtrt build` wrote (a `vidtrt export` folder goes to `vidtrt build --artifacts`)")


def _copy_new(path: Path, pos: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except OSError:
        return pos
    if data:
        sys.stderr.write(data.decode(errors="replace"))
        sys.stderr.flush()
    return pos + len(data)


def prepare() -> int:
    """Make the cached pieces the bundled tritonserver needs (backend directory, stub environment)."""
    try:
        binary = find_tritonserver()
        if _is_bundled(binary):
            print(f"backend directory: {python_backend_dir()}")
            env = stub_python_env(auto_install=True)
            print(f"stub environment:  {env or 'this environment (numpy < 2)'}")
        else:
            print(f"tritonserver {binary}: not the bundled one, nothing to prepare")
    except VidtrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m vidtrt.serving.server --repository DIR`` (the same as ``vidtrt serve``);
    ``python -m vidtrt.serving.server --prepare`` makes the cached backend directory and stub environment."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--prepare"]:
        return prepare()
    parser = add_serve_arguments(argparse.ArgumentParser(prog="vidtrt serve", description=__doc__.split("\n\n")[0]))
    return serve_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
