"""A generation request's life on a server around the generation itself: its deadline, the server's
drain on shutdown, admission into a bounded queue, and the status words of the answers. Torch-free:
the BLS model, ``vidtrt serve`` and the clients share these rules and messages.

Deadline: Triton's own request timeout, in microseconds (tritonclient ``infer(..., timeout=us)`` /
``async_stream_infer(..., timeout=us)``, HTTP ``"parameters": {"timeout": us}``); the generation model
reads it (``request.timeout()``) when the request arrives and checks it before every denoising step and
every VAE tile. Triton itself ignores it for models without a dynamic batcher.

Drain: ``vidtrt serve`` starts tritonserver with ``$VIDTRT_DRAIN_FILE`` naming a file that does not exist
yet; on SIGINT/SIGTERM it writes the drain deadline there. From then on the generation models answer new
requests UNAVAILABLE and cancel what still runs at the deadline (at its next step or tile).

Messages start with what happened, so a client can tell the status from the text alone: Triton's gRPC
stream carries an error's message, not its code.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DRAIN_FILE_ENV = "VIDTRT_DRAIN_FILE"
DEFAULT_MAX_QUEUE = 16  # generations waiting behind the running ones before new ones get UNAVAILABLE

DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
CANCELLED = "CANCELLED"
UNAVAILABLE = "UNAVAILABLE"
SHUTTING_DOWN = "unavailable: the server is shutting down and takes no new generations; retry on another server"


# ------------------------------------------------------------------------------------------ deadline
@dataclass(frozen=True)
class Deadline:
    """``timeout_s`` after the request arrived; ``at`` on the ``time.monotonic()`` clock."""

    timeout_s: float
    at: float

    @classmethod
    def after(cls, timeout_s: float, now: float | None = None) -> Deadline:
        return cls(float(timeout_s), (time.monotonic() if now is None else now) + float(timeout_s))

    @classmethod
    def from_timeout_us(cls, timeout_us: int | None, now: float | None = None) -> Deadline | None:
        """The deadline of Triton's request timeout (microseconds; 0 or None = no deadline)."""
        if not timeout_us or timeout_us <= 0:
            return None
        return cls.after(timeout_us / 1e6, now)

    def expired(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.at

    def message(self, where: str) -> str:
        """One line for the error response: ``where`` says what was not done (``before step 3 of 50``)."""
        return f"deadline exceeded: the request's timeout of {self.timeout_s:g} s passed {where}; generation cancelled"


def status_of(message: str) -> str | None:
    """DEADLINE_EXCEEDED, CANCELLED or UNAVAILABLE for the answers this module words (and Triton's own
    queue rejections), else None."""
    m = message.lower()
    if m.startswith("deadline exceeded") or "request timeout expired" in m:
        return DEADLINE_EXCEEDED
    if m.startswith("generation cancelled"):
        return CANCELLED
    if m.startswith("unavailable:") or "exceeds maximum queue size" in m:
        return UNAVAILABLE
    return None


# ------------------------------------------------------------------------------------------ drain
def start_drain(path: str | os.PathLike, limit_s: float, now: float | None = None) -> float:
    """Write the drain file (atomically): generations still running ``limit_s`` from now are cancelled.
    Returns the deadline (``time.time()`` clock: the file is read by other processes)."""
    start = time.time() if now is None else now
    deadline = start + float(limit_s)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"started": start, "deadline": deadline, "limit_s": float(limit_s)}))
    tmp.replace(path)
    return deadline


class DrainWatch:
    """The model side of the drain file: ``draining`` once it exists, ``expired()`` after its deadline.
    One ``stat`` per check until the file appears, nothing after."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = str(path) if path else None
        self._state: dict | None = None

    @classmethod
    def from_env(cls) -> DrainWatch:
        return cls(os.environ.get(DRAIN_FILE_ENV) or None)

    def _read(self) -> dict | None:
        if self._state is None and self.path and os.path.exists(self.path):
            try:
                self._state = json.loads(Path(self.path).read_text())
            except (OSError, ValueError):  # unreadable: drain now rather than never
                self._state = {"deadline": time.time(), "limit_s": 0.0}
        return self._state

    @property
    def draining(self) -> bool:
        return self._read() is not None

    def expired(self, now: float | None = None) -> bool:
        state = self._read()
        return state is not None and (time.time() if now is None else now) >= float(state["deadline"])

    def reason(self) -> str:
        state = self._read() or {}
        return (f"server shutting down: in-flight generations had {float(state.get('limit_s', 0)):g} s to finish "
                "(vidtrt serve --exit-timeout)")


# ------------------------------------------------------------------------------------------ admission
class Admission:
    """Generations accepted by a model that runs ``running_limit`` at a time: at most ``queue_limit`` more
    wait (0 = no bound). ``admit()`` returns None (accepted: call ``release()`` when it ends) or the
    UNAVAILABLE message."""

    def __init__(self, running_limit: int, queue_limit: int, model_name: str = "") -> None:
        self.running_limit = int(running_limit)
        self.queue_limit = int(queue_limit)
        self.model_name = model_name
        self.accepted = 0
        self._lock = threading.Lock()

    def admit(self) -> str | None:
        with self._lock:
            if self.queue_limit and self.accepted >= self.running_limit + self.queue_limit:
                running = min(self.accepted, self.running_limit)
                return (f"unavailable: server busy: {running} generations running and {self.accepted - running} "
                        f"waiting on {self.model_name or 'this model'} (max_concurrent_generations "
                        f"{self.running_limit}, max_queue_size {self.queue_limit}); retry later")
            self.accepted += 1
            return None

    def release(self) -> None:
        with self._lock:
            self.accepted = max(0, self.accepted - 1)
