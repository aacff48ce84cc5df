"""The stack's worker pools (Auto Scaling groups, workerPools: true): find, scale, roll out.

Groups are found by the tags infra/pool.py puts on them (Project, Stack, Role), so the tool
works from the live account, not from a list frozen at `pulumi up`. Each function takes an
optional client so the policy (what counts as done, what to print) is tested without AWS.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from infra.pool_spec import refresh_preferences
from scripts.fleet import errors
from scripts.fleet.aws import aws_error, client
from scripts.fleet.config import RUNTIME_OF_ROLE, FleetConfig
from scripts.fleet.errors import FleetError

GROUP_TAG = "aws:autoscaling:groupName"  # EC2 puts it on every instance a group launched
REFRESH_DONE = {
    "Successful": errors.OK,
    "Failed": errors.FAILED,
    "Cancelled": errors.FAILED,
    "RollbackSuccessful": errors.ROLLED_BACK,
    "RollbackFailed": errors.ROLLBACK_FAILED,
    "Baking": None,
}  # Baking: replaced, still inside the bake time; keep following


@dataclass(frozen=True)
class PoolInstance:
    instance_id: str
    lifecycle: str  # Pending, InService, Terminating, ...
    health: str  # Healthy | Unhealthy
    template_version: str


@dataclass(frozen=True)
class Pool:
    name: str
    role: str
    min: int
    max: int
    desired: int
    template_version: str
    instances: tuple[PoolInstance, ...]

    @property
    def in_service(self) -> int:
        return sum(i.lifecycle == "InService" for i in self.instances)

    @property
    def healthy(self) -> int:
        return sum(i.lifecycle == "InService" and i.health == "Healthy" for i in self.instances)

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "min": self.min,
            "max": self.max,
            "desired": self.desired,
            "in_service": self.in_service,
            "healthy": self.healthy,
            "template_version": self.template_version,
            "instances": [vars(i) for i in self.instances],
        }


def autoscaling_client(config: FleetConfig):
    return client(config, "autoscaling")


def _tags(group: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in group.get("Tags", [])}


def _version(entry: dict) -> str:
    return str((entry.get("LaunchTemplate") or {}).get("Version", "?"))


def _pool(group: dict) -> Pool:
    return Pool(
        name=group["AutoScalingGroupName"],
        role=_tags(group).get("Role", "?"),
        min=group["MinSize"],
        max=group["MaxSize"],
        desired=group["DesiredCapacity"],
        template_version=_version(group),
        instances=tuple(
            sorted(
                (
                    PoolInstance(i["InstanceId"], i["LifecycleState"], i["HealthStatus"], _version(i))
                    for i in group.get("Instances", [])
                ),
                key=lambda i: i.instance_id,
            )
        ),
    )


def find_pools(config: FleetConfig, client=None) -> list[Pool]:
    """The stack's groups, by tag; [] when the stack has none (a fixed fleet)."""
    client = client or autoscaling_client(config)
    found = []
    try:
        for page in client.get_paginator("describe_auto_scaling_groups").paginate():
            for group in page["AutoScalingGroups"]:
                tags = _tags(group)
                if (tags.get("Project"), tags.get("Stack")) == (config.project, config.stack) and tags.get(
                    "Role"
                ) in RUNTIME_OF_ROLE:
                    found.append(_pool(group))
    except (BotoCoreError, ClientError) as exc:
        raise aws_error("DescribeAutoScalingGroups", exc) from None
    return sorted(found, key=lambda p: p.name)


def pool_named(config: FleetConfig, name: str, client=None) -> Pool:
    """A pool by its group name or its role (worker-python)."""
    pools = find_pools(config, client)
    for pool in pools:
        if name in (pool.name, pool.role):
            return pool
    known = ", ".join(f"{p.name} ({p.role})" for p in pools) or "none"
    raise FleetError(
        f"no pool {name!r} tagged Project={config.project} Stack={config.stack} in {config.region} (known: {known})",
        errors.USAGE,
    )


