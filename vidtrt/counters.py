"""Counts of the expensive, once-per-process events: model resolves, config loads, DiT file reads.

``COUNTS`` is per process (tests read it in process). ``$VIDTRT_TRACE_FILE``, when set, also gets one
JSON line per event (``{"pid": ..., "event": ..., "detail": ...}``), appended: that is how a test or
an operator sees what each of a Triton server's model processes did at load time.

Events: ``resolve`` (a model named by the user or a record turned into a
:class:`~vidtrt.source.model_source.ModelSource`), ``config_load`` (its config read from files or a record),
``dit_read`` (a DiT weight file mapped for its tensors), ``dit_metadata_read`` (the official DiT's
tensor names and shapes read without its data).
"""

from __future__ import annotations

import json
import os
from collections import Counter

TRACE_ENV = "VIDTRT_TRACE_FILE"
COUNTS: Counter[str] = Counter()


def count(event: str, detail: str = "") -> None:
    """Record one ``event`` (see the module docstring); never raises for the trace file."""
    COUNTS[event] += 1
    path = os.environ.get(TRACE_ENV)
    if path:
        try:
            with open(path, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "event": event, "detail": detail}) + "\n")
        except OSError:
            pass
