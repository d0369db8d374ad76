"""``vilt serve --replicas N [--address ...]``: the HTTP server's app on Ray Serve replicas.

Two deployments::

    Ray Serve's HTTP proxy (on every node)  ->  ViltGateway (ingress, no CPU)  ->  ViltReplica x N

* :class:`ViltReplica` loads the model and builds the very app the single server runs
  (:func:`vilt.serve.load_app` from the same :class:`~vilt.serve.settings.ServeSettings`), with
  its lifespan (decode pool, dynamic batchers) running: the same routes, page, validation, limits (body
  size, memory budget, image pixels, timeouts, API key, allowed hosts) and dynamic batching, per replica.
  Ray places the replicas across the cluster's nodes and restarts them when they die.
* :class:`ViltGateway` takes each HTTP request (its body bounded by ``max_body_bytes`` and
  ``body_timeout_s`` as in the single server) and hands it to a replica. A replica that dies with the
  request inside is the one failure the caller cannot see coming: the gateway sends the request again to
  a live replica (every route is a pure function of its request), and answers a clear 503
  ``{"error": ...}`` with ``Retry-After`` when no replica could answer it. Serve's own 500 for a dead
  replica never reaches the client.

What differs from the single server: the connection-level guards of :mod:`vilt.serve.protocol` (header
timeout and size, open connections) belong to the HTTP server, here Ray Serve's proxy; a replica holds
at most ``max_ongoing`` requests at once (its batches are filled from them), and at most
``settings.max_queue`` more wait for a replica, beyond which the answer is 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from typing import Any

from ..serve.settings import ServeSettings
from .cluster import connect

logger = logging.getLogger(__name__)

APP_NAME = "vilt"
ATTEMPTS = 3  # tries of a request whose replica died under it
Response = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body


class ViltReplica:
    """One replica: the model loaded once and the single server's app around it."""

    def __init__(
        self,
        model: str | None,
        settings: ServeSettings,
        device: str | None,
        dtype: str | None,
        backend: str,
        threads: int | None,
    ) -> None:
        import torch

        from ..serve.app import load_app

        if threads is not None:
            torch.set_num_threads(threads)
        self.asgi_app = load_app(model, settings, device=device, dtype=dtype, backend=backend)
        self._started: asyncio.Task | None = None  # the app's lifespan, entered on the first request

    async def _start(self) -> None:
        """Run the app's lifespan (decode pool, batchers) on this replica's event loop."""
        self._lifespan = self.asgi_app.state.server.running()
        await self._lifespan.__aenter__()

    async def handle(self, scope: dict[str, Any], body: bytes) -> Response:
        """Answer one HTTP request (its ASGI scope, without the transport's parts, and its body)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)
        return await call_asgi(self.asgi_app, scope, body)


async def call_asgi(app: Any, scope: dict[str, Any], body: bytes) -> Response:
    """Run an ASGI app on one buffered request; its status, headers and body."""
    sent = False
    status, headers, chunks = 500, [], []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # nothing more: the app is answering (a disconnect never comes)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], [tuple(h) for h in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return status, headers, b"".join(chunks)


class ViltGateway:
    """The ingress deployment: its ASGI app is a :class:`GatewayApp`."""

    def __init__(self, replicas: Any, settings: ServeSettings) -> None:
        self.gateway_app = GatewayApp(replicas, settings)

    def __serve_build_asgi_app__(self) -> Any:
        return self.gateway_app


class GatewayApp:
    """Reads each request (bounded as the single server bounds it) and has a replica answer it, again
    on another replica when the first died under it (an ASGI app)."""

    def __init__(self, replicas: Any, settings: ServeSettings) -> None:
        self.replicas = replicas  # the DeploymentHandle of the ViltReplica deployment
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        try:
            body = await asyncio.wait_for(self._body(receive), self.settings.body_timeout_s)
        except asyncio.TimeoutError:
            status, headers, content = _error(408, "the request body did not arrive in time")
        except _TooLarge:
            limit = self.settings.max_body_bytes
            status, headers, content = _error(
                413, f"the request body is larger than the server takes ({limit} bytes)"
            )
        else:
            status, headers, content = await self._forward(scope, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _body(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _forward(self, scope: dict[str, Any], body: bytes) -> Response:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        request = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await self.replicas.handle.remote(request, body)
            except RayActorError as err:
                logger.warning("a replica died answering %s %s (try %d of %d): %s",
                               scope["method"], scope["path"], attempt, ATTEMPTS, type(err).__name__)  # fmt: skip
            except (BackPressureError, DeploymentUnavailableError) as err:
                return _error(503, f"every replica is busy or starting ({type(err).__name__}); retry shortly")
        return _error(503, f"the replicas answering this request died {ATTEMPTS} times; retry shortly")


class _TooLarge(Exception):
    pass


# what a replica needs of an HTTP scope (the rest belongs to the connection)
_SCOPE_KEYS = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "root_path",
               "query_string", "headers", "client", "server")  # fmt: skip


def _error(status: int, message: str) -> Response:
    """An answer in the single server's error format, with Retry-After on 503."""
    headers = [(b"content-type", b"application/json")]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    return status, headers, json.dumps({"error": message}).encode()


