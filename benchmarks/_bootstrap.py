"""Make ``vidtrt`` and ``vidtrt.kernels`` importable from a plain checkout (no pip install), as on a lent GPU
machine where the repository arrives as files and only torch/triton are installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def bootstrap() -> None:
    try:
        import vidtrt.kernels  # noqa: F401

        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import vidtrt

    spec = importlib.util.spec_from_file_location(
        "vidtrt.kernels", root / "kernels" / "__init__.py", submodule_search_locations=[str(root / "kernels")]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vidtrt.kernels"] = mod
    spec.loader.exec_module(mod)
    vidtrt.kernels = mod
