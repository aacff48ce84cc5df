"""Run one job: decode, plan strips, dispatch them concurrently with failover, stitch.

Transport (HTTP) lives here; pixel logic lives in imaging.py and plan.py.
"""
from __future__ import annotations

import collections
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import requests
import urllib3
from PIL import Image
from requests.adapters import HTTPAdapter

from coordinator import codecs, imaging
from coordinator.config import CoordinatorConfig, is_loopback
from coordinator.discovery import WorkerStatus, describe_exception, discover
from coordinator.errors import NoWorkerError
from coordinator.plan import OPERATIONS, Strip, no_halo, check_params, parse_plan, plan_strips

BACKOFF_CAP_SECONDS = 1.0
# Over a compressed (slow-link) wire a pointwise strip travels as up to WAN_PIECES requests to
# the same worker, so the first piece's reply is downloading while the worker still encodes
# the next (scripts/bench_wan.py: 4.3 s -> 3.x s on 12 MP at 50 Mbit/s). Pieces under
# WAN_PIECE_MIN_ROWS rows would cost more in request overhead than they overlap.
WAN_PIECES = 3
WAN_PIECE_MIN_ROWS = 256
MAX_STRIP_THREADS = 32
# A reply must keep coming: beyond read_timeout it may take 1 s per MIN_REPLY_RATE bytes of
# its raw size, so a worker (or a path) that trickles bytes cannot hold a strip forever.
MIN_REPLY_RATE = 128 * 1024
READ_CHUNK = 1 << 20


@dataclass
class StripEvent:
    kind: str  # "start" | "done" | "retry" | "failed"
    index: int
    op: str
    worker_url: str | None
    runtime: str | None
    attempt: int
    message: str = ""
    elapsed_ms: float = 0.0


@dataclass
class StripResult:
    index: int
    top: int
    bottom: int
    op: str
    worker_url: str
    runtime: str | None
    attempts: int
    worker_ms: float | None  # X-Processing-Ms
    total_ms: float  # request wall time of the successful attempt
    transfer_ms: float | None  # total_ms - worker_ms
    failovers: list[str] = field(default_factory=list)  # "url: reason" of failed attempts
    wire: str = "raw"
    bytes_sent: int = 0
    bytes_received: int = 0
    request_id: str = ""  # X-Request-Id of the successful attempt, as the worker logged it


@dataclass
class JobResult:
    pixels: np.ndarray  # (H, W, 3) uint8, the stitched result
    width: int
    height: int
    ops: list[str]
    strips: list[StripResult]
    elapsed_ms: float
    workers: list[WorkerStatus]
    # decode_ms, discover_ms, dispatch_ms (send, work, receive, stitch), stitch_ms (copying strips in)
    timings: dict[str, float] = field(default_factory=dict)

    @cached_property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels)


class StripFailed(Exception):
    """One attempt failed; `retry` says whether another worker may succeed."""

    def __init__(self, reason: str, retry: bool, worker_down: bool = False, retry_after: float = 0.0,
                 skip_worker: bool = False):
        super().__init__(reason)
        self.reason, self.retry, self.worker_down, self.retry_after = reason, retry, worker_down, retry_after
        # Not worth another try on this worker for this strip (down, refused, wrong token).
        self.skip_worker = skip_worker or worker_down or not retry


class WorkerSlots:
    """Process-wide cap on requests in flight per worker (its max_inflight), so our own
    strips and concurrent jobs queue here instead of collecting 503 busy."""

    _lock = threading.Lock()
    _slots: dict[str, threading.BoundedSemaphore] = {}

    @classmethod
    def for_worker(cls, worker: WorkerStatus) -> threading.BoundedSemaphore:
        with cls._lock:
            if worker.url not in cls._slots:
                cls._slots[worker.url] = threading.BoundedSemaphore(max(1, worker.max_inflight))
            return cls._slots[worker.url]


