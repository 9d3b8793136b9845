#!/usr/bin/env bash
# Refresh requirements/lock.txt: resolve the project's ranges afresh (newest releases, CPU torch 2.13.0) in a
# scratch venv, write the exact set, then rebuild .venv from it and run the whole suite (bash scripts/test.sh).
# Commit the new lock only if that suite passes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=requirements/lock.txt
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PY" -m venv "$scratch/venv"
. "$scratch/venv/bin/activate"
pip_q() { pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored" || true; }; }
pip_q torch==2.13.0
pip_q -e ".[test]"
pip_q --no-deps nvidia-pytriton==0.7.0
{
  sed -n '1,/^# Python 3/p' "$LOCK"
  pip freeze --exclude-editable --disable-pip-version-check | grep -v '^vidtrt' | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > "$scratch/lock.txt"
deactivate
mv "$scratch/lock.txt" "$LOCK"
git --no-pager diff --stat -- "$LOCK" || true
echo "lock: wrote $LOCK; now the whole suite on it"
exec bash scripts/test.sh
