"""Ask every worker what it can do: GET /healthz, all at once, each under one short deadline.

A worker's answer is untrusted: the body is capped, redirects are not followed, and every
field is checked (short names in a safe charset, ops from the known set, limits in range)
before anything shows it or routes by it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from coordinator.config import CoordinatorConfig, redact_url
from coordinator.errors import NoWorkerError
from coordinator.plan import OPERATIONS
from coordinator.tls import TlsSettings
from coordinator.transport import Limits, Transport, TransportError, daemon_map, printable

HEALTH_MAX_BYTES = 65536  # a real reply is ~400 bytes
# Contract defaults (WORKER_MAX_BYTES / WORKER_MAX_PIXELS), assumed when a worker does not say.
DEFAULT_MAX_BYTES = 50_000_000
DEFAULT_MAX_PIXELS = 50_000_000
MAX_INFLIGHT_CAP = 64
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
REASON = re.compile(r"[A-Za-z0-9 ._,:;()'=+-]{1,160}")


@dataclass
class WorkerStatus:
    url: str
    ok: bool
    service: str | None = None
    runtime: str | None = None
    version: str | None = None
    primary: str | None = None
    operations: tuple[str, ...] = ()
    latency_ms: float | None = None
    error: str | None = None
    max_inflight: int = 4
    max_bytes: int = DEFAULT_MAX_BYTES  # largest request body it accepts
    max_pixels: int = DEFAULT_MAX_PIXELS  # largest width*height it accepts
    build: str | None = None

    def offers(self, op: str) -> bool:
        return self.ok and op in self.operations


def health_limits(timeout: float) -> Limits:
    return Limits(connect=timeout, idle=timeout, total=timeout, max_body=HEALTH_MAX_BYTES)


def check_worker(url: str, timeout: float, transport: Transport, tls: TlsSettings | None = None) -> WorkerStatus:
    """One worker's /healthz, the TLS handshake (fleet CA and name, when configured) included in `timeout`."""
    started = time.perf_counter()
    try:
        reply = transport.exchange(
            "GET", f"{url}/healthz", health_limits(timeout), headers={"Accept": "application/json"}, tls=tls
        )
    except TransportError as exc:
        return WorkerStatus(url, False, error=f"unreachable: {exc.reason}")
    latency = (time.perf_counter() - started) * 1000
    if 300 <= reply.status < 400:
        location = printable(redact_url(reply.headers.get("Location") or "nowhere"), 100)
        error = f"/healthz redirected (HTTP {reply.status} to {location}); redirects are not followed"
        return WorkerStatus(url, False, latency_ms=latency, error=error)
    not_worker = f"not a worker: {url} answered /healthz with HTTP {reply.status}"
    if reply.content_type != "application/json":
        error = f"{not_worker} {short(reply.content_type) or 'no type'}"
        return WorkerStatus(url, False, latency_ms=latency, error=error)
    try:
        body = json.loads(reply.body)
    except (ValueError, RecursionError):
        return WorkerStatus(url, False, latency_ms=latency, error=f"{not_worker} that is not JSON")
    if not isinstance(body, dict):
        return WorkerStatus(url, False, latency_ms=latency, error=f"{not_worker} that is not a JSON object")
    return status_from(url, reply.status, body, latency)


def status_from(url: str, http_status: int, body: dict, latency: float) -> WorkerStatus:
    """A WorkerStatus from a /healthz object, each field checked; a bad required field makes
    the worker unusable, a bad optional one is dropped."""
    names = {
        key: body.get(key) if isinstance(body.get(key), str) and NAME.fullmatch(body[key]) else None
        for key in ("service", "runtime", "version", "build")
    }
    operations = body.get("operations") if isinstance(body.get("operations"), list) else []
    known = tuple(dict.fromkeys(op for op in operations[:64] if isinstance(op, str) and op in OPERATIONS))
    primary = body.get("primary") if body.get("primary") in OPERATIONS else None
    status = WorkerStatus(
        url=url,
        ok=False,
        service=names["service"],
        runtime=names["runtime"],
        version=names["version"],
        build=names["build"],
        primary=primary,
        operations=known,
        latency_ms=latency,
        max_inflight=bounded_int(body.get("max_inflight"), 4, MAX_INFLIGHT_CAP),
        max_bytes=bounded_int(body.get("max_bytes"), DEFAULT_MAX_BYTES, 1 << 40),
        max_pixels=bounded_int(body.get("max_pixels"), DEFAULT_MAX_PIXELS, 1 << 40),
    )
    status.error = health_error(names, http_status, body)
    status.ok = status.error is None
    return status


def health_error(names: dict, http_status: int, body: dict) -> str | None:
    """Why a /healthz object makes its worker unusable, or None when it is healthy."""
    bad = [key for key in ("service", "runtime") if names[key] is None]  # routing needs these
    if bad:
        return f"not a worker: /healthz field {bad[0]!r} is missing or not a short name"
    if http_status != 200 or body.get("status") != "ok":
        reason = body.get("reason") or body.get("status") or "not ok"
        shown = reason if isinstance(reason, str) and REASON.fullmatch(reason) else "reason not shown: unsafe text"
        return f"unhealthy (HTTP {http_status}, {shown})"
    return None


def bounded_int(value: object, default: int, high: int) -> int:
    """A positive integer field, capped; the default when absent or not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return default
    return min(value, high)


def short(text: str) -> str:
    """A content type as shown in a message: bounded and in a safe charset."""
    return re.sub(r"[^A-Za-z0-9./+-]", "?", text[:60])


def advertised_slots(statuses: list[WorkerStatus], ops: set[str]) -> int:
    """Strips the healthy workers say they take at once (max_inflight), summed over those that
    offer one of the plan's ops; at least 1."""
    return max(1, sum(s.max_inflight for s in statuses if s.ok and ops & set(s.operations)))


def worker_urls(config: CoordinatorConfig) -> tuple[str, ...]:
    """The configured workers, or a pooled stack's running instances (cached a few seconds)."""
    if config.pool_fleet is None:
        return config.workers
    from coordinator import pool_discovery

    urls = pool_discovery.worker_urls(config.pool_fleet, config.discovery_seconds)
    if not urls:
        raise NoWorkerError(None, "any", [], summary=f"no running instances in the {config.pool_fleet.label()}")
    return urls


def discover(config: CoordinatorConfig, session: Transport | None = None) -> list[WorkerStatus]:
    """Health of every configured worker, in config order. Failures of a worker are reported in
    its status; a pooled stack that cannot be listed raises ConfigError or NoWorkerError."""
    urls = worker_urls(config)
    own = session is None
    transport = session or Transport(max(1, len(urls)))
    try:
        return daemon_map(lambda url: check_worker(url, config.health_timeout, transport, config.tls), urls)
    finally:
        if own:
            transport.close()
