"""Shared helpers of the Triton kernels: where a kernel can run, argument checks, small math.

Kernels run on CUDA tensors, or on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``
set before ``triton`` is first imported in the process; the tests do that). Every check raises
``ValueError`` / ``TypeError`` with one line naming the argument, what it got and what is accepted.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - triton is a declared extra
    raise ImportError(
        "vidtrt.kernels needs triton (pip install 'vidtrt[kernels]'); the torch paths work without it"
    ) from e

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
LOG2E = 1.4426950408889634
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

__all__ = [
    "FLOAT_DTYPES",
    "FP8_DTYPE",
    "FP8_MAX",
    "LOG2E",
    "check_device",
    "check_float_tensor",
    "interpreter_active",
    "next_power_of_2",
    "tl",
    "triton",
]


def interpreter_active() -> bool:
    """True when this process runs ``@triton.jit`` functions through the CPU interpreter.

    That needs ``TRITON_INTERPRET=1`` before the first ``import triton``: the decorator picks the
    interpreter at decoration time, for triton's own library functions (``tl.zeros``...) too.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return isinstance(_probe, InterpretedFunction) and not isinstance(getattr(tl, "zeros", None), JITFunction)


@triton.jit
def _probe(x):  # decorated at import: an InterpretedFunction iff the interpreter was on then
    pass


def check_device(name: str, t: torch.Tensor) -> None:
    """Kernels need a CUDA tensor, or a CPU tensor with the interpreter active."""
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu":
        if interpreter_active():
            return
        raise ValueError(
            f"{name} is on the CPU: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before "
            "triton is first imported, for tests); use the torch path on CPU"
        )
    raise ValueError(f"{name} is on {t.device}: accepted CUDA tensors (or CPU with TRITON_INTERPRET=1)")


def check_float_tensor(name: str, t: object, ndim: int | None = None, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}: accepted {', '.join(str(d) for d in dtypes)}")
    return t


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 2 ** math.ceil(math.log2(n))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def cuda_capability(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return (0, 0)
    return torch.cuda.get_device_capability(device)


@triton.jit
def round_to_e4m3(x):
    """Round fp32 x (already clamped to +-448) to the nearest float8_e4m3fn value, ties to even,
    in fp32 arithmetic. The GPU's conversion does this in hardware; Triton's CPU interpreter
    converts with round-half-up and drops the mantissa carry, so interpreted kernels call this
    first, which makes their conversion exact and equal to the GPU's and to torch's."""
    bits = x.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    e = tl.maximum(e, -6)  # below 2^-6 the e4m3 grid is the subnormal step 2^-9
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    r = x / step
    r = (r + 12582912.0) - 12582912.0  # 1.5 * 2^23: round to an integer, ties to even
    return r * step
