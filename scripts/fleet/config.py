"""Every setting the fleet tool reads: flags, then FLEET_*/AWS_* env vars, then the outputs file.

The outputs file is `pulumi stack output --json --show-secrets` (see infra/README.md); the
coordinator reads the same file, so one file describes the fleet to every tool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from scripts.fleet import values
from scripts.fleet.errors import USAGE, FleetError
from scripts.fleet.tls import Pinning
from stripes import stack_outputs
from stripes.roles import RUNTIME_OF_ROLE, SSH_USER, parameter_prefix

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_OUTPUTS = stack_outputs.DEFAULT_FILE


def default_known_hosts(environ=os.environ) -> Path:
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "hdtp" / "known_hosts"


@dataclass(frozen=True)
class Worker:
    name: str
    role: str
    runtime: str
    url: str
    public_ip: str
    instance_id: str
    operations: tuple[str, ...]


@dataclass(frozen=True)
class FleetConfig:
    outputs_path: Path
    project: str
    stack: str
    region: str
    workers: tuple[Worker, ...]
    ssh_user: str
    ssh_key: Path | None
    known_hosts: Path
    ssh_port: int
    ssh_timeout: float
    endpoint_url: str | None
    remote_root: str
    source_root: Path | None
    boot_check: bool = False  # also ask cloud-init over SSH (status, wait)
    boot_strict: bool = False  # an unknown boot (SSH failed) keeps a worker from being ready
    pool_ports: dict[str, int] = field(default_factory=dict)  # role -> port, for a pooled stack (`pools`)
    tls: Pinning | None = None  # the fleet CA and name (`worker_ca_pem`, `worker_tls_name`); None: plain HTTP
    secret_parameters: dict[str, str] = field(default_factory=dict)  # SSM names: worker-token, worker-tls-cert, ...

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def parameter(self, key: str) -> str:
        """The SSM name of one secret (`worker-token`, `worker-tls-cert`): the outputs file's
        `secret_parameters`, else infra's layout /{project}/{stack}/{key} (stripes/roles.py)."""
        return self.secret_parameters.get(key) or f"{parameter_prefix(self.project, self.stack)}/{key}"

    @property
    def pooled(self) -> bool:
        return bool(self.pool_ports)

    def worker(self, name: str) -> Worker:
        for worker in self.workers:
            if name in (worker.name, worker.instance_id):
                return worker
        known = ", ".join(w.name for w in self.workers) or "none"
        raise FleetError(f"no worker named {name!r} in {self.outputs_path} (known: {known})", USAGE)


def _read_outputs(path: Path) -> dict:
    try:
        data = stack_outputs.read_file(path)
    except stack_outputs.OutputsError as exc:
        if exc.missing:
            raise FleetError(
                f"outputs file {path} not found; write it with `make stack-outputs` or pass --outputs", USAGE
            ) from None
        raise FleetError(f"outputs file: {exc}", USAGE) from None
    if not isinstance(data, dict):
        raise FleetError(f"outputs file {path} must hold a JSON object", USAGE)
    return data


