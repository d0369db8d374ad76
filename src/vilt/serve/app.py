"""The FastAPI application: task endpoints on dynamic batchers, health, metrics, and the web page.

``create_app(pipelines, settings)`` builds the app around pipelines that are already loaded (see
:func:`.tasks.load_pipelines`); ``vilt serve`` runs it under uvicorn with the connection guards of
:mod:`.protocol`. Routes:

* ``POST /v1/vqa``, ``/v1/explain``, ``/v1/nlvr2``, ``/v1/rank``, ``/v1/fill-mask``: the tasks of
  :data:`.tasks.TASKS`; a task whose head the model lacks answers 404 saying so.
* ``GET /v1/model``: the model card (name, task, number of answers, what it knows).
* ``GET /healthz`` (the process is up), ``GET /readyz`` (the batchers run; the model card, tasks and
  limits), ``GET /metrics`` (Prometheus text), ``GET /openapi.json``.
* ``GET /``: the page (``static/``), which calls the API from the browser; ``GET /samples/...``: the
  sample images of its "Try an example" button (:data:`vilt.hub.SAMPLES_DIR`); ``GET /favicon.ico``.
* ``GET /docs`` (Swagger UI) and ``GET /redoc``, with their scripts served by the server itself
  (the ``fastapi-offline`` package), so they work without internet.

A task request goes through, each step bounded: the body (charged to the memory budget before it is
read, within ``body_timeout_s``), validation, each image's header (its decoded size charged to the
budget before it is decoded), decoding and shrinking (on the decode pool, each read of the file a step
at which the pool stops the job once the request stops waiting, or hands its core to another request),
the batch queue, inference. The whole request must finish within ``timeout_s``: 408 while the body is
still arriving, else 504. A client that goes away once its body is read stops its request.

Every error is ``{"error": "..."}`` with a 4xx or 5xx status and never a traceback. Input the caller
can fix is a 4xx (:class:`.errors.APIError`, :class:`vilt.errors.ViltInputError`); anything else is a
500 that is logged. A client that goes away mid-request is counted as 499 and not logged as an error.
With an API key set, every ``/v1`` route and ``/metrics`` need it in the ``X-API-Key`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vilt.errors import ViltInputError
from vilt.hub import SAMPLES_DIR

from .admission import DecodePool, DecodeStep, MemoryBudget
from .batching import DynamicBatcher, FairWorker, QueueFullError
from .errors import APIError, shown
from .images import (
    Fit,
    LongestSide,
    decode_cost,
    fit_image,
    held_bytes,
    model_size,
    open_image,
    release_free_memory,
)
from .metrics import ServerMetrics
from .schemas import ErrorResponse, ModelCard, describe_validation_errors, read_request, request_body_openapi
from .settings import ServeSettings
from .tasks import EXPLAIN_SIDE, TASKS, Task, Work, load_pipelines, model_card

logger = logging.getLogger(__name__)
T = TypeVar("T")

STATIC_DIR = Path(__file__).parent / "static"
DOCS_ASSETS_URL = "/static-docs"  # Swagger UI's and ReDoc's scripts, from the fastapi-offline package
API_KEY_HEADER = "X-API-Key"
RETRY_AFTER_S = 1
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer
# A request answered before its body was read (a refusal), whose body is at most DRAIN_BYTES, has the body
# read and dropped first, for at most DRAIN_S: closing a connection with unread bytes makes the kernel reset
# it, and the client may then never see the answer (nor reuse the connection).
DRAIN_BYTES = 64 * 1024
DRAIN_S = 1.0
JSON_HELD_FACTOR = 3  # a JSON body is held as bytes, as text and as the values parsed from it
_ERROR_STATUSES = {
    400: "The body or an image in it cannot be read, or the model refused the input",
    401: "Missing or wrong API key",
    404: "The model has no head for this task",
    408: "The body did not arrive within the body timeout or the request deadline",
    413: "The body is larger than the upload limit, or an image has too many pixels or needs more memory to "
    "decode than the memory budget",
    415: "The body is neither multipart/form-data nor JSON",
    422: "A field is missing, of the wrong type, or out of range",
    503: "The queue or memory budget is full, or the server is starting or stopping; retry after Retry-After "
    "seconds",
    504: "No answer within the request timeout",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


# ----------------------------------------------------------------------------- ASGI middleware


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


class RequestMetrics:
    """Count every response by route and status, and time it."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)


