"""Worker URLs of a pooled stack (workerPools: true), from the live fleet, cached a few seconds.

A pooled outputs file has `workers: []` and `pools` (group name, role, runtime, port) plus the
stack's `project`, `stack` and `region`. Running instances are found by the tags infra/ puts on
them (Project, Stack, Role; an aws:autoscaling:groupName must be one of the pools) with a
paginated DescribeInstances; each gives `http(s)://<public address, else private>:<pool port>`
(the coordinator sits outside the VPC, as with fixed workers). boto3 is imported here, inside
the function that calls AWS, so a coordinator without pools never loads it.

COORDINATOR_POOL_ADDRESS_OVERRIDE (TESTS ONLY): a loopback address used instead of every
instance's own, with the port from the instance's `coordinator-test-port` tag when it has one.
Tests run instances on a moto server, whose 10.x/54.x addresses must never be contacted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from coordinator.errors import ConfigError

GROUP_TAG = "aws:autoscaling:groupName"
TEST_PORT_TAG = "coordinator-test-port"
PAGE_SIZE = 100  # DescribeInstances MaxResults (5..1000)
_cache: dict[tuple, tuple[float, tuple[str, ...]]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class PoolRef:
    name: str  # the Auto Scaling group
    role: str
    port: int


@dataclass(frozen=True)
class PoolFleet:
    project: str
    stack: str
    region: str
    pools: tuple[PoolRef, ...]
    address_override: str | None = None  # tests only (module docstring)
    scheme: str = "http"  # "https" when the stack has a fleet CA (config.fleet_tls)
    page_size: int = PAGE_SIZE

    def label(self) -> str:
        return f"pools of stack {self.project}/{self.stack} in {self.region}"


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise ConfigError(f"{where} must be a non-empty string")
    return value.strip()


def _pool(entry: object, where: str) -> PoolRef:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object with name, role and port")
    port = entry.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{where}.port must be an integer 1..65535")
    return PoolRef(_text(entry.get("name"), f"{where}.name"), _text(entry.get("role"), f"{where}.role"), port)


def parse_pools(outputs: dict, where: str) -> PoolFleet | None:
    """The stack's pools from an outputs object; None when it has none (a fixed fleet)."""
    entries = outputs.get("pools")
    if not entries:
        return None
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: 'pools' must be a list")
    pools = tuple(_pool(entry, f"{where} pools[{index}]") for index, entry in enumerate(entries))
    return PoolFleet(
        project=_text(outputs.get("project"), f"{where} project"),
        stack=_text(outputs.get("stack"), f"{where} stack"),
        region=_text(outputs.get("region"), f"{where} region"),
        pools=pools,
    )


def check_override(value: str) -> str | None:
    """The test-only loopback override, or None; anything but a loopback address is refused."""
    import ipaddress

    text = value.strip()
    if not text:
        return None
    try:
        loopback = ipaddress.ip_address(text).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"COORDINATOR_POOL_ADDRESS_OVERRIDE={text!r} must be a loopback address (tests only)")
    return text


def worker_urls(fleet: PoolFleet, max_age: float, clock=time.monotonic) -> tuple[str, ...]:
    """The pools' running workers, asked of EC2 at most every `max_age` seconds per fleet."""
    with _lock:
        hit = _cache.get((fleet,))
        if hit and clock() - hit[0] < max_age:
            return hit[1]
    urls = describe(fleet)
    with _lock:
        _cache[(fleet,)] = (clock(), urls)
    return urls


def forget() -> None:
    """Drop every cached list (tests; the page's Refresh button)."""
    with _lock:
        _cache.clear()


def _client(fleet: PoolFleet):
    try:
        import boto3  # only a pooled stack needs it
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            f"{fleet.label()}: boto3 is not installed (pip install -r coordinator/requirements.txt)"
        ) from None

    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=10)
    # A new session each time: the default one keeps the first credentials it found forever.
    return boto3.session.Session().client("ec2", region_name=fleet.region, config=config)


def describe(fleet: PoolFleet) -> tuple[str, ...]:
    """Every running pool instance's URL, in a stable order; ConfigError with one line on failure."""
    client = _client(fleet)  # first: it says so in one line when boto3 is missing
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    filters = [
        {"Name": "instance-state-name", "Values": ["running"]},
        {"Name": "tag:Project", "Values": [fleet.project]},
        {"Name": "tag:Stack", "Values": [fleet.stack]},
        {"Name": "tag:Role", "Values": sorted({pool.role for pool in fleet.pools})},
    ]
    found: list[tuple[str, str]] = []
    try:
        pages = client.get_paginator("describe_instances")
        for page in pages.paginate(Filters=filters, PaginationConfig={"PageSize": fleet.page_size}):
            for reservation in page["Reservations"]:
                found.extend(_urls(reservation["Instances"], fleet))
    except NoCredentialsError:
        raise ConfigError(
            f"{fleet.label()}: no AWS credentials; set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "(needs ec2:DescribeInstances)"
        ) from None
    except EndpointConnectionError as exc:
        raise ConfigError(
            f"{fleet.label()}: cannot reach the EC2 endpoint ({exc.kwargs.get('endpoint_url')})"
        ) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise ConfigError(f"{fleet.label()}: DescribeInstances refused: {error.get('Code')}") from None
    except BotoCoreError as exc:
        raise ConfigError(f"{fleet.label()}: DescribeInstances failed: {str(exc)[:200]}") from None
    return tuple(sorted({url for _, url in found}))  # one per address, in a stable order


def _urls(instances: list[dict], fleet: PoolFleet) -> list[tuple[str, str]]:
    """(instance id, URL) of each instance with an address, of a pool's role, and not launched
    by some other group (aws:autoscaling:groupName, when present, must name one of the pools)."""
    ports = {pool.role: pool.port for pool in fleet.pools}
    groups = {pool.name for pool in fleet.pools}
    urls = []
    for instance in instances:
        tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
        port = ports.get(tags.get("Role", ""))
        address = instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")
        if port is None or not address or tags.get(GROUP_TAG, next(iter(groups))) not in groups:
            continue
        if fleet.address_override:  # tests only: never the instance's own address
            address, port = fleet.address_override, int(tags.get(TEST_PORT_TAG, port))
        host = f"[{address}]" if ":" in address else address
        urls.append((instance["InstanceId"], f"{fleet.scheme}://{host}:{port}"))
    return urls
