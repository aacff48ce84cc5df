"""The local system: both workers on loopback and the Streamlit page, tracked by pid files.

    python -m scripts.local start   # workers in the background, returns once both are healthy
    python -m scripts.local run     # workers + page in the foreground; Ctrl-C stops all
    python -m scripts.local stop    # stops exactly what start/run started
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run"
WORKERS = {
    "worker-python": {"cmd": [sys.executable, "-m", "worker_python"], "cwd": ROOT / "worker-python", "port": 5001},
    "worker-nodejs": {"cmd": ["node", "server.js"], "cwd": ROOT / "worker-nodejs", "port": 5002},
}
# glibc returns freed strip buffers to the OS with these (node worker peak RSS 215 -> 129 MiB)
MALLOC_LIMITS = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
PAGE_PORT = int(os.environ.get("COORDINATOR_PAGE_PORT", "8501"))


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
    RUN_DIR.mkdir(exist_ok=True)
    log = open(RUN_DIR / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _pid_file(name).write_text(str(proc.pid))
    return proc.pid


def start_workers(timeout: float = 30) -> int:
    for name, spec in WORKERS.items():
        if _running_pid(name):
            continue
        owner = _healthy(spec["port"])
        if owner:
            print(f"error: port {spec['port']} already serves {owner} not started by make; "
                  f"stop it or free the port", file=sys.stderr)
            return 1
        env = {**os.environ, "WORKER_PORT": str(spec["port"]), **MALLOC_LIMITS}
        _spawn(name, spec["cmd"], spec["cwd"], env)
    deadline = time.monotonic() + timeout
    waiting = dict(WORKERS)
    while waiting and time.monotonic() < deadline:
        for name in list(waiting):
            if _healthy(waiting[name]["port"]) == name:
                print(f"{name}: http://127.0.0.1:{waiting.pop(name)['port']} healthy")
            elif not _running_pid(name):
                print(f"error: {name} exited at start; see .run/{name}.log", file=sys.stderr)
                return 1
        time.sleep(0.2)
    if waiting:
        print(f"error: not healthy after {timeout:.0f}s: {', '.join(waiting)}; see .run/*.log",
              file=sys.stderr)
        return 1
    return 0


def stop_all(grace: float = 15) -> int:
    names = [*WORKERS, "page"]
    pids = {name: pid for name in names if (pid := _running_pid(name))}
    for pid in pids.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
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
    code = start_workers()
    if code:
        return code
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "coordinator" / "app.py"),
           "--server.port", str(PAGE_PORT), "--server.headless", "true",
           "--browser.gatherUsageStats", "false"]
    RUN_DIR.mkdir(exist_ok=True)
    page = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    _pid_file("page").write_text(str(page.pid))
    print(f"\n  The page is at http://localhost:{PAGE_PORT}  (Ctrl-C or `make stop` stops everything)\n",
          flush=True)
    try:
        page.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_all()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "run", "stop"])
    args = parser.parse_args(argv)
    return {"start": start_workers, "run": run, "stop": stop_all}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
