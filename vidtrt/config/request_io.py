"""The one declaration of the generation model's request and response tensors.

Used by the BLS model (parse a request, build responses), the clients (build a request, read
responses), the ``config.pbtxt`` generator and the perf_analyzer input file, so the wire format is
written down exactly once.

Request: ``prompt`` (required) and optional knobs, every one a ``[1]`` tensor (``max_batch_size: 0``).
Responses of the streaming (decoupled) model: one *progress* response per denoising step carrying
``step``, ``total_steps``, ``elapsed``, ``dit_calls`` and ``dit_calls_skipped`` (step caching), then one
*decode progress* response per VAE tile carrying ``tile``, ``total_tiles`` and ``elapsed`` (no ``step``:
clients that only know steps skip them), then the *final* response carrying ``video`` (and ``mp4`` when
``output_format`` is ``"mp4"``), ``dit_calls_total`` and ``dit_calls_skipped_total``. The non-decoupled
variant sends the final response only.

The request's deadline is Triton's request timeout, not an input (:mod:`vidtrt.config.lifecycle`).

No torch here: clients import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from vidtrt.config.request import GenerationRequest
from vidtrt.errors import InvalidRequestError

# Triton config type -> (numpy dtype for the tensor, tritonclient datatype string)
_TYPES: dict[str, tuple[type, str]] = {
    "TYPE_STRING": (np.object_, "BYTES"),
    "TYPE_INT32": (np.int32, "INT32"),
    "TYPE_INT64": (np.int64, "INT64"),
    "TYPE_FP32": (np.float32, "FP32"),
    "TYPE_UINT8": (np.uint8, "UINT8"),
    "TYPE_BOOL": (np.bool_, "BOOL"),
}


@dataclass(frozen=True)
class IOTensor:
    """One tensor of the generation model.

    An input's ``name`` is the :class:`~vidtrt.config.request.GenerationRequest` field it fills (one name on
    the wire, in the request and in the Python keywords). ``dims``: Triton dims (-1 = dynamic); with
    ``max_batch_size: 0`` they are the full shape.
    """

    name: str
    triton_type: str
    dims: tuple[int, ...]
    optional: bool = True
    doc: str = ""

    @property
    def numpy_dtype(self) -> type:
        return _TYPES[self.triton_type][0]

    @property
    def datatype(self) -> str:
        """tritonclient's datatype string (``BYTES``, ``INT32``, ...)."""
        return _TYPES[self.triton_type][1]

    @property
    def is_string(self) -> bool:
        return self.triton_type == "TYPE_STRING"

    def pbtxt(self, with_optional: bool = True) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        opt = " optional: true" if (with_optional and self.optional) else ""
        return f'  {{ name: "{self.name}" data_type: {self.triton_type} dims: [ {dims} ]{opt} }}'


REQUEST_INPUTS: tuple[IOTensor, ...] = (
    IOTensor("prompt", "TYPE_STRING", (1,), optional=False, doc="text prompt (UTF-8)"),
    IOTensor("negative_prompt", "TYPE_STRING", (1,),
             doc="negative prompt for true CFG (default: the model's)"),
    IOTensor("height", "TYPE_INT32", (1,), doc="pixels, multiple of 16"),
    IOTensor("width", "TYPE_INT32", (1,), doc="pixels, multiple of 16"),
    IOTensor("num_frames", "TYPE_INT32", (1,), doc="video frames, 4k + 1"),
    IOTensor("num_inference_steps", "TYPE_INT32", (1,), doc="denoising steps"),
    IOTensor("embedded_guidance_scale", "TYPE_FP32", (1,),
             doc="embedded guidance scale (diffusers' guidance_scale)"),
    IOTensor("flow_shift", "TYPE_FP32", (1,), doc="flow-matching shift"),
    IOTensor("seed", "TYPE_INT64", (1,), doc="noise seed, 0 .. 2**63-1"),
    IOTensor("true_cfg_scale", "TYPE_FP32", (1,), doc="1.0 = off; > 1 = two DiT passes per step"),
    IOTensor("prompt_policy", "TYPE_STRING", (1,), doc="'truncate' or 'error'"),
    IOTensor("output_format", "TYPE_STRING", (1,),
             doc="'frames' (video only) or 'mp4' (video + mp4 bytes)"),
    IOTensor("cache_policy", "TYPE_STRING", (1,),
             doc="step caching: 'none', 'easycache' or 'teacache' (default: the model's)"),
    IOTensor("cache_threshold", "TYPE_FP32", (1,),
             doc="step caching: accumulated change that calls the DiT; 0 = never skip"),
    IOTensor("cache_warmup_steps", "TYPE_INT32", (1,), doc="step caching: first steps that always call the DiT"),
    IOTensor("sparse_window", "TYPE_STRING", (1,), doc="STA backends: 't,h,w' window in tiles (model default)"),
    IOTensor("sparse_steps", "TYPE_STRING", (1,), doc="STA backends: 'start:stop' steps run sparse"),
    IOTensor("use_dynamic_cfg", "TYPE_BOOL", (1,),
             doc="CogVideoX: CFG scale on diffusers' cosine schedule (default: the model's, false)"),
)

