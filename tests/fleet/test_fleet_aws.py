"""`python -m scripts.fleet status|wait` against a real moto EC2 server and real workers.

moto's instances carry the tags infra/ sets; their /healthz is answered by real local workers
whose 127.0.0.1 URLs the outputs file names (the tool must use those URLs, as the coordinator
does, not EC2's fake public IPs).
"""

from __future__ import annotations

import functools
import json

import pytest

from scripts.fleet.boot import Boot
from scripts.fleet.cli import main
from scripts.testkit.procs import TlsClient, free_port
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from tests.support.fleet_cli import assert_one_error_line, run_fleet
from tests.support.moto_server import REGION, aws_env, run_tagged_instance

PROJECT, STACK = "hdtp", "fleet-test"
fleet = functools.partial(run_fleet, timeout=60)  # this file's bound per command


@pytest.fixture
def ec2(moto):
    moto.reset()
    return moto.ec2()


def write_outputs(path, workers: list[dict], stack: str = STACK):
    path.write_text(
        json.dumps(
            {
                "workers": workers,
                "worker_token": "t",
                "project": PROJECT,
                "stack": stack,
                "region": REGION,
                "ssh_user": "ubuntu",
            }
        )
    )
    return path


def worker_entry(name: str, role: str, url: str, instance_id: str = "") -> dict:
    return {
        "name": name,
        "role": role,
        "runtime": role.split("-")[1],
        "url": url,
        "public_ip": "127.0.0.1",
        "instance_id": instance_id,
        "operations": [],
    }


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_status_joins_ec2_state_checks_and_healthz(ec2, moto, python_worker, tmp_path):
    running = run_tagged_instance(ec2, "worker-python-0", "worker-python", PROJECT, STACK)
    stopped = run_tagged_instance(ec2, "worker-nodejs-0", "worker-nodejs", PROJECT, STACK)
    ec2.stop_instances(InstanceIds=[stopped])
    run_tagged_instance(ec2, "other-stack", "worker-python", PROJECT, "another-stack")
    outputs = write_outputs(
        tmp_path / "out.json",
        [
            worker_entry("worker-python-0", "worker-python", python_worker.url, running),
            worker_entry("worker-nodejs-0", "worker-nodejs", dead_url(), stopped),
        ],
    )

    result = fleet("status", "--json", "--outputs", str(outputs), env=aws_env(moto.url))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"worker-python-0", "worker-nodejs-0"}
    up = rows["worker-python-0"]
    assert (up["instance_id"], up["state"], up["checks"]) == (running, "running", "ok")
    assert up["public_ip"]  # EC2's address, shown; health used the outputs URL
    assert up["health"]["runtime"] == "python" and up["health"]["status"] == "ok"
    assert up["health"]["operations"] and up["health"]["build"]
    assert up["ready"] is True
    down = rows["worker-nodejs-0"]
    assert down["state"] == "stopped" and down["ready"] is False
    assert "state stopped" in down["missing"]
    assert down["health"]["error"] == "connection refused"

    table = fleet("status", "--outputs", str(outputs), env=aws_env(moto.url))
    assert table.returncode == 0, table.stderr
    assert "worker-python-0" in table.stdout and "stopped" in table.stdout


def test_status_lists_tagged_instances_missing_from_the_outputs(ec2, moto, python_worker, tmp_path):
    known = run_tagged_instance(ec2, "worker-python-0", "worker-python", PROJECT, STACK)
    run_tagged_instance(ec2, "worker-python-9", "worker-python", PROJECT, STACK)
    outputs = write_outputs(
        tmp_path / "out.json", [worker_entry("worker-python-0", "worker-python", python_worker.url, known)]
    )
    result = fleet("status", "--json", "--outputs", str(outputs), "--endpoint-url", moto.url, env=aws_env(None))
    assert result.returncode == 0, result.stderr
    extra = {row["name"]: row for row in json.loads(result.stdout)}["worker-python-9"]
    assert extra["url"] == "" and "no url in the outputs file" in extra["missing"]


def test_wait_returns_once_every_worker_is_ready(ec2, moto, python_worker, tmp_path):
    instance = run_tagged_instance(ec2, "worker-python-0", "worker-python", PROJECT, STACK)
    outputs = write_outputs(
        tmp_path / "out.json", [worker_entry("worker-python-0", "worker-python", python_worker.url, instance)]
    )
    result = fleet("wait", "--timeout", "20", "--interval", "0.5", "--outputs", str(outputs), env=aws_env(moto.url))
    assert result.returncode == 0, result.stderr
    assert "all 1 workers ready" in result.stdout


