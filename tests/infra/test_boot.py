"""A real first boot: each role's user-data, as the Pulumi program renders it, through cloud-init
and systemd in a systemd-nspawn container (Debian 12 built by mmdebstrap), on a private network.

Stand-ins outside the document (scripts/boot/): IMDSv2 with instance-profile credentials, one moto
server behind TLS under the bucket's own name and SSM's regional name (a test CA in the image's
trust store) holding the release and the stack's parameters (token, and a server certificate for
the fleet's name from a throwaway fleet CA), and a proxy that lets only the package registries
through. The worker is then reached over HTTPS by IP, verifying that CA and the fleet's name.
Needs root, mmdebstrap, systemd-nspawn, nsenter and ip; without them it skips (a failure under
CI=true, which installs them).
`make boot-test` runs only this file and prints a timing table per boot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import time

import pytest
from PIL import Image, ImageChops

from infra.bundle import build_id, bundle_files
from infra.fleet_tls import CLIENT_NAME
from infra.userdata import NOFILE_LIMIT, SECRETS_INTERVAL_SECONDS
from scripts.boot import inspect
from scripts.boot.image import build_image
from scripts.boot.netplan import machine_address
from scripts.boot.probe import gradient_png
from scripts.boot.stage import Stage
from scripts.testkit.cli import assert_one_error_line, clean_env
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from stripes.roles import PARAM_CLIENT_CA, ROLE_SPECS
from tests.support.ci import skip_or_fail
from tests.support.infra_harness import reveal, run_program
from tests.support.moto_server import aws_env
from tests.support.sshd import make_key

ROLES = ("worker-python", "worker-nodejs")
REGISTRY_OF = {"worker-python": "files.pythonhosted.org", "worker-nodejs": "registry.npmjs.org"}
BOOT_TIMEOUT = 900  # seconds for cloud-init to finish one boot (cold caches, 2 shared cores)
# `systemd-analyze security` exposure of both units when this test was written: no worse allowed
EXPOSURE_TODAY = 4.0
# What the secrets folder holds after a good boot (mode owner); mutualTls adds the client CA.
SECRETS_FACTS = {
    "secrets": "750 root:worker",
    "worker-token": "640 root:worker",
    "tls.key": "640 root:worker",
    "tls.crt": "644 root:worker",
    "worker_reads_token": True,
    "login_user_reads_token": False,
}
MUTUAL_ROLE = "worker-python"  # one boot: the client CA wiring is the same for both roles
TIMINGS: list[tuple[str, str, float]] = []  # (boot, step, seconds) for the table at the end


def missing() -> str | None:
    if os.geteuid() != 0:
        return "booting containers needs root"
    for tool in ("mmdebstrap", "systemd-nspawn", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install mmdebstrap systemd-container util-linux iproute2)"
    return None


@pytest.fixture(scope="module", autouse=True)
def cleanup_on_sigterm(request):
    """SIGTERM unwinds like Ctrl-C, so every stage's namespace, container and process is removed.
    At the end the timing table goes to the terminal, past pytest's capture."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)
    if TIMINGS:
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print_table()


@pytest.fixture(scope="module")
def image():
    reason = missing()
    if reason:
        skip_or_fail(reason)
    root, seconds = build_image(lambda line: print(line, file=sys.stderr))
    TIMINGS.append(("image", "mmdebstrap build (0 = cached)", seconds))
    return root


@pytest.fixture(scope="module")
def program():
    """The real Pulumi program under mocks: each role's user-data and the release objects."""
    return rendered({})


@pytest.fixture(scope="module")
def mutual_program():
    """The same with `mutualTls: true`: the fleet CA also in `worker-client-ca`, and the
    coordinator's client certificate from it (as infra/fleet_tls.py issues one)."""
    return rendered({"mutualTls": "true"})


