"""A request-size guard in front of tritonserver's HTTP endpoint (aiohttp reverse proxy, own thread).

Why: the HTTP server of the bundled tritonserver 2.51 (libevhtp) parses every request body sent with
``Content-Type: application/x-www-form-urlencoded`` (what ``curl -d`` and Python's urllib send by
default) into two stack buffers of the body's size, whatever the URL, even one with no model behind it.
A body over about half a worker thread's stack overflows it and the whole server dies with SIGSEGV,
every model with it: above ~4.18 MB with the usual 8 MiB stack (``ulimit -s 8192``), ~1.04 MB under
``ulimit -s unlimited`` (glibc then gives threads 2 MiB). 2.51 has no option that limits request
bodies (``--http-max-input-size`` came in later releases).

A small request kills it too: an ``/infer`` JSON input whose ``shape`` claims more elements than memory
holds (``[1000000000000]``: SIGABRT, ``[4611686018427387904]``: SIGSEGV), whatever its ``data``; 2.51 sizes
its buffer from the shape before it compares the two.

So Triton's HTTP port binds 127.0.0.1 on a private port and this guard binds the public one. It answers
413 to a body over ``max_request_bytes`` (by ``Content-Length`` before reading it, by counting for chunked
bodies), 400 to an ``/infer`` input whose shape has more elements than the body has bytes (every element
takes at least one byte of JSON or binary data, unless the input is in shared memory), never sends a form
content type on (Triton's API reads JSON and binary tensors, never form fields: dropping the header keeps
libevhtp's parser from running even when the limit is raised), and forwards everything else unchanged,
streaming the answer back (server-sent events included).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading

from vidtrt.errors import one_line

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

# Per connection, not passed on (RFC 9110 7.6.1); Host and Content-Length are set again for the next hop.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "host", "content-length"}


_INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


def infer_body_error(body: bytes, header_length: str | None) -> str | None:
    """Why an ``/infer`` body cannot be valid, or None: its JSON header does not parse (tritonserver 2.51
    answers that with 500, as if the server had failed), or an input's shape has more elements than the
    body has bytes (that kills 2.51). ``header_length``: the ``Inference-Header-Content-Length`` header
    (JSON, then binary data)."""
    try:
        n = int(header_length) if header_length is not None else len(body)
    except ValueError:
        return f"Inference-Header-Content-Length {str(header_length)[:40]!r} is not an integer"
    try:
        header = json.loads(body[:n])
    except ValueError as e:
        return f"the request's JSON is not valid: {one_line(e, 120)}"
    except RecursionError:
        return "the request's JSON is nested too deeply"
    inputs = header.get("inputs") if isinstance(header, dict) else None
    for item in inputs if isinstance(inputs, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("shape"), list):
            continue
        shape, params = item["shape"], item.get("parameters")
        if isinstance(params, dict) and "shared_memory_region" in params:
            continue
        if all(type(d) is int and d >= 0 for d in shape) and _elements_over(shape, len(body)):
            return (f"input {str(item.get('name'))[:100]!r} has shape {str(shape)[:200]}: "
                    f"more elements than a request body of {len(body)} bytes can hold")
    return None


def _elements_over(shape: list[int], bound: int) -> bool:
    """Whether the product of ``shape`` exceeds ``bound``, without multiplying out a huge product."""
    if 0 in shape:
        return False
    count = 1
    for d in shape:
        count *= d
        if count > bound:
            return True
    return False


def too_large_message(limit: int, size: int | None) -> str:
    got = f"of {size} bytes " if size is not None else ""
    return (f"request body {got}over this server's limit of {limit} bytes "
            "(vidtrt serve --max-request-bytes)")


class HttpGuard:
    """Listen on ``host:port``, forward to ``http://upstream_host:upstream_port`` (see the module docstring).

    ``start()`` returns once the port is bound (raises OSError if it cannot be); ``stop()`` closes it.
    """

    def __init__(self, host: str, port: int, upstream_host: str, upstream_port: int, max_request_bytes: int) -> None:
        if max_request_bytes <= 0:
            raise ValueError("max_request_bytes must be positive")
        self.host, self.port = host, port
        self.upstream = f"http://{upstream_host}:{upstream_port}"
        self.max_request_bytes = int(max_request_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self._session = None

    # -- life cycle (called from any thread) --------------------------------------------------------
    def start(self) -> HttpGuard:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"vidtrt-http-guard-{self.port}", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=30)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), loop).result(timeout=15)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()

    # -- inside the guard's event loop --------------------------------------------------------------
    async def _start(self) -> None:
        import aiohttp
        from aiohttp import web

        app = web.Application(client_max_size=self.max_request_bytes)
        app.router.add_route("*", "/{tail:.*}", self._forward, expect_handler=self._expect)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        # One upstream connection per request (force_close), no pool limit: on SIGTERM tritonserver waits
        # (up to --exit-timeout-secs, then exits 1) until its HTTP connections close, so an idle kept-alive
        # one must not exist; a request in flight keeps its connection to the end, as it should. Triton
        # answers compressed only when the client asked for it: nothing is decompressed or re-encoded here.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        # What cleanup leaves behind (a connection still dropping the rest of a refused body): end it here
        # rather than leave it pending in a loop about to close.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _error(self, status: int, message: str):
        from aiohttp import web

        return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")

    async def _expect(self, request):
        """``Expect: 100-continue`` (curl sends it for large bodies): 413 at once for a too-large
        Content-Length, else "continue" (what aiohttp does by default)."""
        if request.content_length is not None and request.content_length > self.max_request_bytes:
            return self._error(413, too_large_message(self.max_request_bytes, request.content_length))
        if request.headers.get("Expect", "").lower() != "100-continue":
            return self._error(417, f"unknown Expect: {request.headers.get('Expect')}")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def _forward(self, request):
        import aiohttp
        from aiohttp import web
        from yarl import URL

        limit = self.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            # Answered before the body is read; aiohttp reads and drops the rest (up to 10 s) so that a
            # client that sends everything before it reads still gets this answer.
            return self._error(413, too_large_message(limit, request.content_length))
        try:
            body = await request.read()  # counts chunked bodies too: stops past client_max_size
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, too_large_message(limit, None))
        if request.method == "POST" and _INFER_PATH.match(request.path):
            problem = infer_body_error(body, request.headers.get("Inference-Header-Content-Length"))
            if problem:
                return self._error(400, problem)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
                   and not (k.lower() == "content-type" and v.strip().lower().startswith(FORM_CONTENT_TYPE))]
        try:
            upstream = await self._session.request(
                request.method, URL(self.upstream + request.raw_path, encoded=True), headers=headers,
                data=body if request.body_exists else None, allow_redirects=False,
            )
        except aiohttp.ClientError as e:
            return self._error(502, f"tritonserver is not answering: {e}")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP_BY_HOP:
                    response.headers.add(k, v)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except aiohttp.ClientError:  # tritonserver went away mid-answer: so does this answer
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