class Router:
    """Picks a worker for each attempt: capable, not down, least tried by this strip, the
    op's own runtime first, then the least loaded."""

    def __init__(self, workers: list[WorkerStatus]):
        self.workers = [w for w in workers if w.ok]
        self.lock = threading.Lock()
        self.load = collections.Counter()
        self.down: dict[str, str] = {}

    def capable(self, op: str) -> list[WorkerStatus]:
        return [w for w in self.workers if w.offers(op)]

    def choose(self, op: str, tried: collections.Counter, excluded: set[str]) -> WorkerStatus | None:
        spec = OPERATIONS[op]
        with self.lock:
            candidates = [w for w in self.capable(op) if w.url not in excluded and w.url not in self.down]
            if not candidates:
                return None

            def cost(worker: WorkerStatus):
                own = worker.primary == op or (spec.primary_runtime or "") == worker.runtime
                return (tried[worker.url], self.load[worker.url] + (0 if own else 1), self.load[worker.url])

            chosen = min(candidates, key=cost)
            self.load[chosen.url] += 1
            return chosen

    def mark_down(self, url: str, reason: str) -> None:
        with self.lock:
            self.down.setdefault(url, reason)


def make_session(pool_size: int) -> requests.Session:
    """One keep-alive session; the pool holds a connection per concurrent strip."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=max(4, pool_size * WAN_PIECES), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def wire_for(worker_url: str, transport: str) -> str:
    """auto: raw PPM on loopback (a memory copy beats any encode); elsewhere the JPEG's own rows
    (falling back to PNG for other inputs): below ~200 Mbit/s bytes cost more than CPU
    (figures in README "Wire formats")."""
    if transport != "auto":
        return transport
    return "raw" if is_loopback(worker_url) else "jpeg-cut"


@dataclass
class StripBody:
    """One request of a strip: the body holds rows [first_row, first_row + rows) of the image
    and fills rows [fills_top, fills_bottom) of the strip's send range."""
    data: bytes
    content_type: str
    wire: str  # what was actually sent: jpeg-cut falls back to png
    first_row: int
    rows: int
    fills_top: int
    fills_bottom: int


