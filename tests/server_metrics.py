"""What tests read off a running tritonserver: its Prometheus metrics and its process tree's memory."""

from __future__ import annotations

import re
import urllib.request

import psutil


def metric(server, name: str, **labels: str) -> float:
    """Sum of metric ``name`` over the series whose labels include exactly ``labels`` (``server``: anything
    with a ``metrics_url``, e.g. a TritonServer)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    total = 0.0
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} ([0-9.e+-]+)$", text, re.M):
        have = dict(kv.split("=", 1) for kv in m.group(1).split(","))
        if all(have.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(m.group(2))
    return total


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants (tritonserver and its model stubs)."""
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total
