"""`fleet rotate-token` and `fleet refresh-secrets` against a real moto server (SSM) and real
workers on loopback.

The hosts' part is real too: the trigger runs infra/fetch_secrets.py (the hosts'
fetch-worker-secrets) against moto, writing the token file the local workers read
(WORKER_TOKEN_FILE) and reload. The SSH form of the trigger is proven in test_fleet_ssh.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from coordinator import config as coordinator_config
from coordinator import pool_discovery
from coordinator.discovery import discover
from coordinator.engine import run_job
from scripts.fleet import tls, tokens
from scripts.fleet.config import load_config
from scripts.fleet.errors import ROLLED_BACK, WAIT_TIMEOUT, FleetError
from scripts.fleet.refresh import presented, refresh
from scripts.fleet.rotate import Rotation, rewrite_token, token_lines
from scripts.fleet.trigger import timer_trigger
from scripts.testkit.images import png_bytes
from scripts.testkit.procs import ROOT, TlsClient
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from tests.support.fleet_cli import assert_one_error_line, run_fleet
from tests.support.hostile_worker import HostileWorker
from tests.support.moto_server import REGION, aws_env, point_boto3_at, ubuntu_ami

PROJECT, STACK = "hdtp", "rotate-test"
PREFIX = f"/{PROJECT}/{STACK}"
TOKEN_PARAMETER = f"{PREFIX}/worker-token"
T1 = "CurrentToken0123456789abcdefghijklmnopqr"
fleet = functools.partial(run_fleet, timeout=120)


@pytest.fixture
def ssm(moto):
    moto.reset()
    client = moto.client("ssm")
    client.put_parameter(Name=TOKEN_PARAMETER, Value=T1, Type="SecureString")
    return client


def parameter(ssm, name: str = TOKEN_PARAMETER) -> str:
    return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def write_outputs(path, urls: list[str], token: str = T1, mode: int = 0o640, **extra):
    workers = [
        {"name": f"worker-{i}", "role": role, "url": url, "public_ip": "127.0.0.1"}
        for i, (role, url) in enumerate(urls)
    ]
    data = {"workers": workers, "worker_token": token, "project": PROJECT, "stack": STACK, "region": REGION}
    path.write_text(json.dumps({**data, **extra}, indent=1))
    path.chmod(mode)
    return path


def rotate_cli(outputs, moto, *flags: str):
    return fleet(
        "rotate-token", "--outputs", str(outputs), "--trigger", "timer", "--interval", "0.3", "--grace", "0",
        *flags, env=aws_env(moto.url),
    )  # fmt: skip


# --- the probe ------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_the_probe_tells_a_right_token_from_a_wrong_one(runtime, worker_factory, tmp_path):
    worker = worker_factory(runtime, {"WORKER_TOKEN": T1})
    config = load_config(_args(write_outputs(tmp_path / "out.json", [(f"worker-{runtime}", worker.url)])), {})
    targets = tokens.endpoints(config)
    assert tokens.verdicts(config, targets, T1) == {"worker-0": tokens.ACCEPTED}
    assert tokens.verdicts(config, targets, T1[:-1] + "x") == {"worker-0": tokens.REFUSED}


def _args(outputs):
    import argparse

    return argparse.Namespace(outputs=str(outputs))


def test_the_probe_reads_only_the_head_of_a_reply_that_never_ends():
    """A worker (or whatever answers at its address) streaming an endless 200: the verdict comes
    from the status line; the body is not downloaded."""
    with HostileWorker(process="huge", max_seconds=0.5) as endless:
        assert tokens.verdict(endless.url, T1) == "HTTP 200"
    assert endless.sent < 16 * 1024 * 1024, f"the probe took {endless.sent} bytes of the reply"


# --- refusals and rollback (the parameter and the outputs file stay as they were) ---------------


def test_a_worker_that_never_takes_the_new_token_rolls_the_rotation_back(moto, ssm, worker_factory, tmp_path):
    stuck = worker_factory("python", {"WORKER_TOKEN": T1})  # a fixed token: it never reads SSM
    outputs = write_outputs(tmp_path / "out.json", [("worker-python", stuck.url)])
    before = outputs.read_bytes()
    result = rotate_cli(outputs, moto, "--timeout", "2")
    line = assert_one_error_line(result, 4, "worker-0: new token: refused, not accepted")
    assert "rolled back: " + TOKEN_PARAMETER + " restored, outputs file unchanged" in line
    assert parameter(ssm) == T1
    assert outputs.read_bytes() == before and stat.S_IMODE(outputs.stat().st_mode) == 0o640
    assert T1 not in result.stdout + result.stderr
    assert "[2/7]" in result.stderr and "[4/7]" not in result.stderr  # one line per step done


def test_a_worker_that_takes_any_token_stops_the_rotation_before_anything_changes(moto, ssm, python_worker, tmp_path):
    outputs = write_outputs(tmp_path / "out.json", [("worker-python", python_worker.url)])
    before = outputs.read_bytes()
    result = rotate_cli(outputs, moto, "--timeout", "2")
    assert_one_error_line(result, 1, "not rotating: worker-0: a random token: accepted, not refused")
    assert parameter(ssm) == T1 and outputs.read_bytes() == before


def test_an_outputs_token_the_parameter_lacks_stops_the_rotation(moto, ssm, tmp_path):
    outputs = write_outputs(tmp_path / "out.json", [("worker-python", "http://127.0.0.1:9")], token="stale-token")
    result = rotate_cli(outputs, moto)
    line = assert_one_error_line(result, 1, f"worker_token is not in {TOKEN_PARAMETER}")
    assert "stale-token" not in result.stderr and line
    assert parameter(ssm) == T1


def test_an_outputs_file_that_cannot_be_rewritten_rolls_the_rotation_back(
    moto, ssm, worker_factory, tmp_path, monkeypatch
):
    token_file = tmp_path / "worker-token"
    token_file.write_text(f"{T1}\n")
    worker = worker_factory("nodejs", {"WORKER_TOKEN_FILE": str(token_file)})
    outputs = write_outputs(tmp_path / "out.json", [("worker-nodejs", worker.url)])
    before = outputs.read_bytes()

    def copy_parameter(_targets) -> list[str]:  # the host's fetch, reduced to its effect
        token_file.write_text(parameter(ssm) + "\n")
        return []

    def disk_full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("scripts.fleet.rotate.rewrite_token", disk_full)
    rotation = Rotation(load_config(_args(outputs), {}), ssm, copy_parameter, timeout=15, interval=0.3, grace=0)
    with pytest.raises(FleetError) as failed:
        rotation.run()
    assert failed.value.code == ROLLED_BACK
    assert f"cannot rewrite {outputs}: No space left on device; rolled back" in failed.value.message
    assert parameter(ssm) == T1 and token_file.read_text() == f"{T1}\n" and outputs.read_bytes() == before


def test_an_outputs_file_reached_by_a_symlink_stops_the_rotation_before_anything_changes(moto, ssm, tmp_path):
    """The rename would replace the link with a file and leave its target (which a coordinator
    may read) with the retired token."""
    target = write_outputs(tmp_path / "real.json", [("worker-python", "http://127.0.0.1:9")])
    link = tmp_path / "out.json"
    link.symlink_to(target)
    before = target.read_bytes()
    assert_one_error_line(rotate_cli(link, moto), 2, "must be a regular file")
    assert parameter(ssm) == T1 and link.is_symlink() and target.read_bytes() == before


@pytest.mark.parametrize("listed", [None, f"{PREFIX}/elsewhere"])
def test_a_missing_parameter_is_one_error_line(listed, moto, ssm, tmp_path):
    """The name comes from the outputs file's secret_parameters when it lists one, else the layout."""
    ssm.delete_parameter(Name=TOKEN_PARAMETER)
    names = {"secret_parameters": {"worker-token": listed}} if listed else {}
    outputs = write_outputs(tmp_path / "out.json", [("worker-python", "http://127.0.0.1:9")], **names)
    wanted = f"AWS GetParameter {listed or TOKEN_PARAMETER} failed: ParameterNotFound"
    assert_one_error_line(rotate_cli(outputs, moto), 1, wanted)


