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
CLI_FLUSH_MS = 2000  # the CLI waits this long for its last spans; an absent collector costs no more
_lock = threading.Lock()
_state: dict[str, Any] = {}


def enabled() -> bool:
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def keep_problems() -> None:
    """From now on the SDK's warnings (export retries, failures) are kept for flush() to return
    as one line instead of printed as they come: the CLI's choice; the page leaves them to its log.
    logging is imported here, only when tracing is on (the CLI's fixed cost)."""
    import logging

    class FirstProblem(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = " ".join(record.getMessage().split())
            _state.setdefault("problem", text if len(text) <= 200 else text[:197] + "...")

    sdk_log = logging.getLogger("opentelemetry")
    if "keeping" not in _state:
        _state["keeping"] = True
        sdk_log.addHandler(FirstProblem(logging.WARNING))
    sdk_log.propagate = False


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


def flush(timeout_ms: int = 5000) -> str | None:
    """Export what is batched now, waiting at most timeout_ms. The first problem the SDK logged
    since the last flush (say, no collector at the endpoint) as one line, or None."""
    if "provider" not in _state:
        return None
    # on a thread: the SDK exports in the caller's thread and retries for its own 10 s, whatever timeout_ms says
    flushing = threading.Thread(target=_state["provider"].force_flush, args=(timeout_ms,), daemon=True)
    flushing.start()
    flushing.join(timeout_ms / 1000)
    if flushing.is_alive():
        _state.setdefault("problem", f"spans still unsent after {timeout_ms} ms")
    return _state.pop("problem", None)


def endpoint() -> str:
    return next((os.environ[name] for name in reversed(ENDPOINT_VARIABLES) if os.environ.get(name)), "")
