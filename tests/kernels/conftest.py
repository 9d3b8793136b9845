"""Kernel tests run on CUDA when there is a GPU, else through Triton's CPU interpreter.

The interpreter must be switched on before ``triton`` is first imported anywhere in the process
(``@triton.jit`` picks it at decoration time, triton's own library included), hence this module
sets ``TRITON_INTERPRET=1`` at import. If another test module imported triton earlier without it,
the kernel wrappers fail with a message saying so (set it in the root tests/conftest.py then).
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def aot_payloads():
    """AOT payloads (sm_90a) of every plugin and every attention tactic at head dim 128, plus fp16 at
    head dim 64, compiled once per session in two clean child processes (the interpreter that runs
    the other tests cannot compile)."""
    from vidtrt.kernels import aot

    reqs = aot.default_requests(head_dims=(128,), all_tactics=True)
    reqs += [{"kind": "attention", "dtype": "fp16", "head_dim": 64, "tactic": 0}]
    return aot.build_payloads_subprocess(reqs, jobs=2)
