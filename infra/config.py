"""Every Pulumi config read of the program, validated into one FleetSettings.

`parse_settings` is pure (raw strings in, settings or ConfigError out) so tests can check every
rule without the Pulumi runtime; `load_settings` is the only function that touches pulumi.Config.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi

from infra.pool_spec import PoolSize
from stripes.roles import ROLE_SPECS

MAX_WORKERS_PER_ROLE = 10  # a typo like 100 should not start 100 instances
# Who may reach the token-guarded worker ports (infra/README.md "Choices and why"):
MIN_PREFIX_LENGTH = 8  # never wider, whatever the config says: that is "the internet"
WIDE_PREFIX_LENGTH = 16  # wider than this only with allowWideCidr: true
WARN_PREFIX_LENGTH = 24  # wider than this is allowed, with a warning on every `pulumi up`

# Keys and defaults exactly as declared in Pulumi.yaml (a test keeps the two in step).
DEFAULTS: dict[str, str] = {
    "pythonWorkers": "1",
    "nodejsWorkers": "1",
    "instanceType": "t2.micro",
    "pythonPort": "",  # empty: the role's port in stripes/roles.py
    "nodejsPort": "",
    "clientCidr": "",
    "adminCidr": "",
    "sshPublicKey": "",
    "workerToken": "",
    "amiId": "",
    "subnetId": "",
    "allowWideCidr": "false",
    "workerPools": "false",
    "pythonPoolMin": "1",
    "pythonPoolMax": "1",
    "pythonPoolDesired": "1",
    "nodejsPoolMin": "1",
    "nodejsPoolMax": "1",
    "nodejsPoolDesired": "1",
    "poolNetworkInTargetMb": "300",
    "workerTls": "true",
    "mutualTls": "false",
}
# The pool keys of each runtime (a role's pool is off when its max is 0).
POOL_KEYS = {"worker-python": "pythonPool", "worker-nodejs": "nodejsPool"}

CLIENT_CIDR_HINT = 'pulumi config set clientCidr "$(curl -s https://checkip.amazonaws.com)/32"'
ADMIN_CIDR_HINT = 'pulumi config set adminCidr "$(curl -s https://checkip.amazonaws.com)/32"'


class ConfigError(pulumi.RunError):
    """A bad or missing setting. A RunError, so `pulumi up` prints the message without a traceback."""


@dataclass(frozen=True)
class FleetSettings:
    project: str
    stack: str
    region: str
    python_workers: int
    nodejs_workers: int
    instance_type: str
    python_port: int
    nodejs_port: int
    client_cidr: str
    admin_cidr: str | None
    ssh_public_key: str | None
    worker_token: str | None  # None: the program generates one (RandomPassword)
    ami_id: str | None  # None: latest Ubuntu 24.04 LTS
    subnet_id: str | None  # None: the default VPC's default subnet
    warnings: tuple[str, ...] = ()  # load_settings shows them with pulumi.log.warn
    worker_pools: bool = False  # True: an Auto Scaling group per role instead of fixed instances
    pool_sizes: Mapping[str, PoolSize] = field(default_factory=dict)  # role -> sizes (pools only)
    network_in_target_mb: int = 300  # scaling policy: MB received per instance per 5 minutes
    worker_tls: bool = True  # False: the workers speak plain HTTP (unsafe; the policy pack refuses it)
    mutual_tls: bool = False  # True: workers require a client certificate signed by the fleet CA

    @property
    def ssh_enabled(self) -> bool:
        return self.ssh_public_key is not None

    def count(self, role: str) -> int:
        """Instances (fixed mode) or the pool's max (pool mode): 0 means the role is not deployed."""
        if self.worker_pools:
            return self.pool_sizes[role].max
        return {"worker-python": self.python_workers, "worker-nodejs": self.nodejs_workers}[role]

    def port(self, role: str) -> int:
        return {"worker-python": self.python_port, "worker-nodejs": self.nodejs_port}[role]


def _int_setting(raw: Mapping[str, str], key: str, low: int, high: int, default: int | None = None) -> int:
    value = (raw.get(key) or DEFAULTS[key]).strip() or str(default)
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{key} must be a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{key} must be between {low} and {high}, got {number}")
    return number


