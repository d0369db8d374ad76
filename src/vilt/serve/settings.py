"""The limits, timeouts and batching of a server (standard library only, so ``vilt serve --help`` stays light)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 2**20


def default_decode_threads() -> int:
    """Image decoding threads: a quarter of the cores (at least 1, at most 4); the rest run the model."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


@dataclass(frozen=True)
class ServeSettings:
    """Limits, timeouts and batching of one server.

    Attributes:
        max_batch_size: the most requests in one forward pass.
        max_wait_ms: how long a request waits for others to share its forward pass.
        max_queue: requests waiting per task beyond which new ones get 503.
        timeout_s: the longest a whole request may take, from its headers through the upload, decoding,
            queue and inference; 408 while the body is still arriving, else 504.
        body_timeout_s: the longest the body may take to arrive after the headers, else 408.
        max_body_bytes: the largest request body (all uploads together), else 413.
        max_json_bytes: the largest JSON body, else 413. A JSON body is parsed whole, and held three
            times over meanwhile (its bytes, its text, the values), which the memory budget is charged.
        max_image_pixels: the most pixels (width x height) per image, checked before decoding, else 413.
        memory_budget_bytes: the request bodies and decoded images all requests may hold at once. A request
            whose body or next image would pass it gets 503 with Retry-After before it is read or decoded;
            an eighth is kept for bodies and images of at most that size, so a burst of huge images never
            shuts out ordinary ones.
        decode_threads: image decodes running at once (the cores they may take), shared in slices, the
            least-served first, and large ones in turns; besides them, a new image's first slice may run
            on an express slot. The model's own threads are set apart (``vilt serve --threads``).
        allowed_hosts: the Host header values answered (a leading ``*.`` matches subdomains); others get
            400. None answers any host.
        api_key: when set, the ``X-API-Key`` every ``/v1`` and ``/metrics`` request must carry.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0
    body_timeout_s: float = 20.0
    max_body_bytes: int = 16 * MIB
    max_json_bytes: int = 8 * MIB
    max_image_pixels: int = 4096 * 4096
    memory_budget_bytes: int = 512 * MIB
    decode_threads: int = field(default_factory=default_decode_threads)
    allowed_hosts: tuple[str, ...] | None = None
    api_key: str | None = field(default=None, repr=False)  # never printed

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_queue",
            "max_body_bytes",
            "max_json_bytes",
            "max_image_pixels",
            "memory_budget_bytes",
            "decode_threads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.allowed_hosts is not None and not all(host.strip() for host in self.allowed_hosts):
            raise ValueError(f"allowed_hosts must be non-empty host names, got {self.allowed_hosts}")

    def limits(self) -> dict[str, Any]:
        """The limits a client may want to know (everything but the key)."""
        return {key: value for key, value in asdict(self).items() if key != "api_key"}


@dataclass(frozen=True)
class ConnectionLimits:
    """What the HTTP protocol enforces before a request reaches the app (see :mod:`.protocol`).

    Attributes:
        max_connections: open connections. A new one past it takes the place of an idle kept-alive
            connection, else of a connection still waiting for its headers of the client holding the most;
            when there is none, it is answered 503 with Retry-After and closed.
        max_connections_per_client: open connections of one client (an IPv4 address or an IPv6 /64); one
            more takes the place of the client's idle kept-alive connection, else gets 503. 0: no cap (set
            it so behind a reverse proxy, whose connections all come from one address).
        header_timeout_s: the request line and headers must arrive within this after the connection
            opens (or after the first byte of a following request), else 408 and the connection closes.
        max_header_bytes: the most bytes of request line and headers, else 431 and the connection closes.
        keep_alive_timeout_s: an idle connection between requests is closed after this.
        shutdown_timeout_s: after SIGTERM, requests in flight get this long to finish; then those left are
            answered 503 and the process exits.
    """

    max_connections: int = 256
    max_connections_per_client: int = 64
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    keep_alive_timeout_s: float = 5.0
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_header_bytes < 1024:
            raise ValueError(
                "max_connections must be at least 1 and max_header_bytes at least 1024, got "
                f"{self.max_connections} and {self.max_header_bytes}"
            )
        if self.max_connections_per_client < 0:
            raise ValueError(
                f"max_connections_per_client must be >= 0 (0: no cap), got {self.max_connections_per_client}"
            )
        for name in ("header_timeout_s", "keep_alive_timeout_s", "shutdown_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
