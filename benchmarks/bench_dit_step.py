"""One full-size HunyuanVideo DiT denoising step (random weights, bf16) per attention backend.

    python benchmarks/bench_dit_step.py                       # GPU: 544x960x129 (S = 67,320 image + 256 text)
    python benchmarks/bench_dit_step.py --backends sdpa triton --steps 3
    python benchmarks/bench_dit_step.py --smoke               # tiny DiT on CPU (interpreter), checks the script

Backends: ``sdpa`` (PyTorch attention + the unfused norm/RoPE), ``triton`` (flash-attention kernel
+ fused QK-norm/RoPE kernel), ``triton-fp8`` (FP8 attention + fused QK-norm/RoPE), ``triton-sta`` /
``triton-fp8-sta`` (sliding-tile attention at the model config's tile and window, or ``--sparse-window``;
every block sparse, as in a sparse step), ``fp8`` (what ``--precision fp8`` runs: the blocks' Linear layers
as FP8 GEMMs, ``vidtrt.models.fp8_linear``, plus FP8 attention, ``triton-fp8-tma`` on Hopper; measured last,
as the model is swapped to FP8 in place). ``cos_vs_sdpa`` is the output cosine vs dense SDPA. The weights
are random (normal, std 0.02; norms 1), so timings are real and outputs only compare backends.
The text has ``--text-valid`` real tokens of 256 (the rest is padding, given as key lengths).
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

BACKENDS = ("sdpa", "triton", "triton-fp8", "triton-tma", "triton-fp8-tma", "fp8")  # later ones are skipped first
SPARSE_BACKENDS = ("triton-sta", "triton-fp8-sta", "triton-sta-tma", "triton-fp8-sta-tma")
FP8 = "fp8"  # FP8 GEMMs + FP8 attention


from _bootstrap import bootstrap  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def build_model(config, device: str, dtype=torch.bfloat16, seed: int = 0):
    """The DiT with random weights, materialized directly on ``device`` in ``dtype`` (no fp32 copy)."""
    from vidtrt.models.transformer import HunyuanVideoTransformer3D

    with torch.device("meta"):
        model = HunyuanVideoTransformer3D(config)
    model = model.to(dtype=dtype).to_empty(device=device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:  # norm weights
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model


def make_inputs(config, frames: int, height: int, width: int, text_len: int, text_valid: int, device: str,
                dtype=torch.bfloat16):
    t_lat, h_lat, w_lat = (frames - 1) // 4 + 1, height // 8, width // 8
    g = torch.Generator(device=device).manual_seed(1)
    latents = torch.randn(1, config.in_channels, t_lat, h_lat, w_lat, device=device, dtype=dtype, generator=g)
    text = torch.randn(1, text_len, config.text_embed_dim, device=device, dtype=dtype, generator=g)
    mask = torch.zeros(1, text_len, dtype=torch.int64, device=device)
    mask[:, :text_valid] = 1
    pooled = torch.randn(1, config.pooled_projection_dim, device=device, dtype=dtype, generator=g)
    return dict(hidden_states=latents, timestep=torch.tensor([900.0], device=device),
                encoder_hidden_states=text, encoder_attention_mask=mask, pooled_projections=pooled,
                guidance=torch.tensor([6000.0], device=device))  # fmt: skip


def _kernels(backend: str):
    """The engine's kernel choice for one attention backend: the Triton backends also fuse norm + RoPE."""
    from vidtrt.runtime.pipeline import KernelChoice

    return KernelChoice(backend, fused_rope=backend != "sdpa")


def swap_to_fp8(model, device: str, fp8_config=None) -> dict:
    """Swap ``model``'s Linear layers to FP8 in place (as ``--precision fp8`` does); returns what it did and
    the attention backend the fp8 row runs with."""
    from vidtrt.models.fp8_linear import Fp8LinearConfig, fp8_weight_bytes, swap_linears_to_fp8
    from vidtrt.runtime.fp8_engine import fp8_default_attention

    config = fp8_config or Fp8LinearConfig()
    t0 = time.perf_counter()
    names = swap_linears_to_fp8(model, None, config)
    _sync(device)
    fp8_bytes, other = fp8_weight_bytes(model)
    return {"attention": fp8_default_attention(torch.device(device), model.config.attention_head_dim),
            "fp8_layers": len(names), "fp8_activations": config.activations, "fp8_weights": config.weights,
            "swap_s": round(time.perf_counter() - t0, 2), "weights_gib": round((fp8_bytes + other) / 2**30, 2)}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _sparse_step(backend: str, config, sparse_window):
    """The step every block of a sparse backend runs with (the model config's defaults, or one window)."""
    from vidtrt.config.sparse_attention import SparseAttentionConfig, SparseStep

    if backend not in SPARSE_BACKENDS:
        return None
    cfg = SparseAttentionConfig(**({"tile": (1, 4, 4)} if config.num_attention_heads <= 2 else {}))
    n = config.num_layers + config.num_single_layers
    window = tuple(sparse_window) if sparse_window else tuple(cfg.window)
    return SparseStep(tuple(cfg.tile), (window,) * n)


