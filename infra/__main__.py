"""Pulumi program: config -> PKI, secrets, security, releases -> worker nodes -> exports (see infra/README.md)."""

# `pulumi up` runs this folder as a script in .venv, where `make setup` installed the repo's
# packages (pyproject.toml), so `infra.*` and `stripes.*` import as in tests.
import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.ami import worker_ami_id
from infra.bundle import bundle_files
from infra.config import load_settings
from infra.fleet_secrets import FleetSecrets, FleetSecretsArgs, stack_secrets_policy
from infra.fleet_tls import FleetTls, FleetTlsArgs
from infra.outputs import fleet_outputs
from infra.pool import WorkerPool, WorkerPoolArgs, pool_subnet_ids
from infra.releases import Release, ReleaseStore, ReleaseStoreArgs
from infra.security import FleetSecurity, FleetSecurityArgs
from infra.userdata import HostSecrets, render_cloud_config
from infra.worker_node import WorkerNode, WorkerNodeArgs
from stripes.roles import ROLE_SPECS, ROLES, parameter_prefix


def release_of(role: str) -> Release:
    """The role's worker files as a release, checked before any resource is declared."""
    try:
        return Release.of(role, bundle_files(role))
    except (OSError, ValueError) as exc:
        raise pulumi.RunError(str(exc)) from None


settings = load_settings()
tags = {"Project": settings.project, "Stack": settings.stack}
releases = {role: release_of(role) for role in ROLES if settings.count(role) > 0}

# Secret either way; it goes to SSM and the outputs, never into user-data.
worker_token = pulumi.Output.secret(
    settings.worker_token or random.RandomPassword("worker-token", length=40, special=False).result
)
# Made even with workerTls: false (the hosts' fetch expects the parameters; switching TLS back on
# then keeps the CA the coordinator already pins).
pki = FleetTls(
    "tls", FleetTlsArgs(project=settings.project, stack=settings.stack, client_certificate=settings.mutual_tls)
)
secrets = FleetSecrets(
    "secrets",
    FleetSecretsArgs(
        prefix=parameter_prefix(settings.project, settings.stack),
        token=worker_token,
        tls_key_pem=pki.server_key_pem,
        tls_cert_pem=pki.server_cert_pem,
        client_ca_pem=pki.ca_cert_pem if settings.mutual_tls else None,
        tags=tags,
    ),
)
host_secrets = HostSecrets(prefix=secrets.prefix, tls=settings.worker_tls, client_ca=settings.mutual_tls)

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
store = ReleaseStore(
    "releases",
    ReleaseStoreArgs(releases=releases, tags=tags, secrets_policy=stack_secrets_policy(secrets, settings.region)),
)
ami_id = worker_ami_id(settings.ami_id)

nodes, pools = [], []
for role, release in releases.items():
    spec, port = ROLE_SPECS[role], settings.port(role)
    # Parameter names only: no secret flows into the user-data (the policy pack checks).
    user_data = store.bucket_name.apply(
        lambda bucket, spec=spec, release=release, port=port: render_cloud_config(
            spec, release, bucket=bucket, region=settings.region, port=port, secrets=host_secrets
        )
    )
    if settings.worker_pools:
        pools.append(
            WorkerPool(
                role,
                WorkerPoolArgs(
                    spec=spec,
                    port=port,
                    tls=settings.worker_tls,
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
                    tls=settings.worker_tls,
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

for output_name, value in fleet_outputs(settings, nodes, secrets, pki, pools).items():
    pulumi.export(output_name, value)
