"""``vidtrt quantize`` options, torch-free (``vidtrt --help`` must not import torch or ModelOpt)."""

from __future__ import annotations

import argparse

DEFAULT_CALIB_SIZE = 4
DEFAULT_CALIB_STEPS = 10


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (embedded default), 'small', 'tiny-cogvideox' or a checkpoint folder "
                             "(HunyuanVideo: diffusers or official layout; CogVideoX: diffusers)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="state folder to write: vidtrt-quant.json, amax.safetensors, quality.json")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="calibration prompts, one per line (default: the built-in set)")
    parser.add_argument("--calib-size", type=int, default=DEFAULT_CALIB_SIZE, metavar="N",
                        help=f"prompts (= calibration generations) to use (default {DEFAULT_CALIB_SIZE})")
    parser.add_argument("--calib-steps", type=int, default=DEFAULT_CALIB_STEPS, metavar="N",
                        help="denoising steps of each calibration generation: the scheduler's own timesteps "
                             f"for N steps (default {DEFAULT_CALIB_STEPS})")
    parser.add_argument("--height", type=int, default=None, help="calibration height (default: the model's)")
    parser.add_argument("--width", type=int, default=None, help="calibration width (default: the model's)")
    parser.add_argument("--frames", type=int, default=None, help="calibration frames (default: the model's)")
    parser.add_argument("--per-channel-weights", action="store_true",
                        help="one weight scale per output channel (default: per tensor, as FP8_DEFAULT_CFG)")
    parser.add_argument("--no-attention", action="store_true",
                        help="leave attention (q, k, v, softmax) unquantized; only the Linear layers")
    parser.add_argument("--calibrate-softmax", action="store_true",
                        help="calibrate the softmax output's amax (default: fixed 1.0, as ModelOpt's FP8 MHA export "
                             "and TensorRT's fused FP8 attention)")
    parser.add_argument("--quality-prompts", type=int, default=None, metavar="N",
                        help="prompts of the quality report (default: all calibration prompts; 0 = no report)")
    parser.add_argument("--seed", type=int, default=0, help="first calibration seed (prompt i uses seed + i)")
