"""A small threaded TCP/HTTP proxy in front of a real worker, to inject network and response faults.

    proxy = FaultProxy(worker.url, mode="close_mid_response").start()
    ... point the coordinator at proxy.url ...
    proxy.mode = "pass"; proxy.stop()

Modes (only `POST /process` is faulted; `/healthz` always passes, so discovery still routes to
the faulty worker, which is the point):
- pass                 bytes forwarded untouched (keep-alive works)
- close_mid_response   forwards the request, sends the status line, headers and half the body, closes
- garbage              answers 200 image/png with random bytes of the real response's length
- wrong_size           answers the real image cropped by one row and one column, re-encoded
- one_column           answers the real image with every row but only its first column
- narrow               answers the real image with every row, one column short
- server_error         answers 500 with a JSON error body (a worker bug)
- bomb                 answers 200 with a tiny PNG whose header declares 60000x60000 pixels
- drip                 answers the real reply one byte every `delay` seconds (never a silent gap
                       as long as a read timeout), until stop()
- throttle             bytes forwarded at `rate` bytes/s each way, after `delay` seconds
- blackhole            reads the request and never answers (a hung worker), until stop()
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import socket
import threading
import time
from urllib.parse import urlsplit

from scripts.testkit.socket_server import ThreadedSocketServer

MODES = (
    "pass",
    "close_mid_response",
    "garbage",
    "wrong_size",
    "one_column",
    "narrow",
    "server_error",
    "bomb",
    "drip",
    "throttle",
    "blackhole",
)
_CHUNK = 16384


class FaultProxy(ThreadedSocketServer):
    thread_name = "faultproxy"

    def __init__(
        self, upstream_url: str, mode: str = "pass", rate: int = 100_000, delay: float = 0.0, host: str = "127.0.0.1"
    ):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.mode = mode
        self.rate = rate
        self.delay = delay
        self.faulted = 0  # /process requests that got the fault
        self.passes = 0  # the next this many /process replies go through untouched, then the faults begin
        self.connections = 0
        self._lock = threading.Lock()
        self._serve(host)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown fault mode {value!r}; one of {', '.join(MODES)}")
        self._mode = value

    # -- connection handling -------------------------------------------------------------

    def _take_pass(self) -> bool:
        """True, and one pass fewer, while `passes` lets /process replies through."""
        with self._lock:
            if self.passes <= 0:
                return False
            self.passes -= 1
            return True

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _handle(self, client: socket.socket) -> None:
        self._count("connections")
        client.settimeout(60)
        mode = self.mode
        try:
            if mode in ("pass", "throttle"):
                self._pump(client, throttled=mode == "throttle")
            else:
                self._http(client)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _pump(self, client: socket.socket, throttled: bool) -> None:
        upstream = socket.create_connection(self.upstream, timeout=60)
        if throttled and self.delay:
            time.sleep(self.delay)

        def copy(src: socket.socket, dst: socket.socket) -> None:
            chunk = max(256, min(_CHUNK, self.rate // 20)) if throttled else _CHUNK
            try:
                while not self._stopping.is_set():
                    data = src.recv(chunk)
                    if not data:
                        break
                    if throttled:
                        time.sleep(len(data) / self.rate)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=copy, args=(upstream, client), daemon=True)
        back.start()
        copy(client, upstream)
        back.join(timeout=120)
        upstream.close()

    def _http(self, client: socket.socket) -> None:
        """One request per connection (we answer `Connection: close`), parsed just enough."""
        request = _read_request(client.makefile("rb"))
        if request is None:
            return
        method, target, headers, body = request
        faulted = method == "POST" and target.startswith("/process")
        if faulted and self.mode == "blackhole":
            self._count("faulted")
            self._stopping.wait(300)
            return
        status, reason, out_headers, payload = self._forward(method, target, headers, body)
        mode = self.mode
        if faulted and status == 200 and mode != "pass" and not self._take_pass():
            self._count("faulted")
            self._send_fault(client, mode, status, reason, out_headers, payload)
            return
        client.sendall(_head(status, reason, out_headers, len(payload)) + payload)

    def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """The upstream's status, reason, headers (hop-by-hop ones dropped) and body."""
        sent = [
            (k, v)
            for k, v in headers
            if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive")
        ]
        upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in sent:
                upstream.putheader(name, value)
            if body or method in ("POST", "PUT"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            status, reason = response.status, response.reason
            out_headers = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive")
            ]
            payload = response.read()
        finally:
            upstream.close()
        return status, reason, out_headers, payload

    def _send_fault(
        self,
        client: socket.socket,
        mode: str,
        status: int,
        reason: str,
        out_headers: list[tuple[str, str]],
        payload: bytes,
    ) -> None:
        """Answer a 200 from /process the way `mode` breaks it."""
        if mode == "garbage":
            payload = os.urandom(max(len(payload), 64))
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-type"]
            out_headers.append(("Content-Type", "image/png"))
        elif mode == "wrong_size":
            payload = _crop(payload, columns=1, rows=1)
        elif mode == "one_column":
            payload = _crop(payload, columns=None, rows=0)
        elif mode == "narrow":
            payload = _crop(payload, columns=1, rows=0)
        elif mode == "bomb":
            payload = _bomb_png(60000, 60000)
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-type"]
            out_headers.append(("Content-Type", "image/png"))
        elif mode == "server_error":
            status, reason = 500, "Internal Server Error"
            payload = b'{"error": {"code": "internal", "message": "injected by faultproxy"}}'
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-type"]
            out_headers.append(("Content-Type", "application/json"))
        elif mode == "drip":
            client.sendall(_head(status, reason, out_headers, len(payload)))
            for index in range(len(payload)):
                if self._stopping.wait(self.delay or 0.5):
                    return
                client.sendall(payload[index : index + 1])
            return
        elif mode == "close_mid_response":
            head = _head(status, reason, out_headers, len(payload))
            client.sendall(head + payload[: len(payload) // 2])
            # RST, not FIN, so the client sees a broken connection rather than a short read.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return
        client.sendall(_head(status, reason, out_headers, len(payload)) + payload)


def _read_request(reader) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    """Method, target, headers and body of one request; None when the client sent nothing."""
    request_line = reader.readline(65537).decode("latin-1").strip()
    if not request_line:
        return None
    method, target, _ = request_line.split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        line = reader.readline(65537).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    lower = {k.lower(): v for k, v in headers}
    return method, target, headers, _read_body(reader, lower)


def _read_body(reader, lower_headers: dict) -> bytes:
    if lower_headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(reader.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(reader.read(size))
            reader.readline(16)
    length = int(lower_headers.get("content-length", "0") or 0)
    return reader.read(length) if length else b""


def _head(status: int, reason: str, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    lines += [f"Content-Length: {length}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _crop(payload: bytes, columns: int | None, rows: int) -> bytes:
    """The same image `columns` and `rows` short (columns=None: one column left), same format."""
    from PIL import Image

    image = Image.open(io.BytesIO(payload))
    fmt = image.format or "PNG"
    image = image.convert("RGB")
    width, height = image.size
    keep_width = 1 if columns is None else max(1, width - columns)
    cropped = image.crop((0, 0, keep_width, max(1, height - rows)))
    out = io.BytesIO()
    if fmt == "PPM":
        out.write(f"P6\n{cropped.width} {cropped.height}\n255\n".encode() + cropped.tobytes())
    else:
        cropped.save(out, format=fmt)
    return out.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR (CRC fixed) claims width x height: a decoder that trusts it
    would allocate width*height*3 bytes."""
    import struct
    import zlib

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, format="PNG")
    data = out.getvalue()
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + data[33:]