def rendered(settings: dict[str, str]) -> dict:
    run = run_program({"clientCidr": "203.0.113.0/24", "aws:region": "eu-west-1", **settings})
    user_data = {}
    for instance in run.of_type("aws:ec2/instance:Instance"):
        user_data[instance.inputs["tags"]["Role"]] = reveal(instance.inputs["userData"])
    objects = {
        o.inputs["key"]: base64.b64decode(o.inputs["contentBase64"])
        for o in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    }
    release = argument_of(user_data["worker-python"], "fetch-worker-release", ("--bucket", "--region"))
    prefix = argument_of(user_data["worker-python"], "fetch-worker-secrets", ("--prefix",))["prefix"]
    fleet_ca = Authority("boot-test fleet CA")
    server = fleet_ca.issue(FLEET_TLS_NAME)
    token = secrets.token_hex(20)
    parameters = {
        f"{prefix}/worker-token": ("SecureString", token),
        f"{prefix}/worker-tls-key": ("SecureString", server.key_pem.decode()),
        f"{prefix}/worker-tls-cert": ("String", server.cert_pem.decode()),
    }
    if settings.get("mutualTls") == "true":
        parameters[f"{prefix}/{PARAM_CLIENT_CA}"] = ("String", fleet_ca.cert_pem.decode())
    return {
        "user_data": user_data,
        "outputs": run.outputs,  # what `pulumi stack output --json` would hold (mock addresses)
        "key_pairs": [key.inputs["publicKey"] for key in run.of_type("aws:ec2/keyPair:KeyPair")],
        "objects": objects,
        "token": token,
        "prefix": prefix,
        "parameters": parameters,
        "fleet_ca": fleet_ca.cert_pem,
        "client": fleet_ca.issue(CLIENT_NAME, client=True),
        **release,
    }


def argument_of(document: str, command: str, options: tuple[str, ...]) -> dict[str, str]:
    """The values of `options` on the runcmd line that runs `command`."""
    line = next(line for line in document.splitlines() if f"{command} --" in line)
    argv = shlex.split(line.lstrip("- "))
    return {option.lstrip("-"): argv[argv.index(option) + 1] for option in options}


def port_of(role: str, document: str) -> int:
    return int(next(line.split("=", 1)[1] for line in document.splitlines() if line.strip().startswith("WORKER_PORT=")))


def url_of(role: str, document: str) -> str:
    return f"https://{machine_address(ROLES.index(role))}:{port_of(role, document)}"


