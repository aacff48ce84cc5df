"""`python -m scripts.fleet logs|redeploy|ssh-config` over real SSH to Debian's sshd on loopback.

The "host" is a temporary tree laid out like a worker instance (opt/<role>/releases, current,
etc/<role>/env) under --remote-root. Its sessions find stand-in sudo/systemctl/journalctl first
on PATH (tests/fixtures/fleet/bin); the stand-in systemctl runs the REAL worker-python from
opt/worker-python/current, so a redeploy is proven by the live /healthz reporting the new build.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from infra.bundle import build_id, bundle_files
from scripts.fleet import tls as fleet_tls
from scripts.testkit.procs import ROOT, TlsClient, free_port, wait_http_ok
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from tests.support.ci import skip_or_fail
from tests.support.fleet_cli import assert_one_error_line, run_fleet
from tests.support.moto_server import aws_env, run_tagged_instance
from tests.support.sshd import make_key, sshd_available, start_sshd

pytestmark = pytest.mark.sshd

STAND_INS = ROOT / "tests" / "fixtures" / "fleet" / "bin"
ROLE, NAME = "worker-python", "worker-python-0"
fleet = functools.partial(run_fleet, timeout=120)  # this file's bound per command


@pytest.fixture(scope="module")
def host_root(tmp_path_factory):
    return tmp_path_factory.mktemp("host")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, host_root):
    reason = sshd_available()
    if reason:
        skip_or_fail(reason)
    server = start_sshd(
        tmp_path_factory.mktemp("sshd"),
        env={
            "PATH": f"{STAND_INS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "FLEET_TEST_ROOT": str(host_root),
        },
    )
    yield server
    server.stop()


def stand_in_systemctl(root: Path, action: str, role: str = ROLE) -> None:
    subprocess.run(
        [str(STAND_INS / "systemctl"), action, role],
        check=True,
        timeout=60,
        env={**os.environ, "FLEET_TEST_ROOT": str(root)},
    )


def health(url: str) -> dict:
    return requests.get(f"{url}/healthz", timeout=3).json()


def wait_build(url: str, build: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = health(url)
            if last.get("build") == build:
                return last
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"{url} never reported build {build}: {last}")


class Host:
    """A worker host tree under `root`, its outputs file, and the CLI flags to reach it."""

    def __init__(self, root: Path, sshd, tmp_path: Path, role: str = ROLE):
        self.root, self.sshd, self.tmp, self.role = root, sshd, tmp_path, role
        self.name = f"{role}-0"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = root / "opt" / role
        self.env_file = root / "etc" / role / "env"
        self.known_hosts = tmp_path / "known_hosts"
        self.outputs = tmp_path / f"stack-outputs-{role}.json"
        self.outputs.write_text(
            json.dumps(
                {
                    "workers": [
                        {
                            "name": self.name,
                            "role": role,
                            "runtime": role.split("-")[1],
                            "url": self.url,
                            "public_ip": "127.0.0.1",
                            "instance_id": "i-0f1ee7e57e57e57e5",
                            "operations": [],
                        }
                    ],
                    "worker_token": "",
                    "project": "hdtp",
                    "stack": "fleet-test",
                    "region": "us-east-1",
                    "ssh_user": sshd.user,
                }
            )
        )

    def flags(self, key: Path | None = None, port: int | None = None) -> list[str]:
        return [
            "--outputs",
            str(self.outputs),
            "--ssh-key",
            str(key or self.sshd.client_key),
            "--ssh-port",
            str(port or self.sshd.port),
            "--known-hosts",
            str(self.known_hosts),
            "--remote-root",
            str(self.root),
        ]

    def install(self, files: dict[str, bytes]) -> str:
        """Lay out a first release as user-data does, start it, return its build id."""
        build = build_id(files)
        release = self.base / "releases" / build
        for path, content in files.items():
            (release / path).parent.mkdir(parents=True, exist_ok=True)
            (release / path).write_bytes(content)
        (self.base / "current").symlink_to(f"releases/{build}")
        if self.role == "worker-python":
            venv_bin = self.base / "venv" / "bin"
            venv_bin.mkdir(parents=True)
            # The shared venv: python is this test venv's; pip only records what it was asked.
            (venv_bin / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
            (venv_bin / "pip").write_text(f'#!/bin/sh\necho "$*" >> {self.root}/pip.calls\n')
            for tool in venv_bin.iterdir():
                tool.chmod(0o755)
        else:
            # What `npm ci` left in the release: here, the checkout's installed modules.
            (release / "node_modules").symlink_to(ROOT / "worker-nodejs" / "node_modules")
        self.env_file.parent.mkdir(parents=True)
        self.env_file.write_text(
            f"WORKER_HOST=127.0.0.1\nWORKER_PORT={self.port}\n"
            f"WORKER_TOKEN=\nWORKER_BUILD={build}\nWORKER_GRACE_SECONDS=2\n"
        )
        self.env_file.chmod(0o600)
        stand_in_systemctl(self.root, "start", self.role)
        wait_build(self.url, build)
        return build

    def current(self) -> str:
        return os.readlink(self.base / "current")

    def env_build(self) -> str:
        lines = [line for line in self.env_file.read_text().splitlines() if line.startswith("WORKER_BUILD=")]
        assert len(lines) == 1, lines
        return lines[0].split("=", 1)[1]

    def calls(self, tool: str) -> list[str]:
        path = self.root / f"{tool}.calls"
        return path.read_text().splitlines() if path.exists() else []

    def worker_pid(self) -> int:
        return int((self.root / "run" / f"{self.role}.pid").read_text())


@pytest.fixture
def host(sshd, host_root, tmp_path):
    """A fresh host tree for each test (the sshd and its session PATH stay)."""
    for child in host_root.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    yield Host(host_root, sshd, tmp_path)
    for role in ("worker-python", "worker-nodejs"):
        if (host_root / "run" / f"{role}.pid").exists():
            stand_in_systemctl(host_root, "stop", role)


def host_fingerprint(sshd) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{sshd.host_key}.pub"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return out.split()[1]


# --- host keys and authentication ----------------------------------------------------------


def test_first_use_records_the_host_key_that_openssh_then_accepts(host, sshd):
    (host.root / "log").mkdir()
    (host.root / "log" / f"{ROLE}.log").write_text('{"msg": "started"}\n')
    # Another host's entry, written without a final newline, must survive untouched.
    other_key = Path(f"{make_key(host.tmp / 'other')}.pub").read_text().split()
    other_line = f"192.0.2.7 {other_key[0]} {other_key[1]}"
    host.known_hosts.write_text(other_line)
    first = fleet("logs", NAME, *host.flags())
    assert first.returncode == 0, first.stderr
    fingerprint = host_fingerprint(sshd)
    assert f"recorded new host key for [127.0.0.1]:{sshd.port}: ssh-ed25519 {fingerprint}" in first.stderr
    lines = host.known_hosts.read_text().splitlines()
    assert lines[0] == other_line and lines[1].startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    assert len(lines) == 2

    again = fleet("logs", NAME, *host.flags())
    assert again.returncode == 0 and "recorded new host key" not in again.stderr

    # The printed stanza works for OpenSSH itself, with strict host key checking.
    config = fleet("ssh-config", *host.flags())
    assert config.returncode == 0, config.stderr
    assert "StrictHostKeyChecking yes" in config.stdout
    (host.tmp / "ssh_config").write_text(config.stdout)
    ssh = subprocess.run(
        ["ssh", "-F", str(host.tmp / "ssh_config"), "-o", "BatchMode=yes", NAME, "echo reached"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ssh.returncode == 0 and ssh.stdout.strip() == "reached", ssh.stderr


def test_a_changed_host_key_is_refused(host, sshd):
    impostor = make_key(host.tmp / "impostor")
    recorded = (
        f"[127.0.0.1]:{sshd.port} {Path(f'{impostor}.pub').read_text().split(' ')[0]} "
        f"{Path(f'{impostor}.pub').read_text().split(' ')[1]}\n"
    )
    host.known_hosts.write_text(recorded)
    result = fleet("logs", NAME, *host.flags())
    line = assert_one_error_line(result, 1, "host key changed")
    assert host_fingerprint(sshd) in line and "refusing to connect" in line
    assert host.known_hosts.read_text() == recorded  # never overwritten
    assert host.calls("journalctl") == []


def test_a_client_key_the_host_does_not_know_is_refused(host, sshd):
    stranger = make_key(host.tmp / "stranger")
    result = fleet("logs", NAME, *host.flags(key=stranger))
    assert_one_error_line(result, 1, "authentication failed")


def test_nothing_listening_is_connection_refused(host):
    result = fleet("logs", NAME, *host.flags(port=free_port()))
    assert_one_error_line(result, 1, "connection refused")


def test_a_port_that_never_speaks_ssh_times_out(host):
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        result = fleet("logs", NAME, "--ssh-timeout", "1", *host.flags(port=silent.getsockname()[1]))
    assert_one_error_line(result, 1, "no SSH greeting within 1s")


def test_an_unknown_worker_name_is_a_usage_error(host):
    result = fleet("logs", "worker-go-0", *host.flags())
    assert_one_error_line(result, 2, "no worker named 'worker-go-0'")


# --- logs ----------------------------------------------------------------------------------


def test_logs_shows_the_journal_with_lines_and_since(host):
    (host.root / "log").mkdir()
    (host.root / "log" / f"{ROLE}.log").write_text("".join(f'{{"n": {i}}}\n' for i in range(10)))
    result = fleet("logs", NAME, "--lines", "3", "--since", "1 hour ago", *host.flags())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ['{"n": 7}', '{"n": 8}', '{"n": 9}']
    assert host.calls("journalctl") == [f"-u {ROLE} --no-pager -n 3 --since 1 hour ago"]


def test_logs_reports_a_failing_journalctl(host):
    result = fleet("logs", NAME, "--since", "whenever", *host.flags())
    line = assert_one_error_line(result, 1, f"journalctl on {NAME} exited with 1")
    assert "Failed to parse timestamp: whenever" in result.stderr and line


def test_logs_follow_streams_new_lines_until_interrupted(host):
    log = host.root / "log" / f"{ROLE}.log"
    log.parent.mkdir()
    log.write_text('{"msg": "before"}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.fleet", "logs", NAME, "--follow", *host.flags()],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == '{"msg": "before"}'
        with open(log, "a") as out:
            out.write('{"msg": "after"}\n')
        assert proc.stdout.readline().strip() == '{"msg": "after"}'  # streamed, not batched
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert "-f" in host.calls("journalctl")[0].split()


# --- redeploy (--skip-pool-check: these loopback hosts have no EC2 to ask; tests/infra/test_pools.py
# proves the check refuses pooled hosts) ------------------------------------------------------


def test_redeploy_ships_the_source_and_the_worker_restarts_at_the_new_build(host):
    shipped = bundle_files(ROLE)
    old = host.install({**shipped, "OLD_RELEASE": b"a file only the old release has\n"})
    old_pid = host.worker_pid()
    new = build_id(shipped)
    for age, stale in enumerate(["0000000000a1", "0000000000a2", "0000000000a3"], start=1):
        (host.base / "releases" / stale).mkdir()
        os.utime(host.base / "releases" / stale, (time.time() - 3600 * age,) * 2)

    result = fleet("redeploy", "--skip-pool-check", NAME, "--health-timeout", "60", "--keep", "3", *host.flags())
    assert result.returncode == 0, result.stderr
    assert f"{NAME}: deployed build {new} (was {old}), healthy" in result.stdout
    assert health(host.url)["build"] == new
    assert host.current() == f"releases/{new}" and host.env_build() == new
    assert host.worker_pid() != old_pid
    release = host.base / "releases" / new
    unpacked = {
        p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }  # the test worker runs as root
    assert unpacked == set(shipped)
    assert (host.base / "releases" / old / "OLD_RELEASE").exists()  # kept for rollback
    # --keep 3: new, previous, and the newest of the rest
    assert {p.name for p in (host.base / "releases").iterdir()} == {new, old, "0000000000a1"}
    assert host.calls("pip") == []  # same requirements.txt: the shared venv is reused
    assert host.calls("systemctl")[-1] == f"restart {ROLE}"
    assert not list(Path(os.path.expanduser("~"), ".hdtp-staging").glob(f"{ROLE}-{new}*"))

    again = fleet("redeploy", "--skip-pool-check", "--all", *host.flags())
    assert again.returncode == 0, again.stderr
    assert f"already at build {new}, healthy" in again.stdout


def test_a_nodejs_redeploy_reuses_node_modules_when_the_lockfile_is_unchanged(host, sshd, host_root, tmp_path):
    node = Host(host_root, sshd, tmp_path, "worker-nodejs")
    shipped = bundle_files(node.role)
    old = node.install({**shipped, "OLD_RELEASE": b"x\n"})
    new = build_id(shipped)
    result = fleet("redeploy", "--skip-pool-check", node.name, "--health-timeout", "60", *node.flags())
    assert result.returncode == 0, result.stderr
    assert f"deployed build {new} (was {old}), healthy" in result.stdout
    assert health(node.url)["build"] == new and health(node.url)["runtime"] == "nodejs"
    modules = node.base / "releases" / new / "node_modules"
    assert modules.is_symlink() and modules.resolve() == (ROOT / "worker-nodejs" / "node_modules").resolve()
    assert node.calls("npm") == []  # copied from the previous release, not reinstalled


def test_a_build_that_fails_at_start_up_is_rolled_back(host):
    shipped = bundle_files(ROLE)
    # The running release has other pins, so both the deploy and the rollback install deps.
    old_requirements = shipped["requirements.txt"] + b"# older pins\n"
    old = host.install({**shipped, "requirements.txt": old_requirements})
    source = host.tmp / "checkout"
    shutil.copytree(ROOT / ROLE, source / ROLE, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    main = source / ROLE / "worker_python" / "__main__.py"
    main.write_text('raise SystemExit("deliberately broken build")\n')
    broken = build_id(bundle_files(ROLE, source))

    result = fleet(
        "redeploy", "--skip-pool-check", NAME, "--source-root", str(source), "--health-timeout", "5", *host.flags()
    )
    line = assert_one_error_line(result, 4, f"build {broken} not healthy within 5s")
    assert f"rolled back to build {old}, healthy" in line
    assert health(host.url)["build"] == old
    assert host.current() == f"releases/{old}" and host.env_build() == old
    pip = host.calls("pip")
    assert len(pip) == 2, pip
    assert pip[0].endswith(f"releases/{broken}/requirements.txt")
    assert pip[1].endswith(f"releases/{old}/requirements.txt")
    assert "deliberately broken build" in (host.root / "log" / f"{ROLE}.log").read_text()


def test_a_failed_dependency_install_leaves_the_running_release_alone(host):
    shipped = bundle_files(ROLE)
    old = host.install({**shipped, "requirements.txt": shipped["requirements.txt"] + b"# older\n"})
    pid = host.worker_pid()
    (host.base / "venv" / "bin" / "pip").write_text(
        '#!/bin/sh\necho "ERROR: No matching distribution found for flask==99" >&2\nexit 1\n'
    )
    result = fleet("redeploy", "--skip-pool-check", NAME, *host.flags())
    line = assert_one_error_line(result, 4, f"{NAME}: installing Python dependencies failed (exit 1)")
    assert line.endswith(f"No matching distribution found for flask==99; build {old} still running")
    assert host.current() == f"releases/{old}" and host.env_build() == old
    assert host.worker_pid() == pid and health(host.url)["build"] == old
    assert host.calls("systemctl") == [f"start {ROLE}"]  # never restarted


def test_redeploy_without_a_previous_release_says_it_cannot_roll_back(host):
    # A host whose `current` is missing: there is nothing to go back to.
    (host.base / "releases").mkdir(parents=True)
    host.env_file.parent.mkdir(parents=True)
    host.env_file.write_text(f"WORKER_HOST=127.0.0.1\nWORKER_PORT={host.port}\n")
    venv_bin = host.base / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text("#!/bin/sh\nexit 3\n")  # a venv that cannot start anything
    (venv_bin / "pip").write_text("#!/bin/sh\nexit 0\n")
    for tool in venv_bin.iterdir():
        tool.chmod(0o755)
    result = fleet("redeploy", "--skip-pool-check", NAME, "--health-timeout", "3", *host.flags())
    assert_one_error_line(result, 5, "no previous release to roll back to")


def test_redeploy_needs_a_name_or_all(host):
    assert_one_error_line(fleet("redeploy", *host.flags()), 2, "needs a worker NAME or --all")


# --- a failed first boot, as cloud-init reports it ----------------------------------------
# `status` and `wait` read `cloud-init status` over SSH (on by default with --ssh-key); the
# stand-in cloud-init (tests/fixtures/fleet/bin/cloud-init) answers from files under the host.

RUNCMD_ERROR = "('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))"
# What cloud-init 24.x prints for a first boot whose runcmd failed (trimmed to the keys read).
FAILED_REPORT = {
    "boot_status_code": "enabled-by-generator",
    "datasource": "ec2",
    "detail": "DataSourceEc2Local",
    "errors": [RUNCMD_ERROR],
    "extended_status": "error - done",
    "recoverable_errors": {},
    "status": "error",
    "modules-final": {"errors": [RUNCMD_ERROR], "recoverable_errors": {}},
}
# cloud-init 22.x (Debian 12) has no --format; its --long text:
OLD_LONG_TEXT = f"status: error\ntime: Mon, 30 Nov 2026 01:00:00 +0000\ndetail:\n{RUNCMD_ERROR}\n"


@pytest.fixture
def booted(host, moto):
    """The host as a running, tagged EC2 instance in moto, its real worker healthy."""
    moto.reset()
    run_tagged_instance(moto.ec2(), host.name, ROLE, "hdtp", "fleet-test")
    host.install(bundle_files(ROLE))
    return host


def cloud_init_says(host: Host, report: dict | None = None, long_text: str = "", code: int = 0) -> None:
    folder = host.root / "cloud-init"
    folder.mkdir(exist_ok=True)
    if report is not None:
        (folder / "status.json").write_text(json.dumps(report))
    (folder / "status.txt").write_text(long_text)
    (folder / "exit").write_text(str(code))


def status_row(host: Host, moto, *extra: str) -> dict:
    return status_row_with(host, moto, [*extra, *host.flags()])


def test_status_shows_a_failed_first_boot_though_healthz_answers(booted, moto):
    cloud_init_says(booted, FAILED_REPORT, code=1)
    row = status_row(booted, moto)
    assert row["health"]["status"] == "ok"  # the worker answers, yet the boot did not finish
    assert row["boot"] == {"state": "error", "detail": RUNCMD_ERROR}
    assert row["ready"] is False and row["missing"] == [f"boot failed: {RUNCMD_ERROR}"]
    assert booted.calls("cloud-init") == ["status --format json"]
    table = fleet("status", *booted.flags(), env=aws_env(moto.url))
    assert "boot failed: ('scripts_user'" in table.stdout


def test_status_reads_an_older_cloud_init_without_json(booted, moto):
    cloud_init_says(booted, long_text=OLD_LONG_TEXT, code=1)
    row = status_row(booted, moto)
    assert row["boot"] == {"state": "error", "detail": RUNCMD_ERROR}
    assert booted.calls("cloud-init") == ["status --format json", "status --long"]


def test_wait_stops_at_once_with_exit_6_when_a_boot_failed(booted, moto):
    cloud_init_says(booted, FAILED_REPORT, code=1)
    started = time.monotonic()
    result = fleet("wait", "--timeout", "300", "--interval", "1", *booted.flags(), env=aws_env(moto.url))
    line = assert_one_error_line(result, 6, f"boot failed on {NAME}: {RUNCMD_ERROR}")
    assert "/var/log/cloud-init-output.log" in line
    assert time.monotonic() - started < 120  # far from the 300 s timeout: it did not wait


def test_wait_waits_for_a_running_boot_and_passes_once_it_is_done(booted, moto):
    cloud_init_says(booted, {"status": "running", "errors": []})
    result = fleet("wait", "--timeout", "2", "--interval", "0.5", *booted.flags(), env=aws_env(moto.url))
    assert_one_error_line(result, 3, f"{NAME} (boot running)")
    cloud_init_says(booted, {"status": "done", "errors": [], "extended_status": "degraded done"}, code=2)
    result = fleet("wait", "--timeout", "60", "--interval", "0.5", *booted.flags(), env=aws_env(moto.url))
    assert result.returncode == 0, result.stderr
    assert "all 1 workers ready" in result.stdout


def test_a_hostile_report_is_shown_as_one_short_printable_line(booted, moto):
    hostile = "\x1b[2J[link=http://evil.example]click[/link]\nProxyCommand x " + "A" * 500
    cloud_init_says(booted, {"status": "error", "errors": [hostile]}, code=1)
    detail = status_row(booted, moto)["boot"]["detail"]
    assert len(detail) <= 200 and detail.isprintable() and "\x1b" not in detail
    assert detail.startswith("[2J[link=http://evil.example]click[/link] ProxyCommand x AAA")


def test_without_an_ssh_key_or_with_no_boot_check_cloud_init_is_not_asked(booted, moto):
    cloud_init_says(booted, FAILED_REPORT, code=1)
    row = status_row(booted, moto, "--no-boot-check")
    assert row["boot"] is None and row["ready"] is True
    flags = booted.flags()
    without_key = flags[:2] + flags[4:]  # drops --ssh-key PATH
    assert "--ssh-key" not in without_key
    result = fleet("status", "--json", *without_key, env={**aws_env(moto.url), "FLEET_SSH_KEY": ""})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["boot"] is None
    assert booted.calls("cloud-init") == []


def test_an_unreachable_ssh_port_is_forgiven_unless_the_boot_check_was_asked_for(booted, moto):
    closed = booted.flags(port=free_port())
    row = status_row_with(booted, moto, closed)
    assert row["boot"]["state"] == "unknown" and "connection refused" in row["boot"]["detail"]
    assert row["ready"] is True  # default (key given): shown, but /healthz decides
    strict = status_row_with(booted, moto, ["--boot-check", *closed])
    assert strict["ready"] is False
    first_gap = strict["missing"][0]
    assert first_gap.startswith("boot unknown: ssh ") and "connection refused" in first_gap


def status_row_with(host: Host, moto, flags: list[str]) -> dict:
    result = fleet("status", "--json", *flags, env=aws_env(moto.url))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    return row


# --- rotate-token over SSH: each host's <role>-secrets unit runs the real fetch-worker-secrets --


def secrets_unit(host: Host, moto) -> Path:
    """What the host's `<role>-secrets.service` runs (the stand-in systemctl starts units/<unit>):
    infra/fetch_secrets.py against moto, into the secrets folder the worker reads."""
    unit = host.root / "units" / f"{host.role}-secrets"
    unit.parent.mkdir(parents=True, exist_ok=True)
    keys = " ".join(f"{k}={v}" for k, v in aws_env(moto.url).items() if k.startswith("AWS_"))
    unit.write_text(
        f"#!/bin/sh\nexec env {keys} {sys.executable} {ROOT / 'infra' / 'fetch_secrets.py'} --region us-east-1 "
        f"--prefix /hdtp/fleet-test --dest {host.root / 'etc' / host.role / 'secrets'} --group root\n"
    )
    unit.chmod(0o755)
    return unit


def put_secrets(moto, server) -> object:
    """The stack's SSM parameters as infra writes them; returns the SSM client."""
    ssm = moto.client("ssm")
    for name, value in (("worker-token", "OldToken1"), ("worker-tls-key", server.key_pem.decode())):
        ssm.put_parameter(Name=f"/hdtp/fleet-test/{name}", Value=value, Type="SecureString", Overwrite=True)
    ssm.put_parameter(
        Name="/hdtp/fleet-test/worker-tls-cert", Value=server.cert_pem.decode(), Type="String", Overwrite=True
    )
    return ssm


