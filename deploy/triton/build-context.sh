#!/usr/bin/env bash
# Make the Docker build context of the vidtrt Triton image (docs/triton-container.md):
#
#   bash deploy/triton/build-context.sh [OUT]          # OUT defaults to build/triton-context
#   docker build -t vidtrt-triton:0.1.0 build/triton-context
#
# OUT/ then holds exactly what deploy/triton/Dockerfile copies:
#   Dockerfile, constraints.txt     from deploy/triton/
#   wheels/vidtrt-<version>-py3-none-any.whl
#                                   built with `pip wheel --no-deps` from a plain copy of this checkout's files
#                                   (tracked, and untracked but not ignored: no .venv, no build outputs)
# OUT is replaced if it holds a context made by this script; any other non-empty folder is refused.
# Needs git and a Python with pip ($PYTHON, default python3). Without network when that Python already has
# setuptools and wheel (then the build runs without isolation); otherwise pip fetches them from PyPI.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/build/triton-context}
PY=${PYTHON:-python3}
MARK=.vidtrt-triton-context

if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  if [ ! -f "$OUT/$MARK" ]; then
    echo "build-context: $OUT exists and was not made by this script; choose an empty or new folder" >&2
    exit 2
  fi
  rm -rf "$OUT"
fi
mkdir -p "$OUT/wheels"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A plain copy of the checkout: a stale build/ or an editable install here cannot leak into the wheel.
(cd "$ROOT" && git ls-files -co --exclude-standard -z) | while IFS= read -r -d '' f; do
  if [ -f "$ROOT/$f" ]; then
    mkdir -p "$tmp/src/$(dirname "$f")"
    cp -p "$ROOT/$f" "$tmp/src/$f"
  fi
done

isolation=()
if "$PY" -c "import setuptools, wheel" 2>/dev/null; then isolation=(--no-build-isolation); fi
"$PY" -m pip wheel --no-deps "${isolation[@]}" -q --disable-pip-version-check -w "$OUT/wheels" "$tmp/src" 2>&1 \
  | { grep -v "is ignored" || true; }
wheels=("$OUT"/wheels/vidtrt-*.whl)
if [ ${#wheels[@]} -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
  echo "build-context: expected one vidtrt wheel in $OUT/wheels, found: ${wheels[*]}" >&2
  exit 1
fi

cp "$ROOT/deploy/triton/Dockerfile" "$ROOT/deploy/triton/constraints.txt" "$OUT/"
echo "vidtrt Triton image build context, made by deploy/triton/build-context.sh" > "$OUT/$MARK"
echo "build context: $OUT"
echo "  $(cd "$OUT" && find . -type f ! -name "$MARK" | sort | tr '\n' ' ')"
echo "next: docker build -t vidtrt-triton:0.1.0 $OUT"
