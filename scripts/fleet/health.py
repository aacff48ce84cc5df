"""A worker's GET /healthz, read as the contract defines it (tests/contract/openapi.json)."""
from __future__ import annotations

from dataclasses import dataclass, field

import requests


@dataclass(frozen=True)
class Health:
    error: str = ""            # why there is no usable answer ('' when the worker answered)
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


def check_health(url: str, timeout: float = 3) -> Health:
    """One bounded GET of `url`/healthz; never raises for network or body faults."""
    try:
        response = requests.get(f"{url}/healthz", timeout=timeout)
    except requests.ConnectionError as exc:
        refused = "refused" in str(exc).lower()
        return Health(error="connection refused" if refused else "unreachable")
    except requests.Timeout:
        return Health(error=f"no answer within {timeout:g}s")
    except requests.RequestException as exc:
        return Health(error=type(exc).__name__)
    try:
        body = response.json()
    except ValueError:
        return Health(error=f"HTTP {response.status_code} without a JSON body")
    if not isinstance(body, dict):
        return Health(error=f"HTTP {response.status_code} with a non-object body")
    operations = body.get("operations")
    return Health(http_status=response.status_code, status=str(body.get("status", "")),
                  runtime=str(body.get("runtime", "")), version=str(body.get("version", "")),
                  build=str(body.get("build", "")),
                  operations=tuple(operations) if isinstance(operations, list) else ())
