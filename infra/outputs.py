"""The stack outputs: the file format the coordinator and the fleet tool read (infra/README.md)."""

from __future__ import annotations

from typing import Optional, Sequence

import pulumi

from infra.config import FleetSettings
from stripes.roles import SSH_USER
from infra.worker_node import WorkerNode


def _first_url(nodes: Sequence[WorkerNode], role: str) -> Optional[pulumi.Output[str]]:
    return next((node.url for node in nodes if node.role == role), None)


def fleet_outputs(
    settings: FleetSettings, nodes: Sequence[WorkerNode], worker_token: pulumi.Input[str]
) -> dict[str, pulumi.Input]:
    """Name -> value for pulumi.export; worker_token stays a secret in state and in `pulumi stack output`."""
    return {
        "workers": pulumi.Output.all(*[node.descriptor for node in nodes]),
        "worker_token": pulumi.Output.secret(worker_token),
        "python_worker_url": _first_url(nodes, "worker-python"),
        "nodejs_worker_url": _first_url(nodes, "worker-nodejs"),
        "project": settings.project,
        "stack": settings.stack,
        "region": settings.region,
        "ssh_user": SSH_USER,
    }
