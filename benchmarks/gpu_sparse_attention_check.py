"""Sliding-tile (block-sparse) attention on a GPU, in one call; results to benchmarks/results/.

    python benchmarks/gpu_sparse_attention_check.py            # H100 / H200: ~4 minutes (budget 230 s)
    python benchmarks/gpu_sparse_attention_check.py --no-dit   # attention only (~2 minutes)
    python benchmarks/gpu_sparse_attention_check.py --smoke    # CPU: interpreter + tiny shapes (checks the script)

Runs from a checkout that was never installed (Python 3.12, torch 2.11, triton 3.6). Phases (each
recorded; a failing one does not stop the others; a phase that would not fit the budget is skipped):
 1. correctness: the sliding-tile path (tile permutation with padding, layout, kernel, inverse
    permutation) vs natural-order STA attention from 3D coordinates (float64 reference), fp32 IEEE
    products (rel err <= 1e-5), bf16 (<= 0.02), FP8 (cosine >= 0.995), pointer and TMA flavours,
    unequal key lengths, a grid off the tile grid; a window covering everything vs the dense kernels;
 2. attention at S = 119,056 (720x1280x129), 24 heads x 128: cuDNN SDPA and our dense kernels (FP8
    pointer / TMA, BF16), then the sparse kernels at the config's default window and windows near 25 % /
    50 % density (tile 4x8x8), and ~15 % density with tile 1x8x16 (less padding at 45 rows); TFLOP/s
    counted on visited blocks, speedup vs our dense kernel of the same flavour;
 3. one full-size DiT step at 720x1280x129 (random bf16 weights): triton-fp8-tma (dense) vs
    triton-fp8-sta (default window, every block sparse), output cosine vs dense;
 4. if the budget allows: FP8 dense vs sparse (default window) at S = 67,576 (544x960x129).
The last line: sparse FP8 speedup vs dense FP8 at S = 119,056 and the DiT step ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _sparse_bench  # noqa: E402
import bench_attention  # noqa: E402
import bench_dit_step  # noqa: E402
from _phases import PhaseRunner  # noqa: E402

bench_attention.bootstrap()


def log(msg: str) -> None:
    print(msg, flush=True)


def _rel(out, ref) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-300))


def _cos(a, b) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def correctness(device: str, smoke: bool) -> list[dict]:
    from vidtrt.kernels.attention import flash_attention
    from vidtrt.kernels.attention_fp8 import flash_attention_fp8
    from vidtrt.kernels.backends import sta_blocks
    from vidtrt.kernels.block_sparse import block_sparse_attention, block_sparse_attention_fp8
    from vidtrt.kernels.sparse_layout import TileGrid, sliding_tile_layout, sliding_tile_reference

    checks: list[dict] = []

    def check(name, value, limit, op="<="):
        ok = value <= limit if op == "<=" else value >= limit
        checks.append({"check": name, "value": value, "limit": limit, "op": op, "ok": bool(ok)})
        log(f"  {name:<62} {value:.4g} ({op} {limit:g}) {'ok' if ok else 'FAIL'}")

    gpu = device == "cuda"
    # grid off the tile grid on every axis; tile 2x8x8 = 128 tokens (GPU blocks 128 x 64)
    grid, tile, n_txt, heads, d = ((5, 20, 28), (2, 8, 8), 40, 2, 128) if gpu else ((3, 5, 6), (2, 4, 4), 10, 1, 64)
    tiles = TileGrid(grid, tile)
    n_img, pad = tiles.num_tokens, tiles.padded_tokens
    bm, bn = sta_blocks(tiles.tile_tokens, gpu)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n_img + n_txt, heads, d, generator=g).to(device) for _ in range(3))
    kl = torch.tensor([n_img + n_txt, n_img + n_txt // 3], device=device)
    kl_pad = kl - n_img + pad
    perm = tiles.permutation(device)

    def to_tiles(x):
        out = torch.zeros(x.shape[0], pad + n_txt, *x.shape[2:], dtype=x.dtype, device=device)
        out[:, perm] = x[:, :n_img]
        out[:, pad:] = x[:, n_img:]
        return out

    def from_tiles(y):
        return torch.cat((y[:, perm], y[:, pad:]), 1)

    for window in ((1, 1, 2), (3, 1, 1)) if gpu else ((1, 1, 1),):
        layout = sliding_tile_layout(tiles, window, pad + n_txt, bm, bn, device=device)
        ref = sliding_tile_reference(q, k, v, tiles, window, kl)
        tq, tk, tv = (to_tiles(x) for x in (q, k, v))
        for tma in (False, True):
            name = f"window {window}{' tma' if tma else ''}"
            out = from_tiles(block_sparse_attention(tq, tk, tv, layout, kl_pad, tma=tma))
            check(f"sta fp32 (IEEE) rel err vs float64, {name}", _rel(out, ref), 1e-5)
            if gpu:
                qb, kb, vb = (x.bfloat16() for x in (tq, tk, tv))
                out = from_tiles(block_sparse_attention(qb, kb, vb, layout, kl_pad, tma=tma))
                check(f"sta bf16 rel err vs float64, {name}", _rel(out, ref), 0.02)
                out = from_tiles(block_sparse_attention_fp8(qb, kb, vb, layout, kl_pad, tma=tma))
                check(f"sta fp8 cosine vs float64, {name}", _cos(out, ref), 0.995, ">=")
            elif not tma:
                out = from_tiles(block_sparse_attention_fp8(tq, tk, tv, layout, kl_pad, quant_block=32))
                check(f"sta fp8 cosine vs float64, {name}", _cos(out, ref), 0.995, ">=")
    # a window covering everything equals the dense kernels (same precision)
    full = sliding_tile_layout(tiles, (99, 99, 99), pad + n_txt, bm, bn, device=device)
    dt = torch.bfloat16 if gpu else torch.float32
    qd, kd, vd = (x.to(dt) for x in (q, k, v))
    tq, tk, tv = (to_tiles(x) for x in (qd, kd, vd))
    dense = flash_attention(qd, kd, vd, kl) if gpu else flash_attention(qd, kd, vd, kl, block_m=32, block_n=32)
    check(f"sta {str(dt)[6:]} full window vs dense kernel, rel", _rel(from_tiles(
        block_sparse_attention(tq, tk, tv, full, kl_pad)), dense), 1e-2 if gpu else 1e-5)
    if gpu:
        dense8 = flash_attention_fp8(qd, kd, vd, kl)
        check("sta fp8 full window vs dense fp8 kernel, cosine", _cos(from_tiles(
            block_sparse_attention_fp8(tq, tk, tv, full, kl_pad)), dense8), 0.999, ">=")
    return checks


def dense_rows(s: int, dtype, device: str, log, flavours=("fp8", "fp8-tma", "bf16")) -> list[dict]:
    """Lean dense rows at S (B=1, 24 x 128): cuDNN SDPA and our dense kernels (autotuned)."""
    import torch.nn.functional as F

    from vidtrt.kernels.attention import flash_attention
    from vidtrt.kernels.attention_fp8 import flash_attention_fp8, quantize_qkv_fp8

    heads, d = (24, 128) if device == "cuda" else (2, 64)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, s, heads, d, device=device, dtype=dtype) for _ in range(3))
    flops = 4.0 * heads * s * s * d
    rows = []

    def add(method, fn):
        try:
            fn()
            ms = bench_attention.bench_ms(fn, device, device == "cuda")
        except Exception as e:  # noqa: BLE001
            rows.append({"seq": s, "method": method, "error": str(e).splitlines()[0][:200]})
            log(f"  S={s:>7} {method:<28} failed: {str(e).splitlines()[0][:100]}")
            return
        rows.append({"seq": s, "method": method, "ms": round(ms, 4), "tflops": round(flops / (ms * 1e-3) / 1e12, 2)})
        log(f"  S={s:>7} {method:<28} {ms:10.3f} ms  {rows[-1]['tflops']:8.1f} TFLOP/s")

    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        if hasattr(SDPBackend, "CUDNN_ATTENTION"):
            def cudnn():
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    return F.scaled_dot_product_attention(qt, kt, vt)

            add("sdpa-cudnn", cudnn)
        del qt, kt, vt
    ops = quantize_qkv_fp8(q, k, v)
    kw = dict(q_scale=ops.q_scale, k_scale=ops.k_scale, v_scale=ops.v_scale, quant_block=ops.quant_block,
              out_dtype=dtype)  # fmt: skip
    if "fp8" in flavours:
        add("triton-fp8 (kernel)", lambda: flash_attention_fp8(ops.q8, ops.k8, ops.v8, **kw))
    if "fp8-tma" in flavours:
        add("triton-fp8-tma (kernel)", lambda: flash_attention_fp8(ops.q8, ops.k8, ops.v8, **kw, tma=True))
    if "bf16" in flavours:
        add("triton-bf16", lambda: flash_attention(q, k, v))
    return rows


def attention(device: str, smoke: bool, seq: int, windows=None, flavours=("fp8", "fp8-tma", "bf16")) -> list[dict]:
    """Dense rows, then the sparse ones (default window; ~25 % / 50 % density) at one sequence length."""
    if smoke:
        grid, n_text, tile, dtype = (2, 4, 8), 16, (1, 4, 8), torch.float32
        windows = windows or {"default": (1, 1, 1), "d50": (2, 1, 1)}
    else:
        (grid, n_text), tile, dtype = _sparse_bench.HUNYUAN_CASES[seq], (4, 8, 8), torch.bfloat16
        windows = windows or _sparse_bench.default_windows(grid, n_text, tile)
    rows = dense_rows(seq, dtype, device, log, flavours)
    ms = {r["method"]: r["ms"] for r in rows if "ms" in r}
    dense = {"bf16": ms.get("triton-bf16"), "fp8": ms.get("triton-fp8 (kernel)"),
             "fp8-tma": ms.get("triton-fp8-tma (kernel)")}
    heads, d = (24, 128) if device == "cuda" else (2, 64)
    for name, window in windows.items():
        rows += _sparse_bench.sparse_rows(seq, grid, n_text, 1, heads, d, dtype, device, n_text - 56 if not smoke
                                          else n_text // 2, {f: dense[f] for f in flavours if dense.get(f)},
                                          bench_attention.bench_ms, log, {name: window}, tile=tile,
                                          tma=any(f.endswith("tma") for f in flavours),
                                          flavours=flavours)  # fmt: skip
    if seq == 119_056 and not smoke:  # less padding at 45 rows: 1-frame tiles of 8 x 16 tokens
        tiles = _sparse_bench.sparse_case(grid, n_text, (1, 1, 1), (1, 8, 16), device)[0]
        rows += _sparse_bench.sparse_rows(seq, grid, n_text, 1, heads, d, dtype, device, 200,
                                          {"fp8": dense["fp8"]}, bench_attention.bench_ms, log,
                                          {"tile1x8x16-d15": _sparse_bench.window_for_density(tiles, 0.15)},
                                          tile=(1, 8, 16), tma=False, flavours=("fp8",))  # fmt: skip
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def dit_step(device: str, smoke: bool) -> list[dict]:
    """Dense first (the cosine reference), then sparse at the config's default window."""
    if smoke:
        rows = bench_dit_step.run(height=64, width=64, frames=5, text_len=8, text_valid=5,
                                  backends=("triton", "triton-sta"), steps=1, device="cpu", smoke=True, log=log,
                                  sparse_window=(1, 1, 1), cos_ref="triton")  # fmt: skip
        ref = "triton"
    else:
        ref = "triton-fp8-tma"
        rows = bench_dit_step.run(720, 1280, 129, 256, 200, backends=(ref, "triton-fp8-sta"), steps=1,
                                  device=device, log=log, cos_ref=ref)  # fmt: skip
    for r in rows:
        if f"cos_vs_{ref}" in r:
            r["cos_vs_dense"] = r.pop(f"cos_vs_{ref}")
    return rows


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Sparse attention check: {env.get('gpu', env['device'])}", "",
             f"{env['time']}; torch {env['torch']}, triton {env['triton']}", ""]  # fmt: skip
    if report.get("correctness"):
        lines += ["## Correctness", "", "| check | value | limit | ok |", "|---|---|---|---|"]
        lines += [f"| {c['check']} | {c['value']:.4g} | {c['op']} {c['limit']:g} | {'yes' if c['ok'] else 'NO'} |"
                  for c in report["correctness"]]
        lines.append("")
    att_rows = (report.get("attention") or []) + (report.get("attention_67k") or [])
    if att_rows:
        lines += ["## Attention", "", "| S | method | ms | TFLOP/s | density | speedup vs dense | note |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in att_rows:
            note = r.get("error") or r.get("skipped") or (f"window {r['window']} tile {r['tile']}" if "window" in r
                                                          else r.get("of", ""))
            lines.append(f"| {r.get('seq')} | {r.get('method', '')} | {r.get('ms', '')} | {r.get('tflops', '')} | "
                         f"{r.get('density', '')} | {r.get('speedup_vs_dense', '')} | {note} |")
        lines.append("")
    if report.get("dit_step"):
        lines += ["## DiT step", "", "| backend | s/step | first step s | peak GiB | cos vs dense |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r.get('s_per_step', r.get('skipped', ''))} | {r.get('first_step_s', '')} | "
                  f"{r.get('peak_mem_gib', '')} | {r.get('cos_vs_dense', '')} |" for r in report["dit_step"]]
        lines.append("")
    if report.get("errors"):
        lines += ["## Errors", ""] + [f"- {k}: {v.splitlines()[-1] if v else ''}" for k, v in report["errors"].items()]
    lines += ["", report.get("summary", "")]
    return "\n".join(lines) + "\n"


def summary(report: dict) -> str:
    parts = []
    att = {(r.get("seq"), r.get("method")): r for r in (report.get("attention") or [])
           + (report.get("attention_67k") or [])}
    for flav in ("fp8", "fp8-tma"):
        r = att.get((119_056, f"sta-{flav} default"))
        if r and r.get("speedup_vs_dense"):
            parts.append(f"sparse {flav} (default window, density {r['density']}) vs dense {flav} at S=119,056: "
                         f"{r['speedup_vs_dense']:.2f}x")
    dit = {r["backend"]: r for r in report.get("dit_step") or [] if "s_per_step" in r}
    dense = dit.get("triton-fp8-tma") or dit.get("triton")
    sparse = dit.get("triton-fp8-sta") or dit.get("triton-sta")
    if dense and sparse:
        parts.append(f"DiT step {sparse['backend']} {sparse['s_per_step']} s vs {dense['backend']} "
                     f"{dense['s_per_step']} s: {dense['s_per_step'] / sparse['s_per_step']:.2f}x")
    return "; ".join(parts) or "no ratio measured"


def main(argv=None) -> int:
    from gpu_kernels_check import _slug, environment

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: checks this script")
    ap.add_argument("--no-dit", action="store_true", help="skip the full-size DiT step")
    ap.add_argument("--budget-s", type=float, default=230.0, help="stop starting phases after this many seconds")
    ap.add_argument("--out", help="results folder (default benchmarks/results; --smoke: a temp folder)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    smoke = a.smoke or device == "cpu"
    out_dir = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="sparse-smoke-")) if smoke
                                          else HERE / "results")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    log(f"== {env.get('gpu', 'CPU (interpreter)')}  torch {env['torch']}  triton {env['triton']}")
    report: dict = {"environment": env, "errors": {}}
    name = f"{time.strftime('%Y-%m-%d')}-sparse-{_slug(env.get('gpu', 'cpu-smoke'))}"
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"

    def before_save(rep: dict) -> None:
        rep["summary"] = summary(rep)

    runner = PhaseRunner(report, json_path, md_path, to_markdown, a.budget_s, log, before_save=before_save,
                         t_start=t_start)
    save, phase = runner.save, runner.phase

    phase("correctness", lambda: correctness(device, smoke))
    phase("attention", lambda: attention(device, smoke, 80 if smoke else 119_056), need_s=0 if smoke else 90)
    if not a.no_dit:
        phase("dit_step", lambda: dit_step(device, smoke), need_s=0 if smoke else 100)
    if not smoke:  # 544x960x129 lengths, FP8 only, if the budget allows
        phase("attention_67k", lambda: attention(device, smoke, 67_576, flavours=("fp8", "fp8-tma"),
                                                 windows={"default": (5, 3, 5)}), need_s=45)
    save()
    log(f"results: {json_path}")
    log(report["summary"])
    failed = [c["check"] for c in report.get("correctness") or [] if not c["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
