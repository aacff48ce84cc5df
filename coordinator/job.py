"""One image's strips on the workers: each strip's body (encoded or cut per piece), its
attempts under routing's policy, and its reply stitched into the result. Strip threads report
to the caller's thread through `events` (Progress and Finished)."""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image

from coordinator import codecs, imaging, pngfast, tracing
from coordinator import request as strip_request
from coordinator.config import CoordinatorConfig
from coordinator.discovery import WorkerStatus
from coordinator.errors import NoWorkerError
from coordinator.pieces import MAX_STRIP_THREADS, StripBody, piece_ranges, wire_for
from coordinator.plan import OPERATIONS, Strip
from coordinator.routing import (
    CANCELLED,
    DOWN,
    GIVE_UP,
    Decision,
    RetryPolicy,
    Router,
    StripFailed,
    StripHistory,
    decide,
)
from coordinator.transport import Cancel, Reply, Transport, daemon_map


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
    trace_id: str = ""  # the job's W3C trace id, sent to the worker in `traceparent`
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
    trace_id: str = ""  # the job's W3C trace id (exported when OTEL_EXPORTER_OTLP_ENDPOINT is set)
    png: bytes | None = None  # the result as PNG, when run_job was given png_level

    @cached_property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels)


@dataclass
class Progress:
    """A strip event for the caller's on_event."""

    event: StripEvent


@dataclass
class Finished:
    """A strip is done (result) or has failed the job (error)."""

    index: int
    result: StripResult | None = None
    error: BaseException | None = None


@dataclass
class Sent:
    """One piece's request and what came back."""

    body: StripBody
    pixels: np.ndarray
    reply: Reply
    received: int
    encode_ms: float = 0.0
    queue_ms: float = 0.0


_NOT_LOOKED = object()
# jpegtran processes at once in this process (all pieces of all jobs): six cuts at once on two
# cores all finish together; two at a time, the first two are on the wire a cut's time later.
CUT_SLOTS = threading.BoundedSemaphore(os.cpu_count() or 1)


