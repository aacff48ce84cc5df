"""`make bench`: what TLS to the workers costs, and where it should terminate (issue 16), 12 MP on loopback.

    python -m scripts.bench_tls [--runs 5] [--megapixels 12]

The seed-plan job of scripts/bench.py's (a) (the coordinator in-process with its own TLS client,
2 strips, one Python and one Node worker, PNG out), against three pairs of workers side by side:
  plain    plain HTTP, as today on loopback;
  worker   TLS terminated in the workers (WORKER_TLS_CERT/KEY: gunicorn's ssl, Node's https);
  stunnel  TLS terminated by stunnel4 (Debian's package) in front of each plain worker, the
           "small terminating proxy" design; skipped with a note when stunnel is not installed.
The coordinator pins a throwaway CA and verifies the fleet name while connecting by IP, as in
the cloud. Each case runs with the two wires the coordinator picks: `raw` (loopback's default:
~36 MB of PPM each way at 12 MP, the worst case for TLS) and `jpeg-cut` (what crosses a real
network: the JPEG's own rows up, PNG back). Runs are interleaved so background load hits each
alike. Prints medians with min-max of the job's wall time and of the CPU time it took in
every process (coordinator, worker trees, stunnel), each against plain. On this shared 2-core
machine the wall time swings with other sessions' load (printed); CPU time is the steadier
measure of what TLS adds, since it is all encryption work.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from coordinator.config import CoordinatorConfig
from coordinator.tls import TlsSettings
from scripts.bench import coordinator_run, one_size_args, photo_jpeg
from scripts.testkit.procs import TlsClient, free_port, start_worker
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from scripts.wan import wait_port

CASES = ("plain", "worker", "stunnel")
WIRES = ("raw", "jpeg-cut")
RUNTIMES = ("python", "nodejs")
STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")


@dataclass
class Pki:
    ca_file: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, folder: Path) -> Pki:
        ca = Authority("bench CA")
        cert, key = ca.issue(FLEET_TLS_NAME).write(folder, "server")
        return cls(ca.write_ca(folder), cert, key)

    def settings(self) -> TlsSettings:
        return TlsSettings(ca_pem=self.ca_file.read_text(), name=FLEET_TLS_NAME, origin="bench")


@dataclass
class Fleet:
    """One case's workers (and proxy): the URLs the coordinator gets, and what to stop."""

    urls: list[str]
    tls: TlsSettings | None
    workers: list = field(default_factory=list)
    proxy: subprocess.Popen | None = None

    def pids(self) -> dict[str, int]:
        named = dict(zip(RUNTIMES, (worker.pid for worker in self.workers), strict=True))
        return named | ({"stunnel": self.proxy.pid} if self.proxy else {})

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.proxy is not None:
            self.proxy.terminate()
            try:
                self.proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()


def stunnel_config(pki: Pki, routes: list[tuple[int, int]], log: Path) -> str:
    """One service per worker: TLS 1.2+ on `accept`, plain TCP to the worker; Nagle off both sides."""
    lines = ["foreground = yes", "pid =", "syslog = no", f"output = {log}", "debug = warning"]
    for number, (accept, connect) in enumerate(routes):
        lines += [
            f"[worker{number}]",
            f"accept = 127.0.0.1:{accept}",
            f"connect = 127.0.0.1:{connect}",
            f"cert = {pki.cert}",
            f"key = {pki.key}",
            "sslVersionMin = TLSv1.2",
            "socket = l:TCP_NODELAY=1",
            "socket = r:TCP_NODELAY=1",
        ]
    return "\n".join(lines) + "\n"


