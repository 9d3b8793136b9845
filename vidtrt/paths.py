"""Where vidtrt keeps what it makes once and reuses: the embedded models' checkpoints, the Triton
Python-backend directory and stub environment. One variable decides it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$VIDTRT_CACHE``, else ``$XDG_CACHE_HOME/vidtrt``, else ``~/.cache/vidtrt`` (not created here)."""
    if os.environ.get("VIDTRT_CACHE"):
        return Path(os.environ["VIDTRT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vidtrt"


REPOSITORY_FILE = "vidtrt-repository.json"  # written by `vidtrt build` at a model repository's root
