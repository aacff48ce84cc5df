"""A worker pool's settings in the EC2 / Auto Scaling API's own shape, and the constants behind them.

No Pulumi here: infra/pool.py declares the same settings as resources, the fleet tool starts
instance refreshes with `refresh_preferences()`, and tests create real groups on a moto server
from `template_data` / `group_request` (tests/infra/test_pools.py).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROOT_VOLUME_GB = 8  # the Ubuntu image's size; the OS plus Node or a venv fit with room to spare


@dataclass(frozen=True)
class PoolSize:
    min: int
    max: int
    desired: int


ROOT_DEVICE = "/dev/sda1"  # the Ubuntu image's root device name
# The issue-13 trial measured 50-65 s from launch to a healthy worker; twice the slowest leaves
# room for a slow apt mirror. Health checks are EC2's, so the grace only delays their verdict.
BOOT_GRACE_SECONDS = 120
INSTANCE_WARMUP_SECONDS = 120  # scaling and refresh count a new host only after its first boot
# Refresh: launch the new host before the old one goes (never below the configured size), stop
# half-way to let a bad release show itself, and go back to the previous template on failure.
REFRESH_MIN_HEALTHY_PERCENT = 100
REFRESH_MAX_HEALTHY_PERCENT = 200
REFRESH_CHECKPOINTS = (50, 100)
REFRESH_CHECKPOINT_DELAY_SECONDS = 60
SCALING_METRIC = "ASGAverageNetworkIn"  # infra/README.md "Scaling signal" says why not CPU
METADATA = {"http_tokens": "required", "http_put_response_hop_limit": 1, "http_endpoint": "enabled"}


def encode_user_data(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _api_tags(tags: Mapping[str, str]) -> list[dict]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def template_data(args: Any, *, ami_id: str, security_group_id: str, user_data: str, instance_profile: str) -> dict:
    """CreateLaunchTemplate's LaunchTemplateData for these args, with their values resolved."""
    burstable = args.instance_type.startswith("t")
    return {
        "ImageId": ami_id,
        "InstanceType": args.instance_type,
        "IamInstanceProfile": {"Name": instance_profile},
        "UserData": encode_user_data(user_data),
        "NetworkInterfaces": [
            {
                "DeviceIndex": 0,
                "AssociatePublicIpAddress": True,
                "DeleteOnTermination": True,
                "Groups": [security_group_id],
            }
        ],
        "MetadataOptions": {
            "HttpTokens": METADATA["http_tokens"],
            "HttpPutResponseHopLimit": METADATA["http_put_response_hop_limit"],
            "HttpEndpoint": METADATA["http_endpoint"],
        },
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {
                    "VolumeType": "gp3",
                    "VolumeSize": ROOT_VOLUME_GB,
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        **({"CreditSpecification": {"CpuCredits": "standard"}} if burstable else {}),
        "TagSpecifications": [
            {"ResourceType": kind, "Tags": _api_tags(args.instance_tags)} for kind in ("instance", "volume")
        ],
    }


def group_request(args: Any, *, name: str, template_id: str, version: str, subnet_ids: Sequence[str]) -> dict:
    """CreateAutoScalingGroup's parameters for these args."""
    return {
        "AutoScalingGroupName": name,
        "MinSize": args.size.min,
        "MaxSize": args.size.max,
        "DesiredCapacity": args.size.desired,
        "LaunchTemplate": {"LaunchTemplateId": template_id, "Version": version},
        "VPCZoneIdentifier": ",".join(subnet_ids),
        "HealthCheckType": "EC2",
        "HealthCheckGracePeriod": BOOT_GRACE_SECONDS,
        "DefaultInstanceWarmup": INSTANCE_WARMUP_SECONDS,
        "Tags": [{**tag, "PropagateAtLaunch": True} for tag in _api_tags(args.instance_tags)],
    }


def refresh_preferences() -> dict:
    """StartInstanceRefresh's Preferences: the ones `pulumi up` gives the group, for `fleet rollout`."""
    return {
        "MinHealthyPercentage": REFRESH_MIN_HEALTHY_PERCENT,
        "MaxHealthyPercentage": REFRESH_MAX_HEALTHY_PERCENT,
        "CheckpointPercentages": list(REFRESH_CHECKPOINTS),
        "CheckpointDelay": REFRESH_CHECKPOINT_DELAY_SECONDS,
        "InstanceWarmup": INSTANCE_WARMUP_SECONDS,
        "SkipMatching": True,
        "AutoRollback": True,
    }
