"""SIGTERM while a request is in flight: drivers for tests/reliability/test_shutdown.py and scripts/soak.py."""

from __future__ import annotations

import http.client
import io
import signal
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import requests

from scripts.testkit.images import expected_pixels, png_bytes, sample_rgb
from stripes.roles import ROLE_SPECS

GRACE_SECONDS = 15


def open_slow_upload(url: str, body: bytes, op: str, sent_fraction: float = 0.5) -> socket.socket:
    """Start POST /process, send the headers and part of the body, and leave it hanging."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = (
        f"POST /process?op={op}&format=png HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n"
        f"X-Request-Id: shutdown-inflight\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: int(len(body) * sent_fraction)])
    return sock


def finish_upload(sock: socket.socket, body: bytes, sent_fraction: float = 0.5):
    sock.sendall(body[int(len(body) * sent_fraction) :])
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, dict(response.getheaders()), response.read()


def wait_inflight(url: str, timeout: float = 5.0) -> bool:
    """True once /healthz counts a request in flight (when the worker reports `inflight`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = requests.get(f"{url}/healthz", timeout=1).json()
        except (requests.RequestException, ValueError):
            return False
        if "inflight" not in health:
            time.sleep(0.5)  # no counter to watch: give the server time to start the request
            return False
        if health["inflight"] >= 1:
            return True
        time.sleep(0.05)
    return False


def refusal_seen(url: str, body: bytes, timeout: float = 5.0) -> str:
    """Poll with new requests until one is refused; returns how, or '' if all were served."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = requests.post(f"{url}/process", data=body, timeout=3, headers={"Content-Type": "image/png"})
        except requests.ConnectionError:
            return "connection refused"
        if response.status_code == 503:
            code = response.json().get("error", {}).get("code")
            assert code == "draining", f"503 while draining should say draining, got {code}"
            assert response.headers.get("Retry-After"), "503 draining without Retry-After"
            return "503 draining"
        assert response.status_code == 200, f"unexpected {response.status_code} while draining"
        time.sleep(0.1)
    return ""


PRIMARY = {spec.runtime: spec.primary_op for spec in ROLE_SPECS.values()}


def sigterm_in_flight(worker, runtime: str) -> tuple[bool, str]:
    """SIGTERM while a request is half uploaded; (passed, what happened). Also run by soak."""
    from PIL import Image

    image = sample_rgb(96, 64)
    body = png_bytes(image)
    op = PRIMARY[runtime]
    sock = open_slow_upload(worker.url, body, op)
    try:
        held = wait_inflight(worker.url)
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        how = refusal_seen(worker.url, body)
        if not how:
            return False, "new requests were still served after SIGTERM"
        status, headers, payload = finish_upload(sock, body)
    except OSError as exc:
        return False, f"the request in flight was cut off: {type(exc).__name__}: {exc}"
    finally:
        sock.close()
    if status != 200:
        return False, f"the request in flight got {status}: {payload[:200]!r}"
    result = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"), dtype=np.int16)
    diff = np.abs(result - expected_pixels(image, op).astype(np.int16)).max()
    if diff > 1:
        return False, f"the request in flight returned wrong pixels (max diff {diff})"
    try:
        code = worker.proc.wait(timeout=GRACE_SECONDS + 10)
    except Exception:
        return False, f"still running {GRACE_SECONDS + 10}s after SIGTERM"
    if code != 0:
        return False, f"exit code {code} after SIGTERM"
    seconds = time.monotonic() - signalled
    return True, (
        f"in-flight 200 with right pixels, new work {how}, exit 0 after {seconds:.1f}s"
        + ("" if held else " (inflight not observed)")
    )
