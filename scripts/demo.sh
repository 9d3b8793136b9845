#!/usr/bin/env bash
# The main job on the embedded default: set up, then generate a video with the tiny model -> tiny-demo.mp4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
vidtrt run "a cat walks on the grass" -o "${1:-tiny-demo.mp4}" --seed 42
