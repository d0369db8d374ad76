"""``vilt serve``: run the HTTP server and web page on one model.

Only argparse and the standard library are imported here; FastAPI, uvicorn and torch load when the
command runs, after the thread budget is set (:func:`configure_threads`). The API key comes from the ``VILT_API_KEY`` environment variable (never from the command
line, where other users could read it in the process list); binding anything but a loopback address
without one is refused.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import sys

from ..commands import DTYPE_CHOICES, DTYPE_HELP
from ..export.graph import BACKEND_OF_FORMAT
from .settings import MIB, ConnectionLimits, ServeSettings

API_KEY_ENV = "VILT_API_KEY"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` sub-command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (JSON API with dynamic batching, and a web page at /)",
        description="Serve a model over HTTP: POST /v1/vqa, /v1/explain, /v1/nlvr2, /v1/rank, /v1/fill-mask "
        "(those the model has a head for), GET /v1/model, /healthz, /readyz, /metrics, /docs, and a web page "
        f"at /. Set {API_KEY_ENV} to require that key in the X-API-Key header; it is required when --host is "
        "not a loopback address. Every limit and timeout is listed in docs/serving.md. Needs the serve "
        "extra: pip install 'vilt[serve]'.",
    )
    default, connection = ServeSettings(), ConnectionLimits()
    add = parser.add_argument
    add("--model", default=None, help="hub id or local directory (default: the bundled easy-VQA model)")
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    add("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    add(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host header names answered, '*.example.com' for subdomains, '*' for any "
        f"(default: {','.join(LOOPBACK_NAMES)} when --host is a loopback address, else any)",
    )
    add("--device", default=None, help="cpu, cuda or cuda:N (default: the fastest available)")
    add("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    add(
        "--backend",
        default="torch",
        choices=("torch", *BACKEND_OF_FORMAT.values()),
        help="torch (default), or onnxruntime / openvino for a --model directory written by `vilt export` "
        "(explain needs torch)",
    )
    threads = parser.add_argument_group("threads")
    threads.add_argument(
        "--threads", type=int, default=None, help="model threads (default: torch's, one per physical core)"
    )
    threads.add_argument(
        "--decode-threads",
        type=int,
        default=default.decode_threads,
        help="image decodes running at once, sharing their cores in slices (default: a quarter of the "
        "cores, 1 to 4: %(default)s here)",
    )
    batching = parser.add_argument_group("batching")
    batching.add_argument(
        "--max-batch-size",
        type=int,
        default=default.max_batch_size,
        help="requests per forward pass (%(default)s)",
    )
    batching.add_argument(
        "--max-wait-ms", type=float, default=default.max_wait_ms, help="wait to fill a batch (%(default)s ms)"
    )
    batching.add_argument(
        "--max-queue",
        type=int,
        default=default.max_queue,
        help="waiting requests per task before 503 (%(default)s)",
    )
    requests = parser.add_argument_group("request limits")
    requests.add_argument(
        "--timeout",
        type=float,
        default=default.timeout_s,
        help="seconds a whole request may take, upload to answer, else 408/504 (%(default)s)",
    )
    requests.add_argument(
        "--body-timeout",
        type=float,
        default=default.body_timeout_s,
        help="seconds the body may take to arrive after the headers, else 408 (%(default)s)",
    )
    requests.add_argument(
        "--max-upload-mb",
        type=float,
        default=default.max_body_bytes / MIB,
        help="largest body, MiB (%(default)s)",
    )
    requests.add_argument(
        "--max-json-mb",
        type=float,
        default=default.max_json_bytes / MIB,
        help="largest JSON body, MiB; it is parsed whole, images as base64 (%(default)s)",
    )
    requests.add_argument(
        "--max-image-pixels",
        type=int,
        default=default.max_image_pixels,
        help="most pixels per image (%(default)s)",
    )
    requests.add_argument(
        "--memory-budget-mb",
        type=float,
        default=default.memory_budget_bytes / MIB,
        help="request bodies and decoded images held at once, MiB; past it 503 (%(default)s)",
    )
    connections = parser.add_argument_group("connections")
    connections.add_argument(
        "--max-connections",
        type=int,
        default=connection.max_connections,
        help="open connections; past it a new one replaces an idle one, else gets 503 (%(default)s)",
    )
    connections.add_argument(
        "--max-connections-per-client",
        type=int,
        default=connection.max_connections_per_client,
        help="open connections of one client address (IPv6: /64); 0 = no cap, as behind a reverse proxy "
        "(%(default)s)",
    )
    connections.add_argument(
        "--header-timeout",
        type=float,
        default=connection.header_timeout_s,
        help="seconds for the request line and headers, else 408 (%(default)s)",
    )
    connections.add_argument(
        "--max-header-kb",
        type=float,
        default=connection.max_header_bytes / 1024,
        help="largest request line and headers, KiB, else 431 (%(default)s)",
    )
    connections.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=connection.keep_alive_timeout_s,
        help="seconds an idle connection stays open between requests (%(default)s)",
    )
    connections.add_argument(
        "--shutdown-timeout",
        type=float,
        default=connection.shutdown_timeout_s,
        help="seconds requests in flight get to finish after SIGTERM (%(default)s)",
    )
    replicas = parser.add_argument_group("replicas on Ray Serve (pip install 'vilt[scale]'; docs/scale.md)")
    replicas.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="run N replicas of this server on Ray Serve (default: one process)",
    )
    replicas.add_argument(
        "--address", default=None, help="with --replicas: join this Ray cluster (default: embedded)"
    )
    replicas.add_argument(
        "--replica-cpus", type=float, default=1.0, help="with --replicas: CPUs per replica (1)"
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


def allowed_hosts(option: str | None, host: str) -> tuple[str, ...] | None:
    """The Host header allow-list: ``--allowed-hosts`` split on commas; by default the loopback names when
    bound to a loopback address, else None (any host). ``*`` alone also means any host."""
    if option is None:
        return LOOPBACK_NAMES if is_loopback(host) else None
    names = tuple(name.strip() for name in option.split(",") if name.strip())
    if not names:
        raise ValueError("--allowed-hosts is empty; give host names separated by commas, or '*' for any")
    return None if names == ("*",) else names


def configure_threads(model_threads: int | None) -> str:
    """Set the thread budget before the model loads; returns the OpenMP wait policy in effect.

    The model gets ``model_threads`` threads (None: torch's default). Its OpenMP threads are made to
    sleep when idle (``OMP_WAIT_POLICY=PASSIVE``) rather than spin on the cores the decoding threads
    need, unless the environment chose a policy. OpenMP reads the policy once, when torch loads: if
    torch is loaded already, the policy cannot change and a warning says how to set it.
    """
    policy = os.environ.get("OMP_WAIT_POLICY")
    if policy is None and "torch" in sys.modules:
        logging.getLogger("vilt.serve").warning(
            "torch was loaded before vilt serve could set OMP_WAIT_POLICY=PASSIVE, so idle model threads "
            "spin; set OMP_WAIT_POLICY=PASSIVE in the environment to let the decoding threads have the cores"
        )
    elif policy is None:
        os.environ["OMP_WAIT_POLICY"] = policy = "PASSIVE"
    import torch

    if model_threads is not None:
        torch.set_num_threads(model_threads)
    return policy or "default"


def serve(args: argparse.Namespace) -> int:
    """Load the model, build the app and run it under uvicorn until interrupted or terminated."""
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
        body_timeout_s=args.body_timeout,
        max_body_bytes=int(args.max_upload_mb * MIB),
        max_json_bytes=int(args.max_json_mb * MIB),
        max_image_pixels=args.max_image_pixels,
        memory_budget_bytes=int(args.memory_budget_mb * MIB),
        decode_threads=args.decode_threads,
        allowed_hosts=allowed_hosts(args.allowed_hosts, args.host),
        api_key=api_key,
    )
    connection_limits = ConnectionLimits(
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        header_timeout_s=args.header_timeout,
        max_header_bytes=int(args.max_header_kb * 1024),
        keep_alive_timeout_s=args.keep_alive_timeout,
        shutdown_timeout_s=args.shutdown_timeout,
    )
    if args.replicas is not None or args.address is not None:
        from ..scale.replicas import serve_replicas

        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        serve_replicas(args.model, settings, host=args.host, port=args.port, address=args.address,
                       replicas=args.replicas or 1, replica_cpus=args.replica_cpus, device=args.device,
                       dtype=args.dtype, backend=args.backend, threads=args.threads)  # fmt: skip
        return 0
    try:
        import uvicorn

        from .app import load_app
        from .protocol import GuardedHttpToolsProtocol
    except ModuleNotFoundError as err:
        raise ImportError(
            f"vilt serve needs the serve extra: pip install 'vilt[serve]' ({err.name} is missing)"
        ) from err
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    configure_threads(args.threads)
    app = load_app(args.model, settings, device=args.device, dtype=args.dtype, backend=args.backend)
    server = app.state.server
    logging.getLogger("vilt.serve").info(
        "serving %s, a %s (%s) on http://%s:%d/%s",
        server.model_card["name"],
        server.model_name,
        ", ".join(f"/v1/{task.name}" for task in server.tasks),
        args.host,
        args.port,
        " (API key required)" if api_key else "",
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        server_header=False,
        # uvicorn's annotations are narrower than what it takes: any protocol factory, float timeouts
        http=functools.partial(GuardedHttpToolsProtocol, limits=connection_limits),  # type: ignore[arg-type]
        timeout_keep_alive=connection_limits.keep_alive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=connection_limits.shutdown_timeout_s,  # type: ignore[arg-type]
    )
    uvicorn.Server(config).run()
    return 0
