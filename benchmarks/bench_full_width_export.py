"""Full-width HunyuanVideo DiT: ONNX export RAM per block, extrapolated to the released 20 + 40 blocks.

The DiT is the released architecture at full width (3072 = 24 heads x 128, text 4096, pooled 768,
2 refiner blocks, RoPE 16/56/56) with reduced depth, random weights (seeded). Each depth runs in a
fresh child process, which

1. exports with the same code as ``vidtrt export`` (:func:`vidtrt.export.onnx_export.export_onnx`;
   more than 2 GB of weights, so external data), sampling RSS (anonymous and file-backed) meanwhile;
2. computes a torch reference at a small shape (batch 2 with different text lengths, one latent frame);
3. loads the file in onnxruntime and compares with the reference.

Two modes:
- ``in-ram``: the float32 module in RAM (random weights), exported as is. Overhead = peak RSS minus
  the RSS before the export (the weights).
- ``streamed`` (what ``vidtrt export`` does for the DiT): a bf16 diffusers-layout checkpoint is written
  one tensor at a time, the DiT is traced on the meta device and the memory-mapped weights are
  converted to float32 one tensor at a time while the external data is written. Overhead = peak
  anonymous RSS minus before (the checkpoint pages are file-backed and reclaimable).

Depths (1,1), (2,1), (1,2) give the overhead per dual-stream and per single-stream block and the
extrapolation to (20, 40).

    python benchmarks/bench_full_width_export.py [--depths 1,1 2,1 1,2] [--modes in-ram streamed] [--keep DIR]

Needs the float32 weights of the largest depth in RAM (~4.8 GB for (2,1), for the torch reference
and the in-ram mode), plus ~2x that of disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GB = 1e9


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    return out


class RssSampler:
    """Peak RSS (total, anonymous, file-backed) of this process over a phase, sampled every 10 ms; the
    kernel's own high-water mark (VmHWM, reset through /proc/self/clear_refs) backs the total."""

    def __init__(self):
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            s = _status()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], s.get(k, 0))
            self._stop.wait(0.01)

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM
        except OSError:
            pass
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak["VmRSS"] = max(self.peak["VmRSS"], _status().get("VmHWM", 0))


def full_width_config(dual: int, single: int):
    from vidtrt.config.model_config import hunyuan_video_config

    config = hunyuan_video_config()
    transformer = dataclasses.replace(config.transformer, num_layers=dual, num_single_layers=single)
    return dataclasses.replace(config, name=f"hunyuan-video-full-width-{dual}x{single}",
                               transformer=transformer).validate()


def param_bytes(dual: int, single: int) -> int:
    """float32 bytes of the full-width DiT's parameters at this depth (built on meta, no RAM)."""
    import torch

    from vidtrt.models.transformer import HunyuanVideoTransformer3D

    with torch.device("meta"):
        m = HunyuanVideoTransformer3D(full_width_config(dual, single).transformer)
    return sum(p.numel() for p in m.parameters()) * 4


def write_checkpoint(folder: Path, config, dtype) -> int:
    """A diffusers-layout DiT folder with random weights (seeded per tensor), written one tensor at a time."""
    import torch

    from vidtrt.models.transformer import HunyuanVideoTransformer3D
    from vidtrt.source.checkpoints import write_safetensors_streaming

    with torch.device("meta"):
        meta = HunyuanVideoTransformer3D(config.transformer)
    specs = [(k, tuple(v.shape), dtype) for k, v in meta.state_dict().items()]
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    fields = {f: getattr(config.transformer, f) for f in ("num_layers", "num_single_layers", "num_refiner_layers")}
    (folder / "transformer" / "config.json").write_text(json.dumps(fields))
    (folder / "model_index.json").write_text("{}")

    def make(name: str):
        g = torch.Generator().manual_seed(hash(name) % (1 << 31))
        shape = dict((k, s) for k, s, _ in specs)[name]
        return (torch.randn(shape, generator=g) * 0.02).to(dtype)

    return write_safetensors_streaming(folder / "transformer" / "diffusion_pytorch_model.safetensors", specs, make)


