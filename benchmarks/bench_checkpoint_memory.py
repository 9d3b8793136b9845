"""Peak RAM of loading a full-width HunyuanVideo DiT checkpoint with our loader, extrapolated to 13 B.

Writes a diffusers-layout checkpoint at the real width (hidden 3072 = 24 heads x 128, text 4096, pooled
768) with reduced depth (default 2 dual + 4 single blocks; the release has 20 + 40) in bf16 safetensors,
streamed tensor by tensor (the writer never holds the model). A fresh subprocess then loads it with
``vidtrt.source.checkpoints.load_transformer`` and reads every parameter once, so every weight page that will
ever be resident is resident. Reported: file size, the writer's peak, the loader's RSS after imports,
peak RSS (VmHWM), the peak increase, its anonymous / file-backed split, load and touch times. The full
20 + 40-block size is extrapolated (per-block bytes x 60 + non-block bytes, checked against a meta-device
build of the full model) and so is the peak, at the measured peak-increase / file-size ratio.

What is measured: RSS counts the file-backed pages of the loader's private mapping (the weights, when
the file's dtype is the load dtype: zero-copy) and anonymous memory (converted copies, activations).
The file-backed pages are clean page cache the kernel may drop and re-read; RSS counts them anyway,
so the figure is the pessimistic one.

    python benchmarks/bench_checkpoint_memory.py [--dual 2] [--single 4] [--dtype bfloat16]
        [--load-dtype bfloat16] [--naive] [--full] [--dir DIR] [--keep]

``--full`` writes and loads the real 20 + 40-block checkpoint (~26 GB of disk, and RAM for it).
``--naive`` also measures the usual load (module built with random init, file read, state dict copied).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

GiB = 2**30

CHILD = r"""
import json, sys, time, torch
mode, folder, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
torch.set_num_threads(2)
from vidtrt.source.model_source import ModelSource
from vidtrt.models.transformer import HunyuanVideoTransformer3D

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

source = ModelSource.open(folder)
config = source.config
base = status("VmRSS")
t0 = time.perf_counter()
if mode == "ours":
    model = source.load_transformer(dtype)
else:  # naive: random init, the whole file read into RAM, then copied into the module
    from safetensors.torch import load_file
    torch.set_default_dtype(dtype)  # built directly in the load dtype
    model = HunyuanVideoTransformer3D(config.transformer)
    model.load_state_dict(load_file(folder + "/transformer/diffusion_pytorch_model.safetensors"))
t1 = time.perf_counter()
after_load = status("VmRSS")
with torch.inference_mode():
    for p in model.parameters():
        p.sum()  # read every byte
t2 = time.perf_counter()
print(json.dumps(dict(base=base, after_load=after_load, peak=status("VmHWM"), anon=status("RssAnon"),
                      file=status("RssFile"), load_s=t1 - t0, touch_s=t2 - t1,
                      weights=sum(p.numel() * p.element_size() for p in model.parameters()))))
