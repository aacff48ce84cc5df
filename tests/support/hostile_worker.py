"""A fake worker that attacks its client, for coordinator tests (loopback, threads, bounded).

    with HostileWorker(health="ok", process="drip_headers") as bad:
        ... list bad.url as a worker beside a real one ...
        assert bad.requests["/process"] >= 1

`health` (GET /healthz) and `process` (POST /process) each take a mode:
- ok              /healthz: a valid health reply (runtime python, every op, primary grayscale,
                  so grayscale strips go here first); /process: 500 JSON error (never pixels)
- drip_headers    `HTTP/1.1 200 OK\\r\\n`, then one header byte every `delay` seconds
- redirect        302 to `location` (default: the same path on 127.0.0.1:9)
- huge            200 application/json with no length, up to 2 GB streamed until the client
                  hangs up (only a cap on bytes read protects the client)
- markdown        /healthz: a valid-looking health reply whose version, build, primary and
                  one op hold Markdown/HTML (links, images, a tag)
- eps             200 `image/png` whose body is an EPS file declaring the size of the strip it
                  was sent (read from the request's PPM header), so only a format allow-list
                  keeps the client from rendering it with Ghostscript
- html            200 `text/html` page, as a web server that is not a worker would answer
- late_reader     /process: reads nothing for `delay` seconds (a busy worker), then reads the
                  raw PPM strip (at `read_rate` bytes/s when given: a slow link) and answers
                  its `invert` correctly; /healthz as ok
Every connection is closed after one exchange; a dripping or streaming reply stops at
`stop()` or after `max_seconds`, whichever is first. `sent` counts body bytes written.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time

from scripts.testkit.socket_server import ThreadedSocketServer

MODES = ("ok", "drip_headers", "redirect", "huge", "markdown", "eps", "html", "late_reader")
MAX_BODY = 200_000_000
OPS = ["grayscale", "sepia", "invert", "blur"]
HEALTH = {
    "status": "ok",
    "service": "worker-python",
    "runtime": "python",
    "version": "9.9.9",
    "build": "hostile",
    "primary": "grayscale",
    "operations": OPS,
    "max_inflight": 4,
    "max_bytes": 50_000_000,
    "max_pixels": 50_000_000,
}
MARKDOWN_HEALTH = {
    **HEALTH,
    "version": "[update now](http://evil.example/)",
    "build": "<img src=http://evil.example/t.png>",
    "primary": "![x](http://evil.example/pixel.png)",
    "operations": ["grayscale", "[sepia](http://evil.example/)", "invert"],
}
EPS = (
    "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 {w} {h}\n%%EndComments\n"
    "newpath 0 0 moveto {w} {h} lineto stroke\nshowpage\n%%EOF\n"
)
PPM_SIZE = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+255\s")
HTML = b"<!doctype html><html><head><title>Not a worker</title></head><body>hello</body></html>"
HUGE_DECLARED = 2_000_000_000


class HostileWorker(ThreadedSocketServer):
    thread_name = "hostile"

    def __init__(
        self,
        health: str = "ok",
        process: str = "ok",
        delay: float = 1.0,
        location: str | None = None,
        max_seconds: float = 60.0,
        read_rate: int | None = None,
    ):
        for mode in (health, process):
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        self.modes = {"/healthz": health, "/process": process}
        self.delay, self.max_seconds, self.read_rate = delay, max_seconds, read_rate
        self.location = location
        self.requests = {"/healthz": 0, "/process": 0, "other": 0}
        self.sent = 0
        self._lock = threading.Lock()
        # A small receive buffer, so a client's upload really waits while we do not read,
        # instead of landing in up to 32 MB of kernel buffer.
        self._serve(receive_buffer=65536)

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            path, length, body = self._read_head(client)
            mode = self.modes.get(path, "html")
            with self._lock:
                self.requests[path if path in self.requests else "other"] += 1
            if mode == "late_reader" and path == "/process" and self._stopping.wait(self.delay):
                return
            body = self._read_body(
                client, length, body, keep=mode == "late_reader", rate=self.read_rate if mode == "late_reader" else None
            )
            getattr(self, f"_{mode}")(client, path, body)
        except OSError:
            pass
        finally:
            client.close()

    @staticmethod
    def _read_head(client: socket.socket) -> tuple[str, int, bytes]:
        """The path, the Content-Length and the body bytes that came with the headers."""
        head, _, rest = ThreadedSocketServer._received_head(client).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        target = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        return target.split("?")[0], min(length, MAX_BODY), rest

    @staticmethod
    def _read_body(client: socket.socket, length: int, body: bytes, keep: bool, rate: int | None = None) -> bytes:
        """The rest of the body (so the client can finish sending): all of it when keep, else
        its first 64 bytes; at `rate` bytes/s when given."""
        parts, size = [body], len(body)
        while size < length:
            if rate:
                time.sleep(65536 / rate)
            chunk = client.recv(min(length - size, 65536 if rate else 1 << 20))
            if not chunk:
                break
            size += len(chunk)
            if keep:
                parts.append(chunk)
            elif len(parts[0]) < 64:
                parts[0] += chunk[:64]
        return b"".join(parts) if keep else parts[0][:64]

    def _late_reader(self, client, path, body):
        """After the pause: a correct `invert` of a raw PPM strip, as a busy real worker would."""
        if path == "/healthz":
            return self._ok(client, path, body)
        size = PPM_SIZE.match(body)
        width, height = int(size.group(1)), int(size.group(2))
        pixels = body[size.end() : size.end() + width * height * 3]
        inverted = pixels.translate(bytes(range(255, -1, -1)))
        self._reply(client, "200 OK", "image/x-portable-pixmap", b"P6\n%d %d\n255\n" % (width, height) + inverted)

    def _reply(self, client: socket.socket, status: str, content_type: str, body: bytes, extra: str = "") -> None:
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n"
        )
        client.sendall(head.encode() + body)
        with self._lock:
            self.sent += len(body)

    def _ok(self, client, path, head):
        if path == "/healthz":
            self._reply(client, "200 OK", "application/json", json.dumps(HEALTH).encode())
        else:
            body = json.dumps({"error": {"code": "internal", "message": "hostile worker"}}).encode()
            self._reply(client, "500 Internal Server Error", "application/json", body)

    def _markdown(self, client, path, head):
        self._reply(client, "200 OK", "application/json", json.dumps(MARKDOWN_HEALTH).encode())

    def _eps(self, client, path, head):
        size = PPM_SIZE.match(head)
        width, height = (int(size.group(1)), int(size.group(2))) if size else (8, 8)
        self._reply(client, "200 OK", "image/png", EPS.format(w=width, h=height).encode())

    def _html(self, client, path, head):
        self._reply(client, "200 OK", "text/html; charset=utf-8", HTML)

    def _redirect(self, client, path, head):
        location = self.location or f"http://127.0.0.1:9{path}"
        self._reply(client, "302 Found", "text/plain", b"moved", extra=f"Location: {location}\r\n")

    def _drip_headers(self, client, path, head):
        client.sendall(b"HTTP/1.1 200 OK\r\n")
        started = time.monotonic()
        while not self._stopping.is_set() and time.monotonic() - started < self.max_seconds:
            client.sendall(b"X")
            if self._stopping.wait(self.delay):
                break

    def _huge(self, client, path, head):
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        block = b"[" * 65536
        started = time.monotonic()
        while not self._stopping.is_set() and time.monotonic() - started < self.max_seconds:
            client.sendall(block)
            with self._lock:
                self.sent += len(block)
            if self.sent >= HUGE_DECLARED:
                break
