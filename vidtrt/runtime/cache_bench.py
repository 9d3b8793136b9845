"""``vidtrt cache-bench``: what step caching costs and saves, measured on your model.

    vidtrt cache-bench --model small --steps 30 --cache-threshold 0.025,0.05,0.1
    vidtrt cache-bench --model /models/HunyuanVideo --device cuda --height 544 --width 960 --frames 129 \\
        --prompts prompts.txt --json cache.json

Runs every prompt uncached (policy ``none``), then once per threshold with the cache policy, all with the
same seed and sizes, in this process, and prints per prompt and in total: DiT calls, wall time of the
generation (text encoding, steps and decode; weights loaded once, one short warm-up run first) and of its
DiT calls alone, the speed-up of the wall time, and PSNR / SSIM of the frames against the uncached frames
(scikit-image's ``peak_signal_noise_ratio`` and ``structural_similarity``, uint8, SSIM averaged over frames;
PSNR ``inf`` for identical frames). The total PSNR pools the squared error of every prompt's frames.

Imports nothing heavy until it runs, so ``vidtrt --help`` stays light.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vidtrt.config.step_cache import CACHE_POLICIES
from vidtrt.errors import VidtrtError

DEFAULT_PROMPTS = (
    "a cat walks on the grass, realistic style",
    "a red sports car drives along a coastal road at sunset",
    "waves crash against black rocks under a stormy sky",
)
DEFAULT_THRESHOLDS = (0.025, 0.05, 0.1)


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid thresholds {text!r}: accepted numbers separated by commas "
                                         "(e.g. 0.025,0.05,0.1)") from None
    if not values:
        raise argparse.ArgumentTypeError("no threshold given: accepted numbers separated by commas")
    return values


def add_cache_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="small",
                        help="'small' (default, generated, CPU-sized), 'tiny', 'tiny-cogvideox', or a model folder")
    parser.add_argument("--prompts", default=None,
                        help="text file, one prompt per line (default: three built-in prompts)")
    parser.add_argument("--cache-policy", default="easycache", choices=[p for p in CACHE_POLICIES if p != "none"],
                        help="the policy measured against uncached (default easycache)")
    parser.add_argument("--cache-threshold", type=_thresholds, default=list(DEFAULT_THRESHOLDS),
                        help="thresholds to measure, comma-separated (default 0.025,0.05,0.1)")
    parser.add_argument("--cache-warmup-steps", type=int, default=None,
                        help="first steps that always call the DiT (default: the model's)")
    parser.add_argument("--steps", type=int, default=30, dest="num_inference_steps",
                        help="denoising steps (default 30)")
    parser.add_argument("--height", type=int, default=None, help="pixels (model default)")
    parser.add_argument("--width", type=int, default=None, help="pixels (model default)")
    parser.add_argument("--frames", type=int, default=None, dest="num_frames",
                        help="video frames, 4k + 1 (CogVideoX: 8k + 1; 1.5: 16k + 1)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of every run (default 0)")
    parser.add_argument("--true-cfg-scale", type=float, default=None,
                        help="> 1: true CFG with the model's negative prompt (two DiT calls per step)")
    parser.add_argument("--engine", default="torch", choices=["torch", "onnxruntime"], help="component engine")
    parser.add_argument("--artifacts", default=None, help="folder written by `vidtrt export` (--engine onnxruntime)")
    parser.add_argument("--device", default="cpu", help="torch device for --engine torch: cpu (default) or cuda")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="--engine torch precision (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--attention", default=None, help="--engine torch attention backend (see vidtrt run)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


@dataclass
class Run:
    """One generation of the benchmark: ``threshold`` None = the uncached reference."""

    prompt: str
    threshold: float | None
    dit_calls: int
    dit_calls_skipped: int
    wall_s: float
    pattern: list[int] = field(default_factory=list)
    dit_s: float = 0.0
    psnr_db: float = math.inf
    ssim: float = 1.0
    mse: float = 0.0


def frame_metrics(reference, frames) -> tuple[float, float, float]:
    """(PSNR dB, mean SSIM over frames, MSE) of uint8 frames [F, H, W, 3] against ``reference``."""
    import numpy as np

    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError:
        raise VidtrtError("scikit-image is not installed: pip install 'vidtrt[metrics]'") from None
    mse = float(np.mean((reference.astype(np.float64) - frames.astype(np.float64)) ** 2))
    psnr = math.inf if mse == 0.0 else float(peak_signal_noise_ratio(reference, frames, data_range=255))
    ssim = float(np.mean([structural_similarity(r, f, channel_axis=-1, data_range=255)  # 7x7 windows: H, W >= 16
                          for r, f in zip(reference, frames, strict=True)]))
    return psnr, ssim, mse


def _psnr_of_mse(mse: float) -> float:
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def _load(args, source):
    if args.engine == "torch":
        import torch

        from vidtrt.config.model_config import PRECISION_DTYPES, resolve_precision
        from vidtrt.runtime.pipeline import HunyuanVideoPipeline

        dtype = getattr(torch, PRECISION_DTYPES[resolve_precision(args.precision, args.device)])
        return HunyuanVideoPipeline.from_model(source, device=args.device, dtype=dtype, attention=args.attention)
    from vidtrt.runtime.engine_components import load_pipeline_with_engine

    return load_pipeline_with_engine(source, args.engine, args.artifacts)


def run_benchmark(args, out=None) -> list[Run]:
    """Validate every request, load the model once, run and print (to ``out``, default the current
    ``sys.stdout``); returns the runs (reference first per prompt)."""
    import dataclasses

    from vidtrt.config.request import GenerationRequest
    from vidtrt.runtime.step_cache import DitCallTally
    from vidtrt.source.model_source import ModelSource

    out = sys.stdout if out is None else out
    if args.prompts is not None:
        try:
            prompts = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise VidtrtError(f"invalid --prompts {args.prompts!r}: {e.strerror}") from None
        if not prompts:
            raise VidtrtError(f"invalid --prompts {args.prompts!r}: no prompt in it (one per line)")
    else:
        prompts = list(DEFAULT_PROMPTS)
    source = ModelSource.open(args.model)
    config = source.config
    base = GenerationRequest(prompts[0], height=args.height, width=args.width, num_frames=args.num_frames,
                             num_inference_steps=args.num_inference_steps, seed=args.seed,
                             true_cfg_scale=args.true_cfg_scale, cache_policy="none",
                             cache_warmup_steps=args.cache_warmup_steps)
    plans: list[tuple[str, float | None, GenerationRequest]] = []
    for prompt in prompts:  # every request checked before any weight loads
        plans.append((prompt, None, dataclasses.replace(base, prompt=prompt).validate(config)))
        for thr in args.cache_threshold:
            r = dataclasses.replace(base, prompt=prompt, cache_policy=args.cache_policy, cache_threshold=thr)
            plans.append((prompt, thr, r.validate(config)))
    if args.engine == "torch":
        from vidtrt.runtime.pipeline import check_run_choices

        check_run_choices(args.device, args.attention, config.transformer.attention_head_dim)
    pipe = _load(args, source)
    timer = _TimedDit(pipe.components.dit)
    pipe.components = dataclasses.replace(pipe.components, dit=timer)
    first = plans[0][2]
    pipe.run(dataclasses.replace(first, num_inference_steps=1))  # warm-up: first-call costs stay out of the timings
    print(f"model {config.name}, {first.num_inference_steps} steps, {first.num_frames}x{first.height}x{first.width}, "
          f"seed {first.seed}, policy {args.cache_policy}, warm-up steps {first.cache_warmup_steps}"
          f"{', true CFG ' + format(first.true_cfg_scale, 'g') if first.do_true_cfg else ''}; "
          "PSNR / SSIM vs uncached", file=out)
    if args.cache_policy == "teacache":
        from vidtrt.config.step_cache import TEACACHE_COEFFICIENTS, teacache_variant

        variant = teacache_variant(source.config)
        print(f"teacache rescaling polynomial {variant} (published, fitted on the released weights): "
              f"{list(TEACACHE_COEFFICIENTS[variant])}", file=out)
    print(f"{'prompt':<32} {'threshold':>9} {'DiT calls':>9} {'wall s':>8} {'DiT s':>8} {'speed-up':>8} {'PSNR dB':>8} "
          f"{'SSIM':>7}", file=out)
    runs: list[Run] = []
    reference = None
    ref_run: Run | None = None
    for prompt, thr, request in plans:
        tally = DitCallTally()
        timer.seconds = 0.0
        t0 = time.perf_counter()
        frames = pipe.run(request, progress=tally)
        wall = time.perf_counter() - t0
        run = Run(prompt, thr, tally.calls, tally.skipped, wall, list(tally.pattern), dit_s=timer.seconds)
        if thr is None:
            reference, ref_run = frames, run
        else:
            run.psnr_db, run.ssim, run.mse = frame_metrics(reference, frames)
        runs.append(run)
        print(_row(prompt[:32], run, ref_run), file=out, flush=True)
    print(file=out)
    for thr in [None, *args.cache_threshold]:
        group = [r for r in runs if r.threshold == thr]
        refs = [r for r in runs if r.threshold is None]
        total = Run("total", thr, sum(r.dit_calls for r in group), sum(r.dit_calls_skipped for r in group),
                    sum(r.wall_s for r in group), dit_s=sum(r.dit_s for r in group))
        total.mse = sum(r.mse for r in group) / len(group)
        total.psnr_db = _psnr_of_mse(total.mse)
        total.ssim = sum(r.ssim for r in group) / len(group)
        ref_total = Run("total", None, sum(r.dit_calls for r in refs), 0, sum(r.wall_s for r in refs))
        print(_row(f"total ({len(group)} prompts)", total, ref_total), file=out)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": config.name, "runs": [asdict(r) for r in runs]}, indent=1,
                                              default=str))
    return runs


class _TimedDit:
    """The pipeline's DiT component with the seconds spent in it summed (the engine returns CPU tensors, so
    the time includes its device work)."""

    def __init__(self, dit):
        self.dit, self.seconds = dit, 0.0

    def __call__(self, *args):
        t0 = time.perf_counter()
        try:
            return self.dit(*args)
        finally:
            self.seconds += time.perf_counter() - t0


def _row(name: str, run: Run, ref: Run | None) -> str:
    thr = "uncached" if run.threshold is None else f"{run.threshold:g}"
    speed = ref.wall_s / run.wall_s if ref is not None and run.wall_s > 0 else 1.0
    psnr = "inf" if math.isinf(run.psnr_db) else f"{run.psnr_db:.2f}"
    return (f"{name:<32} {thr:>9} {run.dit_calls:>9} {run.wall_s:>8.2f} {run.dit_s:>8.2f} {speed:>7.2f}x {psnr:>8} "
            f"{run.ssim:>7.4f}")


def cache_bench_main(args: argparse.Namespace) -> int:
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise VidtrtError(f"invalid --json {args.json!r}: its folder does not exist")
    run_benchmark(args)
    return 0