def deployment(
    model: str | None,
    settings: ServeSettings,
    *,
    replicas: int,
    replica_cpus: float = 1.0,
    replica_gpus: float = 0.0,
    device: str | None = None,
    dtype: str | None = None,
    backend: str = "torch",
    threads: int | None = None,
    max_ongoing: int | None = None,
) -> Any:
    """The bound Ray Serve application: ``replicas`` copies of :class:`ViltReplica`.

    Args:
        model: a hub id or directory; None = the bundled easy-VQA model.
        settings: the single server's settings, applied in every replica.
        replicas: how many replicas Serve keeps running.
        replica_cpus, replica_gpus: what each replica reserves (Ray places it where they are free).
        device, dtype, backend: as for ``vilt serve``.
        threads: model threads per replica (default: Ray's, one per reserved CPU).
        max_ongoing: requests a replica holds at once (default: 4 batches' worth).
    """
    from ray import serve

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"--replicas must be a positive integer, got {replicas!r}")
    ongoing = max_ongoing or 4 * settings.max_batch_size
    model_replicas = serve.deployment(
        num_replicas=replicas,
        max_ongoing_requests=ongoing,
        max_queued_requests=settings.max_queue,
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus},
        graceful_shutdown_timeout_s=settings.timeout_s,
        health_check_period_s=2,
        health_check_timeout_s=30,
    )(ViltReplica)
    gateway = serve.deployment(
        num_replicas=1,
        max_ongoing_requests=replicas * ongoing + settings.max_queue,
        ray_actor_options={"num_cpus": 0},
    )(serve.ingress()(ViltGateway))
    if replica_gpus and device is None:
        device = "cuda"
    return gateway.bind(model_replicas.bind(model, settings, device, dtype, backend, threads), settings)


def serve_replicas(
    model: str | None,
    settings: ServeSettings,
    *,
    host: str,
    port: int,
    address: str | None = None,
    block: bool = True,
    **options: Any,
) -> None:
    """Run the server as a Ray Serve application on ``host:port`` until SIGINT or SIGTERM.

    Args:
        model, settings, options: as for :func:`deployment`.
        host, port: where Ray Serve's HTTP proxy listens: on every node, or only on the head node when
            ``host`` is a loopback address.
        address: None for an embedded local Ray; a cluster's address to join it.
        block: wait for a signal, then take the application down (False: return once it is running).
    """
    ray = connect(address)
    from ray import serve

    # a proxy bound to a loopback address serves only its own machine: one, on the head node, is enough
    location = "HeadOnly" if host in ("localhost", "::1") or host.startswith("127.") else "EveryNode"
    serve.start(proxy_location=location, http_options={"host": host, "port": port})
    serve.run(deployment(model, settings, **options), name=APP_NAME, route_prefix="/")
    logger.info(
        "serving on http://%s:%d/ with %s replica(s) on Ray Serve", host, port, options.get("replicas")
    )
    if not block:
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logger.info("shutting down the Ray Serve application")
    serve.delete(APP_NAME)
    serve.shutdown()
    ray.shutdown()