RESPONSE_OUTPUTS: tuple[IOTensor, ...] = (
    IOTensor("step", "TYPE_INT32", (1,), doc="progress: finished denoising steps (1-based)"),
    IOTensor("total_steps", "TYPE_INT32", (1,), doc="progress: denoising steps of the request"),
    IOTensor("elapsed", "TYPE_FP32", (1,), doc="progress: seconds since the request started"),
    IOTensor("tile", "TYPE_INT32", (1,), doc="decode progress: VAE tiles decoded (1-based)"),
    IOTensor("total_tiles", "TYPE_INT32", (1,), doc="decode progress: VAE tiles of the request's decode"),
    IOTensor("dit_calls", "TYPE_INT32", (1,), doc="progress: DiT calls this step made (0: it reused the cache)"),
    IOTensor("dit_calls_skipped", "TYPE_INT32", (1,), doc="progress: DiT calls this step saved by step caching"),
    IOTensor("dit_calls_total", "TYPE_INT32", (1,), doc="final: DiT calls the generation made"),
    IOTensor("dit_calls_skipped_total", "TYPE_INT32", (1,), doc="final: DiT calls step caching saved"),
    IOTensor("video", "TYPE_UINT8", (-1, -1, -1, 3), doc="final: uint8 frames [F, H, W, 3]"),
    IOTensor("mp4", "TYPE_STRING", (1,), doc="final, output_format='mp4' only: H.264 mp4 bytes"),
)

PROGRESS_OUTPUTS = ("step", "total_steps", "elapsed", "dit_calls", "dit_calls_skipped")
DECODE_PROGRESS_OUTPUTS = ("tile", "total_tiles", "elapsed")
FINAL_OUTPUTS = ("video", "mp4", "dit_calls_total", "dit_calls_skipped_total")

_BY_NAME = {t.name: t for t in REQUEST_INPUTS}
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


# ------------------------------------------------------------------------------------------ client side
def request_to_inputs(request: GenerationRequest) -> dict[str, np.ndarray]:
    """Numpy inputs for a request: every field that is set (``None`` fields are left out, so the server
    applies the model's defaults). Raises InvalidRequestError naming the input for values that cannot
    be sent (wrong type, outside the tensor type's range); ranges are the server's to check."""
    out: dict[str, np.ndarray] = {}
    for t in REQUEST_INPUTS:
        value = getattr(request, t.name)
        if value is None:
            continue
        out[t.name] = encode_value(t, value)
    return out


def encode_value(t: IOTensor, value: object) -> np.ndarray:
    """A ``[1]`` numpy array for one input value (type-checked, range-checked for the tensor type)."""
    if t.is_string:
        if not isinstance(value, (str, bytes)):
            raise InvalidRequestError(t.name, value, "a string")
        data = value.encode("utf-8") if isinstance(value, str) else value
        return np.array([data], dtype=np.object_)
    if t.triton_type == "TYPE_BOOL":
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidRequestError(t.name, value, "true or false")
        return np.array([bool(value)], dtype=np.bool_)
    if t.triton_type in ("TYPE_INT32", "TYPE_INT64"):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidRequestError(t.name, value, "an integer")
        low, high = _INT32 if t.triton_type == "TYPE_INT32" else _INT64
        if not low <= int(value) <= high:
            raise InvalidRequestError(t.name, value, f"an integer in [{low}, {high}] ({t.datatype})")
        return np.array([int(value)], dtype=t.numpy_dtype)
    if t.triton_type == "TYPE_FP32":
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidRequestError(t.name, value, "a number")
        return np.array([value], dtype=np.float32)
    raise TypeError(f"{t.name}: no encoder for {t.triton_type}")


def perf_analyzer_inputs(request: GenerationRequest) -> dict[str, list]:
    """One perf_analyzer ``--input-data`` entry (JSON-ready) for a request."""
    entry: dict[str, object] = {}
    for name, arr in request_to_inputs(request).items():
        if arr.dtype == np.object_:
            entry[name] = [v.decode("utf-8") for v in arr.tolist()]
        else:
            entry[name] = arr.tolist()
    return entry


# ------------------------------------------------------------------------------------------ server side
def inputs_to_request(get: Callable[[str], np.ndarray | None] | Mapping[str, np.ndarray | None]) -> GenerationRequest:
    """The GenerationRequest of a request's numpy inputs (``get(name)`` -> array or None when absent).

    Checks what the wire can get wrong (missing prompt, dtype, a shape other than one element, bytes that
    are not UTF-8), raising InvalidRequestError naming the input. Values are not range-checked here
    (:meth:`GenerationRequest.validate` does that, naming the same inputs).
    """
    lookup = get.get if isinstance(get, Mapping) else get
    kwargs: dict[str, object] = {}
    for t in REQUEST_INPUTS:
        arr = lookup(t.name)
        if arr is None:
            if not t.optional:
                raise InvalidRequestError(t.name, None, "a [1] string tensor (required input)")
            continue
        kwargs[t.name] = decode_value(t, np.asarray(arr))
    return GenerationRequest(**kwargs)


