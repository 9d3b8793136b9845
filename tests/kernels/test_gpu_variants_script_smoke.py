"""benchmarks/gpu_attention_variants_check.py in its --smoke form (CPU interpreter, tiny shapes), from a plain
copy of the checkout as a lent GPU machine gets it: both phases run, every variant passes its check, the
report names a winner per dtype and the last line says it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.checkout import copy_checkout

SOME = ["bf16-base-tma", "bf16-persist-pipe-poly-tma", "fp8-base-tma", "fp8-pipe-poly-tma"]


@pytest.mark.slow
def test_gpu_attention_variants_check_smoke(tmp_path):
    copy, out = copy_checkout(tmp_path / "checkout"), tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(copy / "benchmarks" / "gpu_attention_variants_check.py"), "--smoke", "--out", str(out),
         "--variants", *SOME],
        capture_output=True, text=True, timeout=600, cwd=copy, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("*-cpu-smoke-attention-variants.json")
    report = json.loads(path.read_text())
    assert report["environment"]["vidtrt_from"] == str((copy / "vidtrt").resolve())
    assert report["errors"] == {}
    assert [r["variant"] for r in report["correctness"]] == ["bf16-base-tma", "fp8-base-tma",
                                                            "bf16-persist-pipe-poly-tma", "fp8-pipe-poly-tma"]
    assert all(r["ok"] for r in report["correctness"])
    methods = {r["method"] for r in report["timing"]["rows"] if "ms" in r}
    assert methods == {"sdpa-math", *SOME}
    assert report["winners"]["bf16"]["variant"] in SOME and report["winners"]["fp8"]["variant"] in SOME
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("bf16 winner ") and "fp8 winner " in last
    assert "## Winners" in path.with_suffix(".md").read_text()
