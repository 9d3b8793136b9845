"""Step caching on the full-size HunyuanVideo DiT: wall time per video with and without caching (GPU).

    python benchmarks/gpu_step_cache_check.py                 # H100/H200: 544x960, 33 frames, 30 steps, ~3 min
    python benchmarks/gpu_step_cache_check.py --frames 129 --steps 50 --budget-s 1500   # a whole 544p video
    python benchmarks/gpu_step_cache_check.py --smoke         # tiny DiT on CPU: checks this script

Runs the real denoising loop (:func:`vidtrt.runtime.orchestrator.denoise`, the step cache hook included) with the
13 B DiT (random bf16 weights, as ``bench_dit_step.py`` builds it) as the in-process torch engine, fixed random
text embeddings in place of the text encoders, and no VAE decode: what is timed is the text-conditioned step
loop, which is where caching acts. One uncached video first (policy ``none``), then one per EasyCache threshold
and one per TeaCache threshold (its probe on the same DiT module), same seed. Prints per run: DiT calls, wall s
per video, s per DiT call, the cache's own cost per step (reused steps' wall time), and the relative L2
difference of the final latents from the uncached ones; then the ratio uncached / cached wall time last.

Random weights: the skip pattern (and so the speed-up) is the mechanism's on this model, not a trained model's;
on real HunyuanVideo weights EasyCache reports ~2.2x at PSNR ~32.7 dB (docs/step-caching.md). The wall time per
DiT call and the cache's overhead per step are what transfers.

Time budget: ~3 min on one H200 with the defaults (DiT build ~40 s, ~1 s per DiT call at 33 frames with SDPA, 30
uncached + ~2 x 15-20 cached calls); runs are skipped, not started, once ``--budget-s`` (default 240) would be
passed. Output: benchmarks/results/<date>-<device>-step-cache.json and .md (copies in $OUT when set).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402
from _bootstrap import bootstrap  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(msg, flush=True)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


class _TimedDenoiser:
    """The torch engine with its calls counted and timed (synchronised on CUDA)."""

    def __init__(self, inner, device: str):
        self.inner, self.device = inner, device
        self.calls, self.seconds = 0, 0.0

    def __call__(self, *args):
        t0 = time.perf_counter()
        out = self.inner(*args)  # TorchDenoiser returns CPU float32: the copy synchronises
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def run(height: int, width: int, frames: int, steps: int, thresholds: list[float], warmup: int, attention: str,
        device: str, smoke: bool, budget_s: float, teacache_thresholds: tuple[float, ...] = ()) -> dict:
    bootstrap()
    import bench_dit_step

    from vidtrt.config.components import Components, TextEmbeddings
    from vidtrt.config.model_config import hunyuan_video_config, tiny_config
    from vidtrt.config.request import GenerationRequest
    from vidtrt.runtime.dit_probe import probe_of
    from vidtrt.runtime.orchestrator import denoise
    from vidtrt.runtime.pipeline import KernelChoice, TorchDenoiser
    from vidtrt.runtime.step_cache import DitCallTally

    t_start = time.perf_counter()
    config = tiny_config() if smoke else hunyuan_video_config()
    tc = config.transformer
    dtype = torch.float32 if smoke else torch.bfloat16
    t0 = time.perf_counter()
    model = bench_dit_step.build_model(tc, device, dtype)
    build_s = time.perf_counter() - t0
    log(f"  DiT {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params on {device} ({dtype}), "
        f"built in {build_s:.1f} s")
    g = torch.Generator().manual_seed(1)
    text_len = config.text.max_sequence_length
    text = TextEmbeddings(torch.randn(1, text_len, tc.text_embed_dim, generator=g),
                          (torch.arange(text_len) < max(1, text_len * 3 // 4)).long()[None],
                          torch.randn(1, tc.pooled_projection_dim, generator=g))
    denoiser = TorchDenoiser(model, device, KernelChoice(attention, fused_rope=attention != "sdpa"))
    dit = _TimedDenoiser(denoiser, device)
    # TeaCache's probe on the same DiT module (block 0's modulated input; its cost is in the reused steps' time)
    components = Components(encode_text=lambda prompts, policy="truncate": text, dit=dit, decode_tile=None,
                            probe=probe_of(denoiser))
    base = GenerationRequest("random text embeddings", height=height, width=width, num_frames=frames,
                             num_inference_steps=steps, seed=0, cache_warmup_steps=warmup)
    base = base.validate(config)  # checks sizes and warm-up against the model's limits before any step
    # warm-up: two uncached steps, so kernel compilation / autotuning and first-touch allocations stay out of
    # the timed runs
    denoise(dataclasses.replace(base, num_inference_steps=2, cache_policy="none").validate(config), config, components)
    rows: list[dict] = []
    reference = None
    plans = [("none", 0.0)] + [("easycache", t) for t in thresholds] + [("teacache", t) for t in teacache_thresholds]
    for policy, thr in plans:
        spent = time.perf_counter() - t_start
        if rows and spent + rows[0]["wall_s"] * 1.1 > budget_s:
            log(f"  {policy} {thr:g}: skipped (budget: {spent:.0f} s spent of {budget_s:.0f})")
            rows.append({"policy": policy, "threshold": thr, "skipped": "time budget"})
            continue
        request = dataclasses.replace(base, cache_policy=policy, cache_threshold=thr).validate(config)
        dit.calls, dit.seconds = 0, 0.0
        tally = DitCallTally()
        times: list[float] = []
        last = [time.perf_counter()]

        def on_step(event, times=times, last=last, tally=tally):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
            tally(event)

        t0 = time.perf_counter()
        last[0] = t0
        latents = denoise(request, config, components, progress=on_step)
        wall = time.perf_counter() - t0
        if reference is None:
            reference = latents
        rel_l2 = float((latents - reference).double().norm() / reference.double().norm())
        reused = [dt for dt, called in zip(times, tally.pattern, strict=True) if not called]
        row = {"policy": policy, "threshold": thr, "warmup_steps": warmup, "steps": steps,
               "dit_calls": tally.calls, "dit_calls_skipped": tally.skipped, "wall_s": round(wall, 3),
               "s_per_dit_call": round(dit.seconds / max(dit.calls, 1), 4),
               "reused_step_ms": round(1000 * sum(reused) / len(reused), 2) if reused else None,
               "latents_rel_l2_vs_uncached": round(rel_l2, 6), "finite": bool(torch.isfinite(latents).all()),
               "pattern": "".join(str(p) for p in tally.pattern)}
        rows.append(row)
        log(f"  {policy:<9} {thr:<6g} DiT calls {tally.calls:>3}/{steps}  {wall:8.2f} s/video  "
            f"{row['s_per_dit_call']:.3f} s/call  reused step {row['reused_step_ms']} ms  "
            f"rel L2 {rel_l2:.4f}  {row['pattern']}")
    ref_wall = rows[0]["wall_s"]
    for r in rows:
        if "wall_s" in r:
            r["speedup_vs_uncached"] = round(ref_wall / r["wall_s"], 3)
    env = {"torch": torch.__version__, "device": device,
           "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}
    return {"environment": env, "height": height, "width": width, "frames": frames, "attention": attention,
            "build_s": round(build_s, 1), "runs": rows, "elapsed_s": round(time.perf_counter() - t_start, 1)}


def to_markdown(report: dict) -> str:
    r0 = report
    lines = [f"# Step caching, full-size DiT step loop ({r0['environment'].get('gpu') or 'CPU smoke'})", "",
             f"{r0['height']}x{r0['width']}x{r0['frames']}, attention {r0['attention']}, random bf16 weights, "
             "no VAE decode; ratio = uncached wall / cached wall.", "",
             "| policy | threshold | DiT calls | s / video | s / DiT call | reused step ms | latents rel L2 | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in r0["runs"]:
        if "skipped" in r:
            lines.append(f"| {r['policy']} | {r['threshold']:g} | skipped ({r['skipped']}) | | | | | |")
            continue
        lines.append(f"| {r['policy']} | {r['threshold']:g} | {r['dit_calls']} / {r['steps']} | {r['wall_s']:.2f} | "
                     f"{r['s_per_dit_call']:.3f} | {r['reused_step_ms']} | {r['latents_rel_l2_vs_uncached']:.4f} | "
                     f"{r['speedup_vs_uncached']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=544)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--thresholds", default="0.025,0.1", help="EasyCache thresholds, comma-separated")
    ap.add_argument("--teacache-thresholds", default="0.1,0.15",
                    help="TeaCache thresholds, comma-separated (published HunyuanVideo: 0.1 ~1.6x, 0.15 ~2.1x)")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--attention", default="sdpa", help="sdpa (default), triton, triton-fp8, ...")
    ap.add_argument("--budget-s", type=float, default=240.0, help="no run starts that would pass this")
    ap.add_argument("--smoke", action="store_true", help="tiny DiT on CPU: checks this script")
    ap.add_argument("--out", help="results folder (default benchmarks/results; --smoke: a temp folder)")
    a = ap.parse_args(argv)
    thresholds = [float(t) for t in a.thresholds.split(",") if t.strip()]
    tea = tuple(float(t) for t in a.teacache_thresholds.split(",") if t.strip())
    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    if device == "cpu" and not a.smoke:
        log("no CUDA device: running the --smoke variant")
        a.smoke = True
    if a.smoke:
        report = run(64, 96, 9, 12, [0.05, 0.5], 2, "sdpa", "cpu", True, a.budget_s, (0.05, 2.0))
    else:
        report = run(a.height, a.width, a.frames, a.steps, thresholds, a.warmup_steps, a.attention, device, False,
                     a.budget_s, tea)
    out_dir = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="step-cache-smoke-")) if a.smoke
                                          else HERE / "results")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y-%m-%d')}-{_slug(report['environment']['gpu'] or 'cpu-smoke')}-step-cache"
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=1))
    md_path.write_text(to_markdown(report))
    if os.environ.get("OUT"):
        for p in (json_path, md_path):
            shutil.copy(p, Path(os.environ["OUT"]) / p.name)
    done = [r for r in report["runs"][1:] if "wall_s" in r]
    log(f"== {json_path}")
    for policy in ("easycache", "teacache"):
        best = max((r for r in done if r["policy"] == policy), key=lambda r: r["speedup_vs_uncached"], default=None)
        if best is not None:
            log(f"uncached {report['runs'][0]['wall_s']:.2f} s/video, {policy} {best['threshold']:g} "
                f"{best['wall_s']:.2f} s/video: ratio {best['speedup_vs_uncached']:.2f}")
    return 0 if all(r.get("finite", True) for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
