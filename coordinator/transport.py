"""HTTP to the workers: each exchange (connect, send, status line, headers, body) runs under
one deadline, with separate bounds for connecting and for silence, a cap on the body, no
redirects followed, and keep-alive connections pooled per worker. With a fleet CA
(tls.TlsSettings) every connection connects to the URL's address, verifies the pinned CA and
the fleet's name, and keeps its TLS session for the next requests; the handshake runs under
the exchange's deadline.

Built on http.client rather than requests/urllib3 because their timeouts bound each socket
call, not the exchange: a worker that drips its headers a byte a second held a strip forever,
and urllib3 sent the body under the connect timeout (issue 11, items 9 and 11).
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import json
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from coordinator import tls as fleet_tls

READ_CHUNK = 1 << 20
SEND_CHUNK = 1 << 16  # each piece's sendall waits at most the silence bound
# An exchange must keep moving: beyond connect + read timeouts it may take 1 s per
# MIN_TRANSFER_RATE bytes of its body and of the reply's raw size, so a worker (or a path)
# that trickles bytes, headers included, cannot hold a strip forever.
MIN_TRANSFER_RATE = 128 * 1024


@dataclass(frozen=True)
class Limits:
    connect: float  # seconds to open the TCP (and TLS) connection
    idle: float  # seconds of silence allowed in any one send or receive
    total: float  # seconds for the whole exchange, headers and body included
    max_body: int  # bytes of reply body we accept


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes | bytearray  # a bytearray when the reply had a Content-Length (read in place)

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()


def exchange_limits(connect: float, idle: float, body_size: int, raw_size: int) -> Limits:
    """Bounds of one request whose reply is at most raw_size pixels' bytes: connect, silence,
    and a deadline for the whole exchange."""
    allowance = (body_size + raw_size) / MIN_TRANSFER_RATE
    return Limits(
        connect=connect, idle=idle, total=connect + idle + allowance, max_body=2 * raw_size + 65536
    )  # a compressed reply is never near twice the raw pixels


def printable(text: str, limit: int = 200) -> str:
    """Worker-supplied text as we show it: printable characters only (no terminal escapes), bounded."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


def error_reason(status: int, content: bytes) -> str:
    """A worker's error reply as one line: its JSON code and message, shown printable."""
    try:
        error = json.loads(content)["error"]
        return printable(f"HTTP {status} {error['code']}: {error['message']}")
    except (ValueError, KeyError, TypeError, RecursionError):
        return f"HTTP {status}"


