"""``vidtrt export`` options, torch-free (``vidtrt --help`` must not import torch): the opset range and
external-data choices the exporter accepts, and the subcommand's arguments."""

from __future__ import annotations

import argparse

from vidtrt.config.cogvideox_specs import ONNX_COMPONENTS as COGVIDEOX_ONNX
from vidtrt.config.specs import COMPONENTS

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter's floor
MAX_OPSET = 22  # opset 23 turns attention into an Attention op, which onnxruntime CPU runs only with dense masks
EXTERNAL_DATA_BYTES = 1 << 30  # "auto": weights above 1 GiB go to external data (protobuf's limit is 2 GiB)
EXTERNAL_DATA_CHOICES = ("auto", "always", "never")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (embedded default) or a checkpoint folder (diffusers or official layout)")
    parser.add_argument("--out", required=True, help="output folder for <component>.onnx and manifest.json")
    parser.add_argument("--components", nargs="+", choices=list(dict.fromkeys(COMPONENTS + COGVIDEOX_ONNX)),
                        default=None, metavar="NAME",
                        help=f"components to export (default: all of the model's: {', '.join(COMPONENTS)}; "
                             f"CogVideoX: {', '.join(COGVIDEOX_ONNX)})")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; {MIN_OPSET}..{MAX_OPSET}; the FP8 DiT of "
                             "--quantized uses at least 19)")
    parser.add_argument("--external-data", choices=EXTERNAL_DATA_CHOICES, default="auto",
                        help="weights in <file>.onnx.data: auto (when above 1 GiB), always, never")
    parser.add_argument("--no-optimize", action="store_true", help="skip the exporter's graph optimisation")
    parser.add_argument("--no-stream-weights", action="store_true",
                        help="load the DiT in float32 before exporting (default: trace it on the meta device and "
                             "stream its weights from the checkpoint, RAM ~ graph + one tensor)")
    parser.add_argument("--verify", action="store_true",
                        help="run each file in onnxruntime on two spec shapes and compare with torch")
    parser.add_argument("--quantized", default=None, metavar="DIR",
                        help="FP8 quantization state (`vidtrt quantize --out DIR`): the DiT is written as dit_fp8.onnx "
                             "with float8e4m3fn QuantizeLinear/DequantizeLinear (opset >= 19, external data); other "
                             "components as without it")
