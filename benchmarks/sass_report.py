"""What ptxas makes of every AOT payload and autotuning tactic on Hopper, without a GPU.

Each kernel is compiled by Triton for sm_90a, assembled by ptxas, disassembled by cuobjdump; the table
lists registers, spill bytes, shared memory and the instruction mix that decides speed on Hopper:
warpgroup MMAs (HGMMA bf16 / QGMMA fp8; HMMA would be the older, slower path), 16-byte async copies
(LDGSTS.E.BYPASS.128) or TMA bulk tensor copies (UTMALDG), byte-wide global loads (LDG.E.U8:
unaligned or strided data), and local-memory traffic (LDL / STL: spills). Static facts, not
timings: a GPU run of ``gpu_kernels_check.py`` measures.

    python benchmarks/sass_report.py [--head-dims 128 64] [--out results/<date>-sm90a-sass.md]

Run under another Triton (e.g. the GPU machines' 3.6) with ``PYTHONPATH=<dir with that triton>``.

Automatic warp specialization (``flash_attention(..., warp_specialize=True)``: ``tl.range(...,
warp_specialize=True)`` on the key loop) reaches the TTGIR as ``tt.warp_specialize`` but leaves the
sm_90a SASS unchanged with Triton 3.6 and 3.9 (no ``USETMAXREG``, same instruction mix, pointer and TMA
flavours): Triton's partitioning pass runs for Blackwell only, so FA3-style producer / consumer
warpgroups on Hopper need Gluon's ``warp_specialize`` or Meta's TLX, not plain Triton.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _bootstrap import bootstrap

COLUMNS = ("HGMMA", "QGMMA", "HMMA", "LDGSTS.E.BYPASS.128", "UTMALDG", "LDG.E.U8", "LDL", "STL")


def run(head_dims=(128,), log=print) -> list[dict]:
    bootstrap()
    from vidtrt.kernels import aot

    reqs = aot.default_requests(head_dims=tuple(head_dims), all_tactics=True)
    # the block-sparse (sliding-tile) kernels, 128 x 64 blocks
    reqs += [{"kind": k, "head_dim": d, **({"dtype": "bf16"} if k == "attention_sta" else {})}
             for d in head_dims for k in ("attention_sta", "attention_sta_fp8") if d in (64, 128)]
    payloads = aot.build_payloads_subprocess(reqs, jobs=2)
    rows = []
    for p in payloads:
        c = p.constexprs
        row = {"plugin": p.plugin, "dtype": p.request.get("dtype", "fp8"), "head_dim": c.get("HEAD_DIM"),
               "tactic": p.request.get("tactic", 0), "block_m": c.get("BLOCK_M", c.get("BLOCK_R")),
               "block_n": c.get("BLOCK_N", "-"), "warps": p.num_warps, "stages": p.num_stages,
               "registers": p.registers, "spill_bytes": p.spill_bytes, "shared_mem": p.shared_mem,
               "triton": p.triton_version, **{k: aot.sass_count(p.sass_opcodes, k) for k in COLUMNS}}  # fmt: skip
        rows.append(row)
        log(" ".join(f"{k}={v}" for k, v in row.items()))
    rows += tma_rows(head_dims, log)
    return rows


def tma_rows(head_dims, log=print) -> list[dict]:
    """The attention kernels' TMA flavour (``tma=True``; no TensorRT payload), per tactic."""
    from vidtrt.kernels import aot

    rows = []
    for d, fp8 in ((d, fp8) for d in head_dims for fp8 in (False, True)):
        for t, cfg in enumerate(aot.attention_tactics(d, fp8)):
            rep = aot.attention_tma_sass(d, t, fp8=fp8)
            row = {"plugin": f"flash_attention{'_fp8' if fp8 else ''}(tma=True)", "dtype": "fp8" if fp8 else "bf16",
                   "head_dim": d, "tactic": t,
                   "block_m": cfg["BLOCK_M"], "block_n": cfg["BLOCK_N"], "warps": cfg["num_warps"],
                   "stages": cfg["num_stages"], "registers": rep.registers, "spill_bytes": rep.spill_bytes,
                   "shared_mem": "-", "triton": ""}  # fmt: skip
            row.update({k: aot.sass_count(rep.sass_opcodes, k) for k in COLUMNS})
            rows.append(row)
            log(" ".join(f"{k}={v}" for k, v in row.items()))
    return rows


def to_markdown(rows: list[dict], command: str) -> str:
    head = ["plugin", "dtype", "D", "tactic", "BM / rows", "BN", "warps", "stages", "regs", "spill B", "smem B",
            *COLUMNS]  # fmt: skip
    keys = ["plugin", "dtype", "head_dim", "tactic", "block_m", "block_n", "warps", "stages", "registers",
            "spill_bytes", "shared_mem", *COLUMNS]  # fmt: skip
    lines = [f"# sm_90a SASS of the AOT payloads (Triton {rows[0]['triton'] if rows else '?'}, no GPU)", "",
             f"date: {time.strftime('%Y-%m-%d')}  ", f"command: `{command}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dims", type=int, nargs="+", default=[128])
    ap.add_argument("--out", help="also write the table (markdown) here")
    a = ap.parse_args(argv)
    rows = run(a.head_dims)
    md = to_markdown(rows, "python benchmarks/sass_report.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(md)
    if a.out:
        Path(a.out).write_text(md)
    spilled = [f"{r['plugin']}#{r['tactic']}" for r in rows if r["spill_bytes"]]
    print(f"payloads: {len(rows)}, with spills: {spilled or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