def _required_text(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise FleetError(f"{where} lacks `{key}` (a non-empty string)", USAGE)
    return value


def _pool_ports(data: dict, path: Path) -> dict[str, int]:
    """role -> port from the outputs file's `pools` (infra/outputs.py); {} for a fixed fleet."""
    entries = data.get("pools") or []
    if not isinstance(entries, list):
        raise FleetError(f"{path}: pools must be a list", USAGE)
    ports = {}
    for index, entry in enumerate(entries):
        where = f"{path}: pools[{index}]"
        if not isinstance(entry, dict) or entry.get("role") not in RUNTIME_OF_ROLE:
            raise FleetError(f"{where} must be an object with a role ({', '.join(RUNTIME_OF_ROLE)})", USAGE)
        ports[entry["role"]] = _port(entry.get("port"), f"{where}.port")
    return ports


def _parse_worker(entry, index: int, path: Path) -> Worker:
    """One `workers[]` entry, every field checked (scripts/fleet/values.py says why)."""
    where = f"{path}: workers[{index}]"
    if not isinstance(entry, dict):
        raise FleetError(f"{where} must be an object", USAGE)
    role = _required_text(entry, "role", where)
    if role not in RUNTIME_OF_ROLE:
        raise FleetError(f"{where}: role {role!r} is not one of {', '.join(RUNTIME_OF_ROLE)}", USAGE)
    runtime = entry.get("runtime") or RUNTIME_OF_ROLE[role]
    if runtime != RUNTIME_OF_ROLE[role]:
        raise FleetError(f"{where}: runtime {runtime!r} does not match role {role}", USAGE)
    operations = entry.get("operations") or []
    if not isinstance(operations, list):
        raise FleetError(f"{where}: operations must be a list", USAGE)
    public_ip, instance_id = entry.get("public_ip") or "", entry.get("instance_id") or ""
    return Worker(
        name=values.name(_required_text(entry, "name", where), f"{where}.name"),
        role=role,
        runtime=runtime,
        url=values.url(_required_text(entry, "url", where), f"{where}.url"),
        public_ip=values.ip_address(public_ip, f"{where}.public_ip") if public_ip else "",
        instance_id=values.instance_id(instance_id, f"{where}.instance_id") if instance_id else "",
        operations=tuple(values.operation(op, f"{where}.operations[{i}]") for i, op in enumerate(operations)),
    )


def _pinning(data: dict, path: Path) -> Pinning | None:
    """The fleet CA and name when the stack has TLS; a half-given pair is refused."""
    ca, name = data.get("worker_ca_pem"), data.get("worker_tls_name")
    if not ca and not name:
        return None
    if not isinstance(ca, str) or "-----BEGIN CERTIFICATE-----" not in ca:
        raise FleetError(f"{path}: worker_ca_pem must be the fleet CA's PEM certificate", USAGE)
    name = values.hostname(name, f"{path}: worker_tls_name")
    cert, key = data.get("worker_client_cert_pem") or "", data.get("worker_client_key_pem") or ""
    if bool(cert) != bool(key) or not isinstance(cert, str) or not isinstance(key, str):
        raise FleetError(f"{path}: worker_client_cert_pem and worker_client_key_pem go together (PEM text)", USAGE)
    pinning = Pinning(ca, name, cert, key)
    try:
        pinning.context()  # a CA or client pair that does not load is the file's fault: say so now
    except FleetError as exc:
        raise FleetError(f"{path}: {exc.message}", USAGE) from None
    return pinning


def _secret_parameters(data: dict, path: Path) -> dict[str, str]:
    names = data.get("secret_parameters") or {}
    if not isinstance(names, dict):
        raise FleetError(f"{path}: secret_parameters must be an object of SSM parameter names", USAGE)
    return {
        key.replace("_", "-"): values.parameter_name(value, f"{path}: secret_parameters.{key}")
        for key, value in names.items()
    }


def _plain_http_refused(workers: tuple[Worker, ...], tls: Pinning | None, path: Path) -> None:
    plain = [w.name for w in workers if w.url.startswith("http://")]
    if tls and plain:
        raise FleetError(
            f"{path}: plain HTTP refused: the fleet has a TLS CA, but {', '.join(plain)} have http:// URLs", USAGE
        )


def _port(value, name: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise FleetError(f"{name} must be a port number, got {value!r}", USAGE) from None
    if not 0 < port < 65536:
        raise FleetError(f"{name} must be 1-65535, got {port}", USAGE)
    return port


def _seconds(value, name: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise FleetError(f"{name} must be a number of seconds, got {value!r}", USAGE) from None
    if not 0 < seconds <= 3600:
        raise FleetError(f"{name} must be > 0 and <= 3600, got {value}", USAGE)
    return seconds


def _region(args, data: dict, path: Path, environ) -> str:
    region = (
        getattr(args, "region", None)
        or data.get("region")
        or environ.get("AWS_REGION")
        or environ.get("AWS_DEFAULT_REGION")
    )
    if not region:
        raise FleetError(f"no AWS region: {path} has no `region`; pass --region or set AWS_REGION", USAGE)
    return values.region(region, "region (--region, the outputs file, AWS_REGION)")


def _local_path(value: str, where: str) -> Path:
    return Path(values.path_text(value, where)).expanduser()


def _boot_check(args, ssh_key) -> tuple[bool, bool]:
    """(ask cloud-init over SSH, and count a host SSH cannot reach as not ready): both when
    --boot-check is given; with an SSH key alone, ask but forgive an unreachable host."""
    chosen = getattr(args, "boot_check", None)
    return (bool(ssh_key), False) if chosen is None else (chosen, chosen)


def load_config(args, environ=os.environ) -> FleetConfig:
    """Resolve every setting once; `args` is the argparse namespace (absent flags are None)."""
    path = Path(
        getattr(args, "outputs", None) or environ.get("COORDINATOR_WORKERS_FILE") or DEFAULT_OUTPUTS
    ).expanduser()
    data = _read_outputs(path)
    entries = data.get("workers")
    if not isinstance(entries, list):
        raise FleetError(f"{path} lacks `workers` (a list); is it the stack outputs file?", USAGE)
    workers = tuple(_parse_worker(entry, i, path) for i, entry in enumerate(entries))
    names = [w.name for w in workers]
    if len(set(names)) != len(names):
        raise FleetError(f"{path}: worker names repeat: {', '.join(names)}", USAGE)
    ssh_key = getattr(args, "ssh_key", None) or environ.get("FLEET_SSH_KEY")
    if ssh_key and not Path(ssh_key).expanduser().is_file():
        raise FleetError(f"SSH key {ssh_key} does not exist (--ssh-key / FLEET_SSH_KEY)", USAGE)
    known_hosts = (
        getattr(args, "known_hosts", None) or environ.get("FLEET_KNOWN_HOSTS") or str(default_known_hosts(environ))
    )
    remote_root = getattr(args, "remote_root", None) or environ.get("FLEET_REMOTE_ROOT") or "/"
    if not remote_root.startswith("/"):
        raise FleetError(f"--remote-root must be an absolute path, got {remote_root!r}", USAGE)
    source_root = getattr(args, "source_root", None)
    tls = _pinning(data, path)
    _plain_http_refused(workers, tls, path)
    return FleetConfig(
        outputs_path=path,
        project=values.stack_word(_required_text(data, "project", str(path)), f"{path}: project"),
        stack=values.stack_word(_required_text(data, "stack", str(path)), f"{path}: stack"),
        region=_region(args, data, path, environ),
        workers=workers,
        pool_ports=_pool_ports(data, path),
        tls=tls,
        secret_parameters=_secret_parameters(data, path),
        ssh_user=values.ssh_user(
            getattr(args, "ssh_user", None) or data.get("ssh_user") or SSH_USER,
            "ssh user (--ssh-user, the outputs file's ssh_user)",
        ),
        ssh_key=_local_path(ssh_key, "--ssh-key / FLEET_SSH_KEY") if ssh_key else None,
        known_hosts=_local_path(known_hosts, "--known-hosts / FLEET_KNOWN_HOSTS"),
        ssh_port=_port(
            getattr(args, "ssh_port", None) or environ.get("FLEET_SSH_PORT") or 22, "--ssh-port / FLEET_SSH_PORT"
        ),
        ssh_timeout=_seconds(
            getattr(args, "ssh_timeout", None) or environ.get("FLEET_SSH_TIMEOUT") or 15,
            "--ssh-timeout / FLEET_SSH_TIMEOUT",
        ),
        endpoint_url=getattr(args, "endpoint_url", None) or environ.get("AWS_ENDPOINT_URL") or None,
        remote_root=remote_root,
        source_root=Path(source_root).resolve() if source_root else None,
        boot_check=_boot_check(args, ssh_key)[0],
        boot_strict=_boot_check(args, ssh_key)[1],
    )
