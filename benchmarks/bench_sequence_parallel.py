"""Ulysses sequence parallelism on CPU (gloo): seconds per DiT step and all-to-all bytes per degree, plus the
communication volume per step computed for 720x1280x129 at degrees 2-8.

    python benchmarks/bench_sequence_parallel.py                          # small preset, 1 / 2 / 4 ranks
    python benchmarks/bench_sequence_parallel.py --degrees 1 2 --steps 3 --threads 1 --height 64 --width 96

Every rank runs ``--threads`` torch threads (default 1, so N ranks use N cores; this machine has 2: 4 ranks
oversubscribe it and show the communication and padding overhead, not a speed-up). The velocity of each
degree is checked against one rank (max relative error printed). The last line: step time of one rank
divided by that of each degree (above 1 = faster than one rank).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _bootstrap import bootstrap  # benchmarks/ is on sys.path when run as a script

HUNYUAN_720P = dict(image_tokens=33 * 45 * 80, text_tokens=256, dim=3072, layers=60)  # 720x1280x129, bf16


def volume_table(degrees=range(2, 9)) -> str:
    """Markdown: bytes one rank receives per 720p step (formula of comm_bytes_per_step), per degree."""
    from vidtrt.models.sequence_parallel import comm_bytes_per_step, split_degree

    rows = ["| degree | split (Ulysses x K/V gather) | tokens per rank | received per rank per step | "
            "all ranks per step |", "|---|---|---|---|---|"]
    for n in degrees:
        per_rank = comm_bytes_per_step(HUNYUAN_720P["image_tokens"], HUNYUAN_720P["text_tokens"],
                                       HUNYUAN_720P["dim"], HUNYUAN_720P["layers"], n)
        s_loc = -(-HUNYUAN_720P["image_tokens"] // n)
        u, r = split_degree(24, n)
        rows.append(f"| {n} | {u} x {r} | {s_loc:,} | {per_rank / 2**30:.1f} GiB | {n * per_rank / 2**30:.1f} GiB |")
    return "\n".join(rows)


def main(argv=None) -> int:
    bootstrap()
    from vidtrt.config.components import TextEmbeddings
    from vidtrt.runtime.parallel_dit import ParallelDenoiser
    from vidtrt.source.model_source import ModelSource

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small")
    p.add_argument("--degrees", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--steps", type=int, default=5, help="timed DiT forwards per degree (after one warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    source = ModelSource.open(args.model)
    cfg = source.config.transformer
    t_lat, h_lat, w_lat = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, cfg.in_channels, t_lat, h_lat, w_lat, generator=g)
    length = source.config.text.max_sequence_length
    mask = (torch.arange(length) < length // 2).to(torch.int64)[None]
    text = TextEmbeddings(torch.randn(1, length, cfg.text_embed_dim, generator=g), mask,
                          torch.randn(1, cfg.pooled_projection_dim, generator=g))
    step_args = (latents, torch.tensor([500.0]), text, torch.tensor([6000.0]))
    tokens = t_lat * (h_lat // cfg.patch_size) * (w_lat // cfg.patch_size)
    print(f"model {args.model} ({cfg.num_attention_heads} heads x {cfg.attention_head_dim}, "
          f"{cfg.num_layers} + {cfg.num_single_layers} blocks), {args.frames}x{args.height}x{args.width}: "
          f"{tokens} image + {length} text tokens, fp32, {args.threads} thread(s) per rank, gloo")

    module = source.load_transformer(torch.float32)
    times: dict[int, float] = {}
    reference = None
    for degree in args.degrees:
        if degree == 1:
            def run():
                with torch.inference_mode():
                    return module(latents, step_args[1], text.prompt_embeds, text.attention_mask, text.pooled,
                                  step_args[3])
            dit = None
        else:
            dit = ParallelDenoiser(source, degree, threads=args.threads, module=module)
            run = lambda dit=dit: dit(*step_args)  # noqa: E731
        try:
            out = run()
            before = dit.sp.stats.all_to_all + dit.sp.stats.all_gather if dit else 0
            samples = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                out = run()
                samples.append(time.perf_counter() - t0)
            moved = ((dit.sp.stats.all_to_all + dit.sp.stats.all_gather - before) / args.steps) if dit else 0
        finally:
            if dit is not None:
                dit.close()
        times[degree] = statistics.median(samples)
        if reference is None:
            reference = out
        err = float((out - reference).abs().max() / reference.abs().max())
        predicted = 0
        if degree > 1:
            from vidtrt.models.sequence_parallel import comm_bytes_per_step

            predicted = comm_bytes_per_step(tokens, int(mask.sum()), cfg.inner_dim,
                                            cfg.num_layers + cfg.num_single_layers, degree, bytes_per_element=4,
                                            num_heads=cfg.num_attention_heads)
        print(f"degree {degree}: {times[degree] * 1e3:8.1f} ms/step (median of {args.steps}), "
              f"received by rank 0 {moved / 2**20:7.2f} MiB/step (formula without the output gather: "
              f"{predicted / 2**20:.2f} MiB), max rel err vs first degree {err:.1e}")
    print("\nCommunication per step, HunyuanVideo 720x1280x129 (118,800 image + 256 text tokens, C = 3072, "
          "60 blocks, bf16):\n" + volume_table())
    base = times.get(1)
    if base is not None:
        ratios = ", ".join(f"{n} ranks {base / t:.2f}x" for n, t in times.items() if n != 1)
        print(f"ratio (1-rank step time / N-rank step time): {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
