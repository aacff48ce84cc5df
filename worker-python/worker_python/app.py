"""HTTP layer: create_app(settings) builds the Flask app; the pixels live in imaging.py."""
from __future__ import annotations

import math
import re
import threading
import time
import uuid
from typing import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from worker_python import SERVICE, __version__, imaging
from worker_python.logs import get_logger
from worker_python.parsing import (ApiError, authorized, encoding_options, multipart_image,
                                   response_format, single_values)
from worker_python.settings import Settings

__all__ = ["ApiError", "create_app", "encoding_options", "response_format"]

PRIMARY_OP = "grayscale"
SELF_CHECK_EVERY_SECONDS = 10.0
BUSY_RETRY_AFTER_SECONDS = 1
READ_CHUNK = 1 << 20
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_HTTP_CODES = {400: "bad_param", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_type"}


class WorkerState:
    """In-flight slots, their declared pixels and the draining flag, shared by the request
    threads, /healthz and SIGTERM."""

    def __init__(self, max_inflight: int, max_inflight_pixels: int = 2**62):
        self.max_inflight, self.max_inflight_pixels = max_inflight, max_inflight_pixels
        self.inflight = 0
        self.inflight_pixels = 0
        self.draining = False
        self._idle = threading.Condition()

    def try_acquire(self) -> bool:
        with self._idle:
            if self.inflight >= self.max_inflight:
                return False
            self.inflight += 1
            return True

    def try_add_pixels(self, pixels: int) -> bool:
        """Rule 9: admit when the sum stays within the bound, or when no pixels are in flight."""
        with self._idle:
            if self.inflight_pixels and self.inflight_pixels + pixels > self.max_inflight_pixels:
                return False
            self.inflight_pixels += pixels
            return True

    def release(self, pixels: int = 0) -> None:
        with self._idle:
            self.inflight -= 1
            self.inflight_pixels -= pixels
            self._idle.notify_all()

    def begin_draining(self) -> None:
        self.draining = True

    def wait_idle(self, timeout: float) -> bool:
        """True once no request is in flight; False if timeout passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self.inflight == 0, timeout=timeout)


class SelfCheck:
    """imaging.self_check, run at most every SELF_CHECK_EVERY_SECONDS; remembers the failure."""

    def __init__(self, check: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self._check, self._clock = check, clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._error: str | None = None

    def error(self) -> str | None:
        with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= SELF_CHECK_EVERY_SECONDS:
                try:
                    self._check()
                    self._error = None
                except Exception as exc:  # any failure means: do not route work here
                    self._error = f"self-check failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
                self._checked_at = now
            return self._error


def create_app(settings: Settings, self_check: Callable[[], None] = imaging.self_check,
               clock: Callable[[], float] = time.monotonic) -> Flask:
    app = Flask("worker_python")
    state = WorkerState(settings.max_inflight, settings.max_inflight_pixels)
    checker = SelfCheck(self_check, clock)
    app.extensions["worker_python"] = state
    log = get_logger()

    def error_response(status: int, code: str, message: str) -> Response:
        response = jsonify({"error": {"code": code, "message": " ".join(message.split())}})
        response.status_code = status
        if status == 503:
            retry = BUSY_RETRY_AFTER_SECONDS if code == "busy" else max(1, math.ceil(settings.grace_seconds))
            response.headers["Retry-After"] = str(retry)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if not g.get("body_read"):  # rule 3: refused before the body: answer and close
            response.headers["Connection"] = "close"
        g.error_code = code
        return response

    @app.before_request
    def start_request() -> None:
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers["X-Worker"] = SERVICE
        fields = {"request_id": g.get("request_id"), "method": request.method, "path": request.path,
                  "status": response.status_code, "ms": round((time.perf_counter() - g.get("started", 0)) * 1000, 1),
                  "bytes_in": g.get("bytes_in", 0), "bytes_out": response.content_length or 0}
        if request.path == "/process":
            fields["op"] = g.get("op")
        if g.get("error_code"):
            fields["code"] = g.error_code
        log.log(10 if request.path == "/healthz" and response.status_code == 200 else 20,
                "request", extra=fields)
        return response

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound) -> Response:
        return error_response(404, "not_found", f"no route {request.path}")

    @app.errorhandler(MethodNotAllowed)
    def method_not_allowed(exc: MethodNotAllowed) -> Response:
        response = error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")
        response.headers["Allow"] = ", ".join(exc.valid_methods or [])
        return response

    @app.errorhandler(HTTPException)
    def other_http_error(exc: HTTPException) -> Response:
        status = exc.code or 400
        return error_response(status, _HTTP_CODES.get(status, "bad_param"), exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc, extra={"request_id": g.get("request_id")})
        response = jsonify({"error": {"code": "internal", "message": "internal error; see the worker log"}})
        response.status_code = 500
        response.headers["Connection"] = "close"
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        status, reason = "ok", None
        if state.draining:
            status, reason = "draining", "stopping after SIGTERM; finishing requests in flight"
        else:
            reason = checker.error()
            status = "unhealthy" if reason else "ok"
        body = {"status": status, "service": SERVICE, "runtime": "python", "version": __version__,
                "build": settings.build, "primary": PRIMARY_OP, "operations": list(imaging.OPERATIONS),
                "formats": list(imaging.FORMATS), "inflight": state.inflight,
                "max_inflight": settings.max_inflight, "inflight_pixels": state.inflight_pixels,
                "max_inflight_pixels": settings.max_inflight_pixels, "max_bytes": settings.max_bytes,
                "max_pixels": settings.max_pixels}
        if reason:
            body["reason"] = reason
        response = jsonify(body)
        response.status_code = 200 if status == "ok" else 503
        if request.content_length or "Transfer-Encoding" in request.headers:
            response.headers["Connection"] = "close"  # never hold a health thread draining a body
        return response

    # no automatic OPTIONS: rule 7, any method but POST is 405 with Allow: POST
    @app.post("/process", provide_automatic_options=False)
    def process() -> Response:
        # The contract's check order: draining, token, busy, then the body (process_body).
        if state.draining:
            raise ApiError(503, "draining", "worker is shutting down; send the request elsewhere")
        if settings.token and not authorized(request.headers.get("Authorization", ""), settings.token):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token")
        if not state.try_acquire():
            raise ApiError(503, "busy", f"all {settings.max_inflight} slots are busy; retry shortly")
        claim = {"pixels": 0}
        try:
            response = process_body(claim)
        except BaseException:
            state.release(claim["pixels"])
            raise
        # the slot and its pixels are free once the reply is written or the connection is gone
        response.call_on_close(lambda: state.release(claim["pixels"]))
        return response

    def process_body(claim: dict) -> Response:
        try:
            return _process_body(claim)
        except ApiError as exc:  # built here, inside the slot, so the slot frees after sending
            return error_response(exc.status, exc.code, exc.message)

    def admit_pixels(image, claim: dict) -> None:
        pixels = image.width * image.height
        if not state.try_add_pixels(pixels):
            raise ApiError(503, "busy", f"{state.inflight_pixels} pixels in flight; {pixels} more would pass "
                                        f"the {settings.max_inflight_pixels} limit; retry shortly")
        claim["pixels"] = pixels

    def _process_body(claim: dict) -> Response:
        mimetype = request.mimetype
        is_multipart = mimetype == "multipart/form-data"
        check_length(settings.max_bytes)
        if not (mimetype.startswith("image/") or is_multipart):
            raise ApiError(415, "unsupported_type",
                           f"Content-Type {mimetype or '(none)'} is neither image/* nor multipart/form-data")
        body = read_body(settings.max_bytes)
        g.body_read = True
        g.bytes_in = len(body)
        params = single_values(request.args)
        op = params.get("op", PRIMARY_OP)
        g.op = op
        if op not in imaging.OPERATIONS:
            raise ApiError(400, "unknown_op", f"unknown op {op!r}; this worker offers {', '.join(imaging.OPERATIONS)}")
        fmt = response_format(params.get("format"), request.headers.get("Accept", ""))
        options = encoding_options(params)
        if not body:
            raise ApiError(400, "missing_image", "the request has no image bytes")
        data = multipart_image(body, request.content_type or "") if is_multipart else body
        del body  # peak memory on big strips: keep one copy of the upload, and only until decoded
        if not data:
            raise ApiError(400, "missing_image", "the request has no image bytes")
        started = time.perf_counter()
        radius = options.pop("radius", imaging.DEFAULT_RADIUS)
        one_channel = imaging.gray_reply(op, fmt, options.pop("channels", "3"))
        try:
            image = imaging.open_checked(data, settings.max_pixels)
            admit_pixels(image, claim)
            image = imaging.load_rgb(image, data)
            del data
            image = imaging.apply(op, image, radius, one_channel, in_place=True)
            if fmt == "raw":
                return raw_reply(image, started)
            result = imaging.encode(image, fmt, **options)
            del image
        except imaging.ImageError as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        return Response(result, mimetype=imaging.MEDIA_TYPES[fmt],
                        headers={"X-Processing-Ms": f"{elapsed_ms:.1f}"})

    return app


def raw_reply(image, started: float) -> Response:
    """Binary PPM streamed from the result image, with its length known up front."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    return Response(imaging.raw_chunks(image), mimetype=imaging.MEDIA_TYPES["raw"],
                    headers={"X-Processing-Ms": f"{elapsed_ms:.1f}",
                             "Content-Length": str(imaging.raw_length(image))})


def check_length(max_bytes: int) -> None:
    """413 by Content-Length, before a byte of the body is read (rule 3)."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise ApiError(413, "too_large", f"body of {length} bytes is over the {max_bytes} byte limit")


def read_body(max_bytes: int) -> bytes:
    """The request body, refusing more than max_bytes counted while reading a chunked body.
    A body that ends early, arrives too slowly or breaks the chunked framing is 400."""
    chunks, total = [], 0
    stream = request.stream
    while True:
        try:
            chunk = stream.read(min(READ_CHUNK, max_bytes + 1 - total))
        except Exception as exc:  # noqa: BLE001 - the server's stream errors are the client's fault
            g.body_read = False  # the framing is lost: close the connection after the reply
            raise ApiError(400, "bad_image", f"the body ended early or is malformed ({type(exc).__name__})") from None
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise ApiError(413, "too_large", f"body of {total} bytes is over the {max_bytes} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