"""


def meta_specs(config, dtype: torch.dtype) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    from vidtrt.models.transformer import HunyuanVideoTransformer3D

    with torch.device("meta"):
        sd = HunyuanVideoTransformer3D(config).state_dict()
    return [(k, tuple(v.shape), dtype) for k, v in sd.items()]


def nbytes(specs, prefix: str = "") -> int:
    return sum(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for k, s, d in specs
               if k.startswith(prefix))


def write_checkpoint(folder: Path, config, dtype: torch.dtype) -> tuple[int, float, int]:
    """Stream-write the diffusers-layout folder; returns (file bytes, seconds, writer's peak RSS increase)."""
    from vidtrt.config.model_config import VAEConfig
    from vidtrt.source.checkpoints import write_safetensors_streaming
    from vidtrt.source.embedded import _config_dict

    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    (folder / "vae").mkdir(exist_ok=True)
    (folder / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "HunyuanVideoTransformer3DModel", **_config_dict(config)}))
    (folder / "vae" / "config.json").write_text(
        json.dumps({"_class_name": "AutoencoderKLHunyuanVideo", **_config_dict(VAEConfig())}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanVideoPipeline"}))
    specs = meta_specs(config, dtype)
    shapes = {k: s for k, s, _ in specs}
    base = _status("VmRSS")
    t0 = time.perf_counter()
    size = write_safetensors_streaming(folder / "transformer" / "diffusion_pytorch_model.safetensors", specs,
                                       lambda name: torch.full(shapes[name], 0.02, dtype=dtype))
    return size, time.perf_counter() - t0, _status("VmHWM") - base


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def measure(mode: str, folder: Path, dtype: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), dtype], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        raise SystemExit(f"loader subprocess failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dual", type=int, default=2, help="dual-stream blocks (release: 20)")
    ap.add_argument("--single", type=int, default=4, help="single-stream blocks (release: 40)")
    ap.add_argument("--dtype", default="bfloat16", help="dtype of the file (default bfloat16, as released)")
    ap.add_argument("--load-dtype", default=None, help="dtype to load into (default: the file's = zero-copy)")
    ap.add_argument("--naive", action="store_true", help="also measure a naive (copying) load")
    ap.add_argument("--full", action="store_true", help="the real 20 + 40 blocks (~26 GB disk and RAM)")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("reads /proc: Linux only")

    from vidtrt.config.model_config import TransformerConfig

    if args.full:
        args.dual, args.single = 20, 40
    dtype = getattr(torch, args.dtype)
    load_dtype = args.load_dtype or args.dtype
    config = TransformerConfig(num_layers=args.dual, num_single_layers=args.single)
    specs = meta_specs(config, dtype)
    size_est = nbytes(specs)
    parent = Path(args.dir or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if size_est > 0.9 * free:
        raise SystemExit(f"need {size_est / GiB:.1f} GiB in {parent}, {free / GiB:.1f} GiB free")
    if size_est > 0.8 * mem_total():
        raise SystemExit(f"a {size_est / GiB:.1f} GiB load cannot be measured in {mem_total() / GiB:.1f} GiB of RAM "
                         "(the kernel would evict the file pages and RSS would stop meaning anything)")
    folder = Path(tempfile.mkdtemp(prefix="bench-ckpt-mem-", dir=parent))
    try:
        size, write_s, writer_peak = write_checkpoint(folder, config, dtype)
        ours = measure("ours", folder, load_dtype)
        naive = measure("naive", folder, load_dtype) if args.naive else None
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    dual = nbytes(specs, "transformer_blocks.0.")
    single = nbytes(specs, "single_transformer_blocks.0.")
    non_block = size_est - args.dual * dual - args.single * single
    full_extrapolated = non_block + 20 * dual + 40 * single
    full_exact = nbytes(meta_specs(TransformerConfig(), dtype))
    increase = ours["peak"] - ours["base"]
    ratio = increase / size

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {mem_total() / GiB:.1f} GiB RAM; "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"checkpoint: hidden 3072 (24 x 128), {args.dual} dual + {args.single} single blocks, {args.dtype} "
          f"safetensors, {len(specs)} tensors, {size} bytes ({size / GiB:.3f} GiB), written in {write_s:.1f} s "
          f"(writer's peak RSS increase {writer_peak / 2**20:.0f} MiB)")
    print(f"per block: dual {dual / 2**20:.1f} MiB, single {single / 2**20:.1f} MiB; "
          f"non-block {non_block / 2**20:.1f} MiB")
    print(f"ours ({load_dtype}): RSS after imports {ours['base'] / GiB:.3f} GiB, after load "
          f"{ours['after_load'] / GiB:.3f} GiB (load {ours['load_s']:.2f} s), peak {ours['peak'] / GiB:.3f} GiB "
          f"after touching every weight "
          f"({ours['touch_s']:.1f} s); RssAnon {ours['anon'] / GiB:.3f} GiB, RssFile {ours['file'] / GiB:.3f} GiB")
    print(f"ours: peak increase {increase} bytes ({increase / GiB:.3f} GiB) = {ratio:.3f} x file size; "
          f"loaded weights {ours['weights'] / GiB:.3f} GiB")
    if naive:
        n_inc = naive["peak"] - naive["base"]
        print(f"naive: peak increase {n_inc / GiB:.3f} GiB = {n_inc / size:.3f} x file size "
              f"(load {naive['load_s']:.1f} s)")
    print(f"full 20 + 40 blocks: {full_extrapolated / GiB:.2f} GiB extrapolated ({full_exact / GiB:.2f} GiB from a "
          f"meta build); predicted peak increase at {ratio:.3f} x: {ratio * full_exact / GiB:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
