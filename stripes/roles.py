"""The worker roles: every fact about a worker that more than one component needs, once.

Read by infra (bundle, config, user-data, nodes, outputs), the local runner (scripts/local.py),
the tests' launcher (scripts/testkit/procs.py), the fleet deploy (scripts/fleet/) and the
coordinator's default worker list. Stdlib only and imports nothing of the project, so every
component may import it without a cycle. A new runtime is one more ROLE_SPECS entry; a port,
start command or host path is one line here (tests/infra/test_roles.py proves every consumer follows).
"""

from __future__ import annotations

import posixpath
import shlex
import sys
from dataclasses import dataclass

SSH_USER = "ubuntu"  # the Ubuntu AMI's default user; it has sudo, the `worker` user does not
SERVICE_USER = "worker"
# Host layout (infra/README.md): code and releases under the base dir, systemd's env file apart.
HOST_BASE_DIR = "/opt/{role}"
HOST_ENV_FILE = "/etc/{role}/env"
# Secrets fetched from SSM at boot and by the {role}-secrets.timer (infra/README.md "Secrets").
HOST_SECRETS_DIR = "/etc/{role}/secrets"
# The one DNS name every fleet server certificate carries: the coordinator connects by IP and
# verifies this name, so pooled instances with any address share one certificate.
FLEET_TLS_NAME = "workers.stripes.internal"
# SSM parameter (under /{project}/{stack}/) -> its file in the secrets dir. The names are the
# contract between infra (writes), the host's fetch-worker-secrets and the fleet tool (read).
PARAM_TOKEN = "worker-token"  # SecureString: one token line, or "current\nnext" during a rotation
PARAM_TLS_KEY = "worker-tls-key"  # SecureString: the server's private key PEM
PARAM_TLS_CERT = "worker-tls-cert"  # String: the server certificate PEM
PARAM_CLIENT_CA = "worker-client-ca"  # String: the CA clients must be signed by (mutual TLS only)
SECRET_FILES = {
    PARAM_TOKEN: "worker-token",
    PARAM_TLS_KEY: "tls.key",
    PARAM_TLS_CERT: "tls.crt",
    PARAM_CLIENT_CA: "client-ca.crt",
}
# Where each runtime's interpreter is, locally (None: this Python) and on a host.
LOCAL_INTERPRETER = {"python": None, "nodejs": "node"}
HOST_NODE = "/usr/bin/node"
# An installer that has not finished by then has failed (npm ci retries forever behind a proxy that refuses).
INSTALL_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class RoleSpec:
    role: str  # folder name, EC2 Role tag, systemd unit and log `service` name
    runtime: str  # "python" | "nodejs", as in /healthz and the stack outputs
    port: int  # default port: local runner, Pulumi config, coordinator default list
    port_var: str  # the local runner's variable that moves the port (make run X=...)
    start: tuple[str, ...]  # interpreter arguments that start the server, in the worker folder
    deps_manifest: str  # pinned dependencies; its hash decides whether a host reinstalls
    required_files: tuple[str, ...]  # a bundle without them is refused
    # As the worker lists them in /healthz (tests/infra/test_roles.py checks); the coordinator routes
    # by /healthz. The primary op is the one applied when a request names none.
    operations: tuple[str, ...]
    primary_op: str
    apt_packages: tuple[str, ...]

    def local_command(self) -> list[str]:
        """The argv that starts the worker from a checkout (cwd: the worker folder)."""
        return [LOCAL_INTERPRETER[self.runtime] or sys.executable, *self.start]

    @property
    def exec_start(self) -> str:
        """systemd's ExecStart on a host (cwd: the `current` release)."""
        interpreter = f"{self.venv_dir}/bin/python" if self.runtime == "python" else HOST_NODE
        return shlex.join([interpreter, *self.start])

    # --- host layout (under("/srv/test", path) moves a path into a test tree) ---------
    @property
    def base_dir(self) -> str:
        return HOST_BASE_DIR.format(role=self.role)

    @property
    def env_file(self) -> str:
        return HOST_ENV_FILE.format(role=self.role)

    @property
    def secrets_dir(self) -> str:
        return HOST_SECRETS_DIR.format(role=self.role)

    def secret_file(self, parameter: str) -> str:
        """Where the host keeps the SSM parameter `parameter` (a SECRET_FILES key)."""
        return posixpath.join(self.secrets_dir, SECRET_FILES[parameter])

    @property
    def secrets_unit(self) -> str:
        """The oneshot unit that fetches the secrets; its .timer twin repeats it every minute."""
        return f"{self.role}-secrets.service"

    @property
    def secrets_timer(self) -> str:
        return f"{self.role}-secrets.timer"

    @property
    def current_dir(self) -> str:
        return posixpath.join(self.base_dir, "current")

    @property
    def venv_dir(self) -> str:
        return posixpath.join(self.base_dir, "venv")

    def release_dir(self, build: str) -> str:
        return posixpath.join(self.base_dir, "releases", build)

    @property
    def unit_name(self) -> str:
        return f"{self.role}.service"

    def install_steps(self, release: str, root: str = "/") -> list[str]:
        """Shell lines that install the pinned dependencies of the release in `release`
        (python: into the role's shared venv; node: node_modules inside the release).
        Each installer runs under `timeout`: npm retries forever behind a refusing proxy."""
        q = shlex.quote
        bound = f"timeout {INSTALL_TIMEOUT_SECONDS}"
        if self.runtime == "python":
            venv = q(under(root, self.venv_dir))
            return [
                f"[ -x {venv}/bin/pip ] || python3 -m venv {venv}",
                f"{bound} {venv}/bin/pip install --no-cache-dir --disable-pip-version-check "
                f"-r {q(release)}/{self.deps_manifest}",
            ]
        return [f"cd {q(release)} && {bound} npm ci --omit=dev --no-audit --no-fund"]


