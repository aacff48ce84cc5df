"""Render the cloud-init user-data that turns a fresh Ubuntu 24.04 instance into one worker.

Pure: settings in, text out. The host layout (user, release dir, `current` symlink, env file,
systemd unit) is the one in infra/README.md, which the fleet tool's deploys rely on.

The worker files do not fit in EC2's 16 KB user-data (about 26 KB gzipped for worker-nodejs), so
the document carries a small fetch script and the release's S3 key and sha256 instead.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from infra.releases import Release
from infra.roles import SERVICE_USER, RoleSpec

USER_DATA_LIMIT = 16384  # bytes: the EC2 API's limit on user-data

FETCH_SCRIPT_SOURCE = Path(__file__).with_name("fetch_release.py")
FETCH_SCRIPT_PATH = "/usr/local/sbin/fetch-worker-release"

# Ubuntu 24.04's apt nodejs is 18, too old for sharp 0.35 (needs >= 20.9). Official build,
# pinned by version and sha256 (nodejs.org/dist/v20.20.0/SHASUMS256.txt).
NODE_VERSION = "v20.20.0"
NODE_TARBALL_SHA256 = "4f48b52acf42130844a3a75e94da0e9629009d09e4101b2304895c24f3fbe609"
NODE_DIR = f"/opt/node-{NODE_VERSION}"

MEMORY_MAX = "700M"  # t2.micro has 1 GiB; leave room for sshd, journald and cloud-init
# Every host: python3-boto3 runs the fetch script (Ubuntu's python3 is always there).
COMMON_APT_PACKAGES = ("python3-boto3",)

_UNSAFE_IN_ENV_VALUE = set("\"'\\$`#")


def env_file(*, port: int, token: str, build: str) -> str:
    """KEY=VALUE lines read by systemd (EnvironmentFile=) as root; the worker user never reads it."""
    for name, value in (("token", token), ("build", build)):
        if not value or any(ch.isspace() or ch in _UNSAFE_IN_ENV_VALUE for ch in value):
            raise ValueError(f"{name} must be non-empty with no spaces, quotes, $, ` or #")
    return (f"WORKER_HOST=0.0.0.0\nWORKER_PORT={port}\n"
            f"WORKER_TOKEN={token}\nWORKER_BUILD={build}\n")


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

[Install]
WantedBy=multi-user.target
"""


def fetch_command(release: Release, *, bucket: str, region: str, dest: str) -> str:
    q = shlex.quote
    return (f"{FETCH_SCRIPT_PATH} --region {q(region)} --bucket {q(bucket)} --key {q(release.key)} "
            f"--sha256 {release.sha256} --dest {q(dest)}")


def _install_dependencies(spec: RoleSpec) -> list[str]:
    current = f"{spec.base_dir}/current"
    if spec.runtime == "python":
        venv = f"{spec.base_dir}/venv"
        return [
            f"python3 -m venv {venv}",
            f"{venv}/bin/pip install --no-cache-dir --disable-pip-version-check "
            f"-r {current}/requirements.txt",
        ]
    tarball = f"/tmp/node-{NODE_VERSION}-linux-x64.tar.xz"
    url = f"https://nodejs.org/dist/{NODE_VERSION}/node-{NODE_VERSION}-linux-x64.tar.xz"
    return [
        f"curl -fsSL --retry 5 -o {tarball} {url}",
        f"echo '{NODE_TARBALL_SHA256}  {tarball}' | sha256sum -c -",
        f"mkdir -p {NODE_DIR}",
        f"tar -xJf {tarball} -C {NODE_DIR} --strip-components=1 --no-same-owner",
        f"ln -sfn {NODE_DIR}/bin/node /usr/bin/node",
        f"ln -sfn {NODE_DIR}/bin/npm /usr/bin/npm",
        f"rm -f {tarball}",
        f"cd {current} && npm ci --omit=dev --no-audit --no-fund",
    ]


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the embedded files stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def render_cloud_config(spec: RoleSpec, release: Release, *, bucket: str, region: str,
                        port: int, token: str) -> str:
    """The `#cloud-config` document for one host of `spec.role` running `release`."""
    release_dir = spec.release_dir(release.build)
    root_file = {"owner": "root:root"}
    write_files = [
        {"path": FETCH_SCRIPT_PATH, "permissions": "0755", **root_file,
         "content": FETCH_SCRIPT_SOURCE.read_text()},
        {"path": spec.env_file, "permissions": "0600", **root_file,
         "content": env_file(port=port, token=token, build=release.build)},
        {"path": f"/etc/systemd/system/{spec.unit_name}", "permissions": "0644", **root_file,
         "content": systemd_unit(spec)},
    ]
    runcmd = [
        # runcmd is one shell script: stop at the first failure instead of starting a broken worker.
        "set -eux",
        "export HOME=/root",
        f"id -u {SERVICE_USER} >/dev/null 2>&1 || useradd --system --user-group --no-create-home "
        f"--home-dir /nonexistent --shell /usr/sbin/nologin {SERVICE_USER}",
        fetch_command(release, bucket=bucket, region=region, dest=release_dir),
        f"ln -sfn releases/{release.build} {spec.base_dir}/current",
        *_install_dependencies(spec),
        "systemctl daemon-reload",
        f"systemctl enable --now {spec.unit_name}",
    ]
    document = {
        "package_update": True,
        "package_upgrade": False,  # unattended-upgrades applies security fixes; a full upgrade doubles boot time
        "packages": [*COMMON_APT_PACKAGES, *spec.apt_packages],
        "write_files": write_files,
        "runcmd": runcmd,
    }
    body = yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000, allow_unicode=True)
    text = "#cloud-config\n" + body
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"{spec.role} user-data is {len(text.encode())} bytes, over EC2's "
                         f"{USER_DATA_LIMIT}-byte limit")
    return text
