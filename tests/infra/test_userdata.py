"""The cloud-init user-data: valid for cloud-init, small enough for EC2, and it really makes a worker.

The end-to-end test does on loopback what a fresh instance does at first boot: the embedded fetch
script downloads the release from S3 (a real moto server here), checks its sha256 and unpacks it;
the embedded secrets script reads the token and the TLS key and certificate from SSM (the same
moto server); the embedded env file configures the worker; it starts and serves the contract over TLS.
"""

from __future__ import annotations

import grp
import hashlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest
import yaml
from PIL import Image

from infra.bundle import bundle_files, tarball
from infra.releases import Release
from infra.userdata import (
    FETCH_SCRIPT_PATH,
    FETCH_SCRIPT_SOURCE,
    MAX_INFLIGHT_PIXELS,
    MEMORY_MAX,
    NODE_TARBALL_SHA256,
    NODE_TARBALL_URL,
    NODE_VERSION,
    NOFILE_LIMIT,
    NPM_TARBALL_SHA256,
    NPM_TARBALL_URL,
    SECRETS_SCRIPT_PATH,
    SECRETS_SCRIPT_SOURCE,
    USER_DATA_LIMIT,
    HostSecrets,
    env_file,
    file_text,
    render_cloud_config,
)
from scripts.testkit.procs import ROOT, TlsClient, start_worker
from scripts.testkit.tls import Authority
from stripes.roles import ROLE_SPECS, SERVICE_USER
from tests.support.ci import skip_or_fail
from tests.support.moto_server import REGION, aws_env, start_moto_server

BUCKET = "releases-bucket-test"
TOKEN = "Xq7vLr2NcT9wHs4KpB6dFy1MzJ8gUe3Ra5WkQn0t"
PREFIX = "/heterogeneous-task-processor/dev"
SECRETS = HostSecrets(PREFIX)
PORTS = {"worker-python": 5001, "worker-nodejs": 5002}
CLOUD_INIT = shutil.which("cloud-init") or ("/usr/bin/cloud-init" if os.path.exists("/usr/bin/cloud-init") else None)


def release(role: str) -> Release:
    return Release.of(role, bundle_files(role))


def render(role: str, secrets: HostSecrets = SECRETS, bucket: str = BUCKET) -> str:
    return render_cloud_config(
        ROLE_SPECS[role], release(role), bucket=bucket, region=REGION, port=PORTS[role], secrets=secrets
    )


def parsed(role: str, **kwargs) -> dict:
    text = render(role, **kwargs)
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def embedded(document: dict, path: str) -> dict:
    (entry,) = [f for f in document["write_files"] if f["path"] == path]
    return entry


