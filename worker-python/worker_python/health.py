"""What /healthz reports: a self-check of decode, every op and every encoder (cached for
SELF_CHECK_EVERY_SECONDS) and the worker's limits and load, so the check can fail."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from PIL import Image

from worker_python import SERVICE, __version__
from worker_python.config import Settings
from worker_python.decode import decode
from worker_python.encode import FORMATS, encode
from worker_python.ops import OPERATIONS, PRIMARY_OP, apply
from worker_python.state import WorkerState

SELF_CHECK_EVERY_SECONDS = 10.0


def self_check() -> None:
    """A tiny image through decode, every op and every encoder; raises if any step is broken."""
    source = Image.new("RGB", (4, 3), (200, 100, 50))
    data = encode(source, "png")
    image = decode(data, max_pixels=12)
    expected = {
        "grayscale": (124, 124, 124),
        "sepia": (165, 147, 114),
        "invert": (55, 155, 205),
        "blur": (200, 100, 50),
    }
    for op, pixel in expected.items():
        got = apply(op, image, 1.0).getpixel((1, 1))
        if got != pixel:
            raise RuntimeError(f"self-check: {op} gave {got}, expected {pixel}")
    for fmt in FORMATS:
        if not encode(image, fmt):
            raise RuntimeError(f"self-check: {fmt} encoder returned nothing")


class SelfCheck:
    """self_check, run at most every SELF_CHECK_EVERY_SECONDS; remembers the failure."""

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


def report(settings: Settings, state: WorkerState, checker: SelfCheck) -> dict:
    """The /healthz body; its status is "ok" only when the worker should get work."""
    status, reason = "ok", None
    if state.draining:
        status, reason = "draining", "stopping after SIGTERM; finishing requests in flight"
    else:
        reason = checker.error()
        status = "unhealthy" if reason else "ok"
    body = {
        "status": status,
        "service": SERVICE,
        "runtime": "python",
        "version": __version__,
        "build": settings.build,
        "primary": PRIMARY_OP,
        "operations": list(OPERATIONS),
        "formats": list(FORMATS),
        "inflight": state.inflight,
        "max_inflight": settings.max_inflight,
        "inflight_pixels": state.inflight_pixels,
        "max_inflight_pixels": settings.max_inflight_pixels,
        "max_bytes": settings.max_bytes,
        "max_pixels": settings.max_pixels,
        "tls": settings.tls,
    }
    if reason:
        body["reason"] = reason
    return body
