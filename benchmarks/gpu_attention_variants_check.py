"""Which dense attention variant wins on this GPU: every variant of vidtrt.kernels.attention_variants,
checked, then timed against cuDNN SDPA at the HunyuanVideo lengths, in one call.

    python benchmarks/gpu_attention_variants_check.py            # H100 / H200: ~2.5 minutes (budget 170 s)
    python benchmarks/gpu_attention_variants_check.py --variants bf16-base-tma fp8-poly-tma
    python benchmarks/gpu_attention_variants_check.py --smoke    # CPU: interpreter, tiny shapes (checks this script)

Runs from a checkout that was never installed (Python 3.12, torch 2.11, triton 3.6; nothing else).
Phases (each recorded; a failing one does not stop the others; see benchmarks/_phases.py):
 1. correctness (and compilation): each variant at B=2, S=1000 (off the block grid), H=8, D=128, bf16
    inputs, unequal key lengths: BF16 vs the float64 reference (rel err <= 2e-2); FP8 cosine vs exact
    (>= 0.995) and rel err vs the block emulation with Hopper's FP8 accumulation model, both in bf16 (<= 1e-2
    for the variants computing the production algorithm: one bf16 step; 2e-2 for FMA-pipe exp2 / one-level
    accumulation / 128-key blocks), and every FP8 variant's max error vs exact attention;
 2. timing: B=1, H=24, D=128, S = 67,576 and 119,056 (544p / 720p x 129 frames): cuDNN SDPA (bf16) once
    per length, then each variant (one warm-up call, then the median of 3 timed calls at 119k, 5 at 67k;
    CUDA events; key lengths = S, so no kernel compiles again), controls first, BF16 and FP8 interleaved,
    none started with less than 8 s of the budget left (correctness starts none with < 70 s left).
The winner per dtype is the correct variant with the highest mean TFLOP/s over the lengths; the last
line prints it against cuDNN and the issue's targets (BF16 >= 650, FP8 >= 900 TFLOP/s).
Output: benchmarks/results/<date>-<device>-attention-variants.json and .md (copies in $OUT when set).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bootstrap import bootstrap  # noqa: E402
from _phases import PhaseRunner  # noqa: E402

bootstrap()

from vidtrt.kernels.attention_fp8 import quantize_qkv_fp8  # noqa: E402
from vidtrt.kernels.attention_variants import VARIANTS, flash_attention_variant  # noqa: E402
from vidtrt.kernels.reference import attention_fp8_emulation, attention_reference, cosine_similarity  # noqa: E402

SEQS = (67_576, 119_056)
TARGET_TFLOPS = {"bf16": 650.0, "fp8": 900.0}  # issue 13 item 2
MIN_START_S = 8.0  # no variant starts timing with less left (~2.5 s of calls; compiled by the correctness phase)
TIMING_RESERVE_S = 70.0  # the correctness phase starts no variant with less left (the timing needs ~50 s)


def log(msg: str) -> None:
    print(msg, flush=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def ordered(names) -> list[str]:
    """Controls first, then BF16 and FP8 interleaved, each in VARIANTS' order (most promising first)."""
    base = [n for n in names if VARIANTS[n].kernel == "base" and n in ("bf16-base-tma", "fp8-base-tma")]
    rest_b = [n for n in names if n not in base and not VARIANTS[n].fp8]
    rest_f = [n for n in names if n not in base and VARIANTS[n].fp8]
    inter = [x for pair in zip(rest_b, rest_f, strict=False) for x in pair]
    n = min(len(rest_b), len(rest_f))
    return base + inter + rest_b[n:] + rest_f[n:]


