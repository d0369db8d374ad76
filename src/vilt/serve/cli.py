"""``vilt serve``: run the HTTP server and web page on one model.

Only argparse and the standard library are imported here; FastAPI, uvicorn and torch load when the
command runs. The API key comes from the ``VILT_API_KEY`` environment variable (never from the command
line, where other users could read it in the process list); binding anything but a loopback address
without one is refused.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

API_KEY_ENV = "VILT_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` sub-command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (JSON API with dynamic batching, and a web page at /)",
        description="Serve a model over HTTP: POST /v1/vqa, /v1/explain, /v1/nlvr2, /v1/rank, /v1/fill-mask "
        "(those the model has a head for), GET /healthz, /readyz, /metrics, /docs, and a web page at /. "
        f"Set {API_KEY_ENV} to require that key in the X-API-Key header; it is required when --host is "
        "not a loopback address. Needs the serve extra: pip install 'vilt[serve]'.",
    )
    parser.add_argument(
        "--model", default=None, help="hub id or local directory (default: the bundled easy-VQA model)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the fastest available)")
    parser.add_argument(
        "--dtype", default=None, help="float32, bfloat16 or float16 (default: the fastest exact one)"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="requests per forward pass (default: %(default)s)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits to share a batch (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="waiting requests per task before 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds a request may take, else 504 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=16.0,
        help="largest request body in MiB, else 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=40_000_000,
        help="most pixels per image, else 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per forward pass (default: torch's, one per core)",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(handler=serve)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def settings_from_args(args: argparse.Namespace, api_key: str | None) -> object:
    """The server settings the command line asks for (validated by ``ServeSettings``)."""
    from .app import ServeSettings

    return ServeSettings(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        max_body_bytes=int(args.max_upload_mb * 2**20),
        max_image_pixels=args.max_image_pixels,
        api_key=api_key,
    )


def serve(args: argparse.Namespace) -> int:
    """Load the model, build the app and run it under uvicorn until interrupted."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    api_key = os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and api_key is None:
        raise ValueError(
            f"--host {args.host} accepts connections from other machines; set {API_KEY_ENV} to an API key "
            "(clients send it in the X-API-Key header), or bind 127.0.0.1"
        )
    try:
        import uvicorn

        from .app import create_app
        from .tasks import load_pipelines
    except ModuleNotFoundError as err:
        raise ImportError(
            f"vilt serve needs the serve extra: pip install 'vilt[serve]' ({err.name} is missing)"
        ) from err
    settings = settings_from_args(args, api_key)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    pipelines = load_pipelines(args.model, device=args.device, dtype=args.dtype)
    app = create_app(pipelines, settings)
    server = app.state.server
    logging.getLogger("vilt.serve").info(
        "serving a %s (%s) on http://%s:%d/%s",
        server.model_name,
        ", ".join(f"/v1/{task.name}" for task in server.tasks),
        args.host,
        args.port,
        " (API key required)" if api_key else "",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, server_header=False)
    return 0