def start_fleet(case: str, folder: Path, pki: Pki) -> Fleet:
    env = {"WORKER_LOG_LEVEL": "info"}
    if case == "worker":
        env |= {"WORKER_TLS_CERT": str(pki.cert), "WORKER_TLS_KEY": str(pki.key)}
        workers = [start_worker(r, folder, env, tls=TlsClient(pki.ca_file)) for r in RUNTIMES]
        return Fleet([w.url for w in workers], pki.settings(), workers)
    workers = [start_worker(r, folder, env) for r in RUNTIMES]
    if case == "plain":
        return Fleet([w.url for w in workers], None, workers)
    routes = [(free_port(), int(w.url.rsplit(":", 1)[1])) for w in workers]
    config = folder / "stunnel.conf"
    config.write_text(stunnel_config(pki, routes, folder / "stunnel.log"))
    fleet = Fleet([f"https://127.0.0.1:{accept}" for accept, _ in routes], pki.settings(), workers)
    fleet.proxy = subprocess.Popen([STUNNEL, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for accept, _ in routes:
            wait_port("127.0.0.1", accept, fleet.proxy)
    except RuntimeError:
        fleet.stop()
        raise
    return fleet


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (gunicorn's workers), so far."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in tree:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU so far of this process (the coordinator, all its threads) and of each named tree."""
    return {"coordinator": time.process_time()} | {name: tree_cpu_seconds(pid) for name, pid in pids.items()}


@dataclass
class Run:
    wall_ms: float
    cpu_ms: dict[str, float]  # by process: coordinator, python, nodejs, stunnel

    @property
    def total_cpu_ms(self) -> float:
        return sum(self.cpu_ms.values())


def one_run(jpeg: bytes, config: CoordinatorConfig, pids: dict[str, int]) -> Run:
    before = cpu_seconds(pids)
    parts = coordinator_run(jpeg, config, config.png_level)[1]
    after = cpu_seconds(pids)
    return Run(parts["total_ms"], {name: (after[name] - before[name]) * 1000 for name in after})


def cell(values: list[float], base: float) -> str:
    median = statistics.median(values)
    return f"{median:>6.0f} {f'{min(values):.0f}-{max(values):.0f}':>11} {median / base - 1:>+7.1%}"


def print_table(samples: dict[tuple[str, str], list[Run]], cases: list[str], runs: int, megapixels: float) -> None:
    print(f"{megapixels:g} MP seed-plan job, loopback, {runs} interleaved runs each (ms; CPU: all processes)")
    head = ("wire", "TLS ends in", "wall", "min-max", "vs plain", "CPU", "min-max", "vs plain")
    print("{:<9} {:<12} {:>6} {:>11} {:>7} {:>6} {:>11} {:>7}".format(*head))
    for wire in WIRES:
        base = samples[("plain", wire)]
        base_wall = statistics.median(run.wall_ms for run in base)
        base_cpu = statistics.median(run.total_cpu_ms for run in base)
        for case in cases:
            runs_of = samples[(case, wire)]
            wall = cell([run.wall_ms for run in runs_of], base_wall)
            print(f"{wire:<9} {case:<12} {wall} {cell([run.total_cpu_ms for run in runs_of], base_cpu)}")


def print_cpu_parts(samples: dict[tuple[str, str], list[Run]], cases: list[str]) -> None:
    """Where the CPU goes: the median per process, so TLS's share in each runtime shows."""
    names = ("coordinator", *RUNTIMES, *(["stunnel"] if "stunnel" in cases else []))
    print("CPU ms by process (median)")
    print("{:<9} {:<12}".format("wire", "TLS ends in") + "".join(f" {name:>11}" for name in names))
    for wire in WIRES:
        for case in cases:
            runs_of = samples[(case, wire)]
            parts = [statistics.median(run.cpu_ms.get(name, 0.0) for run in runs_of) for name in names]
            print(f"{wire:<9} {case:<12}" + "".join(f" {part:>11.0f}" for part in parts))


def measure(fleets: dict[str, Fleet], jpeg: bytes, runs: int) -> dict[tuple[str, str], list[Run]]:
    configs = {
        (case, wire): CoordinatorConfig(workers=tuple(fleet.urls), source="bench", tls=fleet.tls, transport=wire)
        for case, fleet in fleets.items()
        for wire in WIRES
    }
    pids = {case: fleet.pids() for case, fleet in fleets.items()}
    for (case, _), config in configs.items():  # one warm-up each, not timed
        one_run(jpeg, config, pids[case])
    samples = {key: [] for key in configs}
    for _ in range(runs):
        for (case, wire), config in configs.items():
            samples[(case, wire)].append(one_run(jpeg, config, pids[case]))
    return samples


def main(argv: list[str] | None = None) -> int:
    args = one_size_args(argv, __doc__.splitlines()[0], 5, "runs per case and wire")
    if args is None:
        return 2
    cases = [case for case in CASES if case != "stunnel" or STUNNEL]
    print(f"TLS cost; shared machine, load average {os.getloadavg()[0]:.1f} at the start")
    if not STUNNEL:
        print("skip: the stunnel row (no stunnel4 here; `apt-get install stunnel4` to measure the proxy design)")
    jpeg, fleets = photo_jpeg(args.megapixels), {}
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        pki = Pki.make(Path(tmp) / "pki")
        try:
            for case in cases:
                fleets[case] = start_fleet(case, Path(tmp) / case, pki)
            samples = measure(fleets, jpeg, args.runs)
        finally:
            for fleet in fleets.values():
                fleet.stop()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print_table(samples, cases, args.runs, args.megapixels)
    print_cpu_parts(samples, cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