def parse_cidr(key: str, value: str, hint: str, allow_wide: bool = False) -> str:
    """An IPv4 network in canonical form; a bare address means that one host (/32)."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        raise ConfigError(
            f"{key} {value!r} is not an IPv4 CIDR such as 203.0.113.7/32 (host bits must be zero); set it with: {hint}"
        ) from None
    if network.version != 4:
        raise ConfigError(f"{key} {value!r} is IPv6; the workers listen on IPv4 only. Use: {hint}")
    if network.prefixlen < MIN_PREFIX_LENGTH:
        raise ConfigError(
            f"{key} {value!r} opens the port to the whole internet (or most of it); "
            f"refused. Use your own address: {hint}"
        )
    if network.prefixlen < WIDE_PREFIX_LENGTH and not allow_wide:
        raise ConfigError(
            f"{key} {value!r} admits {network.num_addresses:,} addresses, wider than "
            f"/{WIDE_PREFIX_LENGTH}; refused. Use your own address ({hint}), or, if "
            "you really mean it: pulumi config set allowWideCidr true"
        )
    return str(network)


def cidr_warning(key: str, cidr: str) -> str | None:
    """A loud note for a network wider than /24 (None for narrower ones)."""
    network = ipaddress.ip_network(cidr)
    if network.prefixlen >= WARN_PREFIX_LENGTH:
        return None
    return (
        f"{key} {cidr} admits {network.num_addresses:,} addresses to the worker ports "
        f"(wider than /{WARN_PREFIX_LENGTH}); anyone there can knock on them. Narrow it "
        "to your own address unless this network is yours alone"
    )


PLAIN_HTTP_WARNING = (
    "workerTls is false: the workers speak plain HTTP, so the token and every image cross the network "
    "in clear text; the policy pack (tls-on-worker-ports) refuses this stack"
)


def _tls_settings(raw: Mapping[str, str]) -> tuple[bool, bool]:
    worker_tls, mutual_tls = _bool_setting(raw, "workerTls"), _bool_setting(raw, "mutualTls")
    if mutual_tls and not worker_tls:
        raise ConfigError("mutualTls needs workerTls: true (a client certificate is checked in the TLS handshake)")
    return worker_tls, mutual_tls


def _bool_setting(raw: Mapping[str, str], key: str) -> bool:
    value = (raw.get(key) or DEFAULTS[key]).strip().lower()
    if value not in ("true", "false"):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value == "true"


_INSTANCE_TYPE = re.compile(r"^(?P<family>[a-z]+)(?P<generation>\d+)(?P<options>[a-z-]*)\.[a-z0-9]+$")
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")  # the key types EC2 can import


def parse_instance_type(value: str) -> str:
    match = _INSTANCE_TYPE.match(value)
    if not match:
        raise ConfigError(f"instanceType {value!r} is not an EC2 instance type such as t2.micro")
    if "g" in match["options"]:
        # Graviton (arm64) types cannot boot the x86_64 image this program looks up.
        raise ConfigError(
            f"instanceType {value!r} is an arm64 (Graviton) type; "
            "the workers' AMI and Node.js build are x86_64, use e.g. t2.micro or t3.micro"
        )
    return value


def parse_ssh_public_key(value: str) -> str:
    parts = value.strip().split()
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES:
        raise ConfigError(
            "sshPublicKey must be an OpenSSH public key starting with "
            f"{' or '.join(_SSH_KEY_TYPES)} (the .pub file's content)"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise ConfigError("sshPublicKey's key data is not valid base64") from None
    if parts[0].encode() not in blob[:32]:
        raise ConfigError("sshPublicKey's key data does not match its type")
    return " ".join(parts[:3])


def _network_settings(raw: Mapping[str, str]) -> tuple[str, str | None, str | None]:
    """clientCidr, and adminCidr + sshPublicKey (both or neither), checked."""

    def text(key: str) -> str:
        return (raw.get(key) or DEFAULTS[key]).strip()

    if not text("clientCidr"):
        raise ConfigError(
            "clientCidr is required: the address allowed to reach the workers. "
            f"Set it to your public IP with: {CLIENT_CIDR_HINT}"
        )
    allow_wide = _bool_setting(raw, "allowWideCidr")
    client_cidr = parse_cidr("clientCidr", text("clientCidr"), CLIENT_CIDR_HINT, allow_wide)
    admin_cidr = text("adminCidr") or None
    ssh_public_key = text("sshPublicKey") or None
    if (admin_cidr is None) != (ssh_public_key is None):
        missing = "adminCidr" if admin_cidr is None else "sshPublicKey"
        raise ConfigError(
            f"SSH needs both sshPublicKey and adminCidr, and {missing} is not set; "
            "set both to allow SSH, or neither to keep port 22 closed"
        )
    if admin_cidr is not None:
        admin_cidr = parse_cidr("adminCidr", admin_cidr, ADMIN_CIDR_HINT, allow_wide)
        ssh_public_key = parse_ssh_public_key(ssh_public_key)
    return client_cidr, admin_cidr, ssh_public_key


def _pool_sizes(raw: Mapping[str, str]) -> dict[str, PoolSize]:
    """min <= desired <= max per role, at most MAX_WORKERS_PER_ROLE; at least one pool non-empty."""
    sizes = {}
    for role, prefix in POOL_KEYS.items():
        low = _int_setting(raw, f"{prefix}Min", 0, MAX_WORKERS_PER_ROLE)
        high = _int_setting(raw, f"{prefix}Max", 0, MAX_WORKERS_PER_ROLE)
        desired = _int_setting(raw, f"{prefix}Desired", 0, MAX_WORKERS_PER_ROLE)
        if not low <= desired <= high:
            raise ConfigError(f"{prefix}Min <= {prefix}Desired <= {prefix}Max must hold, got {low}, {desired}, {high}")
        sizes[role] = PoolSize(low, high, desired)
    if all(size.max == 0 for size in sizes.values()):
        raise ConfigError("pythonPoolMax and nodejsPoolMax are both 0; a fleet needs at least one worker")
    return sizes


def parse_settings(
    raw: Mapping[str, str], *, project: str, stack: str, region: str | None, token_is_secret: bool = True
) -> FleetSettings:
    """Validate raw config strings (unset keys may be missing or empty) into FleetSettings."""

    def text(key: str) -> str:
        return (raw.get(key) or DEFAULTS[key]).strip()

    if not region:
        raise ConfigError("aws:region is not set; set it with: pulumi config set aws:region us-east-1")

    python_workers = _int_setting(raw, "pythonWorkers", 0, MAX_WORKERS_PER_ROLE)
    nodejs_workers = _int_setting(raw, "nodejsWorkers", 0, MAX_WORKERS_PER_ROLE)
    worker_pools = _bool_setting(raw, "workerPools")
    pool_sizes = _pool_sizes(raw) if worker_pools else {}
    if python_workers + nodejs_workers == 0 and not worker_pools:
        raise ConfigError("pythonWorkers and nodejsWorkers are both 0; a fleet needs at least one worker")
    python_port = _int_setting(raw, "pythonPort", 1024, 65535, ROLE_SPECS["worker-python"].port)
    nodejs_port = _int_setting(raw, "nodejsPort", 1024, 65535, ROLE_SPECS["worker-nodejs"].port)
    if python_port == nodejs_port:
        raise ConfigError(f"pythonPort and nodejsPort are both {python_port}; they must differ")

    client_cidr, admin_cidr, ssh_public_key = _network_settings(raw)
    worker_tls, mutual_tls = _tls_settings(raw)

    worker_token = text("workerToken") or None
    if worker_token is not None:
        if not token_is_secret:
            raise ConfigError(
                "workerToken is stored in plain text; store it encrypted with: "
                "pulumi config set --secret workerToken <token>"
            )
        if not _TOKEN.match(worker_token):
            raise ConfigError("workerToken must be 16-256 characters of letters, digits or ._~+/=-")

    ami_id = text("amiId") or None
    if ami_id is not None and not _AMI.match(ami_id):
        raise ConfigError(f"amiId {ami_id!r} is not an AMI id such as ami-0123456789abcdef0")
    subnet_id = text("subnetId") or None
    if subnet_id is not None and not _SUBNET.match(subnet_id):
        raise ConfigError(f"subnetId {subnet_id!r} is not a subnet id such as subnet-0123456789abcdef0")

    return FleetSettings(
        project=project,
        stack=stack,
        region=region,
        python_workers=python_workers,
        nodejs_workers=nodejs_workers,
        instance_type=parse_instance_type(text("instanceType")),
        python_port=python_port,
        nodejs_port=nodejs_port,
        client_cidr=client_cidr,
        admin_cidr=admin_cidr,
        ssh_public_key=ssh_public_key,
        worker_token=worker_token,
        ami_id=ami_id,
        subnet_id=subnet_id,
        worker_pools=worker_pools,
        pool_sizes=pool_sizes,
        network_in_target_mb=_int_setting(raw, "poolNetworkInTargetMb", 1, 100_000),
        worker_tls=worker_tls,
        mutual_tls=mutual_tls,
        warnings=tuple(
            w
            for w in (
                cidr_warning("clientCidr", client_cidr),
                admin_cidr and cidr_warning("adminCidr", admin_cidr),
                None if worker_tls else PLAIN_HTTP_WARNING,
            )
            if w
        ),
    )


def load_settings() -> FleetSettings:
    """Read this stack's config (the program's only pulumi.Config reads)."""
    config = pulumi.Config()
    raw = {key: config.get(key) or "" for key in DEFAULTS}
    settings = parse_settings(
        raw,
        project=pulumi.get_project(),
        stack=pulumi.get_stack(),
        region=pulumi.Config("aws").get("region"),
        token_is_secret=pulumi.runtime.is_config_secret(config.full_key("workerToken")),
    )
    for warning in settings.warnings:
        pulumi.log.warn(warning)
    return settings
