#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
exec python -m pytest -q --durations=30 "$@"