def probe(stage: Stage, role: str, document: str, token: str, timeout: float = 60, client=None) -> dict:
    """Over HTTPS to the machine's IP, trusting only the fleet CA and checking the fleet's name;
    `client`: (cert, key) files of a client certificate to present."""
    ca = stage.workdir / "fleet-ca.crt"
    argv = [sys.executable, "-m", "scripts.boot.probe", url_of(role, document), token, str(timeout), f"--ca={ca}"]
    if client:
        argv += [f"--cert={client[0]}", f"--key={client[1]}"]
    done = stage.in_net([*argv, f"--name={FLEET_TLS_NAME}"], timeout + 120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def staged(image, program, parameters=None, objects=None, **options) -> Stage:
    return Stage(
        image,
        bucket=program["bucket"],
        region=program["region"],
        objects=program["objects"] if objects is None else objects,
        parameters=program["parameters"] if parameters is None else parameters,
        **options,
    )


def print_table() -> None:
    lines = ["", "boot test timings (seconds)", f"{'boot':<42} {'step':<32} {'s':>7}"]
    lines += [f"{boot:<42} {step:<32} {seconds:7.1f}" for boot, step, seconds in TIMINGS]
    print("\n".join(lines), file=sys.stderr)


def boot_role(stage: Stage, role: str, document: str, public_keys: tuple[str, ...] = ()):
    started = time.monotonic()
    box = stage.boot(role, ROLES.index(role), document, public_keys)
    result = inspect.cloud_init_result(box, BOOT_TIMEOUT)
    return box, result, time.monotonic() - started


# ---------------------------------------------------------------- a good boot, per role


@pytest.mark.timeout(BOOT_TIMEOUT + 600)
@pytest.mark.parametrize("role", ROLES)
def test_first_boot_makes_a_hardened_worker(role, image, program):
    document = program["user_data"][role]
    assert "WORKER_TOKEN=" not in document and "-----BEGIN" not in document  # names only, no secret
    with staged(image, program) as stage:
        (stage.workdir / "fleet-ca.crt").write_bytes(program["fleet_ca"])
        box, result, boot_seconds = boot_role(stage, role, document)
        assert result["errors"] == [], result["log"]
        assert "status: done" in result["status"], result["log"]
        assert inspect.fleet_boot_verdict(box).problem() is None
        reply = probe(stage, role, document, program["token"])
        for step, seconds in inspect.step_times(box, reply.get("healthy_at")).items():
            TIMINGS.append((role, step, seconds))
        TIMINGS.append((role, "boot to cloud-init done", boot_seconds))

        assert reply["healthz"], (reply, box.sh(f"journalctl -u {role} --no-pager -n 20").stdout)
        spec = ROLE_SPECS[role]
        assert reply["healthz"]["runtime"] == spec.runtime, reply
        assert reply["healthz"]["tls"] is True, reply
        assert reply["healthz"]["operations"] == list(spec.operations)
        assert (reply["no_token_status"], reply["token_status"]) == (401, 200), reply
        assert reply["size"] == [24, 10] and reply["max_pixel_diff"] <= 1, reply

        facts = inspect.service_facts(box, role)
        assert (facts["ActiveState"], facts["UnitFileState"]) == ("active", "enabled"), facts
        assert facts["User"] == "worker" and facts["Uid"] == facts["worker_uid"] != "0", facts
        assert int(facts["CapEff"], 16) == 0 and int(facts["CapPrm"], 16) == 0, facts
        assert facts["NoNewPrivs"] == "1", facts
        assert (
            facts["ProtectSystem"],
            facts["ProtectHome"],
            facts["PrivateTmp"],
            facts["PrivateDevices"],
            facts["NoNewPrivileges"],
        ) == ("strict", "yes", "yes", "yes", "yes")
        # LimitNOFILE, soft and hard, in the running worker (node raises its soft limit to the hard one)
        limits = box.sh(f"grep '^Max open files' /proc/{facts['MainPID']}/limits").stdout.split()
        assert limits[3:5] == [str(NOFILE_LIMIT)] * 2, limits
        exposure = inspect.exposure(box, role)
        TIMINGS.append((role, "systemd-analyze security exposure", exposure or -1))
        assert exposure is not None and exposure <= EXPOSURE_TODAY, exposure

        assert inspect.env_file_facts(box, role) == {"mode_owner": "600 root:root", "worker_can_read": False}
        assert inspect.secrets_facts(box, role) == SECRETS_FACTS
        assert inspect.unit_state(box, f"{role}-secrets.timer") == ("active", "enabled")
        rotate_token(stage, box, role, document, program)

        logs = inspect.json_log_lines(box, role)
        assert any(line.get("service") == role and {"time", "level", "msg"} <= line.keys() for line in logs), logs[-5:]

        killed_at = time.monotonic()
        box.sh(f"kill -9 {facts['MainPID']}", check=True)
        again = probe(stage, role, document, program["token"], timeout=60)
        TIMINGS.append((role, "kill -9 -> healthy again", time.monotonic() - killed_at))
        assert again["healthz"], "not healthy again after kill -9"
        restarted = inspect.service_facts(box, role)
        assert restarted["MainPID"] != facts["MainPID"] and restarted["ActiveState"] == "active"
        # The dependencies really came through the registry proxy (nothing is preinstalled).
        assert f"CONNECT {REGISTRY_OF[role]}:443" in stage.proxy_log()


def rotate_token(stage: Stage, box, role: str, document: str, program: dict) -> None:
    """`fleet rotate-token`'s host side: "current\nnext" in SSM, the secrets unit run (as over SSH),
    the worker accepts both without a restart; then "next" alone, left to the timer (as on a pooled
    host with no SSH): the old token gets 401 within a timer period."""
    started = time.monotonic()
    pid = inspect.service_facts(box, role)["MainPID"]
    following = secrets.token_hex(20)
    stage.put_parameters({f"{program['prefix']}/worker-token": ("SecureString", f"{program['token']}\n{following}")})
    box.sh(f"systemctl start {role}-secrets.service", check=True)
    for _ in range(10):  # the worker notices a changed file within ~1 s
        if probe(stage, role, document, following, timeout=10).get("token_status") == 200:
            break
        time.sleep(1)
    TIMINGS.append((role, "token rotation picked up", time.monotonic() - started))
    assert probe(stage, role, document, following, timeout=10)["token_status"] == 200
    assert probe(stage, role, document, program["token"], timeout=10)["token_status"] == 200
    assert inspect.service_facts(box, role)["MainPID"] == pid  # reloaded, not restarted

    retired_at = time.monotonic()
    stage.put_parameters({f"{program['prefix']}/worker-token": ("SecureString", following)})
    deadline = retired_at + SECRETS_INTERVAL_SECONDS + 30  # the manual start above restarted the timer's period
    while probe(stage, role, document, program["token"], timeout=10)["token_status"] != 401:
        assert time.monotonic() < deadline, "the secrets timer did not retire the old token"
        time.sleep(3)
    TIMINGS.append((role, "old token retired by the timer", time.monotonic() - retired_at))
    assert probe(stage, role, document, following, timeout=10)["token_status"] == 200
    assert inspect.service_facts(box, role)["MainPID"] == pid


# ---------------------------------------------------------------- mutual TLS on a real boot


@pytest.mark.timeout(BOOT_TIMEOUT + 600)
def test_mutual_tls_boot_serves_only_the_coordinators_client_certificate(image, mutual_program, tmp_path):
    """`mutualTls: true`: the host fetches `worker-client-ca` from SSM next to the other secrets,
    the worker refuses a handshake with no client certificate or one from another CA (no HTTP
    status at all), and the coordinator's own CLI and transport, given the client certificate,
    get their strips processed; without it, its one-line error names mutual TLS."""
    role, program = MUTUAL_ROLE, mutual_program
    document = program["user_data"][role]
    assert f"WORKER_TLS_CLIENT_CA=/etc/{role}/secrets/client-ca.crt" in document and " --client-ca" in document
    with staged(image, program) as stage:
        (stage.workdir / "fleet-ca.crt").write_bytes(program["fleet_ca"])
        right = program["client"].write(stage.workdir, "coordinator")
        wrong = Authority("another CA").issue(CLIENT_NAME, client=True).write(stage.workdir, "other-ca-client")
        box, result, boot_seconds = boot_role(stage, role, document)
        assert result["errors"] == [] and "status: done" in result["status"], result["log"]
        reply = probe(stage, role, document, program["token"], client=right)
        TIMINGS.append((f"{role} (mutualTls)", "boot to cloud-init done", boot_seconds))
        assert reply["healthz"] and reply["healthz"]["tls"] is True, reply
        assert (reply["no_token_status"], reply["token_status"]) == (401, 200), reply
        assert reply["size"] == [24, 10] and reply["max_pixel_diff"] <= 1, reply

        assert inspect.secrets_facts(box, role) == {**SECRETS_FACTS, "client-ca.crt": "644 root:worker"}
        assert box.sh(f"cat /etc/{role}/secrets/client-ca.crt").stdout.encode() == program["fleet_ca"]

        for name, client in (("no client certificate", None), ("a certificate from another CA", wrong)):
            refused = probe(stage, role, document, program["token"], timeout=5, client=client)
            # requests' SSLError or ConnectionError (a reset overtaking the alert), never an HTTP status
            assert not refused["healthz"] and refused["error"].startswith(("SSLError", "ConnectionError")), (
                name,
                refused,
            )

        coordinator_strips(stage, role, document, program, right, tmp_path)


def coordinator_strips(stage: Stage, role: str, document: str, program: dict, client, folder) -> None:
    """`python -m coordinator process` from the private network, as an operator's machine would
    run it: 2 strips inverted by the booted worker with the client certificate; refused without."""
    body, image = gradient_png()
    source = folder / "in.png"
    source.write_bytes(body)
    tls = {
        "COORDINATOR_WORKER_TOKEN": program["token"],
        "COORDINATOR_TLS_CA_FILE": str(stage.workdir / "fleet-ca.crt"),
        "COORDINATOR_TLS_NAME": FLEET_TLS_NAME,
    }
    pair = {"COORDINATOR_TLS_CLIENT_CERT": str(client[0]), "COORDINATOR_TLS_CLIENT_KEY": str(client[1])}
    argv = [sys.executable, "-m", "coordinator", "process", str(source), "--plan", "invert", "--strips", "2"]
    argv += ["--workers", url_of(role, document)]
    done = stage.in_net([*argv, "-o", str(folder / "out.png")], 120, env=clean_env({**tls, **pair}))
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(folder / "out.png") as out:
        assert ImageChops.difference(out.convert("RGB"), ImageChops.invert(image)).getbbox() is None
    refused = stage.in_net([*argv, "-o", str(folder / "no.png")], 120, env=clean_env(tls))
    assert_one_error_line(refused, 3, "mutual TLS")


# ---------------------------------------------------------------- the fleet tool over SSH to a booted host

FLEET_ROLE = "worker-python"  # one boot: the SSH side (sshd, key pair, sudo, journald) is the same for both
LOGIN_USER = "debian"  # Debian's cloud-init default user, where Ubuntu's is `ubuntu` (the outputs' ssh_user)


@pytest.fixture(scope="module")
def admin_key(tmp_path_factory):
    return make_key(tmp_path_factory.mktemp("admin") / "admin_ed25519")


@pytest.fixture(scope="module")
def ssh_program(admin_key):
    """The program with `adminCidr` + `sshPublicKey`: port 22 open to the admin network and an
    EC2 key pair on each instance (the key reaches the host through the metadata, not user-data)."""
    public = admin_key.with_name(admin_key.name + ".pub").read_text().strip()
    return rendered({"adminCidr": f"{machine_address(0).rsplit('.', 1)[0]}.0/24", "sshPublicKey": public})


class Fleet:
    """`python -m scripts.fleet` run from the private network as an operator runs it: the program's
    outputs file with the booted container's address and its EC2 stand-in's instance id."""

    def __init__(self, stage: Stage, program: dict, role: str, key, known_hosts) -> None:
        self.stage, self.key, self.known_hosts = stage, key, known_hosts
        self.name = f"{role}-0"
        outputs = program["outputs"]
        entry = next(w for w in outputs["workers"] if w["name"] == self.name)
        argv = [sys.executable, "-m", "scripts.boot.ec2", self.endpoint, outputs["region"], self.name, role]
        made = stage.in_net([*argv, outputs["project"], outputs["stack"]], 60)
        assert made.returncode == 0, made.stderr[-2000:]
        self.instance_id = made.stdout.strip()
        address = machine_address(ROLES.index(role))
        url = url_of(role, program["user_data"][role])
        entry = {**entry, "url": url, "public_ip": address, "instance_id": self.instance_id}
        # The fleet CA that signed the SSM certificate (the program's own would come from infra/fleet_tls.py).
        file = {**outputs, "workers": [entry], "worker_ca_pem": program["fleet_ca"].decode()}
        self.outputs = stage.workdir / "stack-outputs.json"
        self.outputs.write_text(json.dumps(file))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.stage.setup_port}"  # moto's plain port in the namespace (EC2 here)

    def run(self, *args: str, key=None, known_hosts=None, timeout: float = 180):
        flags = ["--outputs", str(self.outputs), "--ssh-user", LOGIN_USER, "--ssh-timeout", "10"]
        flags += ["--ssh-key", str(key or self.key), "--known-hosts", str(known_hosts or self.known_hosts)]
        argv = [sys.executable, "-m", "scripts.fleet", *args, *flags]
        return self.stage.in_net(argv, timeout, env=aws_env(self.endpoint))

    def status(self, *args: str, **options) -> dict:
        done = self.run("status", "--json", *args, **options)
        assert done.returncode == 0, done.stderr[-2000:]
        (row,) = json.loads(done.stdout)
        return row


