"""uvicorn's HTTP protocol (httptools) with the guards uvicorn lacks: a cap on open connections, a
deadline and a size limit for request headers, and no connection kept open by a body nobody reads.

* **Connection cap.** A connection past ``max_connections`` is answered ``503`` with ``Retry-After``
  (JSON, like every other error) and closed, so a flood of idle sockets cannot exhaust the file
  descriptors. (uvicorn's ``limit_concurrency`` answers only once a request's headers are in, so it
  never sees a client that sends none.)
* **Header deadline.** The request line and headers must arrive within ``header_timeout_s`` of the
  connection opening, or of the first byte of a later request on a kept-alive connection; else ``408``
  and the connection closes. uvicorn starts no timer before the headers are complete.
* **Header size.** More than ``max_header_bytes`` before the headers are complete is ``431``.
* **Unread bodies.** When the response is complete but the client is still sending the request body
  (the app answered without reading it, e.g. a 401 or 404), the connection is closed: uvicorn would
  otherwise keep it open for as long as the client drips.

The body itself, once the headers are in, is bounded by the app's request deadline (see
:mod:`.app`), which answers ``408`` JSON while the upload is still arriving.
"""

from __future__ import annotations

import json
import logging
import time
from asyncio import BaseTransport, TimerHandle, Transport
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import ConnectionLimits

logger = logging.getLogger(__name__)

REFUSED_LINGER_S = 1.0  # a refused connection that sends nothing is closed after this
LOG_EVERY_S = 10.0  # refusals and timeouts are logged at most once per this many seconds


def raw_response(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete ``{"error": message}`` HTTP/1.1 response that closes the connection."""
    body = json.dumps({"error": message}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Throttled:
    """Count events and log them at most once per :data:`LOG_EVERY_S`."""

    def __init__(self, level: int, message: str) -> None:
        self.level, self.message = level, message
        self.count, self.last = 0, 0.0

    def __call__(self, **fields: Any) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S:
            logger.log(self.level, self.message, {"count": self.count, **fields})
            self.count, self.last = 0, now


_REFUSED = _Throttled(
    logging.WARNING, "refused %(count)d connection(s): %(limit)d open already (--max-connections)"
)
_SLOW_HEADERS = _Throttled(
    logging.INFO, "closed %(count)d connection(s) whose headers took over %(timeout)g s"
)
_LARGE_HEADERS = _Throttled(logging.INFO, "closed %(count)d connection(s) with over %(limit)d header bytes")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` with :class:`ConnectionLimits`.

    Pass it to uvicorn as ``http=functools.partial(GuardedHttpToolsProtocol, limits=...)``.
    """

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._refused = False
        self._reading_headers = True
        self._header_bytes = 0
        self._header_deadline: TimerHandle | None = None

    # -- the connection ------------------------------------------------------------------------------
    def connection_made(self, transport: BaseTransport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)  # type: ignore[arg-type]
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # the request came after the 503: read (so closing resets nothing), then close
            self.transport.close()
            return
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._reading_headers and self._header_bytes > self.limits.max_header_bytes:
            _LARGE_HEADERS(limit=self.limits.max_header_bytes)
            self._close_with(
                431, f"the request line and headers are larger than {self.limits.max_header_bytes} bytes"
            )

    # -- parser callbacks ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        if self._header_deadline is None:
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes = 0
        self._cancel_header_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is None or self.transport.is_closing():
            return
        if self.cycle.more_body:
            self.transport.close()  # answered before the body was read: do not wait for the rest of it
        elif self.cycle.response_complete:
            self._reading_headers = True  # the next bytes are the next request's

    # -- the guards ----------------------------------------------------------------------------------
    def _arm_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        _SLOW_HEADERS(timeout=self.limits.header_timeout_s)
        self._close_with(408, f"the request headers did not arrive within {self.limits.header_timeout_s:g} s")

    def _close_with(self, status: int, message: str) -> None:
        """Answer ``status`` (unless a response is being sent) and close the connection."""
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(raw_response(status, message))
        self.transport.close()

    def _refuse(self, transport: Transport) -> None:
        """Answer 503 to a connection past the cap at once, and close it when its request arrives (or it
        closes, or :data:`REFUSED_LINGER_S` passes): closing before its request was read would reset the
        connection, and the client might lose the 503."""
        self._refused = True
        self.transport = transport
        _REFUSED(limit=self.limits.max_connections)
        transport.write(
            raw_response(
                503,
                f"the server has {self.limits.max_connections} connections open, its limit; retry in 1 s",
                {"retry-after": "1"},
            )
        )
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(REFUSED_LINGER_S, transport.close)