ROLE_SPECS: dict[str, RoleSpec] = {
    "worker-python": RoleSpec(
        role="worker-python",
        runtime="python",
        port=5001,
        port_var="PYTHON_WORKER_PORT",
        start=("-m", "worker_python"),
        deps_manifest="requirements.txt",
        required_files=("requirements.txt", "worker_python/__main__.py"),
        operations=("grayscale", "sepia", "invert", "blur"),
        primary_op="grayscale",
        apt_packages=("python3-venv",),
    ),
    "worker-nodejs": RoleSpec(
        role="worker-nodejs",
        runtime="nodejs",
        port=5002,
        port_var="NODEJS_WORKER_PORT",
        start=("server.js",),
        deps_manifest="package-lock.json",
        required_files=("package.json", "package-lock.json", "server.js"),
        operations=("grayscale", "sepia", "invert", "blur"),
        primary_op="sepia",
        apt_packages=("ca-certificates", "curl", "xz-utils"),
    ),
}
ROLES = tuple(ROLE_SPECS)
RUNTIME_OF_ROLE = {spec.role: spec.runtime for spec in ROLE_SPECS.values()}
ROLE_OF_RUNTIME = {spec.runtime: spec.role for spec in ROLE_SPECS.values()}


def parameter_prefix(project: str, stack: str) -> str:
    """The SSM path holding one stack's secrets; a host profile may read under it only."""
    return f"/{project}/{stack}"


def under(root: str, path: str) -> str:
    """A host path moved under `root` ('/' in production; the fleet tests use a temporary tree)."""
    return posixpath.join(root, path.lstrip("/"))


def spec_of_runtime(runtime: str) -> RoleSpec:
    if runtime not in ROLE_OF_RUNTIME:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(ROLE_OF_RUNTIME)}")
    return ROLE_SPECS[ROLE_OF_RUNTIME[runtime]]
