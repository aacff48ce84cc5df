"""Graceful SIGTERM on both runtimes: the request in flight completes, new work is refused,
the process exits 0 within WORKER_GRACE_SECONDS.

A slow upload over a raw socket holds a request in flight deterministically: the worker has
the headers and half the body when SIGTERM arrives, and gets the rest only afterwards.
"""

from __future__ import annotations

import signal

import pytest

from scripts.testkit.images import png_bytes, sample_rgb
from scripts.testkit.shutdown import GRACE_SECONDS, PRIMARY, open_slow_upload, sigterm_in_flight, wait_inflight


@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_sigterm_finishes_the_request_in_flight_and_exits_0(runtime, worker_factory):
    worker = worker_factory(runtime, {"WORKER_GRACE_SECONDS": str(GRACE_SECONDS)})
    passed, what = sigterm_in_flight(worker, runtime)
    assert passed, f"{what}\n{worker.log_text()[-2000:]}"


@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_grace_period_bounds_a_request_that_never_finishes(runtime, worker_factory):
    """A client that stalls forever cannot keep the worker alive past the grace period."""
    grace = 2
    worker = worker_factory(runtime, {"WORKER_GRACE_SECONDS": str(grace)})
    body = png_bytes(sample_rgb(32, 32))
    sock = open_slow_upload(worker.url, body, PRIMARY[runtime])
    try:
        wait_inflight(worker.url)
        worker.signal(signal.SIGTERM)
        try:
            worker.proc.wait(timeout=grace + 15)
        except Exception:
            pytest.fail(f"worker still running {grace + 15}s after SIGTERM with grace {grace}s")
    finally:
        sock.close()
