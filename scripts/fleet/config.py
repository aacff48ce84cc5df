"""Every setting the fleet tool reads: flags, then FLEET_*/AWS_* env vars, then the outputs file.

The outputs file is `pulumi stack output --json --show-secrets` (see infra/README.md); the
coordinator reads the same file, so one file describes the fleet to every tool.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # infra.bundle is shared with the Pulumi program
    sys.path.insert(0, str(REPO_ROOT))

from infra.bundle import RUNTIME_OF_ROLE  # noqa: E402
from scripts.fleet.errors import USAGE, FleetError  # noqa: E402

DEFAULT_OUTPUTS = "stack-outputs.json"


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

    def worker(self, name: str) -> Worker:
        for worker in self.workers:
            if name in (worker.name, worker.instance_id):
                return worker
        known = ", ".join(w.name for w in self.workers) or "none"
        raise FleetError(f"no worker named {name!r} in {self.outputs_path} (known: {known})", USAGE)


def _read_outputs(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FleetError(f"outputs file {path} not found; write it with `pulumi stack output "
                         f"--json --show-secrets > {DEFAULT_OUTPUTS}` or pass --outputs", USAGE)
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(f"cannot read outputs file {path}: {exc}", USAGE)
    except json.JSONDecodeError as exc:
        raise FleetError(f"outputs file {path} is not JSON: {exc.msg} at line {exc.lineno}", USAGE)
    if not isinstance(data, dict):
        raise FleetError(f"outputs file {path} must hold a JSON object", USAGE)
    return data


def _required_text(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise FleetError(f"{where} lacks `{key}` (a non-empty string)", USAGE)
    return value


def _parse_worker(entry, index: int, path: Path) -> Worker:
    where = f"{path}: workers[{index}]"
    if not isinstance(entry, dict):
        raise FleetError(f"{where} must be an object", USAGE)
    role = _required_text(entry, "role", where)
    if role not in RUNTIME_OF_ROLE:
        raise FleetError(f"{where}: role {role!r} is not one of {', '.join(RUNTIME_OF_ROLE)}", USAGE)
    operations = entry.get("operations") or []
    return Worker(
        name=_required_text(entry, "name", where), role=role,
        runtime=entry.get("runtime") or RUNTIME_OF_ROLE[role],
        url=_required_text(entry, "url", where).rstrip("/"),
        public_ip=entry.get("public_ip") or "", instance_id=entry.get("instance_id") or "",
        operations=tuple(operations) if isinstance(operations, list) else ())


def _port(value, name: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise FleetError(f"{name} must be a port number, got {value!r}", USAGE)
    if not 0 < port < 65536:
        raise FleetError(f"{name} must be 1-65535, got {port}", USAGE)
    return port


def _seconds(value, name: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise FleetError(f"{name} must be a number of seconds, got {value!r}", USAGE)
    if not 0 < seconds <= 3600:
        raise FleetError(f"{name} must be > 0 and <= 3600, got {value}", USAGE)
    return seconds


def load_config(args, environ=os.environ) -> FleetConfig:
    """Resolve every setting once; `args` is the argparse namespace (absent flags are None)."""
    path = Path(getattr(args, "outputs", None) or environ.get("COORDINATOR_WORKERS_FILE")
                or DEFAULT_OUTPUTS).expanduser()
    data = _read_outputs(path)
    entries = data.get("workers")
    if not isinstance(entries, list):
        raise FleetError(f"{path} lacks `workers` (a list); is it the stack outputs file?", USAGE)
    workers = tuple(_parse_worker(entry, i, path) for i, entry in enumerate(entries))
    names = [w.name for w in workers]
    if len(set(names)) != len(names):
        raise FleetError(f"{path}: worker names repeat: {', '.join(names)}", USAGE)
    region = (getattr(args, "region", None) or data.get("region") or environ.get("AWS_REGION")
              or environ.get("AWS_DEFAULT_REGION"))
    if not region:
        raise FleetError(f"no AWS region: {path} has no `region`; pass --region or set AWS_REGION", USAGE)
    ssh_key = getattr(args, "ssh_key", None) or environ.get("FLEET_SSH_KEY")
    if ssh_key and not Path(ssh_key).expanduser().is_file():
        raise FleetError(f"SSH key {ssh_key} does not exist (--ssh-key / FLEET_SSH_KEY)", USAGE)
    known_hosts = (getattr(args, "known_hosts", None) or environ.get("FLEET_KNOWN_HOSTS")
                   or default_known_hosts(environ))
    remote_root = getattr(args, "remote_root", None) or environ.get("FLEET_REMOTE_ROOT") or "/"
    if not remote_root.startswith("/"):
        raise FleetError(f"--remote-root must be an absolute path, got {remote_root!r}", USAGE)
    source_root = getattr(args, "source_root", None)
    return FleetConfig(
        outputs_path=path,
        project=_required_text(data, "project", str(path)),
        stack=_required_text(data, "stack", str(path)),
        region=region,
        workers=workers,
        ssh_user=getattr(args, "ssh_user", None) or data.get("ssh_user") or "ubuntu",
        ssh_key=Path(ssh_key).expanduser() if ssh_key else None,
        known_hosts=Path(known_hosts).expanduser(),
        ssh_port=_port(getattr(args, "ssh_port", None) or environ.get("FLEET_SSH_PORT") or 22,
                       "--ssh-port / FLEET_SSH_PORT"),
        ssh_timeout=_seconds(getattr(args, "ssh_timeout", None) or environ.get("FLEET_SSH_TIMEOUT")
                             or 15, "--ssh-timeout / FLEET_SSH_TIMEOUT"),
        endpoint_url=getattr(args, "endpoint_url", None) or environ.get("AWS_ENDPOINT_URL") or None,
        remote_root=remote_root,
        source_root=Path(source_root).resolve() if source_root else None,
    )