class Job:
    """The strips of one image: started on daemon threads, each strip tried under the retry
    policy, its replies stitched into `result` as they arrive."""

    def __init__(
        self,
        data: bytes,
        pixels: np.ndarray | tuple[int, int],
        params: dict,
        config: CoordinatorConfig,
        router: Router,
        session: Transport,
        png_level: int | None = None,
    ):
        """pixels: the decoded input, or its (height, width) when it is a JPEG that is decoded
        only if a body needs its pixels (lossless cuts need none: engine.undecoded_size)."""
        self.data, self.params, self.config = data, params, config
        self.router, self.session = router, session
        decoded = isinstance(pixels, np.ndarray)
        self._pixels = pixels if decoded else None
        self.height, self.width = pixels.shape[:2] if decoded else pixels
        self.policy = RetryPolicy.from_config(config)
        self.result = np.empty((self.height, self.width, 3), dtype=np.uint8)
        # the output PNG deflated as replies arrive (each piece's rows once stitched)
        self.png = None if png_level is None else pngfast.StreamingPng(self.result, png_level)
        self.events: queue.Queue = queue.Queue()
        self.abort = threading.Event()
        self.cancel = Cancel()
        self.id = os.urandom(6).hex()  # as uuid4().hex[:12], without loading uuid and libuuid
        self.stitch_seconds = 0.0  # strips are stitched as they arrive
        self._stitch_lock = threading.Lock()
        self._jpeg_lock = threading.Lock()
        self._decode_lock = threading.Lock()
        self._jpeg = _NOT_LOOKED
        self.span = tracing.start_job({"job.id": self.id, "image.width": self.width, "image.height": self.height})

    # --- body ------------------------------------------------------------------------

    @property
    def pixels(self) -> np.ndarray:
        """The decoded input; decoded here, once, when the job started without it (InputError
        from a strip's thread reaches run_job's caller)."""
        with self._decode_lock:
            if self._pixels is None:
                self._pixels = imaging.decode_pixels(self.data, self.config.max_pixels)
            return self._pixels

    def jpeg_source(self) -> codecs.JpegSource | None:
        with self._jpeg_lock:  # looked at once per job, by the first strip that wants it
            if self._jpeg is _NOT_LOOKED:
                self._jpeg = codecs.jpeg_source(self.data)
            return self._jpeg

    def fits(self, worker: WorkerStatus, size: int, rows: int) -> bool:
        return size <= worker.max_bytes and rows * self.width <= worker.max_pixels

    def jpeg_cut(self, piece, worker: WorkerStatus) -> StripBody | None:
        source = self.jpeg_source()
        if source is None:
            return None
        try:
            with CUT_SLOTS:  # each jpegtran reads the whole file: one per core, so the first cuts go out sooner
                cut, cut_top, cut_bottom = codecs.jpeg_rows(source, piece.send_top, piece.send_bottom)
        except ValueError:
            return None  # jpegtran broke: the lossless PNG is exact too
        if not self.fits(worker, len(cut), cut_bottom - cut_top):
            return None
        if cut is source.data:  # not read through jpegtran: decoding checks it is whole
            _ = self.pixels
        return StripBody(
            cut, "image/jpeg", "jpeg-cut", cut_top, cut_bottom - cut_top, piece.fill_top, piece.fill_bottom
        )

    def body(self, piece, wire: str, worker: WorkerStatus) -> StripBody:
        """The piece in the wanted wire format, or a fallback the worker accepts: jpeg-cut ->
        png -> raw (raw always fits: pieces are sized by it)."""
        if wire == "jpeg-cut":
            cut = self.jpeg_cut(piece, worker)
            if cut is not None:
                return cut
            wire = "png"
        top, bottom = piece.send_top, piece.send_bottom
        data, content_type = imaging.encode_strip(self.pixels[top:bottom], wire, self.config.png_level)
        if wire != "raw" and not self.fits(worker, len(data), bottom - top):
            wire = "raw"
            data, content_type = imaging.encode_strip(self.pixels[top:bottom], wire, self.config.png_level)
        return StripBody(data, content_type, wire, top, bottom - top, piece.fill_top, piece.fill_bottom)

    # --- attempt ---------------------------------------------------------------------

    def send_piece(
        self, worker: WorkerStatus, strip: Strip, key: tuple, piece, bodies: dict, request_id: str, traceparent: str
    ) -> Sent:
        began = time.perf_counter()
        if key not in bodies:
            bodies[key] = self.body(piece, key[0], worker)
        body = bodies[key]
        encoded = time.perf_counter()
        with self.router.slots.for_worker(worker):  # one slot per request, pieces included
            queued = time.perf_counter()
            if worker.url in self.router.down:  # it failed another strip while we queued for it
                raise StripFailed(f"skipped, {self.router.down[worker.url]}", DOWN)
            if self.abort.is_set():
                raise StripFailed("cancelled", CANCELLED)
            pixels, reply, received = strip_request.send_strip(
                self.session,
                worker,
                strip,
                self.width,
                body.data,
                body.content_type,
                body.wire,
                self.params,
                self.config,
                request_id,
                body.rows,
                self.cancel,
                traceparent,
            )
        return Sent(body, pixels, reply, received, (encoded - began) * 1000, (queued - encoded) * 1000)

    def attempt(
        self, worker: WorkerStatus, strip: Strip, wire: str, bodies: dict, request_id: str, traceparent: str = ""
    ) -> list[Sent]:
        """All pieces of a strip to one worker at once, each encoded (or cut) in its own thread
        and sent as soon as it is ready; any failure fails the attempt. `bodies` keeps encoded
        pieces for the next attempt."""
        halo = OPERATIONS[strip.op].halo(self.params)
        pieces = piece_ranges(strip, wire, self.width, self.height, worker, halo)

        def send(number: int) -> Sent:
            key = (wire, pieces[number], worker.max_bytes, worker.max_pixels)
            suffix = f"-p{number}" if len(pieces) > 1 else ""
            sent = self.send_piece(worker, strip, key, pieces[number], bodies, request_id + suffix, traceparent)
            self.stitch(sent)  # now, so its rows deflate while the other pieces download
            return sent

        if len(pieces) == 1:
            return [send(0)]
        return daemon_map(send, range(len(pieces)))

    # --- strip -----------------------------------------------------------------------

    def emit(
        self,
        kind: str,
        strip: Strip,
        worker: WorkerStatus | None,
        attempt: int,
        message: str = "",
        elapsed: float = 0.0,
    ) -> None:
        self.events.put(
            Progress(
                StripEvent(
                    kind,
                    strip.index,
                    strip.op,
                    worker.url if worker else None,
                    worker.runtime if worker else None,
                    attempt,
                    message,
                    elapsed,
                )
            )
        )

    def check_running(self, strip: Strip) -> None:
        if self.abort.is_set() or self.cancel.event.is_set():
            summary = "interrupted" if self.cancel.event.is_set() else "job aborted"
            raise NoWorkerError(strip.index, strip.op, [], summary=summary)

    def failed(
        self,
        strip: Strip,
        worker: WorkerStatus,
        attempt: int,
        history: StripHistory,
        failure: StripFailed,
        elapsed: float,
    ) -> None:
        """Judge a failed attempt; raises NoWorkerError when the strip gives up."""
        decision: Decision = decide(failure.failure, history.tried[worker.url], self.policy)
        history.record(worker.url, failure.failure, decision)
        if decision.mark_down:
            self.router.mark_down(worker.url, failure.reason)
        if decision.action == GIVE_UP:
            self.emit("failed", strip, worker, attempt, failure.reason, elapsed)
            refused = f"{worker.url} refused strip {strip.index + 1} (op {strip.op})"
            raise NoWorkerError(strip.index, strip.op, history.failures, summary=refused)
        self.emit("retry", strip, worker, attempt, failure.reason, elapsed)

    def strip(self, strip: Strip) -> StripResult:
        """The strip under its `strip` span (ended with an error status when it gives up)."""
        span = self.span.child("strip", {"strip.index": strip.index, "strip.op": strip.op})
        try:
            result = self._strip(strip, span)
        except BaseException as exc:
            span.end(str(exc))
            raise
        span.end()
        return result

    def _strip(self, strip: Strip, span) -> StripResult:
        """The strip's attempts, one worker each, until one succeeds or the policy gives up."""
        bodies: dict[tuple, StripBody] = {}  # (wire, piece, worker limits) -> body, kept for retries
        history = StripHistory()
        for attempt in range(1, self.config.max_attempts + 1):
            self.check_running(strip)
            worker = self.router.choose(strip.op, history.tried, history.excluded)
            if worker is None:
                break
            wait = history.delay_for(worker.url)
            if wait and self.abort.wait(wait):
                continue  # aborted while backing off: check_running ends the strip
            history.tried[worker.url] += 1
            self.emit("start", strip, worker, attempt)
            started = time.perf_counter()
            request_id = f"{self.id}-s{strip.index}-a{attempt}"
            attempt_span = span.child("attempt", {"request_id": request_id, "worker.url": worker.url})
            try:
                wire = wire_for(worker.url, self.config.transport)
                sent = self.attempt(worker, strip, wire, bodies, request_id, attempt_span.traceparent())
            except StripFailed as failure:
                attempt_span.end(failure.reason)
                if self.png is not None:  # pieces stitched before the failure are written again
                    self.png.unfill(strip.top, strip.bottom)
                self.failed(strip, worker, attempt, history, failure, (time.perf_counter() - started) * 1000)
                continue
            attempt_span.end()
            total_ms = (time.perf_counter() - started) * 1000
            self.emit("done", strip, worker, attempt, "", total_ms)
            result = strip_result(strip, worker, attempt, total_ms, history.failures, sent, request_id)
            result.trace_id = self.span.trace_id
            return result
        return self.exhausted(strip, history)

    def exhausted(self, strip: Strip, history: StripHistory):
        failures = history.failures
        failures.extend(
            reason
            for reason in self.router.unavailable_reasons(strip.op)
            if reason.split(": ", 1)[0] not in history.tried
        )
        self.emit("failed", strip, None, sum(history.tried.values()), "; ".join(failures))
        raise NoWorkerError(strip.index, strip.op, failures)

    # --- stitch ----------------------------------------------------------------------

    def stitch(self, one: Sent) -> None:
        """One piece's reply into the result (a failed attempt's pieces are written again by
        the next attempt: daemon_map returns only when all pieces of an attempt are done)."""
        began = time.perf_counter()
        piece = one.body
        # rows of the result this piece fills: its range less its halo
        first = piece.fills_top - piece.first_row
        rows = one.pixels[first : first + piece.fills_bottom - piece.fills_top]
        # a 1-channel (gray) reply broadcasts to R=G=B
        self.result[piece.fills_top : piece.fills_bottom] = rows if rows.ndim == 3 else rows[:, :, None]
        if self.png is not None:
            self.png.fill(piece.fills_top, piece.fills_bottom)
        with self._stitch_lock:
            self.stitch_seconds += time.perf_counter() - began

    # --- threads ---------------------------------------------------------------------

    def start(self, layout: list[Strip]) -> None:
        """Strips on daemon threads (a Ctrl-C in the caller must not wait for them; cancel cuts
        their sockets). Workers cap what runs at once (slots); more threads would only wait."""
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for strip in layout:
            todo.put(strip)
        for number in range(min(len(layout), MAX_STRIP_THREADS)):
            threading.Thread(target=self._strips, args=(todo,), name=f"strip-{self.id}-{number}", daemon=True).start()

    def _strips(self, todo: queue.SimpleQueue) -> None:
        while not self.abort.is_set():
            try:
                strip = todo.get_nowait()
            except queue.Empty:
                return
            try:
                self.events.put(Finished(strip.index, result=self.strip(strip)))
            except BaseException as exc:  # handed to the calling thread, which re-raises it
                self.events.put(Finished(strip.index, error=exc))

    def stop(self) -> None:
        """Every strip and exchange of this job ends now."""
        self.abort.set()
        self.cancel.fire()
        if self.png is not None:
            self.png.close()


def strip_result(
    strip: Strip,
    worker: WorkerStatus,
    attempt: int,
    total_ms: float,
    failures: list[str],
    sent: list[Sent],
    request_id: str,
) -> StripResult:
    piece_ms = [strip_request.parse_ms(one.reply.headers.get("X-Processing-Ms")) for one in sent]
    worker_ms = None if None in piece_ms else max(piece_ms)
    return StripResult(
        strip.index,
        strip.top,
        strip.bottom,
        strip.op,
        worker.url,
        worker.runtime,
        attempt,
        worker_ms,
        total_ms,
        None if worker_ms is None else max(0.0, total_ms - worker_ms),
        failures,
        sent[0].body.wire,
        sum(len(one.body.data) for one in sent),
        sum(one.received for one in sent),
        request_id,
        max(one.encode_ms for one in sent),
        max(one.queue_ms for one in sent),
    )
