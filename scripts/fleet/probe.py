"""Bounded HTTP(S) probes of a worker, shared by every place the fleet tool talks to one: the
/healthz of `status`, `wait` and `redeploy`, the token probe of `rotate-token` (POST /process)
and the certificate check of `refresh-secrets` (a TLS handshake). Connect, TLS handshake,
request and the whole reply run under one total deadline, besides a bound on each silence.

requests/urllib3 (used before) bound each socket call, not the exchange: a worker, or anything
at its address, that sent a status line and then a byte every few seconds held `rotate-token`'s
wait and `refresh-secrets` for as long as it liked. Here a timer shuts the socket down at the
deadline, which wakes a read or a handshake blocked on it: coordinator/transport.py's approach,
without its pooling, so the fleet tool does not import the coordinator. A plain-http probe goes
through HTTP_PROXY unless NO_PROXY covers the host, as requests did; https connects directly (no
CONNECT tunnel, like the coordinator). No redirect followed; the caller caps the body it reads.
Worker URLs are IP addresses (name lookup is not under the deadline).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from scripts.fleet.tls import Pinning, reason


class ProbeError(Exception):
    """Why a probe has no answer: one line, never a token."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes  # at most max_body + 1 bytes: longer than max_body means the reply was longer


class _Deadline:
    """Shuts the probe's socket down `total` seconds after the start; `stage` says where it was."""

    def __init__(self, total: float):
        self.total = total
        self.stage = "connect"
        self.expired = False
        self._sock: socket.socket | None = None
        self._done = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(total, self._expire)
        self._timer.daemon = True

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            if not self._done:
                self.expired = True
                if self._sock is not None:
                    _shutdown(self._sock)

    def finish(self) -> bool:
        """True when the probe ended before the deadline (then the timer can no longer fire)."""
        with self._lock:
            self._done = True
            return not self.expired

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.finish()
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv, send or a handshake on it


def _http_proxy(url: str) -> tuple[str, int] | None:
    """The proxy a plain-http probe of `url` goes through: HTTP_PROXY, unless NO_PROXY covers it."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get("http") if parts.scheme == "http" else None
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    where = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return where.hostname or "", where.port or 80


def _connect(url: str, tls: Pinning | None, idle: float, deadline: _Deadline) -> socket.socket:
    parts = urlsplit(url)
    https = parts.scheme == "https"
    address = _http_proxy(url) or (parts.hostname, parts.port or (443 if https else 80))
    sock = socket.create_connection(address, timeout=idle)
    deadline.attach(sock)
    if not https:
        return sock
    deadline.stage = "handshake"
    context = tls.context() if tls else ssl.create_default_context()
    try:
        # wrap_socket detaches the TCP socket: the TLS one is watched before its handshake starts
        secure = context.wrap_socket(
            sock, server_hostname=tls.name if tls else parts.hostname, do_handshake_on_connect=False
        )
    except BaseException:
        sock.close()
        raise
    deadline.attach(secure)
    try:
        secure.do_handshake()
    except BaseException:
        secure.close()
        raise
    return secure


def _failure(exc: BaseException, url: str, idle: float, deadline: _Deadline) -> ProbeError:
    hint = ""
    if deadline.stage == "handshake":
        # A plain-HTTP server behind an https:// URL waits for a request line and never answers the handshake.
        hint = " (https: is it serving TLS?)" if url.startswith("https://") else ""
    if deadline.expired:
        return ProbeError(f"no complete answer within {deadline.total:g}s{hint}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ProbeError(f"no answer within {idle:g}s{hint}")
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return ProbeError(f"TLS {reason(exc)}")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeError("connection refused")
    if isinstance(exc, http.client.HTTPException):
        return ProbeError(f"a broken HTTP reply ({type(exc).__name__})")
    return ProbeError("unreachable")


def request(
    method: str,
    url: str,
    *,
    tls: Pinning | None = None,
    headers: dict | None = None,
    idle: float = 5,
    total: float = 5,
    max_body: int = 0,
) -> Answer:
    """One request to `url` (scheme, address, path) and at most max_body + 1 bytes of its
    reply, all within `total` seconds and no silence over `idle`; ProbeError otherwise. With
    `tls`, https is verified against the pinned CA and name (else the system store)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if _http_proxy(url):
        target = f"http://{parts.netloc}{target}"  # absolute form, for the proxy
    with _Deadline(total) as deadline:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=idle)
        try:
            connection.sock = _connect(url, tls, idle, deadline)
            deadline.stage = "reply"
            connection.request(method, target, body=b"" if method == "POST" else None, headers=headers or {})
            response = connection.getresponse()
            body = response.read(max_body + 1) if max_body else b""
            answer = Answer(response.status, response.headers, body)
        except (OSError, http.client.HTTPException) as exc:
            raise _failure(exc, url, idle, deadline) from None
        finally:
            connection.close()
        if not deadline.finish():  # the shutdown may have cut a reply short without an error
            raise ProbeError(f"no complete answer within {total:g}s")
    return answer


def peer_certificate(url: str, tls: Pinning, total: float = 5) -> bytes:
    """DER of the certificate the worker at `url` presents, after a handshake verified against
    the pinned CA and name, all within `total` seconds; ProbeError otherwise."""
    with _Deadline(total) as deadline:
        try:
            with _connect(url, tls, total, deadline) as secure:
                der = secure.getpeercert(binary_form=True)
        except OSError as exc:
            if deadline.expired:
                raise ProbeError(f"no TLS handshake within {total:g}s") from None
            raise _failure(exc, url, total, deadline) from None
        if not deadline.finish():
            raise ProbeError(f"no TLS handshake within {total:g}s")
    return der