def journal_json(text: str) -> list[dict]:
    """The JSON bodies of `journalctl` short-format lines (`... worker-python[PID]: {...}`)."""
    found = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            body = json.loads(line.split("]: ", 1)[1])
            if isinstance(body, dict):
                found.append(body)
    return found


def changed_source(role: str, folder, line: bytes = b"# redeployed by tests/infra/test_boot.py") -> str:
    """A checkout whose `role` differs by one line: a new build id, the same dependencies."""
    files = bundle_files(role)
    files["worker_python/__init__.py"] += b"\n" + line + b"\n"
    for relative, content in files.items():
        path = folder / role / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return build_id(files)


@pytest.mark.timeout(BOOT_TIMEOUT + 900)
def test_fleet_tool_over_ssh_reads_and_redeploys_a_booted_host(image, ssh_program, admin_key, tmp_path):
    """`python -m scripts.fleet status|logs|redeploy` over real SSH (paramiko) to the booted host's
    own sshd, authenticated by the key the program puts in its EC2 key pair (served to cloud-init
    as instance metadata, as IMDS does), as cloud-init's default user with its passwordless sudo:
    status shows cloud-init done and /healthz ok with the release's build, logs the service's JSON
    lines from journald, redeploy of a changed source switches and restarts the service to the new
    build, and of a build that cannot start rolls back to the previous one; a stopped service, a
    changed host key and a foreign client key are each reported."""
    role, program = FLEET_ROLE, ssh_program
    document = program["user_data"][role]
    assert program["key_pairs"] == [admin_key.with_name(admin_key.name + ".pub").read_text().strip()]
    assert "ssh-ed25519" not in document  # the key is the key pair's, not the user-data's
    with staged(image, program) as stage:
        box, result, boot_seconds = boot_role(stage, role, document, tuple(program["key_pairs"]))
        assert result["errors"] == [] and "status: done" in result["status"], result["log"]
        TIMINGS.append((f"{role} (fleet over SSH)", "boot to cloud-init done", boot_seconds))
        known_hosts = tmp_path / "known_hosts"
        fleet = Fleet(stage, program, role, admin_key, known_hosts)
        first_build = box.sh(f"readlink /opt/{role}/current").stdout.strip().removeprefix("releases/")

        started = time.monotonic()
        done = fleet.run("status", "--json")
        TIMINGS.append((f"{role} (fleet over SSH)", "fleet status", time.monotonic() - started))
        assert done.returncode == 0, done.stderr[-2000:]
        (row,) = json.loads(done.stdout)
        assert (row["state"], row["checks"], row["instance_id"]) == ("running", "ok", fleet.instance_id), row
        assert row["boot"] == {"state": "done", "detail": ""}, row
        assert (row["health"]["status"], row["health"]["runtime"], row["health"]["build"]) == (
            "ok",
            "python",
            first_build,
        ), row
        assert row["ready"] is True and row["missing"] == [], row
        # Trust on first use recorded the booted host's own key (cloud-init made it at first boot).
        assert f"recorded new host key for {machine_address(0)}" in done.stderr, done.stderr
        recorded = known_hosts.read_text().split()[1:3]
        host_keys = box.sh("cat /etc/ssh/ssh_host_*_key.pub").stdout.split("\n")
        assert any(line.split()[:2] == recorded for line in host_keys if line), (recorded, host_keys)

        done = fleet.run("logs", fleet.name, "--lines", "200")
        assert done.returncode == 0, done.stderr[-2000:]
        logs = journal_json(done.stdout)
        ours = [line for line in logs if line.get("service") == role and {"time", "level", "msg"} <= line.keys()]
        assert ours, done.stdout[-2000:]

        done = fleet.run("redeploy", fleet.name)  # the release cloud-init installed is this checkout's
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"already at build {first_build}, healthy" in done.stdout, done.stdout

        pid = inspect.service_facts(box, role)["MainPID"]
        new_build = changed_source(role, tmp_path / "checkout")
        started = time.monotonic()
        done = fleet.run("redeploy", fleet.name, "--source-root", str(tmp_path / "checkout"), timeout=600)
        TIMINGS.append((f"{role} (fleet over SSH)", "fleet redeploy (new build)", time.monotonic() - started))
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"deployed build {new_build} (was {first_build}), healthy" in done.stdout, done.stderr
        assert "reusing the shared venv" in done.stderr, done.stderr
        assert box.sh(f"readlink /opt/{role}/current").stdout.strip() == f"releases/{new_build}"
        facts = inspect.service_facts(box, role)
        assert facts["ActiveState"] == "active" and facts["MainPID"] not in (pid, "0"), facts
        assert facts["User"] == "worker" and int(facts["CapEff"], 16) == 0, facts  # the same hardened unit
        after = fleet.status()
        assert after["ready"] is True and after["health"]["build"] == new_build, after

        # A build that cannot start: redeploy waits for its /healthz, then puts the previous one back.
        broken = changed_source(role, tmp_path / "broken", b"raise SystemExit('a broken build')")
        done = fleet.run("redeploy", fleet.name, "--source-root", str(tmp_path / "broken"), "--health-timeout", "15")
        assert_fleet_error(done, 4, f"rolled back to build {new_build}, healthy", ssh=False)
        assert f"build {broken} not healthy within 15s" in done.stderr, done.stderr
        assert box.sh(f"readlink /opt/{role}/current").stdout.strip() == f"releases/{new_build}"
        assert fleet.status()["health"]["build"] == new_build

        # What it reports when things are wrong: the service stopped ...
        box.sh(f"systemctl stop {role}", check=True)
        stopped = fleet.status()
        assert stopped["ready"] is False and stopped["boot"]["state"] == "done", stopped
        assert stopped["health"]["error"] and stopped["missing"][0].startswith("/healthz "), stopped
        # ... another host behind the address (a different host key) ...
        changed = tmp_path / "changed_known_hosts"
        other = make_key(tmp_path / "other_host_key").with_name("other_host_key.pub").read_text().split()
        changed.write_text(f"{machine_address(0)} {other[0]} {other[1]}\n")
        refused = fleet.run("logs", fleet.name, known_hosts=changed)
        assert_fleet_error(refused, 1, "host key changed")
        strict = fleet.status("--boot-check", known_hosts=changed)
        assert strict["boot"]["state"] == "unknown" and "host key changed" in strict["boot"]["detail"], strict
        # ... and a key the host was not given.
        refused = fleet.run("logs", fleet.name, key=make_key(tmp_path / "stranger_ed25519"))
        assert_fleet_error(refused, 1, "authentication failed")


