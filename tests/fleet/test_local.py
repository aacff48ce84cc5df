"""`python -m scripts.local` (make workers/run/stop): ports from the environment, busy ports named.

Real subprocesses of the runner, with its pid files and logs in a temporary LOCAL_RUN_DIR so a
developer's own `make run` is never touched; every run is bounded by a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from scripts import local
from scripts.testkit.procs import ROOT, free_port


def runner(command: str, tmp_path, timeout: float = 90, **ports: int) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("WORKER_PORT", "WORKER_TOKEN", "PYTHON_WORKERS", "NODEJS_WORKERS", *local.WORKER_SOURCES)
    }
    env.update({"LOCAL_RUN_DIR": str(tmp_path / "run"), **{k: str(v) for k, v in ports.items()}})
    return subprocess.run(
        [sys.executable, "-m", "scripts.local", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def held_port():
    """A port something else listens on, as when another program (or user) holds it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


@pytest.mark.parametrize("variable", ["PYTHON_WORKER_PORT", "NODEJS_WORKER_PORT"])
def test_a_busy_worker_port_is_one_line_naming_the_variable_and_starts_nothing(variable, held_port, tmp_path):
    other = "NODEJS_WORKER_PORT" if variable == "PYTHON_WORKER_PORT" else "PYTHON_WORKER_PORT"
    result = runner("start", tmp_path, timeout=30, **{variable: held_port, other: free_port()})
    assert result.returncode == 1, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: port {held_port} for worker-") and "is busy" in line
    assert f"set {variable} to a free port" in line
    assert not list((tmp_path / "run").glob("*.pid"))  # checked before anything started


