"""Addresses of the boot test's private network: one bridge in a namespace the test makes, no route out."""

from __future__ import annotations

SUBNET_PREFIX = "10.213.0"
GATEWAY = f"{SUBNET_PREFIX}.1"  # the bridge: S3 and SSM stand-in (443) and the proxy relay (3128)
IMDS = "169.254.169.254"  # the IMDSv2 stand-in, also on the bridge
PROXY_PORT = 3128
PROXY_URL = f"http://{GATEWAY}:{PROXY_PORT}"
# Only the package registries; everything else is refused by the proxy.
REGISTRY_HOSTS = ("deb.debian.org", "security.debian.org", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org")


def machine_address(index: int) -> str:
    return f"{SUBNET_PREFIX}.{10 + index}"


def s3_hosts(bucket: str, region: str) -> list[str]:
    """The names boto3 may use for the bucket (virtual-host and path style)."""
    return [
        f"{bucket}.s3.{region}.amazonaws.com",
        f"{bucket}.s3.amazonaws.com",
        f"s3.{region}.amazonaws.com",
        "s3.amazonaws.com",
    ]


def aws_hosts(bucket: str, region: str) -> list[str]:
    """Every AWS name the hosts use, all answered by the moto stand-in: S3's, then SSM's."""
    return [*s3_hosts(bucket, region), f"ssm.{region}.amazonaws.com"]
