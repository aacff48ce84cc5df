"""`fleet rotate-token` and `fleet refresh-secrets` against a real moto server (SSM) and real
workers on loopback.

The hosts' part is real too: the trigger runs infra/fetch_secrets.py (the hosts'
fetch-worker-secrets) against moto, writing the token file the local workers read
(WORKER_TOKEN_FILE) and reload. The SSH form of the trigger is proven in test_fleet_ssh.py.
"""

from __future__ import annotations

import functools
import json
import stat

import pytest

from scripts.fleet import tokens
from scripts.fleet.config import load_config
from scripts.fleet.rotate import rewrite_token
from tests.support.fleet_cli import assert_one_error_line, run_fleet
from tests.support.moto_server import REGION, aws_env, start_moto_server

PROJECT, STACK = "hdtp", "rotate-test"
PREFIX = f"/{PROJECT}/{STACK}"
TOKEN_PARAMETER = f"{PREFIX}/worker-token"
T1 = "CurrentToken0123456789abcdefghijklmnopqr"
fleet = functools.partial(run_fleet, timeout=120)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = start_moto_server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


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


def test_rewrite_token_replaces_the_file_atomically_with_its_mode(tmp_path):
    outputs = write_outputs(tmp_path / "out.json", [("worker-python", "http://127.0.0.1:9")], mode=0o600)
    inode = outputs.stat().st_ino
    rewrite_token(outputs, "NewToken")
    data = json.loads(outputs.read_text())
    assert data["worker_token"] == "NewToken" and data["workers"][0]["url"] == "http://127.0.0.1:9"
    assert stat.S_IMODE(outputs.stat().st_mode) == 0o600
    assert outputs.stat().st_ino != inode  # a new file renamed over the old: readers see one or the other
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left
