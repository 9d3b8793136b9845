"""Attention TFLOP/s at HunyuanVideo shapes: PyTorch SDPA (each backend, best reported) vs the Triton
flash-attention kernel (BF16) vs the FP8 kernel (kernel alone on pre-quantized inputs, and end to
end with the quantization).

    python benchmarks/bench_attention.py                 # GPU: B=1, 24 heads x 128, S = 16k / 67,576 / 119,056
    python benchmarks/bench_attention.py --seqs 4096 --batch 2
    python benchmarks/bench_attention.py --smoke         # CPU interpreter, tiny shapes (checks the script)

FLOPs counted as 4 * B * H * S_q * S_k * D (two matmuls, non-causal), or with the valid keys only
for the key-length rows. At the HunyuanVideo lengths the sliding-tile kernels follow (``sta-*`` rows,
``benchmarks/_sparse_bench.py``): the config's default window and windows near 25 % / 50 % density,
TFLOP/s counted on the visited key blocks, speedup vs the dense kernel of the same flavour
(``--no-sparse`` skips them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

HUNYUAN_SEQS = (16 * 1024, 67_576, 119_056)


from _bootstrap import bootstrap  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def bench_ms(fn, device: str, long: bool = False) -> float:
    """Median milliseconds per call (triton.testing.do_bench on GPU; one timed call on CPU)."""
    if device == "cuda":
        import triton.testing

        warmup, rep = (10, 40) if long else (25, 100)
        try:
            return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
        except TypeError:  # older triton without return_mode
            return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep))
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


SMOKE_SPARSE = {80: ((2, 4, 8), 16)}  # CPU: 64 image tokens in tiles of 1 x 4 x 8, 16 text tokens


def run(seqs=HUNYUAN_SEQS, batch: int = 1, heads: int = 24, head_dim: int = 128, dtype=torch.bfloat16,
        device: str | None = None, text_pad: int = 56, log=print, sparse: bool = False) -> list[dict]:
    """One row per (S, method): ms, TFLOP/s; accuracy vs the best SDPA output (cosine)."""
    bootstrap()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict] = []
    for s in seqs:
        seq_rows = _bench_seq(s, batch, heads, head_dim, dtype, device, text_pad, log)
        rows += seq_rows
        cases = _sparse_cases(device)
        if sparse and s in cases:
            rows += _sparse_seq(s, cases[s], seq_rows, batch, heads, head_dim, dtype, device, text_pad, log)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def _bench_seq(s: int, batch: int, heads: int, head_dim: int, dtype, device: str, text_pad: int, log) -> list[dict]:
    import torch.nn.functional as F

    from vidtrt.kernels.attention import flash_attention
    from vidtrt.kernels.attention_fp8 import flash_attention_fp8, quantize_qkv_fp8

    rows: list[dict] = []
    gpu = device == "cuda"
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, s, heads, head_dim, device=device, dtype=dtype) for _ in range(3))
    flops = 4.0 * batch * heads * s * s * head_dim
    long = gpu and flops > 2e13
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # [B, H, S, D]: SDPA's best case

    def add(method, ms, fl=flops, **extra):
        row = {"seq": s, "batch": batch, "heads": heads, "head_dim": head_dim, "method": method,
               "ms": round(ms, 4), "tflops": round(fl / (ms * 1e-3) / 1e12, 2), **extra}  # fmt: skip
        rows.append(row)
        log(f"  S={s:>7} {method:<28} {ms:10.3f} ms  {row['tflops']:8.1f} TFLOP/s"
            + "".join(f"  {k}={v}" for k, v in extra.items()))  # fmt: skip

    def sdpa():
        return F.scaled_dot_product_attention(qt, kt, vt)

    ref = None
    if gpu:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)]
        if hasattr(SDPBackend, "CUDNN_ATTENTION"):
            backends.insert(0, ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION))
        best = None
        for name, be in backends:
            try:
                with sdpa_kernel([be]):
                    out = sdpa()
                    ms = bench_ms(sdpa, device, long)
            except RuntimeError as e:  # backend not available for this shape / build
                rows.append({"seq": s, "method": name, "error": str(e).splitlines()[0][:200]})
                log(f"  S={s:>7} {name:<28} unavailable: {str(e).splitlines()[0][:100]}")
                continue
            add(name, ms)
            if best is None or ms < best[1]:
                best, ref = (name, ms), out.transpose(1, 2)
        if best:
            rows.append({"seq": s, "method": "sdpa-best", "of": best[0], "ms": best[1],
                         "tflops": round(flops / (best[1] * 1e-3) / 1e12, 2)})  # fmt: skip
    if ref is None:
        ref = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float()).transpose(1, 2)

    def add_checked(method, fn, optional=False):
        """Run (the first call compiles / autotunes), time, and compare with the reference; an
        optional row that fails is recorded as an error and the other rows still run."""
        try:
            out = fn()
            add(method, bench_ms(fn, device, long), cos_vs_sdpa=round(_cos(out, ref), 6))
        except Exception as e:  # noqa: BLE001
            if not optional:
                raise
            rows.append({"seq": s, "method": method, "error": str(e).splitlines()[0][:200]})
            log(f"  S={s:>7} {method:<28} failed: {str(e).splitlines()[0][:100]}")

    tma = not gpu or torch.cuda.get_device_capability() >= (9, 0)  # K / V by TMA bulk copies (Hopper)
    add_checked("triton-bf16", lambda: flash_attention(q, k, v))
    if tma:
        add_checked("triton-bf16-tma", lambda: flash_attention(q, k, v, tma=True), optional=True)
    # text padding: the last text_pad keys of every sample are padding (no mask tensor, no FLOPs)
    kl = torch.full((batch,), s - text_pad, dtype=torch.int32, device=device)
    flash_attention(q, k, v, kl)
    add("triton-bf16 key_lengths", bench_ms(lambda: flash_attention(q, k, v, kl), device, long),
        fl=flops * (s - text_pad) / s, valid_keys=s - text_pad)  # fmt: skip
    ops = quantize_qkv_fp8(q, k, v)
    kw = dict(q_scale=ops.q_scale, k_scale=ops.k_scale, v_scale=ops.v_scale, quant_block=ops.quant_block,
              out_dtype=dtype)  # fmt: skip
    add_checked("triton-fp8 (kernel)", lambda: flash_attention_fp8(ops.q8, ops.k8, ops.v8, **kw))
    if tma:
        add_checked("triton-fp8-tma (kernel)", lambda: flash_attention_fp8(ops.q8, ops.k8, ops.v8, **kw, tma=True),
                    optional=True)  # fmt: skip
    add("triton-fp8 (+quantize)", bench_ms(lambda: flash_attention_fp8(q, k, v), device, long))
    add("quantize q/k/v only", bench_ms(lambda: quantize_qkv_fp8(q, k, v), device), fl=0.0)
    return rows


def _sparse_cases(device: str) -> dict:
    from _sparse_bench import HUNYUAN_CASES

    return HUNYUAN_CASES if device == "cuda" else SMOKE_SPARSE


def _sparse_seq(s, case, seq_rows, batch, heads, head_dim, dtype, device, text_pad, log) -> list[dict]:
    from _sparse_bench import default_windows, sparse_rows

    grid, n_text = case
    ms = {r["method"]: r["ms"] for r in seq_rows if "ms" in r}
    dense = {"bf16": ms.get("triton-bf16"), "bf16-tma": ms.get("triton-bf16-tma"),
             "fp8": ms.get("triton-fp8 (kernel)"), "fp8-tma": ms.get("triton-fp8-tma (kernel)")}
    if device == "cuda":
        tile, windows = (4, 8, 8), default_windows(grid, n_text)
    else:
        tile, windows = (1, 4, 8), {"default": (1, 1, 1), "d50": (2, 1, 1)}
    tma = device != "cuda" or torch.cuda.get_device_capability() >= (9, 0)
    return sparse_rows(s, grid, n_text, batch, heads, head_dim, dtype, device, n_text - min(text_pad, n_text // 2),
                       dense, bench_ms, log, windows, tile=tile, tma=tma)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, nargs="+", default=None, help="sequence lengths (default HunyuanVideo's)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--head-dim", type=int, default=128, choices=(64, 128))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU through the Triton interpreter")
    ap.add_argument("--no-sparse", action="store_true", help="skip the sliding-tile (sta-*) rows")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    if a.smoke:
        rows = run(seqs=a.seqs or (80,), batch=1, heads=2, head_dim=a.head_dim, device="cpu", text_pad=8,
                   sparse=not a.no_sparse)
    else:
        rows = run(seqs=a.seqs or HUNYUAN_SEQS, batch=a.batch, heads=a.heads, head_dim=a.head_dim,
                   sparse=not a.no_sparse)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(summary(rows))
    return 0


def summary(rows: list[dict]) -> str:
    """The last line: ours / PyTorch's best SDPA backend (TFLOP/s ratio) per sequence length."""
    parts = []
    for s in sorted({r["seq"] for r in rows}):
        by = {r["method"]: r for r in rows if r["seq"] == s and "tflops" in r}
        base = by.get("sdpa-best")
        if base is None:
            parts.append(f"S={s}: no SDPA reference on this device")
            continue
        ours = [m for m in ("triton-bf16", "triton-bf16-tma", "triton-fp8 (kernel)", "triton-fp8-tma (kernel)")
                if m in by]
        sta = [m for m in by if m.startswith("sta-fp8") and by[m].get("speedup_vs_dense")]
        parts.append(f"S={s}: " + ", ".join(f"{m} {by[m]['tflops'] / base['tflops']:.2f}x" for m in ours)
                     + "".join(f", {m} {by[m]['speedup_vs_dense']:.2f}x vs dense" for m in sta))
    return "ratio vs best SDPA (" + base_name(rows) + "): " + "; ".join(parts)


def base_name(rows: list[dict]) -> str:
    names = sorted({r.get("of", "") for r in rows if r.get("method") == "sdpa-best"})
    return "/".join(n for n in names if n) or "none"


if __name__ == "__main__":
    sys.exit(main())
