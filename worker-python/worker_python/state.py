"""In-flight state shared by the request threads, /healthz and SIGTERM: the /process slots,
the pixels their images declare (contract rule 9) and the draining flag."""

from __future__ import annotations

import threading


class WorkerState:
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


class Slot:
    """One /process request's hold: a slot from try_acquire, then the pixels it declares.
    Released once, when the reply is written or the connection is gone."""

    def __init__(self, state: WorkerState):
        self._state = state
        self.pixels = 0

    def add_pixels(self, pixels: int) -> bool:
        if not self._state.try_add_pixels(pixels):
            return False
        self.pixels = pixels
        return True

    def release(self) -> None:
        self._state.release(self.pixels)
