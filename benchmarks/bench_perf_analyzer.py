"""NVIDIA perf_analyzer against a real tritonserver serving a vidtrt repository, concurrency 1..4.

    bash scripts/install_perf_analyzer.sh            # once: .tools/bin/pa (perf_analyzer 2.51)
    python benchmarks/bench_perf_analyzer.py [--model tiny] [--concurrency 1:4] [--modes sync,stream]

Two load shapes, both over gRPC with the request data of ``benchmarks/perf_analyzer_inputs.json``:

- ``sync``: ``hunyuan_video_sync`` (not decoupled): one response per request, what HTTP users get;
- ``stream``: ``hunyuan_video`` with ``--streaming`` (decoupled): a progress response per step and per
  VAE tile, then the video. perf_analyzer 2.51 times a request to its last response, so latencies are
  end to end.

CSV per mode goes to ``benchmarks/results/perf_analyzer_<mode>_<device>.csv``; the summary is printed
and saved next to them. Exits non-zero if perf_analyzer fails or the server counted any failed request
(zero errors is part of the result).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INPUTS = ROOT / "benchmarks" / "perf_analyzer_inputs.json"


def find_perf_analyzer(explicit: str | None) -> str:
    for cand in [explicit, str(ROOT / ".tools" / "bin" / "pa"), shutil.which("perf_analyzer")]:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    raise SystemExit("error: perf_analyzer not found; run `bash scripts/install_perf_analyzer.sh` "
                     "(installs .tools/bin/pa) or pass --perf-analyzer PATH")


def failed_requests(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(r'^vidtrt_generation_requests_total\{.*outcome="(error|invalid|cancelled|deadline|rejected)".*\} '
                     r'([0-9.e+-]+)$', line)
        if m:
            total += float(m.group(2))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--concurrency", default="1:4", help="perf_analyzer --concurrency-range (default 1:4)")
    p.add_argument("--modes", default="sync,stream", help="comma list of sync, stream (default both)")
    p.add_argument("--requests-per-window", type=int, default=8,
                   help="--measurement-request-count (count_windows mode; default 8)")
    p.add_argument("--stability", type=int, default=50,
                   help="--stability-percentage (default 50: shared 2-core CI machines are noisy)")
    p.add_argument("--max-trials", type=int, default=10)
    p.add_argument("--perf-analyzer", default=None, help="perf_analyzer binary or wrapper (default .tools/bin/pa)")
    p.add_argument("--device-label", default="cpu", help="suffix of the result files (default cpu)")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)

    pa = find_perf_analyzer(args.perf_analyzer)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"sync", "stream"}:
        raise SystemExit(f"error: invalid --modes {args.modes!r}: accepted sync, stream")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    from vidtrt.export.repository import build_repository
    from vidtrt.serving.server import TritonServer

    summary: list[str] = []
    status = 0
    with tempfile.TemporaryDirectory(prefix="vidtrt-pa-") as tmp:
        repo = build_repository(args.model, Path(tmp) / "repo")
        log_file = Path(tempfile.mkdtemp(prefix="vidtrt-pa-log-")) / "tritonserver.log"
        print(f"server log: {log_file}", file=sys.stderr)
        with TritonServer(repo, log_file=log_file, exit_timeout_s=5) as srv:
            for mode in modes:
                model = "hunyuan_video_sync" if mode == "sync" else "hunyuan_video"
                csv_path = out_dir / f"perf_analyzer_{mode}_{args.device_label}.csv"
                cmd = [pa, "-m", model, "-i", "grpc", "-u", srv.grpc_url, "--input-data", str(INPUTS),
                       "--concurrency-range", args.concurrency, "--measurement-mode", "count_windows",
                       "--measurement-request-count", str(args.requests_per_window),
                       "--stability-percentage", str(args.stability), "--max-trials", str(args.max_trials),
                       "-f", str(csv_path)]
                if mode == "stream":
                    cmd.append("--streaming")
                if not srv.is_ready():
                    print(f"error: the server is not ready before the {mode} run: {srv.log_summary()}",
                          file=sys.stderr)
                    return 1
                before = failed_requests(srv.metrics_url)
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True)
                took = time.perf_counter() - t0
                if not srv.is_ready():
                    print(f"error: the server died during the {mode} run: {srv.log_summary()}", file=sys.stderr)
                    return 1
                failed = failed_requests(srv.metrics_url) - before
                unstable = r.returncode == 2 and csv_path.is_file()  # perf_analyzer's "no stable window"
                if unstable:
                    print(f"warning: perf_analyzer ({mode}) found no stable window for some concurrency; "
                          "those rows are left out", file=sys.stderr)
                if r.returncode != 0 and not unstable:
                    tail = " | ".join((r.stdout + r.stderr).strip().splitlines()[-5:])
                    print(f"error: perf_analyzer ({mode}) exited {r.returncode}: {tail}", file=sys.stderr)
                    status = 1
                    continue
                if failed:
                    print(f"error: the server counted {failed:g} failed requests during the {mode} run",
                          file=sys.stderr)
                    status = 1
                with open(csv_path) as f:
                    rows = sorted(csv.DictReader(f), key=lambda row: int(row["Concurrency"]))
                summary.append(f"{mode}: model {model} over gRPC{' --streaming' if mode == 'stream' else ''}, "
                               f"{took:.0f} s, server-side failed requests: {failed:g}")
                summary.append(f"  {'concurrency':>11} {'videos/s':>9} {'p50 ms':>9} {'p99 ms':>9}"
                               + (f" {'responses/s':>12}" if mode == "stream" else ""))
                for row in rows:
                    line = (f"  {row['Concurrency']:>11} {float(row['Inferences/Second']):9.3f} "
                            f"{int(row['p50 latency']) / 1000:9.1f} {int(row['p99 latency']) / 1000:9.1f}")
                    if mode == "stream":
                        line += f" {float(row['Response Throughput']):12.3f}"
                    summary.append(line)
    header = (f"perf_analyzer 2.51, model {args.model}, request data {INPUTS.name}, "
              f"{os.cpu_count()} CPUs ({platform.machine()}), {time.strftime('%Y-%m-%d')}")
    text = "\n".join([header, *summary])
    print(text)
    (out_dir / f"perf_analyzer_summary_{args.device_label}.txt").write_text(text + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
