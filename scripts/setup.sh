#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh machine: a venv in .venv holding exactly the packages of
# requirements/lock.txt (the project, its test and serving dependencies, the real tritonserver from the
# nvidia-pytriton wheel), the Triton stub environment and perf_analyzer. Refresh the lock: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements/lock.txt
stamp=.venv/.vidtrt-setup-$(cat pyproject.toml scripts/setup.sh "$LOCK" | sha1sum | cut -c1-12)
if [ -d .venv ] && [ ! -f "$stamp" ]; then
  # set up from another lock (or by hand): start over, so that no package of another set stays behind
  echo "setup: $LOCK changed since .venv was made: rebuilding .venv"
  rm -rf .venv
fi
if [ ! -f "$stamp" ]; then
  "$PY" -m venv .venv
  . .venv/bin/activate
  # pip's own exit status counts; only its noise about unreachable local index folders is filtered.
  pip_q() { pip install --disable-pip-version-check -q -c "$LOCK" "$@" 2>&1 | { grep -v "is ignored" || true; }; }
  # torch first: an unpinned torch pulls several GB of CUDA wheels (the lock pins the CPU build's version).
  pip_q torch
  pip_q -e ".[test]"
  # The real Triton Inference Server binary + Python backend, without its stale pins.
  pip_q --no-deps nvidia-pytriton
  python scripts/check_lock.py "$LOCK"
  # The bundled Python-backend stub needs numpy<2: a small side environment, built now (needs PyPI).
  python -m vidtrt.serving.server --prepare
  bash scripts/install_perf_analyzer.sh
  python -c "import vidtrt, torch; print('vidtrt ready, torch', torch.__version__)"
  touch "$stamp"
fi
