"""``vidtrt`` command line: run (in process), export, build, serve, generate (client).

Bad input is one line on stderr and exit code 2; nothing else is printed for it.
"""

from __future__ import annotations

import argparse
import sys
import time

from vidtrt.errors import ConfigError, InvalidRequestError, VidtrtError

EXIT_USAGE = 2  # a bad request or setting (VidtrtError.exit_code; NonFiniteError 1, TransportError 3)
# Request fields -> the flags that set them (errors name what the user typed).
REQUEST_FLAGS = {
    "height": "--height", "width": "--width", "num_frames": "--frames", "num_inference_steps": "--steps",
    "embedded_guidance_scale": "--guidance", "flow_shift": "--flow-shift", "seed": "--seed",
    "negative_prompt": "--negative-prompt", "true_cfg_scale": "--true-cfg-scale", "prompt_policy": "--prompt-policy",
    "cache_policy": "--cache-policy", "cache_threshold": "--cache-threshold",
    "cache_warmup_steps": "--cache-warmup-steps",
}


def _progress_bar(disabled: bool):
    """tqdm bars on stderr: the denoising steps, then the VAE tiles of the decode."""
    from tqdm import tqdm

    bar = None

    def on_progress(event) -> None:
        nonlocal bar
        if disabled:
            return
        if bar is None:
            decode = event.stage == "decode"
            bar = tqdm(total=event.total, unit="tile" if decode else "step", desc="decoding" if decode else "denoising",
                       file=sys.stderr)
        bar.update(event.step - bar.n)
        if event.step == event.total:
            bar.close()
            bar = None

    return on_progress


def cmd_run(args: argparse.Namespace) -> int:
    from vidtrt.cli_args import output_from_args, request_from_args
    from vidtrt.source.model_source import ModelSource
    from vidtrt.video_io import write_video

    output = output_from_args(args)
    request = request_from_args(args)
    source = ModelSource.open(args.model)
    request = request.validate(source.config)  # fail fast, before loading any weights (and only once)
    if getattr(args, "engine", "torch") == "torch":
        from vidtrt.config.model_config import resolve_precision
        from vidtrt.runtime.pipeline import check_family_choices, check_run_choices

        check_family_choices(source, args.precision, args.nproc_per_node)

        check_run_choices(args.device, args.attention, source.config.transformer.attention_head_dim,
                          resolve_precision(args.precision, args.device))
    elif args.precision not in ("auto", "fp32"):
        raise ConfigError(f"--precision {args.precision} runs with --engine torch; the {args.engine} engine runs "
                          "what `vidtrt export` wrote (accepted with it: auto, fp32)")
    fp8_amax = None
    if args.quantized is not None:
        from vidtrt.source.quant_state import QuantState

        if args.precision != "fp8" or getattr(args, "engine", "torch") != "torch":
            raise ConfigError("--quantized DIR gives the static FP8 scales of --engine torch --precision fp8 (for "
                              "--engine onnxruntime, export them: `vidtrt export --quantized DIR`)")
        fp8_amax = QuantState.load(args.quantized, source).amax  # checked against this checkpoint, no weights read
    if args.nproc_per_node != 1:
        from vidtrt.models.sequence_parallel import check_degree

        if getattr(args, "engine", "torch") != "torch":
            raise ConfigError("--nproc-per-node needs --engine torch")
        check_degree(source.config.transformer.num_attention_heads, args.nproc_per_node)
    from vidtrt.runtime.step_cache import DitCallTally

    t0 = time.perf_counter()
    pipe = _load_pipeline(args, source, fp8_amax)
    t1 = time.perf_counter()
    tally = DitCallTally(_progress_bar(args.no_progress))
    try:
        frames = pipe.run(request, progress=tally)
    finally:
        pipe.close()
    t2 = time.perf_counter()
    path = write_video(output, frames, fps=args.fps or source.config.defaults.fps)
    print(f"wrote {path} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}) "
          f"load {t1 - t0:.1f}s generate {t2 - t1:.1f}s, DiT calls {tally.calls} ({tally.skipped} skipped)")
    return 0


