"""End-to-end latency of one request through a real tritonserver vs in process, same request and seed.

    python benchmarks/bench_server_latency.py [--model tiny] [--runs 10] [--steps N --frames F ...]

Builds a repository for ``--model`` in a temporary folder, starts tritonserver on free loopback ports,
warms both paths up, then alternates in-process runs (``HunyuanVideoPipeline.run``) and server runs
(``VideoClient`` over gRPC streaming, or HTTP with ``--protocol http``), checks the frames are
identical, and prints the medians. The last line is the ratio server / in process (target <= 1.10).

Both paths run with the same process settings: the server's model processes get
``vidtrt.serving.server.PROCESS_ENV_DEFAULTS`` (OMP_WAIT_POLICY=PASSIVE, glibc malloc thresholds), so this script
re-executes itself with them before torch and glibc read them. ``--env default`` leaves the in-process
side as the environment has it (on the 2-core CI box the tiny model is then ~2-5x slower in process,
which flatters the server).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--runs", type=int, default=20, help="timed runs per path (default 20)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--prompt", default="a cat walks on the grass")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (model default)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--keep-log", default=None, help="copy the server log here")
    p.add_argument("--out", default=None, help="also append the printed lines to this file")
    p.add_argument("--env", choices=["server", "default"], default="server",
                   help="process settings of the in-process side: the server's (default) or as inherited")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for both sides (each server model process gets this many)")
    args = p.parse_args(argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.env == "server":
        from vidtrt.serving.server import PROCESS_ENV_DEFAULTS

        missing = {k: v for k, v in PROCESS_ENV_DEFAULTS.items() if k not in os.environ}
        if missing:  # glibc and OpenMP read these at start-up: run again with them set
            os.environ.update(missing)
            os.execv(sys.executable, [sys.executable, *sys.argv])

    from vidtrt.client import VideoClient
    from vidtrt.config.request import GenerationRequest
    from vidtrt.export.repository import build_repository
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline
    from vidtrt.serving.server import TritonServer

    request = GenerationRequest(args.prompt, seed=args.seed, num_inference_steps=args.steps,
                                num_frames=args.frames, height=args.height, width=args.width)
    pipe = HunyuanVideoPipeline.from_model(args.model)
    resolved = request.validate(pipe.config)
    with tempfile.TemporaryDirectory(prefix="vidtrt-bench-") as tmp:
        repo = build_repository(args.model, Path(tmp) / "repo")
        t0 = time.perf_counter()
        with TritonServer(repo, log_file=Path(tmp) / "tritonserver.log", exit_timeout_s=5) as srv:
            startup = time.perf_counter() - t0
            client = VideoClient(srv.grpc_url if args.protocol == "grpc" else srv.http_url, protocol=args.protocol)
            for _ in range(args.warmup):
                ref = pipe.run(request)
                got = client.run(request).frames
            if not np.array_equal(ref, got):
                print("error: the server's frames differ from the in-process frames", file=sys.stderr)
                return 1
            local, remote = [], []
            for _ in range(args.runs):  # alternate, so drift hits both paths alike
                t = time.perf_counter()
                pipe.run(request)
                local.append(time.perf_counter() - t)
                t = time.perf_counter()
                client.run(request)
                remote.append(time.perf_counter() - t)
            if args.keep_log:
                Path(args.keep_log).write_bytes(srv.log_path.read_bytes())
    ml, mr = statistics.median(local), statistics.median(remote)
    lines = [
        f"model {args.model}: {resolved.num_frames} frames {resolved.width}x{resolved.height}, "
        f"{resolved.num_inference_steps} steps, seed {args.seed}; {args.runs} runs each after {args.warmup} warm-up",
        f"server start-up (5 models loaded): {startup:.1f} s",
        f"in process     median {ml * 1000:8.1f} ms  (min {min(local) * 1000:.1f}, max {max(local) * 1000:.1f})",
        f"server {args.protocol:<6}  median {mr * 1000:8.1f} ms  (min {min(remote) * 1000:.1f}, "
        f"max {max(remote) * 1000:.1f}); frames identical",
        "in-process env: " + ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in
                                       ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_",
                                        "MALLOC_TRIM_THRESHOLD_")) + " (server: the same)",
        f"ratio server/in-process: {mr / ml:.3f}",
    ]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"# {time.strftime('%Y-%m-%d %H:%M')} {' '.join(sys.argv[1:])}\n" + "\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