def piece_ranges(strip: Strip, wire: str) -> list[tuple[int, int]]:
    """The strip's send range, split for a slow link when its op reads no neighbouring rows."""
    top, bottom = strip.send_top, strip.send_bottom
    if wire == "raw" or OPERATIONS[strip.op].halo is not no_halo:
        return [(top, bottom)]
    count = max(1, min(WAN_PIECES, (bottom - top) // WAN_PIECE_MIN_ROWS))
    edges = [top + (bottom - top) * k // count for k in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def error_reason(response: requests.Response, content: bytes) -> str:
    try:
        error = json.loads(content)["error"]
        return f"HTTP {response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def read_reply(response: requests.Response, raw_size: int, read_timeout: float) -> bytes:
    """The whole body, in large reads (iter_content's 10 KB pieces cost much more on 18 MB
    strips), within a deadline and a size cap. Reading to the end returns the connection to
    the pool."""
    deadline = time.monotonic() + read_timeout + raw_size / MIN_REPLY_RATE
    limit = 2 * raw_size + 65536  # a compressed reply is never near twice the raw pixels
    chunks, size = [], 0
    while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
        size += len(chunk)
        if size > limit:
            response.close()
            raise StripFailed(f"bad reply: over {limit} bytes for {raw_size} bytes of pixels", retry=True)
        if time.monotonic() > deadline:
            response.close()
            raise StripFailed(f"reply too slow: {size} bytes in {read_timeout + raw_size / MIN_REPLY_RATE:.1f} s",
                              retry=True, worker_down=True)
        chunks.append(chunk)
    return b"".join(chunks)


def send_strip(session: requests.Session, worker: WorkerStatus, strip: Strip, width: int, body: bytes,
               content_type: str, wire: str, params: dict, config: CoordinatorConfig,
               request_id: str, rows: int | None = None) -> tuple[np.ndarray, requests.Response, int]:
    """POST one strip; returns its pixels (halo included), checked to be width x rows RGB, or
    width x rows gray when we asked for channels=auto (rows: of the body, default the strip
    with its halo), or raises StripFailed."""
    rows = strip.send_bottom - strip.send_top if rows is None else rows
    query = {"op": strip.op, **codecs.reply_query(wire, config.wire_quality, worker.runtime),
             **{name: str(params[name]) for name in OPERATIONS[strip.op].params}}
    headers = {"Content-Type": content_type, "X-Request-Id": request_id}
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    try:
        response = session.post(f"{worker.url}/process", params=query, data=body, headers=headers,
                                timeout=config.timeouts, stream=True)
        content = read_reply(response, raw_size=rows * width * 3, read_timeout=config.read_timeout)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise StripFailed(describe_exception(exc), retry=True, worker_down=True) from None
    if response.status_code == 401:
        raise StripFailed(f"token rejected by {worker.url}", retry=True, skip_worker=True)
    if response.status_code == 503:
        try:
            retry_after = max(0.0, min(float(response.headers.get("Retry-After", "0")), config.retry_after_max))
        except ValueError:
            retry_after = 0.0
        raise StripFailed(error_reason(response, content), retry=True, retry_after=retry_after)
    if response.status_code >= 500:
        raise StripFailed(error_reason(response, content), retry=True)
    if response.status_code != 200:
        raise StripFailed(error_reason(response, content), retry=False)
    gray_ok = query.get("channels") == "auto"  # a 1-channel reply only when we asked for one
    try:
        pixels = imaging.decode_any(content, expected_size=(width, rows), gray_ok=gray_ok)
    except ValueError as exc:
        raise StripFailed(f"bad reply: {exc}", retry=True) from None
    if pixels.shape != (rows, width, 3) and not (gray_ok and pixels.shape == (rows, width)):
        channels = pixels.shape[2] if pixels.ndim == 3 else 1
        raise StripFailed(f"bad reply: {pixels.shape[1]}x{pixels.shape[0]} with {channels} channels, "
                          f"expected {width}x{rows} RGB", retry=True)
    return pixels, response, len(content)


def run_job(data: bytes, config: CoordinatorConfig, *, plan: str = "seed", strips: int = 2,
            params: dict | None = None, on_event: Callable[[StripEvent], None] | None = None,
            workers: list[WorkerStatus] | None = None, session: requests.Session | None = None,
            pixels: np.ndarray | None = None) -> JobResult:
    """Process one image on the workers. Raises InputError or NoWorkerError; never returns a
    partial image. on_event runs on the calling thread. `pixels`: the caller's own
    imaging.decode_pixels(data) result, so a caller that already decoded (the page) saves it."""
    started = time.perf_counter()
    if pixels is None:
        pixels = imaging.decode_pixels(data, config.max_pixels)
    height, width, _ = pixels.shape
    decoded = time.perf_counter()
    ops = parse_plan(plan, strips)
    if len(ops) > height and len(set((plan or "seed").split(","))) == 1:
        ops = parse_plan(plan, height)  # seed or one op: fewer strips than rows, capped
    params = check_params(ops, params)
    layout = plan_strips(height, ops, params)
    own_session = session is None
    session = session or make_session(min(len(layout), MAX_STRIP_THREADS))
    if workers is None:
        workers = discover(config, session)
    discovered = time.perf_counter()
    router = Router(workers)
    for strip in layout:
        if not router.capable(strip.op):
            raise NoWorkerError(strip.index, strip.op, unavailable_reasons(workers, strip.op),
                                summary=f"no healthy worker offers {strip.op} (strip {strip.index + 1})")
    result = np.empty_like(pixels)
    events: queue.Queue = queue.Queue()
    abort = threading.Event()
    job_id = uuid.uuid4().hex[:12]
    stitch_lock, stitch_seconds = threading.Lock(), [0.0]  # strips are stitched as they arrive
    jpeg_lock, jpeg_found = threading.Lock(), {}

    def jpeg_source() -> codecs.JpegSource | None:
        with jpeg_lock:  # looked at once per job, by the first strip that wants it
            if "source" not in jpeg_found:
                jpeg_found["source"] = codecs.jpeg_source(data)
            return jpeg_found["source"]

    def piece_body(top: int, bottom: int, wire: str) -> StripBody:
        if wire == "jpeg-cut":
            source = jpeg_source()
            if source is not None:
                try:
                    cut, cut_top, cut_bottom = codecs.jpeg_rows(source, top, bottom)
                    return StripBody(cut, "image/jpeg", wire, cut_top, cut_bottom - cut_top, top, bottom)
                except ValueError:
                    pass  # jpegtran broke: the lossless PNG below is exact too
            wire = "png"
        body, content_type = imaging.encode_strip(pixels[top:bottom], wire, config.png_level)
        return StripBody(body, content_type, wire, top, bottom - top, top, bottom)

    def send_pieces(worker: WorkerStatus, strip: Strip, wire: str, bodies: dict, request_id: str):
        """All pieces of a strip to one worker at once, each encoded (or cut) in its own thread
        and sent as soon as it is ready. Returns [(body, (pixels, response, bytes received))];
        any failure fails the attempt. `bodies` keeps encoded pieces for the next attempt."""
        ranges = piece_ranges(strip, wire)

        def send(number: int):
            if (wire, number) not in bodies:
                bodies[wire, number] = piece_body(*ranges[number], wire)
            piece = bodies[wire, number]
            suffix = f"-p{number}" if len(ranges) > 1 else ""
            with WorkerSlots.for_worker(worker):  # one slot per request, pieces included
                if worker.url in router.down:  # it failed another strip while we queued for it
                    raise StripFailed(f"skipped, {router.down[worker.url]}", retry=True, worker_down=True)
                return piece, send_strip(session, worker, strip, width, piece.data, piece.content_type,
                                         piece.wire, params, config, request_id + suffix, piece.rows)
        if len(ranges) == 1:
            return [send(0)]
        with ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="piece") as piece_pool:
            return list(piece_pool.map(send, range(len(ranges))))

    def emit(kind: str, strip: Strip, worker: WorkerStatus | None, attempt: int, message: str = "",
             elapsed: float = 0.0) -> None:
        events.put(("event", StripEvent(kind, strip.index, strip.op, worker.url if worker else None,
                                        worker.runtime if worker else None, attempt, message, elapsed)))

    def process(strip: Strip) -> StripResult:
        bodies: dict[tuple[str, int], StripBody] = {}  # (wire, piece number) -> body, kept for retries
        tried: collections.Counter = collections.Counter()
        excluded: set[str] = set()
        retry_after: dict[str, float] = {}
        failures: list[str] = []
        for attempt in range(1, config.max_attempts + 1):
            if abort.is_set():
                raise NoWorkerError(strip.index, strip.op, failures, summary="job aborted")
            worker = router.choose(strip.op, tried, excluded)
            if worker is None:
                break
            wait = retry_after.pop(worker.url, 0.0)
            if tried[worker.url]:
                wait = max(wait, min(config.backoff * 2 ** (tried[worker.url] - 1), BACKOFF_CAP_SECONDS))
            if wait:
                time.sleep(wait)
            tried[worker.url] += 1
            wanted = wire_for(worker.url, config.transport)
            emit("start", strip, worker, attempt)
            request_started = time.perf_counter()
            request_id = f"{job_id}-s{strip.index}-a{attempt}"
            try:
                replies = send_pieces(worker, strip, wanted, bodies, request_id)
            except StripFailed as failure:
                failures.append(f"{worker.url}: {failure.reason}")
                elapsed = (time.perf_counter() - request_started) * 1000
                if failure.worker_down:
                    router.mark_down(worker.url, failure.reason)
                if failure.skip_worker:
                    excluded.add(worker.url)
                if failure.retry_after:
                    retry_after[worker.url] = failure.retry_after
                if not failure.retry:
                    emit("failed", strip, worker, attempt, failure.reason, elapsed)
                    refused = f"{worker.url} refused strip {strip.index + 1} (op {strip.op})"
                    raise NoWorkerError(strip.index, strip.op, failures, summary=refused) from None
                emit("retry", strip, worker, attempt, failure.reason, elapsed)
                continue
            total_ms = (time.perf_counter() - request_started) * 1000
            stitch_started = time.perf_counter()
            for piece, (reply, _, _) in replies:
                # rows of the result this piece fills: its range less the strip's halo
                fill_top, fill_bottom = max(piece.fills_top, strip.top), min(piece.fills_bottom, strip.bottom)
                first = fill_top - piece.first_row
                rows = reply[first:first + fill_bottom - fill_top]
                # a 1-channel (gray) reply broadcasts to R=G=B
                result[fill_top:fill_bottom] = rows if rows.ndim == 3 else rows[:, :, None]
            with stitch_lock:
                stitch_seconds[0] += time.perf_counter() - stitch_started
            piece_ms = [parse_ms(response.headers.get("X-Processing-Ms")) for _, (_, response, _) in replies]
            worker_ms = None if None in piece_ms else max(piece_ms)
            emit("done", strip, worker, attempt, "", total_ms)
            return StripResult(strip.index, strip.top, strip.bottom, strip.op, worker.url, worker.runtime,
                               attempt, worker_ms, total_ms,
                               None if worker_ms is None else max(0.0, total_ms - worker_ms),
                               failures, replies[0][0].wire, sum(len(piece.data) for piece, _ in replies),
                               sum(received for _, (_, _, received) in replies), request_id)
        failures.extend(reason for reason in unavailable_reasons(workers, strip.op)
                        if reason.split(": ", 1)[0] not in tried)
        emit("failed", strip, None, sum(tried.values()), "; ".join(failures))
        raise NoWorkerError(strip.index, strip.op, failures)

    def run(strip: Strip) -> None:
        try:
            events.put(("finished", strip.index, process(strip)))
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            events.put(("finished", strip.index, exc))

    # Workers cap what runs at once (WorkerSlots); more threads than that would only wait.
    pool = ThreadPoolExecutor(max_workers=min(len(layout), MAX_STRIP_THREADS), thread_name_prefix="strip")
    results: dict[int, StripResult] = {}
    failure: BaseException | None = None
    try:
        for strip in layout:
            pool.submit(run, strip)
        while len(results) < len(layout) and failure is None:
            item = events.get()
            if item[0] == "event":
                if on_event is not None:
                    on_event(item[1])
            elif isinstance(item[2], BaseException):
                failure = item[2]
            else:
                results[item[1]] = item[2]
        while on_event is not None and not events.empty():  # events queued before the last result
            item = events.get_nowait()
            if item[0] == "event":
                on_event(item[1])
    finally:
        if failure is not None or len(results) < len(layout):
            abort.set()
        pool.shutdown(wait=failure is None, cancel_futures=True)
        if own_session and failure is None:
            session.close()
    if failure is not None:
        raise failure
    finished = time.perf_counter()
    return JobResult(result, width, height, ops, [results[i] for i in range(len(layout))],
                     (finished - started) * 1000, workers,
                     {"decode_ms": (decoded - started) * 1000, "discover_ms": (discovered - decoded) * 1000,
                      "dispatch_ms": (finished - discovered) * 1000, "stitch_ms": stitch_seconds[0] * 1000})


def parse_ms(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def unavailable_reasons(workers: list[WorkerStatus], op: str) -> list[str]:
    """Why each worker cannot take op, for the one-line NoWorkerError."""
    reasons = []
    for worker in workers:
        if not worker.ok:
            reasons.append(f"{worker.url}: {worker.error or 'unhealthy'}")
        elif op not in worker.operations:
            reasons.append(f"{worker.url}: does not offer {op} (offers {', '.join(worker.operations) or 'nothing'})")
    return reasons
