"""The Debian 12 root filesystem the containers boot, built with mmdebstrap and cached by its recipe.

Only what an Ubuntu cloud image already has (systemd, cloud-init, python3, curl, sudo, sshd);
what the user-data installs itself (python3-boto3, python3-venv, ...) is left out, so the
document's own `packages:` list is exercised. The cache key hashes the package list and the
configuration below, so changing either builds a new image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from scripts.boot.netplan import IMDS, PROXY_URL

CACHE_ROOT = Path(os.environ.get("BOOT_TEST_CACHE", "/var/cache/hdtp-boot"))
SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",
    "python3",
    "ca-certificates",
    "curl",
    "sudo",
    "openssh-server",
    "iproute2",
    "netbase",
    "locales",
)

_PROXY_ENV = (
    f'"http_proxy={PROXY_URL}" "https_proxy={PROXY_URL}" "HTTP_PROXY={PROXY_URL}" "HTTPS_PROXY={PROXY_URL}" '
    f'"no_proxy={IMDS},.amazonaws.com" "NO_PROXY={IMDS},.amazonaws.com" '
)
# This workplace's egress re-signs TLS with its own CA (copied in by the stage): pip's and
# Node's own CA bundles would refuse it; a real host needs neither setting.
_CA_ENV = '"PIP_CERT=/etc/ssl/certs/ca-certificates.crt" "NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt"'
_APT_PROXY = f'Acquire::http::Proxy "{PROXY_URL}";\nAcquire::http::Pipeline-Depth "0";\nAcquire::Languages "none";\n'

# Files added to the image: the stand-in environment, never the user-data's business.
CONFIG_FILES = {
    # NoCloud only: no probing of other datasources; the network is static (below), no DHCP.
    "etc/cloud/cloud.cfg.d/90-boot-test.cfg": "datasource_list: [NoCloud, None]\nnetwork: {config: disabled}\n",
    # Every process cloud-init starts reaches the registries only through the test's proxy.
    "etc/systemd/system.conf.d/90-boot-test-proxy.conf": f"[Manager]\nDefaultEnvironment={_PROXY_ENV}{_CA_ENV}\n",
    "etc/apt/apt.conf.d/90-boot-test-proxy": _APT_PROXY,
}
SETUP_COMMANDS = (
    # cloud-init sets LANG=en_US.UTF-8, which an Ubuntu image has and a bare Debian lacks
    "sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen && locale-gen",
    "systemctl enable systemd-networkd",
    "systemctl mask systemd-networkd-wait-online.service",
    "passwd -l root",
)


def recipe_key() -> str:
    recipe = repr((SUITE, PACKAGES, sorted(CONFIG_FILES.items()), SETUP_COMMANDS))
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def cached_image() -> Path:
    return CACHE_ROOT / recipe_key() / "root"


def build_image(log) -> tuple[Path, float]:
    """The cached root filesystem, building it first if needed; returns (path, seconds spent)."""
    root = cached_image()
    if (root.parent / "complete").exists():
        return root, 0.0
    started = time.monotonic()
    for old in CACHE_ROOT.glob("?" * 16):  # images of older recipes: ~400 MB each
        shutil.rmtree(old, ignore_errors=True)
    root.parent.mkdir(parents=True)
    partial = root.parent / "partial"
    log(f"building the Debian {SUITE} image with mmdebstrap into {root.parent} (a few minutes)")
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=apt", f"--include={','.join(PACKAGES)}", SUITE, str(partial)],
        check=True,
        timeout=1800,
    )
    for rel, text in CONFIG_FILES.items():
        path = partial / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for command in SETUP_COMMANDS:
        subprocess.run(["chroot", str(partial), "sh", "-c", command], check=True, timeout=120, capture_output=True)
    partial.rename(root)
    (root.parent / "complete").touch()
    return root, time.monotonic() - started
