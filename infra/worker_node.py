"""One EC2 instance running one worker, as a component with the outputs the coordinator needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.pool_spec import ROOT_VOLUME_GB  # one size for fixed and pooled hosts
from stripes.roles import RoleSpec


@dataclass
class WorkerNodeArgs:
    spec: RoleSpec
    port: int
    ami_id: pulumi.Input[str]
    instance_type: str
    security_group_id: pulumi.Input[str]
    user_data: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    subnet_id: str | None = None  # None: the default VPC's default subnet
    key_name: pulumi.Input[str] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)  # Project and Stack
    tls: bool = True  # the worker serves HTTPS (workerTls); False: plain HTTP

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


class WorkerNode(pulumi.ComponentResource):
    instance_id: pulumi.Output[str]
    public_ip: pulumi.Output[str]
    url: pulumi.Output[str]
    descriptor: pulumi.Output[dict]

    def __init__(self, name: str, args: WorkerNodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("htp:infra:WorkerNode", name, None, opts)
        self.role = args.spec.role
        tags = {**args.tags, "Name": name, "Role": args.spec.role}
        burstable = args.instance_type.startswith("t")
        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=args.ami_id,
            instance_type=args.instance_type,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[args.security_group_id],
            associate_public_ip_address=True,
            key_name=args.key_name,
            iam_instance_profile=args.instance_profile,
            user_data=args.user_data,
            # New worker files mean a new host, never a half-updated one (the fleet tool deploys in place).
            user_data_replace_on_change=True,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_tokens="required",  # IMDSv2 only
                http_put_response_hop_limit=1,  # no IMDS from containers on the host
                http_endpoint="enabled",
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3",
                volume_size=ROOT_VOLUME_GB,
                encrypted=True,
                delete_on_termination=True,
                tags=tags,
            ),
            # t3 and later default to "unlimited" CPU credits, which bill for sustained load.
            credit_specification=(
                aws.ec2.InstanceCreditSpecificationArgs(cpu_credits="standard") if burstable else None
            ),
            monitoring=False,
            tags=tags,
            # A newer Ubuntu image every week must not replace running workers; new nodes get it.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["ami"]),
        )
        self.instance = instance
        self.instance_id = instance.id
        self.public_ip = instance.public_ip
        self.url = instance.public_ip.apply(lambda ip: f"{args.scheme}://{ip}:{args.port}")
        self.descriptor = pulumi.Output.all(instance.id, instance.public_ip, self.url).apply(
            lambda values: {
                "name": name,
                "role": args.spec.role,
                "runtime": args.spec.runtime,
                "url": values[2],
                "public_ip": values[1],
                "instance_id": values[0],
                "operations": list(args.spec.operations),
            }
        )
        self.register_outputs({"instance_id": self.instance_id, "public_ip": self.public_ip, "url": self.url})
