"""The DiT over N processes of one machine (Ulysses sequence parallelism, :mod:`vidtrt.models.sequence_parallel`).

:class:`ParallelDenoiser` is a :class:`~vidtrt.config.components.Denoiser`: the process holding it is
rank 0 (``vidtrt run --nproc-per-node N``, or the Triton DiT component model); it starts ranks
``1 .. N-1`` as worker processes (``python -m vidtrt.runtime.parallel_dit``), each loading the same DiT
from the :class:`~vidtrt.source.model_source.ModelSource` record, and supervises them. Not torchrun:
the Triton Python backend owns the rank-0 process, so rank 0 must be able to start (and restart) the
others itself; one mechanism serves both transports.

Per call, rank 0 broadcasts a header and the inputs, every rank runs the DiT on its slice of the
tokens and the velocity is all-gathered. Process group: ``torch.distributed`` with NCCL on CUDA (rank
``r`` on GPU ``base + r``) or gloo on CPU, rendezvous through a ``TCPStore`` on 127.0.0.1 (a fresh
free port per start).

Supervision: workers exit when rank 0's process is gone (they watch their parent pid). A worker that
dies, or a collective that fails or passes ``timeout_s``, fails the call with one line
(:class:`ParallelGroupError` naming the rank, pid and exit status); rank 0 then tears the group down
and starts a fresh one, so the next call is served. If the restart fails too, the denoiser is broken
and says so in every later call.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from vidtrt.config.components import TextEmbeddings
from vidtrt.errors import ConfigError, VidtrtError, one_line
from vidtrt.models.sequence_parallel import SequenceParallel, check_degree, use_sequence_parallel
from vidtrt.source.model_source import ModelSource

_HEADER = 10  # cmd, B, C_in, T, H, W, L, has_mask, has_guidance, spare
_CMD_STOP, _CMD_FORWARD = 0, 1
DEFAULT_TIMEOUT_S = 600.0  # a collective waiting longer than this fails the call (a hung or stopped worker)
DEFAULT_START_TIMEOUT_S = 600.0  # workers loading weights and joining the group


class ParallelGroupError(VidtrtError):
    """The sequence-parallel DiT group failed (a worker died, a collective failed or timed out): the
    generation failed, the request was fine."""

    exit_code = 1


@dataclass(frozen=True)
class Kernels:
    """The DiT kernels of every rank (``pipeline.KernelChoice``'s fields; not imported from there, which
    imports this module)."""

    attention: str
    fused_rope: bool

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        from vidtrt.models.attention import use_backend
        from vidtrt.models.rope import use_qk_norm_rope_impl

        rope_impl = None
        if self.fused_rope:
            from vidtrt.kernels.rope import qk_norm_rope_fused

            rope_impl = qk_norm_rope_fused
        with use_backend(self.attention), use_qk_norm_rope_impl(rope_impl):
            yield


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _rank_device(device: torch.device, rank: int) -> torch.device:
    if device.type != "cuda":
        return device
    base = device.index if device.index is not None else 0
    return torch.device("cuda", (base + rank) % max(torch.cuda.device_count(), 1))


def worker_python() -> str:
    """The interpreter for worker processes: this one, unless this process is not a Python executable
    (Triton's Python-backend stub), then ``python3`` on PATH (the venv's, as `vidtrt serve` sets PATH)."""
    exe = sys.executable or ""
    if Path(exe).name.startswith("python") and os.access(exe, os.X_OK):
        return exe
    found = shutil.which("python3") or shutil.which("python")
    if not found:
        raise ParallelGroupError("cannot start DiT worker processes: no python3 on PATH")
    return found


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class ParallelDenoiser:
    """The DiT of ``source`` over ``degree`` ranks (this process is rank 0) as a Denoiser.

    Args:
        source: the model (its record is what the workers load).
        degree: ranks, dividing the DiT's head count (:func:`~vidtrt.models.sequence_parallel.check_degree`).
        device: rank 0's device; ``cuda:i`` puts rank r on GPU ``i + r``; CPU ranks use gloo.
        dtype: weights / activations, as :class:`~vidtrt.runtime.pipeline.TorchDenoiser`.
        attention: attention backend name (None: ``triton`` on CUDA, ``sdpa`` on CPU), the same on every rank;
            ``fused_rope`` (None: on CUDA): the fused QK-norm + RoPE kernel (as ``pipeline.select_kernels``).
        timeout_s: a collective (one step's slowest rank included) waiting longer fails the call.
        threads: torch intra-op threads per worker (0: on CPU the cores divided by ``degree``, so the ranks
            do not oversubscribe the machine; on CUDA torch's default).
    Raises ConfigError for a degree that does not divide the heads, ParallelGroupError when the workers
    cannot start.
    """

    def __init__(self, source: ModelSource, degree: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, attention: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
                 threads: int = 0, module: torch.nn.Module | None = None, fused_rope: bool | None = None):
        self.source = source
        self.degree = check_degree(source.config.transformer.num_attention_heads, degree)
        self.device = torch.device(device)
        self.dtype = dtype
        on_cuda = self.device.type == "cuda"
        if on_cuda and (self.device.index or 0) + self.degree > torch.cuda.device_count():
            raise ConfigError(f"sequence-parallel degree {self.degree} needs GPUs {self.device.index or 0}.."
                              f"{(self.device.index or 0) + self.degree - 1} (one per rank); this machine has "
                              f"{torch.cuda.device_count()}")
        self.kernels = Kernels(attention or ("triton" if on_cuda else "sdpa"),
                               on_cuda if fused_rope is None else fused_rope)
        if not threads and self.device.type == "cpu":
            threads = max(1, (os.cpu_count() or 1) // self.degree)
        self.timeout_s, self.start_timeout_s, self.threads = float(timeout_s), float(start_timeout_s), threads
        self.module = module if module is not None else source.load_transformer(dtype).to(self.device)
        self.workers: list[subprocess.Popen] = []
        self.broken: str | None = None
        self.restarts = 0
        self.sp: SequenceParallel | None = None
        self._idle = True  # no call in flight: the workers wait for a header
        self._lock = threading.Lock()
        self._store = None
        self._start()

    # ------------------------------------------------------------------------------------------ group
    def _start(self) -> None:
        if dist.is_initialized():
            raise ParallelGroupError("this process already belongs to a torch.distributed group; one "
                                     "sequence-parallel DiT per process")
        store = dist.TCPStore("127.0.0.1", 0, self.degree, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=self.start_timeout_s))
        self._store = store
        args = {"port": store.port, "world": self.degree, "record": self.source.to_record(),
                "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
                "attention": self.kernels.attention, "fused_rope": self.kernels.fused_rope,
                "timeout_s": self.timeout_s, "threads": self.threads,
                "parent": os.getpid()}
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the vidtrt this process runs, first on the workers' path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        python = worker_python()
        for rank in range(1, self.degree):
            self.workers.append(subprocess.Popen(
                [python, "-m", "vidtrt.runtime.parallel_dit", "--rank", str(rank), "--args", json.dumps(args)],
                env=env, stdin=subprocess.DEVNULL, start_new_session=True))
        try:
            deadline = time.monotonic() + self.start_timeout_s
            pending = [f"ready{r}" for r in range(1, self.degree)]
            while pending:
                self._raise_if_dead("while starting")
                if time.monotonic() > deadline:
                    raise ParallelGroupError(f"DiT workers did not start within {self.start_timeout_s:g} s")
                pending = [k for k in pending if not store.check([k])]
                time.sleep(0.05)
            dist.init_process_group(_backend(self.device), store=store, rank=0, world_size=self.degree,
                                    timeout=datetime.timedelta(seconds=self.timeout_s))
            self.sp = SequenceParallel.from_world(self.source.config.transformer.num_attention_heads)
            self._idle = True
        except ParallelGroupError:
            self._stop_workers()
            raise
        except Exception as e:  # store / process-group errors: one line
            self._stop_workers()
            raise ParallelGroupError(f"cannot start the sequence-parallel DiT group: {one_line(e, with_type=True)}"
                                     ) from None
        except BaseException:
            self._stop_workers()
            raise

    def _raise_if_dead(self, when: str) -> None:
        for rank, p in enumerate(self.workers, start=1):
            code = p.poll()
            if code is not None:
                raise ParallelGroupError(f"DiT worker rank {rank} of {self.degree} (pid {p.pid}) {when}: "
                                         f"{_describe_exit(code)}")

    def _dead_worker(self) -> str | None:
        for rank, p in enumerate(self.workers, start=1):
            code = p.poll()
            if code is not None:
                return f"DiT worker rank {rank} of {self.degree} (pid {p.pid}) {_describe_exit(code)}"
        return None

    def _stop_workers(self, graceful: bool = False) -> None:
        # Ask the workers to stop only when they wait for a header: after an interrupted call (Ctrl-C) they
        # sit in a collective that a header would not match, so they are killed instead.
        graceful = graceful and self._idle
        if graceful and dist.is_initialized() and self._dead_worker() is None:
            with contextlib.suppress(Exception):
                self._broadcast_header(torch.zeros(_HEADER, dtype=torch.int64))
        for p in self.workers:
            if graceful:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
            if p.poll() is None:
                p.kill()
        for p in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        self.workers = []
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        self.sp = None
        self._store = None

    def restart(self) -> None:
        """Stop every worker and start a fresh group (new rendezvous port)."""
        self._stop_workers()
        self.restarts += 1
        try:
            self._start()
            self.broken = None
        except VidtrtError as e:
            self.broken = str(e)
            raise

    def close(self) -> None:
        """Stop the workers (asked to stop, then killed after 10 s) and leave the process group."""
        with self._lock:
            self._stop_workers(graceful=True)

    def __enter__(self) -> ParallelDenoiser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # the last resort; close() is the way
        with contextlib.suppress(Exception):
            for p in self.workers:
                p.kill()

    # ------------------------------------------------------------------------------------------ calls
    def _broadcast_header(self, header: torch.Tensor) -> None:
        dist.broadcast(header.to(_rank_device(self.device, 0)), src=0)

    @torch.inference_mode()
    def __call__(self, latents, timestep, text: TextEmbeddings, guidance) -> torch.Tensor:
        with self._lock:
            if self.broken is not None:  # the last restart failed: try once more, else say so
                try:
                    self.restart()
                except VidtrtError:
                    raise ParallelGroupError(f"the sequence-parallel DiT is down: {self.broken}") from None
            dead = self._dead_worker()
            if dead is not None:  # died between calls: a fresh group serves this call
                self.restart()
            watch = self._watch_call() if _backend(self.device) == "nccl" else contextlib.nullcontext()
            try:
                with watch:
                    return self._forward(latents, timestep, text, guidance)
            except Exception as e:
                time.sleep(0.2)  # let a dying worker's exit status arrive
                dead = self._dead_worker()
                reason = dead or f"{type(e).__name__}: {one_line(e)}"
                if dead is None and "timed out" in str(e).lower():
                    reason = f"no answer from a DiT worker within timeout_s = {self.timeout_s:g} s (hung?): {reason}"
                try:
                    self.restart()
                    after = f"restarted the group ({self.degree} ranks)"
                except VidtrtError as restart_error:
                    after = f"restart failed: {restart_error}"
                raise ParallelGroupError(f"sequence-parallel DiT failed: {reason}; {after}") from None

    @contextlib.contextmanager
    def _watch_call(self) -> Iterator[None]:
        """NCCL only (gloo fails the collective itself when a peer's socket closes): while the call runs,
        a dead worker aborts the group, so rank 0's pending collectives fail now instead of at timeout_s.
        Untested here (no multi-GPU machine)."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.5):
                if self._dead_worker() is not None:
                    with contextlib.suppress(Exception):
                        dist.distributed_c10d._abort_process_group()
                    return

        t = threading.Thread(target=watch, name="vidtrt-sp-watch", daemon=True)
        t.start()
        try:
            yield
        finally:
            done.set()
            t.join()

    def _forward(self, latents, timestep, text: TextEmbeddings, guidance) -> torch.Tensor:
        self._idle = False
        out = self._forward_all(latents, timestep, text, guidance)
        self._idle = True
        return out

    def _forward_all(self, latents, timestep, text: TextEmbeddings, guidance) -> torch.Tensor:
        d, dt = self.device, self.dtype
        mask = text.attention_mask
        b, c, t, h, w = latents.shape
        length = text.prompt_embeds.shape[1]
        header = torch.tensor([_CMD_FORWARD, b, c, t, h, w, length, mask is not None, guidance is not None, 0],
                              dtype=torch.int64)
        inputs = [latents.to(d, dt), timestep.to(d, torch.float32), text.prompt_embeds.to(d, dt),
                  None if mask is None else mask.to(d, torch.int64), text.pooled.to(d, dt),
                  None if guidance is None else guidance.to(d, dt)]
        self._broadcast_header(header)
        for x in inputs:
            if x is not None:
                dist.broadcast(x.contiguous(), src=0)
        with self.kernels.active(), use_sequence_parallel(self.sp):
            out = self.module(*inputs)
        return out.to("cpu", torch.float32)


# ---------------------------------------------------------------------------------------------- worker
def _die_with_parent(parent: int) -> None:
    """Exit when rank 0 goes away (the parent pid changes): a thread polls once a second. Not
    PR_SET_PDEATHSIG, which fires when the *thread* that started us ends (Triton runs models in threads)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=watch, name="vidtrt-parent-watch", daemon=True).start()


@torch.inference_mode()
def worker_main(rank: int, args: dict) -> int:
    """Rank ``rank`` (>= 1): load the DiT, join the group, then run every forward rank 0 broadcasts."""
    _die_with_parent(int(args["parent"]))
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    world = int(args["world"])
    device = _rank_device(torch.device(args["device"]), rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = getattr(torch, args["dtype"])
    kernels = Kernels(args["attention"], bool(args["fused_rope"]))
    source = ModelSource.from_record(args["record"])
    module = source.load_transformer(dtype).to(device)
    cfg = source.config.transformer
    timeout = datetime.timedelta(seconds=float(args["timeout_s"]))
    store = dist.TCPStore("127.0.0.1", int(args["port"]), world, is_master=False, timeout=timeout)
    store.set(f"ready{rank}", "1")
    dist.init_process_group(_backend(device), store=store, rank=rank, world_size=world, timeout=timeout)
    sp = SequenceParallel.from_world(cfg.num_attention_heads)
    header = torch.zeros(_HEADER, dtype=torch.int64, device=device)
    while True:
        dist.broadcast(header, src=0)
        cmd, b, c, t, h, w, length, has_mask, has_guidance, _ = header.tolist()
        if cmd == _CMD_STOP:
            break

        def recv(shape, dt):
            x = torch.empty(shape, dtype=dt, device=device)
            dist.broadcast(x, src=0)
            return x

        latents = recv((b, c, t, h, w), dtype)
        timestep = recv((b,), torch.float32)
        text = recv((b, length, cfg.text_embed_dim), dtype)
        mask = recv((b, length), torch.int64) if has_mask else None
        pooled = recv((b, cfg.pooled_projection_dim), dtype)
        guidance = recv((b,), dtype) if has_guidance else None
        with kernels.active(), use_sequence_parallel(sp):
            module(latents, timestep, text, mask, pooled, guidance)
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="vidtrt sequence-parallel DiT worker (started by rank 0)")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--args", required=True, help="JSON from ParallelDenoiser")
    ns = parser.parse_args(argv)
    return worker_main(ns.rank, json.loads(ns.args))


if __name__ == "__main__":
    sys.exit(main())
