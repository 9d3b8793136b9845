"""``vidtrt generate``: the ``vidtrt run`` request flags, sent to a running server.

    vidtrt generate "a cat walks on the grass" --url localhost:8001 -o cat.mp4 --seed 42

Errors are one line (raised as VidtrtError for ``vidtrt.cli.main`` to print) with exit code 2 for a bad
request or setting, 3 when the server or the connection failed (TransportError; a server's own error).
"""

from __future__ import annotations

import argparse
import sys


def add_generate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``vidtrt generate``: the request flags of ``vidtrt run`` plus the server's address."""
    from vidtrt.cli_args import add_request_arguments

    add_request_arguments(parser)
    parser.add_argument("--url", default="localhost:8001",
                        help="server address host:port (gRPC default localhost:8001; with --protocol http "
                             "the HTTP port, e.g. localhost:8000)")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc",
                        help="grpc (default): streams progress from the decoupled model, Ctrl-C cancels on "
                             "the server; http: the non-streaming <model>_sync model, no progress")
    parser.add_argument("--model-name", default=None,
                        help="generation model in the repository, e.g. hunyuan_video or cogvideox (default: the "
                             "one the server has ready; an error if it serves several)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="the request's deadline in seconds: the server stops the generation at its next "
                             "denoising step or VAE tile once it passed and answers 'deadline exceeded' "
                             "(exit 3); default: no limit")
    return parser


def generate_main(args: argparse.Namespace) -> int:
    import time

    from vidtrt.cli_args import output_from_args, request_from_args
    from vidtrt.client.video_client import DEFAULT_MODEL, VideoClient
    from vidtrt.video_io import write_video

    output = output_from_args(args)  # before the server does any work
    request = request_from_args(args)
    client = VideoClient(args.url, protocol=args.protocol, model_name=args.model_name or DEFAULT_MODEL,
                         timeout_s=args.timeout)
    if args.model_name is None:
        model_name = client.served_generation_model()
        client = VideoClient(args.url, protocol=args.protocol, model_name=model_name, timeout_s=args.timeout)
    else:
        client.check_model_ready()
    bar = _ProgressBar(disabled=args.no_progress or args.protocol == "http")
    t0 = time.perf_counter()
    try:
        result = client.run(request, progress=bar)
    finally:
        bar.close()
    frames = result.frames
    path = write_video(output, frames, fps=args.fps or _family_fps(client.model_name))
    calls = "" if result.dit_calls is None else f", DiT calls {result.dit_calls} ({result.dit_calls_skipped} skipped)"
    print(f"wrote {path} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}) "
          f"via {args.protocol}://{client.url} in {time.perf_counter() - t0:.1f}s{calls}")
    return 0


class _ProgressBar:
    """tqdm bars on stderr, fed by progress responses: one for the denoising steps, then one for the VAE
    tiles of the decode."""

    STAGES = {"denoise": ("denoising (server)", "step"), "decode": ("decoding (server)", "tile")}

    def __init__(self, disabled: bool) -> None:
        self.disabled = disabled
        self.bar = None
        self.stage = None

    def __call__(self, event) -> None:
        if self.disabled:
            return
        stage = getattr(event, "stage", "denoise")
        if self.bar is None or stage != self.stage:
            from tqdm import tqdm

            self.close()
            desc, unit = self.STAGES.get(stage, (stage, "step"))
            self.bar = tqdm(total=event.total, unit=unit, desc=desc, file=sys.stderr)
            self.stage = stage
        self.bar.update(event.step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _family_fps(model_name: str) -> int:
    """The frame rate of the family serving ``model_name`` (24 HunyuanVideo, 8 CogVideoX; 24 if unknown)."""
    from vidtrt.config.families import FAMILIES

    for family in FAMILIES.values():
        if model_name in (family.stream_model, family.sync_model):
            return family.default_config().defaults.fps
    return 24