class AnswerWhenCancelled:
    """Answer 503 to a request whose task is cancelled before it answered.

    uvicorn cancels the requests still running when the graceful-shutdown deadline passes; without this
    they would get its plain-text 500 and a logged traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if scope["type"] != "http" or started:
                raise
            logger.warning("answered 503 to %s: the server stopped before it was done", scope.get("path"))
            stopped = APIError(
                503, "the server stopped before answering; retry", {"Retry-After": str(RETRY_AFTER_S)}
            )
            await error_response(stopped)(scope, receive, send)


class SecurityHeaders:
    """``nosniff``, ``DENY`` framing and no referrer on every response; a strict CSP on the page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(SECURITY_HEADERS)
        if scope["path"] == "/" or scope["path"].startswith("/static/"):
            extra.append((b"content-security-policy", PAGE_CSP.encode()))

        async def adding_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, adding_send)


class HostAllowList:
    """Answer 400 to a request whose Host header is not allowed (a guard against DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = tuple(host.lower() for host in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = (_header(scope, b"host") or b"").decode("latin-1")
            if not host_allowed(host, self.allowed):
                refused = APIError(
                    400,
                    f"this server does not answer to the host {shown(host)}; use one of {', '.join(self.allowed)} "
                    "(vilt serve --allowed-hosts)",
                )
                await error_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``host_header`` (``name``, ``name:port``, ``[v6]:port``) matches an allowed name.

    ``*`` allows any host; ``*.example.com`` allows the subdomains of example.com.
    """
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if not host:
        return "*" in allowed
    return any(
        pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
        for pattern in allowed
    )


