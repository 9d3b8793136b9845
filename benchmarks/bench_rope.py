"""Fused QK RMSNorm + 3D RoPE: effective GB/s of the Triton kernel vs the unfused PyTorch code the
DiT runs on CPU (``vidtrt.models.rope.qk_norm_rope_torch``), at HunyuanVideo shapes.

    python benchmarks/bench_rope.py              # GPU: B=1, 24 heads x 128, S = 16k / 67,576 / 119,056 (256 text)
    python benchmarks/bench_rope.py --compile    # also torch.compile of the unfused code
    python benchmarks/bench_rope.py --smoke      # CPU interpreter, tiny shapes

Bytes counted: read q and k, write q and k (1 byte per element for the FP8 output), read the cos /
sin rows once. q and k are strided views of a fused qkv projection output, as in the DiT.
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


def bench_ms(fn, device: str) -> float:
    if device == "cuda":
        import triton.testing

        try:
            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except TypeError:
            return float(triton.testing.do_bench(fn, warmup=25, rep=100))
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def run(seqs=HUNYUAN_SEQS, batch: int = 1, heads: int = 24, head_dim: int = 128, text: int = 256,
        dtype=torch.bfloat16, device: str | None = None, compile_torch: bool = False, log=print) -> list[dict]:
    bootstrap()
    from vidtrt.models.rope import qk_norm_rope_torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    compiled = torch.compile(qk_norm_rope_torch) if compile_torch else None
    rows: list[dict] = []
    for s in seqs:
        rows += _bench_seq(s, batch, heads, head_dim, text, dtype, device, compiled, log)
    return rows


def _bench_seq(s, batch, heads, head_dim, text, dtype, device, compiled, log) -> list[dict]:
    from vidtrt.kernels.reference import safe_fp8_scale
    from vidtrt.kernels.rope import fused_qk_norm_rope
    from vidtrt.models.rope import qk_norm_rope_torch
    from vidtrt.models.transformer import RMSNorm

    rows: list[dict] = []
    norm_q, norm_k = RMSNorm(head_dim).to(device), RMSNorm(head_dim).to(device)
    with torch.no_grad():
        norm_q.weight.uniform_(0.5, 1.5)
        norm_k.weight.uniform_(0.5, 1.5)
    wq, wk = norm_q.weight.detach(), norm_k.weight.detach()
    n = max(s - text, 0)
    torch.manual_seed(0)
    qkv = torch.randn(batch, s, 3, heads, head_dim, device=device, dtype=dtype)
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    ang = torch.rand(n, head_dim // 2, device=device) * 6
    cos = ang.cos().repeat_interleave(2, -1).contiguous()
    sin = ang.sin().repeat_interleave(2, -1).contiguous()
    elems = batch * s * heads * head_dim
    table = 2 * n * head_dim * 4
    esize = torch.finfo(dtype).bits // 8
    sc = (safe_fp8_scale(wq), safe_fp8_scale(wk))

    def add(method, ms, out_bytes, **extra):
        moved = 2 * elems * esize + 2 * elems * out_bytes + table
        row = {"seq": s, "batch": batch, "heads": heads, "head_dim": head_dim, "method": method,
               "ms": round(ms, 4), "gbps": round(moved / (ms * 1e-3) / 1e9, 1), **extra}  # fmt: skip
        rows.append(row)
        log(f"  S={s:>7} {method:<22} {ms:9.4f} ms  {row['gbps']:8.1f} GB/s"
            + "".join(f"  {k}={v}" for k, v in extra.items()))  # fmt: skip

    def torch_path():
        return qk_norm_rope_torch(q, k, norm_q, norm_k, cos, sin, n)

    def fused():
        return fused_qk_norm_rope(q, k, wq, wk, cos, sin, n)

    def fused_fp8():
        return fused_qk_norm_rope(q, k, wq, wk, cos, sin, n, fp8_scale=sc)

    with torch.inference_mode():
        ref = torch_path()
        add("torch (unfused)", bench_ms(torch_path, device), esize)
        if compiled is not None:
            compiled(q, k, norm_q, norm_k, cos, sin, n)
            add("torch.compile", bench_ms(lambda: compiled(q, k, norm_q, norm_k, cos, sin, n), device), esize)
        out = fused()
        err = max((out[i].float() - ref[i].float()).abs().max().item() for i in range(2))
        add("triton fused", bench_ms(fused, device), esize, max_abs_err_vs_torch=round(err, 5))
        fused_fp8()
        add("triton fused -> fp8", bench_ms(fused_fp8, device), 1)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, nargs="+", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the unfused code")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU through the Triton interpreter")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    if a.smoke:
        rows = run(seqs=a.seqs or (40,), heads=2, head_dim=64, text=8, device="cpu")
    else:
        rows = run(seqs=a.seqs or HUNYUAN_SEQS, batch=a.batch, compile_torch=a.compile)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
