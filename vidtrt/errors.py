"""Error types. Every message is one line that names the problem and what is accepted."""

from __future__ import annotations

import re


def one_line(exc: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """A library's exception as one line for our messages: its first non-empty line, whitespace
    collapsed, cut at ``limit`` characters; ``TypeName: ...`` with ``with_type`` (or when it is empty)."""
    line = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
    text = " ".join(line.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if with_type or not text:
        text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text


class VidtrtError(Exception):
    """Base class for errors vidtrt reports to users (error responses in Triton; in the CLI one line and
    ``exit_code``: 2, a bad request or setting, unless a subclass says otherwise)."""

    exit_code = 2


class ConfigError(VidtrtError, ValueError):
    """A model configuration or a runtime setting (e.g. an attention backend) is invalid."""


class InvalidRequestError(VidtrtError, ValueError):
    """A generation request parameter is out of range.

    ``param`` is the request field's name, so transports can map it (CLI flag, Triton input). Between
    processes (Triton carries an error as a message only) it travels as its message,
    ``invalid PARAM=VALUE: accepted ACCEPTED``, and :meth:`from_message` is the one way back.
    """

    _MESSAGE = re.compile(r"invalid ([A-Za-z_][A-Za-z0-9_]*)=(.*?): accepted (.*)", re.S)

    def __init__(self, param: str, value: object, accepted: str, *, shown: str | None = None):
        self.param = param
        self.value = value
        self.accepted = accepted
        if shown is None:
            shown = repr(value) if not isinstance(value, str) or len(value) < 80 else repr(value[:77] + "...")
        self.shown = shown
        super().__init__(f"invalid {param}={shown}: accepted {accepted}")

    @classmethod
    def from_message(cls, message: str) -> InvalidRequestError | None:
        """The error whose ``str()`` is ``message`` (``value`` is then its text as shown), or None when
        ``message`` is not one."""
        m = cls._MESSAGE.fullmatch(message.strip())
        if m is None:
            return None
        return cls(m.group(1), m.group(2), m.group(3), shown=m.group(2))

    def renamed(self, param: str) -> InvalidRequestError:
        """The same rejection for request field ``param`` (e.g. the negative prompt, encoded as a prompt)."""
        return InvalidRequestError(param, self.value, self.accepted, shown=self.shown)


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
