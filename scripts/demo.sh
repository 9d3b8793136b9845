#!/usr/bin/env bash
# The main job on the embedded default: set up, build the tiny model's Triton repository, start the real
# tritonserver, generate a video through the gRPC client, write the mp4, stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python scripts/demo.py "$@"
