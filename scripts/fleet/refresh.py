"""`fleet refresh-secrets`: hosts fetch the SSM secrets now, then every worker is checked to
present the server certificate held in `worker-tls-cert` (SHA-256 of the DER), over a
handshake verified against the pinned CA and name. Cert rotation = `pulumi up` (new server
certificate, same CA) + this command (or the hosts' timer within a minute)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from scripts.fleet import parameters, probe, tls, tokens
from scripts.fleet.config import FleetConfig
from scripts.fleet.errors import USAGE, WAIT_TIMEOUT, FleetError
from scripts.fleet.tokens import Endpoint
from scripts.fleet.trigger import Trigger
from stripes.roles import PARAM_TLS_CERT


def presented(config: FleetConfig, targets: list[Endpoint]) -> dict[str, str]:
    """{name: SHA-256 fingerprint of the certificate it presents, or 'error: ...'}."""

    def one(target: Endpoint) -> str:
        try:
            return tls.sha256(probe.peer_certificate(target.url, config.tls))
        except probe.ProbeError as exc:
            return f"error: {exc.why}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip((t.name for t in targets), pool.map(one, targets), strict=True))


def refresh(config: FleetConfig, ssm, trigger: Trigger, timeout: float, interval: float) -> int:
    if config.tls is None:
        raise FleetError(f"{config.outputs_path} has no worker_ca_pem: the fleet has no TLS to check", USAGE)
    name = config.parameter(PARAM_TLS_CERT)
    wanted = tls.sha256(tls.first_certificate(parameters.get_value(ssm, name), name))
    targets = tokens.endpoints(config)
    problems = trigger(targets)
    note = "" if not problems else f" (trigger failed on {'; '.join(problems)}: waiting for their timer)"
    print(f"hosts asked to fetch their secrets{note}; {name} is {wanted[:23]}...", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    while True:
        lagging = {n: got for n, got in presented(config, targets).items() if got != wanted}
        if not lagging:
            print(f"all {len(targets)} workers present the certificate in {name} (sha256 {wanted})")
            return 0
        if time.monotonic() >= deadline:
            shown = "; ".join(f"{n}: {_short(got)}" for n, got in sorted(lagging.items()))
            raise FleetError(f"after {timeout:g}s not every worker presents {name}: {shown}", WAIT_TIMEOUT)
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def _short(got: str) -> str:
    return got if got.startswith("error: ") else f"sha256 {got[:23]}... (another certificate)"
