"""The main job on the embedded default, end to end on real components:

    tiny model -> Triton model repository -> real tritonserver (free loopback ports)
               -> gRPC streaming client (progress per step) -> mp4 -> decoded back and checked

Usage: python scripts/demo.py [OUTPUT.mp4] [--prompt TEXT] [--seed N] [--engine torch|onnxruntime]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", default="tiny-demo.mp4")
    parser.add_argument("--prompt", default="a cat walks on the grass")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--engine", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--repository", default="build/demo_repository")
    args = parser.parse_args()

    from tqdm import tqdm

    from vidtrt.client import VideoClient
    from vidtrt.export.repository import build_repository
    from vidtrt.serving.server import TritonServer
    from vidtrt.video_io import decode_mp4, write_video

    t0 = time.perf_counter()
    artifacts = None
    if args.engine == "onnxruntime":
        from vidtrt.export.onnx_export import ensure_exported

        artifacts = ensure_exported("tiny", Path("build") / "demo_onnx")
    repo = build_repository("tiny", args.repository, engine=args.engine, artifacts=artifacts)
    print(f"[1/4] model repository: {repo} ({args.engine} engine)")
    with TritonServer(repo) as server:
        print(f"[2/4] tritonserver ready: gRPC {server.grpc_url}, HTTP {server.http_url}, "
              f"metrics {server.metrics_url} ({time.perf_counter() - t0:.1f}s)")
        bar = tqdm(unit="step", desc="[3/4] denoising (server)", file=sys.stderr)

        def on_progress(p) -> None:
            if p.stage == "decode" and bar.unit != "tile":  # after the steps: one response per VAE tile
                bar.unit = "tile"
                bar.set_description("[3/4] decoding (server)", refresh=False)
                bar.reset(total=p.total)
            bar.total = p.total
            bar.update(p.step - bar.n)

        with VideoClient(server.grpc_url) as client:
            t1 = time.perf_counter()
            frames = client.generate(args.prompt, seed=args.seed, progress=on_progress)
            bar.close()
            took = time.perf_counter() - t1
    path = write_video(args.output, frames)
    back = decode_mp4(path)
    if back.shape != frames.shape:
        print(f"demo: error: {path} decodes to {back.shape}, expected {frames.shape}", file=sys.stderr)
        return 1
    print(f"[4/4] wrote {path}: {frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}, "
          f"generated through the server in {took:.2f}s, decoded back OK (total {time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
