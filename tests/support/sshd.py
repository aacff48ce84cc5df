"""Debian's OpenSSH server on a free loopback port, with throwaway host and client keys.

Sessions get `env` through sshd_config's SetEnv (e.g. a PATH whose first entries hold
stand-in `sudo`/`systemctl`/`journalctl`), so the code under test runs real commands over a
real SSH connection without touching the machine's services.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.testkit.procs import RunningProcess, free_port, spawn_logged

SSHD = "/usr/sbin/sshd"


def sshd_available() -> str | None:
    """None when a test sshd can run here, else the reason it cannot."""
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (Debian package openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is missing (Debian package openssh-client)"
    if os.geteuid() != 0:
        return "sshd needs root to run sessions (privilege separation)"
    return None


def make_key(path: Path, kind: str = "ed25519") -> Path:
    """A new passphrase-less key pair at `path` and `path`.pub."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "fleet-test", "-f", str(path)],
        check=True,
        timeout=30,
        capture_output=True,
    )
    return path


@dataclass
class Sshd:
    process: RunningProcess | None
    port: int
    user: str
    client_key: Path
    host_key: Path
    config_path: Path
    env: dict

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""


def _wait_listening(port: int, process: RunningProcess, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.proc.returncode}:\n{process.log_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"sshd did not listen on {port} within {timeout}s:\n{process.log_text()[-2000:]}")


def start_sshd(tmp_dir: Path, env: dict | None = None, host_key: Path | None = None, port: int | None = None) -> Sshd:
    """Start `sshd -D -e` on 127.0.0.1 accepting only a fresh client key; returns once it greets."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    host_key = host_key or make_key(tmp_dir / "ssh_host_ed25519_key")
    client_key = tmp_dir / "client_ed25519"
    if not client_key.exists():
        make_key(client_key)
    authorized = tmp_dir / "authorized_keys"
    authorized.write_text(client_key.with_name(client_key.name + ".pub").read_text())
    port = port or free_port()
    lines = [
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        f"PidFile {tmp_dir / 'sshd.pid'}",
        "UsePAM no",
        "StrictModes no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "AllowTcpForwarding no",
        "X11Forwarding no",
        "LogLevel VERBOSE",
        "MaxStartups 50",
        "MaxSessions 50",
        "Subsystem sftp internal-sftp",
    ]
    if env:
        lines.append("SetEnv " + " ".join(f'{key}="{value}"' for key, value in env.items()))
    config = tmp_dir / "sshd_config"
    config.write_text("\n".join(lines) + "\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    log_path = tmp_dir / f"sshd-{port}.log"
    proc = spawn_logged([SSHD, "-D", "-e", "-f", str(config)], log_path)
    running = RunningProcess(proc, log_path, f"127.0.0.1:{port}")
    try:
        _wait_listening(port, running)
    except RuntimeError:
        running.stop()
        raise
    return Sshd(running, port, getpass.getuser(), client_key, host_key, config, dict(env or {}))
