"""Facts about each worker role that the host layout depends on (one place, shared by all modules)."""
from __future__ import annotations

from dataclasses import dataclass

from infra.bundle import RUNTIME_OF_ROLE

SSH_USER = "ubuntu"  # the Ubuntu AMI's default user; it has sudo, the `worker` user does not
SERVICE_USER = "worker"


@dataclass(frozen=True)
class RoleSpec:
    role: str            # folder name, EC2 Role tag, systemd unit and log `service` name
    runtime: str         # "python" | "nodejs", as in /healthz and the stack outputs
    # As the worker lists them in /healthz (a test checks); the coordinator routes by /healthz.
    operations: tuple[str, ...]
    exec_start: str
    apt_packages: tuple[str, ...]

    @property
    def base_dir(self) -> str:
        return f"/opt/{self.role}"

    @property
    def env_file(self) -> str:
        return f"/etc/{self.role}/env"

    @property
    def unit_name(self) -> str:
        return f"{self.role}.service"

    def release_dir(self, build: str) -> str:
        return f"{self.base_dir}/releases/{build}"


ROLE_SPECS: dict[str, RoleSpec] = {
    "worker-python": RoleSpec(
        role="worker-python",
        runtime=RUNTIME_OF_ROLE["worker-python"],
        operations=("grayscale", "sepia", "invert", "blur"),
        exec_start="/opt/worker-python/venv/bin/python -m worker_python",
        apt_packages=("python3-venv",),
    ),
    "worker-nodejs": RoleSpec(
        role="worker-nodejs",
        runtime=RUNTIME_OF_ROLE["worker-nodejs"],
        operations=("grayscale", "sepia", "invert", "blur"),
        exec_start="/usr/bin/node server.js",
        apt_packages=("ca-certificates", "curl", "xz-utils"),
    ),
}
