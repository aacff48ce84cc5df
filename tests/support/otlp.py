"""A real OTLP/HTTP traces receiver on 127.0.0.1, for the tracing tests: workers and the
coordinator export to it, and tests read back the spans it kept.

    with otlp_receiver() as receiver:
        ... set OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url ...
        spans = receiver.wait_for(trace_id, 4)
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def hex_id(raw) -> str:
    """An OTLP id as hex: bytes (protobuf), or a JSON string (hex, or base64 in some encoders)."""
    if isinstance(raw, bytes):
        return raw.hex()
    if len(raw) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in raw):
        return raw.lower()
    return base64.b64decode(raw).hex()


def attribute_value(value: dict):
    return next(iter(value.values())) if value else None


def spans_of_json(body: dict) -> list[dict]:
    return [
        {
            "trace_id": hex_id(span["traceId"]),
            "span_id": hex_id(span["spanId"]),
            "parent_span_id": hex_id(span.get("parentSpanId") or ""),
            "name": span["name"],
            "attributes": {a["key"]: attribute_value(a["value"]) for a in span.get("attributes", [])},
        }
        for resource in body.get("resourceSpans", [])
        for scope in resource.get("scopeSpans", [])
        for span in scope.get("spans", [])
    ]


def spans_of_protobuf(data: bytes) -> list[dict]:
    request = ExportTraceServiceRequest.FromString(data)
    return [
        {
            "trace_id": span.trace_id.hex(),
            "span_id": span.span_id.hex(),
            "parent_span_id": span.parent_span_id.hex(),
            "name": span.name,
            "attributes": {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes},
        }
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


class OtlpReceiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP traces endpoint: POST /v1/traces, protobuf or JSON; keeps the spans."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), OtlpHandler)
        self.spans: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, trace_id: str, count: int, limit: float = 15) -> list[dict]:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self.lock:
                found = [span for span in self.spans if span["trace_id"] == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(found)} spans of trace {trace_id} within {limit}s, wanted {count}: {found}")


class OtlpHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # http.server's naming
        data = self.read_body()
        kind = self.headers.get("Content-Type", "")
        spans = spans_of_json(json.loads(data)) if "json" in kind else spans_of_protobuf(data)
        with self.server.lock:
            self.server.spans.extend(spans)
        self.send_response(200)
        self.send_header("Content-Type", kind or "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def read_body(self) -> bytes:
        """The request body, by Content-Length or chunked (node's exporter streams its JSON)."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()  # the empty line after the last chunk
        return b"".join(chunks)

    def log_message(self, *args):
        pass


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OtlpReceiver serving on a daemon thread until the block ends."""
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
