"""HTTP handlers: create_app(settings) builds the Flask app. Requests are read by body.py and
params.py, the in-flight slots live in state.py, the pixels in decode/ops/encode."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from worker_python import SERVICE, decode, encode, health, ops, tracing
from worker_python.body import read_job
from worker_python.config import Settings
from worker_python.errors import ApiError, ImageError
from worker_python.log import get_logger
from worker_python.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from worker_python.metrics import Metrics, NoMetrics
from worker_python.params import authorized_by_any
from worker_python.secret_files import SecretFiles
from worker_python.state import Slot, WorkerState

BUSY_RETRY_AFTER_SECONDS = 1
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_HTTP_CODES = {
    400: "bad_param",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_type",
}


def create_app(
    settings: Settings,
    self_check: Callable[[], None] = health.self_check,
    clock: Callable[[], float] = time.monotonic,
    tracer: tracing.NoTracing | tracing.OtelTracing | None = None,
    secrets: SecretFiles | None = None,
) -> Flask:
    """The app; `secrets` holds the accepted tokens (WORKER_TOKEN or WORKER_TOKEN_FILE, re-read on change)."""
    app = Flask("worker_python")
    state = WorkerState(settings.max_inflight, settings.max_inflight_pixels)
    app.extensions["worker_python"] = state
    handlers = Handlers(settings, state, health.SelfCheck(self_check, clock))
    handlers.secrets = secrets or SecretFiles.load(settings)
    handlers.tracer = tracer or tracing.NoTracing()
    app.before_request(handlers.start_request)
    app.after_request(handlers.finish_request)
    app.register_error_handler(ApiError, handlers.api_error)
    app.register_error_handler(NotFound, handlers.not_found)
    app.register_error_handler(MethodNotAllowed, handlers.method_not_allowed)
    app.register_error_handler(HTTPException, handlers.other_http_error)
    app.register_error_handler(Exception, handlers.unexpected)
    app.add_url_rule("/healthz", view_func=handlers.healthz, methods=["GET"])
    if settings.metrics:
        app.add_url_rule("/metrics", view_func=handlers.metrics_page, methods=["GET"])
    # no automatic OPTIONS: rule 7, any method but POST is 405 with Allow: POST
    app.add_url_rule("/process", view_func=handlers.process, methods=["POST"], provide_automatic_options=False)
    return app


class Handlers:
    """The routes, the request hooks and the error replies of one app."""

    def __init__(self, settings: Settings, state: WorkerState, checker: health.SelfCheck):
        self.settings, self.state, self.checker = settings, state, checker
        self.log = get_logger()
        self.metrics = Metrics() if settings.metrics else NoMetrics()
        self.tracer = tracing.NoTracing()
        self.secrets = SecretFiles(settings)

    def error_response(self, status: int, code: str, message: str) -> Response:
        response = jsonify({"error": {"code": code, "message": " ".join(message.split())}})
        response.status_code = status
        if status == 503:
            grace = max(1, math.ceil(self.settings.grace_seconds))
            response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_SECONDS if code == "busy" else grace)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if not g.get("body_read"):  # rule 3: refused before the body: answer and close
            response.headers["Connection"] = "close"
        g.error_code = code
        return response

    # ------------------------------------------------------------ request hooks

    def start_request(self) -> None:
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        g.started = time.perf_counter()
        if request.path == "/metrics":  # not counted, not traced: a scrape must not see itself
            return
        g.counted = True
        self.metrics.active.inc()

    def finish_request(self, response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers["X-Worker"] = SERVICE
        fields = {
            "request_id": g.get("request_id"),
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "ms": round((time.perf_counter() - g.get("started", 0)) * 1000, 1),
            "bytes_in": g.get("bytes_in", 0),
            "bytes_out": response.content_length or 0,
        }
        if request.path == "/process":
            fields["op"] = g.get("op")
        if g.get("error_code"):
            fields["code"] = g.error_code
        self.log.log(10 if request.path == "/healthz" and response.status_code == 200 else 20, "request", extra=fields)
        if g.get("counted"):
            seconds = time.perf_counter() - g.started
            self.metrics.request_over(
                request.method,
                request.path,
                response.status_code,
                g.get("metric_op"),
                seconds,
                fields["bytes_in"],
                fields["bytes_out"],
            )
            response.call_on_close(self.metrics.active.dec)
            self.tracer.end_request(g.get("span"), response.status_code)
        return response

    # ------------------------------------------------------------ errors

    def api_error(self, exc: ApiError) -> Response:
        return self.error_response(exc.status, exc.code, exc.message)

    def not_found(self, exc: NotFound) -> Response:
        return self.error_response(404, "not_found", f"no route {request.path}")

    def method_not_allowed(self, exc: MethodNotAllowed) -> Response:
        response = self.error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")
        response.headers["Allow"] = ", ".join(exc.valid_methods or [])
        return response

    def other_http_error(self, exc: HTTPException) -> Response:
        status = exc.code or 400
        return self.error_response(status, _HTTP_CODES.get(status, "bad_param"), exc.description or exc.name)

    def unexpected(self, exc: Exception) -> Response:
        self.log.error("unexpected error", exc_info=exc, extra={"request_id": g.get("request_id")})
        response = jsonify({"error": {"code": "internal", "message": "internal error; see the worker log"}})
        response.status_code = 500
        response.headers["Connection"] = "close"
        return response

    # ------------------------------------------------------------ routes

    def healthz(self) -> Response:
        body = health.report(self.settings, self.state, self.checker)
        response = jsonify(body)
        response.status_code = 200 if body["status"] == "ok" else 503
        if request.content_length or "Transfer-Encoding" in request.headers:
            response.headers["Connection"] = "close"  # never hold a health thread draining a body
        return response

    def process(self) -> Response:
        # The contract's check order: draining, token, busy, then the body (read_job).
        settings = self.settings
        if self.state.draining:
            self.metrics.rejected("draining")
            raise ApiError(503, "draining", "worker is shutting down; send the request elsewhere")
        tokens = self.secrets.tokens
        if tokens and not authorized_by_any(request.headers.get("Authorization", ""), tokens):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token")
        if not self.state.try_acquire():
            self.metrics.rejected("busy")
            raise ApiError(503, "busy", f"all {settings.max_inflight} slots are busy; retry shortly")
        slot = Slot(self.state)
        attributes = {
            "http.request.method": request.method,
            "url.path": request.path,
            "worker.request_id": g.request_id,
        }
        g.span = self.tracer.start_request(request.headers, "POST /process", attributes)  # admitted: traced
        try:
            response = self.in_slot(slot)
        except BaseException:
            slot.release()
            raise
        # the slot and its pixels are free once the reply is written or the connection is gone
        response.call_on_close(slot.release)
        return response

    def in_slot(self, slot: Slot) -> Response:
        try:
            return self.run(slot)
        except ApiError as exc:  # built here, inside the slot, so the slot frees after sending
            return self.error_response(exc.status, exc.code, exc.message)

    def run(self, slot: Slot) -> Response:
        """Read, decode, admit the pixels, apply the op, encode; the upload is dropped once
        decoded and the image once encoded, so a request holds one full-size copy."""
        job, data = read_job(self.settings.max_bytes)
        g.metric_op = job.op  # the metrics' op label: set once the job is parsed and the image read
        started = time.perf_counter()
        span = g.get("span")
        try:
            with self.tracer.child(span, "decode"):
                image = self.decode(data, slot)
            del data
            with self.tracer.child(span, "op"):
                image = ops.apply(job.op, image, job.radius, job.one_channel, in_place=True)
            if job.fmt == "raw":
                return raw_reply(image, started)
            with self.tracer.child(span, "encode"):
                result = encode.encode(image, job.fmt, **job.options)
            del image
        except ImageError as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        return Response(result, mimetype=encode.MEDIA_TYPES[job.fmt], headers={"X-Processing-Ms": f"{elapsed_ms:.1f}"})

    def decode(self, data: bytes, slot: Slot):
        """Sniff, check the size, admit the pixels, decode; an ImageError here is a decode failure."""
        try:
            image = decode.open_checked(data, self.settings.max_pixels)
            self.admit_pixels(image, slot)
            return decode.load_rgb(image, data)
        except ImageError as exc:
            self.metrics.decode_failed(exc.code)
            raise

    def metrics_page(self) -> Response:
        """Prometheus text, from memory (no token: SECURITY.md)."""
        return Response(self.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    def admit_pixels(self, image, slot: Slot) -> None:
        pixels = image.width * image.height
        if not slot.add_pixels(pixels):
            self.metrics.rejected("busy")
            raise ApiError(
                503,
                "busy",
                f"{self.state.inflight_pixels} pixels in flight; {pixels} more would pass "
                f"the {self.settings.max_inflight_pixels} limit; retry shortly",
            )


def raw_reply(image, started: float) -> Response:
    """Binary PPM streamed from the result image, with its length known up front."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    return Response(
        encode.raw_chunks(image),
        mimetype=encode.MEDIA_TYPES["raw"],
        headers={"X-Processing-Ms": f"{elapsed_ms:.1f}", "Content-Length": str(encode.raw_length(image))},
    )
