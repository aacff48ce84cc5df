"""The stack outputs: the file format the coordinator and the fleet tool read (infra/README.md)."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi

from infra.config import FleetSettings
from infra.pool import WorkerPool
from infra.worker_node import WorkerNode
from stripes.roles import SSH_USER


def _first_url(nodes: Sequence[WorkerNode], role: str) -> pulumi.Output[str] | None:
    return next((node.url for node in nodes if node.role == role), None)


def fleet_outputs(
    settings: FleetSettings,
    nodes: Sequence[WorkerNode],
    worker_token: pulumi.Input[str],
    pools: Sequence[WorkerPool] = (),
) -> dict[str, pulumi.Input]:
    """Name -> value for pulumi.export; worker_token stays a secret in state and in `pulumi stack output`.

    With pools, `workers` is empty (instances come and go) and `pools` names each Auto Scaling
    group; without, the file has exactly its old shape (no `pools` key).
    """
    pooled = {"pools": pulumi.Output.all(*[pool.descriptor for pool in pools])} if pools else {}
    return {
        **pooled,
        "workers": pulumi.Output.all(*[node.descriptor for node in nodes]),
        "worker_token": pulumi.Output.secret(worker_token),
        "python_worker_url": _first_url(nodes, "worker-python"),
        "nodejs_worker_url": _first_url(nodes, "worker-nodejs"),
        "project": settings.project,
        "stack": settings.stack,
        "region": settings.region,
        "ssh_user": SSH_USER,
    }