class TransportError(Exception):
    """One exchange failed. kind: connect | tls | timeout | closed | too_large | protocol | cancelled."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason, self.kind = reason, kind


class _Live:
    """One exchange in flight: the watchdog or a cancel shuts its socket down to end it."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.ended: str | None = None  # "deadline" | "cancelled" once ended from outside
        self.finished = False

    def attach(self, sock: socket.socket) -> None:
        with self.lock:
            self.sock = sock
            if self.ended:
                _shutdown(sock)

    def end(self, why: str) -> None:
        with self.lock:
            if self.finished or self.ended:
                return
            self.ended = why
            if self.sock is not None:
                _shutdown(self.sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or send on it


class _Watchdog:
    """One daemon thread that ends every exchange still running at its deadline."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Live]] = []
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, live: _Live) -> None:
        with self._cond:
            heapq.heappush(self._heap, (live.deadline, next(self._count), live))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="exchange-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, live = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            live.end("deadline")


WATCHDOG = _Watchdog()


class Cancel:
    """Ends every exchange registered with it, at once (a job aborted, Ctrl-C)."""

    def __init__(self):
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._live: set[_Live] = set()

    def add(self, live: _Live) -> None:
        with self._lock:
            self._live.add(live)
        if self.event.is_set():
            live.end("cancelled")

    def discard(self, live: _Live) -> None:
        with self._lock:
            self._live.discard(live)

    def fire(self) -> None:
        self.event.set()
        with self._lock:
            live = list(self._live)
        for one in live:
            one.end("cancelled")


class Transport:
    """Keep-alive connections to the workers, pooled per host; safe to share between threads
    (each connection is used by one exchange at a time)."""

    def __init__(self, pool_size: int = 8):
        self.pool_size = max(1, pool_size)
        self._idle: dict[tuple, list[http.client.HTTPConnection]] = {}  # (scheme, host, port, tls)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def exchange(
        self,
        method: str,
        url: str,
        limits: Limits,
        headers: dict | None = None,
        body: bytes | None = None,
        cancel: Cancel | None = None,
        tls: fleet_tls.TlsSettings | None = None,
    ) -> Reply:
        """One request and its whole reply, or TransportError. A 3xx is returned, not followed.
        tls: the fleet's CA and name, verified on every connection (None: an https URL is
        verified against the system's trust store and its own host)."""
        parts = urlsplit(url)
        if tls is not None and parts.scheme != "https":
            raise TransportError("plain HTTP refused: the fleet has a TLS CA", "tls")
        key = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), tls)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        live = _Live(time.monotonic() + limits.total)
        WATCHDOG.watch(live)
        if cancel is not None:
            cancel.add(live)
        try:
            connection, reused = self._take(key, limits)
            try:
                return self._attempt(connection, reused, key, method, target, headers, body, limits, live)
            except _Stale:
                connection, _ = self._new(key, limits), False
                return self._attempt(connection, False, key, method, target, headers, body, limits, live)
        except TransportError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise self._failure(exc, live, limits) from None
        finally:
            with live.lock:
                live.finished = True
            if cancel is not None:
                cancel.discard(live)

    def _attempt(self, connection, reused, key, method, target, headers, body, limits, live) -> Reply:
        started = False
        try:
            if connection.sock is None:
                connection.on_socket = live.attach  # the deadline covers the TLS handshake too
                connection.connect()
            connection.sock.settimeout(limits.idle)  # sending is bounded by silence, not connect
            live.attach(connection.sock)
            headers = dict(headers or {})
            if body is not None:  # in pieces: one sendall's timeout bounds all of it, not silence
                headers["Content-Length"] = str(len(body))
            try:
                connection.request(method, target, body=None if body is None else _pieces(body), headers=headers)
            except (BrokenPipeError, ConnectionResetError) as exc:
                # A worker may answer before reading the whole body (401, 413, 503) and close:
                # its answer is what we want, if it reached us; else the send error stands.
                response = _early_answer(connection)
                if response is None:
                    raise exc from None
            else:
                response = connection.getresponse()
            started = True
            data = self._read_body(response, limits.max_body)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            if reused and not started and not live.ended and _is_stale(exc):
                raise _Stale() from None
            if not reused and not started and isinstance(connection, _TimedHTTPS) and _is_stale(exc):
                raise _ConnectFailed(fleet_tls.CLOSED_AT_HANDSHAKE, "tls") from None  # nothing was answered
            raise
        except BaseException:
            connection.close()
            raise
        if live.ended:  # the body ended because we shut the socket
            connection.close()
            raise self._failure(ConnectionError("ended"), live, limits)
        if response.will_close:
            connection.close()
        else:
            self._give_back(key, connection)
        return Reply(response.status, response.headers, data)

    @staticmethod
    def _read_body(response: http.client.HTTPResponse, max_body: int) -> bytes:
        declared = response.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_body:
            raise TransportError(f"reply of {int(declared)} bytes is over the {max_body} byte limit", "too_large")
        if response.length is not None and not response.chunked:  # the length is known and within max_body
            return _read_into(response, response.length)
        chunks, size = [], 0
        while chunk := response.read1(READ_CHUNK):
            size += len(chunk)
            if size > max_body:
                raise TransportError(f"reply is over the {max_body} byte limit", "too_large")
            chunks.append(chunk)
        if response.length:  # read1 returns b"" at EOF even when Content-Length said more
            raise http.client.IncompleteRead(b"", response.length)
        response.close()  # fully read: frees the connection for the next request
        return b"".join(chunks)

    def _take(self, key, limits: Limits) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                connection = idle.pop()
                if _usable(connection):
                    return connection, True
                connection.close()
        return self._new(key, limits), False

    def _new(self, key, limits: Limits) -> http.client.HTTPConnection:
        scheme, host, port, tls = key
        if scheme == "https" and tls is not None:
            context, name = fleet_tls.client_context(tls), tls.name or host
            return _TimedHTTPS(host, port, timeout=limits.connect, context=context, server_name=name)
        if scheme == "https":
            return _TimedHTTPS(host, port, timeout=limits.connect, context=fleet_tls.system_context(), server_name=host)
        return _TimedHTTP(host, port, timeout=limits.connect)

    def _give_back(self, key, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.pool_size:
                idle.append(connection)
                return
        connection.close()

    @staticmethod
    def _failure(exc: BaseException, live: _Live, limits: Limits) -> TransportError:
        if live.ended == "cancelled":
            return TransportError("cancelled", "cancelled")
        if live.ended == "deadline" and getattr(exc, "handshake", False):
            return TransportError(_no_handshake(limits.total), "timeout")
        if live.ended == "deadline":
            return TransportError(f"timed out: no complete reply within {limits.total:.1f} s", "timeout")
        if isinstance(exc, _ConnectFailed):
            return TransportError(exc.reason, exc.kind)
        if isinstance(exc, ssl.SSLError) and not _is_stale(exc):  # an alert after the handshake (TLS 1.3 mTLS)
            return TransportError(fleet_tls.failure_reason(exc, "the fleet name"), "tls")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return TransportError(f"timed out: no bytes moved for {limits.idle:g} s", "timeout")
        if isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
            return TransportError(_closed_reason(exc), "closed")
        if isinstance(exc, http.client.HTTPException):
            return TransportError(f"not a valid HTTP reply ({type(exc).__name__})", "protocol")
        return TransportError(_closed_reason(exc), "closed")


class _Stale(Exception):
    """A pooled connection the worker had closed: try once more on a new one."""


class _ConnectFailed(OSError):
    def __init__(self, reason: str, kind: str = "connect", handshake: bool = False):
        super().__init__(reason)
        self.reason, self.kind, self.handshake = reason, kind, handshake


def _connect_reason(exc: OSError) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connect timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "name or service not known"
    return f"connect failed: {exc.strerror or type(exc).__name__}"


class _TimedHTTP(http.client.HTTPConnection):
    on_socket = None  # called with the TCP socket as soon as it is connected

    def connect(self):
        try:
            super().connect()
        except OSError as exc:
            raise _ConnectFailed(_connect_reason(exc)) from None
        if self.on_socket is not None:
            self.on_socket(self.sock)


class _TimedHTTPS(_TimedHTTP):
    """TCP to the URL's address, then TLS verifying `server_name` (the fleet's name, not the IP)."""

    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext, server_name: str):
        super().__init__(host, port, timeout=timeout)
        self.context, self.server_name = context, server_name

    def connect(self):
        super().connect()
        try:
            # wrap_socket detaches the TCP socket: the TLS one is handed over before its handshake,
            # so a deadline or a cancel can end a stalled handshake too
            self.sock = self.context.wrap_socket(
                self.sock, server_hostname=self.server_name, do_handshake_on_connect=False
            )
            if self.on_socket is not None:
                self.on_socket(self.sock)
            self.sock.do_handshake()
        except ssl.SSLError as exc:
            self.sock.close()
            raise _ConnectFailed(fleet_tls.failure_reason(exc, self.server_name), "tls", True) from None
        except OSError as exc:
            self.sock.close()
            if isinstance(exc, (socket.timeout, TimeoutError)):
                raise _ConnectFailed(_no_handshake(self.timeout), "tls", True) from None
            raise _ConnectFailed(f"TLS failed: connection closed during the handshake ({type(exc).__name__})") from None


