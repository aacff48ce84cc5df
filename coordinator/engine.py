"""Run one job: decode, plan strips, dispatch them concurrently with failover, stitch.

Transport (HTTP) lives here; pixel logic lives in imaging.py and plan.py.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urlencode

import numpy as np
from PIL import Image

from coordinator import codecs, imaging
from coordinator.config import CoordinatorConfig, is_loopback, redact_url
from coordinator.discovery import WorkerStatus, discover, printable
from coordinator.errors import NoWorkerError
from coordinator.plan import OPERATIONS, Strip, no_halo, check_params, parse_plan, plan_strips
from coordinator.transport import Cancel, Limits, Reply, Transport, TransportError, daemon_map

BACKOFF_CAP_SECONDS = 1.0
# Over a compressed (slow-link) wire a pointwise strip travels as up to WAN_PIECES requests to
# the same worker, so the first piece's reply is downloading while the worker still encodes
# the next (scripts/bench_wan.py: 4.3 s -> 3.x s on 12 MP at 50 Mbit/s). Pieces under
# WAN_PIECE_MIN_ROWS rows would cost more in request overhead than they overlap.
WAN_PIECES = 3
WAN_PIECE_MIN_ROWS = 256
MAX_STRIP_THREADS = 32
# An exchange must keep moving: beyond connect + read timeouts it may take 1 s per
# MIN_TRANSFER_RATE bytes of its body and of the reply's raw size, so a worker (or a path)
# that trickles bytes, headers included, cannot hold a strip forever.
MIN_TRANSFER_RATE = 128 * 1024
# A piece is sized so its raw PPM fits the worker's max_bytes and max_pixels: a PPM header is
# under 32 bytes, and a JPEG row cut adds at most an iMCU (16) + 2 rows on each side.
PPM_HEADER_MAX = 32
JPEG_CUT_SPARE_ROWS = 2 * (16 + 2)
MAX_PIECES = 64  # more requests per strip than this means a worker's limits are absurd for the image


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
    # Parts of total_ms spent before the wire: encoding (or cutting) the body and waiting for a
    # free slot on the worker (the longest piece's); the page's timing chart shows them apart.
    encode_ms: float = 0.0
    queue_ms: float = 0.0


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


def make_session(pool_size: int) -> Transport:
    """One keep-alive transport; the pool holds a connection per concurrent strip."""
    return Transport(pool_size=max(4, pool_size * WAN_PIECES))


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
    and fills rows [fills_top, fills_bottom) of the result."""
    data: bytes
    content_type: str
    wire: str  # what was actually sent: jpeg-cut falls back to png, anything to raw
    first_row: int
    rows: int
    fills_top: int
    fills_bottom: int


@dataclass(frozen=True)
class Piece:
    """Rows [send_top, send_bottom) go to the worker; rows [fill_top, fill_bottom) of the reply's
    image are kept (the rest is halo)."""
    send_top: int
    send_bottom: int
    fill_top: int
    fill_bottom: int


def piece_rows_cap(worker: WorkerStatus, width: int, halo: int, wire: str) -> int:
    """Most result rows one request may fill so that its body (raw PPM, the largest form we
    send) and pixel count stay within what the worker said it accepts."""
    raw_rows = (worker.max_bytes - PPM_HEADER_MAX) // (3 * width)
    pixel_rows = worker.max_pixels // width
    spare = JPEG_CUT_SPARE_ROWS if wire == "jpeg-cut" else 0
    return min(raw_rows, pixel_rows) - 2 * halo - spare


