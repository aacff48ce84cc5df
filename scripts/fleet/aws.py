"""The stack's EC2 instances, found by the tags infra/ puts on every worker node."""

from __future__ import annotations

from dataclasses import dataclass

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from scripts.fleet.config import RUNTIME_OF_ROLE, FleetConfig
from scripts.fleet.errors import FleetError

# Gone or going: never part of the fleet.
DEAD_STATES = ("shutting-down", "terminated")


@dataclass(frozen=True)
class Instance:
    instance_id: str
    name: str
    role: str
    state: str
    public_ip: str
    system_status: str = "unknown"
    instance_status: str = "unknown"
    group: str = ""  # the Auto Scaling group that launched it ("" for a fixed instance)

    @property
    def checks(self) -> str:
        """'ok' when both EC2 status checks pass, else what each reports."""
        if self.system_status == self.instance_status:
            return self.system_status
        return f"system {self.system_status}, instance {self.instance_status}"


def client(config: FleetConfig, service: str):
    """A boto3 client for the stack's region (and endpoint), with bounded retries and timeouts."""
    return boto3.client(
        service,
        region_name=config.region,
        endpoint_url=config.endpoint_url,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=20),
    )


def ec2_client(config: FleetConfig):
    return client(config, "ec2")


def aws_error(action: str, exc: Exception) -> FleetError:
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return FleetError(
            "no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY (or run `aws configure`)"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return FleetError(f"AWS {action} failed: {error.get('Code', '?')}: {error.get('Message', str(exc))}")
    if isinstance(exc, EndpointConnectionError):
        return FleetError(f"cannot reach the AWS endpoint for {action}: {exc}")
    if isinstance(exc, NoRegionError):
        return FleetError("no AWS region; pass --region or set AWS_REGION")
    return FleetError(f"AWS {action} failed: {exc}")


def _tag(instance: dict, key: str) -> str:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == key), "")


def fleet_instances(config: FleetConfig, client=None) -> list[Instance]:
    """Every live instance tagged Project/Stack/Role for this stack, with its status checks."""
    client = client or ec2_client(config)
    filters = [
        {"Name": "tag:Project", "Values": [config.project]},
        {"Name": "tag:Stack", "Values": [config.stack]},
        {"Name": "tag:Role", "Values": list(RUNTIME_OF_ROLE)},
    ]
    found = []
    try:
        for page in client.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                found.extend(i for i in reservation["Instances"] if i["State"]["Name"] not in DEAD_STATES)
        statuses = {}
        ids = [i["InstanceId"] for i in found]
        if ids:
            pages = client.get_paginator("describe_instance_status").paginate(InstanceIds=ids, IncludeAllInstances=True)
            for page in pages:
                for status in page["InstanceStatuses"]:
                    statuses[status["InstanceId"]] = status
    except (BotoCoreError, ClientError) as exc:
        raise aws_error("DescribeInstances", exc) from None
    instances = []
    for raw in found:
        status = statuses.get(raw["InstanceId"], {})
        instances.append(
            Instance(
                instance_id=raw["InstanceId"],
                name=_tag(raw, "Name"),
                role=_tag(raw, "Role"),
                state=raw["State"]["Name"],
                public_ip=raw.get("PublicIpAddress", ""),
                system_status=status.get("SystemStatus", {}).get("Status", "unknown"),
                instance_status=status.get("InstanceStatus", {}).get("Status", "unknown"),
                group=_tag(raw, "aws:autoscaling:groupName"),
            )
        )
    if not instances:
        raise FleetError(
            f"no EC2 instances tagged Project={config.project} Stack={config.stack} "
            f"in {config.region}; is the stack up (`pulumi up`)?"
        )
    return sorted(instances, key=lambda i: (i.name, i.instance_id))
