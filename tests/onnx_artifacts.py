"""The tiny model's ONNX artifacts, exported once per test session and shared by the test modules.

They live under ``$VIDTRT_CACHE`` (a fresh temporary folder per session, see conftest.py);
:func:`vidtrt.export.onnx_export.ensure_exported` re-exports only what is missing or stale and
serialises concurrent callers with a lock file.
"""

import os
import tempfile
from pathlib import Path


def tiny_artifacts() -> Path:
    from vidtrt.export.onnx_export import ensure_exported

    root = Path(os.environ.get("VIDTRT_CACHE") or tempfile.gettempdir()) / "onnx-tiny"
    ensure_exported("tiny", root)
    return root


def tiny_cogvideox_artifacts() -> Path:
    """`vidtrt export --model tiny-cogvideox`: dit.onnx, vae_decoder_batch.onnx (the VAE's frame-batch graph) and
    dit_probe.onnx."""
    from vidtrt.export.onnx_export import ensure_exported

    root = Path(os.environ.get("VIDTRT_CACHE") or tempfile.gettempdir()) / "onnx-tiny-cogvideox"
    ensure_exported("tiny-cogvideox", root)
    return root
