"""One strip request to one worker: query and headers, the exchange under its deadline, the
reply's status read as a routing.Failure kind, and its pixels checked before they are kept."""

from __future__ import annotations

from urllib.parse import urlencode

import numpy as np

from coordinator import codecs, imaging
from coordinator.config import CoordinatorConfig, current_token, redact_url, refreshed_token
from coordinator.discovery import WorkerStatus
from coordinator.plan import OPERATIONS, Strip
from coordinator.routing import BAD_REPLY, BUSY, CANCELLED, DOWN, REFUSED, SERVER, TOKEN, StripFailed
from coordinator.transport import Cancel, Reply, Transport, TransportError, error_reason, exchange_limits, printable


def post_strip(
    transport: Transport, url: str, body: bytes, headers: dict, limits, cancel: Cancel | None, tls=None
) -> Reply:
    """The exchange, its failures as StripFailed; a redirect is a failed attempt, not followed."""
    try:
        reply = transport.exchange("POST", url, limits, headers=headers, body=body, cancel=cancel, tls=tls)
    except TransportError as exc:
        if exc.kind == "too_large":
            raise StripFailed(f"bad reply: {exc.reason}", BAD_REPLY) from None
        raise StripFailed(exc.reason, CANCELLED if exc.kind == "cancelled" else DOWN) from None
    if 300 <= reply.status < 400:
        location = printable(redact_url(reply.headers.get("Location") or "nowhere"), 100)
        raise StripFailed(f"redirected (HTTP {reply.status} to {location}); redirects are not followed", DOWN)
    return reply


def retry_after(reply: Reply) -> float:
    """The reply's Retry-After in seconds (0 when absent or not a number); routing caps it."""
    try:
        return max(0.0, float(reply.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0


def check_status(reply: Reply, worker: WorkerStatus) -> None:
    """Anything but 200 as StripFailed of the right kind."""
    if reply.status == 401:
        raise StripFailed(f"token rejected by {worker.url}", TOKEN)
    if reply.status == 503:
        raise StripFailed(error_reason(reply.status, reply.body), BUSY, retry_after(reply))
    if reply.status >= 500:
        raise StripFailed(error_reason(reply.status, reply.body), SERVER)
    if reply.status != 200:
        raise StripFailed(error_reason(reply.status, reply.body), REFUSED)


def reply_pixels(content: bytes, width: int, rows: int, gray_ok: bool) -> np.ndarray:
    try:
        pixels = imaging.decode_any(content, expected_size=(width, rows), gray_ok=gray_ok)
    except ValueError as exc:
        raise StripFailed(printable(f"bad reply: {exc}"), BAD_REPLY) from None
    if pixels.shape != (rows, width, 3) and not (gray_ok and pixels.shape == (rows, width)):
        channels = pixels.shape[2] if pixels.ndim == 3 else 1
        raise StripFailed(
            f"bad reply: {pixels.shape[1]}x{pixels.shape[0]} with {channels} channels, expected {width}x{rows} RGB",
            BAD_REPLY,
        )
    return pixels


def send_strip(
    session: Transport,
    worker: WorkerStatus,
    strip: Strip,
    width: int,
    body: bytes,
    content_type: str,
    wire: str,
    params: dict,
    config: CoordinatorConfig,
    request_id: str,
    rows: int | None = None,
    cancel: Cancel | None = None,
    traceparent: str = "",
) -> tuple[np.ndarray, Reply, int]:
    """POST one strip; returns its pixels (halo included), checked to be width x rows RGB, or
    width x rows gray when we asked for channels=auto (rows: of the body, default the strip
    with its halo), or raises StripFailed."""
    rows = strip.send_bottom - strip.send_top if rows is None else rows
    query = {
        "op": strip.op,
        **codecs.reply_query(wire, config.wire_quality, worker.runtime, strip.op, (width, rows)),
        **{name: str(params[name]) for name in OPERATIONS[strip.op].params},
    }
    headers = {"Content-Type": content_type, "X-Request-Id": request_id}
    if traceparent:
        headers["traceparent"] = traceparent  # W3C: the attempt's span, which the worker continues
    limits = exchange_limits(config.connect_timeout, config.read_timeout, len(body), rows * width * 3)
    url = f"{worker.url}/process?{urlencode(query)}"
    token = current_token(config)
    reply = post_strip(session, url, body, with_token(headers, token), limits, cancel, config.tls)
    if reply.status == 401:  # a rotated token? read it again from its source, and retry once with it
        fresh = refreshed_token(config, token)
        if fresh is not None:
            reply = post_strip(session, url, body, with_token(headers, fresh), limits, cancel, config.tls)
    check_status(reply, worker)
    gray_ok = query.get("channels") == "auto"  # a 1-channel reply only when we asked for one
    return reply_pixels(reply.body, width, rows, gray_ok), reply, len(reply.body)


def with_token(headers: dict, token: str | None) -> dict:
    return {**headers, "Authorization": f"Bearer {token}"} if token else headers


def parse_ms(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
