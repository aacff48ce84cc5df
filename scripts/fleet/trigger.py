"""Make worker hosts fetch their secrets from SSM now: over SSH, start the `{role}-secrets`
oneshot unit (infra/userdata.py installs it with a timer); without SSH (a pooled stack, no key),
the timer does it within about a minute and the caller just waits longer."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from scripts.fleet.boot import one_line
from scripts.fleet.config import RUNTIME_OF_ROLE, FleetConfig, Worker
from scripts.fleet.errors import FleetError
from scripts.fleet.tokens import Endpoint
from stripes.roles import ROLE_SPECS

TIMER_SECONDS = 60  # OnUnitActiveSec of {role}-secrets.timer
UNIT_TIMEOUT = 90  # seconds `systemctl start` of the oneshot unit may take (its fetch retries)

# Runs on a set of workers; returns one line per host it could not trigger (the timer still will).
Trigger = Callable[[list[Endpoint]], list[str]]


def unit_command(role: str) -> str:
    return "sudo -n " + shlex.join(["systemctl", "start", ROLE_SPECS[role].secrets_unit])


def ssh_trigger(config: FleetConfig) -> Trigger:
    def run(targets: list[Endpoint]) -> list[str]:
        hosts = {(t.host, t.role): t for t in targets}  # one start per host and unit
        with ThreadPoolExecutor(max_workers=8) as pool:
            problems = pool.map(lambda t: _start_unit(config, t), hosts.values())
        return [p for p in problems if p]

    return run


def _start_unit(config: FleetConfig, target: Endpoint) -> str:
    from scripts.fleet import ssh

    worker = Worker(target.name, target.role, RUNTIME_OF_ROLE[target.role], target.url, target.host, "", ())
    try:
        client = ssh.connect(config, worker)
        try:
            code, _out, err = ssh.run(client, unit_command(target.role), timeout=UNIT_TIMEOUT, max_bytes=65536)
        finally:
            client.close()
    except FleetError as exc:
        return f"{target.name}: {exc.message}"
    if code != 0:
        last = one_line((err.strip().splitlines() or ["no output"])[-1])  # host text: no control characters
        return f"{target.name}: {ROLE_SPECS[target.role].secrets_unit} failed (exit {code}): {last}"
    return ""


def timer_trigger(_targets: list[Endpoint]) -> list[str]:
    return []  # nothing to do: each host's timer fetches within TIMER_SECONDS


def choose(config: FleetConfig, mode: str | None) -> tuple[Trigger, str]:
    """(trigger, description): `ssh` or `timer`; by default SSH when a key is given
    (--ssh-key / FLEET_SSH_KEY) and the stack is not pooled, else the timer."""
    if mode is None:
        mode = "ssh" if config.ssh_key and not config.pooled else "timer"
    if mode == "ssh":
        return ssh_trigger(config), "over SSH (systemctl start <role>-secrets.service)"
    return timer_trigger, f"by the hosts' <role>-secrets.timer (within ~{TIMER_SECONDS}s)"
