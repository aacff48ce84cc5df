"""infra/fetch_secrets.py (the hosts' `fetch-worker-secrets`) against a real moto server with IAM
enforced: the script runs as a subprocess with the keys of an IAM user whose only policy is the
instance profile's, and reads the stack's SecureString parameters into files with the design's
modes, rewriting a file only when its parameter changed.
"""

from __future__ import annotations

import fnmatch
import grp
import json
import os
import stat
import subprocess
import sys
import time

import botocore.exceptions
import pytest

from infra import fetch_secrets
from infra.fleet_secrets import host_secrets_policy
from scripts.testkit.procs import free_port
from scripts.testkit.tls import Authority
from tests.support.moto_server import REGION, ROOT, aws_env, ssm_parameter_arn, start_moto_server

SCRIPT = ROOT / "infra" / "fetch_secrets.py"
ACCOUNT = "123456789012"  # moto's default account
PREFIX = "/heterogeneous-task-processor/dev"
OTHER_PREFIX = "/heterogeneous-task-processor/other"
TOKEN = "Tok3nAlpha0123456789abcdefghijklmnopqrstu"
NEXT_TOKEN = "Tok3nBravo0123456789abcdefghijklmnopqrstu"
# A certificate value with a key pasted into it: it begins and ends like a certificate.
CERT_KEY_CERT = (
    "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\n"
    "Secret-KeyBody\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nMIIBmore\n-----END CERTIFICATE-----"
)
# A group other than root's own, so the owner check can fail.
GROUP = next((g.gr_name for g in grp.getgrall() if g.gr_gid != 0), grp.getgrgid(os.getegid()).gr_name)


def instance_policy(region: str, account: str, prefix: str) -> dict:
    """The instance profile's SSM policy, from the program's own function."""
    return json.loads(host_secrets_policy(prefix, region=region, account=account))


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = start_moto_server(tmp_path_factory.mktemp("moto-ssm"), ssm_arns=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls():
    ca = Authority()
    return {"ca": ca.cert_pem.decode(), "server": ca.issue()}


@pytest.fixture
def stack(moto, tls):
    """Both stacks' parameters, an admin for the test's own changes, the host's keys; IAM enforced."""
    moto.enforce_iam(False)
    moto.reset()
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    admin = moto.iam_user("admin", everything)
    host = moto.iam_user("host", instance_policy(REGION, ACCOUNT, PREFIX))
    ssm = moto.client("ssm", **admin)
    for prefix in (PREFIX, OTHER_PREFIX):
        put(ssm, f"{prefix}/worker-token", TOKEN, "SecureString")
        put(ssm, f"{prefix}/worker-tls-key", tls["server"].key_pem.decode(), "SecureString")
        put(ssm, f"{prefix}/worker-tls-cert", tls["server"].cert_pem.decode(), "String")
        put(ssm, f"{prefix}/worker-client-ca", tls["ca"], "String")
    moto.enforce_iam(True)
    yield {"ssm": ssm, "host": host, "url": moto.url}
    moto.enforce_iam(False)


def put(ssm, name: str, value: str, kind: str = "SecureString") -> None:
    ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)


def fetch(stack, dest, *extra: str, prefix: str = PREFIX) -> subprocess.CompletedProcess:
    env = aws_env(stack["url"], credentials=False)
    env["AWS_ACCESS_KEY_ID"] = stack["host"]["aws_access_key_id"]
    env["AWS_SECRET_ACCESS_KEY"] = stack["host"]["aws_secret_access_key"]
    argv = [sys.executable, str(SCRIPT), "--region", REGION, "--prefix", prefix, "--dest", str(dest)]
    return subprocess.run(
        [*argv, "--group", GROUP, *extra], env=env, capture_output=True, text=True, timeout=90, check=False
    )


def assert_one_line_without_secrets(done: subprocess.CompletedProcess, tls) -> str:
    output = done.stdout + done.stderr
    for secret in (TOKEN, NEXT_TOKEN, tls["server"].key_pem.decode().splitlines()[1]):
        assert secret not in output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output
    return output.strip()


