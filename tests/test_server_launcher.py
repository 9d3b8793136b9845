"""vidtrt.serving.server: finding tritonserver, starting/stopping a real one on free loopback ports, errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from vidtrt.serving import server
from vidtrt.serving.server import ServerError, TritonServer

pytestmark = pytest.mark.server

IDENTITY_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }}, {{ name: "s" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }}, {{ name: "t" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

IDENTITY_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        {init}

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            s = pb_utils.get_input_tensor_by_name(r, "s").as_numpy()
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("y", (x * 2).astype(np.float32)),
                pb_utils.Tensor("t", np.array([s[0] + b"!"], dtype=np.object_))]))
        return out
"""


def make_repo(root: Path, name: str = "identity", init: str = "pass") -> Path:
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(IDENTITY_CONFIG.format(name=name))
    (folder / "1" / "model.py").write_text(textwrap.dedent(IDENTITY_MODEL).replace("{init}", init))
    return root


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_explicit_missing_binary_is_one_line(tmp_path):
    with pytest.raises(ServerError) as e:
        server.find_tritonserver(tmp_path / "nope")
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps nvidia-pytriton" in msg and "NGC" in msg


def test_no_binary_anywhere(monkeypatch, tmp_path):
    monkeypatch.delenv("VIDTRT_TRITONSERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(server, "bundled_tritonserver", lambda: None)
    with pytest.raises(ServerError) as e:
        TritonServer(make_repo(tmp_path)).start()
    assert "no tritonserver binary found" in str(e.value) and "nvidia-pytriton" in str(e.value)
    assert "\n" not in str(e.value)


def test_env_variable_binary(monkeypatch, tmp_path):
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("VIDTRT_TRITONSERVER", str(fake))
    assert server.find_tritonserver() == fake


def test_backend_dir_has_the_python_backend():
    b = server.python_backend_dir()
    names = {p.name for p in (b / "python").iterdir()}
    assert {"libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"} <= names
    assert server.python_backend_dir() == b  # cached


def test_missing_repository(tmp_path):
    with pytest.raises(ServerError, match="not a directory"):
        TritonServer(tmp_path / "missing").start()


def test_start_stop_free_ports_and_tensors(tmp_path):
    import tritonclient.http as httpclient

    repo = make_repo(tmp_path / "repo")
    log = tmp_path / "server.log"
    srv = TritonServer(repo, log_file=log, exit_timeout_s=3)
    with srv:
        ports = (srv.http_port, srv.grpc_port, srv.metrics_port)
        assert 0 not in ports and len(set(ports)) == 3
        assert srv.is_ready()
        assert all(_port_open(p) for p in ports)
        assert srv.grpc_url == f"127.0.0.1:{srv.grpc_port}"
        with urllib.request.urlopen(srv.metrics_url, timeout=5) as r:
            assert b"nv_inference_count" in r.read()
        # Tensors (numeric and strings) cross the Python backend intact.
        client = httpclient.InferenceServerClient(srv.http_url)
        x = httpclient.InferInput("x", [3], "FP32")
        x.set_data_from_numpy(np.array([1, 2, 3], np.float32))
        s = httpclient.InferInput("s", [1], "BYTES")
        s.set_data_from_numpy(np.array(["héllo".encode()], np.object_))
        res = client.infer("identity", [x, s])
        client.close()
        np.testing.assert_array_equal(res.as_numpy("y"), [2, 4, 6])
        assert res.as_numpy("t")[0] == "héllo!".encode()
        tree = [srv.pid] + [c.pid for c in psutil.Process(srv.pid).children(recursive=True)]
        assert len(tree) >= 2  # the server and its backend stub
    assert srv.process is None
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in tree)
    assert not any(_port_open(p) for p in ports)
    assert "Started GRPCInferenceService" in log.read_text()


def test_model_that_fails_to_load_is_one_line_with_the_log_tail(tmp_path):
    repo = make_repo(tmp_path / "repo", name="broken", init="raise RuntimeError('weights are missing here')")
    srv = TritonServer(repo, log_file=tmp_path / "server.log", ready_timeout_s=120)
    t0 = time.monotonic()
    with pytest.raises(ServerError) as e:
        srv.start()
    msg = str(e.value)
    assert "\n" not in msg and "weights are missing here" in msg and "server.log" in msg
    assert time.monotonic() - t0 < 60
    assert srv.process is None


def test_explicit_ports(tmp_path):
    ports = [server.free_port() for _ in range(3)]
    while len(set(ports)) < 3:
        ports = [server.free_port() for _ in range(3)]
    with TritonServer(make_repo(tmp_path), http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                      exit_timeout_s=3) as srv:
        assert (srv.http_port, srv.grpc_port, srv.metrics_port) == tuple(ports)
        assert srv.is_ready()


