"""The only module that binds a port: gunicorn (one gthread process) with the header gate,
the SIGTERM drain and glibc malloc tuning. `python -m worker_python` runs main()."""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import threading

from gunicorn.app.base import BaseApplication
from PIL import Image

from worker_python import tracing
from worker_python.app import create_app
from worker_python.config import Settings, SettingsError, load_settings
from worker_python.header_gate import HeaderGatedThreadWorker
from worker_python.log import GunicornJsonLogger, get_logger, setup_logging
from worker_python.secret_files import SecretFiles

# The drain must end before gunicorn's master stops waiting (it SIGKILLs at grace seconds).
DRAIN_MARGIN_SECONDS = 1.0


def drain_on_sigterm(worker) -> None:
    """gunicorn post_worker_init hook: on SIGTERM keep serving, answer 503 draining to new
    requests, let the ones in flight finish, then stop the worker (exit 0).

    gunicorn's own handler would stop accepting at once, so /healthz could not say
    "draining". The master closes only its copy of the listening socket; this process keeps
    listening until the in-flight requests are done."""
    state = worker.flask_app.extensions["worker_python"]
    grace = worker.app.settings.grace_seconds
    log = get_logger()

    def drain() -> None:
        log.info("SIGTERM: draining", extra={"inflight": state.inflight})
        finished = state.wait_idle(timeout=max(0.0, grace - DRAIN_MARGIN_SECONDS))
        log.info(
            "drained" if finished else "grace period over with requests still in flight",
            extra={"inflight": state.inflight},
        )
        worker.handle_exit(signal.SIGTERM, None)

    def on_sigterm(signum, frame) -> None:
        if state.draining:
            return
        state.begin_draining()  # no logging here: a signal handler must not take the log lock
        threading.Thread(target=drain, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)


# Freed Pillow image blocks (16 MiB at most each) kept for the next image instead of freed:
# at most 48 MiB held. See tune_malloc.
PILLOW_BLOCKS_CACHED = 3


def tune_malloc() -> None:
    """Return big freed buffers to the OS (glibc), but let Pillow reuse a few image blocks.

    A 6 MP strip means 11-24 MiB buffers. glibc raises its mmap threshold after the first such
    free, so later ones come from per-thread heaps that keep their pages: measured on the
    profile strip, a fixed 1 MiB threshold and 2 arenas cut the peak RSS by about 25 MiB.
    mallopt runs after glibc has read MALLOC_MMAP_THRESHOLD_ (scripts/local.MALLOC_LIMITS, the
    systemd unit: 128 KiB), so here the threshold is 1 MiB. The cost: every bigger buffer is
    fresh pages, ~2.3 us per 4 KiB page fault. Pillow's cache of PILLOW_BLOCKS_CACHED freed
    blocks (PILLOW_BLOCKS_MAX, when set, wins) avoids part of it: measured on the 6 MP raw
    strip, grayscale 50 -> 39 ms, invert 46 -> 30, sepia 58 -> 40, blur 256 -> 232; peak RSS
    +2% (VmHWM) to +8% (process tree), +4 MiB idle after a burst. glibc's defaults or a 32 MiB
    threshold were as fast but raised the peak by 14-17%, and a 32 MiB threshold kept 75-170 MiB
    more after a burst (the table in worker-python/README.md)."""
    if "PILLOW_BLOCKS_MAX" not in os.environ:  # Pillow applied the variable at import
        Image.core.set_blocks_max(PILLOW_BLOCKS_CACHED)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold, m_arena_max = -3, -8  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 20)
    libc.mallopt(m_arena_max, 2)


class WorkerServer(BaseApplication):
    def __init__(self, settings: Settings, secrets: SecretFiles | None = None):
        self.settings = settings
        self.secrets = secrets or SecretFiles.load(settings)  # the worker's TLS context and tokens
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        options = {
            "bind": [f"{host}:{s.port}"],
            "workers": 1,  # one process, so the in-flight count is exact
            "worker_class": HeaderGatedThreadWorker,  # gthread that reads headers without a thread
            "threads": s.max_inflight + 2,  # spare threads answer 503 busy and /healthz
            "graceful_timeout": math.ceil(s.grace_seconds),  # gunicorn takes whole seconds
            "timeout": 120,
            "keepalive": 5,  # contract rule 10: an idle keep-alive connection closes after 5 s
            # the header gate caps idle connections itself (evicting the oldest), so gunicorn
            # must never stop accepting: at its default of 1000, idle sockets locked it out
            "worker_connections": 1_000_000,
            "loglevel": s.log_level,
            "logger_class": GunicornJsonLogger,
            "accesslog": None,
            "post_worker_init": drain_on_sigterm,
            "proc_name": "worker-python",
            "control_socket_disable": True,  # workers share hosts; one fixed socket path would clash
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        # called after gunicorn's fork, so the span exporter's thread (tracing on) runs in the worker
        return create_app(self.settings, tracer=tracing.from_env(), secrets=self.secrets)


def main() -> int:
    try:
        settings = load_settings()
        secrets = SecretFiles.load(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = setup_logging(settings.log_level)
    log.info("starting", extra={"host": settings.host, "port": settings.port, "tls": settings.tls})
    tune_malloc()
    WorkerServer(settings, secrets).run()
    return 0
