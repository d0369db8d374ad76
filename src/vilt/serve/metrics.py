"""Prometheus metrics of one server, in their own registry (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """Request counts and latencies per endpoint; batch sizes and queue depth per task; image decodes."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vilt_requests",
            "HTTP requests by endpoint and status code",
            ("endpoint", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "vilt_request_latency_seconds",
            "Time from request to response, by endpoint",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "vilt_batch_size",
            "Requests per forward pass, by task",
            ("task",),
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "vilt_queue_depth",
            "Requests waiting for a forward pass, by task",
            ("task",),
            registry=self.registry,
        )
        self.decodes = Gauge(
            "vilt_decodes_active",
            "Images being decoded, on a core or waiting for one",
            registry=self.registry,
        )
        self.decodes_stopped = Counter(
            "vilt_decodes_stopped",
            "Image decodes stopped because their request stopped waiting (its deadline, or the client left)",
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format."""
        return generate_latest(self.registry)
