"""Request flags shared by ``vidtrt run`` (in process) and ``vidtrt generate`` (through a server)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from vidtrt.config.request import GenerationRequest
from vidtrt.errors import VidtrtError

MAX_FPS = 240


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="text prompt describing the video")
    parser.add_argument("-o", "--output", default=None,
                        help="output file: .mp4 (H.264, at --fps) or .npy (raw uint8 frames [F, H, W, 3]); "
                             "default: <prompt>-seed<seed>.mp4")
    parser.add_argument("--height", type=int, default=None, help="pixels, multiple of 16 (model default)")
    parser.add_argument("--width", type=int, default=None, help="pixels, multiple of 16 (model default)")
    parser.add_argument("--frames", type=int, default=None, dest="num_frames",
                        help="video frames, 4k + 1 (e.g. 1, 5, ..., 129; CogVideoX: 8k + 1; model default)")
    parser.add_argument("--steps", type=int, default=None, dest="num_inference_steps",
                        help="denoising steps (model default: 50 for HunyuanVideo)")
    parser.add_argument("--guidance", type=float, default=None, dest="embedded_guidance_scale",
                        help="embedded guidance scale, diffusers' guidance_scale (default 6.0)")
    parser.add_argument("--flow-shift", type=float, default=None, help="flow-matching shift (default 7.0)")
    parser.add_argument("--seed", type=int, default=None, help="noise seed, 0 .. 2**63-1 (default 0)")
    parser.add_argument("--negative-prompt", default=None,
                        help="negative prompt for true CFG (default: the official negative prompt)")
    parser.add_argument("--true-cfg-scale", type=float, default=None,
                        help="true classifier-free guidance scale; 1.0 = off (HunyuanVideo's default), > 1 runs two "
                             "DiT passes (CogVideoX: its guidance scale, default 6)")
    parser.add_argument("--prompt-policy", choices=["truncate", "error"], default="truncate",
                        help="what to do with a prompt longer than the text encoder's limit")
    parser.add_argument("--cache-policy", default=None,
                        help="step caching: none, easycache or teacache (both families; each skips DiT calls while "
                             "its estimated change stays under --cache-threshold, after --cache-warmup-steps; "
                             "default: the model's, none)")
    parser.add_argument("--cache-threshold", type=float, default=None,
                        help="step caching: accumulated relative change that calls the DiT again; 0 = never skip "
                             "(model default 0.025; docs/step-caching.md)")
    parser.add_argument("--cache-warmup-steps", type=int, default=None,
                        help="step caching: first steps that always call the DiT (model default 5)")
    parser.add_argument("--sparse-window", default=None, metavar="T,H,W",
                        help="sliding-tile attention window in tiles, every layer (STA backends; model default)")
    parser.add_argument("--sparse-steps", default=None, metavar="START:STOP",
                        help="steps that run sliding-tile attention, e.g. 10: (STA backends; model default)")
    parser.add_argument("--use-dynamic-cfg", action="store_true", default=None,
                        help="CogVideoX: the CFG scale follows diffusers' cosine schedule over the steps "
                             "(default: the model's, off)")
    parser.add_argument("--fps", type=int, default=None,
                        help=f"mp4 frame rate, 1..{MAX_FPS} (default: the model's, 24 HunyuanVideo, 8 CogVideoX)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    return GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        num_inference_steps=args.num_inference_steps,
        embedded_guidance_scale=args.embedded_guidance_scale,
        flow_shift=args.flow_shift,
        seed=args.seed,
        true_cfg_scale=args.true_cfg_scale,
        prompt_policy=args.prompt_policy,
        cache_policy=args.cache_policy,
        cache_threshold=args.cache_threshold,
        cache_warmup_steps=args.cache_warmup_steps,
        sparse_window=getattr(args, "sparse_window", None),
        sparse_steps=getattr(args, "sparse_steps", None),
        use_dynamic_cfg=getattr(args, "use_dynamic_cfg", None),
    )


def default_output_name(prompt: str, seed: int | None) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "video"
    return f"{slug}-seed{seed if seed is not None else 0}.mp4"


def output_from_args(args: argparse.Namespace) -> str:
    """The output path of ``vidtrt run`` / ``vidtrt generate``, checked before any work is done (suffix, an
    existing folder to write in, ``--fps``): a VidtrtError (one line) otherwise."""
    from vidtrt.video_io import VIDEO_SUFFIXES

    output = args.output or default_output_name(args.prompt, args.seed)
    if not output.endswith(VIDEO_SUFFIXES):
        raise VidtrtError(f"invalid --output {output!r}: accepted suffixes {list(VIDEO_SUFFIXES)}")
    path = Path(output)
    folder = path.parent
    if path.is_dir():
        raise VidtrtError(f"invalid --output {output!r}: a folder; accepted a file name ending in "
                          f"{list(VIDEO_SUFFIXES)}")
    if not folder.is_dir():
        raise VidtrtError(f"invalid --output {output!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VidtrtError(f"invalid --output {output!r}: folder {str(folder)!r} is not writable")
    if args.fps is not None and not 1 <= args.fps <= MAX_FPS:
        raise VidtrtError(f"invalid --fps {args.fps}: accepted 1..{MAX_FPS}")
    return output