def piece_ranges(strip: Strip, wire: str, width: int = 1, height: int | None = None,
                 worker: WorkerStatus | None = None, halo: int = 0) -> list[Piece]:
    """The strip split into requests: as many as the worker's limits need, and up to
    WAN_PIECES over a slow link when the op reads no neighbouring rows. Each piece carries
    its own halo. Raises StripFailed when this worker cannot take even one row's piece."""
    top, bottom = strip.top, strip.bottom
    height = strip.send_bottom if height is None else height
    count = 1
    if wire != "raw" and OPERATIONS[strip.op].halo is no_halo:
        count = max(1, min(WAN_PIECES, (bottom - top) // WAN_PIECE_MIN_ROWS))
    if worker is not None:
        cap = piece_rows_cap(worker, width, halo, wire)
        needed = math.ceil((bottom - top) / cap) if cap >= 1 else MAX_PIECES + 1
        if needed > MAX_PIECES:
            raise StripFailed(f"its limits (max_bytes {worker.max_bytes}, max_pixels {worker.max_pixels}) "
                              f"are too small for rows {width} pixels wide", retry=True, skip_worker=True)
        count = max(count, needed)
    edges = [top + (bottom - top) * k // count for k in range(count + 1)]
    return [Piece(max(0, a - halo), min(height, b + halo), a, b) for a, b in zip(edges[:-1], edges[1:])]


def error_reason(status: int, content: bytes) -> str:
    try:
        error = json.loads(content)["error"]
        return printable(f"HTTP {status} {error['code']}: {error['message']}")
    except (ValueError, KeyError, TypeError, RecursionError):
        return f"HTTP {status}"


def strip_limits(config: CoordinatorConfig, body_size: int, raw_size: int) -> Limits:
    """Bounds of one strip request: connect, silence, and a deadline for the whole exchange."""
    allowance = (body_size + raw_size) / MIN_TRANSFER_RATE
    return Limits(connect=config.connect_timeout, idle=config.read_timeout,
                  total=config.connect_timeout + config.read_timeout + allowance,
                  max_body=2 * raw_size + 65536)  # a compressed reply is never near twice the raw pixels


def post_strip(transport: Transport, url: str, body: bytes, headers: dict, limits: Limits,
               cancel: Cancel | None) -> Reply:
    """The exchange, its failures as StripFailed; a redirect is a failed attempt, not followed."""
    try:
        reply = transport.exchange("POST", url, limits, headers=headers, body=body, cancel=cancel)
    except TransportError as exc:
        if exc.kind == "too_large":
            raise StripFailed(f"bad reply: {exc.reason}", retry=True) from None
        raise StripFailed(exc.reason, retry=True, worker_down=exc.kind != "cancelled") from None
    if 300 <= reply.status < 400:
        location = printable(redact_url(reply.headers.get("Location") or "nowhere"), 100)
        raise StripFailed(f"redirected (HTTP {reply.status} to {location}); redirects are not followed",
                          retry=True, worker_down=True)
    return reply


def send_strip(session: Transport, worker: WorkerStatus, strip: Strip, width: int, body: bytes,
               content_type: str, wire: str, params: dict, config: CoordinatorConfig,
               request_id: str, rows: int | None = None,
               cancel: Cancel | None = None) -> tuple[np.ndarray, Reply, int]:
    """POST one strip; returns its pixels (halo included), checked to be width x rows RGB, or
    width x rows gray when we asked for channels=auto (rows: of the body, default the strip
    with its halo), or raises StripFailed."""
    rows = strip.send_bottom - strip.send_top if rows is None else rows
    query = {"op": strip.op, **codecs.reply_query(wire, config.wire_quality, worker.runtime),
             **{name: str(params[name]) for name in OPERATIONS[strip.op].params}}
    headers = {"Content-Type": content_type, "X-Request-Id": request_id}
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    limits = strip_limits(config, len(body), rows * width * 3)
    response = post_strip(session, f"{worker.url}/process?{urlencode(query)}", body, headers, limits, cancel)
    content = response.body
    if response.status == 401:
        raise StripFailed(f"token rejected by {worker.url}", retry=True, skip_worker=True)
    if response.status == 503:
        try:
            retry_after = max(0.0, min(float(response.headers.get("Retry-After", "0")), config.retry_after_max))
        except ValueError:
            retry_after = 0.0
        raise StripFailed(error_reason(response.status, content), retry=True, retry_after=retry_after)
    if response.status >= 500:
        raise StripFailed(error_reason(response.status, content), retry=True)
    if response.status != 200:
        raise StripFailed(error_reason(response.status, content), retry=False)
    gray_ok = query.get("channels") == "auto"  # a 1-channel reply only when we asked for one
    try:
        pixels = imaging.decode_any(content, expected_size=(width, rows), gray_ok=gray_ok)
    except ValueError as exc:
        raise StripFailed(printable(f"bad reply: {exc}"), retry=True) from None
    if pixels.shape != (rows, width, 3) and not (gray_ok and pixels.shape == (rows, width)):
        channels = pixels.shape[2] if pixels.ndim == 3 else 1
        raise StripFailed(f"bad reply: {pixels.shape[1]}x{pixels.shape[0]} with {channels} channels, "
                          f"expected {width}x{rows} RGB", retry=True)
    return pixels, response, len(content)


def run_job(data: bytes, config: CoordinatorConfig, *, plan: str = "seed", strips: int = 2,
            params: dict | None = None, on_event: Callable[[StripEvent], None] | None = None,
            workers: list[WorkerStatus] | None = None, session: Transport | None = None,
            pixels: np.ndarray | None = None) -> JobResult:
    """Process one image on the workers. Raises InputError or NoWorkerError; never returns a
    partial image. on_event runs on the calling thread. `pixels`: the caller's own
    imaging.decode_pixels(data) result, so a caller that already decoded (the page) saves it."""
    started = time.perf_counter()
    if _STOPPING.is_set():
        raise NoWorkerError(None, plan or "seed", [], summary="interrupted")
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
    cancel = Cancel()
    job_id = uuid.uuid4().hex[:12]
    stitch_lock, stitch_seconds = threading.Lock(), [0.0]  # strips are stitched as they arrive
    jpeg_lock, jpeg_found = threading.Lock(), {}

    def jpeg_source() -> codecs.JpegSource | None:
        with jpeg_lock:  # looked at once per job, by the first strip that wants it
            if "source" not in jpeg_found:
                jpeg_found["source"] = codecs.jpeg_source(data)
            return jpeg_found["source"]

    def fits(worker: WorkerStatus, size: int, rows: int) -> bool:
        return size <= worker.max_bytes and rows * width <= worker.max_pixels

    def piece_body(piece: Piece, wire: str, worker: WorkerStatus) -> StripBody:
        """The piece in the wanted wire format, or a fallback the worker accepts: jpeg-cut ->
        png -> raw (raw always fits: pieces are sized by it)."""
        top, bottom = piece.send_top, piece.send_bottom
        if wire == "jpeg-cut":
            source = jpeg_source()
            if source is not None:
                try:
                    cut, cut_top, cut_bottom = codecs.jpeg_rows(source, top, bottom)
                    if fits(worker, len(cut), cut_bottom - cut_top):
                        return StripBody(cut, "image/jpeg", wire, cut_top, cut_bottom - cut_top,
                                         piece.fill_top, piece.fill_bottom)
                except ValueError:
                    pass  # jpegtran broke: the lossless PNG below is exact too
            wire = "png"
        body, content_type = imaging.encode_strip(pixels[top:bottom], wire, config.png_level)
        if wire != "raw" and not fits(worker, len(body), bottom - top):
            wire = "raw"
            body, content_type = imaging.encode_strip(pixels[top:bottom], wire, config.png_level)
        return StripBody(body, content_type, wire, top, bottom - top, piece.fill_top, piece.fill_bottom)

    def send_pieces(worker: WorkerStatus, strip: Strip, wire: str, bodies: dict, request_id: str,
                    spent: dict | None = None):
        """All pieces of a strip to one worker at once, each encoded (or cut) in its own thread
        and sent as soon as it is ready. Returns [(body, (pixels, response, bytes received))];
        any failure fails the attempt. `bodies` keeps encoded pieces for the next attempt."""
        halo = OPERATIONS[strip.op].halo(params)
        pieces = piece_ranges(strip, wire, width, height, worker, halo)

        def send(number: int):
            began = time.perf_counter()
            key = (wire, pieces[number], worker.max_bytes, worker.max_pixels)
            if key not in bodies:
                bodies[key] = piece_body(pieces[number], wire, worker)
            body = bodies[key]
            suffix = f"-p{number}" if len(pieces) > 1 else ""
            encoded = time.perf_counter()
            with WorkerSlots.for_worker(worker):  # one slot per request, pieces included
                if spent is not None:  # (encode ms, queue ms) of this piece, for the page's chart
                    spent[number] = ((encoded - began) * 1000, (time.perf_counter() - encoded) * 1000)
                if worker.url in router.down:  # it failed another strip while we queued for it
                    raise StripFailed(f"skipped, {router.down[worker.url]}", retry=True, worker_down=True)
                if abort.is_set():
                    raise StripFailed("cancelled", retry=True)
                return body, send_strip(session, worker, strip, width, body.data, body.content_type,
                                        body.wire, params, config, request_id + suffix, body.rows, cancel)
        if len(pieces) == 1:
            return [send(0)]
        return daemon_map(send, range(len(pieces)))

    def emit(kind: str, strip: Strip, worker: WorkerStatus | None, attempt: int, message: str = "",
             elapsed: float = 0.0) -> None:
        events.put(("event", StripEvent(kind, strip.index, strip.op, worker.url if worker else None,
                                        worker.runtime if worker else None, attempt, message, elapsed)))

    def process(strip: Strip) -> StripResult:
        bodies: dict[tuple, StripBody] = {}  # (wire, piece, worker limits) -> body, kept for retries
        tried: collections.Counter = collections.Counter()
        excluded: set[str] = set()
        retry_after: dict[str, float] = {}
        failures: list[str] = []
        for attempt in range(1, config.max_attempts + 1):
            if abort.is_set() or cancel.event.is_set():
                summary = "interrupted" if cancel.event.is_set() else "job aborted"
                raise NoWorkerError(strip.index, strip.op, [], summary=summary)
            worker = router.choose(strip.op, tried, excluded)
            if worker is None:
                break
            wait = retry_after.pop(worker.url, 0.0)
            if tried[worker.url]:
                wait = max(wait, min(config.backoff * 2 ** (tried[worker.url] - 1), BACKOFF_CAP_SECONDS))
            if wait and abort.wait(wait):
                continue  # aborted while backing off: the check above ends the strip
            tried[worker.url] += 1
            wanted = wire_for(worker.url, config.transport)
            emit("start", strip, worker, attempt)
            request_started = time.perf_counter()
            request_id = f"{job_id}-s{strip.index}-a{attempt}"
            try:
                spent: dict[int, tuple[float, float]] = {}
                replies = send_pieces(worker, strip, wanted, bodies, request_id, spent)
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
                # rows of the result this piece fills: its range less its halo
                fill_top, fill_bottom = piece.fills_top, piece.fills_bottom
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
                               sum(received for _, (_, _, received) in replies), request_id,
                               max((ms[0] for ms in spent.values()), default=0.0),
                               max((ms[1] for ms in spent.values()), default=0.0))
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
    # Daemon threads: a Ctrl-C in the caller must not wait for them (cancel cuts their sockets).
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for strip in layout:
        todo.put(strip)

    def strip_thread() -> None:
        while not abort.is_set():
            try:
                run(todo.get_nowait())
            except queue.Empty:
                return

    results: dict[int, StripResult] = {}
    failure: BaseException | None = None
    with _RUNNING_LOCK:
        _RUNNING.add(cancel)
    try:
        for number in range(min(len(layout), MAX_STRIP_THREADS)):
            threading.Thread(target=strip_thread, name=f"strip-{job_id}-{number}", daemon=True).start()
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
        with _RUNNING_LOCK:
            _RUNNING.discard(cancel)
        if failure is not None or len(results) < len(layout):
            abort.set()
            cancel.fire()  # every exchange of this job ends now
        elif own_session:
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
