"""Traces: a /process request continues the caller's W3C `traceparent` with a server span and
child spans for decode, op and encode, exported over OTLP/HTTP (protobuf).

Only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set: otherwise `from_env`
returns NoTracing, the OpenTelemetry packages are never imported and no exporter thread runs.
The SDK reads the other standard OTEL_* variables itself (headers, timeouts, batch delay)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from worker_python import SERVICE

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class NoTracing:
    """Tracing off: every call is a no-op, no span exists."""

    enabled = False

    def start_request(self, headers: Mapping[str, str], name: str, attributes: dict) -> Any:
        return None

    def child(self, parent: Any, name: str):
        return contextlib.nullcontext()

    def end_request(self, span: Any, status: int) -> None:
        pass


class OtelTracing:
    """Tracing on: an SDK TracerProvider of our own (not the global one) with a batch exporter."""

    enabled = True

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("worker_python")
        self._trace, self._propagator = trace, TraceContextTextMapPropagator()

    def start_request(self, headers: Mapping[str, str], name: str, attributes: dict) -> Any:
        carrier = {key: headers[key] for key in ("traceparent", "tracestate") if key in headers}
        parent = self._propagator.extract(carrier)
        return self.tracer.start_span(name, context=parent, kind=self._trace.SpanKind.SERVER, attributes=attributes)

    def child(self, parent: Any, name: str):
        if parent is None:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(name, context=self._trace.set_span_in_context(parent))

    def end_request(self, span: Any, status: int) -> None:
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self._trace.StatusCode.ERROR)
        span.end()


def from_env(environ: Mapping[str, str] = os.environ) -> NoTracing | OtelTracing:
    if any(environ.get(name) for name in ENDPOINT_VARIABLES):
        return OtelTracing()
    return NoTracing()
