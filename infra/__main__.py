"""Pulumi program: config -> security, releases -> worker nodes -> exports (see infra/README.md)."""

# `pulumi up` runs this folder as a script in .venv, where `make setup` installed the repo's
# packages (pyproject.toml), so `infra.*` and `stripes.*` import as in tests.
import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.ami import worker_ami_id
from infra.bundle import bundle_files
from infra.config import load_settings
from infra.outputs import fleet_outputs
from infra.pool import WorkerPool, WorkerPoolArgs, pool_subnet_ids
from infra.releases import Release, ReleaseStore, ReleaseStoreArgs
from infra.security import FleetSecurity, FleetSecurityArgs
from infra.userdata import render_cloud_config
from infra.worker_node import WorkerNode, WorkerNodeArgs
from stripes.roles import ROLE_SPECS, ROLES


def release_of(role: str) -> Release:
    """The role's worker files as a release, checked before any resource is declared."""
    try:
        return Release.of(role, bundle_files(role))
    except (OSError, ValueError) as exc:
        raise pulumi.RunError(str(exc)) from None


settings = load_settings()
tags = {"Project": settings.project, "Stack": settings.stack}
releases = {role: release_of(role) for role in ROLES if settings.count(role) > 0}

# Secret either way, so everything derived from it (user-data, outputs) is encrypted in state.
worker_token = pulumi.Output.secret(
    settings.worker_token or random.RandomPassword("worker-token", length=40, special=False).result
)

security = FleetSecurity(
    "workers",
    FleetSecurityArgs(
        client_cidr=settings.client_cidr,
        worker_ports={role: settings.port(role) for role in releases},
        admin_cidr=settings.admin_cidr,
        ssh_public_key=settings.ssh_public_key,
        vpc_id=aws.ec2.get_subnet_output(id=settings.subnet_id).vpc_id if settings.subnet_id else None,
        tags=tags,
    ),
)
store = ReleaseStore("releases", ReleaseStoreArgs(releases=releases, tags=tags))
ami_id = worker_ami_id(settings.ami_id)

nodes, pools = [], []
for role, release in releases.items():
    spec, port = ROLE_SPECS[role], settings.port(role)
    user_data = pulumi.Output.all(store.bucket_name, worker_token).apply(
        lambda values, spec=spec, release=release, port=port: render_cloud_config(
            spec, release, bucket=values[0], region=settings.region, port=port, token=values[1]
        )
    )
    if settings.worker_pools:
        pools.append(
            WorkerPool(
                role,
                WorkerPoolArgs(
                    spec=spec,
                    port=port,
                    size=settings.pool_sizes[role],
                    ami_id=ami_id,
                    instance_type=settings.instance_type,
                    security_group_id=security.security_group_id,
                    user_data=user_data,
                    instance_profile=store.instance_profile_names[role],
                    subnet_ids=pool_subnet_ids(settings.subnet_id),
                    key_name=security.key_name,
                    network_in_target_mb=settings.network_in_target_mb,
                    tags=tags,
                ),
            )
        )
        continue
    for index in range(settings.count(role)):
        nodes.append(
            WorkerNode(
                f"{role}-{index}",
                WorkerNodeArgs(
                    spec=spec,
                    port=port,
                    ami_id=ami_id,
                    instance_type=settings.instance_type,
                    security_group_id=security.security_group_id,
                    user_data=user_data,
                    instance_profile=store.instance_profile_names[role],
                    subnet_id=settings.subnet_id,
                    key_name=security.key_name,
                    tags=tags,
                ),
            )
        )

for output_name, value in fleet_outputs(settings, nodes, worker_token, pools).items():
    pulumi.export(output_name, value)