def correctness(names, device: str, smoke: bool, runner: PhaseRunner | None = None) -> list[dict]:
    """Each variant on bf16 inputs with key lengths: the same kernel specializations the timing uses (no
    compile there). Variants not started with less than TIMING_RESERVE_S left are recorded as skipped."""
    b, s, h, d = (2, 48, 1, 64) if smoke else (2, 1000, 8, 128)
    g = torch.Generator().manual_seed(0)
    qb, kb, vb = (torch.randn(b, s, h, d, generator=g).bfloat16().to(device) for _ in range(3))
    kl = torch.tensor([s, s * 2 // 3 + 1], dtype=torch.int32, device=device)
    ref = attention_reference(qb, kb, vb, kl)
    ops = quantize_qkv_fp8(qb, kb, vb)
    fp8_mma = "sm90" if device == "cuda" else "fp32"
    emu = attention_fp8_emulation(ops.q8, ops.k8, ops.v8, ops.q_scale, ops.k_scale, ops.v_scale, kl,
                                  block_n=32 if smoke else 64, fp8_mma=fp8_mma)  # fmt: skip
    blocks = {"block_m": 32, "block_n": 32} if smoke else {}
    rows = []
    for name in names:
        var = VARIANTS[name]
        row = {"variant": name}
        if runner is not None and not smoke and runner.left() < TIMING_RESERVE_S:
            row.update(ok=False, error="skipped (budget)")
            rows.append(row)
            continue
        try:
            if not var.fp8:
                out = flash_attention_variant(qb, kb, vb, kl, variant=name, **blocks)
                row.update(rel_err_vs_exact=_rel(out, ref), limit=2e-2)
                row["ok"] = bool(row["rel_err_vs_exact"] <= row["limit"] and torch.isfinite(out).all())
            else:
                out = flash_attention_variant(qb, kb, vb, kl, variant=name, quantized=ops, **blocks)
                exact_algo = not (var.poly_exp or var.acc_in_mma)
                # bf16 output (as the timing's): where kernel and emulation differ by ~1e-4 the rounding
                # can flip one bf16 step, up to 2^-7 = 7.8e-3 of the value (the interpreter also rounds
                # fp32 -> bf16 differently from torch); so 1e-2 for the exact algorithm
                emu_tol = 1e-2 if exact_algo else 2e-2
                if not smoke and var.block_n != 64:  # the emulation's key blocks are 64 wide: its model differs
                    emu_tol = 2e-2
                row.update(cos_vs_fp32=cosine_similarity(out, ref), rel_err_vs_exact=_rel(out, ref),
                           rel_err_vs_emulation=_rel(out, emu.bfloat16()), limit=emu_tol)  # fmt: skip
                row["ok"] = bool(row["cos_vs_fp32"] >= 0.995 and row["rel_err_vs_emulation"] <= emu_tol)
        except Exception as e:  # noqa: BLE001 - a variant that fails is a result
            row.update(ok=False, error=str(e).strip().splitlines()[-1][:200] if str(e).strip() else repr(e))
        rows.append(row)
        log(f"  {'ok  ' if row['ok'] else 'FAIL'} {name:<28} "
            + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                       if k not in ("variant", "ok")))  # fmt: skip
    return rows


def _time_ms(fn, device: str, reps: int) -> float:
    if device != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def _sdpa(qt, kt, vt, device: str):
    """(name, fn) of the reference: cuDNN SDPA on a GPU (the fastest on an H200), the math backend on CPU."""
    if device != "cuda":
        return "sdpa-math", lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def fn():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)

    return "sdpa-cudnn", fn