def _load_pipeline(args, source, fp8_amax=None):
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    engine = getattr(args, "engine", "torch")
    if engine == "torch":
        return HunyuanVideoPipeline.from_model(source, device=args.device, attention=args.attention,
                                               precision=args.precision, fp8_amax=fp8_amax,
                                               sp_degree=args.nproc_per_node)
    from vidtrt.runtime.engine_components import load_pipeline_with_engine

    return load_pipeline_with_engine(source, engine, args.artifacts, threads=args.threads)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line on stderr (no usage block), exit code 2.
    Subcommand parsers are of this class too (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from vidtrt import __version__
    from vidtrt.cli_args import add_request_arguments

    parser = _Parser(prog="vidtrt", description="Text-to-video diffusion (HunyuanVideo, CogVideoX): run in "
                                                "process, quantize, export, build a Triton repository, serve, "
                                                "generate through a server.")
    parser.add_argument("--version", action="version", version=f"vidtrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate a video in this process",
                         description="Generate a video in this process and write .mp4 or .npy.")
    add_request_arguments(run)
    run.add_argument("--model", default="tiny",
                     help="'tiny' (embedded default, no download), 'small' (CPU-sized, generated too) or a "
                          "checkpoint folder (diffusers layout with model_index.json, or the official Tencent layout)")
    run.add_argument("--engine", default="torch", choices=["torch", "onnxruntime"],
                     help="component engine (default torch)")
    run.add_argument("--artifacts", default=None,
                     help="folder written by `vidtrt export` (--engine onnxruntime)")
    run.add_argument("--threads", type=int, default=0,
                     help="onnxruntime intra-op threads (0 = onnxruntime's default)")
    run.add_argument("--attention", default=None,
                     help="attention backend: sdpa, triton, triton-fp8, triton-tma / triton-fp8-tma (Hopper), "
                          "triton-sta / triton-fp8-sta (sliding-tile sparse: --sparse-window, --sparse-steps) "
                          "(default: triton on CUDA, sdpa on CPU)")
    run.add_argument("--device", default="cpu", help="torch device for --engine torch: cpu (default) or cuda")
    run.add_argument("--precision", "--dtype", dest="precision", default="auto", type=_precision,
                     metavar="{auto,fp32,bf16,fp16,fp8}",
                     help="weights/activations precision for --engine torch, as `vidtrt build --precision` "
                          "(auto: bf16 on CUDA, fp32 on CPU; fp8: the DiT's GEMMs and attention in FP8 e4m3, "
                          "the rest bf16, CUDA 8.9+ or emulated on CPU); --dtype and the torch names "
                          "(bfloat16) still work")
    run.add_argument("--quantized", default=None, metavar="DIR",
                     help="--precision fp8: static activation / weight scales from a `vidtrt quantize` state "
                          "(default: dynamic per-token scales)")
    run.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                     help="run the DiT over N processes (Ulysses sequence parallelism; on CUDA one GPU each from "
                          "--device on); default 1. See docs/sequence-parallel.md")
    run.set_defaults(func=cmd_run)

    _add_optional(sub, "export", "vidtrt.export.options", "add_export_arguments", _export_main,
                  "export components to ONNX")
    _add_optional(sub, "quantize", "vidtrt.export.quant_options", "add_quantize_arguments", _quantize_main,
                  "FP8 post-training quantization of the DiT (ModelOpt calibration + quality report)")
    _add_optional(sub, "build", "vidtrt.export.repository", "add_build_arguments", "build_main",
                  "build a Triton model repository")
    _add_optional(sub, "serve", "vidtrt.serving.server", "add_serve_arguments", "serve_main",
                  "start Triton Inference Server on a model repository")
    _add_optional(sub, "generate", "vidtrt.client.cli", "add_generate_arguments", "generate_main",
                  "generate a video through a running server")
    _add_optional(sub, "cache-bench", "vidtrt.runtime.cache_bench", "add_cache_bench_arguments", "cache_bench_main",
                  "step caching: DiT calls, wall time, PSNR and SSIM vs uncached over a prompt set")
    return parser


def _precision(value: str) -> str:
    from vidtrt.config.model_config import precision_name
    from vidtrt.errors import ConfigError

    try:
        return precision_name(value)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _export_main(args: argparse.Namespace) -> int:
    from vidtrt.export.onnx_export import export_main  # torch and onnx: only when exporting

    return export_main(args)


def _quantize_main(args: argparse.Namespace) -> int:
    from vidtrt.export.quantize import quantize_main  # torch and ModelOpt: only when quantizing

    return quantize_main(args)


def _add_optional(sub, name: str, module: str, add_fn: str, main_fn, help_text: str) -> None:
    """Register a subcommand whose arguments live in an optional module (torch-free, so --help stays light);
    ``main_fn``: that module's entry point by name, or a callable that imports its implementation lazily."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):  # an optional part that is not there: no subcommand
            return
        raise
    add, main = getattr(mod, add_fn), (getattr(mod, main_fn) if isinstance(main_fn, str) else main_fn)
    p = sub.add_parser(name, help=help_text, description=help_text)
    add(p)
    p.set_defaults(func=main)


def main(argv: list[str] | None = None) -> int:
    import os

    # Before torch starts its OpenMP pool: idle workers sleep instead of spinning, which on small
    # shared machines was measured at 1.8 s -> 0.7 s for the tiny model (the server sets the same).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InvalidRequestError as e:
        flag = REQUEST_FLAGS.get(e.param)
        message = f"invalid {flag} {e.value!r} ({e.param}): accepted {e.accepted}" if flag else str(e)
        print(f"vidtrt: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except VidtrtError as e:  # exit 2: bad request/setting; 1: the generation failed; 3: server/transport
        print(f"vidtrt: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vidtrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
