"""The stack outputs: the file format the coordinator and the fleet tool read (infra/README.md)."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi

from infra.config import FleetSettings
from infra.fleet_secrets import FleetSecrets
from infra.fleet_tls import FleetTls
from infra.pool import WorkerPool
from infra.worker_node import WorkerNode
from stripes.roles import FLEET_TLS_NAME, SSH_USER


def _first_url(nodes: Sequence[WorkerNode], role: str) -> pulumi.Output[str] | None:
    return next((node.url for node in nodes if node.role == role), None)


def _tls_outputs(settings: FleetSettings, pki: FleetTls) -> dict[str, pulumi.Input]:
    """What the coordinator pins: the CA and the name (none with workerTls: false, whose URLs are http://)."""
    if not settings.worker_tls:
        return {}
    found: dict[str, pulumi.Input] = {"worker_ca_pem": pki.ca_cert_pem, "worker_tls_name": FLEET_TLS_NAME}
    if settings.mutual_tls:
        found["worker_client_cert_pem"] = pulumi.Output.secret(pki.client_cert_pem)
        found["worker_client_key_pem"] = pulumi.Output.secret(pki.client_key_pem)
    return found


def fleet_outputs(
    settings: FleetSettings,
    nodes: Sequence[WorkerNode],
    secrets: FleetSecrets,
    pki: FleetTls,
    pools: Sequence[WorkerPool] = (),
) -> dict[str, pulumi.Input]:
    """Name -> value for pulumi.export; the token and client key stay secrets in state and in `pulumi stack output`.

    With pools, `workers` is empty (instances come and go) and `pools` names each Auto Scaling
    group; without, there is no `pools` key. `worker_token` is the SSM parameter's value as the
    state knows it: after `fleet rotate-token`, `pulumi refresh` brings the rotated one.
    """
    pooled = {"pools": pulumi.Output.all(*[pool.descriptor for pool in pools])} if pools else {}
    return {
        **pooled,
        **_tls_outputs(settings, pki),
        "workers": pulumi.Output.all(*[node.descriptor for node in nodes]),
        "worker_token": pulumi.Output.secret(secrets.token),
        "secret_parameters": dict(secrets.names),
        "python_worker_url": _first_url(nodes, "worker-python"),
        "nodejs_worker_url": _first_url(nodes, "worker-nodejs"),
        "project": settings.project,
        "stack": settings.stack,
        "region": settings.region,
        "ssh_user": SSH_USER,
    }
