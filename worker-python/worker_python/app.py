"""HTTP layer: create_app(settings) builds the Flask app; the pixels live in imaging.py."""
from __future__ import annotations

import hmac
import io
import math
import re
import threading
import time
import uuid
from typing import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, MethodNotAllowed, NotFound
from werkzeug.formparser import parse_form_data

from worker_python import SERVICE, __version__, imaging
from worker_python.logs import get_logger
from worker_python.settings import Settings

PRIMARY_OP = "grayscale"
SELF_CHECK_EVERY_SECONDS = 10.0
BUSY_RETRY_AFTER_SECONDS = 1
READ_CHUNK = 1 << 20
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_INTEGER = re.compile(r"\d{1,6}")
_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")  # no sign, "_", "inf" or "nan"
_ACCEPT_TO_FORMAT = {mime: fmt for fmt, mime in imaging.MEDIA_TYPES.items()}
_HTTP_CODES = {400: "bad_param", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_type"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class WorkerState:
    """In-flight slots and the draining flag, shared by the request threads and SIGTERM."""

    def __init__(self, max_inflight: int):
        self.max_inflight = max_inflight
        self.inflight = 0
        self.draining = False
        self._idle = threading.Condition()

    def try_acquire(self) -> bool:
        with self._idle:
            if self.inflight >= self.max_inflight:
                return False
            self.inflight += 1
            return True

    def release(self) -> None:
        with self._idle:
            self.inflight -= 1
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
    state = WorkerState(settings.max_inflight)
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
                "max_inflight": settings.max_inflight, "max_bytes": settings.max_bytes,
                "max_pixels": settings.max_pixels}
        if reason:
            body["reason"] = reason
        response = jsonify(body)
        response.status_code = 200 if status == "ok" else 503
        return response

    @app.post("/process")
    def process() -> Response:
        # The contract's check order: draining, token, busy, then the body (process_body).
        if state.draining:
            raise ApiError(503, "draining", "worker is shutting down; send the request elsewhere")
        if settings.token and not _authorized(request.headers.get("Authorization", ""), settings.token):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token")
        if not state.try_acquire():
            raise ApiError(503, "busy", f"all {settings.max_inflight} slots are busy; retry shortly")
        try:
            response = process_body()
        except BaseException:
            state.release()
            raise
        response.call_on_close(state.release)  # the slot is free once the response is sent
        return response

    def process_body() -> Response:
        try:
            return _process_body()
        except ApiError as exc:  # built here, inside the slot, so the slot frees after sending
            return error_response(exc.status, exc.code, exc.message)

    def _process_body() -> Response:
        body = read_body(settings.max_bytes)
        g.bytes_in = len(body)
        mimetype = request.mimetype
        is_multipart = mimetype == "multipart/form-data"
        if not (mimetype.startswith("image/") or is_multipart):
            raise ApiError(415, "unsupported_type",
                           f"Content-Type {mimetype or '(none)'} is neither image/* nor multipart/form-data")
        op = request.args.get("op", PRIMARY_OP)
        g.op = op
        if op not in imaging.OPERATIONS:
            raise ApiError(400, "unknown_op", f"unknown op {op!r}; this worker offers {', '.join(imaging.OPERATIONS)}")
        fmt = response_format(request.args.get("format"), request.headers.get("Accept", ""))
        options = encoding_options(request.args)
        data = multipart_image(body) if is_multipart else body
        del body  # peak memory on big strips: keep one copy of the upload, and only until decoded
        if not data:
            raise ApiError(400, "missing_image", "the request has no image bytes")
        started = time.perf_counter()
        radius = options.pop("radius", imaging.DEFAULT_RADIUS)
        one_channel = imaging.gray_reply(op, fmt, options.pop("channels", "3"))
        try:
            image = imaging.decode(data, settings.max_pixels)
            del data
            image = imaging.apply(op, image, radius, one_channel)
            result = imaging.encode(image, fmt, **options)
            del image
        except imaging.ImageError as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        return Response(result, mimetype=imaging.MEDIA_TYPES[fmt],
                        headers={"X-Processing-Ms": f"{elapsed_ms:.1f}"})

    return app


def _authorized(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def read_body(max_bytes: int) -> bytes:
    """The request body, refusing more than max_bytes: by Content-Length before reading, or
    counted while reading a chunked body. The server drains or closes what stays unread."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise ApiError(413, "too_large", f"body of {length} bytes is over the {max_bytes} byte limit")
    chunks, total = [], 0
    stream = request.stream
    try:
        while True:
            chunk = stream.read(min(READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise ApiError(413, "too_large", f"body is over the {max_bytes} byte limit")
            chunks.append(chunk)
    except ClientDisconnected:
        raise ApiError(400, "bad_image", "the body ended before its Content-Length") from None
    return b"".join(chunks)


def response_format(query_format: str | None, accept: str) -> str:
    """?format= wins; else the first Accept type this worker knows (by q, then order); else png."""
    if query_format is not None:
        if query_format not in imaging.FORMATS:
            raise ApiError(400, "bad_param", f"format must be one of {', '.join(imaging.FORMATS)}, got {query_format!r}")
        return query_format
    ranked = []
    for position, item in enumerate(accept.split(",")):
        mime, *params = [part.strip() for part in item.split(";")]
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        fmt = _ACCEPT_TO_FORMAT.get(mime.lower())
        if fmt and quality > 0:
            ranked.append((-quality, position, fmt))
    return min(ranked)[2] if ranked else "png"


def encoding_options(args) -> dict:
    """quality, lossless, compression, radius and channels from the query; 400 bad_param when out of range."""
    options = {}
    for name, low, high in (("quality", 1, 100), ("compression", 0, 9)):
        raw = args.get(name)
        if raw is not None:
            if not _INTEGER.fullmatch(raw) or not low <= int(raw) <= high:
                raise ApiError(400, "bad_param", f"{name} must be an integer from {low} to {high}, got {raw!r}")
            options[name] = int(raw)
    raw = args.get("lossless")
    if raw is not None:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ApiError(400, "bad_param", f"lossless must be true or false, got {raw!r}")
        options["lossless"] = raw.lower() in ("true", "1")
    raw = args.get("radius")
    if raw is not None:
        radius = float(raw) if _NUMBER.fullmatch(raw) else math.nan
        if not 0 < radius <= imaging.MAX_RADIUS:  # also false for nan
            raise ApiError(400, "bad_param", f"radius must be a number > 0 and <= {imaging.MAX_RADIUS:g}, got {raw!r}")
        options["radius"] = radius
    raw = args.get("channels")
    if raw is not None:
        if raw not in imaging.CHANNELS:
            raise ApiError(400, "bad_param", f"channels must be one of {', '.join(imaging.CHANNELS)}, got {raw!r}")
        options["channels"] = raw
    return options


def multipart_image(body: bytes) -> bytes:
    """The bytes of multipart field `image` (the original coordinator's request), in memory."""
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": request.content_type or "",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    try:
        _, _, files = parse_form_data(environ, stream_factory=lambda *args, **kwargs: io.BytesIO(),
                                      silent=False)
    except (ValueError, HTTPException) as exc:
        raise ApiError(400, "missing_image", f"cannot read the multipart body: {exc}") from None
    upload = files.get("image")
    if upload is None:
        raise ApiError(400, "missing_image", "multipart body has no file field named image")
    return upload.read()
