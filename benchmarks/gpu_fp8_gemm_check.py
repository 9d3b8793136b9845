"""FP8 GEMMs of the torch engine on the GPU, in one call: correctness, then speed; results to benchmarks/results/.

    python benchmarks/gpu_fp8_gemm_check.py            # H100 / H200: about 4 minutes (budget 290 s)
    python benchmarks/gpu_fp8_gemm_check.py --quick    # no DiT step (~1 minute)
    python benchmarks/gpu_fp8_gemm_check.py --smoke    # CPU: interpreter, tiny shapes (checks this script)

Runs from a checkout that was never installed (Python 3.12, torch 2.11, triton 3.6; nothing else).
Phases (each recorded; a failing one does not stop the others):
 1. quantizer: the Triton activation quantizer (vidtrt.kernels.fp8_quant) against the torch reference,
    byte for byte (per-token and static scales); its GB/s at M = 119,056 against the torch ops;
 2. gemm_correctness: ``torch._scaled_mm`` on the GPU (tensorwise and rowwise, bias in the epilogue)
    against the CPU emulation (vidtrt.models.fp8_linear.fp8_matmul_emulated) of the very same FP8
    values and scales (Hopper's FP8 accumulation is not full fp32: the bounds are measured here), and
    a whole Fp8Linear on the GPU against the same layer on the CPU;
 3. gemm_bench: per GEMM at the DiT's shapes (M = 119,056 tokens): bf16 ``F.linear`` vs our FP8 layer
    (quantizer + ``_scaled_mm``; dynamic per-token = rowwise, static per-tensor = tensorwise) and the
    bare ``_scaled_mm``;
 4. dit_step: one full-size DiT step at 720x1280x129 (random bf16 weights): bf16 + cuDNN SDPA, then
    the same model swapped to FP8 GEMMs + FP8 attention (``--precision fp8``): s/step (target <= 16 s)
    and output cosine vs bf16 (>= 0.995);
 5. layer_sets (if time is left): the full-depth DiT at 320x512x33 (5,760 image tokens), output cosine vs
    bf16 for several FP8 layer sets / scale modes (what decides ``DEFAULT_KEEP_BF16``).
The ratio (bf16 SDPA step / FP8 step) is the last line. Output: benchmarks/results/<date>-<device>-fp8-gemm.json
and .md (copies in $OUT when set).
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

import bench_dit_step  # noqa: E402
from _bootstrap import bootstrap  # noqa: E402
from _phases import PhaseRunner  # noqa: E402

bootstrap()

from vidtrt.kernels.fp8_quant import quantize_rows_fp8  # noqa: E402
from vidtrt.kernels.reference import cosine_similarity  # noqa: E402
from vidtrt.models.fp8_linear import (  # noqa: E402
    Fp8Linear,
    amax_to_scale,
    fp8_matmul_emulated,
    quantize_fp8,
    quantize_rows_reference,
)

M_FULL = 119_056  # 720x1280x129: 118,800 image + 256 text tokens
# (K, N) of the DiT's token-wise GEMMs: q/k/v/out (3072 -> 3072), the MLP in (3072 -> 12288), the MLP out
# (12288 -> 3072), the single blocks' proj_mlp (3072 -> 12288) and proj_out (15360 -> 3072).
GEMM_SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072)]
STEP_TARGET_S = 16.0
COS_LIMIT = 0.995


def log(msg: str) -> None:
    print(msg, flush=True)


def _check(results: list, name: str, value: float, limit: float | None, op: str = "<=", **extra) -> None:
    ok = True if limit is None else (value <= limit if op == "<=" else value >= limit)
    results.append({"check": name, "value": float(value), "limit": limit, "op": op, "ok": bool(ok), **extra})
    log(f"  {name}: {value:.4g} ({'info' if limit is None else f'{op} {limit:g}'}) {'ok' if ok else 'FAIL'}")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: str, reps: int) -> float:
    """Median milliseconds of ``fn`` (after one warm-up call)."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _activations(m: int, k: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    rows = torch.logspace(-2, 1, m, device=device)[:, None]  # tokens across three decades, as in the DiT
    return (torch.randn(m, k, device=device, generator=g) * rows).to(torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------
def quantizer(device: str, smoke: bool) -> dict:
    checks: list = []
    shapes = [(40, 96), (9, 200)] if smoke else [(4096, 3072), (2000, 15360), (257, 12288)]
    for m, k in shapes:
        x = _activations(m, k, device, seed=m)
        x[1] = 0
        ours, s = quantize_rows_fp8(x)
        ref, rs = quantize_rows_reference(x)
        same = float((ours.view(torch.uint8) == ref.view(torch.uint8)).float().mean())
        _check(checks, f"quantizer per-token {m}x{k}: fraction of bytes equal to torch", same, 1.0, ">=")
        _check(checks, f"quantizer per-token {m}x{k}: scales equal to torch", float(torch.equal(s, rs)), 1.0, ">=")
        static = torch.tensor([0.02], device=device)
        ours, _ = quantize_rows_fp8(x, static)
        ref, _ = quantize_rows_reference(x, static)
        same = float((ours.view(torch.uint8) == ref.view(torch.uint8)).float().mean())
        _check(checks, f"quantizer static {m}x{k}: fraction of bytes equal to torch", same, 1.0, ">=")
    speed = []
    m, k = (64, 256) if smoke else (M_FULL, 3072)
    x = _activations(m, k, device, seed=1)
    moved = m * k * 3  # bf16 in, fp8 out
    reps = 2 if smoke else 20
    for name, fn in (("triton per-token", lambda: quantize_rows_fp8(x)),
                     ("torch per-token", lambda: quantize_rows_reference(x))):  # fmt: skip
        ms = _time(fn, device, reps)
        speed.append({"method": name, "m": m, "k": k, "ms": round(ms, 4), "gbps": round(moved / ms / 1e6, 1)})
        log(f"  {name:<17} {m}x{k}: {ms:.3f} ms, {moved / ms / 1e6:.0f} GB/s")
    return {"checks": checks, "speed": speed}


def _gemm_case(m, k, n, device, seed, rowwise):
    x = _activations(m, k, device, seed)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    w = (torch.randn(n, k, device=device, generator=g) * 0.02).to(torch.bfloat16)
    bias = (torch.randn(n, device=device, generator=g) * 0.1).to(torch.bfloat16)
    if rowwise:
        x8, sx = quantize_rows_fp8(x)
        sw = amax_to_scale(w.abs().amax(dim=1))
        w8 = quantize_fp8(w, sw[:, None])
        sa, sb = sx, sw.reshape(1, n).contiguous()
    else:
        sx = amax_to_scale(x.abs().amax())
        x8, _ = quantize_rows_fp8(x, sx.reshape(1))
        sw = amax_to_scale(w.abs().amax())
        w8 = quantize_fp8(w, sw)
        sa, sb = sx, sw
    return x, w, bias, x8, w8, sx, sw, sa, sb


def gemm_correctness(device: str, smoke: bool) -> dict:
    """GPU ``_scaled_mm`` against the CPU emulation of the same FP8 values (on --smoke: torch's CPU
    ``_scaled_mm``, oneDNN, against the emulation)."""
    checks: list = []
    rows = []
    shapes = [(40, 64, 48), (33, 128, 32)] if smoke else [(2048, 3072, 3072), (1000, 3072, 9216), (512, 12288, 3072),
                                                         (300, 15360, 3072)]  # fmt: skip
    for m, k, n in shapes:
        for rowwise in (False, True):
            kind = "rowwise" if rowwise else "tensorwise"
            x, w, bias, x8, w8, sx, sw, sa, sb = _gemm_case(m, k, n, device, seed=m + n, rowwise=rowwise)
            gpu = torch._scaled_mm(x8, w8.t(), scale_a=sa, scale_b=sb, bias=bias, out_dtype=torch.bfloat16)
            emu = fp8_matmul_emulated(x8.cpu(), sx.cpu(), w8.cpu(), sw.cpu(), bias.cpu(), torch.bfloat16)
            g, e = gpu.float().cpu(), emu.float()
            err = (g - e).abs()
            rel_max = float(err.max() / e.abs().max())
            # beyond 2 bf16 ulps of the element, or of the output's rms for elements near zero
            tol = 2.0**-7 * e.abs() + 2.0**-9 * e.pow(2).mean().sqrt()
            beyond = float((err > tol).float().mean())
            exact = float((g == e).float().mean())
            rows.append({"m": m, "k": k, "n": n, "scales": kind, "rel_max": rel_max, "beyond_2ulp": beyond,
                         "bit_equal": exact})  # fmt: skip
            _check(checks, f"_scaled_mm {kind} {m}x{k}x{n} max |gpu - emulation| / max |emulation|", rel_max, 1e-2)
            _check(checks, f"_scaled_mm {kind} {m}x{k}x{n} fraction beyond 2 bf16 ulp", beyond, 1e-3)
            _check(checks, f"_scaled_mm {kind} {m}x{k}x{n} fraction bit-equal to the emulation", exact, None)
    # The whole layer (quantizer kernel + _scaled_mm) on the device vs the same layer on the CPU.
    m, k, n = (24, 64, 32) if smoke else (4096, 3072, 12288)
    torch.manual_seed(11)  # the layer's init: a fixed layer, not a new draw per run
    lin = torch.nn.Linear(k, n, dtype=torch.bfloat16, device=device).requires_grad_(False)
    x = _activations(m, k, device, seed=7)
    for activations in ("dynamic-token", "dynamic-tensor"):
        layer = Fp8Linear.from_linear(lin, activations=activations)
        cpu_layer = Fp8Linear.from_linear(lin, activations=activations, device="cpu")
        out, ref = layer(x).float().cpu(), cpu_layer(x.cpu()).float()
        exact = x.double() @ lin.weight.double().t() + lin.bias.double()
        _check(checks, f"Fp8Linear {activations} device vs CPU emulation: cosine", cosine_similarity(out, ref), 0.9999,
               ">=")  # fmt: skip
        _check(checks, f"Fp8Linear {activations} vs exact bf16 linear: cosine",
               cosine_similarity(out, exact.float().cpu()),
               0.999 if activations == "dynamic-token" else 0.998, ">=")  # one scale per tensor: coarser  # fmt: skip
    return {"checks": checks, "rows": rows}


def _gemm_cases(x, lin, token, static, x8) -> dict:
    import torch.nn.functional as F

    return {
        "bf16 F.linear": lambda: F.linear(x, lin.weight, lin.bias),
        "fp8 layer, per-token (rowwise)": lambda: token(x),
        "fp8 layer, static (tensorwise)": lambda: static(x),
        "fp8 _scaled_mm alone (tensorwise)": lambda: torch._scaled_mm(
            x8, static.weight.t(), scale_a=static.input_scale, scale_b=static.weight_scale, bias=static.bias,
            out_dtype=torch.bfloat16),
    }  # fmt: skip


def gemm_bench(device: str, smoke: bool) -> list[dict]:
    m = 64 if smoke else M_FULL
    shapes = [(64, 48), (96, 32)] if smoke else GEMM_SHAPES
    reps = 2 if smoke else 10
    rows = []
    for k, n in shapes:
        x = _activations(m, k, device, seed=k + n)
        lin = torch.nn.Linear(k, n, dtype=torch.bfloat16, device=device).requires_grad_(False)
        token = Fp8Linear.from_linear(lin)  # dynamic per-token activations, per-channel weights: rowwise
        static = Fp8Linear.from_linear(lin, weights="tensor", input_amax=x.abs().amax().float())  # tensorwise
        x8, _ = quantize_rows_fp8(x, static.input_scale.reshape(1))
        flops = 2 * m * k * n
        base = None
        for name, fn in _gemm_cases(x, lin, token, static, x8).items():
            ms = _time(fn, device, reps)
            base = base or ms
            rows.append({"m": m, "k": k, "n": n, "method": name, "ms": round(ms, 4),
                         "tflops": round(flops / ms / 1e9, 1), "speedup_vs_bf16": round(base / ms, 3)})  # fmt: skip
            log(f"  M={m} K={k} N={n} {name:<34} {ms:8.3f} ms {flops / ms / 1e9:7.1f} TFLOP/s  x{base / ms:.2f}")
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def dit_step(device: str, smoke: bool, budget_s: float) -> dict:
    if smoke:
        rows = bench_dit_step.run(height=32, width=48, frames=5, text_len=8, text_valid=5, backends=("sdpa", "fp8"),
                                  steps=1, device="cpu", smoke=True, log=log)  # fmt: skip
    else:
        rows = bench_dit_step.run(720, 1280, 129, 256, 200, backends=("sdpa", "fp8"), steps=1, log=log,
                                  time_budget_s=budget_s)  # fmt: skip
    checks: list = []
    fp8 = next((r for r in rows if r.get("backend") == "fp8" and "s_per_step" in r), None)
    if fp8 is not None:
        _check(checks, "DiT step fp8 vs bf16 sdpa: output cosine", fp8.get("cos_vs_sdpa", 0.0), COS_LIMIT, ">=")
        _check(checks, "DiT step fp8: finite", float(fp8["finite"]), 1.0, ">=")
        if not smoke:
            _check(checks, "DiT step fp8 (FP8 GEMMs + FP8 attention) 720x1280x129 s/step", fp8["s_per_step"],
                   STEP_TARGET_S)  # fmt: skip
    return {"rows": rows, "checks": checks}


LAYER_SETS = {  # name -> (Fp8LinearConfig kwargs, attention backend)
    "default": ({}, "sdpa"),
    "default, dynamic-tensor": ({"activations": "dynamic-tensor"}, "sdpa"),
    "every block GEMM": ({"keep_bf16": ("time_text_embed.*", "context_embedder.*", "*norm*.linear", "proj_out")},
                         "sdpa"),
    "default + FP8 attention": ({}, "fp8"),
}


def layer_sets(device: str, smoke: bool, budget_s: float) -> dict:
    """Output cosine vs bf16 of the full-depth DiT (random weights) per FP8 layer set, at a small size."""
    import dataclasses

    from vidtrt.config.model_config import TransformerConfig, tiny_config
    from vidtrt.models.fp8_linear import Fp8LinearConfig, swap_linears_to_fp8
    from vidtrt.runtime.fp8_engine import fp8_default_attention

    t0 = time.perf_counter()
    config = tiny_config().transformer if smoke else TransformerConfig()
    dtype = torch.float32 if smoke else torch.bfloat16
    size = (5, 32, 48) if smoke else (33, 320, 512)
    inputs = bench_dit_step.make_inputs(config, *size, 8 if smoke else 256, 5 if smoke else 200, device, dtype)
    checks: list = []
    rows = []
    ref = None
    for name, (kwargs, attention) in [("bf16", ({}, "sdpa")), *LAYER_SETS.items()]:
        if rows and time.perf_counter() - t0 > budget_s * 0.8:
            rows.append({"set": name, "skipped": "time budget"})
            continue
        model = bench_dit_step.build_model(config, device, dtype)
        if name != "bf16":
            swap_linears_to_fp8(model, None, Fp8LinearConfig(**dataclasses.asdict(Fp8LinearConfig()) | kwargs))
        if attention == "fp8":
            attention = fp8_default_attention(torch.device(device), config.attention_head_dim)
        with torch.inference_mode(), bench_dit_step._kernels(attention).active():
            out = model(**inputs).float().cpu()
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        if ref is None:
            ref = out
            continue
        cos = cosine_similarity(out, ref)
        rows.append({"set": name, "attention": attention, "cos_vs_bf16": round(cos, 6)})
        _check(checks, f"full-depth DiT {'x'.join(map(str, size))}, {name}: cosine vs bf16", cos, None)
    return {"rows": rows, "checks": checks, "size": list(size)}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def all_checks(report: dict) -> list[dict]:
    keys = ("quantizer", "gemm_correctness", "dit_step", "layer_sets")
    return [c for key in keys for c in report.get(key, {}).get("checks", [])]


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# FP8 GEMM check: {env.get('gpu', env['device'])}", "",
             f"{env['time']}; torch {env['torch']}, triton {env['triton']}", ""]  # fmt: skip
    checks = all_checks(report)
    if checks:
        lines += ["## Correctness", "", "| check | value | limit | ok |", "|---|---|---|---|"]
        lines += [f"| {c['check']} | {c['value']:.4g} | "
                  + ("(info)" if c["limit"] is None else f"{c['op']} {c['limit']:g}")
                  + f" | {'yes' if c['ok'] else 'NO'} |" for c in checks]  # fmt: skip
        lines.append("")
    if report.get("quantizer", {}).get("speed"):
        lines += ["## Activation quantizer", "", "| method | M x K | ms | GB/s |", "|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['m']}x{r['k']} | {r['ms']} | {r['gbps']} |"
                  for r in report["quantizer"]["speed"]]
        lines.append("")
    if report.get("gemm_bench"):
        lines += ["## GEMMs at the DiT's shapes", "", "| M | K | N | method | ms | TFLOP/s | x bf16 |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['m']} | {r['k']} | {r['n']} | {r['method']} | {r['ms']} | {r['tflops']} | "
                  f"{r['speedup_vs_bf16']} |" for r in report["gemm_bench"]]  # fmt: skip
        lines.append("")
    if report.get("dit_step", {}).get("rows"):
        lines += ["## DiT step (random bf16 weights)", "",
                  "| backend | attention | s/step | first step s | peak GiB | weights GiB | cos vs sdpa |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in report["dit_step"]["rows"]:
            step = r.get("s_per_step", r.get("skipped", ""))
            lines.append(f"| {r['backend']} | {r.get('attention', r['backend'])} | {step} | "
                         f"{r.get('first_step_s', '')} | {r.get('peak_mem_gib', '')} | {r.get('weights_gib', '')} | "
                         f"{r.get('cos_vs_sdpa', '')} |")
        lines.append("")
    if report.get("layer_sets", {}).get("rows"):
        size = "x".join(map(str, report["layer_sets"]["size"]))
        lines += [f"## FP8 layer sets (full-depth DiT, {size}, random weights)", "",
                  "| set | attention | cosine vs bf16 |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {r['set']} | {r.get('attention', '')} | {r.get('cos_vs_bf16', r.get('skipped', ''))} |"
                  for r in report["layer_sets"]["rows"]]  # fmt: skip
        lines.append("")
    if report.get("errors"):
        lines += ["## Errors", ""] + [f"- {k}: {v.splitlines()[-1] if v else ''}" for k, v in report["errors"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: checks this script")
    ap.add_argument("--quick", action="store_true", help="skip the full-size DiT step")
    ap.add_argument("--budget-s", type=float, default=290.0, help="stop starting phases after this many seconds")
    ap.add_argument("--out", help="results folder (default benchmarks/results; --smoke: a temp folder)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    if device == "cpu" and not a.smoke:
        log("no CUDA device: running the --smoke variant (interpreter, tiny shapes)")
        return subprocess.call([sys.executable, __file__, "--smoke", *(argv or sys.argv[1:])])
    out_dir = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="fp8-gemm-smoke-")) if a.smoke
                                          else HERE / "results")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    from gpu_kernels_check import _slug, environment  # the kernel check's report fields and file names

    env = environment(device)
    log(f"== {env.get('gpu', 'CPU (interpreter)')}  torch {env['torch']}  triton {env['triton']}")
    report: dict = {"environment": env, "errors": {}}
    name = f"{time.strftime('%Y-%m-%d')}-{_slug(env.get('gpu', 'cpu-smoke'))}-fp8-gemm"
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"

    runner = PhaseRunner(report, json_path, md_path, to_markdown, a.budget_s, log, t_start=t_start,
                         after_phase=torch.cuda.empty_cache if device == "cuda" else None)  # fmt: skip
    left, save, phase = runner.left, runner.save, runner.phase

    smoke = a.smoke
    phase("quantizer", lambda: quantizer(device, smoke))
    phase("gemm_correctness", lambda: gemm_correctness(device, smoke))
    phase("gemm_bench", lambda: gemm_bench(device, smoke), need_s=0 if smoke else 30)
    if not a.quick:
        phase("dit_step", lambda: dit_step(device, smoke, max(left() - 5, 0)), need_s=0 if smoke else 150)
        phase("layer_sets", lambda: layer_sets(device, smoke, max(left() - 5, 0)), need_s=0 if smoke else 40)
    save()
    failed = [c["check"] for c in all_checks(report) if not c["ok"]]
    log(f"== done in {time.perf_counter() - t_start:.0f} s: {json_path}")
    if failed or report["errors"]:
        log(f"   failures: {failed}  errors in: {list(report['errors'])}")
    rows = {r.get("backend"): r for r in report.get("dit_step", {}).get("rows", [])}
    if "s_per_step" in rows.get("fp8", {}) and "s_per_step" in rows.get("sdpa", {}):
        f, s = rows["fp8"]["s_per_step"], rows["sdpa"]["s_per_step"]
        log(f"DiT step {'(smoke) ' if smoke else '720x1280x129 '}fp8 GEMMs + FP8 attention {f:.3f} s vs bf16 + SDPA "
            f"{s:.3f} s: ratio {s / f:.2f}")
    return 1 if failed or report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
