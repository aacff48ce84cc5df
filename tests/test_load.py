"""Load through the coordinator engine against a local fleet that is made to push back.

Workers run with WORKER_MAX_INFLIGHT=1. The engine caps its own requests per worker in one
process (WorkerSlots), so a second client is what makes a worker answer 503 `busy`: a
neighbour thread posts straight to the workers, as another coordinator process would. Every job
either completes with the right pixels (checked against the contract's formulas, in this
process) or fails with one clear CoordinatorError that a plain retry fixes. Nothing may be
lost: no other exception, no hang, no silently wrong pixels.
"""
from __future__ import annotations

import io
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import pytest

JOBS = 50
CLIENT_THREADS = 10
JOB_TIMEOUT_S = 120
PLANS = ("grayscale", "sepia", "invert")


# -- pixels: the contract's formulas (tests/contract/README.md), one process, no workers -------

def sample_rgb(width: int, height: int, seed: int = 7):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_bytes(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def expected_pixels(image, op: str) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if op == "grayscale":
        gray = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
        out = np.stack([gray, gray, gray], axis=-1)
    elif op == "sepia":
        def channel(kr, kg, kb):
            return np.floor(kr * r + kg * g + kb * b + 0.5)
        out = np.stack([channel(.393, .769, .189), channel(.349, .686, .168),
                        channel(.272, .534, .131)], axis=-1)
    elif op == "invert":
        out = 255 - rgb
    else:
        raise ValueError(f"no reference for op {op!r}")
    return np.clip(out, 0, 255).astype(np.uint8)


def max_pixel_diff(image, expected: np.ndarray) -> int:
    got = np.asarray(image.convert("RGB"), dtype=np.int16)
    if got.shape != expected.shape:
        return 999
    return int(np.abs(got - expected.astype(np.int16)).max())


# -- the run -------------------------------------------------------------------------------------

@dataclass
class LoadOutcome:
    completed: int = 0
    failed_cleanly: int = 0          # a one-line CoordinatorError, fixed by a retry after the rush
    lost: int = 0                    # wrong pixels, other exceptions, hangs, retry also failed
    busy_retries: int = 0            # strip retries the engine reported for a 503 busy
    neighbour_busy: int = 0          # 503 busy answers the neighbour client got
    problems: list = field(default_factory=list)
    elapsed_s: float = 0.0


def run_load(worker_urls: list[str], jobs: int = JOBS, threads: int = CLIENT_THREADS,
             strips: int = 4, seed: int = 11, token: str | None = None,
             neighbour_threads: int = 1) -> LoadOutcome:
    from coordinator.config import load_config
    from coordinator.engine import run_job
    from coordinator.errors import CoordinatorError

    environ = {"COORDINATOR_MAX_ATTEMPTS": "6", "COORDINATOR_READ_TIMEOUT": "30"}
    if token:
        environ["COORDINATOR_WORKER_TOKEN"] = token
    config = load_config(workers=",".join(worker_urls), environ=environ)
    rng = random.Random(seed)
    specs = [(index, rng.choice(PLANS), sample_rgb(rng.randint(24, 96), rng.randint(16, 80), index))
             for index in range(jobs)]
    outcome = LoadOutcome()
    lock = threading.Lock()

    def note(kind: str, problem: str | None = None) -> None:
        with lock:
            setattr(outcome, kind, getattr(outcome, kind) + 1)
            if problem and len(outcome.problems) < 20:
                outcome.problems.append(problem)

    def one(spec, retrying: bool = False) -> None:
        index, plan, image = spec
        busy = 0

        def on_event(event) -> None:
            nonlocal busy
            if event.kind == "retry" and ("busy" in (event.message or "") or "503" in (event.message or "")):
                busy += 1

        try:
            result = run_job(png_bytes(image), config, plan=plan, strips=strips, on_event=on_event)
        except CoordinatorError as exc:
            message = str(exc)
            if "\n" in message or not message:
                note("lost", f"job {index}: error is not one line: {message!r}")
            elif retrying:
                note("lost", f"job {index}: failed again on retry: {message}")
            else:
                note("failed_cleanly", None)
                with lock:
                    to_retry.append(spec)
            return
        except Exception as exc:             # anything else is a bug: it is "lost"
            note("lost", f"job {index}: {type(exc).__name__}: {exc}")
            return
        finally:
            with lock:
                outcome.busy_retries += busy
        diff = max_pixel_diff(result.image, expected_pixels(image, plan))
        if diff > 1:
            note("lost", f"job {index} ({plan}): wrong pixels, max diff {diff}")
        elif not retrying:
            note("completed")

    to_retry: list = []
    started = time.monotonic()
    stop_neighbour = threading.Event()
    neighbours = [threading.Thread(target=neighbour, args=(url, stop_neighbour, outcome), daemon=True)
                  for url in worker_urls for _ in range(neighbour_threads)]
    for thread in neighbours:
        thread.start()
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            futures = [pool.submit(one, spec) for spec in specs]
            done, not_done = wait(futures, timeout=JOB_TIMEOUT_S * 2)
    finally:
        stop_neighbour.set()
        for thread in neighbours:
            thread.join(timeout=15)
    for future in not_done:
        note("lost", "a job did not finish in time (hang)")
    # "A retry fixes it": the user's retry, once the rush is over, must succeed.
    for spec in to_retry:
        one(spec, retrying=True)
    outcome.elapsed_s = time.monotonic() - started
    return outcome


def neighbour(url: str, stop: threading.Event, outcome: LoadOutcome, limit: int = 2000) -> None:
    """Another client of the same worker: small requests back to back, bounded in count."""
    import requests

    body = png_bytes(sample_rgb(48, 48, seed=99))
    headers = {"Content-Type": "image/png"}
    with requests.Session() as session:
        for _ in range(limit):
            if stop.is_set():
                return
            try:
                response = session.post(f"{url}/process", data=body, headers=headers, timeout=10)
            except requests.RequestException:
                time.sleep(0.05)
                continue
            if response.status_code == 503:
                outcome.neighbour_busy += 1


def busy_responses_in_log(log_text: str) -> int:
    """Requests the worker answered 503 busy, from its JSON log lines."""
    count = 0
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("status") == 503 or entry.get("code") == "busy":
            count += 1
    return count


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of a process and its children, the largest of them, in MB."""
    import psutil

    try:
        processes = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    peak_kb = 0
    for process in processes:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
        except OSError:
            continue
    return peak_kb / 1024


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
    for worker, runtime in zip(pushy_fleet, ("python", "nodejs")):
        assert worker.proc.poll() is None, "a worker died under load"
        peak = peak_rss_mb(worker.pid)
        assert peak > 0
        record_property(f"peak_rss_mb_{runtime}", round(peak, 1))    # shown in --junitxml