def timing(names, device: str, smoke: bool, runner: PhaseRunner, seqs=SEQS) -> dict:
    """{"rows": [...], "skipped": [...]}: one row per (S, method)."""
    h, d = (1, 64) if smoke else (24, 128)
    seqs = (80,) if smoke else seqs
    blocks = {"block_m": 32, "block_n": 32} if smoke else {}
    res: dict = {"rows": [], "skipped": []}
    inputs = {}
    for s in seqs:
        torch.manual_seed(s)
        q, k, v = (torch.randn(1, s, h, d, device=device, dtype=torch.bfloat16) for _ in range(3))
        inputs[s] = (q, k, v, quantize_qkv_fp8(q, k, v))
        flops = 4.0 * h * s * s * d
        qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        name, fn = _sdpa(qt, kt, vt, device)
        fn()
        ms = _time_ms(fn, device, 3 if s > 100_000 else 5)
        res["rows"].append({"seq": s, "method": name, "ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1),
                            "flops": flops})  # fmt: skip
        log(f"  S={s:>7} {name:<28} {ms:9.3f} ms {flops / ms / 1e9:7.1f} TFLOP/s")
    for name in names:
        if not smoke and runner.left() < MIN_START_S:
            res["skipped"].append(name)
            continue
        var = VARIANTS[name]
        for s in seqs:
            q, k, v, ops = inputs[s]
            flops = 4.0 * h * s * s * d
            kw = {"quantized": ops} if var.fp8 else {}
            kl = torch.full((1,), s, dtype=torch.int32, device=device)  # all keys; as the correctness phase
            try:
                def fn(q=q, k=k, v=v, kl=kl, kw=kw, name=name):
                    return flash_attention_variant(q, k, v, kl, variant=name, **kw, **blocks)

                t0 = time.perf_counter()
                out = fn()  # compiles
                first_s = time.perf_counter() - t0
                finite = bool(torch.isfinite(out).all())
                # CPU (--smoke): the first call is the timing (the interpreter compiles nothing)
                ms = _time_ms(fn, device, 3 if s > 100_000 else 5) if device == "cuda" else first_s * 1e3
                row = {"seq": s, "method": name, "ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1),
                       "flops": flops, "first_call_s": round(first_s, 1), "finite": finite}  # fmt: skip
            except Exception as e:  # noqa: BLE001
                row = {"seq": s, "method": name, "error": str(e).strip().splitlines()[-1][:200] if str(e).strip()
                       else repr(e)}  # fmt: skip
            res["rows"].append(row)
            log(f"  S={s:>7} {name:<28} " + (f"{row['ms']:9.3f} ms {row['tflops']:7.1f} TFLOP/s"
                                              if "ms" in row else f"failed: {row['error'][:100]}"))  # fmt: skip
        if device == "cuda":
            torch.cuda.empty_cache()
    if res["skipped"]:
        log(f"  skipped (budget): {res['skipped']}")
    return res


