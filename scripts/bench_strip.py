"""`make bench`: issue 15's per-strip HTTP overhead on loopback, next to what moving the bytes costs.

    python -m scripts.bench_strip [--runs 7] [--width 3000 --height 2000] [--ops grayscale,sepia]

One photo-like strip as raw PPM (the wire `auto` picks on loopback: 17 MiB each way at 6 MP) is
POSTed --runs times per op to each real worker after a warm-up, with scripts.worker_profile's lean
client (one sendall, the reply read with recv_into into one buffer), runtimes interleaved. Per
request: the wall time, the worker's X-Processing-Ms (decode, op, encode) and three phases:
  send   the head and body written (the server reading them);
  wait   body sent -> the reply's head read (decode, op, the server's framing);
  reply  the reply's body read.
Two echo servers, same client and bytes, give the floor of the transfer itself: `python-echo`, a
bare socket server (recv_into Content-Length bytes, sendall them back), and `node-echo`, a bare Node
`http` server (collect the body, end the response with it). The floor ratio is (python-echo's wall
+ the worker's ms) / the worker's ms: the best wall/worker a worker could reach if its HTTP path
cost no more than the bytes. Medians with min-max; a shared machine, so compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from scripts.local import MALLOC_LIMITS
from scripts.testkit.images import photo
from scripts.testkit.procs import RUNTIMES, free_port, spawn_logged, start_worker
from scripts.wan import wait_port
from scripts.worker_profile import encode_strip, lean_post

TARGET = 1.3
PHASES = ("send", "wait", "reply")
PYTHON_ECHO = r"""
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = server.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):  # a bare connect (wait_port) sends none
            head += chunk
        if not chunk:
            continue
        head, _, rest = head.partition(b"\r\n\r\n")
        fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
        length = int(fields[b"content-length"])
        body = bytearray(length)
        view = memoryview(body)
        view[: len(rest)] = rest
        got = len(rest)
        while got < length:
            got += conn.recv_into(view[got:])
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Processing-Ms: 0\r\n\r\n" % length)
        conn.sendall(body)
"""
NODE_ECHO = r"""
require('node:http').createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    res.writeHead(200, { 'Content-Length': body.length, 'X-Processing-Ms': '0' });
    res.end(body);
  });
}).listen(Number(process.argv[1]), '127.0.0.1');
"""
ECHOES = {"python-echo": [sys.executable, "-c", PYTHON_ECHO], "node-echo": ["node", "-e", NODE_ECHO]}


@dataclass
class Row:
    service: str
    op: str
    samples: list[dict] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(sample[key] for sample in self.samples)

    def spread(self, key: str) -> str:
        values = [sample[key] for sample in self.samples]
        return f"{min(values):.0f}-{max(values):.0f}"


def timed(url: str, op: str, upload: tuple[bytes, str]) -> dict:
    """One POST's wall, phases and X-Processing-Ms, in ms; SystemExit on any reply but 200."""
    marks: list[float] = []
    status, headers, reply = lean_post(url, {"op": op, "format": "raw"}, *upload, marks=marks)
    if status != 200:
        raise SystemExit(f"error: {url} {op}: HTTP {status} {reply[:200]!r}")
    sample = {name: (marks[i + 1] - marks[i]) * 1000 for i, name in enumerate(PHASES)}
    sample["wall"] = (marks[-1] - marks[0]) * 1000
    sample["worker"] = float(headers["x-processing-ms"])
    return sample


def start_echo(name: str, folder: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = spawn_logged([*ECHOES[name], str(port)], folder / f"{name}.log")
    wait_port("127.0.0.1", port, proc)
    return f"http://127.0.0.1:{port}", proc


def measure(targets: dict[str, str], ops: list[str], upload: tuple[bytes, str], runs: int) -> list[Row]:
    """Rows per (service, op); each round sends one request to every target, so load hits all alike."""
    rows = {(service, op): Row(service, op) for service in targets for op in ops[: 1 if "echo" in service else None]}
    for url in targets.values():  # warm-up: imports, first allocations
        timed(url, ops[0], upload)
    for _ in range(runs):
        for (service, op), row in rows.items():
            row.samples.append(timed(targets[service], op, upload))
    return list(rows.values())


def print_table(rows: list[Row], floor: float) -> None:
    print(
        f"{'service':<14}{'op':<11}{'worker ms':>10}{'wall ms':>9}{'min-max':>10}{'wall/worker':>12}"
        f"{'send':>7}{'wait':>7}{'reply':>7}{'floor ratio':>12}  target"
    )
    for row in rows:
        worker, wall = row.median("worker"), row.median("wall")
        echo = "echo" in row.service
        ratio = "-" if echo else f"{wall / worker:.2f}x"
        best = "-" if echo else f"{(floor + worker) / worker:.2f}x"
        phases = "".join(f"{row.median(name):7.0f}" for name in PHASES)
        op = "(bytes)" if echo else row.op
        print(
            f"{row.service:<14}{op:<11}{worker:10.1f}{wall:9.0f}{row.spread('wall'):>10}{ratio:>12}"
            f"{phases}{best:>12}  {'' if echo else f'<= {TARGET}x'}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed requests per service and op (1-100)")
    parser.add_argument("--width", type=int, default=3000)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--ops", default="grayscale,sepia,invert,blur", help="comma-separated")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100 or not (1 <= args.width <= 20000 and 1 <= args.height <= 20000):
        parser.error("--runs must be 1-100 and the strip 1-20000 px each way")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ops = args.ops.split(",")
    upload = encode_strip(photo(args.width, args.height, seed=1), "raw")
    print(
        f"{args.width}x{args.height} strip, raw PPM both ways ({len(upload[0]) / 2**20:.1f} MiB each), "
        f"{args.runs} runs per op after a warm-up, lean client, medians"
    )
    with tempfile.TemporaryDirectory(prefix="bench-strip-") as tmp:
        folder = Path(tmp)
        env = {"WORKER_LOG_LEVEL": "warning", **MALLOC_LIMITS}
        workers = [start_worker(runtime, folder / runtime, env) for runtime in RUNTIMES]
        echoes = [start_echo(name, folder) for name in ECHOES]
        try:
            targets = {f"worker-{runtime}": worker.url for runtime, worker in zip(RUNTIMES, workers, strict=True)}
            targets |= {name: url for name, (url, _) in zip(ECHOES, echoes, strict=True)}
            rows = measure(targets, ops, upload, args.runs)
        finally:
            for worker in workers:
                worker.stop()
            for _, proc in echoes:
                proc.kill()
                proc.wait()
    floor = statistics.median(row.median("wall") for row in rows if row.service == "python-echo")
    print_table(rows, floor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