def test_rewrite_token_replaces_the_file_atomically_with_its_mode(tmp_path):
    outputs = write_outputs(tmp_path / "out.json", [("worker-python", "http://127.0.0.1:9")], mode=0o600)
    inode = outputs.stat().st_ino
    rewrite_token(outputs, "NewToken")
    data = json.loads(outputs.read_text())
    assert data["worker_token"] == "NewToken" and data["workers"][0]["url"] == "http://127.0.0.1:9"
    assert stat.S_IMODE(outputs.stat().st_mode) == 0o600
    assert outputs.stat().st_ino != inode  # a new file renamed over the old: readers see one or the other
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


# --- the rotation under load: hosts fetch from SSM (the real fetch-worker-secrets), real TLS workers


FETCH_SECRETS = ROOT / "infra" / "fetch_secrets.py"
LOAD_JOBS, LOAD_THREADS, LOAD_CAP, LOAD_SECONDS = 50, 4, 400, 240
LOAD_PAUSE = 0.2  # seconds between one thread's jobs: the load spans the whole rotation, not the cap


class Hosts:
    """Both runtimes as TLS workers whose secrets folder (token file, key, certificate) is
    filled by the real fetch-worker-secrets from moto, as user-data and the timer do."""

    def __init__(self, moto, ssm, worker_factory, tmp_path):
        self.moto, self.tmp = moto, tmp_path
        self.authority = authority = Authority()
        self.put_server_certificate(ssm, authority.issue())
        self.dests = {runtime: tmp_path / f"etc-{runtime}" / "secrets" for runtime in ("python", "nodejs")}
        assert self.fetch([]) == []  # the boot's first fetch, before the workers start
        ca_file = authority.write_ca(tmp_path)
        self.workers = {}
        for runtime, dest in self.dests.items():
            env = {
                "WORKER_TOKEN_FILE": str(dest / "worker-token"),
                "WORKER_TLS_CERT": str(dest / "tls.crt"),
                "WORKER_TLS_KEY": str(dest / "tls.key"),
            }
            self.workers[runtime] = worker_factory(runtime, env, tls=TlsClient(ca_file))
        self.outputs = write_outputs(
            tmp_path / "stack-outputs.json",
            [(f"worker-{runtime}", worker.url) for runtime, worker in self.workers.items()],
            worker_ca_pem=authority.cert_pem.decode(),
            worker_tls_name=FLEET_TLS_NAME,
        )

    @staticmethod
    def put_server_certificate(ssm, server) -> None:
        """What `pulumi up` does with a renewed server certificate (same CA)."""
        ssm.put_parameter(
            Name=f"{PREFIX}/worker-tls-key", Value=server.key_pem.decode(), Type="SecureString", Overwrite=True
        )
        ssm.put_parameter(
            Name=f"{PREFIX}/worker-tls-cert", Value=server.cert_pem.decode(), Type="String", Overwrite=True
        )

    def fetch(self, _targets) -> list[str]:
        """The trigger: each host's fetch-worker-secrets, now (what `systemctl start
        <role>-secrets.service` runs on a real host)."""
        for dest in self.dests.values():
            done = subprocess.run(
                [sys.executable, str(FETCH_SECRETS), "--region", REGION, "--prefix", PREFIX, "--dest", str(dest),
                 "--group", "root"],
                env=aws_env(self.moto.url), capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        return []


class Load:
    """LOAD_THREADS threads running coordinator jobs on a small image with ONE config loaded
    before the rotation (the coordinator re-reads the outputs file's token on a 401), until at
    least LOAD_JOBS jobs are done and `stop` is set; bounded by LOAD_CAP jobs and LOAD_SECONDS."""

    def __init__(self, outputs):
        self.config = coordinator_config.load_config(workers_file=str(outputs), environ={})
        self.image = png_bytes(np.random.default_rng(7).integers(0, 255, (64, 48, 3), dtype=np.uint8))
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.jobs: list[tuple[float, float, str]] = []  # (start, end, "" or the failure)
        self.deadline = time.monotonic() + LOAD_SECONDS
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(LOAD_THREADS)]

    def loop(self) -> None:
        while time.monotonic() < self.deadline:
            with self.lock:
                if len(self.jobs) >= LOAD_CAP or (self.stop.is_set() and len(self.jobs) >= LOAD_JOBS):
                    return
            started = time.monotonic()
            try:
                run_job(self.image, self.config, plan="seed", strips=2)
                failure = ""
            except Exception as exc:  # every failure is counted and shown, none stops the load
                failure = f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.jobs.append((started, time.monotonic(), failure))
            time.sleep(LOAD_PAUSE)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=LOAD_SECONDS)

    def running_during(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for s, e, _ in self.jobs if s < end and e > start)


