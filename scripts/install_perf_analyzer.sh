#!/usr/bin/env bash
# Idempotent install of NVIDIA's perf_analyzer (2.51, matching the bundled tritonserver 2.51) into
# .tools/bin, without installing tritonclient 2.51 into the venv (its numpy<2 / protobuf<5 pins clash
# with the project's dependencies).
#
#   .tools/bin/perf_analyzer      the binary, taken from the tritonclient==2.51.0 wheel's data dir
#   .tools/cudart/                nvidia-cuda-runtime-cu12 (libcudart.so.12; perf_analyzer links it
#                                 even on CPU-only machines)
#   .tools/bin/pa                 wrapper: sets LD_LIBRARY_PATH and execs perf_analyzer
#
# Needs Debian's libb64-0d (installed with apt-get when running as root). Re-running is a no-op once
# `.tools/bin/pa --version` works.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TOOLS="$ROOT/.tools"
PA_VERSION=${PA_VERSION:-2.51.0}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
mkdir -p "$TOOLS/bin" "$TOOLS/cache"

# perf_analyzer --help prints the usage but exits 99; --version exits 0 once every library loads.
works() { "$TOOLS/bin/pa" --version >/dev/null 2>&1; }

if [ -x "$TOOLS/bin/pa" ] && works; then
  echo "perf_analyzer already installed: $TOOLS/bin/pa"
  exit 0
fi

# 1. libb64 (Debian package libb64-0d provides libb64.so.0d).
if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing libb64-0d with apt-get"
    (apt-get install -y -q libb64-0d >/dev/null 2>&1) || \
      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libb64-0d >/dev/null 2>&1) || \
      echo "warning: could not apt-get install libb64-0d; perf_analyzer may not start"
  else
    echo "warning: libb64-0d is missing and this is not root: run 'sudo apt-get install libb64-0d'" \
         "(perf_analyzer needs libb64.so.0d)"
  fi
fi

# 2. perf_analyzer from the tritonclient 2.51 wheel (download only, no install).
if [ ! -x "$TOOLS/bin/perf_analyzer" ]; then
  wheel=$(ls "$TOOLS/cache"/tritonclient-"$PA_VERSION"-*manylinux1_x86_64.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "downloading tritonclient==$PA_VERSION (for its perf_analyzer binary)"
    "$PY" -m pip download --disable-pip-version-check -q --no-deps \
      --only-binary=:all: --platform manylinux1_x86_64 \
      "tritonclient==$PA_VERSION" -d "$TOOLS/cache" 2>&1 | grep -v "is ignored" || true
    wheel=$(ls "$TOOLS/cache"/tritonclient-"$PA_VERSION"-*manylinux1_x86_64.whl | head -n1)
  fi
  "$PY" - "$wheel" "$TOOLS/bin/perf_analyzer" <<'EOF'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("/bin/perf_analyzer")]
    if not names:
        sys.exit(f"no bin/perf_analyzer in {wheel}")
    with z.open(names[0]) as src, open(dest + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
print("extracted", names[0], "->", dest)
EOF
fi

# 3. libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel.
cudart_lib=$(ls "$TOOLS"/cudart/nvidia/cuda_runtime/lib/libcudart.so.12 2>/dev/null || true)
if [ -z "$cudart_lib" ]; then
  echo "installing nvidia-cuda-runtime-cu12 into $TOOLS/cudart (libcudart.so.12)"
  "$PY" -m pip install --disable-pip-version-check -q --no-deps --target "$TOOLS/cudart" \
    "nvidia-cuda-runtime-cu12==12.9.79" 2>&1 | grep -v "is ignored" || true
fi

# 4. The wrapper.
cat > "$TOOLS/bin/pa" <<EOF
#!/usr/bin/env bash
# perf_analyzer $PA_VERSION with libcudart.so.12 on the library path (written by scripts/install_perf_analyzer.sh)
export LD_LIBRARY_PATH="$TOOLS/cudart/nvidia/cuda_runtime/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$TOOLS/bin/perf_analyzer" "\$@"
EOF
chmod +x "$TOOLS/bin/pa"

if works; then
  echo "perf_analyzer ready: $TOOLS/bin/pa (wrapper for $TOOLS/bin/perf_analyzer)"
else
  echo "warning: $TOOLS/bin/pa --version failed:"
  "$TOOLS/bin/pa" --version 2>&1 | tail -n 3 || true
  # Not fatal for the project's set-up: only the perf_analyzer benchmark needs it.
fi
