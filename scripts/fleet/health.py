"""A worker's GET /healthz, read as the contract defines it (tests/contract/openapi.json)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import requests

from scripts.fleet.tls import Pinning, reason


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


def _bounded_json(response: requests.Response):
    """The body as JSON, read up to MAX_HEALTH_BYTES; ValueError when larger or not JSON."""
    body = bytearray()
    for chunk in response.iter_content(16384):
        body += chunk
        if len(body) > MAX_HEALTH_BYTES:
            raise ValueError(f"a body over {MAX_HEALTH_BYTES} bytes")
    return json.loads(body.decode("utf-8"))


def check_health(url: str, timeout: float = 3, tls: Pinning | None = None) -> Health:
    """GET `url`/healthz, the whole exchange within `timeout` + 1 seconds (a reply that drips
    a byte at a time beats any per-read timeout); never raises for network or body faults.
    A host that drips keeps a daemon thread until it stops; the caller moves on.
    With `tls`, an https:// URL is checked against the pinned CA and name."""
    result: list[Health] = []
    probe = threading.Thread(target=lambda: result.append(_get_health(url, timeout, tls)), daemon=True)
    probe.start()
    probe.join(timeout + 1)
    return result[0] if result else Health(error=f"no complete answer within {timeout + 1:g}s")


def _get_health(url: str, timeout: float, tls: Pinning | None) -> Health:
    """One GET with per-read timeouts and a capped body. Redirects are not followed: a worker
    answers its own /healthz."""
    try:
        with (
            tls.session() if tls else requests.Session() as session,
            session.get(f"{url}/healthz", timeout=timeout, stream=True, allow_redirects=False) as response,
        ):
            status = response.status_code
            if response.is_redirect:
                return Health(error=f"HTTP {status} redirect (not followed)")
            try:
                body = _bounded_json(response)
            except (ValueError, RecursionError) as exc:
                detail = str(exc) if str(exc).startswith("a body over") else "without a JSON body"
                return Health(error=f"HTTP {status} {detail}")
    except requests.exceptions.SSLError as exc:
        return Health(error=f"TLS {reason(exc)}")
    except requests.ConnectionError as exc:
        refused = "refused" in str(exc).lower()
        return Health(error="connection refused" if refused else "unreachable")
    except requests.Timeout:
        # A plain-HTTP server behind an https:// URL waits for a request line and never answers the handshake.
        hint = " (https: is it serving TLS?)" if url.startswith("https://") else ""
        return Health(error=f"no answer within {timeout:g}s{hint}")
    except requests.RequestException as exc:
        return Health(error=type(exc).__name__)
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
