#!/usr/bin/env bash
# Check deploy/triton/constraints.txt against PyPI the way the image installs it, without docker: a fresh
# Python 3.10 venv (the image's Python), the Dockerfile's three pip steps (numpy, torch, the vidtrt wheel with
# [kernels]) under the constraints, then `pip check`, every installed package pinned at the installed version,
# the image's build-time smoke check (`vidtrt build --model tiny`), and serving: the lock's nvidia-pytriton
# (tritonserver 2.51, the image's server release) added to that venv for this check only, `vidtrt serve` on
# the tiny repository (its Python-backend stub runs in the venv's Python 3.10 with numpy 1.26.4), and
# `vidtrt generate` from this environment must give the frames this environment computes in process.
#
#   bash deploy/triton/check-constraints.sh [PYTHON3.10]      # default: python3.10 on PATH
#
# Run it from the project's venv (its python makes the wheel and is the client). Needs PyPI and about 4 GB of
# downloads (torch's CUDA 13.0 build and its CUDA libraries); not part of the test suite. What it cannot
# check: the NGC image's own preinstalled packages and libraries, and anything that needs a GPU.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY310=${1:-python3.10}
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
server=
cleanup() {
  if [ -n "$server" ]; then kill -INT "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
"$PY310" -c "import sys; assert sys.version_info[:2] == (3, 10), sys.version"
PYTHON="$PYTHON" bash "$ROOT/deploy/triton/build-context.sh" "$tmp/context" >/dev/null
C="$tmp/context/constraints.txt"
"$PY310" -m venv "$tmp/venv"
P="$tmp/venv/bin/python"
pip_() { "$P" -m pip install --disable-pip-version-check -q -c "$C" "$@" 2>&1 | { grep -v "is ignored" || true; }; }
pip_ numpy
pip_ torch
pip_ "$(ls "$tmp"/context/wheels/vidtrt-*.whl)[kernels]" aiohttp
"$P" -m pip check
"$P" - "$C" <<'PYEOF'
import re, sys
from importlib import metadata

def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()

pins = {}
for raw in open(sys.argv[1]):
    line = raw.split("#", 1)[0].strip()
    if line:
        name, _, version = line.partition("==")
        pins[canon(name)] = version.strip()
have = {canon(d.metadata["Name"]): d.version for d in metadata.distributions()}
have = {k: v for k, v in have.items() if k not in {"vidtrt", "pip"}}
bad = [f"{n}: installed {v}, pinned {pins.get(n)}" for n, v in sorted(have.items()) if pins.get(n) != v.split("+")[0]]
bad += [f"{n}: pinned {v}, not installed" for n, v in sorted(pins.items()) if n not in have]
for b in bad:
    print("check-constraints:", b, file=sys.stderr)
if bad:
    sys.exit(f"check-constraints: constraints.txt differs from what Python 3.10 installs ({len(bad)})")
print(f"check-constraints: {len(have)} packages installed, each pinned in constraints.txt")
PYEOF
if ! VIDTRT_CACHE="$tmp/cache" "$tmp/venv/bin/vidtrt" build --model tiny --out "$tmp/repo" >"$tmp/build.log" 2>&1; then
  cat "$tmp/build.log" >&2
  echo "check-constraints: vidtrt build --model tiny failed in the Python 3.10 venv" >&2
  exit 1
fi

pytriton=$(grep -i '^nvidia-pytriton==' "$ROOT/requirements/lock.txt")
pip_ --no-deps "$pytriton"
export VIDTRT_CACHE="$tmp/cache"
"$tmp/venv/bin/vidtrt" serve --repository "$tmp/repo" --http-port 0 --grpc-port 0 --metrics-port 0 \
  --log-file "$tmp/tritonserver.log" >"$tmp/serve.out" 2>&1 &
server=$!
url=
for _ in $(seq 1 300); do
  url=$(awk '$1 == "gRPC" {print $2}' "$tmp/serve.out")
  if [ -n "$url" ] || ! kill -0 "$server" 2>/dev/null; then break; fi
  sleep 1
done
if [ -z "$url" ]; then
  cat "$tmp/serve.out" >&2
  echo "check-constraints: vidtrt serve did not become ready in the Python 3.10 venv" >&2
  exit 1
fi
"$PYTHON" -m vidtrt.cli generate "a cat walks on the grass" --url "$url" -o "$tmp/served.npy" --seed 3 --steps 2 \
  --no-progress
"$PYTHON" - "$tmp/served.npy" <<'PYEOF'
import sys
import numpy as np
from vidtrt.runtime.pipeline import HunyuanVideoPipeline
want = HunyuanVideoPipeline.from_model("tiny").generate("a cat walks on the grass", seed=3, num_inference_steps=2)
got = np.load(sys.argv[1])
if got.shape != want.shape or not np.array_equal(got, want):
    sys.exit(f"check-constraints: served frames {got.shape} differ from in process {want.shape}")
PYEOF
"$P" -c "import numpy, torch, transformers, vidtrt; print('check-constraints: ok: Python 3.10, numpy', \
numpy.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'vidtrt', vidtrt.__version__, \
'(served the tiny model: same frames as in process)')"
