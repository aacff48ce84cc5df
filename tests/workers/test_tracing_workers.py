"""Worker traces (contract README, "Traces"): each runtime continues the W3C `traceparent` it is
sent with a request span and decode/op/encode children, exported over real OTLP/HTTP to a
receiver on 127.0.0.1; with no endpoint set, no OpenTelemetry code is loaded at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests

from scripts.testkit.images import solid_png
from scripts.testkit.procs import ROOT, RUNTIMES
from tests.support.otlp import otlp_receiver

TIMEOUT = 30
PARENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def receiver():
    with otlp_receiver() as server:
        yield server


@pytest.fixture(scope="module", params=RUNTIMES)
def traced_worker(request, worker_factory, receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    return worker_factory(request.param, env)


def test_worker_continues_the_callers_trace_with_decode_op_encode_children(traced_worker, receiver):
    trace_id = uuid.uuid4().hex
    headers = {
        "Content-Type": "image/png",
        "traceparent": f"00-{trace_id}-{PARENT_SPAN_ID}-01",
        "X-Request-Id": f"trace-test-{trace_id[-4:]}",
    }
    response = requests.post(
        traced_worker.url + "/process?op=sepia", data=solid_png(32, 16), headers=headers, timeout=TIMEOUT
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
    response = requests.post(worker.url + "/process?op=invert", data=solid_png(8, 8), headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=TIMEOUT) == 0
    assert len(receiver.wait_for(trace_id, 4, limit=5)) == 4


def test_a_request_without_traceparent_starts_its_own_trace(traced_worker, receiver):
    request_id = f"untraced-{uuid.uuid4().hex}"
    headers = {"Content-Type": "image/png", "X-Request-Id": request_id}
    response = requests.post(
        traced_worker.url + "/process?op=invert", data=solid_png(8, 8), headers=headers, timeout=TIMEOUT
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