class MarkedRotation(Rotation):
    """The real rotation, with the time of each progress line kept."""

    def say(self, message: str) -> None:
        super().say(message)
        self.marks.append(time.monotonic())


def test_a_token_rotation_under_a_50_job_load_fails_no_job(moto, ssm, worker_factory, tmp_path):
    hosts = Hosts(moto, ssm, worker_factory, tmp_path)
    config = load_config(_args(hosts.outputs), {})
    rotation = MarkedRotation(config, ssm, hosts.fetch, timeout=60, interval=0.3, grace=1)
    rotation.marks = []
    with Load(hosts.outputs) as load:
        while load.running_during(0, time.monotonic()) < 8:  # the load is up before the rotation starts
            time.sleep(0.05)
        rotation.marks.append(time.monotonic())
        assert rotation.run() == 0
    failures = [f for _, _, f in load.jobs if f]
    assert failures == [] and len(load.jobs) >= LOAD_JOBS, (len(load.jobs), failures[:3])
    # Jobs ran while the hosts fetched current+next ([2/7]-[3/7]: put, trigger) and while they
    # fetched the new token alone ([5/7]-[6/7]: grace, put, trigger), so some met the switch.
    windows = list(itertools.pairwise(rotation.marks))
    assert len(windows) == 7 and all(load.running_during(*windows[i]) for i in (2, 5)), len(load.jobs)
    following = json.loads(hosts.outputs.read_text())["worker_token"]
    assert following != T1 and len(following) == 40 and following.isalnum()
    assert stat.S_IMODE(hosts.outputs.stat().st_mode) == 0o640
    assert parameter(ssm) == following
    assert coordinator_config.current_token(load.config) == following  # the loaded config switched on a 401
    targets = tokens.endpoints(config)
    assert set(tokens.verdicts(config, targets, T1).values()) == {tokens.REFUSED}  # the old token is dead
    assert set(tokens.verdicts(config, targets, following).values()) == {tokens.ACCEPTED}


