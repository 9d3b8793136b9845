"""sm_90a machine code of every dense attention variant (vidtrt.kernels.attention_variants), without a GPU.

Each variant is compiled by Triton for sm_90a at head dim 128 (TMA variants with K / V as tensor
descriptors), assembled by ptxas and disassembled by cuobjdump. Per variant: registers, spills,
shared memory, and in the hot loop (the backward branch with the most warpgroup MMAs):

  wgmma       HGMMA (bf16) / QGMMA (fp8) instructions
  waits       WARPGROUP.DEPBAR.LE gsb0 waits, "0" = wait for all, ">0" = some wgmma left in flight
  ex2         MUFU.EX2 (the softmax's exp2 on the special-function unit)
  ex2 ovl     MUFU.EX2 issued while a wgmma is still in flight (no DEPBAR ... 0x0 since the last
              HGMMA / QGMMA, scanning the loop twice so the state carries around the back edge):
              the intra-warpgroup overlap FA3 schedules by hand
  ffma        FFMA in the loop (the FMA-pipe exp2 adds ~4 per element it takes over)
  tma / cp16  UTMALDG bulk tensor copies / LDGSTS.E.BYPASS.128 16-byte async copies
  bar / mbar  BAR.SYNC CTA barriers / SYNCS mbarrier instructions
  serial      ptxas's advisory that it serialized the wgmma (waits after each: registers ran out)
  setmaxnreg  USETMAXREG anywhere in the kernel (warp specialization with register reallocation)

Last, a probe: a minimal Gluon ``warp_specialize`` kernel (Triton >= 3.6), to show whether that route
gives setmaxnreg on sm_90a.

Static facts, not timings: ``benchmarks/gpu_attention_variants_check.py`` measures on a GPU.

    python benchmarks/sass_attention_variants.py [--out benchmarks/results/<date>-sm90a-sass-attention-variants.md]
    PYTHONPATH=/tmp/t36 python benchmarks/sass_attention_variants.py   # the GPU machines' Triton 3.6
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiling needs triton's real front end

from _bootstrap import bootstrap  # noqa: E402

COLUMNS = ("regs", "spill B", "smem B", "serial", "wgmma", "waits 0", "waits >0", "ex2", "ex2 ovl", "ffma", "tma",
           "cp16", "bar", "mbar", "setmaxnreg")  # fmt: skip
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def _signature(fn, fp8: bool, tma: bool, bn: int, d: int) -> tuple[dict, dict]:
    el = "fp8e4nv" if fp8 else "bf16"
    sig: dict[str, str] = {}
    attrs: dict = {}
    for i, name in enumerate(fn.arg_names):
        if name in ("Q", "Out"):
            sig[name] = f"*{el}" if name == "Q" else "*bf16"
        elif name == "K":
            sig[name] = f"tensordesc<{el}[1,{bn},1,{d}]>" if tma else f"*{el}"
        elif name == "V":
            block = f"[1,1,{d},{bn}]" if fp8 else f"[1,{bn},1,{d}]"
            sig[name] = f"tensordesc<{el}{block}>" if tma else f"*{el}"
        elif name in ("Q_SCALE", "K_SCALE", "V_SCALE"):
            sig[name] = "*fp32"
        elif name == "KEY_LENS":
            sig[name] = "*i32"
        elif name.isupper():
            continue  # constexprs, filled by the caller
        else:
            sig[name] = "i32"
        if sig.get(name, "").startswith("*") or (name.startswith("stride_") and not name.startswith("stride_qs")
                                                 and name not in ("stride_qsn", "stride_ksn")):  # fmt: skip
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def compile_variant(v, d: int = 128):
    """(ptx, metadata) of one variant for sm_90a."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vidtrt.kernels import attention_variants as av
    from vidtrt.kernels.attention import _attn_fwd_kernel
    from vidtrt.kernels.attention_fp8 import _attn_fwd_fp8_kernel

    scale = 1.4426950408889634 / math.sqrt(d)
    if v.kernel == "base":
        fn = _attn_fwd_fp8_kernel if v.fp8 else _attn_fwd_kernel
        const = {"HEAD_DIM": d, "BLOCK_M": v.block_m, "BLOCK_N": v.block_n, "QK_SCALE": scale, "KV_DESC": v.tma,
                 "WARP_SPEC": False}  # fmt: skip
        const.update({"Q_QBLOCK": 128, "K_QBLOCK": 128, "EXACT_FP8": False} if v.fp8 else {"DOT_F32": False})
    else:
        fn = av._attn_fp8_variant_kernel if v.fp8 else av._attn_variant_kernel
        const = {"HEAD_DIM": d, "BLOCK_M": v.block_m, "BLOCK_N": v.block_n, "QK_SCALE": scale, "KV_DESC": v.tma,
                 "PERSISTENT": v.persistent, "PIPELINE": v.pipeline, "POLY_EXP": v.poly_exp}  # fmt: skip
        const.update({"Q_QBLOCK": 128, "K_QBLOCK": 128, "EXACT_FP8": False, "ACC_IN_MMA": v.acc_in_mma} if v.fp8
                     else {"DOT_F32": False})  # fmt: skip
    sig, attrs = _signature(fn, v.fp8, v.tma, v.block_n, d)
    for k in const:
        sig[k] = "constexpr"
    sig = {n: sig[n] for n in fn.arg_names}
    opts = {"num_warps": v.num_warps, "num_stages": v.num_stages}
    target = GPUTarget("cuda", 90, 32)
    try:
        c = triton.compile(ASTSource(fn, sig, const, attrs), target=target, options=opts)
    except Exception:  # noqa: BLE001 - a Triton whose attrs format differs: no hints
        c = triton.compile(ASTSource(fn, sig, const), target=target, options=opts)
    return c.asm["ptx"], c.metadata


