"""Start and stop real processes (workers, servers) on free loopback ports (tests, benches, soak)."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from scripts import local
from scripts.testkit.tls import FLEET_TLS_NAME
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


@dataclass(frozen=True)
class TlsClient:
    """How a client reaches a TLS worker: the CA it pins, the name it verifies (not the IP it
    connects to) and, for mutual TLS, its own certificate and key files."""

    ca_file: Path
    name: str = FLEET_TLS_NAME
    cert: tuple[Path, Path] | None = None


class _NamedHostAdapter(HTTPAdapter):
    """Connects to the URL's host (an IP) but sends and verifies `name` (SNI and certificate)."""

    def __init__(self, name: str):
        self._name = name
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["server_hostname"] = self._name
        super().init_poolmanager(*args, **kwargs)


def http_session(tls: TlsClient | None = None) -> requests.Session:
    """A requests session for a worker: plain, or pinned to tls.ca_file and tls.name."""
    session = requests.Session()
    if tls is not None:
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment would override verify (requests' rule)
        session.trust_env = False
        session.mount("https://", _NamedHostAdapter(tls.name))
        session.verify = str(tls.ca_file)
        if tls.cert is not None:
            session.cert = (str(tls.cert[0]), str(tls.cert[1]))
    return session


@dataclass
class RunningProcess:
    proc: subprocess.Popen
    log_path: Path
    url: str = ""
    env: dict = field(default_factory=dict)
    tls: TlsClient | None = None

    def session(self) -> requests.Session:
        """A new session that reaches this process (pinned CA and name when it serves TLS)."""
        return http_session(self.tls)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_entries(self, since_line: int = 0) -> list[dict]:
        """The JSON objects its log holds from line `since_line` on (see json_lines)."""
        return json_lines(self.log_text().splitlines()[since_line:])

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


def json_lines(lines: Iterable[str]) -> list[dict]:
    """The JSON objects among log lines (services log one per line); any other line is skipped."""
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def wait_http_ok(
    url: str, proc: subprocess.Popen | None = None, timeout: float = 30, tls: TlsClient | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    session = http_session(tls) if tls is not None else requests
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            response = session.get(url, timeout=1)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s ({last})")


def start_worker(
    runtime: str,
    tmp_dir: Path,
    env: dict | None = None,
    wait: bool = True,
    cwd: Path | None = None,
    tls: TlsClient | None = None,
    nofile: int | None = None,
) -> RunningProcess:
    """Start one real worker process on a free loopback port; returns once /healthz is 200.
    With `tls` (the worker's WORKER_TLS_* go in env) the URL is https:// and the wait verifies
    the worker's certificate with tls.ca_file and tls.name. With `nofile` the worker starts
    under that soft limit of open files (`prlimit`; the hard limit stays ours), as systemd
    starts it on EC2 (soft 1024 unless the unit sets LimitNOFILE)."""
    command, default_cwd = worker_command(runtime)
    if nofile is not None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        command = ["prlimit", f"--nofile={nofile}:{hard_text}", "--", *command]
    port = free_port()
    full_env = {**os.environ, "WORKER_HOST": "127.0.0.1", "WORKER_PORT": str(port), "WORKER_LOG_LEVEL": "debug"}
    for inherited in ("WORKER_TOKEN", "WORKER_TOKEN_FILE", "WORKER_TLS_CERT", "WORKER_TLS_KEY", "WORKER_TLS_CLIENT_CA"):
        full_env.pop(inherited, None)
    full_env.update(env or {})
    log_path = tmp_dir / f"worker-{runtime}-{port}.log"
    proc = spawn_logged(command, log_path, cwd or default_cwd, full_env)
    scheme = "https" if tls is not None else "http"
    running = RunningProcess(proc, log_path, f"{scheme}://127.0.0.1:{port}", full_env, tls)
    if wait:
        wait_started(running, running.url + "/healthz", f"{runtime} worker failed to start", tls=tls)
    return running


def spawn_logged(
    command: list[str], log_path: Path, cwd: Path | None = None, env: dict | None = None
) -> subprocess.Popen:
    """`command` in a session of its own (a stop reaches its children), stdout and stderr to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_started(running: RunningProcess, health_url: str, what: str, **wait) -> RunningProcess:
    """`running`, once health_url answers 200 (wait_http_ok's `timeout`, `tls`); else it is stopped and
    the error, `what: reason`, carries the tail of its log."""
    try:
        wait_http_ok(health_url, running.proc, **wait)
    except RuntimeError as exc:
        running.stop()
        raise RuntimeError(f"{what}: {exc}\n{running.log_text()[-3000:]}") from exc
    return running