# --- refresh-secrets: a new server certificate (same CA) reaches every worker ------------------


def test_refresh_secrets_checks_every_worker_serves_the_certificate_in_ssm(moto, ssm, worker_factory, tmp_path):
    hosts = Hosts(moto, ssm, worker_factory, tmp_path)
    config = load_config(_args(hosts.outputs), {})
    assert refresh(config, ssm, hosts.fetch, timeout=10, interval=0.3) == 0
    renewed = hosts.authority.issue()
    hosts.put_server_certificate(ssm, renewed)
    with pytest.raises(FleetError) as stale:  # the hosts have not fetched yet: both still serve the old one
        refresh(config, ssm, timer_trigger, timeout=1, interval=0.3)
    assert stale.value.code == WAIT_TIMEOUT
    assert "worker-0: sha256" in stale.value.message and "worker-1: sha256" in stale.value.message
    assert refresh(config, ssm, hosts.fetch, timeout=10, interval=0.3) == 0
    wanted = tls.sha256(tls.first_certificate(renewed.cert_pem.decode(), "renewed"))
    assert set(presented(config, tokens.endpoints(config)).values()) == {wanted}
    # The coordinator pins the CA, not the leaf: a job still runs after the certificate changed.
    run_job(
        png_bytes(np.zeros((16, 16, 3), np.uint8)),
        coordinator_config.load_config(workers_file=str(hosts.outputs), environ={}),
        plan="seed",
        strips=2,
    )


