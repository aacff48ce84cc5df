"""Hostile HTTP clients on raw sockets, each bounded in time and count, each closing its sockets.

    target = Target.of(worker.url)
    with HealthProbe(worker.url) as probe, IdleConnections(target, 1100):
        time.sleep(4)
    assert probe.worst() < 1.0

One-shot exchanges return a `Reply` (or None when the server closed without answering):
`send_raw`, `truncated_multipart`, `invalid_chunk_size`, `long_chunk_extension`,
`leave_mid_chunked`, `long_authorization`. Attacks that run while something else is measured
are context managers: `IdleConnections`, `SlowBody`, `SlowHeaders`, `LongAuthFlood`.
`push_body` measures how many bytes a server accepted before it closed a refused upload.
Every socket has a timeout, every loop a deadline, and `close()`/`__exit__` closes all
sockets, so a broken server fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_SOCKETS = 2000  # an upper bound on any one attack's connections
MAX_SECONDS = 60  # an upper bound on any one attack's duration
LONG_AUTH = "Bearer a" + " " * 16200 + "b"  # issue 11 item 2(c): quadratic in a backtracking regex
TRUNCATED_MULTIPART = (
    b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.bmp"\r\n'
    b"Content-Type: image/bmp\r\n\r\nBM"
)  # issue 11 item 1: EOF inside the part


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)

    def connect(self, timeout: float = 5, sndbuf: int | None = None, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            if rcvbuf:  # set before connect, so the advertised window stays small
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect((self.host, self.port))
        except OSError:
            sock.close()
            raise
        return sock


@dataclass
class Reply:
    status: int
    headers: dict  # lower-case names
    body: bytes
    seconds: float = 0.0


def head(method: str, path: str, target: Target, headers: dict | list | None = None) -> bytes:
    """A request head; `headers` may repeat names when given as a list of pairs."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    lines += [f"{name}: {value}" for name, value in pairs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_reply(sock: socket.socket, limit: float = 10, max_body: int = 1 << 20) -> Reply | None:
    """The server's reply, or None when it closed or reset the connection without one."""
    started = time.monotonic()
    sock.settimeout(limit)
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        body = response.read(max_body)
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        return None
    except http.client.IncompleteRead as exc:
        body = exc.partial
    headers = {name.lower(): value for name, value in response.getheaders()}
    return Reply(response.status, headers, body, time.monotonic() - started)


def send_raw(target: Target, data: bytes, *, end: bool = False, limit: float = 10) -> Reply | None:
    """Send `data` as is (end=True: then half-close, i.e. EOF) and read one reply."""
    with target.connect(limit) as sock:
        try:
            sock.sendall(data)
            if end:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_reply(sock, limit)


def truncated_multipart(target: Target, path: str = "/process", headers: dict | None = None) -> Reply | None:
    """The ~100-byte multipart body that ends inside the `image` part, then EOF."""
    body = TRUNCATED_MULTIPART
    request = head(
        "POST",
        path,
        target,
        {"Content-Type": "multipart/form-data; boundary=XyZ", "Content-Length": str(len(body)), **(headers or {})},
    )
    return send_raw(target, request + body, end=True)


def chunked_head(target: Target, path: str = "/process", headers: dict | None = None) -> bytes:
    return head("POST", path, target, {"Content-Type": "image/png", "Transfer-Encoding": "chunked", **(headers or {})})


def invalid_chunk_size(target: Target, path: str = "/process", headers: dict | None = None) -> Reply | None:
    return send_raw(target, chunked_head(target, path, headers) + b"zz\r\nhello\r\n0\r\n\r\n")


def long_chunk_extension(
    target: Target, path: str = "/process", headers: dict | None = None, length: int = 20000
) -> Reply | None:
    extension = b";" + b"a" * length
    return send_raw(target, chunked_head(target, path, headers) + b"5" + extension + b"\r\nhello\r\n0\r\n\r\n")


def leave_mid_chunked(target: Target, path: str = "/process", headers: dict | None = None) -> None:
    """Start a chunked body, send half a chunk, and vanish (EOF, then close)."""
    with target.connect(5) as sock:
        sock.sendall(chunked_head(target, path, headers) + b"400\r\n" + b"\x89PNG" + bytes(100))
        sock.shutdown(socket.SHUT_WR)
        time.sleep(0.2)


def long_authorization(target: Target, value: str = LONG_AUTH, path: str = "/process") -> Reply | None:
    body = b"\x89PNG\r\n\x1a\n"
    request = head(
        "POST", path, target, {"Content-Type": "image/png", "Authorization": value, "Content-Length": str(len(body))}
    )
    return send_raw(target, request + body)


