"""A WAN-like link on this machine: a network namespace behind a rate-limited veth pair.

    python -m scripts.wan relay --listen 10.213.0.2:5001=127.0.0.1:15001 --delay-ms 20
    python -m scripts.wan probe-server --port 15009
    python -m scripts.wan cleanup

`WanLink` (used by scripts/bench_wan.py) builds, and always removes:
  - namespace `hdtpwan<pid>` with one veth pair; the pair gets a private /30 and no route
    anywhere else, so traffic only goes between its two addresses;
  - `tbf` on both ends of the pair (rate each way; this kernel has no netem);
  - a delaying TCP relay inside the namespace (the one-way delay each way, so a request/reply
    pays the RTT) in front of every server started there.
The relay ends TCP, so the senders' congestion control sees no delay (no slow start over
40 ms): the link models bandwidth and request latency, not TCP ramp-up.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "hdtpwan"
CHUNK = 64 * 1024


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=20)


def unavailable_reason() -> str | None:
    """Why a namespace cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian package iproute2)"
    return None


def cleanup_stale() -> list[str]:
    """Delete namespaces with our prefix whose creating process is gone."""
    removed = []
    listing = run("ip", "netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :]
        if pid.isdigit() and Path(f"/proc/{pid}").exists():
            continue
        run("ip", "netns", "del", name, check=False)
        removed.append(name)
    return removed


@dataclass
class WanLink:
    rate_mbit: float = 50.0
    delay_ms: float = 20.0  # one way; RTT = 2 * delay_ms
    name: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self):
        pid = os.getpid()
        # A /30 of 10.213.0.0/16 from our pid: host end .1, namespace end .2.
        base = (pid % 16384) * 4
        self.host_address = f"10.213.{base // 256}.{base % 256 + 1}"
        self.ns_address = f"10.213.{base // 256}.{base % 256 + 2}"
        self.host_if, self.ns_if = f"hw{pid}h"[:15], f"hw{pid}n"[:15]

    def __enter__(self) -> WanLink:
        cleanup_stale()
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        tbf = ("tbf", "rate", f"{self.rate_mbit:g}mbit", "burst", "64kb", "latency", "200ms")
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.name)
        run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        run("ip", "-n", self.name, "addr", "add", f"{self.ns_address}/30", "dev", self.ns_if)
        run("ip", "-n", self.name, "link", "set", self.ns_if, "up")
        run("ip", "-n", self.name, "link", "set", "lo", "up")
        run("tc", "qdisc", "add", "dev", self.host_if, "root", *tbf)  # upload: us -> namespace
        run("tc", "-n", self.name, "qdisc", "add", "dev", self.ns_if, "root", *tbf)  # download

    def spawn(
        self, command: list[str], *, env: dict | None = None, cwd: Path | None = None, log: Path | None = None
    ) -> subprocess.Popen:
        """Start a process inside the namespace; stopped by close()."""
        # the child keeps its own copy of the log's descriptor
        with open(log, "wb") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *command],
                env={**os.environ, **(env or {})},
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    def wait_inner(self, port: int, timeout: float = 15) -> None:
        """Wait until 127.0.0.1:port inside the namespace accepts connections."""
        check = (
            "import socket, sys, time\n"
            f"deadline = time.monotonic() + {timeout}\n"
            "while time.monotonic() < deadline:\n"
            "    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), timeout=1).close(); sys.exit(0)\n"
            "    except OSError:\n"
            "        time.sleep(0.05)\n"
            "sys.exit(1)\n"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", check], capture_output=True, timeout=timeout + 10
        )
        if done.returncode != 0:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port} in {self.name} after {timeout}s")

    def start_relay(self, ports: dict[int, int]) -> subprocess.Popen:
        """ns_address:outer -> 127.0.0.1:inner (inside the namespace), delayed each way."""
        routes = [f"{self.ns_address}:{outer}=127.0.0.1:{inner}" for outer, inner in ports.items()]
        proc = self.spawn(
            [
                sys.executable,
                "-m",
                "scripts.wan",
                "relay",
                "--delay-ms",
                f"{self.delay_ms:g}",
                *sum((["--listen", route] for route in routes), []),
            ],
            cwd=ROOT,
        )
        for outer in ports:
            wait_port(self.ns_address, outer, proc)
        return proc

    def wire_bytes(self) -> tuple[int, int]:
        """(sent to the namespace, received from it) on the veth, headers included."""
        stats = Path("/sys/class/net") / self.host_if / "statistics"
        return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        self.processes.clear()
        run("ip", "netns", "del", self.name, check=False)  # takes the veth pair with it
        run("ip", "link", "del", self.host_if, check=False)