def test_a_pooled_stack_probes_every_running_pool_instance_over_https(moto, tmp_path, monkeypatch):
    moto.reset()
    point_boto3_at(moto.url, monkeypatch)
    ec2, autoscaling = moto.ec2(), moto.client("autoscaling")
    template = ec2.create_launch_template(
        LaunchTemplateName="py", LaunchTemplateData={"ImageId": ubuntu_ami(ec2), "InstanceType": "t3.small"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    tags = {"Project": PROJECT, "Stack": STACK, "Role": "worker-python", "Name": "worker-python-pool"}
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="py-pool", LaunchTemplate={"LaunchTemplateId": template, "Version": "$Latest"},
        MinSize=2, MaxSize=2, DesiredCapacity=2, AvailabilityZones=[f"{REGION}a"],
        Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in tags.items()],
    )  # fmt: skip
    outputs = write_outputs(
        tmp_path / "out.json", [], pools=[{"role": "worker-python", "port": 5001}],
        worker_ca_pem=Authority().cert_pem.decode(), worker_tls_name=FLEET_TLS_NAME,
    )  # fmt: skip
    config = load_config(_args(outputs))
    found = tokens.endpoints(config)
    ips = {i["PublicIpAddress"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert len(found) == 2 and {e.url for e in found} == {f"https://{ip}:5001" for ip in ips}
    assert {e.role for e in found} == {"worker-python"} and all(e.name.startswith("i-") for e in found)


# --- an instance that joins a pooled stack mid-rotation (a scale-out, a replaced host) -----------

POOL_NAME = "py-pool"
_real_endpoints = tokens.endpoints  # the fleet tool's own discovery, before a test maps it to loopback


class Pool:
    """A pooled stack on moto: an Auto Scaling group whose instances each stand for a loopback
    worker (its port in the coordinator's test tag, which the coordinator's test-only address
    override and this class's `endpoints` both use). A host copies the SSM parameter into its
    worker's token file only when triggered (what fetch-worker-secrets does); no timer runs, so an
    instance never triggered keeps what it fetched at boot."""

    def __init__(self, moto, ssm, monkeypatch, tmp_path):
        pool_discovery.forget()
        point_boto3_at(moto.url, monkeypatch)
        self.ssm, self.ec2, self.autoscaling = ssm, moto.ec2(), moto.client("autoscaling")
        self.ports: dict[str, int] = {}  # instance id -> its worker's loopback port
        self.files: dict[int, object] = {}  # port -> the worker's token file (none: a fixed token)
        self.triggered: list[list[str]] = []
        tags = {"Project": PROJECT, "Stack": STACK, "Role": "worker-python", "Name": "worker-python-pool"}
        template = self.ec2.create_launch_template(
            LaunchTemplateName="py", LaunchTemplateData={"ImageId": ubuntu_ami(self.ec2), "InstanceType": "t3.small"}
        )["LaunchTemplate"]["LaunchTemplateId"]
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=POOL_NAME, LaunchTemplate={"LaunchTemplateId": template, "Version": "$Latest"},
            MinSize=0, MaxSize=4, DesiredCapacity=0, AvailabilityZones=[f"{REGION}a"],
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in tags.items()],
        )  # fmt: skip
        pools = [{"name": POOL_NAME, "role": "worker-python", "runtime": "python", "port": 5001}]
        self.outputs = write_outputs(tmp_path / "out.json", [], pools=pools)
        monkeypatch.setattr(tokens, "endpoints", self.endpoints)

    def scale_out(self, worker, token_file=None) -> str:
        """One more instance in the group, standing for `worker`; returns its id."""
        group = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[POOL_NAME])["AutoScalingGroups"][0]
        before = {i["InstanceId"] for i in group["Instances"]}
        self.autoscaling.set_desired_capacity(AutoScalingGroupName=POOL_NAME, DesiredCapacity=len(before) + 1)
        group = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[POOL_NAME])["AutoScalingGroups"][0]
        (joined,) = {i["InstanceId"] for i in group["Instances"]} - before
        port = int(worker.url.rsplit(":", 1)[1])
        self.ec2.create_tags(Resources=[joined], Tags=[{"Key": pool_discovery.TEST_PORT_TAG, "Value": str(port)}])
        self.ports[joined], self.files[port] = port, token_file
        return joined

    def endpoints(self, config) -> list[tokens.Endpoint]:
        """The fleet tool's discovery (EC2 on moto), each instance's address mapped to its worker."""
        found = _real_endpoints(config)
        assert all(e.name in self.ports for e in found), found  # moto's 10.x/54.x addresses are never contacted
        return [dataclasses.replace(e, url=f"http://127.0.0.1:{self.ports[e.name]}", host="127.0.0.1") for e in found]

    def __call__(self, targets: list[tokens.Endpoint]) -> list[str]:
        """The trigger: each target's host fetches the parameter now."""
        self.triggered.append(sorted(t.name for t in targets))
        value = parameter(self.ssm)
        for target in targets:
            token_file = self.files[int(target.url.rsplit(":", 1)[1])]
            if token_file is not None:
                token_file.write_text(value + "\n")
        return []

    def coordinator(self):
        """A coordinator as started now: the outputs file's token, the pool's instances from EC2."""
        pool_discovery.forget()
        environ = {"COORDINATOR_POOL_ADDRESS_OVERRIDE": "127.0.0.1", "COORDINATOR_DISCOVERY_SECONDS": "0"}
        return coordinator_config.load_config(workers_file=str(self.outputs), environ=environ)

    @staticmethod
    def job_on(url: str, config) -> str:
        """'' when a job whose every strip goes to `url` (found by the coordinator's own pool
        discovery) succeeds with no failed attempt, else what went wrong."""
        statuses = [s for s in discover(config) if s.url == url]
        if not statuses:
            return f"the coordinator did not discover {url}"
        image = png_bytes(np.random.default_rng(3).integers(0, 255, (32, 24, 3), dtype=np.uint8))
        try:
            result = run_job(image, config, plan="seed", strips=3, workers=statuses)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        failed = [f for s in result.strips for f in s.failovers]
        return "; ".join(failed) if failed else ""


