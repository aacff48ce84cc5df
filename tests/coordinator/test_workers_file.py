"""The coordinator reads the infra stack outputs (tests/fixtures/stack-outputs.json, the shape of
`pulumi stack output --json --show-secrets`) and routes to those URLs with that token.

The fixture's own addresses are documentation addresses: they are parsed, never contacted.
Routing is checked with real token-guarded workers on loopback put into a copy of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from coordinator.config import load_config
from scripts.testkit.cli import assert_one_error_line, run_cli
from scripts.testkit.procs import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "stack-outputs.json"


@pytest.fixture(scope="module")
def outputs() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def guarded_fleet(worker_factory, outputs):
    """Both runtimes, requiring the fixture's worker_token."""
    env = {"WORKER_TOKEN": outputs["worker_token"]}
    return {"python": worker_factory("python", env), "nodejs": worker_factory("nodejs", env)}


def outputs_pointing_at(outputs: dict, fleet: dict, tmp_path) -> str:
    local = json.loads(json.dumps(outputs))
    for key in ("worker_ca_pem", "worker_tls_name", "worker_client_cert_pem", "worker_client_key_pem"):
        local.pop(key, None)  # these workers are plain HTTP (TLS: tests/coordinator/test_tls_client.py)
    for worker in local["workers"]:
        worker["url"] = fleet[worker["runtime"]].url
    local["python_worker_url"], local["nodejs_worker_url"] = fleet["python"].url, fleet["nodejs"].url
    path = tmp_path / "stack-outputs.json"
    path.write_text(json.dumps(local))
    return str(path)


def test_fixture_is_read_as_the_worker_list_and_token(outputs):
    config = load_config(None, str(FIXTURE), {})
    assert config.workers == tuple(worker["url"] for worker in outputs["workers"])
    assert config.token == outputs["worker_token"] and config.source == f"outputs file {FIXTURE}"


def test_routes_to_the_outputs_workers_with_their_token(outputs, guarded_fleet, tmp_path):
    path = outputs_pointing_at(outputs, guarded_fleet, tmp_path)
    pixels = np.random.default_rng(5).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--workers-file", path)
    assert done.returncode == 0, done.stderr
    assert f"grayscale on {guarded_fleet['python'].url} (python)" in done.stderr
    assert f"sepia on {guarded_fleet['nodejs'].url} (nodejs)" in done.stderr
    assert Image.open(tmp_path / "out.png").size == (40, 50)
    # The same file through the environment.
    again = run_cli(
        "process",
        str(tmp_path / "in.png"),
        "-o",
        str(tmp_path / "again.png"),
        "--quiet",
        env={"COORDINATOR_WORKERS_FILE": path},
    )
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(tmp_path / "out.png")))


def test_a_wrong_token_is_named(outputs, guarded_fleet, tmp_path):
    path = outputs_pointing_at(outputs, guarded_fleet, tmp_path)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "in.png")
    done = run_cli(
        "process",
        str(tmp_path / "in.png"),
        "-o",
        str(tmp_path / "out.png"),
        "--workers-file",
        path,
        env={"COORDINATOR_WORKER_TOKEN": "not-the-token"},
    )
    assert_one_error_line(done, 3, f"token rejected by {guarded_fleet['python'].url}")
    assert f"token rejected by {guarded_fleet['nodejs'].url}" in done.stderr
    assert not (tmp_path / "out.png").exists()


def test_a_broken_outputs_file_is_a_usage_error(tmp_path):
    path = tmp_path / "stack-outputs.json"
    path.write_text('{"workers": [{"url": "not a url"}]}')
    done = run_cli("workers", "--workers-file", str(path))
    assert_one_error_line(done, 2, "--workers-file")


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[" * 100_000, None])
def test_an_unreadable_outputs_file_is_a_usage_error_not_a_crash(tmp_path, content):
    """11.15: non-UTF-8, nested 100k deep, /dev/zero: each was exit 1 with a Python error name."""
    path = "/dev/zero" if content is None else str(tmp_path / "stack-outputs.json")
    if content is not None:
        (tmp_path / "stack-outputs.json").write_bytes(content)
    done = run_cli("workers", "--workers-file", path)
    assert_one_error_line(done, 2, "--workers-file")


def test_a_token_with_a_line_break_is_refused_and_never_printed(outputs, tmp_path):
    """11.13: before, requests' InvalidHeader message printed the token on the CLI."""
    local = {**outputs, "worker_token": "tok-secret\nX-Injected: 1"}
    path = tmp_path / "stack-outputs.json"
    path.write_text(json.dumps(local))
    done = run_cli("workers", "--workers-file", str(path))
    assert_one_error_line(done, 2, "worker_token")
    assert "tok-secret" not in done.stderr + done.stdout