def run(height: int = 544, width: int = 960, frames: int = 129, text_len: int = 256, text_valid: int = 200,
        backends=BACKENDS, steps: int = 2, device: str | None = None, smoke: bool = False,
        time_budget_s: float | None = None, log=print, fp8_config=None, sparse_window=None,
        cos_ref: str = "sdpa") -> list[dict]:
    """One row per backend; ``cos_vs_<cos_ref>``: output cosine vs that backend's (when it ran)."""
    bootstrap()
    from vidtrt.config.model_config import TransformerConfig, tiny_config
    from vidtrt.config.sparse_attention import sparse_step

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.perf_counter()
    config = tiny_config().transformer if smoke else TransformerConfig()
    dtype = torch.float32 if smoke else torch.bfloat16
    t0 = time.perf_counter()
    model = build_model(config, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"  DiT {n_params / 1e9:.2f} B params on {device} ({dtype}) built in {time.perf_counter() - t0:.1f} s")
    inputs = make_inputs(config, frames, height, width, text_len, text_valid, device, dtype)
    lat = inputs["hidden_states"].shape
    n_img = lat[2] * (lat[3] // 2) * (lat[4] // 2)
    rows: list[dict] = []
    outputs: dict[str, torch.Tensor] = {}
    backends = [b for b in backends if b != FP8] + [b for b in backends if b == FP8]  # the swap is one-way
    for backend in backends:
        if time_budget_s is not None and rows:
            spent = time.perf_counter() - t_start
            per = max(r.get("first_step_s", 0) + r.get("s_per_step", 0) * steps for r in rows if "s_per_step" in r)
            if spent + per * 1.2 > time_budget_s:
                log(f"  {backend}: skipped (time budget)")
                rows.append({"backend": backend, "skipped": "time budget"})
                continue
        extra: dict = {}
        attention = backend
        if backend == FP8:
            extra = swap_to_fp8(model, device, fp8_config)
            attention = extra["attention"]
            log(f"  fp8: {extra['fp8_layers']} Linear layers swapped in {extra['swap_s']} s, weights "
                f"{extra['weights_gib']} GiB, attention {attention}")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step = _sparse_step(attention, config, sparse_window)
        with torch.inference_mode(), _kernels(attention).active(), sparse_step(step):
            t0 = time.perf_counter()
            out = model(**inputs)  # warm-up: compiles / autotunes the kernels
            _sync(device)
            first = time.perf_counter() - t0
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                out = model(**inputs)
                _sync(device)
                times.append(time.perf_counter() - t0)
        outputs[backend] = out.float().cpu()
        row = {"backend": backend, "height": height, "width": width, "frames": frames, "image_tokens": n_img,
               "text_tokens": text_len, "text_valid": text_valid, "seq": n_img + text_len,
               "first_step_s": round(first, 3), "s_per_step": round(min(times), 4),
               "steps_timed": steps, "finite": bool(torch.isfinite(out).all()), **extra}  # fmt: skip
        if step is not None:
            row.update(tile=list(step.tile), window=list(step.windows[0]))
        if device == "cuda":
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows.append(row)
        log(f"  {backend:<11} {row['s_per_step']:8.3f} s/step (first {first:.1f} s)"
            + (f"  peak {row.get('peak_mem_gib')} GiB" if device == "cuda" else ""))  # fmt: skip
    base = outputs.get(cos_ref)
    for r in rows:
        if base is not None and r.get("backend") in outputs and r["backend"] != cos_ref:
            a, b = outputs[r["backend"]].double().flatten(), base.double().flatten()
            r[f"cos_vs_{cos_ref}"] = round(float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300)), 6)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=544)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--frames", type=int, default=129)
    ap.add_argument("--text-valid", type=int, default=200, help="real text tokens of 256")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS + SPARSE_BACKENDS)
    ap.add_argument("--sparse-window", type=int, nargs=3, default=None, metavar=("T", "H", "W"),
                    help="window in tiles of the STA backends (default: the model config's)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per backend (after one warm-up step)")
    ap.add_argument("--smoke", action="store_true", help="tiny DiT on CPU through the Triton interpreter")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    if a.smoke:
        # the tiny DiT's head dim 16 is below FP8 attention's 64 (its fp8 row: FP8 GEMMs emulated on CPU, SDPA)
        backends = [b for b in a.backends if b == FP8 or "fp8" not in b]
        rows = run(height=64, width=64, frames=5, text_len=8, text_valid=5, backends=backends, steps=1,
                   device="cpu", smoke=True, sparse_window=a.sparse_window)  # fmt: skip
    else:
        rows = run(a.height, a.width, a.frames, 256, a.text_valid, a.backends, a.steps, sparse_window=a.sparse_window)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
