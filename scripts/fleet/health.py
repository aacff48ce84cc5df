"""A worker's GET /healthz, read as the contract defines it (tests/contract/openapi.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from scripts.fleet import probe
from scripts.fleet.tls import Pinning


@dataclass(frozen=True)
class Health:
    error: str = ""  # why there is no usable answer ('' when the worker answered)
    http_status: int = 0
    status: str = ""
    runtime: str = ""
    version: str = ""
    build: str = ""
    operations: tuple[str, ...] = field(default_factory=tuple)

    def problem(self, runtime: str, build: str | None = None) -> str | None:
        """What keeps this worker from being ready (None when ready)."""
        if self.error:
            return f"/healthz {self.error}"
        if self.http_status != 200 or self.status != "ok":
            return f"/healthz {self.http_status} status={self.status or '?'}"
        if self.runtime != runtime:
            return f"/healthz runtime {self.runtime or '?'} (expected {runtime})"
        if build is not None and self.build != build:
            return f"/healthz build {self.build or '?'} (expected {build})"
        return None


MAX_HEALTH_BYTES = 64 * 1024  # a real /healthz is under 1 KB; a hostile one must not fill memory


def check_health(url: str, timeout: float = 3, tls: Pinning | None = None) -> Health:
    """GET `url`/healthz: no silence over `timeout` seconds and the whole exchange (connect,
    TLS handshake, request, reply) within `timeout` + 1 (a reply that drips a byte at a time
    beats any per-read timeout); never raises for network or body faults. Redirects are not
    followed: a worker answers its own /healthz. With `tls`, an https:// URL is checked
    against the pinned CA and name."""
    try:
        answer = probe.request(
            "GET", f"{url}/healthz", tls=tls, idle=timeout, total=timeout + 1, max_body=MAX_HEALTH_BYTES
        )
    except probe.ProbeError as exc:
        return Health(error=exc.why)
    status = answer.status
    if 300 <= status < 400 and answer.headers.get("Location"):
        return Health(error=f"HTTP {status} redirect (not followed)")
    if len(answer.body) > MAX_HEALTH_BYTES:
        return Health(error=f"HTTP {status} a body over {MAX_HEALTH_BYTES} bytes")
    try:
        body = json.loads(answer.body.decode("utf-8"))
    except (ValueError, RecursionError):
        return Health(error=f"HTTP {status} without a JSON body")
    if not isinstance(body, dict):
        return Health(error=f"HTTP {status} with a non-object body")
    operations = body.get("operations")
    return Health(
        http_status=status,
        status=str(body.get("status", "")),
        runtime=str(body.get("runtime", "")),
        version=str(body.get("version", "")),
        build=str(body.get("build", "")),
        operations=tuple(operations) if isinstance(operations, list) else (),
    )
