"""Security checks behind SECURITY.md: token auth, no token in logs, request ids across the hop.

Each test names the SECURITY.md claim it proves.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter

import pytest
import requests

from scripts.testkit import cli
from scripts.testkit.fuzz import error_code
from scripts.testkit.images import expected_pixels, max_pixel_diff, png_bytes, sample_rgb
from scripts.testkit.procs import ROOT

TOKEN = "s3cr3t-Token-for-tests-8f1d2c"
WRONG = "s3cr3t-Token-for-tests-WRONG0"  # same prefix: a prefix compare would pass it
PRIMARY = {"python": "grayscale", "nodejs": "sepia"}


@pytest.fixture(scope="module", params=["python", "nodejs"])
def locked_worker(request, worker_factory):
    worker = worker_factory(request.param, {"WORKER_TOKEN": TOKEN, "WORKER_MAX_BYTES": "200000"})
    worker.runtime = request.param
    return worker


def post(url: str, body: bytes, headers: dict | None = None, **kwargs):
    return requests.post(
        f"{url}/process", data=body, timeout=10, headers={"Content-Type": "image/png", **(headers or {})}, **kwargs
    )


def wait_for_log(worker, text: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in worker.log_text():
            return True
        time.sleep(0.05)
    return False


# -- claim: /process needs the token; /healthz does not ----------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Bearer {WRONG}",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
        f"Bearer  {TOKEN}x",
        f"Bearer {TOKEN.upper()}",
    ],
)
def test_process_without_the_right_token_is_401(locked_worker, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = post(locked_worker.url, png_bytes(sample_rgb(8, 8)), headers)
    assert response.status_code == 401, f"{authorization!r} got {response.status_code}"
    assert error_code(response) == "unauthorized"
    assert TOKEN not in response.text and WRONG not in response.text


def test_token_in_the_query_string_is_not_accepted(locked_worker):
    response = post(locked_worker.url, png_bytes(sample_rgb(8, 8)), params={"token": TOKEN})
    assert response.status_code == 401


def test_right_token_is_accepted_and_pixels_are_right(locked_worker):
    image = sample_rgb(16, 12)
    response = post(locked_worker.url, png_bytes(image), {"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text[:200]
    from io import BytesIO

    from PIL import Image

    result = Image.open(BytesIO(response.content))
    assert max_pixel_diff(result, expected_pixels(image, PRIMARY[locked_worker.runtime])) <= 1


def test_auth_is_checked_before_the_body_is_accepted(locked_worker):
    """An anonymous caller cannot make the worker read or decode a big body (order 3 before 5)."""
    response = post(locked_worker.url, b"\0" * 300_000)
    assert response.status_code == 401
    response = post(locked_worker.url, b"\0" * 300_000, {"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 413 and error_code(response) == "too_large"


def test_healthz_needs_no_token_and_reveals_no_secret(locked_worker):
    response = requests.get(f"{locked_worker.url}/healthz", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["operations"], "healthz must list operations: the coordinator routes by them"
    assert TOKEN not in response.text
    assert not {"token", "worker_token", "env", "environ"} & {k.lower() for k in body}


def test_unknown_routes_are_404_json_without_a_stack_or_version(locked_worker):
    for method, path in (
        ("GET", "/"),
        ("GET", "/admin"),
        ("GET", "/process"),
        ("PUT", "/process"),
        ("GET", "/../../etc/passwd"),
    ):
        response = requests.request(method, f"{locked_worker.url}{path}", timeout=5)
        assert response.status_code in (404, 405), f"{method} {path}: {response.status_code}"
        assert error_code(response) in ("not_found", "method_not_allowed"), response.text[:200]
        assert "Traceback" not in response.text and " at " not in response.text


# -- claim: a caller cannot forge or flood log lines through X-Request-Id -------------------


@pytest.mark.parametrize("request_id", ["a" * 5000, 'x"}, {"level": "error', "tab\there", "ok-id_1.2"])
def test_hostile_request_ids_cannot_break_or_flood_the_log(locked_worker, request_id):
    response = post(
        locked_worker.url, png_bytes(sample_rgb(4, 4)), {"Authorization": f"Bearer {TOKEN}", "X-Request-Id": request_id}
    )
    assert response.status_code == 200
    echoed = response.headers.get("X-Request-Id", "")
    assert echoed and len(echoed) <= 128, "the echoed request id is missing or over 128 characters"
    # The log line may land just after the response: wait for it, briefly.
    assert wait_for_log(locked_worker, json.dumps(echoed)[1:-1]), "the echoed id was not logged"
    entries = [
        json.loads(line) for line in locked_worker.log_text().splitlines() if line.strip()
    ]  # every line stays one JSON object
    assert all(len(str(entry.get("request_id", ""))) <= 128 for entry in entries)
    assert not any(entry.get("level") == "error" and entry.get("msg") is None for entry in entries)


# -- claim: the token is never logged --------------------------------------------------------


def test_token_never_appears_in_worker_logs(locked_worker):
    image = png_bytes(sample_rgb(8, 8))
    post(locked_worker.url, image, {"Authorization": f"Bearer {TOKEN}"})
    post(locked_worker.url, image, {"Authorization": f"Bearer {WRONG}"})
    post(locked_worker.url, image, {"Authorization": f"Basic {TOKEN}"})
    post(locked_worker.url, b"not an image", {"Authorization": f"Bearer {TOKEN}"})
    log = locked_worker.log_text()
    assert log.strip(), "the worker wrote no log lines to check"
    assert TOKEN not in log, "the worker's log contains its token"
    assert WRONG not in log, "the worker's log contains a caller's (wrong) token"
    assert "Authorization" not in log and "authorization" not in log


CONSTANT_TIME_COMPARE = {
    "python": ("worker-python", "*.py", r"compare_digest"),
    "nodejs": ("worker-nodejs", "*.js", r"timingSafeEqual"),
}


@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_token_check_is_constant_time_in_source(runtime):
    """The compare must not leak the token's prefix by timing (contract: constant-time compare)."""
    folder, pattern, needle = CONSTANT_TIME_COMPARE[runtime]
    source = "\n".join(
        path.read_text()
        for path in (ROOT / folder).rglob(pattern)
        if "node_modules" not in path.parts and "test" not in path.parts
    )
    assert re.search(needle, source), f"{folder}: the token compare does not use {needle}"