def winners(report: dict) -> dict:
    """Per dtype: the correct, finite variant with the highest mean TFLOP/s over the timed lengths."""
    ok = {r["variant"] for r in report.get("correctness") or [] if r.get("ok")}
    rows = (report.get("timing") or {}).get("rows", [])
    seqs = sorted({r["seq"] for r in rows})
    ref = {r["seq"]: r for r in rows if r["method"].startswith("sdpa") and "tflops" in r}
    out: dict = {"reference": {s: ref[s]["tflops"] for s in ref}}
    for dtype in ("bf16", "fp8"):
        best = None
        for name, var in VARIANTS.items():
            if var.fp8 != (dtype == "fp8") or name not in ok:
                continue
            mine = {r["seq"]: r for r in rows if r["method"] == name and "tflops" in r and r.get("finite", True)}
            if not seqs or set(mine) != set(seqs):
                continue
            speed = {s: mine[s]["flops"] / mine[s]["ms"] / 1e9 for s in seqs}  # TFLOP/s, unrounded
            mean = sum(speed.values()) / len(seqs)
            if best is None or mean > best["mean_tflops"]:
                best = {"variant": name, "mean_tflops": mean, "tflops": {s: mine[s]["tflops"] for s in seqs},
                        "vs_reference": {s: round(ref[s]["ms"] / mine[s]["ms"], 3) for s in seqs if s in ref},
                        "target": TARGET_TFLOPS[dtype]}  # fmt: skip
        if best is not None:
            best["mean_tflops"] = round(best["mean_tflops"], 1)
        out[dtype] = best
    return out


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Dense attention variants: {env.get('gpu', env['device'])}", "",
             f"{env['time']}; torch {env['torch']}, triton {env['triton']}", ""]  # fmt: skip
    if report.get("correctness"):
        lines += ["## Correctness (B=2, S=1000, H=8, D=128, key lengths 1000 / 667)", "",
                  "| variant | ok | rel err vs exact | cos vs fp32 | rel err vs emulation (limit) | error |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["correctness"]:
            f = lambda k, r=r: f"{r[k]:.4g}" if isinstance(r.get(k), float) else ""  # noqa: E731
            lim = f" ({r['limit']:g})" if "rel_err_vs_emulation" in r else ""
            lines.append(f"| {r['variant']} | {'yes' if r['ok'] else 'NO'} | {f('rel_err_vs_exact')} | "
                         f"{f('cos_vs_fp32')} | {f('rel_err_vs_emulation')}{lim} | {r.get('error', '')} |")  # fmt: skip
        lines.append("")
    rows = (report.get("timing") or {}).get("rows", [])
    if rows:
        seqs = sorted({r["seq"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        lines += ["## TFLOP/s (B=1, H=24, D=128; FP8: kernel alone, inputs pre-quantized)", "",
                  "| method | " + " | ".join(f"S = {s:,}" for s in seqs) + " | first call s |",
                  "|---|" + "---|" * (len(seqs) + 1)]  # fmt: skip
        for m in methods:
            cells, first = [], ""
            for s in seqs:
                r = next((r for r in rows if r["method"] == m and r["seq"] == s), None)
                cells.append("" if r is None else (f"{r['tflops']}" if "tflops" in r else f"error: {r['error'][:60]}"))
                first = first or (str(r.get("first_call_s", "")) if r else "")
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {first} |")
        skipped = report["timing"].get("skipped")
        if skipped:
            lines += ["", f"Not timed (budget): {', '.join(skipped)}"]
        lines.append("")
    w = report.get("winners") or {}
    if w:
        lines += ["## Winners", ""]
        for dtype in ("bf16", "fp8"):
            b = w.get(dtype)
            lines.append(f"- {dtype}: " + ("none measured" if not b else
                         f"**{b['variant']}** mean {b['mean_tflops']} TFLOP/s {b['tflops']}, vs reference "
                         f"{b['vs_reference']}, target {b['target']:g}"))  # fmt: skip
        lines.append("")
    if report.get("errors"):
        lines += ["## Errors", ""] + [f"- {k}: {v.splitlines()[-1] if v else ''}" for k, v in report["errors"].items()]
    return "\n".join(lines) + "\n"


def summary(report: dict) -> str:
    w = report.get("winners") or {}
    parts = []
    for dtype in ("bf16", "fp8"):
        b = w.get(dtype)
        if b:
            ratios = ", ".join(f"S={s}: {r:.2f}x" for s, r in b["vs_reference"].items())
            parts.append(f"{dtype} winner {b['variant']} {b['mean_tflops']} TFLOP/s (target {b['target']:g}); "
                         f"vs cuDNN {ratios}")  # fmt: skip
        else:
            parts.append(f"{dtype}: no variant measured")
    return "; ".join(parts)


def main(argv=None) -> int:
    from gpu_kernels_check import _slug, environment

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: checks this script")
    ap.add_argument("--budget-s", type=float, default=170.0, help="no variant starts timing past this")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="only these (default: all)")
    ap.add_argument("--seqs", type=int, nargs="+", default=list(SEQS), help="sequence lengths (GPU)")
    ap.add_argument("--out", help="results folder (default benchmarks/results; --smoke: a temp folder)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    if device == "cpu" and not a.smoke:
        log("no CUDA device: running the --smoke variant (interpreter, tiny shapes)")
        return subprocess.call([sys.executable, __file__, "--smoke", *(argv or sys.argv[1:])])
    out_dir = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="variants-smoke-")) if a.smoke
                                          else HERE / "results")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    log(f"== {env.get('gpu', 'CPU (interpreter)')}  torch {env['torch']}  triton {env['triton']}")
    report: dict = {"environment": env, "errors": {}}
    name = f"{time.strftime('%Y-%m-%d')}-{_slug(env.get('gpu', 'cpu-smoke'))}-attention-variants"

    def before_save(rep: dict) -> None:
        rep["winners"] = winners(rep)
        rep["summary"] = summary(rep)

    runner = PhaseRunner(report, out_dir / f"{name}.json", out_dir / f"{name}.md", to_markdown, a.budget_s, log,
                         before_save=before_save,
                         after_phase=torch.cuda.empty_cache if device == "cuda" else None, t_start=t_start)  # fmt: skip
    names = ordered(a.variants or list(VARIANTS))
    runner.phase("correctness", lambda: correctness(names, device, a.smoke, runner))
    runner.phase("timing", lambda: timing(names, device, a.smoke, runner, tuple(a.seqs)),
                 need_s=0 if a.smoke else 40)  # fmt: skip
    runner.save()
    failed = [r["variant"] for r in report.get("correctness") or [] if not r["ok"]]
    log(f"== done in {runner.elapsed():.0f} s: {runner.json_path}")
    if failed or report["errors"]:
        log(f"   failed: {failed}  errors in: {list(report['errors'])}")
    log(report["summary"])
    return 1 if failed or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
