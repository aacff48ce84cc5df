"""Per-op latency and peak memory of real workers on a 6 MP photo-like strip.

    python -m scripts.worker_profile                       # starts both workers itself
    python -m scripts.worker_profile --runtime python      # one runtime
    python -m scripts.worker_profile --url http://127.0.0.1:5001 --pid 1234   # a running worker

For each op the worker offers it sends --requests requests (sequential unless --concurrency),
and prints the median X-Processing-Ms (decode+op+encode inside the worker), the median wall
time seen by the client and their ratio (the per-strip HTTP overhead; `--client lean` sends
with one sendall and reads the reply with recv_into into one buffer, so the ratio is the
worker's and the kernel's, not requests'), and peak memory: the sampled peak RSS of the process tree (psutil,
children included) and the largest per-process VmHWM from /proc/PID/status. VmHWM is reset
before each op (clear_refs) where the kernel allows it. The strip is generated (numpy
gradients + noise); nothing is downloaded. Timings depend on machine load: compare runs
made on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
import psutil
import requests

from scripts.local import MALLOC_LIMITS
from scripts.testkit.images import encoded, photo
from scripts.testkit.procs import RUNTIMES, start_worker

MIB = 1024 * 1024


def encode_strip(pixels: np.ndarray, fmt: str) -> tuple[bytes, str]:
    if fmt == "raw":
        return encoded(pixels, "PPM"), "image/x-portable-pixmap"
    return encoded(pixels, {"png": "PNG", "jpeg": "JPEG"}[fmt]), f"image/{fmt}"


class MemoryWatch:
    """Samples the RSS of a process and its children every interval; remembers the peak."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tree(self) -> list[psutil.Process]:
        return [self.process, *self.process.children(recursive=True)]

    def rss(self) -> int:
        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryWatch:
        for proc in self.tree():
            reset_hwm(proc.pid)
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def max_hwm(self) -> int | None:
        values = [vm_hwm(proc.pid) for proc in self.tree()]
        values = [value for value in values if value is not None]
        return max(values) if values else None