class RequestBodyLimits:
    """Refuse a body larger than its limit (413), and charge bodies to the memory budget (503).

    A JSON body, which is parsed whole, has a limit of its own (``max_json_bytes``) and is charged
    :data:`JSON_HELD_FACTOR` times its size: while it is parsed the server holds its bytes, their text
    and the values parsed from it. A declared Content-Length over the limit is refused at once, and one
    the budget cannot hold now is refused before it is read; a chunked body is counted and charged as it
    streams. The charge is given back when the request ends. Before any answer to a request whose body
    is not read yet (these refusals, or the app's own early ones) a body of at most :data:`DRAIN_BYTES`
    is read and dropped, for at most :data:`DRAIN_S`, so that the client gets the answer and may keep
    the connection.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_json_bytes: int, budget: MemoryBudget) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = max_json_bytes
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type == b"application/json":
            limit, factor = min(self.max_bytes, self.max_json_bytes), JSON_HELD_FACTOR
            too_large = APIError(
                413,
                f"the JSON body is larger than the limit of {limit} bytes (--max-json-mb); upload images as "
                "multipart/form-data",
            )
        else:
            limit, factor = self.max_bytes, 1
            too_large = APIError(413, f"the request body is larger than the limit of {limit} bytes")
        declared = _header(scope, b"content-length") or b""
        length = int(declared) if declared.isdigit() else 0
        received, unread = 0, length > 0 or _header(scope, b"transfer-encoding") is not None

        async def drain() -> None:
            nonlocal received, unread
            while unread and received <= DRAIN_BYTES:  # past it (a chunked body): answer and close
                part = await receive()
                received += len(part.get("body", b""))
                unread = part["type"] == "http.request" and part.get("more_body", False)

        async def draining_send(message: Message) -> None:
            if message["type"] == "http.response.start" and unread and length <= DRAIN_BYTES:
                with contextlib.suppress(asyncio.TimeoutError):  # a slow body: answer and close
                    await asyncio.wait_for(drain(), DRAIN_S)
            await send(message)

        if length > limit:
            await error_response(too_large)(scope, receive, send)
            return
        charged = length * factor
        if not self.budget.try_take(charged):
            await error_response(_unavailable("the server holds as many request bodies as it may"))(
                scope, receive, draining_send
            )
            return

        async def counting_receive() -> Message:
            nonlocal received, charged, unread
            message = await receive()
            unread = message["type"] == "http.request" and message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large
            if received * factor > charged:  # chunked, or longer than declared
                if not self.budget.try_take(received * factor - charged):
                    raise _unavailable("the server holds as many request bodies as it may")
                charged = received * factor
            return message

        try:
            await self.app(scope, counting_receive, draining_send)
        finally:
            self.budget.give_back(charged)


# ----------------------------------------------------------------------------- errors


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status_code, headers=error.headers)


def _unavailable(reason: str) -> APIError:
    return APIError(503, f"{reason}; retry in {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)})


def _install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def on_input_error(request: Request, exc: Exception) -> Response:
        return error_response(APIError(400, str(exc)))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(APIError(exc.status_code, str(exc.detail), dict(exc.headers or {})))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(APIError(422, describe_validation_errors(list(exc.errors()))))

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        logger.debug("the client of %s %s went away before the answer", request.method, request.url.path)
        return error_response(APIError(CLIENT_CLOSED, "the client closed the connection"))

    async def on_unexpected_error(request: Request, exc: Exception) -> Response:
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(APIError(500, "internal server error; the server log has the details"))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(ViltInputError, on_input_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected_error)


# ----------------------------------------------------------------------------- the app


class Server:
    """What the routes share: the pipelines, settings, metrics, the memory budget, and (while running)
    the decode pool and the batchers."""

    def __init__(self, pipelines: dict[str, Any], settings: ServeSettings, model_name: str | None) -> None:
        self.pipelines = pipelines
        self.settings = settings
        self.metrics = ServerMetrics()
        self.budget = MemoryBudget(settings.memory_budget_bytes)
        self.decoder: DecodePool | None = None
        self.batchers: dict[str, DynamicBatcher[Work, dict[str, Any]]] = {}
        first = next(iter(pipelines.values()))
        self.model_name = type(first.model).__name__
        self.model_card = model_card(first, model_name)
        on_torch = isinstance(first.model, torch.nn.Module)
        self.tasks = [
            task for task in TASKS if task.pipeline_task in pipelines and (on_torch or not task.torch_only)
        ]
        self.fits = {
            task.name: LongestSide(EXPLAIN_SIDE)
            if task.fit == "explain"
            else model_size(self.pipelines[task.pipeline_task].processor.image_processor)
            for task in self.tasks
        }

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start the decode pool and one batcher per served task, sharing one inference thread fairly."""
        worker = FairWorker()
        self.decoder = DecodePool(
            self.settings.decode_threads, release_free_memory, on_stopped=self.metrics.decodes_stopped.inc
        )
        self.metrics.decodes.set_function(lambda: self.decoder.active if self.decoder else 0)
        for task in self.tasks:
            self.batchers[task.name] = DynamicBatcher(
                task.name,
                partial(task.run, self.pipelines[task.pipeline_task]),
                worker.lane(task.name),
                max_batch_size=self.settings.max_batch_size if task.batched else 1,
                max_wait_ms=self.settings.max_wait_ms,
                max_queue=self.settings.max_queue,
                on_batch=self.metrics.batch_size.labels(task.name).observe,
                on_queue_depth=self.metrics.queue_depth.labels(task.name).set,
            )
            self.batchers[task.name].start()
        try:
            yield
        finally:
            for batcher in self.batchers.values():
                await batcher.stop()
            self.batchers.clear()
            worker.shutdown(wait=True)
            self.decoder.shutdown()
            self.decoder = None

    def ready(self) -> bool:
        return bool(self.batchers) and all(batcher.running for batcher in self.batchers.values())

    async def answer(self, task: Task, request: Request) -> dict[str, Any]:
        """Read, validate and decode a task request, queue it, and wait for its answer, all within
        ``timeout_s``."""
        if task not in self.tasks:
            raise APIError(
                404,
                f"/v1/{task.name} is not served: this server's model is a {self.model_name}, which has no "
                f"head for {task.pipeline_task}; start `vilt serve --model` with a model that has one",
            )
        batcher = self.batchers.get(task.name)
        if batcher is None:
            raise _unavailable("the server is starting or stopping")
        if batcher.full:  # refuse before reading and decoding the upload
            raise _unavailable(f"the {task.name} queue is full")
        deadline = time.monotonic() + self.settings.timeout_s
        body = await self._read(request, task, deadline)
        try:
            return await _unless_client_leaves(request, self._decode_and_wait(task, batcher, body, deadline))
        except asyncio.TimeoutError:
            raise APIError(
                504, f"no answer within {self.settings.timeout_s:g} s; the server is overloaded, retry later"
            ) from None
        except QueueFullError as err:
            raise _unavailable(str(err)) from None
        except (APIError, ViltInputError, ClientDisconnect):
            raise
        except task.input_errors as err:  # the pipeline refused this input (e.g. no [MASK] to fill)
            raise APIError(400, str(err)) from None
        except Exception:
            logger.exception("/v1/%s failed", task.name)
            raise APIError(500, "internal server error; the server log has the details") from None

    async def _decode_and_wait(
        self, task: Task, batcher: DynamicBatcher[Work, dict[str, Any]], body: Any, deadline: float
    ) -> dict[str, Any]:
        """Decode the request's images, then queue it and wait for its answer, until ``deadline``."""
        images = await _within(deadline, self._decode(task, body))
        kept = sum(held_bytes(image) for image in images)  # the shrunk images, held while the request waits
        self.budget.charge(kept)
        try:
            return await batcher.submit(Work(body, images), max(deadline - time.monotonic(), 0.0))
        finally:
            self.budget.give_back(kept)

    async def _read(self, request: Request, task: Task, deadline: float) -> Any:
        """The validated request body; 408 (and the connection closed) if it does not arrive in time."""
        left = deadline - time.monotonic()
        seconds = min(self.settings.body_timeout_s, left)
        limit = (
            f"the body timeout of {self.settings.body_timeout_s:g} s"
            if self.settings.body_timeout_s <= left
            else f"the request deadline of {self.settings.timeout_s:g} s"
        )
        try:
            return await asyncio.wait_for(read_request(request, task.request), seconds)
        except asyncio.TimeoutError:
            raise APIError(
                408,
                f"the request body did not arrive within {limit}; send it faster or make it smaller",
                {"Connection": "close"},
            ) from None

    async def _decode(self, task: Task, body: Any) -> list[Image.Image]:
        """Decode the ``image`` or ``images`` of a request in the decode pool, one after another."""
        assert self.decoder is not None
        uploads = [("image", body.image)] if hasattr(body, "image") else list(enumerate(body.images))
        decoded = []
        for key, data in uploads:
            field = key if isinstance(key, str) else f"images[{key}]"
            job = partial(self._decode_one, data, field, self.fits[task.name])
            decoded.append(await self.decoder.run(job, priority=len(data)))
        return decoded

    def _decode_one(self, data: bytes, field: str, fit: Fit | None, step: DecodeStep) -> Image.Image:
        """One upload's header read, its decoding charged to the memory budget, then decoded and shrunk:
        a job of the decode pool, stopped at its next ``step`` once the request stops waiting."""
        image = open_image(data, field, self.settings.max_image_pixels, step)
        cost = decode_cost(image)
        if not self.budget.fits_ever(cost):
            raise APIError(
                413,
                f"'{field}' ({image.width}x{image.height} {image.mode}) needs {cost / 2**20:.0f} MiB to decode, "
                f"more than this server's memory budget allows; downscale it",
            )
        if not self.budget.try_take(cost):
            raise _unavailable("the server is decoding as many images as its memory budget allows")
        try:
            step.hold(cost)  # a large decode waits here for its turn
            fitted = fit_image(image, field, fit, step)
        except BaseException:
            image.close()  # a stopped or failed decode frees its pixels now, not when the traceback goes
            raise
        finally:
            self.budget.give_back(cost)
        logger.debug("%s: %s %s -> %s", field, image.size, image.mode, fitted.size)
        return fitted


