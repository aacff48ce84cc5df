"""Start and stop real processes (workers, servers) on free loopback ports (tests, benches, soak)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts import local
from stripes.roles import ROLE_OF_RUNTIME, spec_of_runtime

ROOT = Path(__file__).resolve().parents[2]
RUNTIMES = tuple(ROLE_OF_RUNTIME)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_command(runtime: str) -> tuple[list[str], Path]:
    """The command line and working directory that start one worker: `make workers`' own."""
    return local.worker_command(spec_of_runtime(runtime).role)


@dataclass
class RunningProcess:
    proc: subprocess.Popen
    log_path: Path
    url: str = ""
    env: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


def wait_http_ok(url: str, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            response = requests.get(url, timeout=1)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s ({last})")


def start_worker(
    runtime: str, tmp_dir: Path, env: dict | None = None, wait: bool = True, cwd: Path | None = None
) -> RunningProcess:
    """Start one real worker process on a free loopback port; returns once /healthz is 200."""
    command, default_cwd = worker_command(runtime)
    port = free_port()
    full_env = {**os.environ, "WORKER_HOST": "127.0.0.1", "WORKER_PORT": str(port), "WORKER_LOG_LEVEL": "debug"}
    full_env.pop("WORKER_TOKEN", None)
    full_env.update(env or {})
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp_dir / f"worker-{runtime}-{port}.log"
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            command, cwd=cwd or default_cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = RunningProcess(proc, log_path, f"http://127.0.0.1:{port}", full_env)
    if wait:
        try:
            wait_http_ok(running.url + "/healthz", proc)
        except RuntimeError as exc:
            running.stop()
            raise RuntimeError(f"{runtime} worker failed to start: {exc}\n{running.log_text()[-3000:]}") from exc
    return running
