"""A real first boot: each role's user-data, as the Pulumi program renders it, through cloud-init
and systemd in a systemd-nspawn container (Debian 12 built by mmdebstrap), on a private network.

Stand-ins outside the document (scripts/boot/): IMDSv2 with instance-profile credentials, a moto
S3 server behind TLS under the bucket's own name (a test CA in the image's trust store), and a
proxy that lets only the package registries through. Needs root, mmdebstrap, systemd-nspawn,
nsenter and ip; without them it skips (a failure under CI=true, which installs them).
`make boot-test` runs only this file and prints a timing table per boot.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import signal
import sys
import time

import pytest

from scripts.boot import inspect
from scripts.boot.image import build_image
from scripts.boot.netplan import machine_address
from scripts.boot.stage import Stage
from stripes.roles import ROLE_SPECS
from tests.support.ci import skip_or_fail
from tests.support.infra_harness import reveal, run_program

ROLES = ("worker-python", "worker-nodejs")
REGISTRY_OF = {"worker-python": "files.pythonhosted.org", "worker-nodejs": "registry.npmjs.org"}
BOOT_TIMEOUT = 900  # seconds for cloud-init to finish one boot (cold caches, 2 shared cores)
# `systemd-analyze security` exposure of both units when this test was written: no worse allowed
EXPOSURE_TODAY = 4.0
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
    run = run_program({"clientCidr": "203.0.113.0/24", "aws:region": "eu-west-1"})
    user_data = {}
    for instance in run.of_type("aws:ec2/instance:Instance"):
        user_data[instance.inputs["tags"]["Role"]] = reveal(instance.inputs["userData"])
    objects = {
        o.inputs["key"]: base64.b64decode(o.inputs["contentBase64"])
        for o in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    }
    fetch = next(line for line in user_data["worker-python"].splitlines() if "fetch-worker-release --" in line)
    argv = shlex.split(fetch.lstrip("- "))
    where = {"bucket": argv[argv.index("--bucket") + 1], "region": argv[argv.index("--region") + 1]}
    token = next(
        line.split("=", 1)[1]
        for line in user_data["worker-python"].splitlines()
        if line.strip().startswith("WORKER_TOKEN=")
    )
    return {"user_data": user_data, "objects": objects, "token": token, **where}


def port_of(role: str, document: str) -> int:
    return int(next(line.split("=", 1)[1] for line in document.splitlines() if line.strip().startswith("WORKER_PORT=")))


def probe(stage: Stage, role: str, document: str, token: str, timeout: float = 60) -> dict:
    url = f"http://{machine_address(ROLES.index(role))}:{port_of(role, document)}"
    done = stage.in_net([sys.executable, "-m", "scripts.boot.probe", url, token, str(timeout)], timeout + 120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def print_table() -> None:
    lines = ["", "boot test timings (seconds)", f"{'boot':<42} {'step':<32} {'s':>7}"]
    lines += [f"{boot:<42} {step:<32} {seconds:7.1f}" for boot, step, seconds in TIMINGS]
    print("\n".join(lines), file=sys.stderr)


def boot_role(stage: Stage, role: str, document: str):
    started = time.monotonic()
    box = stage.boot(role, ROLES.index(role), document)
    result = inspect.cloud_init_result(box, BOOT_TIMEOUT)
    return box, result, time.monotonic() - started


# ---------------------------------------------------------------- a good boot, per role


@pytest.mark.timeout(BOOT_TIMEOUT + 600)
@pytest.mark.parametrize("role", ROLES)
def test_first_boot_makes_a_hardened_worker(role, image, program):
    document = program["user_data"][role]
    with Stage(image, bucket=program["bucket"], region=program["region"], objects=program["objects"]) as stage:
        box, result, boot_seconds = boot_role(stage, role, document)
        assert result["errors"] == [], result["log"]
        assert "status: done" in result["status"], result["log"]
        assert inspect.fleet_boot_verdict(box).problem() is None
        reply = probe(stage, role, document, program["token"])
        for step, seconds in inspect.step_times(box, reply.get("healthy_at")).items():
            TIMINGS.append((role, step, seconds))
        TIMINGS.append((role, "boot to cloud-init done", boot_seconds))

        spec = ROLE_SPECS[role]
        assert reply["healthz"]["runtime"] == spec.runtime, reply
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
        exposure = inspect.exposure(box, role)
        TIMINGS.append((role, "systemd-analyze security exposure", exposure or -1))
        assert exposure is not None and exposure <= EXPOSURE_TODAY, exposure

        assert inspect.env_file_facts(box, role) == {"mode_owner": "600 root:root", "worker_can_read": False}

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


# ---------------------------------------------------------------- failed boots are visible


def tampered(objects: dict[str, bytes]) -> dict[str, bytes]:
    return {key: data + b"tampered" for key, data in objects.items()}


# case: (role, Stage options, objects transform, any of these in cloud-init's output)
FAILURES = {
    "pip-registry-unreachable": (
        "worker-python",
        {"deny_registries": ("pypi.org", "files.pythonhosted.org")},
        None,
        ("No matching distribution found",),
    ),
    "node-registry-unreachable": (
        "worker-nodejs",
        {"deny_registries": ("registry.npmjs.org",)},
        None,
        ("CONNECT tunnel failed", "403"),
    ),
    # Node and npm arrive (curl's two connections), then `npm ci` is cut off. npm prints `Exit
    # handler never called!` and exits 0, so set -e goes on: the dependency check is what stops
    # the boot (without it: cloud-init `done`, the unit enabled and crash-looping; seen here).
    "npm-ci-cut-off": ("worker-nodejs", {"registry_budget": {"registry.npmjs.org": 2}}, None, ("Cannot find module",)),
    "wrong-release-sha256": ("worker-python", {}, tampered, ("sha256 mismatch",)),
    "s3-access-denied": ("worker-python", {"deny_s3": True}, None, ("AccessDenied",)),
}


@pytest.mark.timeout(BOOT_TIMEOUT + 300)
@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failed_first_boot_is_reported_and_starts_nothing(case, image, program):
    role, options, transform, messages = FAILURES[case]
    objects = transform(program["objects"]) if transform else program["objects"]
    with Stage(image, bucket=program["bucket"], region=program["region"], objects=objects, **options) as stage:
        box, result, seconds = boot_role(stage, role, program["user_data"][role])
        TIMINGS.append((f"{role} ({case})", "boot to cloud-init error", seconds))
        assert "status: error" in result["status"], result["log"]
        assert any("scripts-user" in error for error in result["errors"]), result["errors"]
        assert any(message in result["output"] for message in messages), result["log"]
        verdict = inspect.fleet_boot_verdict(box)  # what `fleet status` shows for this host
        assert verdict.failed and "scripts-user" in verdict.detail, verdict
        facts = inspect.service_facts(box, role)
        assert facts["ActiveState"] != "active" and facts["UnitFileState"] != "enabled", facts
