"""The local system: both workers on loopback and the Streamlit page, tracked by pid files.

    python -m scripts.local start   # workers in the background, returns once both are healthy
    python -m scripts.local run     # workers + page in the foreground; Ctrl-C stops all
    python -m scripts.local stop    # stops exactly what start/run started

Ports: PYTHON_WORKER_PORT, NODEJS_WORKER_PORT (defaults in stripes/roles.py) and
COORDINATOR_PAGE_PORT (8501), e.g. `make run PYTHON_WORKER_PORT=5011`. A busy port stops the
start with one line naming the variable to set. The page is pointed at the workers' ports unless a
worker list is configured.

Pools: PYTHON_WORKERS / NODEJS_WORKERS (default 1, at most 8) start that many workers of a runtime,
e.g. `make workers PYTHON_WORKERS=2 NODEJS_WORKERS=2`. The first keeps the role's port; the i-th
extra one listens on that port + i*100 and is named <role>-<i>. Every worker started is listed in
.run/workers.json (the stack outputs format), for the CLI: COORDINATOR_WORKERS_FILE=.run/workers.json.

TLS (`make run TLS=1`, `--tls`): the cloud's security setup on one machine. A local fleet CA, a
server certificate for FLEET_TLS_NAME and a token file are made in .run/tls/ once and reused
(made again when missing or expired; scripts/local_tls.py); the workers serve HTTPS with them and
require the token, and .run/workers.json (0600) lists https:// URLs with worker_ca_pem,
worker_tls_name and worker_token, so the page and `stripes process ... --workers-file
.run/workers.json` verify the CA and the name on every connection. `make run MTLS=1` (`--mtls`)
adds mutual TLS: the workers require a client certificate signed by the local CA.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from stripes.roles import FLEET_TLS_NAME, ROLE_SPECS

if TYPE_CHECKING:  # cryptography is imported only by a TLS start: `make run` pays nothing for it
    from scripts.local_tls import LocalTls

ROOT = Path(__file__).resolve().parents[1]
# LOCAL_RUN_DIR lets tests keep their pid files and logs away from a developer's own `make run`.
RUN_DIR = Path(os.environ.get("LOCAL_RUN_DIR") or ROOT / ".run")
WORKERS = ROLE_SPECS  # role -> RoleSpec: command, port and its variable come from the registry
PAGE_PORT_VAR = "COORDINATOR_PAGE_PORT"
# Any of these means the user chose the workers the page talks to (e.g. the EC2 fleet).
WORKER_SOURCES = ("COORDINATOR_WORKERS", "COORDINATOR_WORKERS_FILE", "COORDINATOR_PULUMI_STACK")
# glibc returns freed strip buffers to the OS with these (node worker peak RSS 215 -> 129 MiB)
MALLOC_LIMITS = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
MAX_PER_RUNTIME = 8  # a loopback pool on a laptop; each worker is a process of ~100 MiB
PORT_STEP = 100  # extra instance i of a role listens on the role's port + i * PORT_STEP
WORKERS_FILE = "workers.json"  # in RUN_DIR, in the stack outputs format the CLI reads
TLS_DIR = "tls"  # in RUN_DIR: the local CA, server (and client) certificate and token, kept across stops
# A TLS start sets these itself; the user's own would contradict it (the worker exits 2 on WORKER_TOKEN + _FILE).
TLS_OWNED = ("WORKER_TOKEN", "WORKER_TOKEN_FILE", "WORKER_TLS_CERT", "WORKER_TLS_KEY", "WORKER_TLS_CLIENT_CA")


def count_var(role: str) -> str:
    return f"{WORKERS[role].runtime.upper()}_WORKERS"


def role_of(name: str) -> str:
    """worker-python-2 -> worker-python (the first instance is named after its role)."""
    return name if name in WORKERS else name.rsplit("-", 1)[0]


class PortError(Exception):
    """A port setting that is malformed (exit 2) or a port that is taken (exit 1); also any other
    reason a start cannot go ahead (exit 1), as workers already running in the other mode."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _port_setting(var: str, default: int, environ=os.environ) -> int:
    raw = environ.get(var, "").strip() or str(default)
    if not raw.isdigit() or not 1024 <= int(raw) <= 65535:
        raise PortError(f"{var} must be a port number from 1024 to 65535, got {raw!r}", 2)
    return int(raw)


def counts(environ=os.environ) -> dict[str, int]:
    """role -> how many workers to start (PYTHON_WORKERS, NODEJS_WORKERS; default 1)."""
    chosen = {}
    for role in WORKERS:
        raw = environ.get(count_var(role), "").strip() or "1"
        if not raw.isdigit() or int(raw) > MAX_PER_RUNTIME:
            raise PortError(f"{count_var(role)} must be a whole number from 0 to {MAX_PER_RUNTIME}, got {raw!r}", 2)
        chosen[role] = int(raw)
    if not any(chosen.values()):
        raise PortError(f"{' and '.join(map(count_var, WORKERS))} are both 0; start at least one worker", 2)
    return chosen


