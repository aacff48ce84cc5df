"""Worker traces (contract README, "Traces"): each runtime continues the W3C `traceparent` it is
sent with a request span and decode/op/encode children, exported over real OTLP/HTTP to a
receiver on 127.0.0.1; with no endpoint set, no OpenTelemetry code is loaded at all."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from PIL import Image

from scripts.testkit.procs import ROOT, RUNTIMES

TIMEOUT = 30
PARENT_SPAN_ID = "00f067aa0ba902b7"


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


@pytest.fixture(scope="module")
def receiver():
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module", params=RUNTIMES)
def traced_worker(request, worker_factory, receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    return worker_factory(request.param, env)


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 240)).save(buffer, "PNG")
    return buffer.getvalue()


def test_worker_continues_the_callers_trace_with_decode_op_encode_children(traced_worker, receiver):
    trace_id = uuid.uuid4().hex
    headers = {
        "Content-Type": "image/png",
        "traceparent": f"00-{trace_id}-{PARENT_SPAN_ID}-01",
        "X-Request-Id": f"trace-test-{trace_id[-4:]}",
    }
    response = requests.post(
        traced_worker.url + "/process?op=sepia", data=png_of(32, 16), headers=headers, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text[:300]
    spans = {span["name"]: span for span in receiver.wait_for(trace_id, 4)}
    assert set(spans) == {"POST /process", "decode", "op", "encode"}
    request_span = spans["POST /process"]
    assert request_span["parent_span_id"] == PARENT_SPAN_ID
    assert request_span["attributes"]["worker.request_id"] == headers["X-Request-Id"]
    assert request_span["attributes"]["http.response.status_code"] == 200
    for child in ("decode", "op", "encode"):
        assert spans[child]["parent_span_id"] == request_span["span_id"], f"{child} is not the request's child"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_spans_still_batched_go_out_on_sigterm(runtime, worker_factory, receiver):
    """A batch delay far past the test: the spans can only arrive by the exit's flush."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    worker = worker_factory(runtime, env)
    trace_id = uuid.uuid4().hex
    headers = {"Content-Type": "image/png", "traceparent": f"00-{trace_id}-{PARENT_SPAN_ID}-01"}
    response = requests.post(worker.url + "/process?op=invert", data=png_of(8, 8), headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=TIMEOUT) == 0
    assert len(receiver.wait_for(trace_id, 4, limit=5)) == 4


def test_a_request_without_traceparent_starts_its_own_trace(traced_worker, receiver):
    request_id = f"untraced-{uuid.uuid4().hex}"
    headers = {"Content-Type": "image/png", "X-Request-Id": request_id}
    response = requests.post(
        traced_worker.url + "/process?op=invert", data=png_of(8, 8), headers=headers, timeout=TIMEOUT
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with receiver.lock:
            mine = [s for s in receiver.spans if s["attributes"].get("worker.request_id") == request_id]
        if mine:
            break
        time.sleep(0.05)
    assert mine, "no request span exported"
    assert mine[0]["parent_span_id"] == "" and mine[0]["trace_id"] != "0" * 32


PYTHON_PROBE = """
import sys
from worker_python import tracing
from worker_python.app import create_app
from worker_python.config import load_settings
create_app(load_settings(), tracer=tracing.from_env())
print(sorted({m.split('.')[1] for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))}))
"""
NODE_PROBE = """
const { createTracing } = require('./tracing');
const { buildApp } = require('./app');
const { createLogger } = require('./log');
buildApp(require('./config').loadConfig(), { logger: createLogger({ level: 'error' }), tracing: createTracing() });
const loaded = (part) => Object.keys(require.cache).some((file) => file.includes(`@opentelemetry/${part}`));
console.log(JSON.stringify(['exporter', 'sdk'].filter((part) => loaded(part))));
process.exit(0);
"""


def loaded_otel(runtime: str, env: dict) -> list:
    command = [sys.executable, "-c", PYTHON_PROBE] if runtime == "python" else ["node", "-e", NODE_PROBE]
    cwd = ROOT / ("worker-python" if runtime == "python" else "worker-nodejs")
    base = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    done = subprocess.run(command, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_without_an_endpoint_no_sdk_or_exporter_is_loaded(runtime):
    """Not loaded means no exporter thread or timer and no span work: requests see only no-ops.
    (prom-client loads @opentelemetry/api itself, for exemplars; that is the no-op API.)"""
    assert loaded_otel(runtime, {}) == []
    # the probe can see them: with the endpoint set, both are loaded
    assert loaded_otel(runtime, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}) == ["exporter", "sdk"]
