"""The kernels as attention backends of the DiT: "triton", "triton-fp8" and their TMA flavours
"triton-tma", "triton-fp8-tma", each ``backend(q, k, v, key_lengths) -> out`` ([B, S, H, D]).

:mod:`vidtrt.models.attention` imports this module when such a backend is first asked for
(``use_backend`` / ``set_backend``; torch engines carry a ``vidtrt.runtime.pipeline.KernelChoice``) and
registers what it lists; the kernels themselves import nothing from the models.
"""

from __future__ import annotations

from .attention import flash_attention
from .attention_fp8 import flash_attention_fp8


def _triton(q, k, v, key_lengths):
    return flash_attention(q, k, v, key_lengths)


def _triton_tma(q, k, v, key_lengths):
    return flash_attention(q, k, v, key_lengths, tma=True)


def _triton_fp8(q, k, v, key_lengths):
    return flash_attention_fp8(q, k, v, key_lengths)


def _triton_fp8_tma(q, k, v, key_lengths):
    return flash_attention_fp8(q, k, v, key_lengths, tma=True)


ATTENTION_BACKENDS = {"triton": _triton, "triton-tma": _triton_tma, "triton-fp8": _triton_fp8,
                      "triton-fp8-tma": _triton_fp8_tma}  # fmt: skip
