"""Who may reach the workers: one security group, one rule per port, optional SSH key pair."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

ANYWHERE = "0.0.0.0/0"
# Egress is limited to what the first boot needs: apt (Ubuntu mirrors on HTTP, signed packages)
# and HTTPS for PyPI, npm and nodejs.org. DNS to the VPC resolver and NTP to Amazon Time Sync
# are not filtered by security groups, and replies to allowed ingress are always permitted.
EGRESS_PORTS = {80: "HTTP: apt mirrors (packages are signed)", 443: "HTTPS: PyPI, npm, nodejs.org"}


@dataclass
class FleetSecurityArgs:
    client_cidr: str
    worker_ports: Mapping[str, int]  # role -> port, for the roles that have workers
    admin_cidr: str | None = None  # SSH is opened only when this and the key are set
    ssh_public_key: str | None = None
    vpc_id: pulumi.Input[str] | None = None  # None: the default VPC
    tags: Mapping[str, str] = field(default_factory=dict)


class FleetSecurity(pulumi.ComponentResource):
    security_group_id: pulumi.Output[str]
    key_name: pulumi.Output[str] | None

    def __init__(self, name: str, args: FleetSecurityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("htp:infra:FleetSecurity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            description="Heterogeneous task processor workers",
            vpc_id=args.vpc_id,
            tags={**args.tags, "Name": f"{name}-sg"},
            opts=child,
        )
        for role, port in sorted(args.worker_ports.items()):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-{role}-in",
                security_group_id=group.id,
                description=f"{role} from the coordinator's network",
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                cidr_ipv4=args.client_cidr,
                tags=dict(args.tags),
                opts=child,
            )
        if args.admin_cidr and args.ssh_public_key:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-ssh-in",
                security_group_id=group.id,
                description="SSH from the admin network",
                ip_protocol="tcp",
                from_port=22,
                to_port=22,
                cidr_ipv4=args.admin_cidr,
                tags=dict(args.tags),
                opts=child,
            )
            key_pair = aws.ec2.KeyPair(
                f"{name}-ssh-key",
                public_key=args.ssh_public_key,
                tags=dict(args.tags),
                opts=child,
            )
            self.key_name = key_pair.key_name
        else:
            self.key_name = None
        for port, why in EGRESS_PORTS.items():
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-egress-{port}",
                security_group_id=group.id,
                description=why,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                cidr_ipv4=ANYWHERE,
                tags=dict(args.tags),
                opts=child,
            )
        self.security_group_id = group.id
        self.register_outputs({"security_group_id": group.id, "key_name": self.key_name})