def wait_port(host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {host}:{port} listened")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not accept connections within {timeout}s")


# ------------------------------------------------------------------ delaying relay


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy one direction; every chunk leaves `delay` seconds after it arrived."""
    pending: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def send():
        while True:
            due, chunk = await pending.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if chunk is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            chunk = await reader.read(CHUNK)
            pending.put_nowait((loop.time() + delay, chunk or None))
            if not chunk:
                break
        await sender
    except (ConnectionError, asyncio.CancelledError):
        sender.cancel()


async def relay_connection(client_reader, client_writer, target: tuple[str, int], delay: float) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    for sock in (client_writer.get_extra_info("socket"), server_writer.get_extra_info("socket")):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.gather(pipe(client_reader, server_writer, delay), pipe(server_reader, client_writer, delay))
    finally:
        for writer in (client_writer, server_writer):
            writer.close()


async def serve_relay(routes: list[tuple[tuple[str, int], tuple[str, int]]], delay: float) -> None:
    servers = []
    for listen, target in routes:
        servers.append(
            await asyncio.start_server(lambda r, w, target=target: relay_connection(r, w, target, delay), *listen)
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


# ------------------------------------------------------------------ link probe


def probe_server(port: int) -> None:
    """P: echo one byte (RTT). U <len>: read len bytes, answer K. D <len>: send len bytes."""
    listener = socket.create_server(("127.0.0.1", port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    payload = os.urandom(CHUNK)
    while True:
        conn, _ = listener.accept()
        with conn:
            while True:
                kind = conn.recv(1)
                if not kind:
                    break
                if kind == b"P":
                    conn.sendall(b"P")
                    continue
                (length,) = struct.unpack("!Q", recv_exact(conn, 8))
                if kind == b"U":
                    while length > 0:
                        length -= len(conn.recv(min(CHUNK, length)))
                    conn.sendall(b"K")
                else:
                    while length > 0:
                        piece = payload[: min(CHUNK, length)]
                        conn.sendall(piece)
                        length -= len(piece)


def recv_exact(conn: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        piece = conn.recv(length - len(data))
        if not piece:
            raise ConnectionError("probe connection closed")
        data += piece
    return data


@dataclass
class LinkMeasure:
    rtt_ms: float
    upload_mbit: float
    download_mbit: float


def measure_link(host: str, port: int, megabytes: float = 6.0, pings: int = 10) -> LinkMeasure:
    """RTT (median of `pings` one-byte round trips) and bulk throughput each way."""
    length = int(megabytes * 1e6)
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(pings):
            started = time.perf_counter()
            conn.sendall(b"P")
            recv_exact(conn, 1)
            rtts.append(time.perf_counter() - started)
        rtt = statistics.median(rtts)
        started = time.perf_counter()
        conn.sendall(b"U" + struct.pack("!Q", length))
        chunk = os.urandom(CHUNK)
        left = length
        while left > 0:
            conn.sendall(chunk[: min(CHUNK, left)])
            left -= min(CHUNK, left)
        recv_exact(conn, 1)
        upload = time.perf_counter() - started - rtt
        started = time.perf_counter()
        conn.sendall(b"D" + struct.pack("!Q", length))
        left = length
        while left > 0:
            left -= len(conn.recv(min(1 << 20, left)))
        download = time.perf_counter() - started - rtt
    return LinkMeasure(rtt * 1000, length * 8 / upload / 1e6, length * 8 / download / 1e6)


def parse_route(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    listen, target = text.split("=")
    host, port = listen.rsplit(":", 1)
    target_host, target_port = target.rsplit(":", 1)
    return (host, int(port)), (target_host, int(target_port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.wan", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="delaying TCP relay")
    relay.add_argument("--listen", action="append", required=True, help="HOST:PORT=TARGET_HOST:TARGET_PORT")
    relay.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay (default 20)")
    probe = sub.add_parser("probe-server", help="RTT and throughput probe server (127.0.0.1)")
    probe.add_argument("--port", type=int, required=True)
    sub.add_parser("cleanup", help=f"delete stale {PREFIX}* namespaces")
    args = parser.parse_args(argv)
    if args.command == "relay":
        try:
            routes = [parse_route(text) for text in args.listen]
        except ValueError:
            parser.error("--listen is HOST:PORT=TARGET_HOST:TARGET_PORT")
        asyncio.run(serve_relay(routes, args.delay_ms / 1000))
    elif args.command == "probe-server":
        probe_server(args.port)
    else:
        removed = cleanup_stale()
        print(f"removed {len(removed)} stale namespace(s){': ' + ', '.join(removed) if removed else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