def decode_value(t: IOTensor, arr: np.ndarray) -> object:
    """The Python value of a ``[1]`` input array (str, bool, int or float)."""
    if arr.shape != (1,):
        raise InvalidRequestError(t.name, f"<tensor of shape {list(arr.shape)}>", f"a [1] {t.datatype} tensor")
    v = arr.reshape(-1)[0]
    if t.is_string:
        if isinstance(v, (bytes, np.bytes_)):
            try:
                return bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequestError(t.name, bytes(v)[:60], "UTF-8 text") from None
        if isinstance(v, str):
            return v
        raise InvalidRequestError(t.name, v, f"a [1] {t.datatype} tensor")
    if t.triton_type == "TYPE_BOOL":
        if arr.dtype.kind != "b":
            raise InvalidRequestError(t.name, f"<{arr.dtype} tensor>", f"a [1] {t.datatype} tensor")
        return bool(v)
    if t.triton_type in ("TYPE_INT32", "TYPE_INT64"):
        if arr.dtype.kind not in "iu":
            raise InvalidRequestError(t.name, f"<{arr.dtype} tensor>", f"a [1] {t.datatype} tensor")
        return int(v)
    if arr.dtype.kind not in "fiu":
        raise InvalidRequestError(t.name, f"<{arr.dtype} tensor>", f"a [1] {t.datatype} tensor")
    return float(v)  # NaN / inf are GenerationRequest.validate's to reject, naming the field


def progress_outputs(step: int, total: int, elapsed_s: float, dit_calls: int | None = None,
                     dit_calls_skipped: int | None = None) -> dict[str, np.ndarray]:
    """Arrays of one progress response (``dit_calls`` / ``dit_calls_skipped``: this step's, when known)."""
    out = {
        "step": np.array([step], dtype=np.int32),
        "total_steps": np.array([total], dtype=np.int32),
        "elapsed": np.array([elapsed_s], dtype=np.float32),
    }
    if dit_calls is not None:
        out["dit_calls"] = np.array([dit_calls], dtype=np.int32)
        out["dit_calls_skipped"] = np.array([dit_calls_skipped or 0], dtype=np.int32)
    return out


def decode_progress_outputs(tile: int, total: int, elapsed_s: float) -> dict[str, np.ndarray]:
    """Arrays of one decode progress response (a VAE tile decoded)."""
    return {
        "tile": np.array([tile], dtype=np.int32),
        "total_tiles": np.array([total], dtype=np.int32),
        "elapsed": np.array([elapsed_s], dtype=np.float32),
    }


def final_outputs(frames: np.ndarray, mp4: bytes | None = None, dit_calls: int | None = None,
                  dit_calls_skipped: int | None = None) -> dict[str, np.ndarray]:
    """Arrays of the final response: ``video`` uint8 [F, H, W, 3] (+ ``mp4`` bytes, + the DiT calls the
    generation made and those step caching saved, when given)."""
    out = {"video": np.ascontiguousarray(frames, dtype=np.uint8)}
    if mp4 is not None:
        out["mp4"] = np.array([mp4], dtype=np.object_)
    if dit_calls is not None:
        out["dit_calls_total"] = np.array([dit_calls], dtype=np.int32)
        out["dit_calls_skipped_total"] = np.array([dit_calls_skipped or 0], dtype=np.int32)
    return out


# ------------------------------------------------------------------------------------------ config.pbtxt
def config_io_pbtxt(decoupled: bool = True) -> str:
    """The ``input [...]`` and ``output [...]`` stanzas of the generation model's config.pbtxt.

    The non-decoupled variant declares the same outputs (progress outputs are simply never sent).
    """
    del decoupled  # same tensors either way; kept for callers that want to say which
    ins = ",\n".join(t.pbtxt() for t in REQUEST_INPUTS)
    outs = ",\n".join(t.pbtxt(with_optional=False) for t in RESPONSE_OUTPUTS)
    return f"input [\n{ins}\n]\noutput [\n{outs}\n]\n"


def describe() -> str:
    """A human-readable table of the inputs and outputs (README, ``--help``)."""
    rows = [f"  {t.name:<20} {t.datatype:<6} {list(t.dims)!s:<16} {'required' if not t.optional else ''} {t.doc}"
            for t in REQUEST_INPUTS]
    rows.append("outputs:")
    rows += [f"  {t.name:<20} {t.datatype:<6} {list(t.dims)!s:<16} {t.doc}" for t in RESPONSE_OUTPUTS]
    return "inputs:\n" + "\n".join(rows)
