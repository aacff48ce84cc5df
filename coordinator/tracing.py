"""Traces of a job: a `job` span, a `strip` span per strip and an `attempt` span per worker
request, the attempt's W3C `traceparent` sent to the worker (which continues it, contract
README "Traces"), exported over OTLP/HTTP.

Only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set is OpenTelemetry imported
(in `_provider`, once per process). Without it, a job still sends a `traceparent` with ids from
os.urandom, one trace id per job, so the spans of workers that do export group by job; no SDK
is loaded and nothing is exported by the coordinator."""

from __future__ import annotations

import os
import threading
from typing import Any

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SERVICE = "stripes-coordinator"
_lock = threading.Lock()
_state: dict[str, Any] = {}


def enabled() -> bool:
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def _provider() -> Any:
    """The process's own TracerProvider (not the global one), made on first use; the SDK
    flushes its batch at interpreter exit."""
    with _lock:
        if "tracer" not in _state:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _state.update(provider=provider, tracer=provider.get_tracer("coordinator"), trace=trace)
        return _state


class PlainSpan:
    """A span that is only ids: what the worker is sent when the coordinator does not export."""

    def __init__(self, trace_id: str) -> None:
        self.trace_id, self.span_id = trace_id, os.urandom(8).hex()

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"

    def child(self, name: str, attributes: dict | None = None) -> PlainSpan:
        return PlainSpan(self.trace_id)

    def end(self, error: str | None = None) -> None:
        pass


class OtelSpan:
    """An SDK span; children are started in its context."""

    def __init__(self, span: Any) -> None:
        self.span = span
        context = span.get_span_context()
        self.trace_id, self.span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"

    def child(self, name: str, attributes: dict | None = None) -> OtelSpan:
        state = _provider()
        context = state["trace"].set_span_in_context(self.span)
        return OtelSpan(state["tracer"].start_span(name, context=context, attributes=attributes or {}))

    def end(self, error: str | None = None) -> None:
        if error is not None:
            self.span.set_status(_provider()["trace"].StatusCode.ERROR, error[:200])
        self.span.end()


def start_job(attributes: dict) -> PlainSpan | OtelSpan:
    """The job's root span: exported when tracing is on, ids only otherwise."""
    if not enabled():
        return PlainSpan(os.urandom(16).hex())
    state = _provider()
    return OtelSpan(state["tracer"].start_span("job", attributes=attributes))


def flush(timeout_ms: int = 5000) -> None:
    """Export what is batched now (a long-lived page process; the CLI relies on exit's flush)."""
    if "provider" in _state:
        _state["provider"].force_flush(timeout_ms)