def facts(path) -> tuple[int, int, int, int]:
    """(mode, gid, inode, mtime_ns)"""
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_gid, st.st_ino, st.st_mtime_ns


def test_reads_the_stacks_secrets_with_the_instance_profile_policy(stack, tls, tmp_path):
    dest = tmp_path / "etc" / "worker-python" / "secrets"
    done = fetch(stack, dest, "--client-ca")
    line = assert_one_line_without_secrets(done, tls)
    assert done.returncode == 0, line
    assert (dest / "worker-token").read_text() == TOKEN + "\n"
    assert (dest / "tls.key").read_bytes() == tls["server"].key_pem
    assert (dest / "tls.crt").read_bytes() == tls["server"].cert_pem
    assert (dest / "client-ca.crt").read_text() == tls["ca"]
    modes = {p.name: facts(p)[0] for p in dest.iterdir()}
    assert modes == {"worker-token": 0o640, "tls.key": 0o640, "tls.crt": 0o644, "client-ca.crt": 0o644}
    assert facts(dest)[0] == 0o750
    if os.geteuid() == 0:  # unprivileged runs leave the owner alone
        gid = grp.getgrnam(GROUP).gr_gid
        assert {facts(p)[1] for p in [dest, *dest.iterdir()]} == {gid}
        assert {os.stat(p).st_uid for p in [dest, *dest.iterdir()]} == {0}


def test_unchanged_parameters_rewrite_nothing(stack, tls, tmp_path):
    assert fetch(stack, tmp_path).returncode == 0
    before = {p.name: facts(p) for p in tmp_path.iterdir()}
    again = fetch(stack, tmp_path)
    assert again.returncode == 0 and "nothing changed" in assert_one_line_without_secrets(again, tls)
    assert {p.name: facts(p) for p in tmp_path.iterdir()} == before


def test_a_rotated_token_replaces_only_the_token_file(stack, tls, tmp_path):
    assert fetch(stack, tmp_path).returncode == 0
    before = {p.name: facts(p) for p in tmp_path.iterdir()}
    put(stack["ssm"], f"{PREFIX}/worker-token", f"  {TOKEN}\n\n{NEXT_TOKEN}  \n")
    done = fetch(stack, tmp_path)
    assert done.returncode == 0 and "worker-token changed" in assert_one_line_without_secrets(done, tls)
    assert (tmp_path / "worker-token").read_text() == f"{TOKEN}\n{NEXT_TOKEN}\n"
    after = {p.name: facts(p) for p in tmp_path.iterdir()}
    assert sorted(after) == ["tls.crt", "tls.key", "worker-token"]  # no temporary file left behind
    # renamed into place (a new inode), never rewritten in place; the others untouched
    assert after["worker-token"][2] != before["worker-token"][2]
    assert after["worker-token"][0] == 0o640
    assert {k: after[k] for k in ("tls.crt", "tls.key")} == {k: before[k] for k in ("tls.crt", "tls.key")}


def test_a_missing_parameter_is_named_and_nothing_is_written(stack, tls, tmp_path):
    stack["ssm"].delete_parameter(Name=f"{PREFIX}/worker-tls-key")
    done = fetch(stack, tmp_path / "secrets")
    line = assert_one_line_without_secrets(done, tls)
    assert done.returncode == 1
    assert line == f"fetch-worker-secrets: parameter {PREFIX}/worker-tls-key not found"
    assert not (tmp_path / "secrets").exists()


