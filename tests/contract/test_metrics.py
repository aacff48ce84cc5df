"""GET /metrics on both runtimes (contract README, "Metrics"): the same names, types and labels,
and counters that move by the right amount after known requests."""

from __future__ import annotations

import signal
import socket
import time
from contextlib import contextmanager

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from scripts.testkit.images import solid_png
from scripts.testkit.procs import RUNTIMES

TIMEOUT = 30
DURATION = "http_server_request_duration_seconds"
DURATION_LABELS = {"http_request_method", "http_route", "http_response_status_code", "op"}
# family name (as the parser gives it, without _total) -> (type, label names)
FAMILIES = {
    DURATION: ("histogram", DURATION_LABELS),
    "http_server_active_requests": ("gauge", set()),
    "http_server_request_body_size_bytes": ("counter", {"op"}),
    "http_server_response_body_size_bytes": ("counter", {"op"}),
    "worker_rejections": ("counter", {"reason"}),
    "worker_decode_failures": ("counter", {"reason"}),
    "process_resident_memory_bytes": ("gauge", set()),
    "process_cpu_seconds": ("counter", set()),
}
NODE_ONLY = {"nodejs_eventloop_lag_seconds": ("gauge", set())}


@pytest.fixture(scope="module", params=RUNTIMES)
def worker(request, worker_factory):
    """One slot, so a second /process is a 503 busy."""
    return worker_factory(request.param, {"WORKER_MAX_INFLIGHT": "1"})


@contextmanager
def held_slot(worker, limit: float = 10):
    """A /process whose body is never finished: it holds the worker's one slot (taken before
    the body is read) until closed; returns once /healthz shows it in flight."""
    host, port = worker.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        head = f"POST /process HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        sock.sendall(head.encode() + b"x" * 10)
        deadline = time.monotonic() + limit
        while requests.get(worker.url + "/healthz", timeout=TIMEOUT).json()["inflight"] < 1:
            assert time.monotonic() < deadline, "the held request never took the slot"
            time.sleep(0.05)
        yield


def scrape(worker) -> dict:
    """{(sample name, frozenset of labels): value}, and checks the exposition's content type."""
    response = requests.get(worker.url + "/metrics", timeout=TIMEOUT)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests_counted(samples: dict, status: int, op: str = "none") -> float:
    labels = {"http_request_method": "POST", "http_route": "/process", "http_response_status_code": str(status)}
    return value(samples, DURATION + "_count", **labels, op=op)


def post(worker, body: bytes, op: str = "grayscale") -> requests.Response:
    headers = {"Content-Type": "image/png"}
    return requests.post(f"{worker.url}/process?op={op}", data=body, headers=headers, timeout=TIMEOUT)


def test_metric_names_types_and_labels_are_the_contracts(worker):
    post(worker, solid_png(4, 4))  # so the histogram has a labelled series
    response = requests.get(worker.url + "/metrics", timeout=TIMEOUT)
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    expected = {**FAMILIES, **(NODE_ONLY if "nodejs" in worker.log_path.name else {})}
    for name, (kind, labels) in expected.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, f"{name} is a {families[name].type}, not a {kind}"
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, f"{sample.name} has labels {sample.labels}"
    reasons = {sample.labels["reason"] for sample in families["worker_rejections"].samples}
    assert reasons == {"busy", "draining"}, "both reasons are exposed from the start, at 0"


def test_counters_move_by_the_right_amount(worker):
    before = scrape(worker)
    image = solid_png(64, 48)
    ok = post(worker, image)
    assert ok.status_code == 200
    bad_param = post(worker, image, op="no-such-op")
    assert bad_param.status_code == 400
    truncated = post(worker, image[:60])  # the header says 64x48, the data ends early
    assert truncated.status_code == 400 and truncated.json()["error"]["code"] == "bad_image"
    after = scrape(worker)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert requests_counted(after, 200, "grayscale") - requests_counted(before, 200, "grayscale") == 1
    assert requests_counted(after, 400, "none") - requests_counted(before, 400, "none") == 1, "bad op: op none"
    assert requests_counted(after, 400, "grayscale") - requests_counted(before, 400, "grayscale") == 1
    assert moved("worker_decode_failures_total", reason="bad_image") == 1
    assert moved("http_server_request_body_size_bytes_total", op="grayscale") == len(image) + 60
    assert moved("http_server_response_body_size_bytes_total", op="grayscale") >= len(ok.content)
    assert moved("worker_rejections_total", reason="busy") == 0
    assert value(after, "http_server_active_requests") == 0


def test_scrapes_are_not_counted(worker):
    first = scrape(worker)
    second = scrape(worker)
    counts = {key: v for key, v in second.items() if key[0] == DURATION + "_count"}
    assert counts == {key: v for key, v in first.items() if key[0] == DURATION + "_count"}
    assert not any(("http_route", "other") in key[1] for key in second), "no /metrics series"


def test_a_busy_rejection_counts_once_and_metrics_answer_while_the_slot_is_held(worker):
    with held_slot(worker):
        before = scrape(worker)  # answered while the only slot is held
        assert value(before, "http_server_active_requests") >= 1
        refused = post(worker, solid_png(8, 8))
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "busy"
        after = scrape(worker)
    assert (
        value(after, "worker_rejections_total", reason="busy") - value(before, "worker_rejections_total", reason="busy")
        == 1
    )
    assert requests_counted(after, 503) - requests_counted(before, 503) == 1


def test_a_draining_rejection_counts_once(worker_factory, runtime):
    worker = worker_factory(runtime, {"WORKER_MAX_INFLIGHT": "1", "WORKER_GRACE_SECONDS": "15"})
    with held_slot(worker):  # keeps the worker draining (not exiting) after SIGTERM
        worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while requests.get(worker.url + "/healthz", timeout=TIMEOUT).json()["status"] != "draining":
            assert time.monotonic() < deadline, "the worker never said draining"
            time.sleep(0.05)
        before = scrape(worker)
        refused = post(worker, solid_png(8, 8))
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        after = scrape(worker)
    assert (
        value(after, "worker_rejections_total", reason="draining")
        - value(before, "worker_rejections_total", reason="draining")
        == 1
    )
    assert value(after, "worker_rejections_total", reason="busy") == 0


def test_metrics_need_no_token_and_show_no_secret(worker_factory, runtime):
    token = "metrics-s3cret-token"
    worker = worker_factory(runtime, {"WORKER_TOKEN": token})
    response = requests.get(worker.url + "/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    assert token not in response.text
    assert "WORKER_" not in response.text


def test_metrics_off_serves_no_metrics_and_still_processes(worker_factory, runtime):
    """WORKER_METRICS=off is the bench's switch (scripts/bench_observe.py): nothing else changes."""
    worker = worker_factory(runtime, {"WORKER_METRICS": "off"})
    assert requests.get(worker.url + "/metrics", timeout=TIMEOUT).status_code == 404
    assert post(worker, solid_png(8, 8)).status_code == 200
    assert requests.get(worker.url + "/healthz", timeout=TIMEOUT).status_code == 200


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    return request.param
