"""`stripes workers` shows each worker's /metrics figures (issue 18): /process requests, errors,
503s, in flight, p50/p95; read from real workers on loopback, and a worker whose /metrics is
not Prometheus text gets a one-line error, not made-up figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests

from coordinator import worker_metrics
from scripts.testkit.images import solid_png
from tests.support.hostile_worker import HostileWorker
from tests.support.page import open_page, texts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROCESS = 'http_request_method="POST",http_route="/process",http_response_status_code="{}",op="{}"'
DURATION = "http_server_request_duration_seconds"


def histogram(status: str, op: str, buckets: dict[str, int]) -> list[str]:
    """A node worker's lines (label order differs between runtimes: parsed by name, not position)."""
    labels = PROCESS.format(status, op)
    lines = [f'{DURATION}_bucket{{le="{le}",{labels}}} {count}' for le, count in buckets.items()]
    return [*lines, f"{DURATION}_count{{{labels}}} {buckets['+Inf']}"]


SAMPLE = "\n".join(
    [
        f"# TYPE {DURATION} histogram",
        *histogram("200", "sepia", {"0.005": 1, "0.01": 3, "+Inf": 3}),
        *histogram("503", "none", {"0.005": 0, "0.01": 0, "+Inf": 1}),
        f"{DURATION}_count{{{PROCESS.format('200', 'none').replace('/process', '/healthz')}}} 7",
        "http_server_active_requests 2",
        "garbage line {{{ here",
    ]
)


def test_figures_from_a_worker_body():
    one = worker_metrics.figures("http://w", SAMPLE)
    assert (one.requests, one.errors, one.busy, one.inflight) == (4, 1, 1, 2)
    assert one.p50_ms == pytest.approx(7.5)  # rank 2 of 4, halfway into the 5-10 ms bucket
    assert one.p95_ms == pytest.approx(10.0)  # in +Inf: the highest finite bound


def test_values_no_count_can_hold_are_skipped_not_raised():
    """int(inf) raises OverflowError: a worker's +Inf or NaN count must not crash `workers`."""
    text = f"{DURATION}_count{{{PROCESS.format('200', 'op')}}} +Inf\nhttp_server_active_requests NaN\n"
    one = worker_metrics.figures("http://w", text)
    assert (one.requests, one.inflight) == (0, 0)
    bad_bound = f'{DURATION}_bucket{{le="abc",{PROCESS.format("200", "op")}}} 1\n'
    assert worker_metrics.figures("http://w", bad_bound).p50_ms is None


def test_quantile_of_an_empty_histogram_is_none():
    assert worker_metrics.quantile(0.5, {}) is None
    assert worker_metrics.figures("http://w", "").p50_ms is None


@pytest.fixture(scope="module")
def fresh_fleet(worker_factory):
    """Workers of their own, so their counts are ours alone."""
    return [worker_factory(runtime).url for runtime in ("python", "nodejs")]


def run_workers_command(urls: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "coordinator", "workers", "--workers", ",".join(urls)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_workers_command_prints_each_workers_figures(fresh_fleet):
    for url in fresh_fleet:
        ok = requests.post(url + "/process?op=invert", data=solid_png(8, 8), headers={"Content-Type": "image/png"})
        bad = requests.post(url + "/process?op=bogus", data=solid_png(8, 8), headers={"Content-Type": "image/png"})
        assert (ok.status_code, bad.status_code) == (200, 400)
    done = run_workers_command(fresh_fleet)
    assert done.returncode == 0, done.stderr
    for url in fresh_fleet:
        [line] = [line for line in done.stdout.splitlines() if line.startswith(url + "  2 requests")]
        assert "1 errors, 0 busy (503), 0 in flight, p50 " in line and "p95 " in line and "p50 -" not in line


def test_a_worker_whose_metrics_are_not_prometheus_text_gets_an_error_line(python_worker):
    with HostileWorker(health="ok") as bad:  # its /metrics answers an HTML page
        done = run_workers_command([python_worker.url, bad.url])
        assert bad.requests["other"] >= 1
    assert f"{bad.url}  /metrics: not Prometheus text" in done.stdout, done.stdout


def test_the_pages_worker_cards_show_the_same_figures(monkeypatch, fresh_fleet):
    page = open_page(monkeypatch, fresh_fleet)
    shown = texts(page.sidebar.text)
    figures = re.findall(r"^\d+ requests, \d+ errors, \d+ busy \(503\), \d+ in flight, p50 .+, p95 .+$", shown, re.M)
    assert len(figures) == 2, shown
