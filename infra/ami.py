"""The machine image: the latest Ubuntu 24.04 LTS (x86_64) from Canonical, unless one is pinned."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

CANONICAL_OWNER_ID = "099720109477"  # Canonical's AWS account: only its images match
UBUNTU_2404_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"


def worker_ami_id(pinned: str | None = None) -> pulumi.Input[str]:
    if pinned:
        return pinned
    image = aws.ec2.get_ami_output(
        owners=[CANONICAL_OWNER_ID],
        most_recent=True,
        filters=[
            aws.ec2.GetAmiFilterArgs(name="name", values=[UBUNTU_2404_NAME]),
            aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
            aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
        ],
    )
    return image.id
