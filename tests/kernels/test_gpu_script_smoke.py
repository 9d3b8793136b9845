"""The one-call GPU script, run in its --smoke form (CPU interpreter, tiny shapes), so it cannot rot
while no GPU is around: every phase runs and records results, every correctness check passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_kernels_check_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_kernels_check.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_path,) = tmp_path.glob("*-cpu-smoke.json")
    report = json.loads(report_path.read_text())
    assert report["errors"] == {}
    assert report["correctness"] and all(c["ok"] for c in report["correctness"])
    assert {r["plugin"] for r in report["ptx_launch"]} == {
        "vidtrt::qk_norm_rope", "vidtrt::qk_norm_rope_fp8", "vidtrt::attention", "vidtrt::attention_fp8"
    }  # fmt: skip
    assert all(r["ptxas_ok"] for r in report["ptx_launch"])
    assert {r["method"] for r in report["attention"]} >= {"triton-bf16", "triton-fp8 (kernel)"}
    assert {r["backend"] for r in report["dit_step"]} == {"sdpa", "triton"}
    assert all(r["finite"] for r in report["dit_step"])
    md = report_path.with_suffix(".md").read_text()
    assert "## Correctness" in md and "## Attention (TFLOP/s)" in md
