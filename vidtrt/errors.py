"""Error types. Every message is one line that names the problem and what is accepted."""

from __future__ import annotations


class VidtrtError(Exception):
    """Base class for errors vidtrt reports to users (error responses in Triton; in the CLI one line and
    ``exit_code``: 2, a bad request or setting, unless a subclass says otherwise)."""

    exit_code = 2


class ConfigError(VidtrtError, ValueError):
    """A model configuration or a runtime setting (e.g. an attention backend) is invalid."""


class InvalidRequestError(VidtrtError, ValueError):
    """A generation request parameter is out of range.

    ``param`` is the request field's name, so transports can map it (CLI flag, Triton input).
    """

    def __init__(self, param: str, value: object, accepted: str):
        self.param = param
        self.value = value
        self.accepted = accepted
        shown = repr(value) if not isinstance(value, str) or len(value) < 80 else repr(value[:77] + "...")
        super().__init__(f"invalid {param}={shown}: accepted {accepted}")


class CheckpointError(VidtrtError):
    """A checkpoint folder or file is missing, unreadable or does not match the model."""


class EngineError(VidtrtError):
    """An engine cannot run: missing artifact, missing runtime, or inputs outside its spec."""


class NonFiniteError(VidtrtError):
    """A component produced NaN or inf (fp16 overflow is the usual cause): the generation failed, the
    request was fine. Checked after every denoising step and on the decoded video, never written out."""

    exit_code = 1


class TransportError(VidtrtError):
    """The server or the way to it failed, not the request (unreachable, timed out, an internal error,
    a response without a video): ``vidtrt generate`` exits 3, so scripts can tell it from a bad request."""

    exit_code = 3


class CancelledError(VidtrtError):
    """The generation was cancelled (by the caller, or by a server shutting down): raised between denoising
    steps and between VAE tiles."""


class DeadlineExceededError(CancelledError):
    """The request's deadline passed before the generation finished (checked between denoising steps and
    between VAE tiles, so it stops within one of them)."""