def _no_handshake(seconds: float) -> str:
    # gunicorn keeps waiting for the end of a request line that a ClientHello never sends
    return f"TLS failed: no TLS handshake from the worker within {seconds:.1f} s (a plain HTTP server on that port?)"


def _early_answer(connection: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
    try:
        return connection.getresponse()
    except (OSError, http.client.HTTPException):
        return None


def _read_into(response: http.client.HTTPResponse, length: int) -> bytearray:
    """A body of known length received straight into one buffer: no chunk list to join, one
    copy fewer of every reply (an 18 MB raw strip at 12 MP)."""
    body = bytearray(length)
    view, filled = memoryview(body), 0
    with view:
        while filled < length:
            count = response.readinto(view[filled:])
            if not count:  # the peer closed (or we shut the socket) before the whole body came
                raise http.client.IncompleteRead(bytes(view[:filled][-16:]), length - filled)
            filled += count
    response.close()  # fully read: frees the connection for the next request
    return body


def _pieces(body: bytes):
    view = memoryview(body)
    for start in range(0, len(view), SEND_CHUNK):
        yield view[start : start + SEND_CHUNK]


def _usable(connection: http.client.HTTPConnection) -> bool:
    """An idle connection with nothing to read: readable means closed (or junk) by the peer."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _is_stale(exc: BaseException) -> bool:
    closed = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)
    return isinstance(exc, (*closed, ssl.SSLEOFError, ssl.SSLZeroReturnError))


def _closed_reason(exc: BaseException) -> str:
    if isinstance(exc, http.client.RemoteDisconnected):
        return "remote end closed connection"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed mid-reply"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "TLS connection closed by the worker"
    return f"connection failed: {type(exc).__name__}"


def daemon_map(function, items) -> list:
    """function(item) for each item, each in its own daemon thread, results in order; the
    first exception (in item order) is re-raised. Daemon threads, so a Ctrl-C in the caller
    ends the program at once instead of waiting for an exchange to run out its deadline."""
    items = list(items)
    results: list = [None] * len(items)
    errors: list[BaseException | None] = [None] * len(items)

    def run(index: int) -> None:
        try:
            results[index] = function(items[index])
        except BaseException as exc:  # handed to the caller below
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return results
