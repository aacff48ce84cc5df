"""Load through the coordinator engine against a local fleet that is made to push back.

Workers run with WORKER_MAX_INFLIGHT=1. The engine caps its own requests per worker in one
process (WorkerSlots), so a second client is what makes a worker answer 503 `busy`: a
neighbour thread posts straight to the workers, as another coordinator process would. Every job
either completes with the right pixels (checked against the contract's formulas, in this
process) or fails with one clear CoordinatorError that a plain retry fixes. Nothing may be
lost: no other exception, no hang, no silently wrong pixels.
"""

from __future__ import annotations

import pytest

from scripts.testkit.images import expected_pixels, max_pixel_diff, sample_rgb
from scripts.testkit.load import JOBS, busy_responses_in_log, peak_rss_mb, run_load

# -- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushy_fleet(worker_factory):
    """One worker per runtime that takes a single request at a time."""
    env = {"WORKER_MAX_INFLIGHT": "1"}
    return [worker_factory("python", env), worker_factory("nodejs", env)]


def test_reference_formulas_catch_a_wrong_op():
    image = sample_rgb(8, 8)
    assert max_pixel_diff(image.convert("L").convert("RGB"), expected_pixels(image, "grayscale")) <= 1
    assert max_pixel_diff(image, expected_pixels(image, "invert")) > 1


def test_fifty_jobs_under_backpressure_complete_correctly(pushy_fleet, record_property):
    outcome = run_load([worker.url for worker in pushy_fleet])
    assert outcome.lost == 0, "\n".join(outcome.problems)
    assert outcome.completed + outcome.failed_cleanly == JOBS
    busy_logged = sum(busy_responses_in_log(worker.log_text()) for worker in pushy_fleet)
    assert busy_logged > 0, "no 503 busy in the worker logs: backpressure went untested"
    assert outcome.busy_retries > 0, "the engine never met a 503 busy, so its retry went untested"
    for worker, runtime in zip(pushy_fleet, ("python", "nodejs"), strict=True):
        assert worker.proc.poll() is None, "a worker died under load"
        peak = peak_rss_mb(worker.pid)
        assert peak > 0
        record_property(f"peak_rss_mb_{runtime}", round(peak, 1))  # shown in --junitxml