def test_a_wait_asks_a_worker_found_after_its_last_round_before_it_ends(spawn, tmp_path):
    """The discovery after a round with nothing wrong (what the switch relies on): a worker that
    joined while the round was asked is asked too, so the wait does not end on the old list."""
    first, late = spawn("python", {"WORKER_TOKEN": T1}), spawn("python", {"WORKER_TOKEN": "Other" + T1[5:]})
    config = load_config(_args(write_outputs(tmp_path / "out.json", [("worker-python", first.url)])), {})
    listed, joined = tokens.endpoints(config), tokens.Endpoint("i-late", "worker-python", late.url, "127.0.0.1")
    calls = []

    def find():
        calls.append(len(calls))
        return listed if len(calls) == 1 else [*listed, joined]

    lagging = tokens.wait_for(config, find, [("current token", T1, tokens.ACCEPTED)], 1, 0.3)
    assert lagging == {"i-late": "current token: refused, not accepted"}, calls
    assert tokens.wait_for(config, lambda: listed, [("current token", T1, tokens.ACCEPTED)], 1, 0.3) == {}


def _token_file(tmp_path, name: str):
    path = tmp_path / name
    path.write_text(f"{T1}\n")  # what the host fetched at boot, before step 3
    return path


def test_an_instance_that_joins_the_pool_mid_rotation_is_waited_for_and_gets_the_new_token(
    moto, ssm, spawn, tmp_path, monkeypatch
):
    """The pool scales out right after current+next is published ([3/7]); the newcomer booted before
    it, so it holds the current token only. The rotation must find it, trigger its host, wait for
    it, switch only then, and confirm it refuses the old token; a coordinator started right
    after the switch runs a job on it with no failed strip."""
    pool = Pool(moto, ssm, monkeypatch, tmp_path)
    first_file, late_file = _token_file(tmp_path, "first-token"), _token_file(tmp_path, "late-token")
    first = spawn("python", {"WORKER_TOKEN_FILE": str(first_file)})
    late = spawn("python", {"WORKER_TOKEN_FILE": str(late_file)})
    pool.scale_out(first, first_file)
    jobs: dict[str, str] = {}

    def hosts(targets):
        value = parameter(ssm)
        if len(token_lines(value)) == 1 and "switch" not in jobs:  # [6/7]: the outputs file holds the new token
            jobs["switch"] = pool.job_on(late.url, pool.coordinator())
        problems = pool(targets)
        if len(token_lines(value)) == 2 and "joined" not in jobs:  # [3/7]: the pool scales out
            jobs["joined"] = pool.scale_out(late, late_file)
        return problems

    rotation = Rotation(load_config(_args(pool.outputs)), ssm, hosts, timeout=30, interval=0.3, grace=0)
    assert rotation.run() == 0
    assert jobs["switch"] == ""  # no strip failed on it, right after the switch
    joined, following = jobs["joined"], parameter(ssm)
    assert following != T1 and json.loads(pool.outputs.read_text())["worker_token"] == following
    assert any(joined in names for names in pool.triggered), pool.triggered  # its host fetched current+next
    assert late_file.read_text() == f"{following}\n"
    assert tokens.verdict(late.url, following) == tokens.ACCEPTED
    assert tokens.verdict(late.url, T1) == tokens.REFUSED  # the final confirmation asked it too
    assert pool.job_on(late.url, pool.coordinator()) == ""