def test_wait_times_out_naming_each_laggard_and_what_it_lacks(ec2, moto, python_worker, tmp_path):
    ready = run_tagged_instance(ec2, "worker-python-0", "worker-python", PROJECT, STACK)
    stopped = run_tagged_instance(ec2, "worker-python-1", "worker-python", PROJECT, STACK)
    ec2.stop_instances(InstanceIds=[stopped])
    silent = run_tagged_instance(ec2, "worker-python-2", "worker-python", PROJECT, STACK)
    wrong = run_tagged_instance(ec2, "worker-nodejs-0", "worker-nodejs", PROJECT, STACK)
    outputs = write_outputs(
        tmp_path / "out.json",
        [
            worker_entry("worker-python-0", "worker-python", python_worker.url, ready),
            worker_entry("worker-python-1", "worker-python", dead_url(), stopped),
            worker_entry("worker-python-2", "worker-python", dead_url(), silent),
            # answers, but as the wrong runtime: a python worker where a nodejs one belongs
            worker_entry("worker-nodejs-0", "worker-nodejs", python_worker.url, wrong),
            # in the outputs, but no instance carries its tags
            worker_entry("worker-nodejs-1", "worker-nodejs", dead_url()),
        ],
    )

    result = fleet("wait", "--timeout", "2", "--interval", "0.5", "--outputs", str(outputs), env=aws_env(moto.url))
    line = assert_one_error_line(result, 3, "timed out after 2s waiting for:")
    assert "worker-python-0" not in line
    assert "worker-python-1 (state stopped; /healthz connection refused)" in line
    assert "worker-python-2 (/healthz connection refused)" in line
    assert "worker-nodejs-0 (/healthz runtime python (expected nodejs))" in line
    assert "worker-nodejs-1 (no EC2 instance; /healthz connection refused)" in line
    assert "waiting for:" in result.stderr.splitlines()[0]  # progress came before the verdict


def test_no_instances_found_is_one_error_line(ec2, moto, python_worker, tmp_path):
    run_tagged_instance(ec2, "worker-python-0", "worker-python", PROJECT, "some-other-stack")
    outputs = write_outputs(
        tmp_path / "out.json", [worker_entry("worker-python-0", "worker-python", python_worker.url)]
    )
    # `wait` gives up at once: an absent stack will not appear by waiting for its workers.
    result = fleet("wait", "--timeout", "60", "--outputs", str(outputs), env=aws_env(moto.url))
    assert_one_error_line(result, 1, f"no EC2 instances tagged Project={PROJECT} Stack={STACK}")


def test_no_aws_credentials_is_one_error_line(moto, tmp_path):
    outputs = write_outputs(tmp_path / "out.json", [worker_entry("worker-python-0", "worker-python", dead_url())])
    result = fleet("status", "--outputs", str(outputs), env=aws_env(moto.url, credentials=False))
    assert_one_error_line(result, 1, "no AWS credentials found")


