"""Which workers accept a bearer token, asked the cheapest way the contract allows.

The probe is `POST /process` with the token, an empty body and `Content-Type: text/plain`: the
contract checks the token (401 `unauthorized`) before the content type (415), so a wrong token
gets 401 and a right one 415, answered at once without decoding anything and without adding an
endpoint. 503 `busy` also comes after the token check (accepted); 503 `draining` comes before
it (no verdict: ask again).
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from scripts.fleet import probe
from scripts.fleet.config import RUNTIME_OF_ROLE, FleetConfig
from scripts.fleet.tls import Pinning

ACCEPTED, REFUSED = "accepted", "refused"
TOKEN_ALPHABET = string.ascii_letters + string.digits
TOKEN_LENGTH = 40


def new_token() -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


@dataclass(frozen=True)
class Endpoint:
    """A worker to probe and the host that runs it."""

    name: str
    role: str
    url: str
    host: str  # public IP for SSH ('' when unknown)


def endpoints(config: FleetConfig) -> list[Endpoint]:
    """The outputs file's workers, plus a pooled stack's running instances (found in EC2)."""
    found = [Endpoint(w.name, w.role, w.url, w.public_ip) for w in config.workers]
    if config.pooled:
        from scripts.fleet.aws import fleet_instances

        listed = {w.instance_id for w in config.workers}
        for i in fleet_instances(config):
            port = config.pool_ports.get(i.role)
            if i.group and port and i.public_ip and i.state == "running" and i.instance_id not in listed:
                found.append(Endpoint(i.instance_id, i.role, f"{config.scheme}://{i.public_ip}:{port}", i.public_ip))
    return [e for e in found if e.role in RUNTIME_OF_ROLE]


PROBE_DEADLINE = 5.0  # seconds for one probe: connect, TLS handshake, request and the reply read
PROBE_FLOOR = 0.5  # a wait's last probes get at least this, even when its timeout is nearly spent


def verdict(url: str, token: str, tls: Pinning | None = None, deadline: float = PROBE_DEADLINE) -> str:
    """ACCEPTED, REFUSED, or why there is no verdict yet (one line, never the token), within
    `deadline` seconds in all: only a 503's first 4 KiB is read (a reply that never ends is not
    downloaded, one that drips is cut off)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain", "Connection": "close"}
    try:
        answer = probe.request(
            "POST", f"{url}/process", tls=tls, headers=headers, idle=deadline, total=deadline, max_body=4096
        )
    except probe.ProbeError as exc:
        return exc.why
    if answer.status == 401:
        return REFUSED
    if answer.status == 503:
        return ACCEPTED if _error_code(answer.body) == "busy" else "draining (HTTP 503)"
    return ACCEPTED if answer.status in (400, 413, 415) else f"HTTP {answer.status}"


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def verdicts(
    config: FleetConfig, targets: list[Endpoint], token: str, deadline: float = PROBE_DEADLINE
) -> dict[str, str]:
    """{worker name: verdict} for every target, asked in parallel, each within `deadline` s."""

    def ask(target: Endpoint) -> str:
        return verdict(target.url, token, config.tls, deadline)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip((t.name for t in targets), pool.map(ask, targets), strict=True))


def wait_for(
    config: FleetConfig,
    find: Callable[[], list[Endpoint]],
    wanted: list[tuple[str, str, str]],
    timeout: float,
    interval: float,
) -> dict[str, str]:
    """Ask until every target gives each token its wanted verdict ((label, token, ACCEPTED or
    REFUSED) each); returns {name: what is still wrong} ({} on success) once done or after
    `timeout` seconds. `find` gives the workers now: it is called at the start of each round
    and once more after a round with nothing wrong, and a worker it gives that the round did not
    ask (it joined meanwhile) keeps the wait going."""
    deadline = time.monotonic() + timeout
    while True:
        asked = find()
        lagging: dict[str, str] = {}
        for label, token, want in wanted:
            left = round(deadline - time.monotonic(), 1)  # a dripping worker must not carry a wait past `timeout`
            for name, got in verdicts(config, asked, token, min(PROBE_DEADLINE, max(PROBE_FLOOR, left))).items():
                if got != want:
                    lagging.setdefault(name, f"{label}: {got}, not {want}")
        if not lagging:
            lagging = {t.name: "joined, not asked yet" for t in find() if t not in asked}
            if lagging and time.monotonic() < deadline:
                continue  # ask the newcomers now
        if not lagging or time.monotonic() >= deadline:
            return lagging
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