def test_serve_command_forwards_sigint(tmp_path):
    repo = make_repo(tmp_path / "repo")
    cmd = [sys.executable, "-m", "vidtrt.serving.server", "--repository", str(repo), "--http-port", "0",
           "--grpc-port", "0", "--metrics-port", "0", "--address", "127.0.0.1",
           "--log-file", str(tmp_path / "serve.log"), "--exit-timeout", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        assert "ready: models identity" in text, text + proc.stderr.read() if proc.poll() is not None else text
        http = next(ln.split()[-1] for ln in lines if ln.strip().startswith("HTTP"))
        with urllib.request.urlopen(f"{http}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        server_pids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert server_pids
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
        assert rc == 0, proc.stderr.read()
        time.sleep(0.5)
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                       for p in server_pids)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_command_errors_are_one_line(tmp_path):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "vidtrt.serving.server", "--repository", str(tmp_path / "missing")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: model repository")


def test_ports_taken_by_another_server_are_an_error_not_ready(tmp_path):
    repo = make_repo(tmp_path / "repo")
    with TritonServer(repo, log_file=tmp_path / "first.log", exit_timeout_s=3) as first:
        second = TritonServer(repo, http_port=first.http_port, grpc_port=first.grpc_port,
                              metrics_port=first.metrics_port, log_file=tmp_path / "second.log", ready_timeout_s=60)
        with pytest.raises(ServerError) as e:
            second.start()
        assert "already in use" in str(e.value) and "\n" not in str(e.value)
        assert first.is_ready()


def test_serve_binds_loopback_unless_asked():
    """`vidtrt serve` answers this machine only by default; every interface only with --address 0.0.0.0."""
    import argparse

    from vidtrt.serving.server import TritonServer, add_serve_arguments

    parse = add_serve_arguments(argparse.ArgumentParser()).parse_args
    assert parse(["--repository", "r"]).address == "127.0.0.1"
    assert parse(["--repository", "r", "--address", "0.0.0.0"]).address == "0.0.0.0"
    cmd = TritonServer("r", http_port=1, grpc_port=2, metrics_port=3).command()
    assert {f"--{k}-address=127.0.0.1" for k in ("http", "grpc", "metrics")} <= set(cmd)


def test_serve_names_the_signal_that_killed_tritonserver(tmp_path):
    """`vidtrt serve` when tritonserver dies: the signal by name and Triton's own "Signal (11) received."
    line, not an unrelated error line every CPU machine logs; --max-request-bytes reaches the guard."""
    repo = make_repo(tmp_path / "repo")
    cmd = [sys.executable, "-m", "vidtrt.serving.server", "--repository", str(repo), "--http-port", "0",
           "--grpc-port", "0", "--metrics-port", "0", "--log-file", str(tmp_path / "serve.log"), "--exit-timeout", "3",
           "--max-request-bytes", "4096"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("Ctrl-C")):
            line = proc.stdout.readline()
            assert line, "".join(lines) + proc.stderr.read()
            lines.append(line)
        assert any("request bodies up to 4096 bytes" in ln for ln in lines), lines
        http = next(ln.split()[-1] for ln in lines if ln.strip().startswith("HTTP"))
        for size, status in ((4096, 404), (4097, 413)):
            with pytest.raises(urllib.error.HTTPError) as e:
                body = b'{"inputs": []}'.ljust(size)  # valid JSON: up to the limit it reaches tritonserver
                urllib.request.urlopen(f"{http}/v2/models/nope/infer", data=body, timeout=10)
            assert e.value.code == status
        triton = next(c for c in psutil.Process(proc.pid).children() if c.name() == "tritonserver")
        os.kill(triton.pid, signal.SIGSEGV)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read().strip().splitlines()
        assert rc == 2, err
        assert err[-1].startswith("error: tritonserver was killed by SIGSEGV (signal 11): Signal (11) received."), err
        assert "stack trace of" in err[-1] and "serve.log" in err[-1] and "CudaDriverHelper" not in err[-1]
    finally:
        if proc.poll() is None:
            proc.kill()



LOG = """\
$ tritonserver --model-repository=/r
W1130 05:34:14.281429 22068 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory, ..."
E1130 05:34:14.281547 22068 server.cc:241] "CudaDriverHelper has not been initialized."
I1130 05:34:14.599819 22068 http_server.cc:362] "Started Metrics Service at 127.0.0.1:49287"
"""
STACK = """\
 0# 0x00005636F796A52D in /venv/pytriton/tritonserver/bin/tritonserver
 1# 0x00007F696125A050 in /lib/x86_64-linux-gnu/libc.so.6
"""


@pytest.mark.parametrize("fatal, rc, expected", [
    ("Signal (11) received.\n" + STACK, -11,
     "was killed by SIGSEGV (signal 11): Signal (11) received. (stack trace of 2 frames and full log: "),
    ("Signal (6) received.\n" + STACK, -6, "was killed by SIGABRT (signal 6): Signal (6) received. (stack trace"),
    ('E1130 05:34:15.1 22068 model.cc:1] "failed to load: weights are missing"\n', 1,
     'exited with code 1: E1130 05:34:15.1 22068 model.cc:1] "failed to load: weights are missing" (full log: '),
    ("", -9, "was killed by SIGKILL (signal 9) (the kernel's out-of-memory killer sends this one): "
             'I1130 05:34:14.599819 22068 http_server.cc:362] "Started Metrics Service at 127.0.0.1:49287" (full'),
])
def test_failure_summary_names_the_cause_not_the_cpu_noise(tmp_path, fatal, rc, expected):
    log = tmp_path / "server.log"
    earlier = 'E1130 01:00:00.0 1 model.cc:1] "an error of an earlier run in the same file"\n'
    log.write_text(earlier + LOG + fatal)
    srv = TritonServer(tmp_path, log_file=log)
    srv._log_start = len(earlier)  # where this run's lines begin, as _launch() records it
    summary = f"tritonserver {server.describe_exit(rc)}: {srv.log_summary()}"
    assert expected in summary, summary
    assert "CudaDriverHelper" not in summary and "earlier run" not in summary and "\n" not in summary
