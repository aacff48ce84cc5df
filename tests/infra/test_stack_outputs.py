"""One reader of the stack outputs (stripes/stack_outputs.py): the coordinator, the fleet tool and
`make stack-outputs` refuse the same files for the same reason and run the same pulumi command."""

from __future__ import annotations

import argparse
import os
import stat

import pytest

from coordinator.config import load_config
from coordinator.errors import ConfigError
from scripts import stack_outputs as make_stack_outputs
from scripts.fleet.config import load_config as load_fleet_config
from scripts.fleet.errors import FleetError
from stripes import stack_outputs


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\xff\xfe{}", "is not UTF-8 text (bad byte at offset 0)"),
        (b"{not json", "is not JSON (Expecting property name"),
        (b"[" * 100_000 + b"]" * 100_000, "is JSON nested too deeply"),
        (b" " * (stack_outputs.MAX_BYTES + 1), f"is over {stack_outputs.MAX_BYTES} bytes"),
    ],
)
def test_every_reader_refuses_a_bad_file_with_the_modules_reason(tmp_path, content, reason):
    path = tmp_path / "out.json"
    path.write_bytes(content)
    with pytest.raises(stack_outputs.OutputsError, match="^" + str(path)):
        stack_outputs.read_file(path)
    with pytest.raises(ConfigError) as coordinator:
        load_config(workers_file=str(path), environ={})
    with pytest.raises(FleetError) as fleet:
        load_fleet_config(argparse.Namespace(outputs=str(path)), environ={})
    assert f"{path} {reason}" in str(coordinator.value)
    assert f"{path} {reason}" in fleet.value.message


def test_a_device_is_refused_before_reading():
    with pytest.raises(stack_outputs.OutputsError, match="/dev/zero is not a regular file"):
        stack_outputs.read_file("/dev/zero")


def test_the_coordinator_and_make_stack_outputs_run_the_same_pulumi_command(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "pulumi"
    fake.parent.mkdir()
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/argv\n'
        """echo '{"workers": [{"url": "http://192.0.2.7:5001"}], "worker_token": "t0123456789"}'\n"""
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    path = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    load_config(environ={"PATH": path, "COORDINATOR_PULUMI_STACK": "dev", "COORDINATOR_PULUMI_DIR": str(tmp_path)})
    monkeypatch.setenv("PATH", path)
    assert make_stack_outputs.main(["--stack", "dev", "--output", str(tmp_path / "o.json")]) == 0
    first, second = (tmp_path / "argv").read_text().splitlines()
    assert first == second == "stack output --json --show-secrets --stack dev --non-interactive"


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({}, None),
        ({"workers": [{"url": "https://192.0.2.7:5001"}], "worker_ca_pem": "-----BEGIN CERTIFICATE-----\n"}, None),
        ({"workers": [{"url": "https://192.0.2.7:5001"}]}, "the workers are https:// but the stack outputs have no"),
        ({"workers": [{"url": "https://192.0.2.7:5001"}], "worker_ca_pem": "[secret]"}, "no worker_ca_pem"),
        ({"workers": [{"url": "ftp://192.0.2.7:5001"}]}, "has no http:// or https:// url"),
        ({"worker_client_key_pem": "[secret]"}, "worker_client_key_pem is empty or still masked"),
    ],
)
def test_complete_outputs_accept_https_only_with_the_fleet_ca(changes, reason):
    outputs = {"workers": [{"url": "http://192.0.2.7:5001"}], "worker_token": "t0123456789", **changes}
    if reason is None:
        assert stack_outputs.check_complete(outputs) is outputs
    else:
        with pytest.raises(stack_outputs.OutputsError, match=reason):
            stack_outputs.check_complete(outputs)
