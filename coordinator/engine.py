"""Run one job: decode, plan strips, hand them to a Job, pump its events to the caller.

The parts, one job each: transport.py (HTTP under deadlines), request.py (one strip request
and its reply), routing.py (router, slots, the pure retry/failover decision), pieces.py (wire
format and request split), job.py (body, attempt, strip, stitch).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np

from coordinator import codecs, imaging
from coordinator.config import CoordinatorConfig
from coordinator.discovery import WorkerStatus, discover
from coordinator.errors import NoWorkerError
from coordinator.job import Job, JobResult, Progress, StripEvent, StripResult
from coordinator.pieces import MAX_STRIP_THREADS, make_session, piece_ranges, wire_for
from coordinator.plan import Strip, check_params, parse_plan, plan_strips
from coordinator.routing import Router, StripFailed, unavailable_reasons
from coordinator.transport import Cancel, Transport, error_reason

# Names callers import from here (cli.py, app.py, scripts, tests).
__all__ = [
    "JobResult",
    "StripEvent",
    "StripFailed",
    "StripResult",
    "cancel_on_interrupt",
    "cancel_running_jobs",
    "error_reason",
    "make_session",
    "piece_ranges",
    "run_job",
    "unavailable_reasons",
    "wire_for",
]


_STOPPING = threading.Event()
_RUNNING: set[Cancel] = set()
_RUNNING_LOCK = threading.Lock()


def cancel_running_jobs() -> None:
    """Ctrl-C: end every job in this process now (their exchanges are cut, their threads are
    daemons) and refuse new ones, so a batch ends at once instead of job by job."""
    _STOPPING.set()
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for cancel in running:
        cancel.fire()


@contextlib.contextmanager
def cancel_on_interrupt():
    """Wrap the code that waits for jobs in other threads: a KeyboardInterrupt there cancels them."""
    try:
        yield
    except KeyboardInterrupt:
        cancel_running_jobs()
        raise


@contextlib.contextmanager
def _registered(cancel: Cancel):
    with _RUNNING_LOCK:
        _RUNNING.add(cancel)
    try:
        yield
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(cancel)


def undecoded_size(data: bytes, config: CoordinatorConfig) -> tuple[int, int] | None:
    """(height, width) of an input the job need not decode: a JPEG whose rows jpegtran cuts
    losslessly (codecs.jpeg_source; its full read checks the file, and a body that needs
    pixels decodes then), within max_pixels. None: decode first."""
    source = codecs.jpeg_source(data)
    if source is None or source.width * source.height > config.max_pixels:
        return None
    return source.height, source.width


def plan_layout(plan: str, strips: int, params: dict | None, height: int) -> tuple[list[str], dict, list[Strip]]:
    """The ops, checked params and strip rows; seed or one op gets no more strips than rows."""
    ops = parse_plan(plan, strips)
    if len(ops) > height and len(set((plan or "seed").split(","))) == 1:
        ops = parse_plan(plan, height)
    params = check_params(ops, params)
    return ops, params, plan_strips(height, ops, params)


def pump(job: Job, count: int, on_event: Callable[[StripEvent], None] | None) -> dict[int, StripResult]:
    """Hand events to on_event on this thread until every strip is done; re-raises a strip's error."""
    results: dict[int, StripResult] = {}
    while len(results) < count:
        item = job.events.get()
        if isinstance(item, Progress):
            if on_event is not None:
                on_event(item.event)
        elif item.error is not None:
            raise item.error
        else:
            results[item.index] = item.result
    while on_event is not None and not job.events.empty():  # events queued before the last result
        item = job.events.get_nowait()
        if isinstance(item, Progress):
            on_event(item.event)
    return results


def run_strips(
    job: Job, layout: list[Strip], on_event: Callable[[StripEvent], None] | None, own_session: Transport | None
) -> list[StripResult]:
    """The job's strips started and pumped; on any failure (or Ctrl-C) every exchange of the
    job ends now; on success a session made for this job is closed."""
    done = False
    try:
        job.start(layout)
        results = pump(job, len(layout), on_event)
        done = True
    finally:
        if not done:
            job.stop()
        elif own_session is not None:
            own_session.close()
    return [results[i] for i in range(len(layout))]


def job_result(job: Job, ops: list[str], strips: list[StripResult], workers: list[WorkerStatus], marks) -> JobResult:
    """marks: perf_counter at start, decoded, discovered, finished."""
    started, decoded, discovered, finished = marks
    timings = {
        "decode_ms": (decoded - started) * 1000,
        "discover_ms": (discovered - decoded) * 1000,
        "dispatch_ms": (finished - discovered) * 1000,
        "stitch_ms": job.stitch_seconds * 1000,
    }
    height, width = job.result.shape[:2]
    return JobResult(job.result, width, height, ops, strips, (finished - started) * 1000, workers, timings)


def run_job(
    data: bytes,
    config: CoordinatorConfig,
    *,
    plan: str = "seed",
    strips: int = 2,
    params: dict | None = None,
    on_event: Callable[[StripEvent], None] | None = None,
    workers: list[WorkerStatus] | None = None,
    session: Transport | None = None,
    pixels: np.ndarray | tuple[int, int] | None = None,
    png_level: int | None = None,
) -> JobResult:
    """Process one image on the workers. Raises InputError or NoWorkerError; never returns a
    partial image. on_event runs on the calling thread. `pixels`: the caller's own
    imaging.decode_pixels(data) result, so a caller that already decoded (the page) saves it,
    or the (height, width) of undecoded_size(data, config); without it a JPEG that is cut
    losslessly is not decoded at all unless a body needs its pixels.
    `png_level`: also encode the result as PNG (JobResult.png, the bytes of
    imaging.encode_output(pixels, "png", png_level=png_level)), deflated as the replies arrive."""
    started = time.perf_counter()
    if _STOPPING.is_set():
        raise NoWorkerError(None, plan or "seed", [], summary="interrupted")
    if pixels is None:
        size = undecoded_size(data, config)
        pixels = imaging.decode_pixels(data, config.max_pixels) if size is None else size
    decoded = time.perf_counter()
    height = pixels[0] if isinstance(pixels, tuple) else pixels.shape[0]
    ops, params, layout = plan_layout(plan, strips, params, height)
    own_session = None if session is not None else make_session(min(len(layout), MAX_STRIP_THREADS))
    session = session or own_session
    workers = discover(config, session) if workers is None else workers
    discovered = time.perf_counter()
    router = Router(workers)
    router.check_capable(layout)
    job = Job(data, pixels, params, config, router, session, png_level)
    try:
        with _registered(job.cancel):
            results = run_strips(job, layout, on_event, own_session)
    except BaseException as exc:
        job.span.end(str(exc) or type(exc).__name__)
        raise
    finished = time.perf_counter()
    png = job.png.finish() if job.png is not None else None
    job.span.end()
    result = job_result(job, ops, results, workers, (started, decoded, discovered, finished))
    result.trace_id, result.png = job.span.trace_id, png
    result.timings["png_finish_ms"] = (time.perf_counter() - finished) * 1000
    return result