@pytest.mark.parametrize(
    ("parameter", "value", "reason"),
    [
        ("worker-token", "Secret-One Secret-Two", "is not 1-4096 visible ASCII characters"),
        ("worker-token", "Secret-One\nSecret-Two\nSecret-Three", "holds 3 tokens; expected 1 or 2"),
        ("worker-token", " \n \n", "holds 0 tokens; expected 1 or 2"),
        ("worker-tls-key", "Secret-NotAKey", "is not a PEM private key"),
        ("worker-tls-cert", CERT_KEY_CERT, "holds a private key"),  # its file is world-readable
    ],
)
def test_a_bad_value_is_refused_and_the_old_files_are_kept(stack, tls, tmp_path, parameter, value, reason):
    assert fetch(stack, tmp_path).returncode == 0
    before = {p.name: (facts(p), p.read_bytes()) for p in tmp_path.iterdir()}
    put(stack["ssm"], f"{PREFIX}/{parameter}", value)
    done = fetch(stack, tmp_path)
    line = assert_one_line_without_secrets(done, tls)
    assert done.returncode == 1
    assert line.startswith(f"fetch-worker-secrets: parameter {PREFIX}/{parameter} ") and reason in line, line
    assert not [part for part in value.split() if part in line]
    assert {p.name: (facts(p), p.read_bytes()) for p in tmp_path.iterdir()} == before


def test_another_stacks_parameters_are_out_of_the_policys_reach(moto, stack, tls, tmp_path):
    policy = instance_policy(REGION, ACCOUNT, PREFIX)
    reads = [s for s in policy["Statement"] if any(a.startswith("ssm:") for a in s["Action"])]
    resources = [r for s in reads for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
    assert resources == [f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{PREFIX}/*"]
    mine, other = (ssm_parameter_arn(REGION, ACCOUNT, f"{p}/worker-token") for p in (PREFIX, OTHER_PREFIX))
    assert fnmatch.fnmatchcase(mine, resources[0]) and not fnmatch.fnmatchcase(other, resources[0])
    # and moto's policy engine, asked per parameter ARN, refuses it for real
    done = fetch(stack, tmp_path / "other", "--attempts", "1", prefix=OTHER_PREFIX)
    line = assert_one_line_without_secrets(done, tls)
    assert done.returncode == 1 and line.endswith(": HTTP 403"), line
    assert f"cannot read {OTHER_PREFIX}/worker-token" in line
    assert not (tmp_path / "other").exists()
    # moto answers a JSON-protocol service's denial in XML, which botocore reports as "403"
    host = moto.client("ssm", **stack["host"])
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        host.get_parameters(Names=[f"{OTHER_PREFIX}/worker-token"], WithDecryption=True)
    assert "<Code>AccessDenied</Code>" in denied.value.response["Error"]["Message"]
    assert host.get_parameters(Names=[f"{PREFIX}/worker-token"], WithDecryption=True)["Parameters"]


def test_an_unknown_group_is_one_line_and_writes_nothing(stack, tls, tmp_path):
    done = fetch(stack, tmp_path / "secrets", "--group", "no-such-group-hdtp")
    assert done.returncode == 1
    assert (
        assert_one_line_without_secrets(done, tls) == "fetch-worker-secrets: group 'no-such-group-hdtp' does not exist"
    )
    assert not (tmp_path / "secrets").exists()


def test_an_unreachable_endpoint_fails_in_bounded_time(stack, tls, tmp_path):
    closed = {**stack, "url": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    started = time.monotonic()
    done = fetch(closed, tmp_path / "secrets", "--attempts", "2")
    line = assert_one_line_without_secrets(done, tls)
    assert done.returncode == 1 and line.endswith(": EndpointConnectionError"), line
    assert time.monotonic() - started < 60  # 2 attempts x botocore's 3 tries, 5 s connect timeout each


def test_a_reply_that_lacks_a_wanted_name_is_one_line_and_writes_nothing(tls, tmp_path, monkeypatch, capsys):
    """SSM answering other names than asked (none of them InvalidParameters): named, no traceback."""
    reply = {f"{PREFIX}/worker-token": TOKEN, f"{OTHER_PREFIX}/worker-tls-key": tls["server"].key_pem.decode()}
    monkeypatch.setattr(fetch_secrets, "read_parameters", lambda *_args: dict(reply))
    argv = ["--region", REGION, "--prefix", PREFIX, "--dest", str(tmp_path / "secrets"), "--group", GROUP]
    assert fetch_secrets.main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"fetch-worker-secrets: parameter {PREFIX}/worker-tls-key not found\n", err
    assert not (tmp_path / "secrets").exists()