def test_aws_refusal_is_one_error_line(moto, tmp_path):
    outputs = write_outputs(tmp_path / "out.json", [worker_entry("worker-python-0", "worker-python", dead_url())])
    # Nothing listens on this endpoint: the client cannot reach "AWS" at all.
    result = fleet("status", "--outputs", str(outputs), "--endpoint-url", dead_url(), env=aws_env(None))
    assert_one_error_line(result, 1, "cannot reach the AWS endpoint")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "not found"),
        ("{not json", "is not JSON"),
        ('{"workers": [], "stack": "s", "region": "r"}', "lacks `project`"),
        (
            '{"workers": [{"name": "a", "role": "worker-go", "url": "http://x"}], "project": "p", '
            '"stack": "s", "region": "r"}',
            "role 'worker-go' is not one of",
        ),
    ],
)
def test_a_bad_outputs_file_is_a_usage_error(content, fragment, tmp_path, capsys):
    path = tmp_path / "out.json"
    if content is not None:
        path.write_text(content)
    # In-process: the config is read before any AWS client exists, so nothing leaves the host.
    assert main(["status", "--outputs", str(path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last


def test_bad_flag_values_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["wait", "--timeout", "soon"])
    assert exit_info.value.code == 2
    assert "--timeout" in capsys.readouterr().err


# --- values from the outputs file are checked before use (ssh-config writes them into ~/.ssh/config)

GOOD_WORKER = {
    **worker_entry("worker-python-0", "worker-python", "http://203.0.113.10:5001", "i-0a1b2c3d4e5f60718"),
    "public_ip": "203.0.113.10",
}
INJECTED = "203.0.113.10\n  ProxyCommand sh -c 'touch /tmp/pwned'"


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("public_ip", INJECTED, "is not an IP address"),
        ("public_ip", "203.0.113.10 ", "is not an IP address"),
        ("public_ip", "evil.example", "is not an IP address"),
        ("name", "w\nHost *\n  ProxyCommand nc evil 22", "is not a worker name"),
        ("name", "-oProxyCommand=x", "is not a worker name"),
        ("name", "a" * 64, "is not a worker name"),
        ("url", "http://203.0.113.10:5001\n", "is not an http:// or https:// URL"),
        ("url", "http://user:pw@203.0.113.10:5001", "is not an http:// or https:// URL"),
        ("url", "http://203.0.113.10:5001/x?y", "is not an http:// or https:// URL"),
        ("url", "file:///etc/passwd", "is not an http:// or https:// URL"),
        ("url", "http://203.0.113.10:99999", "is not an http:// or https:// URL"),
        ("url", "http://ev il:5001", "is not an http:// or https:// URL"),
        ("instance_id", "i-1;reboot", "is not an EC2 instance id"),
        ("operations", ["grayscale", "x\ny"], "is not an operation name"),
        ("runtime", "go", "does not match role worker-python"),
    ],
)
def test_hostile_worker_values_are_refused_before_anything_is_written(field, value, fragment, tmp_path):
    outputs = write_outputs(tmp_path / "out.json", [{**GOOD_WORKER, field: value}])
    result = fleet("ssh-config", "--outputs", str(outputs), env=aws_env(None))
    line = assert_one_error_line(result, 2, fragment)
    assert f"workers[0].{field}" in line or field == "runtime"
    assert result.stdout == ""  # nothing reaches the ssh config
    assert len(line) < 300 and "\n" not in line


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("ssh_user", "ubuntu\n  ProxyCommand x", "is not a user name"),
        ("region", "us-east-1\nx", "is not an AWS region"),
        ("project", "hdtp project", "is not a Pulumi name"),
    ],
)
def test_hostile_file_values_are_refused(key, value, fragment, tmp_path):
    outputs = write_outputs(tmp_path / "out.json", [GOOD_WORKER])
    data = json.loads(outputs.read_text())
    outputs.write_text(json.dumps({**data, key: value}))
    assert_one_error_line(fleet("ssh-config", "--outputs", str(outputs), env=aws_env(None)), 2, fragment)


def test_ssh_config_prints_only_checked_values_and_quotes_paths(tmp_path):
    outputs = write_outputs(
        tmp_path / "out.json",
        [
            GOOD_WORKER,
            {**worker_entry("worker-nodejs-0", "worker-nodejs", "http://203.0.113.21:5002"), "public_ip": ""},
        ],
    )
    key = tmp_path / "my keys" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("not read by ssh-config\n")
    result = fleet(
        "ssh-config",
        "--outputs",
        str(outputs),
        "--ssh-key",
        str(key),
        "--known-hosts",
        str(tmp_path / "kh"),
        env=aws_env(None),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Host worker-python-0",
        "  HostName 203.0.113.10",
        "  User ubuntu",
        f'  IdentityFile "{key}"',
        "  IdentitiesOnly yes",
        f'  UserKnownHostsFile "{tmp_path / "kh"}"',
        "  StrictHostKeyChecking yes",
        "",
        "# worker-nodejs-0: no public_ip in the outputs file (is it running?)",
        "",
    ]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b" " * ((1 << 20) + 1), "is over 1048576 bytes"),
    ],
)
def test_an_outputs_file_that_is_not_text_json_or_sane_size_is_exit_2(content, fragment, tmp_path):
    path = tmp_path / "out.json"
    path.write_bytes(content)
    assert_one_error_line(fleet("status", "--outputs", str(path), env=aws_env(None)), 2, fragment)


# --- a hostile /healthz cannot hang the tool, fill its memory, send it elsewhere or mark up output


