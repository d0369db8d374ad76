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

from .settings import ServeSettings

API_KEY_ENV = "VILT_API_KEY"
MIB = 2**20


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
    default = ServeSettings()
    add = parser.add_argument
    add("--model", default=None, help="hub id or local directory (default: the bundled easy-VQA model)")
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    add("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    add("--device", default=None, help="cpu, cuda or cuda:N (default: the fastest available)")
    add("--dtype", default=None, help="float32, bfloat16 or float16 (default: the fastest exact one)")
    add("--threads", type=int, default=None, help="CPU threads per forward pass (default: one per core)")
    add(
        "--max-batch-size",
        type=int,
        default=default.max_batch_size,
        help="requests per forward pass (%(default)s)",
    )
    add(
        "--max-wait-ms", type=float, default=default.max_wait_ms, help="wait to fill a batch (%(default)s ms)"
    )
    add(
        "--max-queue",
        type=int,
        default=default.max_queue,
        help="waiting requests per task before 503 (%(default)s)",
    )
    add(
        "--timeout",
        type=float,
        default=default.timeout_s,
        help="seconds a request may take, else 504 (%(default)s)",
    )
    add(
        "--max-upload-mb",
        type=float,
        default=default.max_body_bytes / MIB,
        help="largest body, MiB (%(default)s)",
    )
    add(
        "--max-image-pixels",
        type=int,
        default=default.max_image_pixels,
        help="most pixels per image (%(default)s)",
    )
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(handler=serve)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def serve(args: argparse.Namespace) -> int:
    """Load the model, build the app and run it under uvicorn until interrupted."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be positive, got {args.threads}")
    api_key = os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and api_key is None:
        raise ValueError(
            f"--host {args.host} accepts connections from other machines; set {API_KEY_ENV} to an API key "
            "(clients send it in the X-API-Key header), or bind 127.0.0.1"
        )
    settings = ServeSettings(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        max_body_bytes=int(args.max_upload_mb * MIB),
        max_image_pixels=args.max_image_pixels,
        api_key=api_key,
    )
    try:
        import torch
        import uvicorn

        from .app import create_app
        from .tasks import load_pipelines
    except ModuleNotFoundError as err:
        raise ImportError(
            f"vilt serve needs the serve extra: pip install 'vilt[serve]' ({err.name} is missing)"
        ) from err
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    app = create_app(load_pipelines(args.model, device=args.device, dtype=args.dtype), settings)
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
