"""A worker pool: one launch template and one Auto Scaling group per role (workerPools: true).

The launch template carries what infra/worker_node.py sets on a fixed instance (the same
user-data, IMDSv2 with hop limit 1, encrypted gp3 root, tags, security group, instance profile).
The settings themselves live in infra/pool_spec.py, which also renders them in the EC2/Auto
Scaling API shape, so tests create real groups from them on a moto server (tests/infra/test_pools.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.pool_spec import (
    BOOT_GRACE_SECONDS,
    INSTANCE_WARMUP_SECONDS,
    METADATA,
    ROOT_DEVICE,
    ROOT_VOLUME_GB,
    SCALING_METRIC,
    PoolSize,
    encode_user_data,
    refresh_preferences,
)
from stripes.roles import RoleSpec


@dataclass
class WorkerPoolArgs:
    spec: RoleSpec
    port: int
    size: PoolSize
    ami_id: pulumi.Input[str]
    instance_type: str
    security_group_id: pulumi.Input[str]
    user_data: pulumi.Input[str]  # the rendered cloud-config (infra/userdata.py), plain text
    instance_profile: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[str]]
    network_in_target_mb: int = 300  # MB received per instance per 5-minute period
    key_name: pulumi.Input[str] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)  # Project and Stack
    tls: bool = True  # the workers serve HTTPS (workerTls); False: plain HTTP

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def instance_tags(self) -> dict[str, str]:
        return {**self.tags, "Name": f"{self.spec.role}-pool", "Role": self.spec.role}

    @property
    def scales(self) -> bool:
        """A scaling policy only where the group may change size."""
        return self.size.max > self.size.min


def policy_target_bytes(args: WorkerPoolArgs) -> float:
    return float(args.network_in_target_mb * 1_000_000)


class WorkerPool(pulumi.ComponentResource):
    group_name: pulumi.Output[str]
    descriptor: pulumi.Output[dict]

    def __init__(self, name: str, args: WorkerPoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("htp:infra:WorkerPool", name, None, opts)
        self.role = args.spec.role
        self.args = args
        self.template = self._template(name, args)
        self.group = self._group(name, args)
        self.policy = self._policy(name, args) if args.scales else None
        self.group_name = self.group.name
        self.descriptor = pulumi.Output.all(self.group.name, self.template.id).apply(
            lambda values: {
                "name": values[0],
                "role": args.spec.role,
                "runtime": args.spec.runtime,
                "port": args.port,
                "scheme": args.scheme,  # worker URLs are {scheme}://<instance address>:{port}
                "min": args.size.min,
                "max": args.size.max,
                "desired": args.size.desired,
                "launch_template_id": values[1],
                "operations": list(args.spec.operations),
            }
        )
        self.register_outputs({"group_name": self.group_name, "launch_template_id": self.template.id})

    def _template(self, name: str, args: WorkerPoolArgs) -> aws.ec2.LaunchTemplate:
        tags = args.instance_tags
        burstable = args.instance_type.startswith("t")
        return aws.ec2.LaunchTemplate(
            f"{name}-template",
            image_id=args.ami_id,
            instance_type=args.instance_type,
            key_name=args.key_name,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(name=args.instance_profile),
            user_data=pulumi.Output.from_input(args.user_data).apply(encode_user_data),
            network_interfaces=[
                aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                    device_index=0,
                    associate_public_ip_address="true",
                    delete_on_termination="true",
                    security_groups=[args.security_group_id],
                )
            ],
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(**METADATA),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=ROOT_DEVICE,
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_type="gp3", volume_size=ROOT_VOLUME_GB, encrypted="true", delete_on_termination="true"
                    ),
                )
            ],
            credit_specification=(
                aws.ec2.LaunchTemplateCreditSpecificationArgs(cpu_credits="standard") if burstable else None
            ),
            monitoring=aws.ec2.LaunchTemplateMonitoringArgs(enabled=False),
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
                for kind in ("instance", "volume")
            ],
            # New user-data (a new release) is a new version, which the group's refresh rolls out.
            update_default_version=True,
            tags={**args.tags, "Role": args.spec.role},
            # A newer Ubuntu image every week must not roll the pool; new templates get it.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["imageId"]),
        )

    def _group(self, name: str, args: WorkerPoolArgs) -> aws.autoscaling.Group:
        prefs = refresh_preferences()
        return aws.autoscaling.Group(
            f"{name}-group",
            min_size=args.size.min,
            max_size=args.size.max,
            desired_capacity=args.size.desired,
            vpc_zone_identifiers=args.subnet_ids,
            health_check_type="EC2",
            health_check_grace_period=BOOT_GRACE_SECONDS,
            default_instance_warmup=INSTANCE_WARMUP_SECONDS,
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                id=self.template.id, version=self.template.latest_version.apply(str)
            ),
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    min_healthy_percentage=prefs["MinHealthyPercentage"],
                    max_healthy_percentage=prefs["MaxHealthyPercentage"],
                    checkpoint_percentages=prefs["CheckpointPercentages"],
                    checkpoint_delay=str(prefs["CheckpointDelay"]),
                    instance_warmup=str(prefs["InstanceWarmup"]),
                    skip_matching=prefs["SkipMatching"],
                    auto_rollback=prefs["AutoRollback"],
                ),
            ),
            tags=[
                aws.autoscaling.GroupTagArgs(key=key, value=value, propagate_at_launch=True)
                for key, value in sorted(args.instance_tags.items())
            ],
            wait_for_capacity_timeout="0",  # `fleet wait` reports boot progress; pulumi need not block
            # The scaling policy and `fleet scale` move the desired size; `pulumi up` must not undo that.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["desiredCapacity"]),
        )

    def _policy(self, name: str, args: WorkerPoolArgs) -> aws.autoscaling.Policy:
        return aws.autoscaling.Policy(
            f"{name}-scaling",
            autoscaling_group_name=self.group.name,
            policy_type="TargetTrackingScaling",
            estimated_instance_warmup=INSTANCE_WARMUP_SECONDS,
            target_tracking_configuration=aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
                predefined_metric_specification=aws.autoscaling.PolicyTargetTrackingConfigurationPredefinedMetricSpecificationArgs(
                    predefined_metric_type=SCALING_METRIC
                ),
                target_value=policy_target_bytes(args),
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )


def pool_subnet_ids(subnet_id: str | None) -> pulumi.Input[Sequence[str]]:
    """The configured subnet, else every default subnet of the default VPC (one per zone), so a
    zone's outage or a missing instance type in one zone does not stop the pool."""
    if subnet_id:
        return [subnet_id]
    vpc = aws.ec2.get_vpc_output(default=True)
    return aws.ec2.get_subnets_output(
        filters=[
            aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[vpc.id]),
            aws.ec2.GetSubnetsFilterArgs(name="default-for-az", values=["true"]),
        ]
    ).ids
