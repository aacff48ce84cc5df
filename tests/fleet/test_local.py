"""`python -m scripts.local` (make workers/run/stop): ports from the environment, busy ports named.

Real subprocesses of the runner, with its pid files and logs in a temporary LOCAL_RUN_DIR so a
developer's own `make run` is never touched; every run is bounded by a timeout.
"""

from __future__ import annotations

import json
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


def runner(command: str, tmp_path, timeout: float = 90, flags: tuple = (), **ports: int) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("WORKER_PORT", "WORKER_TOKEN", "PYTHON_WORKERS", "NODEJS_WORKERS", *local.WORKER_SOURCES)
    }
    env.update({"LOCAL_RUN_DIR": str(tmp_path / "run"), **{k: str(v) for k, v in ports.items()}})
    return subprocess.run(
        [sys.executable, "-m", "scripts.local", command, *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_error_line(tmp_path, code: int, **settings) -> str:
    """`start` with these settings exits `code` after one stderr line, which it returns."""
    result = runner("start", tmp_path, timeout=30, **settings)
    assert result.returncode == code, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    return line


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
    line = start_error_line(tmp_path, 1, **{variable: held_port, other: free_port()})
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
    ("settings", "fragment"),
    [
        ({"PYTHON_WORKER_PORT": "50o1"}, "PYTHON_WORKER_PORT must be a port number"),
        ({"NODEJS_WORKER_PORT": "80"}, "NODEJS_WORKER_PORT must be a port number"),
        ({"PYTHON_WORKER_PORT": "6001", "NODEJS_WORKER_PORT": "6001"}, "must differ"),
        ({"PYTHON_WORKERS": "9"}, "PYTHON_WORKERS must be a whole number from 0 to 8"),
        ({"NODEJS_WORKERS": "two"}, "NODEJS_WORKERS must be a whole number"),
        ({"PYTHON_WORKERS": "0", "NODEJS_WORKERS": "0"}, "are both 0"),
    ],
)
def test_bad_port_or_count_settings_are_usage_errors(settings, fragment, tmp_path):
    line = start_error_line(tmp_path, 2, **settings)
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


def _wait_until_zombie(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return
        time.sleep(0.05)
    pytest.fail(f"pid {pid} did not exit within {timeout}s")


def test_a_worker_that_exits_at_start_is_named_with_its_log(tmp_path):
    """README troubleshooting's `exited at start` row: the runner said `not healthy after 30s`
    instead, as the exited worker (its own child, unreaped) still looked alive."""
    ports = {"PYTHON_WORKER_PORT": free_port(), "NODEJS_WORKER_PORT": free_port()}
    try:
        line = start_error_line(tmp_path, 1, WORKER_MAX_INFLIGHT="abc", **ports)
    finally:
        runner("stop", tmp_path, timeout=60, **ports)
    assert line.startswith("error: worker-") and " exited at start; see " in line, line
    log = Path(line.rpartition("see ")[2])
    assert "WORKER_MAX_INFLIGHT" in log.read_text().splitlines()[-1]


def test_an_exited_worker_not_yet_reaped_counts_as_stopped():
    """`make run` starts the workers and the page as its children: after Ctrl-C's SIGTERM they
    linger as zombies until reaped, and stop_all took them for alive for its whole grace (15 s),
    in `make run` itself (its own children) and in a `make stop` run beside it (another's)."""
    own = subprocess.Popen([sys.executable, "-c", "pass"])
    spawn = "import subprocess, sys, time; print(subprocess.Popen([sys.executable, '-c', 'pass']).pid, flush=True)"
    holder = subprocess.Popen([sys.executable, "-c", f"{spawn}; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        others = int(holder.stdout.readline())
        for pid in (own.pid, others):
            _wait_until_zombie(pid)
            assert not local._alive(pid)
    finally:
        holder.kill()
        holder.wait(timeout=10)
        own.wait(timeout=10)


def test_the_page_is_pointed_at_the_chosen_ports_unless_a_worker_list_is_set():
    chosen = {"worker-python": 6011, "worker-nodejs": 6012, "page": 6013}
    assert local.page_env({}, chosen)["COORDINATOR_WORKERS"] == ("http://127.0.0.1:6011,http://127.0.0.1:6012")
    fleet = {"COORDINATOR_WORKERS_FILE": "stack-outputs.json"}
    assert "COORDINATOR_WORKERS" not in local.page_env(fleet, chosen)
    chosen_by_user = local.page_env({"COORDINATOR_WORKERS": "http://x:1"}, chosen)
    assert chosen_by_user["COORDINATOR_WORKERS"] == "http://x:1"


def _run_in_background(tmp_path, ports: tuple[int, int, int], *flags: str) -> subprocess.Popen:
    """`make run` (with flags) as a child: Ctrl-C is proc.send_signal(SIGINT)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("WORKER_PORT", "WORKER_TOKEN", *local.WORKER_SOURCES)
    }
    env.update(
        {
            "LOCAL_RUN_DIR": str(tmp_path / "run"),
            "PYTHON_WORKER_PORT": str(ports[0]),
            "NODEJS_WORKER_PORT": str(ports[1]),
            "COORDINATOR_PAGE_PORT": str(ports[2]),
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.local", "run", *flags],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_run_points_the_page_at_the_chosen_worker_ports_and_ctrl_c_stops_all(tmp_path):
    python_port, nodejs_port, page_port = free_port(), free_port(), free_port()
    proc = _run_in_background(tmp_path, (python_port, nodejs_port, page_port))
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_run_killed_or_hung_up_stops_the_workers_and_the_page(tmp_path, signum):
    """A `kill` or a closed terminal reaches the runner alone: it used to die at once and leave
    both workers and the page running, their pid files behind."""
    python_port, nodejs_port, page_port = free_port(), free_port(), free_port()
    proc = _run_in_background(tmp_path, (python_port, nodejs_port, page_port))
    try:
        page_pid = _wait_for_page(tmp_path / "run" / "page.pid", page_port, proc)
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
        left = sorted(path.name for path in (tmp_path / "run").glob("*.pid"))
        page_alive = local._alive(page_pid)
        answering = [port for port in (python_port, nodejs_port) if _answers(port)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        runner("stop", tmp_path, timeout=60)  # cleans up after the old behaviour; a no-op now
    assert (code, left, page_alive, answering) == (0, [], False, [])


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok
    except requests.ConnectionError:
        return False


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


def start_two_per_runtime(tmp_path, python_base: int, nodejs_base: int) -> subprocess.CompletedProcess:
    """`start` with two workers of each runtime from these base ports."""
    ports = {"PYTHON_WORKER_PORT": python_base, "NODEJS_WORKER_PORT": nodejs_base}
    return runner("start", tmp_path, timeout=120, PYTHON_WORKERS=2, NODEJS_WORKERS=2, **ports)


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
        result = start_two_per_runtime(tmp_path, python_base, nodejs_base)
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
        started = start_two_per_runtime(tmp_path, python_base, nodejs_base)
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


# --- TLS=1 / MTLS=1: the cloud's security setup on loopback ------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _tls_start(tmp_path, flag: str, **ports: int) -> subprocess.CompletedProcess:
    """`make workers TLS=1` (MTLS=1) as make runs it: the runner with --tls (--mtls)."""
    return runner("start", tmp_path, flags=(flag,), **ports)


def _cli_invert(tmp_path, source: Path, out: Path) -> subprocess.CompletedProcess:
    from scripts.testkit.cli import run_cli

    workers_file = str(tmp_path / "run" / local.WORKERS_FILE)
    return run_cli("process", str(source), "-o", str(out), "--plan", "invert", "--workers-file", workers_file)


def make_dry_run(*args: str, **env: str) -> list[str]:
    """The last command `make -n ARGS` would run, as words; clean of an outer make's flags and directory lines."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean, **env},
    )
    return done.stdout.strip().splitlines()[-1].split()


def test_make_run_tls_leaves_the_plain_default_alone():
    """The Makefile passes --tls / --mtls only when asked; plain `make run` is the same command as before."""
    assert make_dry_run("run") == [".venv/bin/python", "-m", "scripts.local", "run"]
    assert make_dry_run("workers", "TLS=1")[-2:] == ["start", "--tls"]
    assert make_dry_run("run", "TLS=0")[-1] == "run"
    assert make_dry_run("run", TLS="1")[-1] == "run"  # only a command-line TLS=1 counts
    assert local.page_env({}, {"worker-python": 6011, "page": 6013}, tls=True)["COORDINATOR_WORKERS_FILE"] == str(
        local.RUN_DIR / local.WORKERS_FILE
    )


def test_tls_workers_serve_verified_https_and_the_cli_gets_the_pixels_of_plain_mode(tmp_path):
    import numpy as np
    from PIL import Image

    from scripts.testkit.procs import TlsClient, http_session

    ports = {"PYTHON_WORKER_PORT": free_port(), "NODEJS_WORKER_PORT": free_port()}
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (240, 160, 3), dtype=np.uint8)).save(source)
    folder, outputs = tmp_path / "run" / local.TLS_DIR, tmp_path / "run" / local.WORKERS_FILE
    try:
        started = _tls_start(tmp_path, "--tls", **ports)
        assert started.returncode == 0, started.stderr
        assert "TLS: made CA, server certificate, token in" in started.stdout
        listed = json.loads(outputs.read_text())
        assert [w["url"] for w in listed["workers"]] == [f"https://127.0.0.1:{p}" for p in ports.values()]
        assert listed["worker_tls_name"] == local.FLEET_TLS_NAME and "BEGIN CERTIFICATE" in listed["worker_ca_pem"]
        assert _mode(outputs) == 0o600 and _mode(folder) == 0o700
        assert all(_mode(folder / name) == 0o600 for name in ("ca.key", "server.key", "worker-token"))
        pinned = http_session(TlsClient(folder / "ca.crt"))
        for port in ports.values():
            url = f"https://127.0.0.1:{port}"
            assert pinned.get(f"{url}/healthz", timeout=5).json()["tls"] is True
            assert pinned.post(f"{url}/process", data=b"", timeout=5).status_code == 401  # the token is required
            with pytest.raises(requests.ConnectionError):  # a plain-HTTP client is cut off
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            with pytest.raises(requests.exceptions.SSLError):  # the system's CAs do not vouch for it
                requests.get(f"{url}/healthz", timeout=5)
        plain_start = runner("start", tmp_path, timeout=30, **ports)
        assert plain_start.returncode == 1 and "already running over TLS" in plain_start.stderr
        over_tls = _cli_invert(tmp_path, source, tmp_path / "tls.png")
        assert over_tls.returncode == 0, over_tls.stderr
        assert "on https://127.0.0.1:" in over_tls.stderr
        assert runner("stop", tmp_path, timeout=60).returncode == 0
        assert runner("start", tmp_path, **ports).returncode == 0  # the default: plain HTTP, as before
        assert "worker_ca_pem" not in json.loads(outputs.read_text())
        over_http = _cli_invert(tmp_path, source, tmp_path / "plain.png")
        assert over_http.returncode == 0 and "on http://127.0.0.1:" in over_http.stderr, over_http.stderr
    finally:
        runner("stop", tmp_path, timeout=60)
    tls_pixels, plain_pixels = (np.asarray(Image.open(tmp_path / name)) for name in ("tls.png", "plain.png"))
    assert np.array_equal(tls_pixels, plain_pixels)
    assert np.array_equal(plain_pixels, 255 - np.asarray(Image.open(source)))


def test_a_second_tls_start_reuses_the_ca_and_remakes_an_expired_server_certificate(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from scripts import local_tls

    ports = {"PYTHON_WORKER_PORT": free_port(), "NODEJS_WORKER_PORT": free_port()}
    folder = tmp_path / "run" / local.TLS_DIR
    _tls, made = local_tls.ensure(folder)
    assert made == ["CA", "server certificate", "token"]
    ca_pem, token = (folder / "ca.crt").read_bytes(), (folder / "worker-token").read_bytes()
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = load_pem_private_key((folder / "ca.key").read_bytes(), None)
    old = local_tls.issue(ca, ca_key, local.FLEET_TLS_NAME, local_tls.validity(30, expired=True))
    local_tls.write_private(folder / "server.crt", local_tls.cert_pem(old[0]))
    local_tls.write_private(folder / "server.key", local_tls.key_pem(old[1]))  # a pair: only the date is wrong
    try:
        started = _tls_start(tmp_path, "--tls", **ports)
        assert started.returncode == 0, started.stderr  # healthy: the start's probe verified the new certificate
        assert "TLS: made server certificate in" in started.stdout
        assert (folder / "ca.crt").read_bytes() == ca_pem and (folder / "worker-token").read_bytes() == token
        renewed = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
        assert renewed.not_valid_after_utc > old[0].not_valid_after_utc
        assert _mode(folder / "server.key") == 0o600
        assert runner("stop", tmp_path, timeout=60).returncode == 0
        again = _tls_start(tmp_path, "--tls", **ports)
        assert again.returncode == 0 and "TLS: reusing the local CA, certificates and token in" in again.stdout
        assert (folder / "server.crt").read_bytes() == local_tls.cert_pem(renewed)
    finally:
        runner("stop", tmp_path, timeout=60)


def test_mtls_workers_require_the_local_client_certificate_and_the_cli_presents_it(tmp_path):
    import numpy as np
    from PIL import Image

    from scripts.testkit.procs import TlsClient, http_session

    ports = {"PYTHON_WORKER_PORT": free_port(), "NODEJS_WORKER_PORT": free_port()}
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(source)
    folder = tmp_path / "run" / local.TLS_DIR
    try:
        started = _tls_start(tmp_path, "--mtls", **ports)
        assert started.returncode == 0, started.stderr
        assert _mode(folder / "client.key") == 0o600
        assert "worker_client_key_pem" in json.loads((tmp_path / "run" / local.WORKERS_FILE).read_text())
        no_client_cert = http_session(TlsClient(folder / "ca.crt"))
        for port in ports.values():
            with pytest.raises(requests.ConnectionError):  # SSLError included: refused at the handshake
                no_client_cert.get(f"https://127.0.0.1:{port}/healthz", timeout=5)
        done = _cli_invert(tmp_path, source, tmp_path / "out.png")
        assert done.returncode == 0, done.stderr
    finally:
        runner("stop", tmp_path, timeout=60)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), 255 - np.asarray(Image.open(source)))