def test_a_busy_page_port_is_named_before_the_workers_start(held_port, tmp_path):
    result = runner(
        "run",
        tmp_path,
        timeout=30,
        COORDINATOR_PAGE_PORT=held_port,
        PYTHON_WORKER_PORT=free_port(),
        NODEJS_WORKER_PORT=free_port(),
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"port {held_port} for page is busy; set COORDINATOR_PAGE_PORT" in line
    assert not list((tmp_path / "run").glob("*.pid"))


@pytest.mark.parametrize(
    "ports, fragment",
    [
        ({"PYTHON_WORKER_PORT": "50o1"}, "PYTHON_WORKER_PORT must be a port number"),
        ({"NODEJS_WORKER_PORT": "80"}, "NODEJS_WORKER_PORT must be a port number"),
        ({"PYTHON_WORKER_PORT": "6001", "NODEJS_WORKER_PORT": "6001"}, "must differ"),
    ],
)
def test_bad_port_settings_are_usage_errors(ports, fragment, tmp_path):
    result = runner("start", tmp_path, timeout=30, **ports)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and fragment in line


def test_workers_start_on_the_chosen_ports_and_stop(tmp_path):
    python_port, nodejs_port = free_port(), free_port()
    try:
        result = runner("start", tmp_path, PYTHON_WORKER_PORT=python_port, NODEJS_WORKER_PORT=nodejs_port)
        assert result.returncode == 0, result.stderr
        for port, runtime in ((python_port, "python"), (nodejs_port, "nodejs")):
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["runtime"] == runtime
    finally:
        stopped = runner("stop", tmp_path, timeout=60)
    assert stopped.returncode == 0 and stopped.stdout.count("stopped worker-") == 2
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{python_port}/healthz", timeout=5)


def test_the_page_is_pointed_at_the_chosen_ports_unless_a_worker_list_is_set():
    chosen = {"worker-python": 6011, "worker-nodejs": 6012, "page": 6013}
    assert local.page_env({}, chosen)["COORDINATOR_WORKERS"] == ("http://127.0.0.1:6011,http://127.0.0.1:6012")
    fleet = {"COORDINATOR_WORKERS_FILE": "stack-outputs.json"}
    assert "COORDINATOR_WORKERS" not in local.page_env(fleet, chosen)
    chosen_by_user = local.page_env({"COORDINATOR_WORKERS": "http://x:1"}, chosen)
    assert chosen_by_user["COORDINATOR_WORKERS"] == "http://x:1"


def test_run_points_the_page_at_the_chosen_worker_ports_and_ctrl_c_stops_all(tmp_path):
    python_port, nodejs_port, page_port = free_port(), free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("WORKER_PORT", "WORKER_TOKEN", *local.WORKER_SOURCES)
    }
    env.update(
        {
            "LOCAL_RUN_DIR": str(tmp_path / "run"),
            "PYTHON_WORKER_PORT": str(python_port),
            "NODEJS_WORKER_PORT": str(nodejs_port),
            "COORDINATOR_PAGE_PORT": str(page_port),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.local", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        page_pid = _wait_for_page(tmp_path / "run" / "page.pid", page_port, proc)
        environ = Path(f"/proc/{page_pid}/environ").read_bytes().split(b"\0")
        assert (
            f"COORDINATOR_WORKERS=http://127.0.0.1:{python_port},http://127.0.0.1:{nodejs_port}"
        ).encode() in environ
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
            runner("stop", tmp_path, timeout=60)
    assert not list((tmp_path / "run").glob("*.pid"))
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{nodejs_port}/healthz", timeout=5)


def _wait_for_page(pid_file: Path, port: int, proc: subprocess.Popen, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if pid_file.exists():
            try:
                if requests.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).ok:
                    return int(pid_file.read_text())
            except requests.RequestException:
                pass
        time.sleep(0.3)
    raise AssertionError(f"the page did not answer on {port} within {timeout}s")


def _base_port_with_room(extra: int) -> int:
    """A free port whose +PORT_STEP neighbours are free too (the extra instances' ports)."""
    for _ in range(50):
        base = free_port()
        if base + extra * local.PORT_STEP < 65536 and all(
            _port_free(base + i * local.PORT_STEP) for i in range(1, extra + 1)
        ):
            return base
    pytest.fail("no free port with free neighbours found")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_pool_of_two_per_runtime_starts_is_listed_for_the_cli_and_stops(tmp_path):
    from coordinator.config import read_outputs_file

    python_base, nodejs_base = _base_port_with_room(1), _base_port_with_room(1)
    expected = {
        python_base: "python",
        python_base + local.PORT_STEP: "python",
        nodejs_base: "nodejs",
        nodejs_base + local.PORT_STEP: "nodejs",
    }
    try:
        result = runner(
            "start",
            tmp_path,
            timeout=120,
            PYTHON_WORKERS=2,
            NODEJS_WORKERS=2,
            PYTHON_WORKER_PORT=python_base,
            NODEJS_WORKER_PORT=nodejs_base,
        )
        assert result.returncode == 0, result.stderr
        for port, runtime in expected.items():
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["runtime"] == runtime
        assert "worker-python-1: http://127.0.0.1:" in result.stdout
        urls, _token = read_outputs_file(str(tmp_path / "run" / local.WORKERS_FILE), "test")
        assert sorted(urls) == sorted(f"http://127.0.0.1:{port}" for port in expected)
    finally:
        stopped = runner("stop", tmp_path, timeout=60)
    assert stopped.returncode == 0 and stopped.stdout.count("stopped worker-") == 4
    assert not (tmp_path / "run" / local.WORKERS_FILE).exists()
    for port in expected:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


@pytest.mark.parametrize(
    ("counts", "fragment"),
    [
        ({"PYTHON_WORKERS": "9"}, "PYTHON_WORKERS must be a whole number from 0 to 8"),
        ({"NODEJS_WORKERS": "two"}, "NODEJS_WORKERS must be a whole number"),
        ({"PYTHON_WORKERS": "0", "NODEJS_WORKERS": "0"}, "are both 0"),
    ],
)
def test_bad_worker_counts_are_usage_errors(counts, fragment, tmp_path):
    result = runner("start", tmp_path, timeout=30, **counts)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and fragment in line


def test_page_is_pointed_at_every_instance():
    chosen = local.ports({"PYTHON_WORKERS": "2", "NODEJS_WORKERS": "0", "PYTHON_WORKER_PORT": "6100"})
    assert chosen == {"worker-python": 6100, "worker-python-1": 6200, "page": 8501}
    assert local.page_env({}, chosen)["COORDINATOR_WORKERS"] == "http://127.0.0.1:6100,http://127.0.0.1:6200"


def test_a_2_plus_2_pool_finishes_a_batch_with_exact_pixels_when_a_worker_dies_mid_batch(tmp_path):
    """Loopback pool (make workers PYTHON_WORKERS=2 NODEJS_WORKERS=2) + the coordinator CLI reading
    .run/workers.json; worker-python-1 is SIGKILLed once the first strip is reported."""
    import numpy as np
    from PIL import Image

    python_base, nodejs_base = _base_port_with_room(1), _base_port_with_room(1)
    rng = np.random.default_rng(17)
    images = {}
    for index in range(6):
        pixels = rng.integers(0, 256, (600, 400, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"in{index}.png")
        images[f"in{index}.png"] = pixels
    (tmp_path / "out").mkdir()
    try:
        started = runner(
            "start",
            tmp_path,
            timeout=120,
            PYTHON_WORKERS=2,
            NODEJS_WORKERS=2,
            PYTHON_WORKER_PORT=python_base,
            NODEJS_WORKER_PORT=nodejs_base,
        )
        assert started.returncode == 0, started.stderr
        env = {k: v for k, v in os.environ.items() if k not in local.WORKER_SOURCES and k != "WORKER_TOKEN"}
        batch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordinator",
                "process",
                *[str(tmp_path / name) for name in images],
                "-o",
                str(tmp_path / "out"),
                "--plan",
                "invert",
                "--strips",
                "8",
                "--jobs",
                "2",
                "--workers-file",
                str(tmp_path / "run" / local.WORKERS_FILE),
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        first = batch.stderr.readline()
        assert batch.poll() is None, first  # still running: the kill lands mid-batch
        # The whole group: the pid file names the worker's session leader, which may fork servers.
        os.killpg(int((tmp_path / "run" / "worker-python-1.pid").read_text()), signal.SIGKILL)
        killed = f"http://127.0.0.1:{python_base + local.PORT_STEP}"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{killed}/healthz", timeout=5)
        _, rest = batch.communicate(timeout=180)
        assert batch.returncode == 0, first + rest
        assert rest.count("strip ") >= 8  # most of the batch ran after the kill
    finally:
        runner("stop", tmp_path, timeout=60)
    for name, pixels in images.items():
        out = np.asarray(Image.open(tmp_path / "out" / name))
        assert np.array_equal(out, 255 - pixels), name
