"""Coordinator traces (issue 18): one trace per job, `job` -> `strip` -> `attempt` spans, each
attempt's span continued by the worker it was sent to; both real workers and the coordinator
export to one real OTLP receiver on 127.0.0.1 (tests/support/otlp.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from coordinator import tracing
from coordinator.config import CoordinatorConfig
from coordinator.engine import run_job
from scripts.testkit.images import png_bytes
from scripts.testkit.procs import free_port
from tests.support.otlp import otlp_receiver
from tests.support.page import colourful_png, open_page, process, upload

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST_BATCH = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture(scope="module")
def receiver():
    with otlp_receiver() as server:
        yield server


@pytest.fixture(scope="module")
def traced_fleet(worker_factory, receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, **FAST_BATCH}
    return [worker_factory(runtime, env).url for runtime in ("python", "nodejs")]


@pytest.fixture
def tracing_on(receiver, monkeypatch):
    for name, value in {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, **FAST_BATCH}.items():
        monkeypatch.setenv(name, value)


def traced_job(urls: list[str], strips: int = 2):
    config = dataclasses.replace(CoordinatorConfig(workers=tuple(urls), source="test"))
    pixels = np.random.default_rng(5).integers(0, 255, (40, 24, 3), dtype=np.uint8)
    result = run_job(png_bytes(pixels), config, plan="seed", strips=strips)
    tracing.flush()
    return result


def wait_names(receiver, trace_id: str, wanted: dict[str, int], limit: float = 15) -> list[dict]:
    """The trace's spans once it holds at least `wanted` spans of each name (decode/op/encode
    are the workers' own business: tests/workers/test_tracing_workers.py)."""
    deadline = time.monotonic() + limit
    while True:
        with receiver.lock:
            spans = [span for span in receiver.spans if span["trace_id"] == trace_id]
        names = Counter(span["name"] for span in spans)
        if all(names[name] >= count for name, count in wanted.items()) or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def by_id(spans: list[dict]) -> dict[str, dict]:
    return {span["span_id"]: span for span in spans}


def test_one_trace_covers_the_job_its_strips_attempts_and_both_workers(traced_fleet, receiver, tracing_on):
    result = traced_job(traced_fleet)
    spans = wait_names(receiver, result.trace_id, {"job": 1, "strip": 2, "attempt": 2, "POST /process": 2})
    ids, names = by_id(spans), [span["name"] for span in spans]
    [job] = [span for span in spans if span["name"] == "job"]
    assert job["parent_span_id"] == "" and names.count("strip") == 2 and names.count("attempt") == 2
    for strip in result.strips:
        assert strip.trace_id == result.trace_id
        [attempt] = [s for s in spans if s["attributes"].get("request_id") == strip.request_id]
        assert attempt["name"] == "attempt" and ids[attempt["parent_span_id"]]["name"] == "strip"
        assert ids[ids[attempt["parent_span_id"]]["parent_span_id"]] is job
        [served] = [s for s in spans if s["attributes"].get("worker.request_id") == strip.request_id]
        assert served["parent_span_id"] == attempt["span_id"], "the worker's span is not the attempt's child"


def test_a_retried_strip_has_two_attempts_under_one_strip_span(traced_fleet, receiver, tracing_on):
    """The hostile worker claims grayscale first and answers 500: the strip's second attempt
    goes to a real worker, both attempts under the same strip span, only the second continued."""
    from tests.support.hostile_worker import HostileWorker

    with HostileWorker(health="ok", process="ok") as bad:
        result = traced_job([bad.url, *traced_fleet])
        assert bad.requests["/process"] >= 1
    retried = next(strip for strip in result.strips if strip.attempts > 1)
    spans = wait_names(receiver, result.trace_id, {"job": 1, "strip": 2, "attempt": 3, "POST /process": 2})
    ids = by_id(spans)
    attempts = [s for s in spans if s["name"] == "attempt" and s["attributes"]["worker.url"] == bad.url]
    good = next(s for s in spans if s["attributes"].get("request_id") == retried.request_id)
    assert attempts and attempts[0]["parent_span_id"] == good["parent_span_id"]
    assert ids[good["parent_span_id"]]["attributes"]["strip.index"] == retried.index
    served = [s for s in spans if s["attributes"].get("worker.request_id") == retried.request_id]
    assert len(served) == 1 and served[0]["parent_span_id"] == good["span_id"]


def test_without_an_endpoint_the_job_still_sends_one_trace_id_and_loads_no_sdk(python_worker, nodejs_worker):
    """A job in a fresh interpreter with no OTEL variable: strips share the job's random trace
    id, and no opentelemetry module was imported."""
    probe = (
        "import sys, dataclasses, numpy as np\n"
        "from coordinator.config import CoordinatorConfig\n"
        "from coordinator.engine import run_job\n"
        "from scripts.testkit.images import png_bytes\n"
        f"config = CoordinatorConfig(workers=({python_worker.url!r}, {nodejs_worker.url!r}), source='test')\n"
        "r = run_job(png_bytes(np.zeros((8, 8, 3), np.uint8)), config, plan='seed', strips=2)\n"
        "assert len(r.trace_id) == 32 and int(r.trace_id, 16), r.trace_id\n"
        "assert {s.trace_id for s in r.strips} == {r.trace_id}\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_process_trace_prints_the_trace_id_whose_spans_the_cli_exported(traced_fleet, receiver, tmp_path):
    """`--trace` prints the id; the CLI's spans leave at exit (the SDK's flush), not lost."""
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(np.zeros((16, 8, 3), np.uint8)))
    command = [sys.executable, "-m", "coordinator", "process", str(source), "-o", str(tmp_path / "out.png")]
    command += ["--trace", "--workers", ",".join(traced_fleet)]
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [trace_id] = re.findall(r"^trace ([0-9a-f]{32})$", done.stderr, re.MULTILINE)
    spans = wait_names(receiver, trace_id, {"job": 1, "strip": 2, "attempt": 2})
    assert Counter(span["name"] for span in spans)["job"] == 1


def test_with_no_collector_at_the_endpoint_the_cli_succeeds_with_one_warning_line(traced_fleet, tmp_path):
    """No collector listening: the job's output is written, exit 0, and the SDK's retry lines
    become one `warning:` line naming the endpoint (they used to be printed as they came)."""
    source = tmp_path / "in.png"
    source.write_bytes(png_bytes(np.zeros((16, 8, 3), np.uint8)))
    closed = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "coordinator", "process", str(source), "-o", str(tmp_path / "out.png")]
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": closed, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    done = subprocess.run(
        [*command, "--workers", ",".join(traced_fleet)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.png").stat().st_size > 0
    lines = [line for line in done.stderr.splitlines() if not line.startswith(str(source))]  # progress
    assert lines[0].startswith("wrote ") and len(lines) == 2, done.stderr
    assert lines[1].startswith(f"warning: traces not exported to {closed}: ") and len(lines[1]) < 300, lines[1]


def test_the_pages_strip_table_shows_the_trace_id_when_tracing_is_on(monkeypatch, traced_fleet, receiver, tracing_on):
    page = process(upload(open_page(monkeypatch, traced_fleet), "colour.png", colourful_png()))
    [trace_id] = set(page.dataframe[0].value["trace"])
    tracing.flush()
    spans = wait_names(receiver, trace_id, {"job": 1, "attempt": 2})
    assert Counter(span["name"] for span in spans)["job"] == 1, "the trace shown is not the job's"