def test_hostile_health_replies_are_bounded_and_shown_as_text(ec2, moto, python_worker, tmp_path):
    from tests.support.hostile_worker import HostileWorker

    instance = run_tagged_instance(ec2, "worker-python-0", "worker-python", PROJECT, STACK)
    with (
        HostileWorker(health="huge") as huge,
        HostileWorker(health="drip_headers") as drip,
        HostileWorker(health="redirect", location=f"{python_worker.url}/healthz") as redirect,
        HostileWorker(health="markdown") as markdown,
    ):
        outputs = write_outputs(
            tmp_path / "out.json",
            [
                worker_entry("worker-python-0", "worker-python", python_worker.url, instance),
                worker_entry("worker-python-1", "worker-python", huge.url),
                worker_entry("worker-python-2", "worker-python", drip.url),
                worker_entry("worker-python-3", "worker-python", redirect.url),
                worker_entry("worker-python-4", "worker-python", markdown.url),
            ],
        )
        result = fleet("status", "--json", "--outputs", str(outputs), env=aws_env(moto.url))
        table = fleet("status", "--outputs", str(outputs), env=aws_env(moto.url))
        assert huge.sent < 10_000_000  # the tool hung up long before the 2 GB
    assert result.returncode == 0, result.stderr
    errors = {row["name"]: row["health"]["error"] for row in json.loads(result.stdout)}
    assert errors["worker-python-0"] == ""
    assert errors["worker-python-1"] == "HTTP 200 a body over 65536 bytes"
    assert errors["worker-python-2"] == "no complete answer within 4s"
    assert errors["worker-python-3"] == "HTTP 302 redirect (not followed)"
    assert table.returncode == 0, table.stderr
    assert "[update" in table.stdout and "[sepia]" in table.stdout  # shown, not taken as markup


# --- cloud-init reports, as each version prints them (the SSH path is in test_fleet_ssh.py)

RUNCMD = "('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))"


@pytest.mark.parametrize(
    "text, state, detail",
    [
        (json.dumps({"status": "error", "errors": [RUNCMD], "detail": "DataSourceEc2"}), "error", RUNCMD),
        (json.dumps({"status": "error", "errors": [], "init": {"errors": ["stage error"]}}), "error", "stage error"),
        (json.dumps({"status": "error", "errors": []}), "error", "cloud-init reported an error, with no message"),
        (json.dumps({"status": "done", "extended_status": "degraded done"}), "done", ""),
        (json.dumps({"status": "running"}), "running", ""),
        (json.dumps({"status": "not run"}), "not started", ""),
        (json.dumps({"status": "disabled"}), "disabled", ""),
        (json.dumps({"status": "weird\nvalue"}), "unknown", "cloud-init status 'weird value'"),
    ],
)
def test_cloud_init_json_reports(text, state, detail):
    from scripts.fleet.boot import from_json

    assert from_json(text) == Boot(state, detail)


@pytest.mark.parametrize(
    "text, state, detail",
    [
        (f"status: error\ntime: Mon, 30 Nov 2026 01:00:00 +0000\ndetail:\n{RUNCMD}\n", "error", RUNCMD),
        (
            f"status: error\nextended_status: error - done\ndetail: DataSourceEc2\nerrors:\n\t- {RUNCMD}\n"
            "recoverable_errors: {}\n",
            "error",
            RUNCMD,
        ),
        ("status: done\ntime: x\ndetail:\nDataSourceEc2\n", "done", ""),
        ("", "unknown", "cloud-init status printed no status line"),
    ],
)
def test_cloud_init_long_reports(text, state, detail):
    from scripts.fleet.boot import from_long

    assert from_long(text) == Boot(state, detail)


def test_not_json_is_not_a_report():
    from scripts.fleet.boot import from_json

    assert [from_json(t) for t in ("", "[]", '{"status": 1}', "[" * 100_000)] == [None] * 4


# --- a TLS fleet: /healthz over https, verified against the pinned CA and the fleet name --------