def assert_fleet_error(done, code: int, fragment: str, ssh: bool = True) -> None:
    """Exit `code`, no traceback, a last line `error: ...` with `fragment` (`error: ssh user@host` when `ssh`)."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: ssh {LOGIN_USER}@" if ssh else "error: ") and fragment in last, done.stderr


# ---------------------------------------------------------------- failed boots are visible


def tampered(objects: dict[str, bytes]) -> dict[str, bytes]:
    return {key: data + b"tampered" for key, data in objects.items()}


def without(names: tuple[str, ...]):
    return lambda parameters: {k: v for k, v in parameters.items() if k.rsplit("/", 1)[-1] not in names}


# case: (role, Stage options, objects transform, parameters transform, any of these in cloud-init's output)
FAILURES = {
    "pip-registry-unreachable": (
        "worker-python",
        {"deny_registries": ("pypi.org", "files.pythonhosted.org")},
        None,
        None,
        ("No matching distribution found",),
    ),
    "node-registry-unreachable": (
        "worker-nodejs",
        {"deny_registries": ("registry.npmjs.org",)},
        None,
        None,
        ("CONNECT tunnel failed", "403"),
    ),
    # Node and npm arrive (curl's two connections), then `npm ci` is cut off. npm prints `Exit
    # handler never called!` and exits 0, so set -e goes on: the dependency check is what stops
    # the boot (without it: cloud-init `done`, the unit enabled and crash-looping; seen here).
    "npm-ci-cut-off": (
        "worker-nodejs",
        {"registry_budget": {"registry.npmjs.org": 2}},
        None,
        None,
        ("Cannot find module",),
    ),
    "wrong-release-sha256": ("worker-python", {}, tampered, None, ("sha256 mismatch",)),
    "s3-access-denied": ("worker-python", {"deny_s3": True}, None, None, ("AccessDenied",)),
    "ssm-parameter-missing": (
        "worker-python",
        {},
        None,
        without(("worker-tls-key",)),
        ("/worker-tls-key not found",),
    ),
}


@pytest.mark.timeout(BOOT_TIMEOUT + 300)
@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failed_first_boot_is_reported_and_starts_nothing(case, image, program):
    role, options, objects_change, parameters_change, messages = FAILURES[case]
    objects = objects_change(program["objects"]) if objects_change else None
    parameters = parameters_change(program["parameters"]) if parameters_change else None
    with staged(image, program, parameters, objects, **options) as stage:
        box, result, seconds = boot_role(stage, role, program["user_data"][role])
        TIMINGS.append((f"{role} ({case})", "boot to cloud-init error", seconds))
        assert "status: error" in result["status"], result["log"]
        assert any("scripts-user" in error for error in result["errors"]), result["errors"]
        assert any(message in result["output"] for message in messages), result["log"]
        verdict = inspect.fleet_boot_verdict(box)  # what `fleet status` shows for this host
        assert verdict.failed and "scripts-user" in verdict.detail, verdict
        facts = inspect.service_facts(box, role)
        assert facts["ActiveState"] != "active" and facts["UnitFileState"] != "enabled", facts
