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
    """AOT payloads (sm_90) of every plugin's default tactic plus a few more, compiled once per session
    in two clean child processes (the interpreter that runs the other tests cannot compile)."""
    from vidtrt.kernels import aot

    reqs = aot.default_requests(head_dims=(128,))  # tactic 0 of each plugin
    reqs += [{"kind": "attention", "dtype": "bf16", "head_dim": 128, "tactic": 1},  # 128-key tiles
             {"kind": "attention_fp8", "head_dim": 128, "tactic": 1},
             {"kind": "attention", "dtype": "fp16", "head_dim": 64, "tactic": 0}]  # fmt: skip
    return aot.build_payloads_subprocess(reqs, jobs=2)