def scale(config: FleetConfig, name: str, size: int, client=None) -> Pool:
    client = client or autoscaling_client(config)
    pool = pool_named(config, name, client)
    if not pool.min <= size <= pool.max:
        raise FleetError(
            f"{pool.name} holds {pool.min}..{pool.max} instances; {size} is outside that "
            "(change the pool's min/max in the stack config and `pulumi up`)",
            errors.USAGE,
        )
    try:
        client.set_desired_capacity(AutoScalingGroupName=pool.name, DesiredCapacity=size, HonorCooldown=False)
    except (BotoCoreError, ClientError) as exc:
        raise aws_error("SetDesiredCapacity", exc) from None
    return pool_named(config, pool.name, client)


def _start_refresh(client, group: str) -> str:
    """A new refresh's id, or the running one's (a second start would be refused)."""
    try:
        return client.start_instance_refresh(
            AutoScalingGroupName=group, Strategy="Rolling", Preferences=refresh_preferences()
        )["InstanceRefreshId"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "InstanceRefreshInProgress":
            raise
    running = client.describe_instance_refreshes(AutoScalingGroupName=group)["InstanceRefreshes"]
    active = [r for r in running if r["Status"] in ("Pending", "InProgress", "Baking", "RollbackInProgress")]
    if not active:
        raise FleetError(f"{group}: AWS says a refresh is in progress but lists none; try again")
    print(
        f"{group}: following the refresh already in progress ({active[0]['InstanceRefreshId']})",
        file=sys.stderr,
        flush=True,
    )
    return active[0]["InstanceRefreshId"]


def _progress(refresh: dict) -> str:
    left = refresh.get("InstancesToUpdate")
    parts = [refresh["Status"], f"{refresh.get('PercentageComplete', 0)}%"]
    if left is not None:
        parts.append(f"{left} to replace")
    if refresh.get("StatusReason"):
        parts.append(refresh["StatusReason"])
    return ", ".join(parts)


def rollout(
    config: FleetConfig, name: str, timeout: float, interval: float, client=None, clock=time.monotonic, sleep=time.sleep
) -> str:
    """Start (or follow) an instance refresh of the pool and follow it to its end.

    Returns the success line; a failed, cancelled or rolled-back refresh raises FleetError with
    the code in REFRESH_DONE, a timeout with WAIT_TIMEOUT (the refresh itself goes on)."""
    client = client or autoscaling_client(config)
    group = pool_named(config, name, client).name
    started, last = clock(), None
    try:
        refresh_id = _start_refresh(client, group)
        while True:
            (refresh,) = client.describe_instance_refreshes(
                AutoScalingGroupName=group, InstanceRefreshIds=[refresh_id]
            )["InstanceRefreshes"]
            line = _progress(refresh)
            if line != last:
                print(f"[{clock() - started:4.0f}s] {group}: {line}", file=sys.stderr, flush=True)
                last = line
            code = REFRESH_DONE.get(refresh["Status"])
            if code == errors.OK:
                return f"{group}: rollout successful after {clock() - started:.0f}s"
            if code is not None:
                raise FleetError(
                    f"{group}: rollout ended {refresh['Status']}: {refresh.get('StatusReason') or 'no reason given'}",
                    code,
                )
            if clock() - started >= timeout:
                raise FleetError(
                    f"{group}: rollout still {line} after {timeout:g}s; it goes on in AWS "
                    f"(follow it again with `fleet rollout {group}`)",
                    errors.WAIT_TIMEOUT,
                )
            sleep(interval)
    except (BotoCoreError, ClientError) as exc:
        raise aws_error("instance refresh", exc) from None


def pooled_instances(config: FleetConfig, instance_ids: list[str], ec2_client=None) -> dict[str, str]:
    """instance id -> its Auto Scaling group, for those of `instance_ids` a group launched."""
    from scripts.fleet.aws import ec2_client as make_ec2

    client = ec2_client or make_ec2(config)
    found = {}
    try:
        pages = client.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": instance_ids}, {"Name": "tag-key", "Values": [GROUP_TAG]}]
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                    found[instance["InstanceId"]] = tags[GROUP_TAG]
    except (BotoCoreError, ClientError) as exc:
        raise aws_error("DescribeInstances", exc) from None
    return found