def child(dual: int, single: int, out: Path, mode: str) -> dict:
    import gc

    import numpy as np
    import onnx  # noqa: F401  (imported up front: the base RSS includes the libraries)
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
    import torch

    from vidtrt.config.specs import dit_spec
    from vidtrt.export.onnx_export import export_onnx, relative_error, streamed_dit
    from vidtrt.models.transformer import HunyuanVideoTransformer3D
    from vidtrt.source.model_source import ModelSource

    torch.manual_seed(0)
    config = full_width_config(dual, single)
    spec = dit_spec(config)
    axes = {"batch": 2, "latent_frames": 1, "latent_height": 8, "latent_width": 12, "text_length": 9}
    feeds = spec.example_inputs(axes, seed=1, lengths=[9, 4])
    base = _status()  # after the imports: torch, onnx, onnxruntime, vidtrt
    path = out / "dit.onnx"
    if mode == "streamed":
        # export first, from a clean process: the checkpoint is written one tensor at a time, then the
        # meta-device DiT is exported with its weights streamed from the memory-mapped file
        ckpt = out / "checkpoint"
        write_checkpoint(ckpt, config, torch.bfloat16)
        gc.collect()
        before_export = _status()
        with RssSampler() as export_rss:
            source = ModelSource.open(ckpt)
            meta, mapped = streamed_dit(source)
            result = export_onnx(meta, spec, path, external_data="auto", weights=mapped)
            del meta, mapped
        gc.collect()
        module = source.load_transformer(torch.float32)  # the reference, after the export
    else:
        with torch.device("meta"):
            module = HunyuanVideoTransformer3D(config.transformer)
        module = module.to_empty(device="cpu").eval()
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, 0.02)
    weights = sum(p.numel() * 4 for p in module.parameters())  # float32 bytes, as exported
    t0 = time.perf_counter()
    with torch.no_grad():
        want = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names)).numpy()
    torch_s = time.perf_counter() - t0
    if mode != "streamed":
        before_export = _status()
        with RssSampler() as export_rss:
            result = export_onnx(module, spec, path, external_data="auto")
    del module
    gc.collect()

    from vidtrt.runtime.engines import OnnxRuntimeEngine

    with RssSampler() as ort_rss:
        t0 = time.perf_counter()
        engine = OnnxRuntimeEngine(path, spec)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = engine.run(feeds)["velocity"]
        ort_s = time.perf_counter() - t0
    return {
        "mode": mode, "dual": dual, "single": single, "weights": weights, "rss_base": base,
        "before_export": before_export, "export_peak": export_rss.peak, "export_s": result.seconds,
        "file_bytes": result.file_bytes, "external_data": bool(result.external_data), "ort_peak": ort_rss.peak,
        "ort_load_s": load_s, "ort_run_s": ort_s, "torch_run_s": torch_s,
        "rel_error": relative_error(got, want), "finite": bool(np.isfinite(got).all()),
    }


def _overhead(row: dict) -> int:
    """Export RAM beyond what the process held before it. Streamed mode: peak anonymous memory minus the
    process's after its imports (the weights are file-backed pages the kernel can drop). In-RAM mode:
    peak RSS minus the RSS just before the export (the weights)."""
    if row["mode"] == "streamed":
        return row["export_peak"]["RssAnon"] - row["rss_base"]["RssAnon"]
    return row["export_peak"]["VmRSS"] - row["before_export"]["VmRSS"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", nargs="+", default=["1,1", "2,1", "1,2"], help="dual,single block counts")
    ap.add_argument("--modes", nargs="+", default=["in-ram", "streamed"], choices=["in-ram", "streamed"],
                    help="in-ram: float32 module in RAM; streamed: meta module + mmapped bf16 checkpoint "
                         "(what `vidtrt export` does for the DiT)")
    ap.add_argument("--keep", default=None, help="keep the exported files under this folder")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="in-ram", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        dual, single = (int(x) for x in args.child.split(","))
        print(json.dumps(child(dual, single, Path(args.keep), args.mode)), flush=True)
        return 0

    rows = []
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vidtrt-fullwidth-"))
    try:
        for mode in args.modes:
            for depth in args.depths:
                out = root / f"{mode}-{depth.replace(',', 'x')}"
                out.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, os.path.abspath(__file__), "--child", depth, "--keep", str(out),
                       "--mode", mode]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    return proc.returncode
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                pk = row["export_peak"]
                print(f"{mode} dual={row['dual']} single={row['single']}: weights {row['weights'] / GB:.2f} GB "
                      f"(float32), file {row['file_bytes'] / GB:.2f} GB (external data: {row['external_data']}), "
                      f"export {row['export_s']:.0f}s, peak RSS {pk['VmRSS'] / GB:.2f} GB (anon "
                      f"{pk['RssAnon'] / GB:.2f}, file-backed {pk['RssFile'] / GB:.2f}), overhead "
                      f"{_overhead(row) / GB:.2f} GB; onnxruntime load {row['ort_load_s']:.0f}s peak "
                      f"{row['ort_peak']['VmRSS'] / GB:.2f} GB, run {row['ort_run_s']:.1f}s vs torch "
                      f"{row['torch_run_s']:.1f}s, rel error {row['rel_error']:.2e}", flush=True)
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    full_weights = param_bytes(20, 40)
    for mode in args.modes:
        by = {(r["dual"], r["single"]): r for r in rows if r["mode"] == mode}
        if not {(1, 1), (2, 1), (1, 2)} <= set(by):
            continue
        ov = {k: _overhead(r) for k, r in by.items()}
        per_dual = ov[(2, 1)] - ov[(1, 1)]
        per_single = ov[(1, 2)] - ov[(1, 1)]
        w_dual = by[(2, 1)]["weights"] - by[(1, 1)]["weights"]
        w_single = by[(1, 2)]["weights"] - by[(1, 1)]["weights"]
        full_over = ov[(1, 1)] + 19 * per_dual + 39 * per_single
        print(f"{mode}: per dual-stream block weights {w_dual / GB:.3f} GB, export overhead {per_dual / GB:+.3f} GB; "
              f"per single-stream block weights {w_single / GB:.3f} GB, overhead {per_single / GB:+.3f} GB")
        if mode == "in-ram":
            print(f"{mode}: extrapolated 20 + 40 blocks: RAM = float32 weights {full_weights / GB:.1f} GB + "
                  f"export overhead {full_over / GB:.2f} GB = {(full_weights + full_over) / GB:.1f} GB")
        else:
            print(f"{mode}: extrapolated 20 + 40 blocks: anonymous RAM {full_over / GB:.2f} GB above the process "
                  f"(weights {full_weights / 2 / GB:.1f} GB bf16 stay in the reclaimable page cache; file "
                  f"{full_weights / GB:.1f} GB float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