def schema_check(path: Path) -> subprocess.CompletedProcess:
    if CLOUD_INIT is None:
        skip_or_fail("Debian's cloud-init is not installed (apt-get install cloud-init)")
    return subprocess.run(
        [CLOUD_INIT, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )


# ---------------------------------------------------------------- the document


@pytest.mark.cloudinit
@pytest.mark.parametrize("role", sorted(ROLE_SPECS))
def test_user_data_passes_cloud_init_schema(role, tmp_path):
    path = tmp_path / f"{role}.yaml"
    path.write_text(render(role))
    result = schema_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


@pytest.mark.cloudinit
def test_schema_check_catches_a_broken_document(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(render("worker-python").replace("\n- path: ", "\n- pth: ", 1))
    result = schema_check(path)
    assert result.returncode != 0
    assert "'path' is a required property" in result.stdout + result.stderr


@pytest.mark.cloudinit
def test_schema_accepts_the_mutual_tls_document(tmp_path):
    path = tmp_path / "mtls.yaml"
    path.write_text(render("worker-nodejs", HostSecrets(PREFIX, client_ca=True)))
    result = schema_check(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("role", sorted(ROLE_SPECS))
def test_user_data_fits_ec2_limit_even_with_the_longest_names(role):
    # 100-character project and stack names; S3 bucket names are at most 63.
    longest_prefix = f"/{'p' * 100}/{'s' * 100}"
    longest = render(role, HostSecrets(longest_prefix, client_ca=True), bucket="b" * 63)
    assert len(longest.encode()) < USER_DATA_LIMIT - 2048, len(longest.encode())  # room for growth
    with pytest.raises(ValueError, match="over EC2's 16384-byte limit"):
        render(role, HostSecrets("/" + "p" * USER_DATA_LIMIT))


@pytest.mark.parametrize("role", sorted(ROLE_SPECS))
def test_host_layout_matches_the_shared_design(role):
    spec, rel = ROLE_SPECS[role], release(role)
    document = parsed(role)
    env = embedded(document, f"/etc/{role}/env")
    assert (env["permissions"], env["owner"]) == ("0600", "root:root")
    secrets = f"/etc/{role}/secrets"
    assert env["content"] == (
        f"WORKER_HOST=0.0.0.0\nWORKER_PORT={PORTS[role]}\nWORKER_TOKEN_FILE={secrets}/worker-token\n"
        f"WORKER_TLS_CERT={secrets}/tls.crt\nWORKER_TLS_KEY={secrets}/tls.key\nWORKER_BUILD={rel.build}\n"
    )
    unit = embedded(document, f"/etc/systemd/system/{role}.service")["content"]
    for line in (
        f"User={SERVICE_USER}",
        f"WorkingDirectory=/opt/{role}/current",
        f"EnvironmentFile=/etc/{role}/env",
        f"ExecStart={spec.exec_start}",
        "Restart=always",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "MemoryMax=700M",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines(), line
    for path, source in ((FETCH_SCRIPT_PATH, FETCH_SCRIPT_SOURCE), (SECRETS_SCRIPT_PATH, SECRETS_SCRIPT_SOURCE)):
        script = embedded(document, path)
        assert (script["permissions"], script["encoding"]) == ("0755", "gz+b64")
        assert file_text(script) == source.read_text()

    runcmd = document["runcmd"]
    assert runcmd[0] == "set -eux"  # one script: the first failure stops the boot script
    steps = "\n".join(runcmd)
    assert (
        "useradd --system --user-group --no-create-home --home-dir /nonexistent "
        f"--shell /usr/sbin/nologin {SERVICE_USER}" in steps
    )
    assert f"--dest /opt/{role}/releases/{rel.build}" in steps
    assert f"--key {role}/{rel.build}.tar.gz --sha256 {rel.sha256} " in steps
    assert f"ln -sfn releases/{rel.build} /opt/{role}/current" in runcmd
    assert runcmd[-3:] == [
        "systemctl daemon-reload",
        f"systemctl enable --now {role}.service",
        f"systemctl enable --now {role}-secrets.timer",
    ]
    assert "python3-boto3" in document["packages"]
    assert document["package_update"] is True


@pytest.mark.parametrize("role", sorted(ROLE_SPECS))
def test_secrets_are_fetched_before_the_worker_starts_and_every_minute(role):
    document = parsed(role)
    runcmd = document["runcmd"]
    command = (
        f"{SECRETS_SCRIPT_PATH} --region {REGION} --prefix {PREFIX} --dest /etc/{role}/secrets --group {SERVICE_USER}"
    )
    make_dir = runcmd.index(f"install -d -m 0750 -o root -g {SERVICE_USER} /etc/{role}/secrets")
    useradd = next(i for i, c in enumerate(runcmd) if "useradd" in c)
    assert useradd < make_dir < runcmd.index(command) < runcmd.index(f"systemctl enable --now {role}.service")
    service = embedded(document, f"/etc/systemd/system/{role}-secrets.service")["content"].splitlines()
    assert {"Type=oneshot", f"ExecStart={command}", f"ReadWritePaths=/etc/{role}/secrets"} <= set(service)
    timer = embedded(document, f"/etc/systemd/system/{role}-secrets.timer")["content"].splitlines()
    assert {"OnBootSec=60", "OnUnitActiveSec=60", "AccuracySec=1s", "WantedBy=timers.target"} <= set(timer)


def test_tls_and_mutual_tls_settings_change_only_the_env_file_and_the_fetch():
    plain, mutual = (
        parsed("worker-python", secrets=HostSecrets(PREFIX, tls=False)),
        parsed("worker-python", secrets=HostSecrets(PREFIX, client_ca=True)),
    )
    plain_env, mutual_env = env_from(plain, "worker-python"), env_from(mutual, "worker-python")
    assert plain_env["WORKER_TOKEN_FILE"] == "/etc/worker-python/secrets/worker-token"
    assert not {"WORKER_TLS_CERT", "WORKER_TLS_KEY", "WORKER_TLS_CLIENT_CA", "WORKER_TOKEN"} & set(plain_env)
    assert mutual_env["WORKER_TLS_CLIENT_CA"] == "/etc/worker-python/secrets/client-ca.crt"
    assert mutual_env["WORKER_TLS_KEY"] == "/etc/worker-python/secrets/tls.key"
    assert any(c.startswith(SECRETS_SCRIPT_PATH) and c.endswith(" --client-ca") for c in mutual["runcmd"])
    assert not any(c.startswith(SECRETS_SCRIPT_PATH) and "--client-ca" in c for c in plain["runcmd"])


def test_python_host_builds_a_venv_from_the_pinned_requirements():
    runcmd = parsed("worker-python")["runcmd"]
    assert "[ -x /opt/worker-python/venv/bin/pip ] || python3 -m venv /opt/worker-python/venv" in runcmd
    assert (
        "timeout 900 /opt/worker-python/venv/bin/pip install --no-cache-dir --disable-pip-version-check "
        "-r /opt/worker-python/current/requirements.txt"
    ) in runcmd
    assert "python3-venv" in parsed("worker-python")["packages"]


def test_node_host_installs_pinned_node_20_and_locked_deps():
    runcmd = parsed("worker-nodejs")["runcmd"]
    assert NODE_VERSION.startswith("v20.")
    # Both tarballs come from the npm registry (reachable from the hosts and the boot test), and
    # each checksum is verified before its archive is unpacked.
    for url, sha256 in ((NODE_TARBALL_URL, NODE_TARBALL_SHA256), (NPM_TARBALL_URL, NPM_TARBALL_SHA256)):
        assert url.startswith("https://registry.npmjs.org/")
        tarball_path = f"/tmp/{url.rsplit('/', 1)[-1]}"
        fetch = runcmd.index(f"curl -fsSL --retry 5 -o {tarball_path} {url}")
        check = runcmd.index(f"echo '{sha256}  {tarball_path}' | sha256sum -c -")
        unpack = next(i for i, c in enumerate(runcmd) if c.startswith(f"tar -xzf {tarball_path}"))
        assert fetch < check < unpack
    assert f"ln -sfn /opt/node-{NODE_VERSION}/bin/node /usr/bin/node" in runcmd
    assert "cd /opt/worker-nodejs/current && timeout 900 npm ci --omit=dev --no-audit --no-fund" in runcmd


@pytest.mark.parametrize("role", sorted(ROLE_SPECS))
def test_unit_sets_open_files_above_the_idle_connection_cap(role):
    """Both workers keep at most 1000 idle connections (tests/contract/README.md, rule 10);
    systemd's default soft limit of 1024 left worker-python ~14 descriptors beyond them."""
    unit = embedded(parsed(role), f"/etc/systemd/system/{role}.service")["content"]
    assert f"LimitNOFILE={NOFILE_LIMIT}" in unit.splitlines()
    assert NOFILE_LIMIT >= 2 * 1583  # twice the peak measured under attack (infra/userdata.py)


def test_unit_bounds_in_flight_pixels_under_its_memory_limit():
    unit = embedded(parsed("worker-python"), "/etc/systemd/system/worker-python.service")["content"]
    assert f"Environment=WORKER_MAX_INFLIGHT_PIXELS={MAX_INFLIGHT_PIXELS}" in unit.splitlines()
    # ~10 bytes of RSS per in-flight pixel (measured on worker-python) must fit in MemoryMax.
    assert int(MEMORY_MAX.rstrip("M")) * 2**20 > MAX_INFLIGHT_PIXELS * 10


# ---------------------------------------------------------------- the install is checked


def install_tail(role: str, base: Path) -> str:
    """The document's runcmd from the dependency install to the end, with /opt/<role> moved to `base`."""
    runcmd = parsed(role)["runcmd"]
    marker = "npm ci" if role == "worker-nodejs" else "/bin/pip install"
    start = next(i for i, c in enumerate(runcmd) if marker in c)
    return "set -eux\n" + "\n".join(runcmd[start:]).replace(f"/opt/{role}", str(base))


def stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def run_install_tail(role: str, tmp_path: Path, installer_body: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the tail with the installer replaced by `installer_body` and a recording systemctl."""
    base, bin_dir, calls = tmp_path / role, tmp_path / "bin", tmp_path / "systemctl.calls"
    current = base / "current"
    current.mkdir(parents=True)
    for name in bundle_files(role):
        (current / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / role / name, current / name)
    stub(bin_dir / "systemctl", f'echo "$*" >> {calls}')
    if role == "worker-nodejs":
        stub(bin_dir / "npm", installer_body)
    else:
        stub(base / "venv" / "bin" / "pip", installer_body)
        (base / "venv" / "bin" / "python").symlink_to(PYTHON_WITHOUT_DEPS)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", install_tail(role, base)], env=env, capture_output=True, text=True, timeout=120
    )
    return done, calls.read_text() if calls.exists() else ""


PYTHON_WITHOUT_DEPS = "/usr/bin/python3"  # Debian's python3: no flask, gunicorn or Pillow
NPM_EXIT_0 = 'echo "npm error Exit handler never called!" >&2; exit 0'


@pytest.mark.parametrize("role", sorted(ROLE_SPECS))
def test_boot_stops_when_the_installer_exits_0_without_installing(role, tmp_path):
    """The bug a real boot found: `npm ci` failed, exited 0, and the service was enabled anyway."""
    if role == "worker-nodejs" and shutil.which("node") is None:
        skip_or_fail("node is not installed")
    done, systemctl = run_install_tail(role, tmp_path, NPM_EXIT_0)
    assert done.returncode != 0, done.stderr[-2000:]
    assert "enable" not in systemctl
    missing = "Cannot find module" if role == "worker-nodejs" else "ModuleNotFoundError"
    assert missing in done.stderr


def test_boot_enables_the_service_once_the_dependencies_load(tmp_path):
    """The check passes a real install: the repo's own node_modules from the same lock file."""
    if shutil.which("node") is None:
        skip_or_fail("node is not installed")
    link = f"ln -s {ROOT / 'worker-nodejs' / 'node_modules'} node_modules"
    done, systemctl = run_install_tail("worker-nodejs", tmp_path, link)
    assert done.returncode == 0, done.stderr[-2000:]
    assert systemctl.splitlines() == [
        "daemon-reload",
        "enable --now worker-nodejs.service",
        "enable --now worker-nodejs-secrets.timer",
    ]


@pytest.mark.parametrize("build", ["has space", "quote'", "dollar$x", "", "new\nline"])
def test_env_file_refuses_values_systemd_would_misread(build):
    with pytest.raises(ValueError, match="WORKER_BUILD must be non-empty"):
        env_file(ROLE_SPECS["worker-python"], port=5001, build=build, secrets=SECRETS)


# ---------------------------------------------------------------- first boot, on loopback


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_moto_server(tmp_path_factory.mktemp("moto-s3"))
    client = boto3.client(
        "s3", region_name=REGION, endpoint_url=server.url, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    client.create_bucket(Bucket=BUCKET)
    yield server, client
    server.stop()


def boot_fetch(
    document: dict, tmp: Path, endpoint: str, dest: Path, script_path: str = FETCH_SCRIPT_PATH
) -> subprocess.CompletedProcess:
    """Run one of the document's fetch steps (embedded script, same arguments) with --dest moved to
    `dest`, and the secrets' group (`worker` on a host) the test's own."""
    script = tmp / script_path.rsplit("/", 1)[-1]
    script.write_text(file_text(embedded(document, script_path)))
    (command,) = [c for c in document["runcmd"] if c.startswith(script_path + " ")]
    argv = shlex.split(command)[1:]
    argv[argv.index("--dest") + 1] = str(dest)
    if "--group" in argv:
        argv[argv.index("--group") + 1] = grp.getgrgid(os.getegid()).gr_name
    return subprocess.run(
        [sys.executable, str(script), *argv], env=aws_env(endpoint), capture_output=True, text=True, timeout=90
    )


def env_from(document: dict, role: str) -> dict[str, str]:
    lines = embedded(document, f"/etc/{role}/env")["content"].splitlines()
    return dict(line.split("=", 1) for line in lines)


def put_stack_secrets(endpoint: str, authority: Authority) -> None:
    """What the Pulumi program writes to SSM (infra/fleet_secrets.py), with a throwaway CA's certificate."""
    ssm = boto3.client(
        "ssm", region_name=REGION, endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    server = authority.issue()
    for name, value, kind in (
        ("worker-token", TOKEN, "SecureString"),
        ("worker-tls-key", server.key_pem.decode(), "SecureString"),
        ("worker-tls-cert", server.cert_pem.decode(), "String"),
    ):
        ssm.put_parameter(Name=f"{PREFIX}/{name}", Value=value, Type=kind, Overwrite=True)


def small_png(width: int = 12, height: int = 7) -> bytes:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 20 % 256, y * 30 % 256, (x + y) * 10 % 256) for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("role", sorted(ROLE_SPECS))
def test_first_boot_fetches_the_release_and_starts_a_real_worker(role, s3, tmp_path):
    server, client = s3
    spec, rel = ROLE_SPECS[role], release(role)
    client.put_object(Bucket=BUCKET, Key=rel.key, Body=rel.archive)
    document = parsed(role)

    release_dir = tmp_path / "releases" / rel.build
    fetched = boot_fetch(document, tmp_path, server.url, release_dir)
    assert fetched.returncode == 0, fetched.stderr
    shipped = {str(p.relative_to(release_dir)) for p in release_dir.rglob("*") if p.is_file()}
    assert shipped == set(bundle_files(role))
    if spec.runtime == "nodejs":
        # The host runs `npm ci`; here the already installed, same lockfile's modules stand in.
        (release_dir / "node_modules").symlink_to(ROOT / "worker-nodejs" / "node_modules")

    authority = Authority()
    put_stack_secrets(server.url, authority)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o750)
    fetched = boot_fetch(document, tmp_path, server.url, secrets_dir, SECRETS_SCRIPT_PATH)
    assert fetched.returncode == 0, fetched.stderr
    assert (secrets_dir / "worker-token").read_text().strip() == TOKEN

    env = env_from(document, role)
    assert env["WORKER_HOST"] == "0.0.0.0" and env["WORKER_PORT"] == str(PORTS[role])
    # Same settings as on the host, except the address (tests listen on loopback only) and the
    # secrets folder, which the fetch above filled the way the host's first boot does.
    local_env = {
        k: v.replace(f"/etc/{role}/secrets", str(secrets_dir))
        for k, v in env.items()
        if k not in ("WORKER_HOST", "WORKER_PORT")
    }
    tls = TlsClient(authority.write_ca(tmp_path))
    worker = start_worker(spec.runtime, tmp_path / "run", local_env, cwd=release_dir, tls=tls)
    try:
        session = worker.session()
        assert worker.url.startswith("https://")
        health = session.get(f"{worker.url}/healthz", timeout=10)
        assert health.status_code == 200
        body = health.json()
        assert body["runtime"] == spec.runtime
        assert body["build"] == rel.build
        assert body["operations"] == list(spec.operations)
        assert body["tls"] is True

        png = small_png()
        unauthorized = session.post(
            f"{worker.url}/process", data=png, headers={"Content-Type": "image/png"}, timeout=30
        )
        assert unauthorized.status_code == 401
        response = session.post(
            f"{worker.url}/process",
            data=png,
            timeout=30,
            headers={"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 200, response.text[:300]
        assert Image.open(io.BytesIO(response.content)).size == (12, 7)
    finally:
        worker.stop()


def test_fetch_refuses_an_archive_with_the_wrong_sha256(s3, tmp_path):
    server, client = s3
    rel = release("worker-python")
    client.put_object(Bucket=BUCKET, Key=rel.key, Body=rel.archive + b"tampered")
    dest = tmp_path / "release"
    result = boot_fetch(parsed("worker-python"), tmp_path, server.url, dest)
    assert result.returncode == 1
    assert "sha256 mismatch" in result.stderr
    assert not dest.exists()


def test_fetch_reports_a_missing_release(s3, tmp_path):
    server, _ = s3
    result = boot_fetch(parsed("worker-python", bucket="no-such-bucket"), tmp_path, server.url, tmp_path / "release")
    assert result.returncode != 0
    assert "cannot get s3://no-such-bucket/worker-python/" in result.stderr
    assert "Traceback" not in result.stderr


def test_fetch_refuses_entries_outside_the_release_dir(s3, tmp_path):
    server, client = s3
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    archive = evil.getvalue()
    key = "worker-python/evil.tar.gz"
    client.put_object(Bucket=BUCKET, Key=key, Body=archive)
    script = tmp_path / "fetch"
    script.write_text(FETCH_SCRIPT_SOURCE.read_text())
    dest = tmp_path / "release"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--region",
            REGION,
            "--bucket",
            BUCKET,
            "--key",
            key,
            "--sha256",
            hashlib.sha256(archive).hexdigest(),
            "--dest",
            str(dest),
        ],
        env=aws_env(server.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing archive entry '../escaped.txt'" in result.stderr
    assert not (tmp_path / "escaped.txt").exists()


def test_release_archive_is_the_shared_bundle_tarball():
    rel = release("worker-nodejs")
    assert rel.archive == tarball(bundle_files("worker-nodejs"))
    assert rel.sha256 == hashlib.sha256(rel.archive).hexdigest()
