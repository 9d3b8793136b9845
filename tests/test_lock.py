"""scripts/check_lock.py, which set-up runs to refuse a venv that is not exactly the lock's set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_lock.py"


def _check(tmp_path, lines: list[str]) -> subprocess.CompletedProcess:
    lock = tmp_path / "lock.txt"
    lock.write_text("# a comment\n" + "\n".join(lines) + "\n")
    return subprocess.run([sys.executable, str(SCRIPT), str(lock)], capture_output=True, text=True, timeout=60)


def _installed() -> list[str]:
    """What a fresh interpreter of this venv sees (this process's sys.path may hold more: importing some
    packages puts setuptools' vendored distributions on it)."""
    code = ("from importlib import metadata\n"
            "skip = {'vidtrt', 'pip', 'setuptools', 'wheel'}\n"
            "print('\\n'.join(sorted(f\"{d.metadata['Name']}=={d.version.split('+')[0]}\" for d in "
            "metadata.distributions() if d.metadata['Name'] and d.metadata['Name'].lower() not in skip)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()


def test_exact_set_passes_and_every_difference_is_named(tmp_path):
    pins = _installed()
    ok = _check(tmp_path, pins)
    assert ok.returncode == 0, ok.stderr
    numpy = next(p for p in pins if p.lower().startswith("numpy=="))
    wrong = _check(tmp_path, [p if p != numpy else "numpy==0.0.1" for p in pins] + ["not-a-package==1.0"])
    assert wrong.returncode == 1
    assert "numpy: installed" in wrong.stderr and "locked 0.0.1" in wrong.stderr
    assert "not-a-package: locked 1.0, not installed" in wrong.stderr
    extra = _check(tmp_path, [p for p in pins if p != numpy])
    assert extra.returncode == 1 and "numpy: installed" in extra.stderr and "not in the lock" in extra.stderr
    bad = _check(tmp_path, ["numpy>=2"])
    assert bad.returncode != 0 and "is not a 'name==version' pin" in bad.stderr