def serve_from_secrets(host: Host, moto, tls_ca: Path | None = None) -> Path:
    """Install the worker as user-data does now: the boot's fetch, then the unit reading the
    secrets folder (token file; with `tls_ca`, the certificate and key too). Returns the folder."""
    host.install(bundle_files(ROLE))
    subprocess.run([str(secrets_unit(host, moto))], check=True, timeout=60, capture_output=True)
    secrets = host.root / "etc" / ROLE / "secrets"
    env = f"WORKER_TOKEN_FILE={secrets / 'worker-token'}\n"
    if tls_ca:
        env += f"WORKER_TLS_CERT={secrets / 'tls.crt'}\nWORKER_TLS_KEY={secrets / 'tls.key'}\n"
        host.url = host.url.replace("http://", "https://")
    host.env_file.write_text(host.env_file.read_text().replace("WORKER_TOKEN=\n", env))
    stand_in_systemctl(host.root, "restart")
    wait_http_ok(f"{host.url}/healthz", timeout=30, tls=TlsClient(tls_ca) if tls_ca else None)
    outputs = {**json.loads(host.outputs.read_text()), "worker_token": "OldToken1"}
    outputs["workers"][0]["url"] = host.url
    host.outputs.write_text(json.dumps(outputs))
    return secrets


