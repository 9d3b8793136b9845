"""benchmarks/gpu_sparse_attention_check.py in its --smoke form (CPU interpreter, tiny shapes), from a plain
copy of the checkout as a lent GPU machine gets it: every phase runs, every correctness check passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.checkout import copy_checkout


@pytest.mark.slow
def test_gpu_sparse_attention_check_smoke(tmp_path):
    copy, out = copy_checkout(tmp_path / "checkout"), tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(copy / "benchmarks" / "gpu_sparse_attention_check.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=copy, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("*-sparse-cpu-smoke.json")
    report = json.loads(path.read_text())
    assert report["environment"]["vidtrt_from"] == str((copy / "vidtrt").resolve())
    assert report["errors"] == {}
    assert report["correctness"] and all(c["ok"] for c in report["correctness"])
    methods = {r["method"] for r in report["attention"]}
    assert {"triton-fp8 (kernel)", "sta-fp8 default", "sta-bf16 d50"} <= methods
    assert all("error" not in r for r in report["attention"])
    assert {r["backend"] for r in report["dit_step"]} == {"triton", "triton-sta"}
    assert "DiT step" in report["summary"] and "## Correctness" in path.with_suffix(".md").read_text()