@pytest.fixture(scope="module")
def tls_worker(worker_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    authority = Authority()
    cert, key = authority.issue().write(folder, "server")
    env = {"WORKER_TLS_CERT": str(cert), "WORKER_TLS_KEY": str(key)}
    return worker_factory("python", env, tls=TlsClient(authority.write_ca(folder))), authority


def tls_status(
    moto, tmp_path, workers: list[dict], ca_pem: bytes, name: str = FLEET_TLS_NAME, extra: dict | None = None
) -> dict:
    outputs = write_outputs(tmp_path / "out.json", workers)
    data = {
        **json.loads(outputs.read_text()),
        "worker_ca_pem": ca_pem.decode(),
        "worker_tls_name": name,
        **(extra or {}),
    }
    outputs.write_text(json.dumps(data))
    result = fleet("status", "--json", "--outputs", str(outputs), env=aws_env(moto.url))
    assert result.returncode == 0, result.stderr
    return {row["name"]: row["health"] for row in json.loads(result.stdout)}


def test_status_probes_https_workers_by_the_pinned_ca_and_name(ec2, moto, tls_worker, python_worker, tmp_path):
    worker, authority = tls_worker
    instance = run_tagged_instance(ec2, "worker-python-0", "worker-python", PROJECT, STACK)
    plain = python_worker.url.replace("http://", "https://")  # a plain-HTTP worker behind an https URL
    workers = [
        worker_entry("worker-python-0", "worker-python", worker.url, instance),
        worker_entry("worker-python-1", "worker-python", plain),
    ]
    health = tls_status(moto, tmp_path, workers, authority.cert_pem)
    assert health["worker-python-0"]["status"] == "ok" and health["worker-python-0"]["error"] == ""
    assert health["worker-python-1"]["error"] == "no answer within 3s (https: is it serving TLS?)"
    other_ca = tls_status(moto, tmp_path, workers[:1], Authority().cert_pem)["worker-python-0"]["error"]
    assert other_ca.startswith("TLS certificate verify failed") and "\n" not in other_ca
    wrong_name = tls_status(moto, tmp_path, workers[:1], authority.cert_pem, "other.stripes.internal")
    assert "Hostname mismatch" in wrong_name["worker-python-0"]["error"]


def test_an_http_worker_in_a_fleet_with_a_ca_is_refused(tmp_path):
    outputs = write_outputs(tmp_path / "out.json", [GOOD_WORKER])
    data = {**json.loads(outputs.read_text()), "worker_ca_pem": Authority().cert_pem.decode()}
    outputs.write_text(json.dumps({**data, "worker_tls_name": FLEET_TLS_NAME}))
    result = fleet("status", "--outputs", str(outputs), env=aws_env(None))
    assert_one_error_line(result, 2, "plain HTTP refused: the fleet has a TLS CA, but worker-python-0")


def test_status_presents_the_client_certificate_of_a_mutual_tls_fleet(ec2, moto, worker_factory, tmp_path):
    authority = Authority()
    cert, key = authority.issue().write(tmp_path, "server")
    ca_file = authority.write_ca(tmp_path)
    client = authority.issue("coordinator", client=True)
    env = {"WORKER_TLS_CERT": str(cert), "WORKER_TLS_KEY": str(key), "WORKER_TLS_CLIENT_CA": str(ca_file)}
    worker = worker_factory("nodejs", env, tls=TlsClient(ca_file, cert=client.write(tmp_path, "client")))
    instance = run_tagged_instance(ec2, "worker-nodejs-0", "worker-nodejs", PROJECT, STACK)
    workers = [worker_entry("worker-nodejs-0", "worker-nodejs", worker.url, instance)]
    pair = {"worker_client_cert_pem": client.cert_pem.decode(), "worker_client_key_pem": client.key_pem.decode()}
    with_pair = tls_status(moto, tmp_path, workers, authority.cert_pem, extra=pair)["worker-nodejs-0"]
    assert with_pair["status"] == "ok" and with_pair["runtime"] == "nodejs"
    without = tls_status(moto, tmp_path, workers, authority.cert_pem)["worker-nodejs-0"]
    assert without["error"] == "TLS tlsv13 alert certificate required", without


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ({"worker_ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "not a usable CA"),
        ({"worker_ca_pem": "not a PEM"}, "worker_ca_pem must be the fleet CA's PEM"),
        ({"worker_tls_name": "bad name!"}, "is not a DNS name"),
        ({"worker_client_cert_pem": "x"}, "go together"),
        ({"worker_client_cert_pem": "x", "worker_client_key_pem": "y"}, "do not load"),
    ],
)
def test_bad_tls_values_in_the_outputs_file_are_usage_errors(extra, fragment, tmp_path):
    https = {**GOOD_WORKER, "url": "https://203.0.113.10:5001"}
    outputs = write_outputs(tmp_path / "out.json", [https])
    pinning = {"worker_ca_pem": Authority().cert_pem.decode(), "worker_tls_name": FLEET_TLS_NAME}
    outputs.write_text(json.dumps({**json.loads(outputs.read_text()), **pinning, **extra}))
    assert_one_error_line(fleet("ssh-config", "--outputs", str(outputs), env=aws_env(None)), 2, fragment)
