"""The budgeted phase runner the GPU check scripts share.

A script's report is a dict; each phase is a function whose result goes into ``report[key]``. A phase
starts only when at least ``need_s`` seconds of the budget are left (else it is recorded under
``report["errors"][key]`` as skipped); an exception in a phase is recorded there with its traceback and
the other phases go on. After every phase the report is saved as JSON and markdown (and copied into
``$OUT`` when that is set), so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path


class PhaseRunner:
    def __init__(self, report: dict, json_path: Path, md_path: Path, to_markdown: Callable[[dict], str],
                 budget_s: float, log: Callable[[str], None] = print, before_save: Callable[[dict], None] | None = None,
                 after_phase: Callable[[], None] | None = None, t_start: float | None = None):  # fmt: skip
        self.report, self.json_path, self.md_path = report, Path(json_path), Path(md_path)
        self.to_markdown, self.budget_s, self.log = to_markdown, budget_s, log
        self.before_save, self.after_phase = before_save, after_phase
        self.t_start = time.perf_counter() if t_start is None else t_start  # the budget counts from here
        report.setdefault("errors", {})

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def save(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 1)
        if self.before_save is not None:
            self.before_save(self.report)
        self.json_path.write_text(json.dumps(self.report, indent=1, default=str))
        self.md_path.write_text(self.to_markdown(self.report))
        if os.environ.get("OUT"):
            for pth in (self.json_path, self.md_path):
                shutil.copy(pth, Path(os.environ["OUT"]) / pth.name)

    def phase(self, key: str, fn: Callable[[], object], need_s: float = 0.0) -> None:
        if self.left() < need_s:
            self.report["errors"][key] = f"skipped: {self.left():.0f} s left of the budget"
            self.log(f"== {key}: skipped (budget)")
            return
        self.log(f"== {key}")
        try:
            self.report[key] = fn()
        except Exception:  # noqa: BLE001 - record and go on with the other phases
            self.report["errors"][key] = traceback.format_exc()
            self.log(self.report["errors"][key])
        self.save()
        if self.after_phase is not None:
            self.after_phase()