def ports(environ=os.environ) -> dict[str, int]:
    """name -> port for every worker instance and the page, from the environment (make passes its
    variables). A role's first instance is named after the role; a role counted 0 is absent."""
    chosen = {}
    for role, number in counts(environ).items():
        base = _port_setting(WORKERS[role].port_var, WORKERS[role].port, environ)
        chosen.update({role if i == 0 else f"{role}-{i}": base + i * PORT_STEP for i in range(number)})
    chosen["page"] = _port_setting(PAGE_PORT_VAR, 8501, environ)
    if len(set(chosen.values())) != len(chosen):
        names = ", ".join(_port_var(name) for name in chosen)
        raise PortError(f"{names} must differ, got {', '.join(map(str, chosen.values()))}", 2)
    return chosen


def _port_var(name: str) -> str:
    return PAGE_PORT_VAR if name == "page" else WORKERS[role_of(name)].port_var


def check_free(name: str, port: int) -> None:
    """PortError naming the variable to set when something already listens on the port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            owner = _healthy(port) if name != "page" else None
            held = f"already serves {owner}, not started by make" if owner else "is busy"
            raise PortError(
                f"port {port} for {name} {held}; set {_port_var(name)} to a free "
                f"port (e.g. make run {_port_var(name)}={port + 10}) or free it",
                1,
            ) from None


def page_env(environ, chosen: dict[str, int], tls: bool = False) -> dict:
    """The page's environment: it finds the workers at their chosen ports unless told otherwise
    (with TLS through the workers file, which carries the CA, the name and the token)."""
    env = dict(environ)
    if tls and not any(env.get(var) for var in WORKER_SOURCES):
        env["COORDINATOR_WORKERS_FILE"] = str(RUN_DIR / WORKERS_FILE)
    elif not any(env.get(var) for var in WORKER_SOURCES):
        env["COORDINATOR_WORKERS"] = ",".join(
            f"http://127.0.0.1:{port}" for name, port in chosen.items() if name != "page"
        )
    return env


def worker_command(name: str) -> tuple[list[str], Path]:
    """The argv and working directory that start worker `name` from this checkout."""
    return WORKERS[role_of(name)].local_command(), ROOT / role_of(name)


def _pid_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def _alive(pid: int) -> bool:
    """Whether `pid` still runs. An exited process its parent has not reaped yet (a zombie) is
    not: `make run`'s workers and page are its children, so after SIGTERM they stay zombies
    until reaped, and kill(pid, 0) alone took them for alive for stop_all's whole grace."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False  # our own child, exited: reaped now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """An exited process still waiting for another parent (e.g. `make run`'s) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _running_pid(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _healthy(port: int, tls: LocalTls | None = None) -> str | None:
    if tls is not None:
        return _healthy_tls(port, tls)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            body = json.load(response)
            return body.get("service") if response.status == 200 else None
    except (OSError, ValueError):
        return None


def _healthy_tls(port: int, tls: LocalTls) -> str | None:
    """/healthz over TLS to 127.0.0.1, verifying the local CA and FLEET_TLS_NAME (as the coordinator does)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=1)
        connection.sock = tls.client_context().wrap_socket(raw, server_hostname=FLEET_TLS_NAME)
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        body = json.loads(response.read(65536))
        return body.get("service") if response.status == 200 and body.get("tls") is True else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _spawn(name: str, cmd: list[str], cwd: Path, env: dict) -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file(name).write_text(str(proc.pid))
    return proc.pid


def _scheme(tls: LocalTls | None) -> str:
    return "https" if tls is not None else "http"


def _check_mode(names: list[str], tls: LocalTls | None) -> None:
    """PortError when workers of ours still run in the other mode (plain vs TLS): the workers
    file would list them with the wrong scheme."""
    running = [name for name in names if _running_pid(name)]
    try:
        listed = json.loads((RUN_DIR / WORKERS_FILE).read_text())["workers"][0]["url"].split(":")[0]
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        listed = "http"  # a start before the workers file existed was plain
    if running and listed != _scheme(tls):
        was = "over TLS" if listed == "https" else "without TLS"
        raise PortError(f"{running[0]} is already running {was}; stop it first (make stop), then start again", 1)


def _worker_env(port: int, tls: LocalTls | None) -> dict:
    env = {**os.environ, "WORKER_PORT": str(port), **MALLOC_LIMITS}
    if tls is None:
        return env
    return {**{k: v for k, v in env.items() if k not in TLS_OWNED}, **tls.worker_env()}


def _spawn_workers(chosen: dict[str, int], tls: LocalTls | None = None) -> list[str]:
    """Start each worker not already running from our pid files; returns the names to wait for."""
    names = [name for name in chosen if name != "page"]
    _check_mode(names, tls)
    pending = [name for name in names if not _running_pid(name)]
    for name in pending:
        check_free(name, chosen[name])  # every port checked before anything starts
    if "WORKER_PORT" in os.environ:
        print(
            "note: WORKER_PORT is ignored here (two workers); set PYTHON_WORKER_PORT / NODEJS_WORKER_PORT",
            file=sys.stderr,
        )
    if tls is not None and os.environ.get("WORKER_TOKEN"):
        print("note: WORKER_TOKEN is ignored with TLS (the workers use the token in .run/tls)", file=sys.stderr)
    for name in pending:
        _spawn(name, *worker_command(name), _worker_env(chosen[name], tls))
    _write_workers_file(chosen, tls)
    return names


def _write_workers_file(chosen: dict[str, int], tls: LocalTls | None = None) -> None:
    """Every worker of this start, as the stack outputs file the CLI and page can read; with TLS
    it holds the token (and the client key): 0600 from the first byte, replaced atomically."""
    workers = [
        {
            "name": name,
            "role": role_of(name),
            "runtime": WORKERS[role_of(name)].runtime,
            "url": f"{_scheme(tls)}://127.0.0.1:{port}",
        }
        for name, port in chosen.items()
        if name != "page"
    ]
    if tls is not None:
        from scripts.local_tls import write_private

        outputs = {"workers": workers, **tls.outputs()}
        write_private(RUN_DIR / WORKERS_FILE, (json.dumps(outputs, indent=2) + "\n").encode())
        return
    temporary = RUN_DIR / f".{WORKERS_FILE}.tmp"
    temporary.write_text(json.dumps({"workers": workers}, indent=2) + "\n")
    temporary.replace(RUN_DIR / WORKERS_FILE)


def _wait_healthy(waiting: dict[str, int], timeout: float, tls: LocalTls | None = None) -> int:
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for name in list(waiting):
            if _healthy(waiting[name], tls) == role_of(name):
                print(f"{name}: {_scheme(tls)}://127.0.0.1:{waiting.pop(name)} healthy")
            elif not _running_pid(name):
                print(f"error: {name} exited at start; see {RUN_DIR / (name + '.log')}", file=sys.stderr)
                return 1
        time.sleep(0.2)
    if waiting:
        print(f"error: not healthy after {timeout:.0f}s: {', '.join(waiting)}; see {RUN_DIR}/*.log", file=sys.stderr)
        return 1
    return 0


def prepare_tls(mutual: bool) -> LocalTls | None:
    """The local CA, certificates and token in RUN_DIR/tls, made where missing or stale; None
    (after one error line) when the folder cannot be written."""
    from scripts.local_tls import ensure

    try:
        tls, made = ensure(RUN_DIR / TLS_DIR, mutual)
    except OSError as exc:
        print(f"error: cannot prepare {RUN_DIR / TLS_DIR}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return None
    kind = "mutual TLS" if mutual else "TLS"
    what = "made " + ", ".join(made) if made else "reusing the local CA, certificates and token"
    print(f"{kind}: {what} in {tls.folder}")
    return tls


def start_workers(timeout: float = 30, chosen: dict[str, int] | None = None, tls: LocalTls | None = None) -> int:
    try:
        chosen = chosen or ports()
        names = _spawn_workers(chosen, tls)
    except PortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    code = _wait_healthy({name: chosen[name] for name in names}, timeout, tls)
    if not code and tls is not None:
        print(f"workers file: {RUN_DIR / WORKERS_FILE}  (stripes process IN -o OUT --workers-file <it>)")
    return code


def stop_all(grace: float = 15) -> int:
    names = sorted(path.stem for path in RUN_DIR.glob("*.pid"))  # every instance, however many started
    pids = {name: pid for name in names if (pid := _running_pid(name))}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.1)
    for name, pid in pids.items():
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid})")
    for name in names:
        _pid_file(name).unlink(missing_ok=True)
    (RUN_DIR / WORKERS_FILE).unlink(missing_ok=True)
    return 0


def page_command(port: int, *options: str) -> list[str]:
    """`streamlit run coordinator/app.py`, headless, on `port`; `options`: more streamlit flags."""
    app = str(ROOT / "coordinator" / "app.py")
    headless = ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    return [sys.executable, "-m", "streamlit", "run", app, "--server.port", str(port), *headless, *options]


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP (a `kill`, a closed terminal) stop everything as Ctrl-C does, and so
    does SIGINT when a non-interactive shell started us in the background with it ignored."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def run(tls: LocalTls | None = None) -> int:
    try:
        chosen = ports()
        check_free("page", chosen["page"])
    except PortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    _stop_on_signals()
    try:
        code = start_workers(chosen=chosen, tls=tls)
    except KeyboardInterrupt:
        stop_all()
        return 130
    if code:
        return code
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    page = subprocess.Popen(
        page_command(chosen["page"]),
        cwd=ROOT,
        env=page_env(os.environ, chosen, tls is not None),
        start_new_session=True,
    )
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
    parser.add_argument("--tls", action="store_true", help="workers serve HTTPS with a local CA and a token (TLS=1)")
    parser.add_argument("--mtls", action="store_true", help="--tls plus client certificates (MTLS=1)")
    args = parser.parse_args(argv)
    if args.command == "stop":
        return stop_all()
    tls = prepare_tls(args.mtls) if args.tls or args.mtls else None
    if (args.tls or args.mtls) and tls is None:
        return 1
    return start_workers(tls=tls) if args.command == "start" else run(tls)


if __name__ == "__main__":
    sys.exit(main())
