"""benchmarks/gpu_fp8_gemm_check.py in its --smoke form (CPU: interpreter, torch's CPU ``_scaled_mm``, tiny
shapes), from a plain copy of the checkout as a lent GPU machine gets it: every phase runs and records,
every check passes, the ratio line comes last."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.checkout import copy_checkout


@pytest.mark.slow
def test_gpu_fp8_gemm_check_smoke(tmp_path):
    copy, out = copy_checkout(tmp_path / "checkout"), tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(copy / "benchmarks" / "gpu_fp8_gemm_check.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=copy, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_path,) = out.glob("*-cpu-smoke-fp8-gemm.json")
    report = json.loads(report_path.read_text())
    assert report["environment"]["vidtrt_from"] == str((copy / "vidtrt").resolve())
    assert report["errors"] == {}
    checks = [c for k in ("quantizer", "gemm_correctness", "dit_step", "layer_sets") for c in report[k]["checks"]]
    assert len(checks) >= 20 and all(c["ok"] for c in checks)
    assert {r["backend"] for r in report["dit_step"]["rows"]} == {"sdpa", "fp8"}
    assert {r["method"] for r in report["gemm_bench"]} >= {"bf16 F.linear", "fp8 layer, per-token (rowwise)"}
    assert proc.stdout.strip().splitlines()[-1].startswith("DiT step (smoke) fp8 GEMMs + FP8 attention")
    assert [r["set"] for r in report["layer_sets"]["rows"]] == [
        "default", "default, dynamic-tensor", "every block GEMM", "default + FP8 attention"]  # fmt: skip
    md = report_path.with_suffix(".md").read_text()
    assert "## GEMMs at the DiT's shapes" in md and "## FP8 layer sets" in md
