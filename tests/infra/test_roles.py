"""The role registry (stripes/roles.py) is the one place a worker's port, start command and host
layout are written: change one value there and every consumer follows. Each test changes a
value in the registry (as a one-line edit would), then asks each consumer what it would do:
the Pulumi program (under mocks) and its user-data, the local runner, the tests' launcher, the
fleet deploy and the coordinator's default worker list."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import requests
import yaml

import stripes.roles as roles
from coordinator.config import DEFAULT_WORKERS
from infra.releases import Release
from infra.userdata import HostSecrets, render_cloud_config
from scripts import local
from scripts.fleet.deploy import HostPaths
from scripts.testkit import procs
from stripes.roles import ROLE_SPECS
from tests.support.infra_harness import REGION, reveal, run_program

ROLE = "worker-python"
INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"


def change(monkeypatch, **fields) -> roles.RoleSpec:
    """What a one-line edit of the worker-python entry does, undone after the test."""
    spec = dataclasses.replace(ROLE_SPECS[ROLE], **fields)
    monkeypatch.setitem(ROLE_SPECS, ROLE, spec)
    return spec


def program_user_data(role: str) -> str:
    run = run_program({"clientCidr": "198.51.100.7/32", "aws:region": REGION, "nodejsWorkers": "0"})
    instances = [r for r in run.of_type(INSTANCE) if r.name.startswith(role)]
    assert instances, f"the program declared no {role} instance"
    return reveal(instances[0].inputs["userData"])


def cloud_config(spec: roles.RoleSpec) -> dict:
    release = Release(role=spec.role, build="0123456789ab", key=f"{spec.role}/x.tar.gz", sha256="0" * 64, archive=b"")
    text = render_cloud_config(spec, release, bucket="b", region=REGION, port=spec.port, secrets=HostSecrets("/p/s"))
    return yaml.safe_load(text)


def test_a_port_change_reaches_infra_the_local_runner_and_the_coordinator(monkeypatch):
    change(monkeypatch, port=6101)
    user_data = program_user_data(ROLE)
    assert "WORKER_PORT=6101\n" in user_data  # infra config -> user-data
    assert local.ports({})[ROLE] == 6101  # make run / make workers
    assert local.page_env({}, local.ports({}))["COORDINATOR_WORKERS"].startswith("http://127.0.0.1:6101,")


def test_the_coordinator_default_list_is_the_registry_ports():
    assert tuple(f"http://127.0.0.1:{s.port}" for s in ROLE_SPECS.values()) == DEFAULT_WORKERS


def test_a_start_command_change_reaches_user_data_local_runner_and_launcher(monkeypatch, tmp_path):
    spec = change(monkeypatch, start=("-X", "utf8", "-m", "worker_python"))
    unit = next(f["content"] for f in cloud_config(spec)["write_files"] if f["path"].endswith(".service"))
    assert "ExecStart=/opt/worker-python/venv/bin/python -X utf8 -m worker_python\n" in unit
    assert local.worker_command(ROLE)[0][1:] == ["-X", "utf8", "-m", "worker_python"]
    # The tests' launcher starts a real worker with the changed command line.
    worker = procs.start_worker("python", tmp_path)
    try:
        cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:5] == [b"-X", b"utf8", b"-m", b"worker_python"]
    finally:
        worker.stop()


def test_a_host_path_change_reaches_user_data_and_the_fleet_deploy(monkeypatch):
    monkeypatch.setattr(roles, "HOST_BASE_DIR", "/srv/{role}")
    spec = ROLE_SPECS[ROLE]
    document = cloud_config(spec)
    runcmd = "\n".join(document["runcmd"])
    unit = next(f["content"] for f in document["write_files"] if f["path"].endswith(".service"))
    assert "WorkingDirectory=/srv/worker-python/current\n" in unit
    assert "ExecStart=/srv/worker-python/venv/bin/python -m worker_python\n" in unit
    assert "ln -sfn releases/0123456789ab /srv/worker-python/current" in runcmd
    assert "/opt/" not in runcmd.replace("/opt/node-", "").replace("/opt/npm-", "")
    paths = HostPaths.of(types.SimpleNamespace(remote_root="/tmp/host"), ROLE)
    assert paths.current == "/tmp/host/srv/worker-python/current"
    assert paths.release("b1") == "/tmp/host/srv/worker-python/releases/b1"
    assert "/tmp/host/srv/worker-python/venv/bin/pip install" in paths.install_steps("/r")


def test_each_worker_reports_the_registry_operations_and_primary_op(local_fleet):
    for url in local_fleet:
        health = requests.get(f"{url}/healthz", timeout=5).json()
        spec = roles.spec_of_runtime(health["runtime"])
        assert (health["service"], health["primary"]) == (spec.role, spec.primary_op)
        assert sorted(health["operations"]) == sorted(spec.operations)


def test_every_installer_runs_under_a_timeout():
    """npm ci behind a refusing proxy retries forever (found by the boot test): bound it."""
    for spec in roles.ROLE_SPECS.values():
        installers = [s for s in spec.install_steps("/r") if "pip install" in s or "npm ci" in s]
        assert installers, spec.role
        assert all(f"timeout {roles.INSTALL_TIMEOUT_SECONDS} " in s for s in installers), installers
