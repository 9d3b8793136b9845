"""Triton Python-backend BLS model: text -> video with HunyuanVideo, streaming progress.

Thin on purpose: the generation program is :func:`vidtrt.runtime.orchestrator.run_generation`, the same code
``vidtrt run`` executes in process. Here its three component callables are BLS requests to the
component models (:func:`vidtrt.serving.component_io.remote_components`), and its progress callback sends one
response per denoising step and per VAE tile. Request/response tensors: :mod:`vidtrt.config.request_io`.

Decoupled config (``hunyuan_video``): progress responses (``step``, ``total_steps``, ``elapsed``, ``dit_calls``,
``dit_calls_skipped``), one per VAE tile (``tile``, ``total_tiles``, ``elapsed``), then the final response
(``video`` [F, H, W, 3] uint8, ``mp4`` when ``output_format`` is "mp4", ``dit_calls_total``,
``dit_calls_skipped_total``) with the FINAL flag. Non-decoupled config
(``hunyuan_video_sync``, same file): the final response only.

Decoupled: every request runs on its own worker thread (``max_concurrent_generations``), so
concurrent clients are served together, interleaving step by step; BLS calls and response sends are
serialized per stub (``serialize_bls``); at most ``max_queue_size`` more wait for a thread, later ones
are answered UNAVAILABLE (the non-decoupled model's queue is Triton's, bounded in its config).
Non-decoupled: requests run inside ``execute`` (concurrency = instance count). Errors end that request
only: bad parameters -> INVALID_ARG naming the input, component failures -> INTERNAL; cancellation
(``request.is_cancelled()``), the request's deadline (Triton's request timeout) and a server drain
(:mod:`vidtrt.config.lifecycle`) are checked before every step and every VAE tile -> CANCELLED with a message
that says which; while the server drains, new requests -> UNAVAILABLE. In decoupled mode the FINAL flag
is always sent.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
REQUIRED_PARAMETERS = ("model_fingerprint", "text_encoder_model", "dit_model", "vae_decoder_model")
LATENCY_BUCKETS_S = [0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 2400]


class _Metrics:
    """Custom Prometheus metrics (served on Triton's metrics port next to its own nv_* metrics).

    The MetricFamily objects are kept alive as long as their Metric objects (Triton requires it).
    """

    def __init__(self, model_name: str) -> None:
        labels = {"model": model_name}
        self.families = {
            "requests": pb_utils.MetricFamily(
                name="vidtrt_generation_requests_total",
                description="Generation requests finished, by outcome (success, invalid, cancelled, deadline: "
                            "its timeout passed, rejected: queue full or server draining, error)",
                kind=pb_utils.MetricFamily.COUNTER),
            "latency": pb_utils.MetricFamily(
                name="vidtrt_generation_latency_seconds",
                description="End-to-end latency of successful generations (request parsed -> final response), s",
                kind=pb_utils.MetricFamily.HISTOGRAM),
            "steps": pb_utils.MetricFamily(
                name="vidtrt_denoising_steps_total",
                description="Denoising steps completed (DiT velocity + Euler step), all requests",
                kind=pb_utils.MetricFamily.COUNTER),
            "dit_calls": pb_utils.MetricFamily(
                name="vidtrt_dit_calls_total",
                description="DiT calls made by denoising steps (2 per step with true CFG), all requests",
                kind=pb_utils.MetricFamily.COUNTER),
            "dit_calls_skipped": pb_utils.MetricFamily(
                name="vidtrt_dit_calls_skipped_total",
                description="DiT calls saved by step caching (a step reused the last transformation), all requests",
                kind=pb_utils.MetricFamily.COUNTER),
            "tiles": pb_utils.MetricFamily(
                name="vidtrt_vae_tiles_total",
                description="VAE tiles decoded (tiled decode), all requests",
                kind=pb_utils.MetricFamily.COUNTER),
            "in_flight": pb_utils.MetricFamily(
                name="vidtrt_generations_in_flight",
                description="Generations currently running",
                kind=pb_utils.MetricFamily.GAUGE),
            "queued": pb_utils.MetricFamily(
                name="vidtrt_generations_queued",
                description="Generations accepted and waiting for a worker thread (streaming model)",
                kind=pb_utils.MetricFamily.GAUGE),
        }
        self.outcome = {o: self.families["requests"].Metric(labels={**labels, "outcome": o})
                        for o in ("success", "invalid", "cancelled", "deadline", "rejected", "error")}
        self.latency = self.families["latency"].Metric(labels=labels, buckets=LATENCY_BUCKETS_S)
        self.steps = self.families["steps"].Metric(labels=labels)
        self.dit_calls = self.families["dit_calls"].Metric(labels=labels)
        self.dit_calls_skipped = self.families["dit_calls_skipped"].Metric(labels=labels)
        self.tiles = self.families["tiles"].Metric(labels=labels)
        self.in_flight = self.families["in_flight"].Metric(labels=labels)
        self.queued = self.families["queued"].Metric(labels=labels)

    def release(self) -> None:
        """Metrics first, then their families."""
        self.outcome = self.latency = self.steps = self.tiles = self.in_flight = self.queued = None
        self.dit_calls = self.dit_calls_skipped = None
        self.families = {}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from pathlib import Path

        from vidtrt.config import request_io
        from vidtrt.errors import VidtrtError
        from vidtrt.serving.component_io import remote_components
        from vidtrt.source.model_source import ModelSource

        self.model_name = args["model_name"]
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        missing = [p for p in REQUIRED_PARAMETERS if not params.get(p)]
        if missing:
            raise pb_utils.TritonModelException(f"{self.model_name}: config parameter {missing[0]!r} is missing")
        declared_in = sorted(t["name"] for t in config.get("input", []))
        declared_out = sorted(t["name"] for t in config.get("output", []))
        if declared_in != sorted(t.name for t in request_io.REQUEST_INPUTS) or \
                declared_out != sorted(t.name for t in request_io.RESPONSE_OUTPUTS):
            raise pb_utils.TritonModelException(
                f"{self.model_name}: config tensors do not match vidtrt.config.request_io; rebuild with `vidtrt build`")
        try:
            source = ModelSource.from_repository(Path(args["model_repository"]).parent, params["model_fingerprint"])
            self.config = source.config
            workers = int(params.get("max_concurrent_generations") or 4)
            self.fps = int(params.get("fps") or self.config.defaults.fps)
            if workers < 1 or self.fps < 1:
                raise ValueError("max_concurrent_generations and fps must be >= 1")
        except (VidtrtError, ValueError) as e:
            raise pb_utils.TritonModelException(f"{self.model_name}: {e}") from None
        names = {"text_encoder": params["text_encoder_model"], "dit": params["dit_model"],
                 "vae_decoder": params["vae_decoder_model"],
                 "dit_probe": params.get("dit_probe_model", "")}  # empty: no probe, teacache refused per request
        self.components = remote_components(self._infer, names, self.config,
                                            dit_sparse=params.get("dit_sparse_attention") == "true")
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.model_name}-gen")
        self.metrics = _Metrics(self.model_name)
        self._lock = threading.Lock()
        self._in_flight = 0
        from vidtrt.config.lifecycle import DEFAULT_MAX_QUEUE, Admission, DrainWatch

        max_queue = params.get("max_queue_size")
        self.admission = Admission(workers, int(max_queue) if max_queue else DEFAULT_MAX_QUEUE, self.model_name)
        self.drain = DrainWatch.from_env()  # set by `vidtrt serve`: its shutdown drain
        # Concurrent BLS calls / response sends from several threads of one stub have crashed the Python
        # backend under load (tritonserver issue 8882, seen here too); one at a time per stub. Generations
        # still interleave step by step; set serialize_bls "false" to lift it.
        serialize = (params.get("serialize_bls") or "true").lower() != "false"
        self._bls_lock = threading.Lock() if serialize else contextlib.nullcontext()
        self._ipc_lock = threading.Lock() if serialize else contextlib.nullcontext()

    # -- BLS -------------------------------------------------------------------------------------
    def _infer(self, model_name: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """One BLS call; raises on an error response (checked on this very response)."""
        from vidtrt.errors import InvalidRequestError
        from vidtrt.serving.component_io import ComponentFailure

        request = pb_utils.InferenceRequest(
            model_name=model_name,
            requested_output_names=outputs,
            inputs=[pb_utils.Tensor(name, value) for name, value in feeds.items()],
        )
        with self._bls_lock:
            response = request.exec()
        if response.has_error():
            error = response.error()
            message = error.message()
            invalid = InvalidRequestError.from_message(message)
            if invalid is not None:  # the component rejected the request's content, naming the field
                raise invalid
            raise ComponentFailure(f"{model_name} failed: {message}")
        result = {}
        for name in outputs:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise ComponentFailure(f"{model_name} returned no {name!r} output")
            result[name] = np.array(tensor.as_numpy(), copy=True)  # own it: the response's buffer goes with it
        return result

    # -- requests --------------------------------------------------------------------------------
    def execute(self, requests: list) -> list | None:
        from vidtrt.config.lifecycle import Deadline

        if self.decoupled:
            for request in requests:
                deadline = Deadline.from_timeout_us(_timeout_us(request))  # counts from here, queue included
                sender = request.get_response_sender()
                fail = lambda response, s=sender: self._send_final(s, response)  # noqa: E731
                gen = self._parse(request, fail)
                if gen is None:
                    continue
                refusal = self._refusal(self.admission)
                if refusal is not None:
                    fail(refusal)
                    continue
                self._track(0)
                self.pool.submit(self._generate, request, gen, sender, deadline)
            return None
        # Not decoupled: one response per request, returned from execute (the response sender must not
        # outlive execute here: answering a non-decoupled request from a thread after execute returned
        # crashed tritonserver 2.51 under load). Concurrency for this model = its instance count; its
        # queue is Triton's (max_queue_size in the config). The deadline counts from here.
        responses = []
        for request in requests:
            deadline = Deadline.from_timeout_us(_timeout_us(request))
            gen = self._parse(request, responses.append)
            if gen is None:
                continue
            refusal = self._refusal(None)
            responses.append(refusal if refusal is not None else self._run(request, gen, None, deadline))
        return responses

    def _refusal(self, admission):
        """None when the request may run (then it holds a place in ``admission``), else the UNAVAILABLE
        error response: the server is draining, or running + waiting generations are at the bound."""
        from vidtrt.config.lifecycle import SHUTTING_DOWN

        message = SHUTTING_DOWN if self.drain.draining else (admission.admit() if admission is not None else None)
        if message is None:
            return None
        return self._error(message, pb_utils.TritonError.UNAVAILABLE, "rejected")

    def _parse(self, request, fail):
        """The validated GenerationRequest, or None after ``fail(error response)``."""
        from vidtrt.config import request_io
        from vidtrt.errors import InvalidRequestError

        try:
            # Inputs are read here, while the request's buffers are certainly alive.
            gen = request_io.inputs_to_request(lambda name: _input(request, name))
            return gen.validate(self.config)
        except InvalidRequestError as e:
            fail(self._error(str(e), pb_utils.TritonError.INVALID_ARG, "invalid"))
        except Exception as e:
            fail(self._error(f"{type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL, "error"))
        return None

    def _generate(self, request, gen, sender, deadline) -> None:
        """Worker thread of the decoupled model: progress responses, then the final one (always FINAL)."""
        response = None
        try:
            response = self._run(request, gen, sender, deadline)
        finally:
            if response is None:  # _run never raises; belt and braces for the FINAL flag
                response = self._error("internal error", pb_utils.TritonError.INTERNAL, "error")
            self.admission.release()
            self._send_final(sender, response)
            self._track(0)

    def _should_cancel(self, request):
        """Checked before every step and tile: the drain's deadline passed (its reason), or the client
        cancelled."""
        def check():
            if self.drain.expired():
                return self.drain.reason()
            return self._ipc(request.is_cancelled)

        return check

    def _run(self, request, gen, sender, deadline=None):
        """Run one generation; returns the final InferenceResponse (video, or an error for this request)."""
        from vidtrt.config import request_io
        from vidtrt.errors import CancelledError, DeadlineExceededError, InvalidRequestError, NonFiniteError
        from vidtrt.runtime.orchestrator import run_generation
        from vidtrt.runtime.step_cache import DitCallTally
        from vidtrt.serving.component_io import ComponentFailure

        start = time.perf_counter()
        try:
            self._track(+1)
            tally = DitCallTally(self._progress(sender))
            frames = run_generation(gen, self.config, self.components, progress=tally,
                                    should_cancel=self._should_cancel(request), deadline=deadline)
            mp4 = None
            if gen.output_format == "mp4":
                from vidtrt.video_io import encode_mp4

                mp4 = encode_mp4(frames, fps=self.fps)
            outputs = request_io.final_outputs(frames, mp4, tally.calls, tally.skipped)
            response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])
            self._ipc(self.metrics.outcome["success"].increment, 1)
            self._ipc(self.metrics.latency.observe, time.perf_counter() - start)
            return response
        except DeadlineExceededError as e:
            return self._error(str(e), pb_utils.TritonError.CANCELLED, "deadline")
        except CancelledError as e:
            return self._error(str(e), pb_utils.TritonError.CANCELLED, "cancelled")
        except InvalidRequestError as e:
            return self._error(str(e), pb_utils.TritonError.INVALID_ARG, "invalid")
        except (ComponentFailure, NonFiniteError) as e:
            return self._error(str(e), pb_utils.TritonError.INTERNAL, "error")
        except Exception as e:
            pb_utils.Logger.log_error(f"{self.model_name}: {traceback.format_exc()}")
            return self._error(f"{type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL, "error")
        finally:
            try:
                self._track(-1)
            except Exception:
                pb_utils.Logger.log_error(f"{self.model_name}: {traceback.format_exc()}")

    def _progress(self, sender):
        from vidtrt.config import request_io

        def count(event) -> None:  # under the IPC lock
            if event.stage == "decode":
                self.metrics.tiles.increment(1)
                return
            self.metrics.steps.increment(1)
            if event.dit_calls:
                self.metrics.dit_calls.increment(event.dit_calls)
            if event.dit_calls_skipped:
                self.metrics.dit_calls_skipped.increment(event.dit_calls_skipped)

        def send(event) -> None:
            if sender is None:
                self._ipc(count, event)
                return
            if event.stage == "decode":
                outputs = request_io.decode_progress_outputs(event.step, event.total, event.elapsed_s)
            else:
                outputs = request_io.progress_outputs(event.step, event.total, event.elapsed_s, event.dit_calls,
                                                      event.dit_calls_skipped)
            response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])
            with self._ipc_lock:
                count(event)
                sender.send(response)

        return send

    def _error(self, message: str, code, outcome: str):
        """An error response for one request (counted under ``outcome``)."""
        try:
            self._ipc(self.metrics.outcome[outcome].increment, 1)
        except Exception:
            pb_utils.Logger.log_error(f"{self.model_name}: {traceback.format_exc()}")
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

    def _send_final(self, sender, response) -> None:
        """The last response with the FINAL flag (required even after a cancel)."""
        try:
            with self._ipc_lock:
                sender.send(response, flags=FINAL)
        except Exception:  # the client is gone (cancelled stream): the FINAL flag alone closes the request
            try:
                with self._ipc_lock:
                    sender.send(flags=FINAL)
            except Exception:
                pass

    def _track(self, delta: int) -> None:
        """Running generations += delta; both gauges (running, accepted and waiting) set afresh."""
        with self._lock:
            self._in_flight += delta
            waiting = max(0, self.admission.accepted - self._in_flight) if self.decoupled else 0
            with self._ipc_lock:
                self.metrics.in_flight.set(self._in_flight)
                self.metrics.queued.set(waiting)

    def _ipc(self, fn, *args):
        """Call a stub -> server IPC function (cancel check, metric update) under the IPC lock that
        response sends take: with serialize_bls no two worker threads talk to the server at once."""
        with self._ipc_lock:
            return fn(*args)

    def finalize(self) -> None:
        self.pool.shutdown(wait=True)
        self.metrics.release()


def _timeout_us(request) -> int:
    """Triton's request timeout in microseconds (0 = none); the deadline of this request."""
    timeout = getattr(request, "timeout", None)
    return int(timeout()) if callable(timeout) else 0


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.array(tensor.as_numpy(), copy=True)
