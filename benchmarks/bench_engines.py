"""Seconds per denoising step: the onnxruntime engine vs the torch engine, same model, sizes and threads.

One denoising step = one DiT call through the engine-built Denoiser (``EngineDenoiser``: the same
text-bucket trim for both engines) + the Euler update. Both engines get the same latents, timestep and
text embeddings; calls alternate between the engines so machine load hits both alike, and the median
over ``--repeats`` steps is reported. The ratio (onnxruntime / torch, < 1 = onnxruntime faster) is
printed last.

    python benchmarks/bench_engines.py [--model tiny] [--artifacts DIR] [--sizes 64x96x9 128x128x17]
                                       [--repeats 10] [--threads N]

Without ``--artifacts`` the model is exported to a temporary folder first (tiny: about a minute).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--artifacts", default=None, help="folder written by `vidtrt export` (default: export now)")
    ap.add_argument("--sizes", nargs="+", default=None, help="HxWxF video sizes (default: the model's default "
                                                              "size and one 4x larger)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="threads for both engines (0: torch's current count)")
    args = ap.parse_args(argv)

    import torch

    from vidtrt.runtime.engine_components import load_engine_components
    from vidtrt.runtime.scheduler import euler_step, flow_match_sigmas, initial_noise, timesteps_from_sigmas
    from vidtrt.source.model_source import ModelSource

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    source = ModelSource.open(args.model)
    config = source.config
    d = config.defaults
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes] if args.sizes else [
        (d.height, d.width, d.num_frames),
        (min(2 * d.height, d.max_height), min(2 * d.width, d.max_width), min(2 * d.num_frames - 1, d.max_num_frames)),
    ]
    artifacts = args.artifacts
    if artifacts is None:
        from vidtrt.export.onnx_export import export_components

        artifacts = tempfile.mkdtemp(prefix="vidtrt-bench-onnx-")
        t0 = time.perf_counter()
        export_components(source, artifacts, log=None)
        print(f"exported {args.model} to {artifacts} in {time.perf_counter() - t0:.0f}s", flush=True)

    _, on_torch = load_engine_components(source, "torch")
    _, on_ort = load_engine_components(source, "onnxruntime", artifacts, threads=threads)
    prompt = "a cat walks on the grass, realistic style"
    with torch.inference_mode():
        text = on_torch.encode_text([prompt])
    guidance = torch.tensor([d.embedded_guidance_scale * 1000.0])
    sigmas = flow_match_sigmas(50, d.flow_shift)
    timesteps = timesteps_from_sigmas(sigmas)

    ratios = []
    for h, w, f in sizes:
        latents = initial_noise(config.latent_shape(1, f, h, w), 0)
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        engines = {"torch": on_torch.dit, "onnxruntime": on_ort.dit}
        with torch.inference_mode():
            for i in range(args.warmup + args.repeats):
                for name, dit in engines.items():
                    k = i % 49
                    t0 = time.perf_counter()
                    v = dit(latents, timesteps[k].expand(1), text, guidance)
                    euler_step(latents, v, sigmas[k], sigmas[k + 1])
                    if i >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
        t_torch = statistics.median(times["torch"])
        t_ort = statistics.median(times["onnxruntime"])
        ratios.append(t_ort / t_torch)
        print(f"{args.model} {h}x{w}x{f} (latents {tuple(latents.shape)}), {threads} threads: seconds per denoising "
              f"step torch {t_torch:.4f}, onnxruntime {t_ort:.4f} (median of {args.repeats})", flush=True)
    for (h, w, f), r in zip(sizes[1:], ratios[1:], strict=True):
        print(f"ratio at {h}x{w}x{f}: onnxruntime / torch = {r:.2f}")
    print(f"onnxruntime / torch seconds per denoising step at {sizes[0][0]}x{sizes[0][1]}x{sizes[0][2]}: "
          f"{ratios[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
