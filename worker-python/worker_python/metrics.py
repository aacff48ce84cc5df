"""The Prometheus metrics behind GET /metrics (contract "Metrics"): the same names and labels as
worker-nodejs's metrics.js, in one registry per app, answered from memory."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

# OpenTelemetry's http.server.request.duration buckets, stretched to the worker's 60 s decode bound
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
ROUTES = ("/process", "/healthz")
REJECTION_REASONS = ("busy", "draining")
DECODE_FAILURE_REASONS = ("bad_image", "unsupported_type", "too_many_pixels")
NO_OP = "none"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format generate_latest writes, as prom-client says too


def method_label(method: str) -> str:
    """OpenTelemetry's rule: a method outside the known set is `_OTHER` (bounded label values)."""
    return method if method in KNOWN_METHODS else "_OTHER"


def route_label(path: str) -> str:
    return path if path in ROUTES else "other"


class Metrics:
    """Counters a request moves once, when its reply is over; /metrics itself is not counted."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Time from request to reply, seconds",
            ("http_request_method", "http_route", "http_response_status_code", "op"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.active = Gauge(
            "http_server_active_requests", "Requests being answered now (not /metrics)", registry=registry
        )
        self.body_in = Counter(
            "http_server_request_body_size_bytes", "Request body bytes read (/process)", ("op",), registry=registry
        )
        self.body_out = Counter(
            "http_server_response_body_size_bytes",
            "Response body bytes (as Content-Length declares)",
            ("op",),
            registry=registry,
        )
        self.rejections = Counter(
            "worker_rejections", "/process requests refused with 503", ("reason",), registry=registry
        )
        self.decode_failures = Counter(
            "worker_decode_failures", "Images refused by sniff or decode", ("reason",), registry=registry
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for reason in DECODE_FAILURE_REASONS:
            self.decode_failures.labels(reason)

    def request_over(
        self, method: str, path: str, status: int, op: str | None, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        op = op or NO_OP
        self.duration.labels(method_label(method), route_label(path), str(status), op).observe(seconds)
        if bytes_in:
            self.body_in.labels(op).inc(bytes_in)
        if bytes_out:
            self.body_out.labels(op).inc(bytes_out)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def decode_failed(self, reason: str) -> None:
        self.decode_failures.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Idle:
    def inc(self) -> None:
        pass

    def dec(self) -> None:
        pass


class NoMetrics:
    """WORKER_METRICS=off (benchmarking only): nothing counted, and the app serves no /metrics."""

    active = _Idle()

    def request_over(self, *args: object) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def decode_failed(self, reason: str) -> None:
        pass
