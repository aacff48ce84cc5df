"""SSH to a worker host with checked host keys: trust on first use, a changed key is refused."""

from __future__ import annotations

import base64
import hashlib
import logging
import shlex
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import paramiko

from scripts.fleet.config import FleetConfig, Worker
from scripts.fleet.errors import FleetError

# paramiko logs transport failures (with tracebacks) from its own thread; we report them once.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: SHA256:<unpadded base64>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Record a host's key the first time we see it; paramiko refuses a different key later."""

    def __init__(self, known_hosts: Path, announce: Callable[[str], None]):
        self.known_hosts = known_hosts
        self.announce = announce

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a+") as out:
            out.seek(0)
            unterminated = (text := out.read()) and not text.endswith("\n")
            out.write(("\n" if unterminated else "") + f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.known_hosts.chmod(0o600)
        self.announce(
            f"recorded new host key for {hostname}: {key.get_name()} {fingerprint(key)} in {self.known_hosts}"
        )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _greeted_socket(host: str, port: int, target: str, timeout: float) -> socket.socket:
    """A TCP connection on which the server has started to speak, so each failure gets its name."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise FleetError(f"ssh {target}: connection refused") from None
    except TimeoutError:
        raise FleetError(f"ssh {target}: no TCP connection within {timeout:g}s") from None
    except OSError as exc:
        raise FleetError(f"ssh {target}: {exc.strerror or exc}") from None
    try:
        greeting = sock.recv(4, socket.MSG_PEEK)  # peek: paramiko reads the banner itself
    except TimeoutError:
        sock.close()
        raise FleetError(f"ssh {target}: no SSH greeting within {timeout:g}s") from None
    except OSError as exc:
        sock.close()
        raise FleetError(f"ssh {target}: {exc.strerror or exc}") from None
    if not greeting:
        sock.close()
        raise FleetError(f"ssh {target}: the server closed the connection without a greeting")
    return sock


def connect(config: FleetConfig, worker: Worker) -> paramiko.SSHClient:
    """An authenticated session as config.ssh_user, or FleetError naming what went wrong."""
    timeout = config.ssh_timeout
    host = worker.public_ip
    if not host:
        raise FleetError(f"{worker.name} has no public_ip in {config.outputs_path}")
    target = f"{config.ssh_user}@{host}:{config.ssh_port}"
    client = paramiko.SSHClient()
    try:
        if config.known_hosts.exists():
            client.load_host_keys(str(config.known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise FleetError(f"cannot read known hosts file {config.known_hosts}: {exc}") from exc
    client.set_missing_host_key_policy(TrustOnFirstUse(config.known_hosts, _stderr))
    sock = _greeted_socket(host, config.ssh_port, target, timeout)
    key_options = (
        {"key_filename": str(config.ssh_key), "look_for_keys": False, "allow_agent": False} if config.ssh_key else {}
    )
    try:
        client.connect(
            host,
            port=config.ssh_port,
            username=config.ssh_user,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            sock=sock,
            **key_options,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise FleetError(
            f"ssh {target}: host key changed ({exc.key.get_name()} {fingerprint(exc.key)}, "
            f"expected {fingerprint(exc.expected_key)}); refusing to connect. If the instance was "
            f"really replaced, delete its line from {config.known_hosts}"
        ) from None
    except paramiko.AuthenticationException:
        client.close()
        key = config.ssh_key or "agent/default keys"
        raise FleetError(f"ssh {target}: authentication failed with {key}") from None
    except TimeoutError:
        client.close()
        raise FleetError(f"ssh {target}: timed out after {timeout:g}s") from None
    except (paramiko.SSHException, OSError, ValueError) as exc:
        client.close()
        raise FleetError(f"ssh {target}: {exc or type(exc).__name__}") from None
    return client


def sudo(command: str) -> str:
    """`command` run by root through `sh -c`; -n makes sudo fail rather than ask for a password."""
    return f"sudo -n sh -c {shlex.quote(command)}"


def _open(client: paramiko.SSHClient, command: str) -> paramiko.Channel:
    try:
        channel = client.get_transport().open_session()
        channel.exec_command(command)
    except (paramiko.SSHException, OSError) as exc:
        raise FleetError(f"ssh session failed: {exc or type(exc).__name__}") from None
    return channel


def run(
    client: paramiko.SSHClient, command: str, timeout: float = 120, max_bytes: int | None = None
) -> tuple[int, str, str]:
    """Run to completion within `timeout` seconds; returns (exit status, stdout, stderr).
    With `max_bytes`, more output than that ends the command (a host must not fill our memory)."""
    channel = _open(client, command)
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    while True:
        busy = False
        if channel.recv_ready():
            out += channel.recv(65536)
            busy = True
        if channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
            busy = True
        if not busy and channel.exit_status_ready():
            break
        if max_bytes is not None and len(out) + len(err) > max_bytes:
            channel.close()
            raise FleetError(f"remote command printed over {max_bytes} bytes: {command[:80]}")
        if time.monotonic() > deadline:
            channel.close()
            raise FleetError(f"remote command timed out after {timeout:g}s: {command[:80]}")
        if not busy:
            time.sleep(0.02)
    code = channel.recv_exit_status()
    channel.close()
    return code, out.decode(errors="replace"), err.decode(errors="replace")


def stream(client: paramiko.SSHClient, command: str, out: BinaryIO, err: BinaryIO) -> int:
    """Copy the command's output as it arrives until it exits (Ctrl-C ends it early)."""
    channel = _open(client, command)
    try:
        while True:
            busy = False
            if channel.recv_ready():
                out.write(channel.recv(65536))
                out.flush()
                busy = True
            if channel.recv_stderr_ready():
                err.write(channel.recv_stderr(65536))
                err.flush()
                busy = True
            if not busy:
                if channel.exit_status_ready():
                    return channel.recv_exit_status()
                if channel.closed or not client.get_transport().is_active():
                    raise FleetError("the SSH connection closed before the command finished")
                time.sleep(0.05)
    finally:
        channel.close()