def test_rotate_token_over_ssh_starts_each_hosts_secrets_unit(host, moto):
    moto.reset()
    ssm = put_secrets(moto, Authority().issue())
    token_file = serve_from_secrets(host, moto) / "worker-token"

    result = fleet("rotate-token", "--interval", "0.3", "--grace", "0", "--timeout", "30", *host.flags(),
                   env=aws_env(moto.url))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "over SSH" in result.stderr and "[7/7]" in result.stderr
    assert "Run `pulumi refresh` before the next `make stack-outputs`" in result.stdout
    assert host.calls("systemctl").count(f"start {ROLE}-secrets") == 2  # current+next, then next alone
    new = json.loads(host.outputs.read_text())["worker_token"]
    assert new != "OldToken1" and token_file.read_text() == f"{new}\n"
    assert ssm.get_parameter(Name="/hdtp/fleet-test/worker-token", WithDecryption=True)["Parameter"]["Value"] == new
    probe = {"Authorization": "Bearer OldToken1", "Content-Type": "text/plain"}
    assert requests.post(f"{host.url}/process", data=b"", headers=probe, timeout=5).status_code == 401
    assert new not in result.stdout + result.stderr


# A unit's last stderr line with a terminal title sequence, a screen clear and a bell in it.
HOSTILE_UNIT = "#!/bin/sh\nprintf 'evil\\033]0;pwned\\007 \\033[2Jtext\\n' >&2\nexit 3\n"


