"""The wheel, as people who `pip install vidtrt` get it and as the Triton image installs it: built from a plain
copy of the checkout by deploy/triton/build-context.sh (the `triton_context` fixture), installed
in a new venv (its dependencies borrowed from this one by a plain path entry, so the editable install
here cannot stand in), then `vidtrt build` writes the tiny repository from the wheel's packaged templates,
`vidtrt serve` runs the real tritonserver on it and `vidtrt generate` gets the same frames as in process."""

from __future__ import annotations

import os
import signal
import site
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.server]


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
    return out.stdout


def test_wheel_builds_serves_and_generates(tmp_path, triton_context):
    (wheel,) = (triton_context / "wheels").glob("vidtrt-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py, cli = venv / "bin" / "python", venv / "bin" / "vidtrt"
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--disable-pip-version-check",
          str(wheel)])  # fmt: skip
    new_site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    (tmp_path / "venv" / new_site.split(str(venv) + "/", 1)[1] / "zz_deps.pth").write_text(
        "".join(f"{d}\n" for d in site.getsitepackages())
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIDTRT_CACHE"] = str(tmp_path / "cache")  # this venv's Triton stub env / backend dir go with tmp_path
    where = _run([str(py), "-c", "import vidtrt.export.repository as r; print(r.__file__, r.templates_dir())"],
                 cwd=tmp_path, env=env).split()  # fmt: skip
    assert all(p.startswith(str(venv)) for p in where), where  # code and templates from the wheel

    repo = tmp_path / "repo"
    _run([str(cli), "build", "--model", "tiny", "--out", str(repo)], cwd=tmp_path, env=env)
    serve = subprocess.Popen([str(cli), "serve", "--repository", str(repo), "--address", "127.0.0.1",
                              "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                              "--log-file", str(tmp_path / "tritonserver.log")],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        url, deadline = None, time.monotonic() + 600
        while url is None and time.monotonic() < deadline:
            line = serve.stdout.readline()
            assert line or serve.poll() is None, serve.stderr.read()[-3000:]
            if line.strip().startswith("gRPC"):
                url = line.split()[1]
        assert url, "vidtrt serve did not report ready"
        out = tmp_path / "video.npy"
        _run([str(cli), "generate", "a cat walks on the grass", "--url", url, "-o", str(out), "--seed", "3",
              "--steps", "2", "--no-progress"], cwd=tmp_path, env=env)  # fmt: skip
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=120)
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    want = HunyuanVideoPipeline.from_model("tiny").generate("a cat walks on the grass", seed=3, num_inference_steps=2)
    np.testing.assert_array_equal(np.load(out), want)
