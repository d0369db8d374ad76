"""uvicorn's HTTP protocol (httptools) with the guards uvicorn lacks: a fair share of the connections, a
deadline and a size limit for request headers, and no connection kept open by a body nobody reads.

* **Connections, shared fairly.** At most ``max_connections`` are open, and at most
  ``max_connections_per_client`` from one client (one IPv4 address, or one IPv6 /64 network). A new
  connection past either cap first takes the place of an idle kept-alive connection (the one idle
  longest; of the same client, past the client's cap), which is closed as HTTP allows; when the server
  is full and none is idle, it takes the place of the oldest connection still waiting for its headers of
  the client that holds the most connections, if that client holds more than the newcomer's would.
  Only when neither frees a place is the newcomer answered ``503`` with ``Retry-After`` (JSON, like
  every other error) and closed. So clients that keep hundreds of connections open, or a slowloris that
  reconnects as soon as it is dropped, cannot shut out others; no request that is being answered is
  ever cut off. (uvicorn's ``limit_concurrency`` answers only once a request's headers are in, so it
  never sees a client that sends none.)
* **Header deadline.** The request line and headers must arrive within ``header_timeout_s`` of the
  connection opening, or of the first byte of a later request on a kept-alive connection; else ``408``
  and the connection closes. uvicorn starts no timer before the headers are complete.
* **Header size.** More than ``max_header_bytes`` of request line and headers is ``431``, whether they
  arrive byte by byte or complete in one write; the app never sees such a request.
* **Unread bodies.** When the response is complete but the client is still sending the request body
  (the app answered without reading it, e.g. a 401 or 404), the connection is closed: uvicorn would
  otherwise keep it open for as long as the client drips.

The body itself, once the headers are in, is bounded by the app's request deadline (see
:mod:`.app`), which answers ``408`` JSON while the upload is still arriving.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import weakref
from asyncio import BaseTransport, TimerHandle, Transport
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr

from .settings import ConnectionLimits

logger = logging.getLogger(__name__)

REFUSED_LINGER_S = 1.0  # a refused connection that sends nothing is closed after this
LOG_EVERY_S = 10.0  # refusals and timeouts are logged at most once per this many seconds
HEADER_LINE_OVERHEAD = 4  # ": " and CRLF of each header line, counted with its name and value


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


def client_key(address: tuple[str, int] | None) -> str | None:
    """Who a connection belongs to, for the per-client cap: its IPv4 address, or the /64 network of its
    IPv6 address (one host is usually given a whole /64); None for a Unix socket."""
    if address is None:
        return None
    try:
        ip = ipaddress.ip_address(address[0].split("%")[0])
    except ValueError:
        return address[0]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


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


_REFUSED = _Throttled(logging.WARNING, "refused %(count)d connection(s): %(reason)s")
_EVICTED = _Throttled(
    logging.INFO, "closed %(count)d idle or header-waiting connection(s) to make room for new ones"
)
_SLOW_HEADERS = _Throttled(
    logging.INFO, "closed %(count)d connection(s) whose headers took over %(timeout)g s"
)
_LARGE_HEADERS = _Throttled(logging.INFO, "closed %(count)d connection(s) with over %(limit)d header bytes")


@dataclass
class _Refusals:
    """Connections of one server answered 503 and not yet closed (each holds a file descriptor)."""

    lingering: int = 0


_REFUSALS: weakref.WeakKeyDictionary[Any, _Refusals] = weakref.WeakKeyDictionary()  # per uvicorn server


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` with :class:`ConnectionLimits`.

    Pass it to uvicorn as ``http=functools.partial(GuardedHttpToolsProtocol, limits=...)``.
    """

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.client_key: str | None = None
        self.opened_at = 0.0
        self.idle_since = 0.0  # when the last response ended (while the keep-alive timer runs)
        self._refused = False
        self._reading_headers = True
        self._header_bytes = 0  # bytes received while the headers are incomplete
        self._parsed_header_bytes = 0  # the request line and headers the parser has handed over
        self._header_deadline: TimerHandle | None = None

    # -- the connection ------------------------------------------------------------------------------
    def connection_made(self, transport: BaseTransport) -> None:  # type: ignore[override]
        self.client_key = client_key(get_remote_addr(transport))  # type: ignore[arg-type]
        self.opened_at = time.monotonic()  # (uvloop's loop.time() counts whole milliseconds)
        refusal = self._make_room()
        if refusal is not None:
            self._refuse(transport, refusal)  # type: ignore[arg-type]
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # the request came after the 503: read (so closing resets nothing), then close
            self.transport.close()
            return
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if (
            self._reading_headers
            and self._header_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._headers_too_large()

    # -- parser callbacks ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._parsed_header_bytes = 0
        if self._header_deadline is None:
            self._arm_header_deadline()

    def on_url(self, url: bytes) -> None:
        self._parsed_header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_header_bytes += len(name) + len(value) + HEADER_LINE_OVERHEAD
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes = 0
        self._cancel_header_deadline()
        if self._parsed_header_bytes > self.limits.max_header_bytes:
            self._headers_too_large()  # and the app never sees this request
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.transport.is_closing():  # refused (431) before a request cycle began
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self.transport.is_closing():
            return
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is None or self.transport.is_closing():
            return
        if self.cycle.more_body:
            self.transport.close()  # answered before the body was read: do not wait for the rest of it
        elif self.cycle.response_complete:
            self._reading_headers = True  # the next bytes are the next request's
            self.idle_since = time.monotonic()

    # -- what a connection is doing ------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Kept alive between requests: a response ended and no byte of another request has come."""
        return self.timeout_keep_alive_task is not None and not self.transport.is_closing()

    @property
    def waiting_for_headers(self) -> bool:
        """No request is being answered: the connection has sent nothing yet, or only part of its headers."""
        return (
            self._reading_headers
            and not self.idle
            and (self.cycle is None or self.cycle.response_complete)
            and not self.transport.is_closing()
        )

    # -- the guards ----------------------------------------------------------------------------------
    def _make_room(self) -> str | None:
        """Close an idle or header-waiting connection if the caps call for it; the reason to refuse this
        new connection when none may be closed, else None."""
        open_now: list[GuardedHttpToolsProtocol] = [
            connection for connection in self.connections if isinstance(connection, GuardedHttpToolsProtocol)
        ]
        per_client = self.limits.max_connections_per_client
        if per_client and self.client_key is not None:
            own = [connection for connection in open_now if connection.client_key == self.client_key]
            if len(own) >= per_client:
                if not self._evict(min((c for c in own if c.idle), key=_idle_since, default=None)):
                    return (
                        f"this client has {per_client} connections open, the most one client may hold; "
                        "reuse them, or retry in 1 s"
                    )
                return None
        if len(self.connections) < self.limits.max_connections:
            return None
        if self._evict(min((c for c in open_now if c.idle), key=_idle_since, default=None)):
            return None
        if self._evict(self._greediest_waiting(open_now)):
            return None
        return f"the server has {self.limits.max_connections} connections open, its limit; retry in 1 s"

    def _greediest_waiting(self, open_now: list[GuardedHttpToolsProtocol]) -> GuardedHttpToolsProtocol | None:
        """The oldest connection still waiting for its headers, of the client holding the most
        connections, if that client would still hold more than this newcomer's client."""
        held = Counter(connection.client_key for connection in open_now)
        waiting = [c for c in open_now if c.waiting_for_headers and c.client_key is not None]
        if not waiting:
            return None
        greediest = max({c.client_key for c in waiting}, key=lambda key: held[key])
        if held[greediest] <= held[self.client_key] + 1:
            return None
        return min((c for c in waiting if c.client_key == greediest), key=lambda c: c.opened_at)

    def _evict(self, victim: GuardedHttpToolsProtocol | None) -> bool:
        """Close ``victim`` (idle: as keep-alive allows; waiting for headers: with a 503) to make room."""
        if victim is None:
            return False
        _EVICTED()
        self.connections.discard(victim)  # its place is free now, not when the loop reports it closed
        if victim.idle:
            victim.transport.close()
        else:
            victim._close_with(
                503,
                "the server is full and this connection had not sent its request; retry in 1 s",
                {"retry-after": "1"},
            )
        return True

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

    def _headers_too_large(self) -> None:
        _LARGE_HEADERS(limit=self.limits.max_header_bytes)
        self._close_with(
            431, f"the request line and headers are larger than {self.limits.max_header_bytes} bytes"
        )

    def _close_with(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` (unless a response is being sent) and close the connection."""
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(raw_response(status, message, headers))
        self.transport.close()

    def _refuse(self, transport: Transport, reason: str) -> None:
        """Answer 503 to a connection that found no room at once, and close it when its request arrives
        (or it closes, or :data:`REFUSED_LINGER_S` passes): closing before its request was read would
        reset the connection, and the client might lose the 503. While as many refused connections
        linger as the server may hold open, a refused one is closed at once."""
        self._refused = True
        self.transport = transport
        _REFUSED(reason=reason)
        transport.write(raw_response(503, reason, {"retry-after": "1"}))
        refusals = _REFUSALS.setdefault(self.server_state, _Refusals())
        if refusals.lingering >= self.limits.max_connections:
            transport.close()
            return
        if transport.can_write_eof():
            transport.write_eof()
        refusals.lingering += 1

        def close() -> None:
            refusals.lingering -= 1
            transport.close()

        self.loop.call_later(REFUSED_LINGER_S, close)


def _idle_since(connection: GuardedHttpToolsProtocol) -> float:
    return connection.idle_since
