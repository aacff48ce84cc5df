"""gunicorn's gthread worker, made safe against idle and slow clients (contract rules 3, 8, 10).

Plain gthread hands a connection to a thread as soon as any byte arrives, and the thread then
blocks reading the rest of the headers with no timeout: a few idle, half-sent requests (no
token needed) take every thread and /healthz hangs (slowloris). Here:
- the event loop collects header bytes without blocking and closes connections whose headers
  take longer than HEADER_TIMEOUT_SECONDS, then passes the bytes to gunicorn's parser;
- idle connections (headers pending or kept alive) are capped at MAX_IDLE_CONNECTIONS: a new
  one evicts the oldest, so a thousand idle sockets cannot stop the worker accepting;
- `GET /healthz` and `GET /metrics` run on their own small thread pool, never queued behind /process;
- a connection that ends with unread body is half-closed and drained by the event loop for
  at most LINGER_SECONDS / LINGER_BYTES (gunicorn would block its loop for 2 s on each);
- body reads and reply writes are rate-bounded (wire.PacedSocket);
- gunicorn's own error replies are the contract's JSON and never quote the request;
- with TLS (secret_files.SecretFiles holds the context) the handshake runs on the event loop,
  without blocking, under the same HEADER_TIMEOUT_SECONDS as the headers: a peer that never
  finishes it (idle, a stalled ClientHello, plain HTTP) holds no thread and is cut off. Each
  connection takes the context current at accept, so a reloaded certificate reaches new
  handshakes while open connections keep theirs. (gunicorn's own TLS handshakes in a request
  thread, blocking, with no deadline.)
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import ssl
import time
from concurrent import futures
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

from worker_python import wire
from worker_python.log import get_logger

HEADER_TIMEOUT_SECONDS = 5.0
HEADER_LIMIT_BYTES = 64 * 1024  # past this, gunicorn's own header limits decide
MAX_IDLE_CONNECTIONS = 1000
HEALTH_THREADS = 2
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024
_HEADER_ENDS = (b"\r\n\r\n", b"\n\n")
_HEALTH_REQUESTS = (
    b"GET /healthz ",
    b"GET /healthz?",
    b"HEAD /healthz ",
    b"HEAD /healthz?",
    b"GET /metrics ",
    b"GET /metrics?",
)


class GatedConn(TConn):
    def __init__(self, worker, *args):
        super().__init__(*args)
        self.worker = worker
        self.for_health = False

    def close(self, graceful: bool = False) -> None:
        if graceful:  # called on the event loop (finish_request)
            # body bytes the header gate already read count against the 64 KiB (rule 3)
            already = len(self.parser.unreader.buf.getvalue()) if self.parser is not None else 0
            self.worker.linger(self.sock, LINGER_BYTES - already)
        else:
            super().close()


class HeaderGatedThreadWorker(ThreadWorker):
    def init_process(self) -> None:
        self.header_waiting: dict[TConn, tuple[float, bytearray]] = {}
        self.lingering: dict[socket.socket, list] = {}
        self.health_pool = futures.ThreadPoolExecutor(HEALTH_THREADS, thread_name_prefix="healthz")
        self.secret_files = getattr(self.app, "secrets", None)
        if self.secret_files is not None:
            self.secret_files.refresh()  # files changed since the master read them (a restarted worker)
            self.secret_files.start_watching()  # here, after the fork: the thread runs in this process
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.flask_app = self.wsgi
        self.wsgi = wire.contract_headers(self.wsgi)

    def accept(self, listener) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._evict_oldest_idle()
            elif exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        if len(self.header_waiting) + len(self.keepalived_conns) >= MAX_IDLE_CONNECTIONS:
            self._evict_oldest_idle()
        context = self.secret_files.context if self.secret_files is not None else None
        if context is not None:
            try:
                client_sock = context.wrap_socket(client_sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                client_sock.close()
                return
        self.nr_conns += 1
        conn = GatedConn(self, self.cfg, client_sock, client_addr, listener.getsockname())
        conn.init()  # creates the HTTP/1 parser (on the TLS socket, if any); reads nothing
        if context is not None:
            self._start_handshake(conn)
        else:
            self._wait_for_headers(conn)

    def enqueue_req(self, conn) -> None:
        """Hand a connection whose next request's headers are buffered to a thread: /healthz
        to the health pool, anything else to gunicorn's. A pipelined request with incomplete
        headers goes back to the gate instead (a thread would block reading them)."""
        buffered = conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""
        if buffered and len(buffered) < HEADER_LIMIT_BYTES and not any(end in buffered for end in _HEADER_ENDS):
            self._wait_for_headers(conn, conn.parser.unreader.take_buffered())
            return
        conn.for_health = buffered[:16].startswith(_HEALTH_REQUESTS)
        pool = self.health_pool if conn.for_health else self.tpool
        future = pool.submit(self.handle, conn)
        future.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def on_client_socket_readable(self, conn, client) -> None:
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._wait_for_headers(conn)

    def finish_request(self, conn, fs) -> None:
        super().finish_request(conn, fs)
        # a kept-alive TLS connection may hold a pipelined request already decrypted by the last
        # read: the socket will not turn readable for it, so read it now
        if self.keepalived_conns and self.keepalived_conns[-1] is conn and _tls_pending(conn.sock):
            self.on_client_socket_readable(conn, conn.sock)
            self._on_header_bytes(conn, conn.sock)

    def handle_request(self, req, conn):
        raw = conn.sock
        paced = wire.PacedSocket(raw)
        conn.sock = conn.parser.unreader.sock = paced
        try:
            return super().handle_request(req, conn)
        except wire.ReplyTooSlow:  # the slot was freed when the reply closed
            get_logger().info("reply read too slowly; connection closed")
            return False
        finally:
            conn.sock = conn.parser.unreader.sock = raw

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's error reply, as the contract's JSON; the log line never quotes the request
        (a malformed `Authorization Bearer <token>` line would put the token in the log)."""
        status, code, message = wire.classify_parse_error(exc)
        log = get_logger()
        if status >= 500:
            log.error("error handling a request", extra={"status": status, "code": code})
        else:
            log.info("refused a malformed request", extra={"status": status, "code": code})
        try:
            client.settimeout(1.0)
            client.sendall(wire.json_error_reply(status, code, message))
        except OSError:
            pass

    # ------------------------------------------------------------ TLS handshake

    def _start_handshake(self, conn: TConn) -> None:
        """Handshake without blocking; the deadline covers the handshake and the headers."""
        conn.sock.setblocking(False)
        self.header_waiting[conn] = (time.monotonic() + HEADER_TIMEOUT_SECONDS, bytearray())
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_handshake, conn))

    def _on_handshake(self, conn: TConn, sock) -> None:
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.poller.modify(sock, selectors.EVENT_READ, partial(self._on_handshake, conn))
            return
        except ssl.SSLWantWriteError:
            self.poller.modify(sock, selectors.EVENT_WRITE, partial(self._on_handshake, conn))
            return
        except (OSError, ValueError) as exc:  # a failed handshake: plain HTTP, no client certificate, a reset
            get_logger().debug("TLS handshake failed", extra={"code": type(exc).__name__})
            self._drop(conn)
            return
        self.poller.modify(sock, selectors.EVENT_READ, partial(self._on_header_bytes, conn))
        if _tls_pending(sock):
            self._on_header_bytes(conn, sock)

    # ------------------------------------------------------------ header gate

    def _wait_for_headers(self, conn: TConn, received: bytes = b"") -> None:
        conn.sock.setblocking(False)
        self.header_waiting[conn] = (time.monotonic() + HEADER_TIMEOUT_SECONDS, bytearray(received))
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_header_bytes, conn))

    def _on_header_bytes(self, conn: TConn, sock) -> None:
        try:
            data = _recv_available(sock)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
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
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.header_waiting.pop(conn, None)
        self.nr_conns -= 1
        TConn.close(conn)

    def _evict_oldest_idle(self) -> None:
        """Make room by closing the connection that has been idle longest."""
        oldest_waiting = next(iter(self.header_waiting), None)
        oldest_kept = self.keepalived_conns[0] if self.keepalived_conns else None
        if oldest_kept is not None and (
            oldest_waiting is None
            or oldest_kept.timeout - self.cfg.keepalive
            < self.header_waiting[oldest_waiting][0] - HEADER_TIMEOUT_SECONDS
        ):
            self.keepalived_conns.popleft()
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(oldest_kept.sock)
            self.nr_conns -= 1
            TConn.close(oldest_kept)
        elif oldest_waiting is not None:
            self._drop(oldest_waiting)

    # ------------------------------------------------------------ bounded close

    def linger(self, sock: socket.socket, budget: int = LINGER_BYTES) -> None:
        """Send FIN after the reply, read what the client still sends (at most `budget` bytes,
        LINGER_SECONDS) so the kernel does not answer it with a reset, which can destroy the
        reply; then close."""
        if budget <= 0:
            sock.close()
            return
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._on_linger_bytes)
        except (OSError, ValueError, KeyError):
            sock.close()
            return
        self.lingering[sock] = [time.monotonic() + LINGER_SECONDS, budget]

    def _on_linger_bytes(self, sock) -> None:
        try:
            data = sock.recv(self.lingering[sock][1])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        entry = self.lingering[sock]
        entry[1] -= len(data)
        if not data or entry[1] <= 0:
            self._end_linger(sock)

    def _end_linger(self, sock) -> None:
        self.lingering.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
        sock.close()

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn, (deadline, _) in list(self.header_waiting.items()):
            if now >= deadline or not self.alive:
                self._drop(conn)
        for sock, (deadline, _) in list(self.lingering.items()):
            if now >= deadline or not self.alive:
                self._end_linger(sock)


def _tls_pending(sock) -> bool:
    """Decrypted bytes buffered in a TLS socket, which a poller cannot see."""
    return isinstance(sock, ssl.SSLSocket) and sock.fileno() != -1 and sock.pending() > 0


def _recv_available(sock) -> bytes:
    """What the socket has now, up to HEADER_LIMIT_BYTES; a TLS socket returns one record per
    read, so its buffered rest is read too."""
    data = sock.recv(HEADER_LIMIT_BYTES)
    while data and len(data) < HEADER_LIMIT_BYTES and _tls_pending(sock):
        data += sock.recv(HEADER_LIMIT_BYTES - len(data))
    return data
