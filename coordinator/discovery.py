"""Ask every worker what it can do: GET /healthz, all at once, with a short timeout."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
import urllib3

from coordinator.config import CoordinatorConfig


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

    def offers(self, op: str) -> bool:
        return self.ok and op in self.operations


def describe_exception(exc: BaseException) -> str:
    """One short line for a requests failure (their str() can be a screenful)."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
        return "read timed out"
    if isinstance(exc, (requests.ConnectionError, urllib3.exceptions.HTTPError)):
        text = str(exc)
        for marker in ("Connection refused", "Connection reset", "Name or service not known",
                       "No route to host", "Remote end closed connection", "Broken pipe", "timed out"):
            if marker in text:
                return marker.lower()
        return "connection failed"
    return f"{type(exc).__name__}: {exc}"[:200]


def check_worker(url: str, timeout: float, session: requests.Session) -> WorkerStatus:
    started = time.perf_counter()
    try:
        response = session.get(f"{url}/healthz", timeout=(timeout, timeout))
        latency = (time.perf_counter() - started) * 1000
        body = response.json()
    except requests.RequestException as exc:
        return WorkerStatus(url, False, error=f"unreachable: {describe_exception(exc)}")
    except ValueError:
        return WorkerStatus(url, False, latency_ms=latency, error=f"/healthz HTTP {response.status_code} is not JSON")
    if not isinstance(body, dict):
        return WorkerStatus(url, False, latency_ms=latency, error="/healthz did not return an object")
    operations, inflight = body.get("operations"), body.get("max_inflight")
    status = WorkerStatus(
        url=url, ok=False, service=body.get("service"), runtime=body.get("runtime"),
        version=body.get("version"), primary=body.get("primary"),
        operations=tuple(op for op in operations if isinstance(op, str)) if isinstance(operations, list) else (),
        latency_ms=latency,
        max_inflight=inflight if isinstance(inflight, int) and inflight > 0 else 4,
    )
    if response.status_code != 200 or body.get("status") != "ok":
        reason = body.get("reason") or body.get("status") or "not ok"
        status.error = f"unhealthy (HTTP {response.status_code}, {reason})"
    else:
        status.ok = True
    return status


def discover(config: CoordinatorConfig, session: requests.Session | None = None) -> list[WorkerStatus]:
    """Health of every configured worker, in config order. Never raises: failures are reported."""
    own_session = session is None
    session = session or requests.Session()
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(config.workers))) as pool:
            return list(pool.map(lambda url: check_worker(url, config.health_timeout, session), config.workers))
    finally:
        if own_session:
            session.close()