def vm_hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_hwm(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5 = reset the peak RSS counter


def lean_post(
    url: str, params: dict, body: bytes, content_type: str, marks: list[float] | None = None
) -> tuple[int, dict, bytes]:
    """POST /process over a plain socket: one sendall of the body, the reply read with recv_into
    into a buffer of its Content-Length. (status, lower-case headers, body). `marks` gets the
    perf_counter() of: the start, the body sent, the reply's head read, the last byte read."""
    marks = [] if marks is None else marks
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=300) as sock:
        head = (
            f"POST /process?{urlencode(params)} HTTP/1.1\r\nHost: {where.netloc}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        marks.append(time.perf_counter())
        sock.sendall(head.encode("latin-1"))
        sock.sendall(body)
        marks.append(time.perf_counter())
        status, headers, rest = read_head(sock)
        marks.append(time.perf_counter())
        reply = bytearray(int(headers.get("content-length", len(rest))))
        view = memoryview(reply)
        got = len(rest)
        view[:got] = rest
        while got < len(reply) and (count := sock.recv_into(view[got:])):
            got += count
        marks.append(time.perf_counter())
        return status, headers, bytes(reply[:got])


def read_head(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, lower-case headers, the body bytes read with them)."""
    received = bytearray()
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("error: the worker closed the connection before its reply's headers")
        received += chunk
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = (line.partition(":") for line in lines[1:])
    return int(lines[0].split()[1]), {name.strip().lower(): value.strip() for name, _, value in fields}, rest


def profile(url: str, pid: int, upload: tuple[bytes, str], options: argparse.Namespace) -> list[dict]:
    body, content_type = upload
    health = requests.get(url + "/healthz", timeout=10).json()
    rows = []
    session = requests.Session()

    def one(op: str) -> tuple[float, float]:
        params = {"op": op, "format": options.output_format}
        started = time.perf_counter()
        if options.client == "lean":
            status, headers, text = lean_post(url, params, body, content_type)
        else:
            response = session.post(
                f"{url}/process", params=params, data=body, headers={"Content-Type": content_type}, timeout=300
            )
            status, headers, text = response.status_code, response.headers, response.content
        wall = (time.perf_counter() - started) * 1000
        if status != 200:
            raise SystemExit(f"error: {health['service']} {op}: HTTP {status} {text[:200]!r}")
        return float(headers["x-processing-ms"]), wall

    one(health["primary"])  # warm-up (imports, first allocations) outside the figures
    for op in options.ops or health["operations"]:
        with MemoryWatch(pid) as watch, ThreadPoolExecutor(options.concurrency) as pool:
            results = list(pool.map(one, [op] * options.requests))
        rows.append(
            {
                "service": health["service"],
                "op": op,
                "n": len(results),
                "worker_ms": statistics.median(r[0] for r in results),
                "wall_ms": statistics.median(r[1] for r in results),
                "ratio": statistics.median(r[1] / r[0] for r in results),
                "peak_rss": watch.peak,
                "vm_hwm": watch.max_hwm(),
            }
        )
    return rows


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(
        f"{'service':<14} {'op':<10} {'n':>3} {'median worker ms':>17} {'median wall ms':>15} {'wall/worker':>12} "
        f"{'peak RSS tree MiB':>18} {'max VmHWM MiB':>14}"
    )
    for row in rows:
        hwm = f"{row['vm_hwm'] / MIB:.0f}" if row["vm_hwm"] else "n/a"
        print(
            f"{row['service']:<14} {row['op']:<10} {row['n']:>3} {row['worker_ms']:>17.1f} "
            f"{row['wall_ms']:>15.1f} {row['ratio']:>12.2f} {row['peak_rss'] / MIB:>18.0f} {hwm:>14}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running worker; needs --pid")
    parser.add_argument("--pid", type=int, help="process id of the worker at --url")
    parser.add_argument(
        "--runtime", choices=[*RUNTIMES, "both"], default="both", help="workers to start when --url is not given"
    )
    parser.add_argument("--requests", type=int, default=20, help="requests per op")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--width", type=int, default=3000)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--input-format", choices=["png", "jpeg", "raw"], default="png")
    parser.add_argument("--output-format", choices=["png", "jpeg", "webp", "raw"], default="png")
    parser.add_argument("--client", choices=["requests", "lean"], default="requests", help="see above")
    parser.add_argument("--ops", type=lambda text: text.split(","), help="comma-separated (default: all offered)")
    args = parser.parse_args(argv)
    if bool(args.url) != bool(args.pid):
        parser.error("--url and --pid go together")
    if not 1 <= args.requests <= 1000 or not 1 <= args.concurrency <= 64:
        parser.error("--requests must be 1-1000 and --concurrency 1-64")

    body, content_type = encode_strip(photo(args.width, args.height, seed=1), args.input_format)
    header = (
        f"{args.width}x{args.height} strip ({args.width * args.height / 1e6:.1f} MP), "
        f"{args.input_format} in ({len(body) / MIB:.1f} MiB), {args.output_format} out, "
        f"{args.requests} requests per op, concurrency {args.concurrency}, client {args.client}"
    )
    if args.url:
        print_table(profile(args.url.rstrip("/"), args.pid, (body, content_type), args), header)
        return 0
    rows = []
    runtimes = RUNTIMES if args.runtime == "both" else (args.runtime,)
    with tempfile.TemporaryDirectory(prefix="worker-profile-") as tmp:
        for runtime in runtimes:
            worker = start_worker(
                runtime,
                Path(tmp) / runtime,
                {"WORKER_LOG_LEVEL": "warning", "WORKER_MAX_INFLIGHT": str(max(4, args.concurrency)), **MALLOC_LIMITS},
            )  # as deployed (systemd unit) and make run
            try:
                idle = MemoryWatch(worker.pid).rss()
                print(f"{runtime}: idle RSS of the process tree {idle / MIB:.0f} MiB", file=sys.stderr)
                rows += profile(worker.url, worker.pid, (body, content_type), args)
            finally:
                worker.stop()
    print_table(rows, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