def ptxas_sass(ptx: str) -> tuple[str, str]:
    """(ptxas -v log, cuobjdump -sass text) of a PTX for its target."""
    from triton.backends.nvidia.compiler import get_ptxas

    arch = re.search(r"\.target\s+(\w+)", ptx).group(1)
    ptxas = get_ptxas(90).path if callable(get_ptxas) else get_ptxas
    cuobjdump = os.path.join(os.path.dirname(ptxas), "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        src, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        Path(src).write_text(ptx)
        proc = subprocess.run([ptxas, "-v", f"-arch={arch}", src, "-o", cubin], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"ptxas failed: {proc.stderr[-500:]}")
        sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True).stdout
    return proc.stdout + proc.stderr, sass


def parse_sass(sass: str) -> list[tuple[int, str]]:
    """[(address, instruction text)] of a cuobjdump -sass listing."""
    return [(int(m.group(1), 16), m.group(2).strip()) for m in map(_LINE.search, sass.splitlines()) if m]


def _op(text: str) -> str:
    t = re.sub(r"^@!?U?P[T0-9]+\s+", "", text)
    return t.split()[0] if t else ""


def hot_loop(instrs) -> list[str]:
    """Instructions of the backward-branch loop with the most HGMMA / QGMMA (innermost such loop)."""
    best: list[str] = []
    best_key = (0, 0)
    for addr, text in instrs:
        # loop back edges are conditional; the unconditional backward BRAs are the out-of-line
        # mbarrier try-wait stubs jumping back into the code
        m = re.match(r"@!?U?P[T0-9]+\s+BRA\s+(?:`\()?(0x[0-9a-f]+)", text)
        if not m or int(m.group(1), 16) >= addr:
            continue
        body = [t for a, t in instrs if int(m.group(1), 16) <= a <= addr]
        mma = sum(1 for t in body if _op(t).startswith(("HGMMA", "QGMMA")))
        key = (mma, -len(body))  # most MMAs, then the shortest (innermost)
        if mma and key > best_key:
            best, best_key = body, key
    return best


def loop_stats(body: list[str]) -> dict:
    ops = [_op(t) for t in body]
    waits0 = sum(1 for t in body if "WARPGROUP.DEPBAR" in t and re.search(r"0x0\b", t))
    waits = sum(1 for o in ops if o.startswith("WARPGROUP.DEPBAR"))
    in_flight, ovl = False, 0
    for sweep in range(2):
        for t, o in zip(body, ops, strict=True):
            if o.startswith(("HGMMA", "QGMMA")):
                in_flight = True
            elif o.startswith("WARPGROUP.DEPBAR") and re.search(r"0x0\b", t):
                in_flight = False
            elif o == "MUFU.EX2" and in_flight and sweep == 1:
                ovl += 1
    return {"wgmma": sum(1 for o in ops if o.startswith(("HGMMA", "QGMMA"))), "waits 0": waits0,
            "waits >0": waits - waits0, "ex2": ops.count("MUFU.EX2"), "ex2 ovl": ovl, "ffma": ops.count("FFMA"),
            "tma": sum(1 for o in ops if o.startswith("UTMALDG")),
            "cp16": sum(1 for o in ops if o.startswith("LDGSTS.E.BYPASS.128")),
            "bar": sum(1 for o in ops if o.startswith("BAR.SYNC")),
            "mbar": sum(1 for o in ops if o.startswith("SYNCS")),
            "loop instrs": len(body)}  # fmt: skip


