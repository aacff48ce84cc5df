"""gunicorn's gthread worker, except that a connection gets a thread only once its request
headers have arrived.

Plain gthread hands a connection to a thread as soon as any byte arrives, and the thread then
blocks reading the rest of the headers with no timeout: a few idle, half-sent requests (no
token needed) take every thread and /healthz hangs (slowloris). Here the event loop collects
header bytes without blocking, closes connections that take longer than
HEADER_TIMEOUT_SECONDS, and passes the bytes it read to gunicorn's parser.
"""
from __future__ import annotations

import errno
import selectors
import time
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

HEADER_TIMEOUT_SECONDS = 10.0
HEADER_LIMIT_BYTES = 64 * 1024  # past this, gunicorn's own header limits decide
_HEADER_ENDS = (b"\r\n\r\n", b"\n\n")


class HeaderGatedThreadWorker(ThreadWorker):
    def init_process(self) -> None:
        self.header_waiting: dict[TConn, tuple[float, bytearray]] = {}
        super().init_process()

    def accept(self, listener) -> None:
        if self.cfg.is_ssl:  # the TLS handshake needs a blocking socket: keep gunicorn's way
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.init()  # creates the HTTP/1 parser; reads nothing
        self._wait_for_headers(conn)

    def on_client_socket_readable(self, conn, client) -> None:
        if self.cfg.is_ssl:
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._wait_for_headers(conn)

    def _wait_for_headers(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        self.header_waiting[conn] = (time.monotonic() + HEADER_TIMEOUT_SECONDS, bytearray())
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_header_bytes, conn))

    def _on_header_bytes(self, conn: TConn, sock) -> None:
        try:
            data = sock.recv(HEADER_LIMIT_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        received = self.header_waiting[conn][1]
        received += data
        if len(received) < HEADER_LIMIT_BYTES and not any(end in received for end in _HEADER_ENDS):
            return
        self.poller.unregister(sock)
        del self.header_waiting[conn]
        # the parser's buffer is empty here: gunicorn re-queues a connection with buffered
        # bytes directly (finish_request), without waiting for the socket to be readable
        conn.parser.unreader.unread(bytes(received))
        conn.data_ready = True
        self.enqueue_req(conn)

    def _drop(self, conn: TConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.header_waiting.pop(conn, None)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn, (deadline, _) in list(self.header_waiting.items()):
            if now >= deadline or not self.alive:
                self._drop(conn)
