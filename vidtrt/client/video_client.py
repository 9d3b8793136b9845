"""A client for the vidtrt generation models on Triton Inference Server.

gRPC (default): streams from the decoupled ``hunyuan_video`` model; ``progress`` is called once per
denoising step and then once per VAE tile (``Progress.stage``), the call returns when the final response
(the video) arrives, and ``cancel`` (an Event or a callable) cancels the request on the server (it stops
within one step or tile).

HTTP: Triton's ``/infer`` endpoint rejects decoupled models, so HTTP goes to the non-decoupled
``hunyuan_video_sync`` model: one response, no progress, no cancellation (tritonserver 2.51 does not tell
the model when an HTTP client goes away: the request runs to its end; a timeout bounds it).

``timeout_s`` is the request's deadline, enforced by the server (Triton's request timeout: the
generation stops at its next step or tile once it passed and answers "deadline exceeded"); the client
itself gives up ``TIMEOUT_GRACE_S`` later if no answer came.

>>> client = VideoClient("localhost:8001")                              # doctest: +SKIP
>>> frames = client.generate("a cat walks on the grass", seed=1)        # uint8 [F, H, W, 3]

Tensors are declared in :mod:`vidtrt.config.request_io`; nothing here imports torch.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vidtrt.config import lifecycle, request_io
from vidtrt.config.request import GenerationRequest, embedded_guidance
from vidtrt.errors import CancelledError, InvalidRequestError, TransportError, VidtrtError

DEFAULT_MODEL = "hunyuan_video"
PROTOCOLS = ("grpc", "http")
TIMEOUT_GRACE_S = 10.0  # the client's own limit is timeout_s + this: the server answers at a step/tile boundary


@dataclass(frozen=True)
class Progress:
    """One progress response: ``step`` of ``total`` finished (1-based), ``elapsed_s`` since the server
    started the request; ``stage`` ``"denoise"`` (denoising steps) or ``"decode"`` (VAE tiles, after the
    steps); ``dit_calls`` / ``dit_calls_skipped``: a step's DiT calls made (0: step caching reused the last
    transformation) and saved. Same fields as :class:`vidtrt.runtime.orchestrator.ProgressEvent`."""

    step: int
    total: int
    elapsed_s: float
    stage: str = "denoise"
    dit_calls: int | None = None
    dit_calls_skipped: int | None = None


@dataclass
class GenerationResult:
    """``frames`` uint8 [F, H, W, 3]; ``mp4`` bytes when requested; ``progress`` in arrival order;
    ``latency_s`` from sending the request to the final response; ``dit_calls`` / ``dit_calls_skipped``: the
    DiT calls the generation made and those step caching saved (None from a server without them)."""

    frames: np.ndarray
    mp4: bytes | None = None
    progress: list[Progress] = field(default_factory=list)
    latency_s: float = 0.0
    dit_calls: int | None = None
    dit_calls_skipped: int | None = None


class ServerRequestError(VidtrtError):
    """The server answered the request with an error. ``param`` names the request input for invalid
    parameters (``invalid height=65: ...``), else None; ``status`` is DEADLINE_EXCEEDED, CANCELLED or
    UNAVAILABLE (retry later or elsewhere) when the message says so (a gRPC stream carries no status
    code), else the transport's status text."""

    def __init__(self, message: str, status: str | None = None):
        self.status = lifecycle.status_of(message) or status
        invalid = InvalidRequestError.from_message(message)
        self.param = invalid.param if invalid else None
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        """2 for a rejected request parameter, else 3 (the server failed): see TransportError."""
        return VidtrtError.exit_code if self.param else TransportError.exit_code


def _split_url(url: str, protocol: str) -> str:
    url = url.strip()
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    url = url.rstrip("/")
    if ":" not in url:
        url += ":8001" if protocol == "grpc" else ":8000"
    return url


def _server_message(e: Exception) -> tuple[str, str | None]:
    msg = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    status = e.status() if hasattr(e, "status") and callable(e.status) else None
    msg = " ".join(str(msg).split())
    # Triton prefixes BLS errors with its own context; keep the model's message.
    return msg, status


