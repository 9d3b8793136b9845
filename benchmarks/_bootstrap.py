"""Import ``vidtrt`` from the checkout these scripts live in, installed or not (a lent GPU machine gets
the repository as plain files with only torch/triton installed): every subpackage lives inside
``vidtrt/``, so the repository root first on ``sys.path`` is all it takes, and an installed copy
elsewhere cannot stand in for the code under test."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bootstrap() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import vidtrt.kernels  # noqa: F401
