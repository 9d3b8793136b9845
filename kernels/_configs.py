"""Block-size candidates of the attention kernels per GPU generation (plain dicts, no triton import).

Hopper (sm_90): 128-row query tiles with 8 warps (wgmma works on 64-row warpgroups), 64/128-key
tiles, 2-4 pipeline stages (228 KB shared memory). Ampere sm_80 (164 KB): 128x64 with 4 warps.
Consumer parts (sm_86/89, ~100 KB): smaller tiles and fewer stages. FP8 tiles are half the bytes,
so they take deeper pipelines. The first entry is the default (the AOT plugins' tactic 0).
"""

from __future__ import annotations


def _cfg(bm: int, bn: int, warps: int, stages: int) -> dict[str, int]:
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}


def attention_config_dicts(capability: tuple[int, int], head_dim: int, fp8: bool = False) -> list[dict[str, int]]:
    major = capability[0]
    if major >= 9:
        cfgs = [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 2), _cfg(128, 64, 4, 3), _cfg(128, 128, 8, 3)]
        if head_dim <= 64 or fp8:
            cfgs += [_cfg(128, 128, 8, 4), _cfg(128, 64, 4, 4)]
        return cfgs
    if capability == (8, 0):
        return [_cfg(128, 64, 4, 3), _cfg(128, 32, 4, 3), _cfg(64, 64, 4, 3)]
    return [_cfg(64, 64, 4, 2), _cfg(128, 64, 8, 2), _cfg(64, 32, 4, 2)]
