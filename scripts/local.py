"""The local system: both workers on loopback and the Streamlit page, tracked by pid files.

    python -m scripts.local start   # workers in the background, returns once both are healthy
    python -m scripts.local run     # workers + page in the foreground; Ctrl-C stops all
    python -m scripts.local stop    # stops exactly what start/run started

Ports: PYTHON_WORKER_PORT, NODEJS_WORKER_PORT (defaults in stripes/roles.py) and
COORDINATOR_PAGE_PORT (8501), e.g. `make run PYTHON_WORKER_PORT=5011`. A busy port stops the
start with one line naming the variable to set. The page is pointed at the workers' ports unless a worker list is configured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stripes.roles import ROLE_SPECS

ROOT = Path(__file__).resolve().parents[1]
# LOCAL_RUN_DIR lets tests keep their pid files and logs away from a developer's own `make run`.
RUN_DIR = Path(os.environ.get("LOCAL_RUN_DIR") or ROOT / ".run")
WORKERS = ROLE_SPECS  # role -> RoleSpec: command, port and its variable come from the registry
PAGE_PORT_VAR = "COORDINATOR_PAGE_PORT"
# Any of these means the user chose the workers the page talks to (e.g. the EC2 fleet).
WORKER_SOURCES = ("COORDINATOR_WORKERS", "COORDINATOR_WORKERS_FILE", "COORDINATOR_PULUMI_STACK")
# glibc returns freed strip buffers to the OS with these (node worker peak RSS 215 -> 129 MiB)
MALLOC_LIMITS = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}


class PortError(Exception):
    """A port setting that is malformed (exit 2) or a port that is taken (exit 1)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _port_setting(var: str, default: int, environ=os.environ) -> int:
    raw = environ.get(var, "").strip() or str(default)
    if not raw.isdigit() or not 1024 <= int(raw) <= 65535:
        raise PortError(f"{var} must be a port number from 1024 to 65535, got {raw!r}", 2)
    return int(raw)


def ports(environ=os.environ) -> dict[str, int]:
    """name -> port for both workers and the page, from the environment (make passes its variables)."""
    chosen = {name: _port_setting(spec.port_var, spec.port, environ) for name, spec in WORKERS.items()}
    chosen["page"] = _port_setting(PAGE_PORT_VAR, 8501, environ)
    if len(set(chosen.values())) != len(chosen):
        names = ", ".join(_port_var(name) for name in chosen)
        raise PortError(f"{names} must differ, got {', '.join(map(str, chosen.values()))}", 2)
    return chosen


def _port_var(name: str) -> str:
    return WORKERS[name].port_var if name in WORKERS else PAGE_PORT_VAR


def check_free(name: str, port: int) -> None:
    """PortError naming the variable to set when something already listens on the port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            owner = _healthy(port) if name in WORKERS else None
            held = f"already serves {owner}, not started by make" if owner else "is busy"
            raise PortError(
                f"port {port} for {name} {held}; set {_port_var(name)} to a free "
                f"port (e.g. make run {_port_var(name)}={port + 10}) or free it",
                1,
            ) from None


def page_env(environ, chosen: dict[str, int]) -> dict:
    """The page's environment: it finds the workers at their chosen ports unless told otherwise."""
    env = dict(environ)
    if not any(env.get(var) for var in WORKER_SOURCES):
        env["COORDINATOR_WORKERS"] = ",".join(f"http://127.0.0.1:{chosen[name]}" for name in WORKERS)
    return env


def worker_command(name: str) -> tuple[list[str], Path]:
    """The argv and working directory that start worker `name` from this checkout."""
    return WORKERS[name].local_command(), ROOT / name


def _pid_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _healthy(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            body = json.load(response)
            return body.get("service") if response.status == 200 else None
    except (OSError, ValueError):
        return None


def _spawn(name: str, cmd: list[str], cwd: Path, env: dict) -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log = open(RUN_DIR / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file(name).write_text(str(proc.pid))
    return proc.pid


def _spawn_workers(chosen: dict[str, int]) -> list[str]:
    """Start each worker not already running from our pid files; returns the names to wait for."""
    pending = [name for name in WORKERS if not _running_pid(name)]
    for name in pending:
        check_free(name, chosen[name])  # every port checked before anything starts
    if "WORKER_PORT" in os.environ:
        print(
            "note: WORKER_PORT is ignored here (two workers); set PYTHON_WORKER_PORT / NODEJS_WORKER_PORT",
            file=sys.stderr,
        )
    for name in pending:
        env = {**os.environ, "WORKER_PORT": str(chosen[name]), **MALLOC_LIMITS}
        _spawn(name, *worker_command(name), env)
    return list(WORKERS)


def _wait_healthy(waiting: dict[str, int], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for name in list(waiting):
            if _healthy(waiting[name]) == name:
                print(f"{name}: http://127.0.0.1:{waiting.pop(name)} healthy")
            elif not _running_pid(name):
                print(f"error: {name} exited at start; see {RUN_DIR / (name + '.log')}", file=sys.stderr)
                return 1
        time.sleep(0.2)
    if waiting:
        print(f"error: not healthy after {timeout:.0f}s: {', '.join(waiting)}; see {RUN_DIR}/*.log", file=sys.stderr)
        return 1
    return 0


def start_workers(timeout: float = 30, chosen: dict[str, int] | None = None) -> int:
    try:
        chosen = chosen or ports()
        names = _spawn_workers(chosen)
    except PortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    return _wait_healthy({name: chosen[name] for name in names}, timeout)


def stop_all(grace: float = 15) -> int:
    names = [*WORKERS, "page"]
    pids = {name: pid for name in names if (pid := _running_pid(name))}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.1)
    for name, pid in pids.items():
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid})")
    for name in names:
        _pid_file(name).unlink(missing_ok=True)
    return 0


def run() -> int:
    try:
        chosen = ports()
        check_free("page", chosen["page"])
    except PortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    code = start_workers(chosen=chosen)
    if code:
        return code
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "coordinator" / "app.py"),
        "--server.port",
        str(chosen["page"]),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    page = subprocess.Popen(cmd, cwd=ROOT, env=page_env(os.environ, chosen), start_new_session=True)
    _pid_file("page").write_text(str(page.pid))
    print(
        f"\n  The page is at http://localhost:{chosen['page']}  (Ctrl-C or `make stop` stops everything)\n", flush=True
    )
    try:
        page.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_all()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["start", "run", "stop"])
    args = parser.parse_args(argv)
    return {"start": start_workers, "run": run, "stop": stop_all}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
