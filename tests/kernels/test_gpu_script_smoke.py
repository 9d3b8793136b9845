"""The one-call GPU script, run in its --smoke form (CPU interpreter, tiny shapes), so it cannot rot
while no GPU is around: every phase runs and records results, every correctness check passes. It runs
from a plain copy of the checkout's files, as a lent GPU machine gets them, and must import vidtrt (and
its own pytest run, the kernel tests) from that copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.checkout import copy_checkout

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_kernels_check_smoke(tmp_path):
    copy, out = copy_checkout(tmp_path / "checkout"), tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(copy / "benchmarks" / "gpu_kernels_check.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=copy, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_path,) = out.glob("*-cpu-smoke.json")
    report = json.loads(report_path.read_text())
    assert report["environment"]["vidtrt_from"] == str((copy / "vidtrt").resolve())
    assert report["errors"] == {}
    assert report["correctness"] and all(c["ok"] for c in report["correctness"])
    assert {r["plugin"] for r in report["ptx_launch"]} == {
        "vidtrt::qk_norm_rope", "vidtrt::qk_norm_rope_fp8", "vidtrt::attention", "vidtrt::attention_fp8"
    }  # fmt: skip
    assert all(r["ptxas_ok"] for r in report["ptx_launch"])
    assert {r["method"] for r in report["attention"]} >= {"triton-bf16", "triton-fp8 (kernel)"}
    assert {r["backend"] for r in report["dit_step"]} == {"sdpa", "triton"}
    assert all(r["finite"] for r in report["dit_step"])
    tests = report["pytest"]  # the kernel tests marked gpu, run by the script in its own pytest
    assert tests["passed"] >= 40 and tests["failed"] == tests["errors"] == [] and not tests["timed_out"], tests
    md = report_path.with_suffix(".md").read_text()
    assert "## Correctness" in md and "## Attention (TFLOP/s)" in md