# ---------------------------------------------------------------- attacks that run in the background


class _Attack:
    """A background thread with a deadline and a list of sockets that `close()` always closes."""

    def __init__(self, duration: float):
        self.deadline = time.monotonic() + min(duration, MAX_SECONDS)
        self.sockets: list[socket.socket] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, daemon=True, name=type(self).__name__)

    def _guarded(self) -> None:
        try:
            self.run()
        except Exception as exc:  # a hostile client reports, it never raises into the test thread
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def run(self) -> None:
        raise NotImplementedError

    def running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def start(self):
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class IdleConnections(_Attack):
    """`count` connections that send nothing; with renew_every, ones the server closed are reopened."""

    def __init__(self, target: Target, count: int, duration: float = 20, renew_every: float | None = None):
        super().__init__(duration)
        self.target, self.count, self.renew_every = target, min(count, MAX_SOCKETS), renew_every
        self.opened = 0
        self.refused = 0
        self.renewed = 0  # connections the server closed, noticed and replaced

    def _open(self) -> None:
        try:
            self.sockets.append(self.target.connect(2))
            self.opened += 1
        except OSError:
            self.refused += 1

    def run(self) -> None:
        for _ in range(self.count):
            if not self.running():
                return
            self._open()
        while self.renew_every and self.running():
            self._stop.wait(self.renew_every)
            gone = [sock for sock in self.sockets if _closed_by_peer(sock)]
            for sock in gone:
                self.sockets.remove(sock)
                sock.close()
                self.renewed += 1
                self._open()

    def closed_by_server(self) -> int:
        return sum(1 for sock in list(self.sockets) if _closed_by_peer(sock))


class SlowBody(_Attack):
    """`count` POSTs that declare a body of `declared` bytes, then send 1 byte every `interval`."""

    def __init__(
        self,
        target: Target,
        count: int = 8,
        headers: dict | None = None,
        declared: int = 10_000_000,
        interval: float = 0.5,
        duration: float = 10,
        path: str = "/process",
    ):
        super().__init__(duration)
        self.target, self.count, self.interval, self.path = target, min(count, MAX_SOCKETS), interval, path
        self.headers = {"Content-Type": "image/png", "Content-Length": str(declared), **(headers or {})}
        self.sent = 0
        self.closed = 0  # connections the server closed while we trickled
        self.statuses: list[int] = []

    def run(self) -> None:
        for _ in range(self.count):
            sock = self.target.connect(2)
            sock.sendall(head("POST", self.path, self.target, self.headers) + b"\x89")
            self.sockets.append(sock)
        live = list(self.sockets)
        while live and self.running():
            self._stop.wait(self.interval)
            for sock in list(live):
                if _closed_by_peer(sock, self.statuses) or not _send_quietly(sock, b"\x00"):
                    live.remove(sock)
                    self.closed += 1
                else:
                    self.sent += 1


class SlowHeaders(_Attack):
    """`count` connections that send a request line, then one header byte every `interval`."""

    def __init__(self, target: Target, count: int = 8, interval: float = 0.5, duration: float = 10):
        super().__init__(duration)
        self.target, self.count, self.interval = target, min(count, MAX_SOCKETS), interval
        self.closed = 0

    def run(self) -> None:
        for _ in range(self.count):
            sock = self.target.connect(2)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            self.sockets.append(sock)
        live = list(self.sockets)
        while live and self.running():
            self._stop.wait(self.interval)
            for sock in list(live):
                if _closed_by_peer(sock) or not _send_quietly(sock, b"X"):
                    live.remove(sock)
                    self.closed += 1


class LongAuthFlood(_Attack):
    """`parallel` clients sending requests with a 16 KB Authorization header back to back."""

    def __init__(
        self, target: Target, value: str = LONG_AUTH, parallel: int = 4, duration: float = 5, max_requests: int = 400
    ):
        super().__init__(duration)
        self.target, self.value, self.max_requests = target, value, max_requests
        self.parallel = min(parallel, 32)
        self.replies: list[Reply | None] = []

    def run(self) -> None:
        clients = [threading.Thread(target=self._client, daemon=True) for _ in range(self.parallel)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=MAX_SECONDS)

    def _client(self) -> None:
        while self.running() and len(self.replies) < self.max_requests:
            try:
                self.replies.append(long_authorization(self.target, self.value))
            except OSError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(0.05)


