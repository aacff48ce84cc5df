"""A load run through the coordinator engine against workers made to push back (tests/reliability/test_load.py,
soak)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from scripts.testkit.images import expected_pixels, max_pixel_diff, png_bytes, sample_rgb
from scripts.testkit.procs import json_lines

JOBS = 50
CLIENT_THREADS = 10
JOB_TIMEOUT_S = 120
PLANS = ("grayscale", "sepia", "invert")


@dataclass
class LoadOutcome:
    completed: int = 0
    failed_cleanly: int = 0  # a one-line CoordinatorError, fixed by a retry after the rush
    lost: int = 0  # wrong pixels, other exceptions, hangs, retry also failed
    busy_retries: int = 0  # strip retries the engine reported for a 503 busy
    neighbour_busy: int = 0  # 503 busy answers the neighbour client got
    problems: list = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class _Jobs:
    """The jobs of one load run and what became of them, shared by the client threads."""

    config: object
    strips: int
    outcome: LoadOutcome = field(default_factory=LoadOutcome)
    lock: threading.Lock = field(default_factory=threading.Lock)
    to_retry: list = field(default_factory=list)

    def note(self, kind: str, problem: str | None = None) -> None:
        with self.lock:
            setattr(self.outcome, kind, getattr(self.outcome, kind) + 1)
            if problem and len(self.outcome.problems) < 20:
                self.outcome.problems.append(problem)

    def one(self, spec, retrying: bool = False) -> None:
        from coordinator.engine import run_job
        from coordinator.errors import CoordinatorError

        index, plan, image = spec
        busy = 0

        def on_event(event) -> None:
            nonlocal busy
            if event.kind == "retry" and ("busy" in (event.message or "") or "503" in (event.message or "")):
                busy += 1

        try:
            result = run_job(png_bytes(image), self.config, plan=plan, strips=self.strips, on_event=on_event)
        except CoordinatorError as exc:
            self._failed(spec, str(exc), retrying)
            return
        except Exception as exc:  # anything else is a bug: it is "lost"
            self.note("lost", f"job {index}: {type(exc).__name__}: {exc}")
            return
        finally:
            with self.lock:
                self.outcome.busy_retries += busy
        diff = max_pixel_diff(result.image, expected_pixels(image, plan))
        if diff > 1:
            self.note("lost", f"job {index} ({plan}): wrong pixels, max diff {diff}")
        elif not retrying:
            self.note("completed")

    def _failed(self, spec, message: str, retrying: bool) -> None:
        index = spec[0]
        if "\n" in message or not message:
            self.note("lost", f"job {index}: error is not one line: {message!r}")
        elif retrying:
            self.note("lost", f"job {index}: failed again on retry: {message}")
        else:
            self.note("failed_cleanly", None)
            with self.lock:
                self.to_retry.append(spec)


def run_load(
    worker_urls: list[str],
    jobs: int = JOBS,
    threads: int = CLIENT_THREADS,
    strips: int = 4,
    seed: int = 11,
    token: str | None = None,
    neighbour_threads: int = 1,
) -> LoadOutcome:
    from coordinator.config import load_config

    environ = {"COORDINATOR_MAX_ATTEMPTS": "6", "COORDINATOR_READ_TIMEOUT": "30"}
    if token:
        environ["COORDINATOR_WORKER_TOKEN"] = token
    config = load_config(workers=",".join(worker_urls), environ=environ)
    rng = random.Random(seed)
    specs = [
        (index, rng.choice(PLANS), sample_rgb(rng.randint(24, 96), rng.randint(16, 80), index)) for index in range(jobs)
    ]
    run = _Jobs(config, strips)
    outcome = run.outcome
    started = time.monotonic()
    stop_neighbour = threading.Event()
    neighbours = [
        threading.Thread(target=neighbour, args=(url, stop_neighbour, outcome), daemon=True)
        for url in worker_urls
        for _ in range(neighbour_threads)
    ]
    for thread in neighbours:
        thread.start()
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            futures = [pool.submit(run.one, spec) for spec in specs]
            _, not_done = wait(futures, timeout=JOB_TIMEOUT_S * 2)
    finally:
        stop_neighbour.set()
        for thread in neighbours:
            thread.join(timeout=15)
    for _ in not_done:
        run.note("lost", "a job did not finish in time (hang)")
    # "A retry fixes it": the user's retry, once the rush is over, must succeed.
    for spec in run.to_retry:
        run.one(spec, retrying=True)
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
    return sum(
        1 for entry in json_lines(log_text.splitlines()) if entry.get("status") == 503 or entry.get("code") == "busy"
    )


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
