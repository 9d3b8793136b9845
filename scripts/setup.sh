#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh machine: a venv in .venv with the project and its test and
# serving dependencies (a real tritonserver from the nvidia-pytriton wheel, perf_analyzer).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# pip's own exit status counts; only its noise about unreachable local index folders is filtered.
pip_q() { pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored" || true; }; }
stamp=.venv/.vidtrt-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  # torch first and pinned: an unpinned torch pulls several GB of CUDA wheels.
  python -c "import torch" 2>/dev/null || pip_q torch==2.13.0
  pip_q -e ".[test]"
  # The real Triton Inference Server binary + Python backend, without its stale pins.
  python -c "import pytriton" 2>/dev/null || pip_q --no-deps nvidia-pytriton==0.7.0
  # The bundled Python-backend stub needs numpy<2: a small side environment, built now (needs PyPI).
  python -m vidtrt.server --prepare
  if [ -f scripts/install_perf_analyzer.sh ]; then bash scripts/install_perf_analyzer.sh; fi
  python -c "import vidtrt, torch; print('vidtrt ready, torch', torch.__version__)"
  rm -f .venv/.vidtrt-setup-*; touch "$stamp"
fi
