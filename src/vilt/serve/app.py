"""The FastAPI application: task endpoints on dynamic batchers, health, metrics, and the web page.

``create_app(pipelines, settings)`` builds the app around pipelines that are already loaded (see
:func:`.tasks.load_pipelines`); ``vilt serve`` runs it under uvicorn. Routes:

* ``POST /v1/vqa``, ``/v1/explain``, ``/v1/nlvr2``, ``/v1/rank``, ``/v1/fill-mask``: the tasks of
  :data:`.tasks.TASKS`; a task whose head the model lacks answers 404 saying so.
* ``GET /healthz`` (the process is up), ``GET /readyz`` (the batchers run; lists the tasks),
  ``GET /metrics`` (Prometheus text), ``GET /openapi.json`` and ``GET /docs``.
* ``GET /``: the page (``static/``), which calls the API from the browser.

Every error is ``{"error": "..."}`` with a 4xx or 5xx status and never a traceback. With an API key
set, every ``/v1`` route and ``/metrics`` need it in the ``X-API-Key`` header.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batching import DynamicBatcher, QueueFullError
from .errors import APIError
from .metrics import ServerMetrics
from .schemas import ErrorResponse, describe_validation_errors, read_request, request_body_openapi
from .settings import ServeSettings
from .tasks import TASKS, Task, Work, decode_request_images

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
API_KEY_HEADER = "X-API-Key"
RETRY_AFTER_S = 1
_ERROR_STATUSES = {
    400: "The body or an image in it cannot be read",
    401: "Missing or wrong API key",
    404: "The model has no head for this task",
    413: "The body is larger than the upload limit, or an image has too many pixels",
    415: "The body is neither multipart/form-data nor JSON",
    422: "A field is missing, of the wrong type, or out of range",
    503: "The queue is full, or the server is starting or stopping; retry after Retry-After seconds",
    504: "No answer within the request timeout",
}


# ----------------------------------------------------------------------------- ASGI middleware


class BodySizeLimit:
    """Answer 413 to a request whose body is larger than ``max_bytes``, before the app reads it all.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    streams and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = APIError(413, f"the request body is larger than the limit of {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(too_large)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large
            return message

        await self.app(scope, counting_receive, send)


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


# ----------------------------------------------------------------------------- errors


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status_code, headers=error.headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(APIError(exc.status_code, str(exc.detail), dict(exc.headers or {})))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(APIError(422, describe_validation_errors(list(exc.errors()))))

    async def on_unexpected_error(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, "internal server error; the server log has the details"))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected_error)


# ----------------------------------------------------------------------------- the app


class Server:
    """What the routes share: the pipelines, settings, metrics, and (while running) the batchers."""

    def __init__(self, pipelines: dict[str, Any], settings: ServeSettings) -> None:
        self.pipelines = pipelines
        self.settings = settings
        self.metrics = ServerMetrics()
        self.batchers: dict[str, DynamicBatcher[Work, dict[str, Any]]] = {}
        first = next(iter(pipelines.values()))
        self.model_name = type(first.model).__name__
        self.tasks = [task for task in TASKS if task.pipeline_task in pipelines]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start one batcher per served task, all feeding one inference thread; stop them at exit."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vilt-inference")
        for task in self.tasks:
            self.batchers[task.name] = DynamicBatcher(
                task.name,
                partial(task.run, self.pipelines[task.pipeline_task]),
                executor,
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
            executor.shutdown(wait=True)

    def ready(self) -> bool:
        return bool(self.batchers) and all(batcher.running for batcher in self.batchers.values())

    async def answer(self, task: Task, request: Request) -> dict[str, Any]:
        """Validate a task request, decode its images, queue it, and wait for its answer."""
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
        body = await read_request(request, task.request)
        images = await run_in_threadpool(decode_request_images, body, self.settings.max_image_pixels)
        try:
            return await batcher.submit(Work(body, images), self.settings.timeout_s)
        except QueueFullError as err:
            raise _unavailable(str(err)) from None
        except asyncio.TimeoutError:
            raise APIError(
                504, f"no answer within {self.settings.timeout_s:g} s; the server is overloaded, retry later"
            ) from None
        except ValueError as err:  # the pipeline refused this input (e.g. no [MASK] to fill)
            raise APIError(400, str(err)) from None


def _unavailable(reason: str) -> APIError:
    return APIError(503, f"{reason}; retry in {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)})


def _api_key_check(expected: str) -> Callable[..., Awaitable[None]]:
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the server's API key")

    async def check(key: str | None = Depends(header)) -> None:
        if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
            raise APIError(
                401, f"missing or wrong API key; send the server's key in the {API_KEY_HEADER} header"
            )

    return check


def create_app(pipelines: dict[str, Any], settings: ServeSettings | None = None) -> FastAPI:
    """The server around already loaded pipelines.

    Args:
        pipelines: pipeline task -> pipeline, as :func:`.tasks.load_pipelines` returns (at least one).
        settings: limits, batching and the optional API key.

    Returns:
        The FastAPI app; its lifespan starts and stops the batchers.
    """
    if not pipelines:
        raise ValueError("create_app needs at least one pipeline; see vilt.serve.tasks.load_pipelines")
    settings = settings or ServeSettings()
    server = Server(pipelines, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with server.running():
            yield

    app = FastAPI(
        title="vilt",
        summary="ViLT (Vision-and-Language Transformer): visual question answering and friends",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.server = server
    _install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=server.metrics)
    protected = [Depends(_api_key_check(settings.api_key))] if settings.api_key else []
    error_docs: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": text} for status, text in _ERROR_STATUSES.items()
    }
    for task in TASKS:
        app.add_api_route(
            f"/v1/{task.name}",
            partial(server.answer, task),
            methods=["POST"],
            name=task.name,
            summary=task.summary,
            response_model=task.response,
            responses=error_docs,
            dependencies=protected,
            openapi_extra=request_body_openapi(task.request),
        )

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The model is loaded and the batchers run",
        responses={503: {"model": ErrorResponse}},
    )
    async def readyz() -> dict[str, Any]:
        if not server.ready():
            raise APIError(
                503, "not ready: the batchers are not running", {"Retry-After": str(RETRY_AFTER_S)}
            )
        return {
            "status": "ready",
            "model": server.model_name,
            "tasks": [task.name for task in server.tasks],
            "api_key_required": settings.api_key is not None,
            "limits": settings.limits(),
        }

    @app.get("/metrics", summary="Prometheus metrics", dependencies=protected, response_class=Response)
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _version() -> str:
    from vilt import __version__

    return __version__