async def _within(deadline: float, work: Awaitable[T]) -> T:
    return await asyncio.wait_for(work, max(deadline - time.monotonic(), 0.0))


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or :class:`ClientDisconnect` as soon as the client closes the connection (its
    body is read: the next message it can send is the disconnect); the work is cancelled then, which
    stops its image decoding and takes it out of the queue."""
    working = asyncio.ensure_future(work)
    leaving = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({working, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        if not working.done():
            working.cancel()
            await asyncio.gather(working, return_exceptions=True)
    if working.cancelled():
        raise ClientDisconnect()
    return working.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _api_key_check(expected: str) -> Callable[..., Awaitable[None]]:
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the server's API key")
    expected_bytes = expected.encode("utf-8")

    async def check(key: str | None = Depends(header)) -> None:
        # Starlette decodes header bytes as latin-1; encoding back gives the bytes the client sent
        sent = key.encode("latin-1", errors="replace") if key is not None else None
        if sent is None or not hmac.compare_digest(sent, expected_bytes):
            raise APIError(
                401, f"missing or wrong API key; send the server's key in the {API_KEY_HEADER} header"
            )

    return check


def create_app(
    pipelines: dict[str, Any], settings: ServeSettings | None = None, model_name: str | None = None
) -> FastAPI:
    """The server around already loaded pipelines.

    Args:
        pipelines: pipeline task -> pipeline, as :func:`.tasks.load_pipelines` returns (at least one).
        settings: limits, timeouts, batching, allowed hosts and the optional API key.
        model_name: how the model was given (a hub id or directory), for the model card when the model's
            config has no ``model_card.name``.

    Returns:
        The FastAPI app; its lifespan starts and stops the decode pool and the batchers.
    """
    if not pipelines:
        raise ValueError("create_app needs at least one pipeline; see vilt.serve.tasks.load_pipelines")
    settings = settings or ServeSettings()
    server = Server(pipelines, settings, model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.running():
            yield

    app = FastAPIOffline(  # /docs and /redoc with their scripts served from the fastapi-offline package
        static_url=DOCS_ASSETS_URL,
        favicon_url="/favicon.ico",
        swagger_ui_parameters={"validatorUrl": None},  # Swagger UI's online validator: nothing outside
        title="vilt",
        summary="ViLT (Vision-and-Language Transformer): visual question answering and friends",
        description="Ask questions about images, check statements against image pairs, rank captions and "
        "fill masked words with a ViLT model. Each task endpoint batches the requests that arrive "
        'together. Every error is `{"error": "..."}`.',
        version=_version(),
        lifespan=lifespan,
    )
    app.state.server = server
    _install_error_handlers(app)
    app.add_middleware(
        RequestBodyLimits,
        max_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_bytes,
        budget=server.budget,
    )
    if settings.allowed_hosts is not None:
        app.add_middleware(HostAllowList, allowed=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(AnswerWhenCancelled)
    app.add_middleware(RequestMetrics, metrics=server.metrics)
    protected = [Depends(_api_key_check(settings.api_key))] if settings.api_key else []
    error_docs: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": text} for status, text in _ERROR_STATUSES.items()
    }
    for task in TASKS:
        app.add_api_route(
            f"/v1/{task.name}",
            _task_endpoint(server, task),
            methods=["POST"],
            name=task.name,
            summary=task.summary,
            description=task.description,
            response_model=task.response,
            responses=error_docs,
            dependencies=protected,
            openapi_extra=request_body_openapi(task.request),
        )

    @app.get(
        "/v1/model",
        summary="The model card",
        description="What the served model is: its name, class, task, the number of answers it chooses "
        "from, and what it knows (from the `model_card` of its config).",
        response_model=ModelCard,
        dependencies=protected,
        responses={401: {"model": ErrorResponse, "description": _ERROR_STATUSES[401]}},
    )
    async def model() -> dict[str, Any]:
        return server.model_card

    @app.get(
        "/healthz",
        summary="The process is up",
        description='Always `{"status": "ok"}` while the process runs; for liveness probes.',
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The model is loaded and the batchers run",
        description="200 with the model card, the tasks served, whether an API key is needed, the limits "
        "and the threads, once the server answers requests; 503 with Retry-After while it starts or "
        "stops. For readiness probes and for the page.",
        responses={503: {"model": ErrorResponse, "description": "starting or stopping"}},
    )
    async def readyz() -> dict[str, Any]:
        if not server.ready():
            raise APIError(
                503, "not ready: the batchers are not running", {"Retry-After": str(RETRY_AFTER_S)}
            )
        return {
            "status": "ready",
            "model": server.model_name,
            "model_card": server.model_card,
            "tasks": [task.name for task in server.tasks],
            "api_key_required": settings.api_key is not None,
            "limits": settings.limits(),
            "threads": _threads(settings),
        }

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        description="Requests by endpoint and status, latencies, batch sizes and queue depths, in the "
        "Prometheus text format.",
        dependencies=protected,
        response_class=Response,
    )
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.api_route("/favicon.ico", methods=["GET", "HEAD"], include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/samples", StaticFiles(directory=SAMPLES_DIR), name="samples")  # the page's examples
    return app


def load_app(
    model: str | None = None,
    settings: ServeSettings | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    backend: str = "torch",
) -> FastAPI:
    """Load ``model`` and build the server around it: a plain ASGI app, for any host (``vilt serve``'s
    uvicorn, ``uvicorn --factory vilt.serve.app:load_app``, Ray Serve).

    Args:
        model: a hub id or a model directory; None = the bundled easy-VQA model.
        settings: limits, timeouts, batching, hosts and key (default :class:`ServeSettings`).
        device, dtype, backend: as :func:`.tasks.load_pipelines` takes them.

    The connection limits (:class:`.settings.ConnectionLimits`) are not the app's: they live in the HTTP
    protocol uvicorn runs (:mod:`.protocol`); another host applies its own.
    """
    pipelines = load_pipelines(model, device=device, dtype=dtype, backend=backend)
    return create_app(pipelines, settings, model_name=model)


def _task_endpoint(server: Server, task: Task) -> Callable[[Request], Awaitable[dict[str, Any]]]:
    async def endpoint(request: Request) -> dict[str, Any]:
        return await server.answer(task, request)

    endpoint.__name__ = f"post_{task.name.replace('-', '_')}"
    endpoint.__doc__ = task.description
    return endpoint


def _threads(settings: ServeSettings) -> dict[str, Any]:
    import torch

    return {
        "model": torch.get_num_threads(),
        "decode": settings.decode_threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY") or "default",  # see cli.configure_threads
    }


def _version() -> str:
    from vilt import __version__

    return __version__
