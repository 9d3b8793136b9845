"""Block-size candidates of the attention kernels per GPU generation (plain dicts, no triton import).

Hopper (sm_90): 8 warps = two warpgroups, each issuing wgmma on 64 query rows; 64/128-key tiles;
2-4 pipeline stages (227 KB shared memory). Every Hopper candidate below was compiled for sm_90a
and checked in its SASS (HGMMA / QGMMA, no local-memory spills with Triton 3.9; with Triton 3.6 the
128x128 tiles spill 32-80 bytes). Dropped after that check: 128-row tiles on 4 warps (one warpgroup
holds a 128x128 fp32 accumulator: 100s of bytes of spills) and FP8 128x128 tiles with 3 stages.
Ampere sm_80 (164 KB): 128x64 with 4 warps. Consumer parts (sm_86/89, ~100 KB): smaller tiles and
fewer stages. The first entry is the default (the AOT plugins' tactic 0).
"""

from __future__ import annotations


def _cfg(bm: int, bn: int, warps: int, stages: int) -> dict[str, int]:
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}


def attention_config_dicts(capability: tuple[int, int], head_dim: int, fp8: bool = False) -> list[dict[str, int]]:
    major = capability[0]
    if major >= 9:
        if fp8:
            return [_cfg(128, 64, 8, 3), _cfg(128, 64, 8, 4), _cfg(128, 128, 8, 2), _cfg(128, 32, 8, 3),
                    _cfg(64, 64, 4, 3)]  # fmt: skip
        cfgs = [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(128, 64, 8, 4), _cfg(128, 128, 8, 2),
                _cfg(64, 64, 4, 3)]  # fmt: skip
        if head_dim <= 64:
            cfgs.append(_cfg(128, 128, 8, 4))
        return cfgs
    if capability == (8, 0):
        return [_cfg(128, 64, 4, 3), _cfg(128, 32, 4, 3), _cfg(64, 64, 4, 3)]
    return [_cfg(64, 64, 4, 2), _cfg(128, 64, 8, 2), _cfg(64, 32, 4, 2)]