def test_run_tls_points_the_page_at_the_workers_file_and_the_page_processes_over_tls(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.support.page import APP, RUN_TIMEOUT, colourful_png, process, texts, upload

    ports = (free_port(), free_port(), free_port())
    proc = _run_in_background(tmp_path, ports, "--tls")
    workers_file = tmp_path / "run" / local.WORKERS_FILE
    try:
        page_pid = _wait_for_page(tmp_path / "run" / "page.pid", ports[2], proc)
        environ = Path(f"/proc/{page_pid}/environ").read_bytes().split(b"\0")
        assert f"COORDINATOR_WORKERS_FILE={workers_file}".encode() in environ
        assert not [item for item in environ if item.startswith(b"COORDINATOR_WORKERS=")]
        # The page's code (headless, in this process) on the file the page above was given.
        monkeypatch.setenv("COORDINATOR_WORKERS_FILE", str(workers_file))
        for name in ("COORDINATOR_WORKERS", "COORDINATOR_PULUMI_STACK", "COORDINATOR_WORKER_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        page = process(upload(AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run(), "c.png", colourful_png()))
        assert not page.error, texts(page.error)
        strips = page.session_state["images"]["outcome"]["result"].strips
        assert strips and all(strip.worker_url.startswith("https://127.0.0.1:") for strip in strips)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        runner("stop", tmp_path, timeout=60)
    assert not list((tmp_path / "run").glob("*.pid"))