class VideoClient:
    """Generate videos through a running server (``vidtrt serve``).

    ``url``: ``host:port`` of the gRPC endpoint (protocol ``grpc``, default port 8001) or the HTTP endpoint
    (``http``, default port 8000). ``model_name``: the generation model (``hunyuan_video``; over HTTP its
    ``_sync`` variant is used). ``timeout_s``: the request's deadline, sent to the server, which stops
    the generation once it passed (None = no deadline).
    """

    def __init__(self, url: str = "localhost:8001", protocol: str = "grpc", model_name: str = DEFAULT_MODEL,
                 timeout_s: float | None = None):
        if protocol not in PROTOCOLS:
            raise VidtrtError(f"invalid protocol {protocol!r}: accepted {list(PROTOCOLS)}")
        self.protocol = protocol
        self.url = _split_url(url, protocol)
        self.model_name = model_name if protocol == "grpc" else self._sync_name(model_name)
        self.timeout_s = timeout_s
        # One gRPC connection per calling thread, kept across requests (a stream per request on it).
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()

    def close(self) -> None:
        """Close the connections this client opened."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:
                pass
        self._local = threading.local()

    def __enter__(self) -> VideoClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _thread_client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._make_client()
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _drop_thread_client(self, client) -> None:
        """Forget a connection whose stream ended abnormally (the next request opens a fresh one)."""
        self._local.client = None
        with self._clients_lock:
            if client in self._clients:
                self._clients.remove(client)
        try:
            client.close()
        except Exception:
            pass

    @staticmethod
    def _sync_name(name: str) -> str:
        return name if name.endswith("_sync") else f"{name}_sync"

    # -- health ------------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        """The server is up and the generation model is ready."""
        try:
            client = self._make_client()
            try:
                return bool(client.is_server_ready() and client.is_model_ready(self.model_name))
            finally:
                client.close()
        except Exception:
            return False

    def _make_client(self):
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as grpcclient

                return grpcclient.InferenceServerClient(self.url)
            import tritonclient.http as httpclient

            timeout = self.timeout_s + TIMEOUT_GRACE_S if self.timeout_s is not None else 24 * 3600.0
            return httpclient.InferenceServerClient(self.url, connection_timeout=60.0, network_timeout=timeout)
        except ImportError:
            raise VidtrtError("tritonclient is not installed: pip install 'tritonclient[grpc,http]'") from None
        except Exception as e:
            msg = _server_message(e)[0]
            raise TransportError(f"cannot connect to {self.protocol} server at {self.url}: {msg}") from None

    def check_model_ready(self) -> None:
        """Raise VidtrtError (one line, exit 2) when this client's model is not ready on the server, naming the
        vidtrt generation models that are; TransportError when the server cannot be asked."""
        from vidtrt.config.families import FAMILIES

        generation = {name for f in FAMILIES.values() for name in (f.stream_model, f.sync_model)}
        if self.model_name not in generation:  # e.g. a component model (cogvideox_dit): it takes other inputs
            raise VidtrtError(f"{self.model_name!r} is not a vidtrt generation model: accepted "
                              f"{sorted(f.stream_model for f in FAMILIES.values())} (or leave out --model-name)")
        client = self._make_client()
        try:
            ready = client.is_model_ready(self.model_name)
        except Exception as e:
            raise TransportError(f"cannot ask the {self.protocol} server at {self.url} for its models: "
                                 f"{_server_message(e)[0]}") from None
        finally:
            client.close()
        if not ready:
            try:
                served = self.served_generation_model()
            except TransportError:
                raise
            except VidtrtError:
                served = None
            hint = f"it serves {served}" if served else "it serves no single vidtrt generation model"
            raise VidtrtError(f"the server at {self.url} has no model {self.model_name!r} ready ({hint}): "
                              "check --model-name")

    def served_generation_model(self) -> str:
        """The one vidtrt generation model the server has ready (its streaming name, e.g. ``hunyuan_video`` or
        ``cogvideox``): asks the server's model-readiness API (open to clients; ``vidtrt serve`` restricts the
        repository index) about each model family's generation model (:mod:`vidtrt.config.families`; over HTTP
        its ``_sync`` variant). Raises VidtrtError (one line) when none or several are ready, TransportError when
        the server cannot be asked."""
        from vidtrt.config.families import FAMILIES

        client = self._make_client()
        try:
            found = []
            for family in FAMILIES.values():
                name = family.stream_model if self.protocol == "grpc" else family.sync_model
                if client.is_model_ready(name):
                    found.append(family.stream_model)
        except Exception as e:
            raise TransportError(f"cannot ask the {self.protocol} server at {self.url} for its models: "
                                 f"{_server_message(e)[0]}") from None
        finally:
            client.close()
        if len(found) != 1:
            what = f"several vidtrt generation models ({', '.join(sorted(found))})" if found else \
                f"no vidtrt generation model ({', '.join(f.stream_model for f in FAMILIES.values())})"
            raise VidtrtError(f"the server at {self.url} has {what} ready: name one with --model-name")
        return found[0]

    # -- generation --------------------------------------------------------------------------------
    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        embedded_guidance_scale: float | None = None,
        flow_shift: float | None = None,
        seed: int | None = None,
        true_cfg_scale: float | None = None,
        prompt_policy: str = "truncate",
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
        guidance_scale: float | None = None,
        cache_policy: str | None = None,
        cache_threshold: float | None = None,
        cache_warmup_steps: int | None = None,
        sparse_window: str | None = None,
        sparse_steps: str | None = None,
        use_dynamic_cfg: bool | None = None,
    ) -> np.ndarray:
        """uint8 frames [num_frames, height, width, 3]; ``None`` arguments take the served model's defaults.

        The arguments are :meth:`vidtrt.runtime.pipeline.HunyuanVideoPipeline.generate`'s (``guidance_scale``:
        diffusers' name for ``embedded_guidance_scale``). Raises :class:`ServerRequestError` (``.param``
        names a bad input), :class:`~vidtrt.errors.CancelledError`.
        """
        request = GenerationRequest(
            prompt=prompt, negative_prompt=negative_prompt, height=height, width=width, num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            embedded_guidance_scale=embedded_guidance(embedded_guidance_scale, guidance_scale), flow_shift=flow_shift,
            seed=seed, true_cfg_scale=true_cfg_scale, prompt_policy=prompt_policy, cache_policy=cache_policy,
            cache_threshold=cache_threshold, cache_warmup_steps=cache_warmup_steps, sparse_window=sparse_window,
            sparse_steps=sparse_steps, use_dynamic_cfg=use_dynamic_cfg,
        )
        return self.run(request, progress=progress, cancel=cancel).frames

    def run(self, request: GenerationRequest, progress: Callable[[Progress], None] | None = None,
            cancel: threading.Event | Callable[[], bool] | None = None) -> GenerationResult:
        """Send one :class:`~vidtrt.config.request.GenerationRequest` (``output_format="mp4"`` also returns mp4
        bytes)."""
        arrays = request_io.request_to_inputs(request)
        if self.protocol == "grpc":
            return self._run_grpc(arrays, progress, cancel)
        return self._run_http(arrays)

    def _timeout_us(self) -> int | None:
        """The deadline as Triton's request timeout (microseconds), None without one."""
        return None if self.timeout_s is None else max(1, int(self.timeout_s * 1e6))

    def _inputs(self, module, arrays: dict[str, np.ndarray]) -> list:
        specs = {t.name: t for t in request_io.REQUEST_INPUTS}
        inputs = []
        for name, arr in arrays.items():
            inp = module.InferInput(name, list(arr.shape), specs[name].datatype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        return inputs

    def _run_grpc(self, arrays, progress, cancel) -> GenerationResult:
        import tritonclient.grpc as grpcclient

        is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        responses: queue.Queue = queue.Queue()
        client = self._thread_client()
        result = GenerationResult(frames=np.zeros((0, 0, 0, 3), np.uint8))
        start = time.perf_counter()
        cancelled = False
        ended = False  # the server ended the request (its final response or an error response arrived)
        clean = False  # ... and the stream is fit for the next request

        def cancel_request() -> None:
            nonlocal cancelled
            cancelled = True
            client.stop_stream(cancel_requests=True)

        try:
            client.start_stream(callback=lambda result, error: responses.put((result, error)))
            client.async_stream_infer(self.model_name, self._inputs(grpcclient, arrays),
                                      request_id=uuid.uuid4().hex, enable_empty_final_response=True,
                                      timeout=self._timeout_us())
            while True:
                # A response that already arrived is read before a cancel is acted on: cancelling a request
                # the server has ended wedges its model in tritonserver 2.51 (see the finally below).
                try:
                    res, err = responses.get(timeout=0.05)
                except queue.Empty:
                    res = err = None
                if err is not None:
                    ended = True  # the generation model sends every error response with the FINAL flag
                    msg, status = _server_message(err)
                    raise ServerRequestError(msg, status)
                if res is not None:
                    ev = _progress_event(res)
                    if ev is not None:
                        result.progress.append(ev)
                        if progress is not None:
                            progress(ev)
                    video = res.as_numpy("video")
                    if video is not None:
                        result.frames = video
                        mp4 = res.as_numpy("mp4")
                        result.mp4 = bytes(mp4.reshape(-1)[0]) if mp4 is not None else None
                        result.dit_calls, result.dit_calls_skipped = _dit_call_totals(res)
                    final = res.get_response().parameters.get("triton_final_response")
                    if final is not None and final.bool_param:
                        ended = True
                        if video is None:
                            raise ServerRequestError("the server ended the request without a video")
                        clean = True
                        break
                if is_cancelled is not None and is_cancelled():
                    cancel_request()
                    raise CancelledError("generation cancelled by the client")
                if self.timeout_s is not None and time.perf_counter() - start > self.timeout_s + TIMEOUT_GRACE_S:
                    cancel_request()
                    raise TransportError(f"no final response from {self.url} within {self.timeout_s:g} s "
                                         f"+ {TIMEOUT_GRACE_S:g} s (cancelled)")
        except KeyboardInterrupt:
            if not ended:
                cancel_request()
            raise
        except (ServerRequestError, CancelledError, VidtrtError):
            raise
        except Exception as e:
            msg, _ = _server_message(e)
            try:  # the stream reports the cause (e.g. connection refused) through the callback
                _, err = responses.get_nowait()
                if err is not None:
                    msg = _server_message(err)[0]
            except queue.Empty:
                pass
            raise TransportError(f"gRPC request to {self.url} failed: {msg}") from None
        finally:
            if not cancelled:
                try:
                    # Leaving before the request ended (the caller's progress callback raised, a transport
                    # error) cancels it on the server instead of waiting for its video. Never after it
                    # ended: tritonserver 2.51 then keeps the generation model referenced for good (it stays
                    # UNLOADING on unload, and SIGTERM runs into the exit timeout).
                    client.stop_stream(cancel_requests=not ended)
                except Exception:
                    clean = False
            if not clean:
                self._drop_thread_client(client)
        result.latency_s = time.perf_counter() - start
        return result

    def _run_http(self, arrays) -> GenerationResult:
        import tritonclient.http as httpclient

        client = self._make_client()
        start = time.perf_counter()
        outputs = [httpclient.InferRequestedOutput(name, binary_data=True)
                   for name in ("video", "dit_calls_total", "dit_calls_skipped_total")]
        if "mp4" in [v.decode() if isinstance(v, bytes) else v for v in arrays.get("output_format", [])]:
            outputs.append(httpclient.InferRequestedOutput("mp4", binary_data=True))
        try:
            res = client.infer(self.model_name, self._inputs(httpclient, arrays), outputs=outputs,
                               timeout=self._timeout_us())
        except Exception as e:
            msg, status = _server_message(e)
            if "connect" in msg.lower() or "refused" in msg.lower():
                raise TransportError(f"cannot reach HTTP server at {self.url}: {msg}") from None
            raise ServerRequestError(msg, status) from None
        finally:
            client.close()
        mp4 = res.as_numpy("mp4")
        calls, skipped = _dit_call_totals(res)
        return GenerationResult(frames=res.as_numpy("video"),
                                mp4=bytes(mp4.reshape(-1)[0]) if mp4 is not None else None,
                                latency_s=time.perf_counter() - start, dit_calls=calls, dit_calls_skipped=skipped)


def _dit_call_totals(res) -> tuple[int | None, int | None]:
    """(DiT calls made, saved) of a final response; None for a server that does not send them."""
    calls, skipped = res.as_numpy("dit_calls_total"), res.as_numpy("dit_calls_skipped_total")
    return (int(calls[0]) if calls is not None else None, int(skipped[0]) if skipped is not None else None)


def _progress_event(res) -> Progress | None:
    """The Progress of a step or tile response, None for others (the final one)."""
    elapsed = res.as_numpy("elapsed")
    for count, total, stage in (("step", "total_steps", "denoise"), ("tile", "total_tiles", "decode")):
        value = res.as_numpy(count)
        if value is not None:
            calls, skipped = res.as_numpy("dit_calls"), res.as_numpy("dit_calls_skipped")
            return Progress(int(value[0]), int(res.as_numpy(total)[0]), float(elapsed[0]), stage,
                            int(calls[0]) if calls is not None else None,
                            int(skipped[0]) if skipped is not None else None)
    return None
