"""Image-sized data of each page session (decoded upload, result, encoded download), kept where
it can be freed when the browser goes away (issue 11.16).

Streamlit keeps a closed browser's session, with its st.session_state, for reconnection; it
reaps it only lazily (on a later disconnect, after server.disconnectedSessionTTL), so three
closed sessions with a 135 MB BMP each still held 730 MB minutes later. Each session's images
live in one dict here (st.session_state holds the same dict); a reaper thread empties the
dict of a session that has had no browser for the grace period (then `on_gone` lets the page
drop what Streamlit holds for it: the raw upload, the download's bytes). Pure apart from the
optional malloc_trim: no Streamlit import, so it is tested with a fake clock and activity check.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

GRACE_SECONDS = 120.0  # the page uses Streamlit's server.disconnectedSessionTTL, 120 s by default


class SessionImages:
    def __init__(
        self,
        is_active: Callable[[str], bool],
        grace: float = GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_gone: Callable[[str], None] = lambda session_id: None,
    ):
        self._is_active, self._grace, self._clock, self._on_gone = is_active, grace, clock, on_gone
        self._by_session: dict[str, dict] = {}
        self._gone_since: dict[str, float] = {}
        self._lock = threading.Lock()

    def for_session(self, session_id: str) -> dict:
        """This session's dict of image-sized data (created empty)."""
        with self._lock:
            self._gone_since.pop(session_id, None)
            return self._by_session.setdefault(session_id, {})

    def reap(self) -> int:
        """Empty the dicts of sessions gone for the grace period; returns how many."""
        now, emptied = self._clock(), []
        with self._lock:
            for session_id in list(self._by_session):
                if self._is_active(session_id):
                    self._gone_since.pop(session_id, None)
                    continue
                gone = self._gone_since.setdefault(session_id, now)
                if now - gone >= self._grace:
                    self._by_session.pop(session_id).clear()
                    self._gone_since.pop(session_id)
                    emptied.append(session_id)
        for session_id in emptied:
            self._on_gone(session_id)
        return len(emptied)

    def sessions(self) -> int:
        with self._lock:
            return len(self._by_session)


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them in per-thread arenas, and the
    engine's strip threads allocate large bodies); a no-op where there is no glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


def start_reaper(store: SessionImages, every: float = 10.0) -> threading.Thread:
    def loop() -> None:
        while True:
            time.sleep(every)
            if store.reap():
                release_freed_memory()

    thread = threading.Thread(target=loop, name="page-session-reaper", daemon=True)
    thread.start()
    return thread