def analyse(v, d: int = 128) -> dict:
    ptx, md = compile_variant(v, d)
    log, sass = ptxas_sass(ptx)
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    instrs = parse_sass(sass)
    row = {"variant": v.name, "regs": int(regs.group(1)) if regs else None,
           "spill B": int(spills.group(1)) + int(spills.group(2)) if spills else None, "smem B": int(md.shared),
           "setmaxnreg": sum(1 for _, t in instrs if _op(t).startswith("USETMAXREG")),
           "serial": "yes" if re.search(r"wgmma.*serializ", log, re.I | re.S) else "no",
           "kernel instrs": len(instrs)}  # fmt: skip
    row.update(loop_stats(hot_loop(instrs)))
    return row


def gluon_setmaxnreg_probe() -> str:
    """Whether Gluon's ``warp_specialize`` (a 4-warp default partition, a 1-warp worker given 24 registers)
    compiles to setmaxnreg on sm_90a with this Triton: the register reallocation FA3's producer /
    consumer warpgroups rely on, which plain Triton's kernels above never get."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.experimental import gluon
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon._runtime import GluonASTSource

        @gluon.jit
        def _default(ptr, N: gl.constexpr):
            offs = gl.arange(0, N, layout=gl.BlockedLayout([1], [32], [4], [0]))
            gl.store(ptr + offs, offs.to(gl.float32) * 2.0)

        @gluon.jit
        def _worker(ptr, N: gl.constexpr):
            offs = gl.arange(0, N, layout=gl.BlockedLayout([1], [32], [1], [0]))
            gl.store(ptr + N + offs, offs.to(gl.float32))

        @gluon.jit
        def _probe(ptr, N: gl.constexpr):
            gl.warp_specialize([(_default, (ptr, N)), (_worker, (ptr, N))], [1], [24])

        c = triton.compile(GluonASTSource(_probe, {"ptr": "*fp32", "N": "constexpr"}, {"N": 128}),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})  # fmt: skip
        _, sass = ptxas_sass(c.asm["ptx"])
        ops = [_op(t) for _, t in parse_sass(sass)]
        n = sum(1 for o in ops if o.startswith("USETMAXREG"))
        kinds = sorted({o for o in ops if o.startswith("USETMAXREG")})
        return f"Gluon warp_specialize probe: {n} USETMAXREG in the sm_90a SASS ({', '.join(kinds) or 'none'})"
    except Exception as e:  # noqa: BLE001 - another Triton's Gluon API: say so
        return f"Gluon warp_specialize probe failed: {str(e).strip().splitlines()[-1][:160] if str(e).strip() else e!r}"


def to_markdown(rows: list[dict], command: str, triton_version: str, probe: str = "") -> str:
    lines = [f"# sm_90a SASS of the dense attention variants (Triton {triton_version}, head dim 128, no GPU)", "",
             f"date: {time.strftime('%Y-%m-%d')}  ", f"command: `{command}`", "",
             "Loop columns count the hot loop (the unmasked key-block loop); see the script's docstring.", "",
             "| variant | " + " | ".join(COLUMNS) + " | loop instrs |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | error: {r['error']} |")
        else:
            lines.append(f"| {r['variant']} | " + " | ".join(str(r.get(c, "")) for c in COLUMNS)
                         + f" | {r.get('loop instrs', '')} |")  # fmt: skip
    if probe:
        lines += ["", probe + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--variants", nargs="+", help="only these (default: all)")
    a = ap.parse_args(argv)
    bootstrap()
    import triton

    from vidtrt.kernels.attention_variants import VARIANTS

    rows = []
    for name in a.variants or VARIANTS:
        t0 = time.perf_counter()
        try:
            row = analyse(VARIANTS[name])
        except Exception as e:  # noqa: BLE001 - one variant that does not compile is a finding, not a stop
            row = {"variant": name, "error": str(e).strip().splitlines()[-1][:160] if str(e).strip() else repr(e)}
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()) + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    cmd = "python benchmarks/sass_attention_variants.py " + " ".join(argv if argv is not None else sys.argv[1:])
    probe = gluon_setmaxnreg_probe()
    print(probe)
    md = to_markdown(rows, cmd.strip(), triton.__version__, probe)
    print(md)
    if a.out:
        Path(a.out).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