@pytest.mark.parametrize(
    ("unit", "shown"),
    [(None, "failed (exit 5): Unit worker-python-secrets.service not found."), (HOSTILE_UNIT, "failed (exit 3): evil")],
    ids=["no unit", "a unit printing control characters"],
)
def test_a_host_whose_secrets_unit_fails_is_named_and_the_rotation_rolls_back(host, moto, unit, shown):
    moto.reset()
    if unit is not None:
        (host.root / "units").mkdir(parents=True, exist_ok=True)
        (host.root / "units" / f"{ROLE}-secrets").write_text(unit)
        (host.root / "units" / f"{ROLE}-secrets").chmod(0o755)
    ssm = moto.client("ssm")
    ssm.put_parameter(Name="/hdtp/fleet-test/worker-token", Value="OldToken1", Type="SecureString")
    build = host.install(bundle_files(ROLE))
    host.env_file.write_text(host.env_file.read_text().replace("WORKER_TOKEN=\n", "WORKER_TOKEN=OldToken1\n"))
    stand_in_systemctl(host.root, "restart")
    wait_build(host.url, build)
    host.outputs.write_text(json.dumps({**json.loads(host.outputs.read_text()), "worker_token": "OldToken1"}))
    before = host.outputs.read_bytes()
    # No units/<role>-secrets here: systemctl answers "not found" (exit 5), as a host without the unit would.
    result = fleet("rotate-token", "--interval", "0.3", "--timeout", "2", *host.flags(), env=aws_env(moto.url))
    assert f"trigger failed on {NAME}: {ROLE}-secrets.service {shown}" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr  # host text is printed as plain text
    assert_one_error_line(result, 4, "rolled back")
    assert host.calls("systemctl").count(f"start {ROLE}-secrets") == 2  # the try, then the rollback's
    assert host.outputs.read_bytes() == before
    assert ssm.get_parameter(Name="/hdtp/fleet-test/worker-token", WithDecryption=True)["Parameter"]["Value"] == (
        "OldToken1"
    )


def test_refresh_secrets_over_ssh_brings_a_renewed_certificate_to_a_tls_host(host, moto):
    moto.reset()
    authority = Authority()
    put_secrets(moto, authority.issue())
    ca_file = authority.write_ca(host.tmp)
    serve_from_secrets(host, moto, tls_ca=ca_file)
    pinning = {"worker_ca_pem": authority.cert_pem.decode(), "worker_tls_name": FLEET_TLS_NAME}
    host.outputs.write_text(json.dumps({**json.loads(host.outputs.read_text()), **pinning}))
    renewed = authority.issue()
    put_secrets(moto, renewed)  # what `pulumi up` does with a renewed certificate (same CA)

    result = fleet("refresh-secrets", "--interval", "0.3", "--timeout", "30", *host.flags(), env=aws_env(moto.url))
    assert result.returncode == 0, result.stderr
    wanted = fleet_tls.sha256(fleet_tls.first_certificate(renewed.cert_pem.decode(), "renewed"))
    assert f"all 1 workers present the certificate in /hdtp/fleet-test/worker-tls-cert (sha256 {wanted})" in (
        result.stdout
    )
    assert host.calls("systemctl").count(f"start {ROLE}-secrets") == 1
