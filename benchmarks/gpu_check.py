"""The one GPU call for a lent H100 / H200: every topic's check in priority order within one time budget.

    python3 benchmarks/gpu_check.py                 # under 8 minutes (budget 450 s of checks)
    python3 benchmarks/gpu_check.py --smoke         # CPU: each script's --smoke (checks the runner and scripts)
    python3 benchmarks/gpu_check.py --only fp8_gemm sparse_attention

Each check is its own script (a failing or overrunning one does not stop the others) and writes its own
JSON + md to benchmarks/results/ (and $OUT when set); this runner prints one line per check and the
table of what ran, what failed and what the budget skipped. Order and shares (seconds):

    sparse_attention  sliding-tile attention vs dense at S = 119,056, DiT step 720p (issue 13)
    attention_variants  dense kernel variants vs cuDNN at S = 67,576 / 119,056, names the winner (issue 13)
    step_cache        544p step loop with / without EasyCache and TeaCache (issue 12)
    cogvideox         CogVideoX-5B DiT step 720x480x49 with CFG per backend, FP8 GEMMs last (issue 15)
    fp8_gemm          FP8 GEMMs + FP8 attention DiT step at 720p vs bf16 SDPA (issue 11, resolved: last)
    kernels           the kernel suite of 2026-11-30 (--quick), only when budget is left

Runs from a checkout that was never installed (Python 3.12, torch 2.11, triton 3.6; no network).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name, script, share of the budget (s), extra arguments on the GPU
CHECKS = (
    ("sparse_attention", "gpu_sparse_attention_check.py", 120.0, []),
    ("attention_variants", "gpu_attention_variants_check.py", 130.0, []),
    ("step_cache", "gpu_step_cache_check.py", 90.0, ["--thresholds", "0.1", "--teacache-thresholds", "0.15"]),
    ("cogvideox", "gpu_cogvideox_check.py", 70.0, []),
    ("fp8_gemm", "gpu_fp8_gemm_check.py", 100.0, []),
    ("kernels", "gpu_kernels_check.py", 60.0, ["--quick", "--no-pytest"]),
)
BUDGET_S = 450.0
MIN_START_S = 40.0  # no check starts with less than this left


def _budget_flag(script: str) -> str:
    return "--budget" if script == "gpu_cogvideox_check.py" else "--budget-s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="each script's --smoke on CPU")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"total seconds (default {BUDGET_S:g})")
    ap.add_argument("--only", nargs="+", choices=[c[0] for c in CHECKS], help="run only these checks")
    a = ap.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for name, script, share, extra in CHECKS:
        if a.only and name not in a.only:
            continue
        path = HERE / script
        if not path.exists():
            rows.append((name, "missing", 0.0))
            continue
        left = a.budget_s - (time.perf_counter() - start)
        if not a.smoke and left < MIN_START_S:
            rows.append((name, "skipped (budget)", 0.0))
            continue
        cmd = [sys.executable, str(path)]
        if a.smoke:
            cmd.append("--smoke")
            limit = 900.0
        else:
            budget = min(share, left - 15.0)
            cmd += [_budget_flag(script), f"{budget:.0f}", *extra]
            limit = budget + 90.0  # the script stops starting phases at its budget; this catches a hang
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=limit, env=os.environ.copy()).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"killed after {limit:.0f} s"
        rows.append((name, status, time.perf_counter() - t0))
    print("\ncheck              status                 seconds")
    for name, status, secs in rows:
        print(f"{name:<18} {status:<22} {secs:7.1f}")
    print(f"total {time.perf_counter() - start:.1f} s of budget {a.budget_s:g} s")
    return 0 if all(s in ("ok", "skipped (budget)") for _, s, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