# -- claims about the coordinator: sends the token, never prints it; request ids trace a strip --


@pytest.fixture(scope="module")
def locked_fleet(worker_factory):
    env = {"WORKER_TOKEN": TOKEN}
    return [worker_factory("python", env), worker_factory("nodejs", env)]


def run_cli(tmp_path, fleet, token: str, strips: int = 4) -> tuple[subprocess.CompletedProcess, object]:
    image = sample_rgb(40, 32)
    source, out = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(png_bytes(image))
    done = cli.run_cli(
        "process",
        str(source),
        "-o",
        str(out),
        "--plan",
        "seed",
        "--strips",
        str(strips),
        "--workers",
        ",".join(w.url for w in fleet),
        env={"COORDINATOR_WORKER_TOKEN": token},
    )
    return done, image


def logged_request_ids(worker, since_line: int) -> list[str]:
    entries = worker.log_entries(since_line)
    return [e["request_id"] for e in entries if e.get("request_id") and e.get("path") == "/process" and e.get("status")]


def test_coordinator_token_is_sent_and_never_printed(tmp_path, locked_fleet):
    done, _ = run_cli(tmp_path, locked_fleet, TOKEN)
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout + done.stderr
    for worker in locked_fleet:
        assert TOKEN not in worker.log_text()


def test_coordinator_with_a_wrong_token_fails_clearly_without_printing_it(tmp_path, locked_fleet):
    done, _ = run_cli(tmp_path, locked_fleet, WRONG)
    assert done.returncode == 3, f"exit {done.returncode}: {done.stderr}"
    assert WRONG not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr
    assert "token" in done.stderr.lower(), f"the error should say the token was rejected: {done.stderr}"
    assert not (tmp_path / "out.png").exists()


def test_coordinator_sends_one_request_id_per_strip_that_workers_log(tmp_path, locked_fleet):
    """The ids the workers log for one job are the coordinator's (they share the job's prefix),
    not ids each worker made up."""
    marks = [len(worker.log_text().splitlines()) for worker in locked_fleet]
    done, _ = run_cli(tmp_path, locked_fleet, TOKEN, strips=4)
    assert done.returncode == 0, done.stderr
    time.sleep(0.5)  # the last log lines may land just after the responses
    logged = [rid for worker, mark in zip(locked_fleet, marks, strict=True) for rid in logged_request_ids(worker, mark)]
    # A previous test's last log lines can land after the mark: keep the ids of the job with the most of them.
    jobs = Counter(rid.rsplit("-s", 1)[0] for rid in logged)
    job = jobs.most_common(1)[0][0] if jobs else ""
    ids = [rid for rid in logged if rid.rsplit("-s", 1)[0] == job]
    assert len(ids) >= 4, f"workers logged no 4 request ids of one job for a 4-strip job: {logged}"
    prefix = os_commonprefix(ids)
    assert len(prefix) >= 8, f"no common job id in the strips' request ids: {ids}"
    assert len(set(ids)) == len(ids), f"strips share a request id: {ids}"


# The CLI prints each strip's request id ("[request <id>]") unless --quiet.
def test_coordinator_output_names_the_request_ids_workers_logged(tmp_path, locked_fleet):
    marks = [len(worker.log_text().splitlines()) for worker in locked_fleet]
    done, _ = run_cli(tmp_path, locked_fleet, TOKEN, strips=2)
    assert done.returncode == 0, done.stderr
    ids = [rid for worker, mark in zip(locked_fleet, marks, strict=True) for rid in logged_request_ids(worker, mark)]
    assert ids
    missing = [rid for rid in ids if rid not in done.stdout + done.stderr]
    assert not missing, f"request ids the workers logged but the coordinator never showed: {missing}"


def os_commonprefix(items: list[str]) -> str:
    import os

    return os.path.commonprefix(items)


# -- claim: an anonymous caller cannot starve a worker by holding connections open -----------

SLOW_CONNECTIONS = 12  # twice worker-python's threads at the default WORKER_MAX_INFLIGHT=4


# worker-python failed this until c094f1e: gunicorn's gthread worker gave each new connection
# a thread that blocked reading the headers, so 6 idle connections hung /healthz and /process.
@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_idle_connections_without_a_token_do_not_starve_the_worker(runtime, worker_factory):
    import socket
    from urllib.parse import urlsplit

    worker = worker_factory(runtime, {"WORKER_TOKEN": TOKEN})
    parts = urlsplit(worker.url)
    sockets = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
            sock.sendall(b"POST /process HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            sockets.append(sock)
        time.sleep(0.5)
        try:
            health = requests.get(f"{worker.url}/healthz", timeout=3)
        except requests.RequestException as exc:
            pytest.fail(f"/healthz did not answer with {SLOW_CONNECTIONS} idle connections open: {type(exc).__name__}")
        assert health.status_code == 200
        response = post(worker.url, png_bytes(sample_rgb(8, 8)), {"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
    finally:
        for sock in sockets:
            sock.close()