def test_an_instance_that_joins_mid_rotation_and_never_takes_the_new_token_rolls_it_back(
    moto, ssm, spawn, tmp_path, monkeypatch
):
    pool = Pool(moto, ssm, monkeypatch, tmp_path)
    first_file = _token_file(tmp_path, "first-token")
    first = spawn("python", {"WORKER_TOKEN_FILE": str(first_file)})
    stuck = spawn("python", {"WORKER_TOKEN": T1})  # a fixed token: it never reads SSM
    pool.scale_out(first, first_file)
    before = pool.outputs.read_bytes()
    joined = []

    def hosts(targets):
        problems = pool(targets)
        if len(token_lines(parameter(ssm))) == 2 and not joined:
            joined.append(pool.scale_out(stuck))
        return problems

    rotation = Rotation(load_config(_args(pool.outputs)), ssm, hosts, timeout=3, interval=0.3, grace=0)
    with pytest.raises(FleetError) as failed:
        rotation.run()
    assert failed.value.code == ROLLED_BACK, failed.value.message
    assert f"{joined[0]}: new token: refused, not accepted" in failed.value.message
    assert parameter(ssm) == T1 and pool.outputs.read_bytes() == before
    assert first_file.read_text() == f"{T1}\n"  # the rollback's trigger reached the first host
    assert tokens.verdict(first.url, T1) == tokens.ACCEPTED
