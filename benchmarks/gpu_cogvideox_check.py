"""One full-size CogVideoX-5B DiT denoising step with CFG per attention backend (random bf16 weights).

    python benchmarks/gpu_cogvideox_check.py            # GPU (H100 / H200): 720x480x49, CFG batch 2; budget 240 s
    python benchmarks/gpu_cogvideox_check.py --smoke    # CPU: Triton interpreter, tiny DiT (checks this script)

The step is what ``vidtrt run`` does per step for CogVideoX-5B at its default size: one DiT forward on the
batched [uncond; cond] latents [2, 13, 16, 60, 90] with 226 T5 tokens each (S = 226 + 13 * 30 * 45 = 17,776
tokens, 48 heads x 64, 42 layers, 3D RoPE). Backends: ``sdpa`` (PyTorch's attention, the reference) and our
Triton kernels through the model's backend switch (``triton``, ``triton-fp8``, ``triton-tma``,
``triton-fp8-tma``; the TMA flavours only on Hopper), and last ``fp8-gemms``: what ``--precision fp8`` runs
(FP8 GEMMs on the attention projections and MLP inputs with dynamic per-token scales + FP8 attention). Each
backend's output is compared with sdpa's (relative error; FP8 is expected near 1e-2). Weights are random
(normal, std 0.02; norms 1): timings are real, outputs only compare backends.

Runs from a checkout that was never installed (Python 3.12, torch 2.11, triton 3.6; no diffusers). Output:
``benchmarks/results/<date>-<device>-cogvideox.json`` and ``.md`` (copies in ``$OUT`` when set); the last
line printed is the best kernel's step time vs sdpa's and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bootstrap import bootstrap  # noqa: E402

bootstrap()

# "fp8-gemms": the torch engine's --precision fp8 (FP8 GEMMs on the family's layer set, COGVIDEOX_KEEP_BF16, with
# dynamic per-token scales, and FP8 attention: triton-fp8-tma on Hopper, triton-fp8 on Ada, sdpa on CPU). It swaps
# the model's Linear layers in place, so it runs last.
FP8_GEMMS = "fp8-gemms"
BACKENDS = ("sdpa", "triton", "triton-fp8", "triton-tma", "triton-fp8-tma", FP8_GEMMS)
BUDGET_S = 240.0


def log(msg: str) -> None:
    print(msg, flush=True)


def build_dit(config, device: str, dtype: torch.dtype):
    """The CogVideoX DiT with random weights, materialised directly on ``device`` in ``dtype``."""
    from vidtrt.models.cogvideox_transformer import CogVideoXTransformer3D

    with torch.device("meta"):
        model = CogVideoXTransformer3D(config)
    model = model.to(dtype=dtype).to_empty(device=device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model


def sizes(smoke: bool):
    from vidtrt.config.cogvideox_config import cogvideox_5b_config

    config = cogvideox_5b_config()
    if smoke:
        tc = dataclasses.replace(config.transformer, num_attention_heads=2, num_layers=1, text_embed_dim=32,
                                 time_embed_dim=32, max_text_seq_length=9)
        return tc, (1, 2, 4), 9  # (latent frames, h, w), text tokens
    d = config.defaults
    t, _ = config.latent_frames(d.num_frames)
    s = config.vae.spatial_compression_ratio
    return config.transformer, (t, d.height // s, d.width // s), config.transformer.max_text_seq_length


def run(smoke: bool, steps: int, backends, budget_s: float) -> dict:
    device = "cpu" if smoke else "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16
    tc, (t, h, w), text_len = sizes(smoke)
    start = time.perf_counter()
    model = build_dit(tc, device, dtype)
    g = torch.Generator(device=device).manual_seed(1)
    latents = torch.randn(2, t, tc.in_channels, h, w, device=device, dtype=dtype, generator=g)
    text = torch.randn(2, text_len, tc.text_embed_dim, device=device, dtype=dtype, generator=g)
    timestep = torch.tensor([999, 999], device=device)
    seq = text_len + t * (h // tc.patch_size) * (w // tc.patch_size)
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "smoke": smoke, "dtype": str(dtype), "batch": 2, "latents": [t, h, w],
            "sequence": seq, "heads": tc.num_attention_heads, "head_dim": tc.attention_head_dim,
            "layers": tc.num_layers, "budget_s": budget_s, "backends": {}}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    log(f"CogVideoX-5B DiT step with CFG: latents [2, {t}, 16, {h}, {w}], S = {seq}, {tc.num_layers} layers, "
        f"{tc.num_attention_heads} x {tc.attention_head_dim}, {dtype}")
    from vidtrt.models.attention import use_backend

    reference = None
    for name in backends:
        if time.perf_counter() - start > budget_s:
            info["backends"][name] = {"skipped": "time budget"}
            log(f"{name}: skipped (time budget)")
            continue
        if name.endswith("-tma") and (device != "cuda" or torch.cuda.get_device_capability() < (9, 0)):
            info["backends"][name] = {"skipped": "needs Hopper TMA"}
            continue
        entry = {}
        attention = name
        try:
            if name == FP8_GEMMS:
                from vidtrt.models.fp8_linear import COGVIDEOX_KEEP_BF16, Fp8LinearConfig, swap_linears_to_fp8

                swapped = swap_linears_to_fp8(model, None, Fp8LinearConfig(keep_bf16=COGVIDEOX_KEEP_BF16))
                entry["fp8_layers"] = len(swapped)
                attention = ("sdpa" if device != "cuda" else
                             "triton-fp8-tma" if torch.cuda.get_device_capability() >= (9, 0) else "triton-fp8")
                entry["attention"] = attention
            with use_backend(attention), torch.inference_mode():
                t0 = time.perf_counter()
                out = model(latents, text, timestep)  # warm-up: Triton JIT / autotune
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                entry["first_call_s"] = time.perf_counter() - t0
                times = []
                for _ in range(steps):
                    t0 = time.perf_counter()
                    out = model(latents, text, timestep)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
            entry["step_s"] = min(times)
            entry["steps_s"] = times
            if device == "cuda":
                entry["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            out = out.float()
            if not bool(torch.isfinite(out).all()):
                entry["error"] = "non-finite output"
            if reference is None and name == "sdpa":
                reference = out
            elif reference is not None:
                entry["rel_err_vs_sdpa"] = float((out - reference).norm() / reference.norm())
            log(f"{name}: step {entry['step_s']:.3f} s (first call {entry['first_call_s']:.1f} s)"
                + (f", rel err vs sdpa {entry['rel_err_vs_sdpa']:.2e}" if "rel_err_vs_sdpa" in entry else "")
                + (f", peak {entry['peak_gib']:.1f} GiB" if "peak_gib" in entry else ""))
        except Exception as e:  # one backend failing must not stop the others
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()[-2000:]
            log(f"{name}: FAILED {entry['error']}")
        info["backends"][name] = entry
    info["seconds"] = time.perf_counter() - start
    return info


def write(info: dict) -> list[Path]:
    stamp = time.strftime("%Y-%m-%d")
    dev = "smoke" if info["smoke"] else info["device"].lower().replace(" ", "-")
    name = f"{stamp}-{dev}-cogvideox"
    lines = [f"# CogVideoX-5B DiT step with CFG ({info['device']}, {info['dtype']})", "",
             f"latents [2, {info['latents'][0]}, 16, {info['latents'][1]}, {info['latents'][2]}], "
             f"S = {info['sequence']}, {info['layers']} layers, {info['heads']} x {info['head_dim']}", "",
             "| backend | step (s) | first call (s) | peak GiB | rel err vs sdpa | note |", "|---|---|---|---|---|---|"]
    for b, e in info["backends"].items():
        fmt = lambda k, f, e=e: (f.format(e[k]) if k in e else "")  # noqa: E731
        note = e.get("skipped") or e.get("error", "")
        lines.append(f"| {b} | {fmt('step_s', '{:.3f}')} | {fmt('first_call_s', '{:.1f}')} | "
                     f"{fmt('peak_gib', '{:.1f}')} | {fmt('rel_err_vs_sdpa', '{:.2e}')} | {note} |")
    # --smoke results are not measurements: a temporary folder, not benchmarks/results/
    home = Path(tempfile.gettempdir()) / "vidtrt-smoke" if info["smoke"] else HERE / "results"
    targets = [home] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    written = []
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(info, indent=2))
        (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
        written += [folder / f"{name}.json", folder / f"{name}.md"]
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny DiT")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per backend after one warm-up (default 2)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds (default {BUDGET_S:g})")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        log("no CUDA device: run with --smoke on CPU")
        return 2
    # FP8 attention needs a GPU's float8 support; the FP8 GEMMs are emulated on CPU
    backends = [b for b in args.backends if not (args.smoke and "fp8" in b and b != FP8_GEMMS)]
    backends = [b for b in backends if b != FP8_GEMMS] + [b for b in backends if b == FP8_GEMMS]  # it swaps: last
    info = run(args.smoke, 1 if args.smoke else args.steps, backends, args.budget)
    for path in write(info):
        log(f"wrote {path}")
    ref = info["backends"].get("sdpa", {}).get("step_s")
    ours = {b: e["step_s"] for b, e in info["backends"].items() if b != "sdpa" and "step_s" in e and "error" not in e}
    if ref and ours:
        best = min(ours, key=ours.get)
        log(f"CogVideoX-5B DiT step (CFG): ours {best} {ours[best]:.3f} s, reference sdpa {ref:.3f} s, "
            f"ratio {ref / ours[best]:.2f}")
    failed = [b for b, e in info["backends"].items() if "error" in e]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