# ---------------------------------------------------------------- a refused upload: how much was read


@dataclass
class PushResult:
    accepted: int  # bytes our kernel took from us before the server closed
    reply: Reply | None
    seconds: float
    closed: bool  # the server closed (or reset) before we sent everything
    errors: list = field(default_factory=list)


def push_body(
    target: Target,
    headers: dict,
    total: int = 10_000_000,
    limit: float = 5,
    sndbuf: int = 65536,
    method: str = "POST",
    path: str = "/process",
) -> PushResult:
    """POST `total` declared bytes as fast as the server takes them, while reading its reply.

    `accepted` bounds what the server read from above: it is what the server read plus what sat
    in the two socket buffers (ours is capped at `sndbuf`) when it closed."""
    sock = target.connect(limit, sndbuf=sndbuf)
    result = PushResult(0, None, 0.0, False)
    started = time.monotonic()
    replies: list = []
    reading = sock.dup()  # its own timeout; the pusher's short timeouts must not cut the read
    reader = threading.Thread(target=lambda: replies.append(_read_quietly(reading, limit)), daemon=True)
    try:
        sock.sendall(head(method, path, target, {"Content-Type": "image/png", "Content-Length": str(total), **headers}))
        reader.start()
        result.accepted, result.closed = _push(sock, total, started + limit)
        reader.join(timeout=limit)
    finally:
        result.seconds = time.monotonic() - started
        sock.close()
        reading.close()
    result.reply = replies[0] if replies else None
    return result


def _push(sock: socket.socket, total: int, deadline: float) -> tuple[int, bool]:
    block = bytes(65536)
    sent = 0
    sock.settimeout(0.1)
    while sent < total and time.monotonic() < deadline:
        try:
            sent += sock.send(block[: min(len(block), total - sent)])
        except TimeoutError:
            continue
        except OSError:
            return sent, True
    return sent, sent < total and _closed_by_peer(sock)


def _read_quietly(sock: socket.socket, limit: float) -> Reply | None:
    try:
        sock.settimeout(limit)
        return read_reply(sock, limit)
    except OSError:
        return None


# ---------------------------------------------------------------- /healthz latency while attacked


class HealthProbe:
    """Time GET /healthz on a fresh connection every `interval` seconds in a background thread.

    A failed or timed-out probe counts as `timeout` seconds, so `worst()` cannot hide it."""

    def __init__(self, url: str, interval: float = 0.1, timeout: float = 5, max_samples: int = 600):
        self.target = Target.of(url)
        self.interval, self.timeout, self.max_samples = interval, timeout, max_samples
        self.samples: list[tuple[float, int]] = []  # (seconds, status; 0 = no reply)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-probe")

    def probe_once(self) -> tuple[float, int]:
        started = time.monotonic()
        try:
            with self.target.connect(self.timeout) as sock:
                sock.sendall(head("GET", "/healthz", self.target, {"Connection": "close"}))
                reply = read_reply(sock, self.timeout)
            status = reply.status if reply else 0
        except OSError:
            status = 0
        seconds = time.monotonic() - started
        return (seconds if status else max(seconds, self.timeout)), status

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            self.samples.append(self.probe_once())
            self._stop.wait(self.interval)

    def worst(self) -> float:
        return max((seconds for seconds, _ in self.samples), default=float("inf"))

    def failed(self) -> int:
        return sum(1 for _, status in self.samples if status != 200)

    def summary(self) -> str:
        times = sorted(seconds for seconds, _ in self.samples)
        if not times:
            return "no samples"
        return (
            f"{len(times)} probes, median {times[len(times) // 2] * 1000:.0f} ms, "
            f"max {times[-1] * 1000:.0f} ms, {self.failed()} not 200"
        )

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)


# ---------------------------------------------------------------- socket helpers


def _closed_by_peer(sock: socket.socket, statuses: list | None = None) -> bool:
    """True when the peer has closed or reset. Whatever it sent first (a 408 or 401 reply, say)
    is read and dropped, recording each reply's status in `statuses` when given. poll, not
    select: select refuses a descriptor past 1023, which an attack of 1000+ sockets reaches
    (it raised ValueError, and every such socket counted as closed)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while poller.poll(0):
            data = sock.recv(65536)
            if not data:
                return True
            if statuses is not None and data.startswith(b"HTTP/1.") and len(data) >= 12:
                statuses.append(int(data[9:12]))
    except (OSError, ValueError):
        return True
    return False


def _send_quietly(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False
