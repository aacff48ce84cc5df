"""The coordinator as a TLS client of the fleet (issue 16): the pinned CA and the fleet's name
verified on every connection, one-line refusals (wrong CA, wrong name, expired, plain HTTP,
mutual TLS without a certificate), settings checked at start-up, and the token re-read from
its source when a worker answers 401, so a rotation mid-batch fails no job.

Certificates are throwaway (scripts/testkit/tls.py). A small loopback TLS server stands in
for a worker where the test needs control of the handshake; the end-to-end cases run both
real workers with WORKER_TLS_*."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from coordinator.config import CoordinatorConfig, load_config
from coordinator.discovery import discover
from coordinator.errors import ConfigError
from coordinator.transport import Cancel, Limits, Transport, TransportError
from scripts.testkit.cli import assert_one_error_line, clean_env, run_cli
from scripts.testkit.procs import ROOT, RUNTIMES, TlsClient
from scripts.testkit.socket_server import ThreadedSocketServer
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from scripts.wan import wait_port
from tests.support.page import APP, RUN_TIMEOUT, colourful_png, process, texts, upload
from tests.support.tls_fleet import TlsFleet

HEALTH = {"status": "ok", "service": "worker-python", "runtime": "python", "operations": ["invert"], "tls": True}
REFUSED = {
    "wrong_ca": "TLS refused: the worker's certificate is not signed by the pinned fleet CA",
    "wrong_name": f"TLS refused: certificate name mismatch (expected {FLEET_TLS_NAME})",
    "expired": "TLS refused: the worker's certificate has expired",
    # worker-nodejs answers a ClientHello with HTTP 400; gunicorn waits for a request line
    "plain_http_nodejs": "TLS refused: the worker did not answer TLS (a plain HTTP server on that port?)",
    "plain_http_python": "TLS failed: no TLS handshake from the worker within 1.5 s (a plain HTTP server on that",
    # the alert, or (when the server's reset overtakes it) the close: both say mutual TLS
    "no_client_cert": "mutual TLS",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    fleet, other = Authority("fleet CA"), Authority("another CA")
    return SimpleNamespace(
        folder=folder,
        ca=fleet.write_ca(folder),
        ca_pem=fleet.cert_pem.decode(),
        other_ca=other.write_ca(folder, "other-ca"),
        server=fleet.issue().write(folder, "server"),
        wrong_name=fleet.issue("other.example").write(folder, "wrong-name"),
        expired=fleet.issue(expired=True).write(folder, "expired"),
        foreign=other.issue().write(folder, "foreign"),
        client=fleet.issue("coordinator", client=True).write(folder, "client"),
    )


def tls_config(pki, urls, **env) -> CoordinatorConfig:
    environ = {"COORDINATOR_TLS_CA_FILE": str(pki.ca), "COORDINATOR_TLS_NAME": FLEET_TLS_NAME, **env}
    environ["COORDINATOR_HEALTH_TIMEOUT"] = environ.get("COORDINATOR_HEALTH_TIMEOUT", "5")
    return load_config(workers=",".join(urls), environ=environ)


# ---------------------------------------------------------------- a loopback TLS server


class TlsHealthServer(ThreadedSocketServer):
    """Answers GET /healthz over TLS with keep-alive (counts connections and requests); with
    client_ca it requires a client certificate; mode "drip" sends a TLS record header a byte
    every 0.3 s and never finishes the handshake."""

    thread_name = "tls-health"

    def __init__(self, pair, client_ca=None, mode="ok"):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(*pair)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.mode, self.connections, self.requests = mode, 0, 0
        self._serve()
        self.url = f"https://127.0.0.1:{self.port}"

    def _handle(self, client: socket.socket) -> None:
        self.connections += 1
        client.settimeout(10)
        if self.mode == "drip":
            for byte in b"\x16\x03\x03\x40\x00" * 20:
                if self._stopping.wait(0.3):
                    return
                client.sendall(bytes([byte]))
            return
        try:
            with self.context.wrap_socket(client, server_side=True) as tls:
                self._answer(tls)
        except (OSError, ssl.SSLError):
            return  # a refused handshake: the client reports it

    def _answer(self, tls: ssl.SSLSocket) -> None:
        body = json.dumps(HEALTH).encode()
        pending = b""
        while not self._stopping.is_set():
            chunk = tls.recv(4096)
            if not chunk:
                return
            pending += chunk
            while b"\r\n\r\n" in pending:
                _, pending = pending.split(b"\r\n\r\n", 1)
                self.requests += 1
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                tls.sendall(head.encode() + body)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("ok", None),
        ("wrong_ca", REFUSED["wrong_ca"]),
        ("wrong_name", REFUSED["wrong_name"]),
        ("expired", REFUSED["expired"]),
        ("no_client_cert", REFUSED["no_client_cert"]),
        ("client_cert", None),
    ],
)
def test_each_handshake_failure_is_one_named_reason(pki, case, expect):
    pair = {"wrong_ca": pki.foreign, "wrong_name": pki.wrong_name, "expired": pki.expired}.get(case, pki.server)
    client_ca = pki.ca if case in ("no_client_cert", "client_cert") else None
    env = {}
    if case == "client_cert":
        env = {"COORDINATOR_TLS_CLIENT_CERT": str(pki.client[0]), "COORDINATOR_TLS_CLIENT_KEY": str(pki.client[1])}
    with TlsHealthServer(pair, client_ca) as server:
        [status] = discover(tls_config(pki, [server.url], **env))
    if expect is None:
        assert status.ok and status.runtime == "python", status.error
    else:
        assert not status.ok and status.error.startswith("unreachable: TLS") and expect in status.error
        assert "\n" not in status.error


def test_keep_alive_reuses_one_tls_connection(pki):
    with TlsHealthServer(pki.server) as server:
        config = tls_config(pki, [server.url])
        transport = Transport(1)
        try:
            for _ in range(3):
                assert discover(config, transport)[0].ok
        finally:
            transport.close()
    assert (server.connections, server.requests) == (1, 3)


def test_a_dripped_handshake_ends_at_the_health_deadline(pki):
    """The handshake is inside the exchange's deadline: a server that sends a byte of a TLS
    record every 0.3 s (each read is within the timeout) must not hold the probe past it."""
    with TlsHealthServer(pki.server, mode="drip") as server:
        started = time.monotonic()
        [status] = discover(tls_config(pki, [server.url], COORDINATOR_HEALTH_TIMEOUT="1"))
        took = time.monotonic() - started
    assert not status.ok and "no TLS handshake from the worker within 1.0 s" in status.error, status.error
    assert took < 4, took  # 20 records' bytes would take 30 s; 1 s deadline plus load noise


def test_a_cancel_ends_a_handshake_in_progress(pki):
    """Ctrl-C (Cancel.fire) during a stalled handshake ends it at once, not after the connect
    timeout: the exchange holds the TCP socket before the handshake starts."""
    cancel = Cancel()
    limits = Limits(connect=20, idle=20, total=40, max_body=1000)
    with TlsHealthServer(pki.server, mode="drip") as server:
        tls = tls_config(pki, [server.url]).tls
        threading.Timer(0.5, cancel.fire).start()
        started = time.monotonic()
        with pytest.raises(TransportError) as error:
            Transport(1).exchange("GET", f"{server.url}/healthz", limits, cancel=cancel, tls=tls)
        took = time.monotonic() - started
    assert error.value.kind == "cancelled" and took < 5, (error.value.reason, took)


# ---------------------------------------------------------------- settings


def outputs_file(tmp_path, urls, token=None, **keys) -> str:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"workers": [{"url": url} for url in urls], "worker_token": token, **keys}))
    return str(path)


def test_outputs_tls_keys_are_read_and_the_variables_beat_them(pki, tmp_path):
    key_pem = pki.client[1].read_text()
    path = outputs_file(
        tmp_path,
        ["https://192.0.2.7:5001"],
        worker_ca_pem=pki.ca_pem,
        worker_tls_name=FLEET_TLS_NAME,
        worker_client_cert_pem=pki.client[0].read_text(),
        worker_client_key_pem=key_pem,
    )
    config = load_config(workers_file=path, environ={})
    assert config.tls.ca_pem == pki.ca_pem and config.tls.name == FLEET_TLS_NAME and config.tls.mutual
    assert key_pem not in repr(config) and "PRIVATE KEY" not in repr(config)
    other = load_config(
        workers_file=path, environ={"COORDINATOR_TLS_CA_FILE": str(pki.other_ca), "COORDINATOR_TLS_NAME": "x.example"}
    )
    assert other.tls.ca_pem == pki.other_ca.read_text() and other.tls.name == "x.example"
    assert other.tls.origin == f"COORDINATOR_TLS_CA_FILE={pki.other_ca}"


def bad_settings(pki, tmp_path) -> dict:
    """case -> (outputs keys, env, urls, words of the one-line error)."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    client = {"worker_client_cert_pem": pki.client[0].read_text()}
    https = ["https://192.0.2.7:5001"]
    return {
        "bad_ca_pem": ({"worker_ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n"}, {}, https, "not a PEM certificate"),
        "bad_ca_file": ({}, {"COORDINATOR_TLS_CA_FILE": str(junk)}, https, f"COORDINATOR_TLS_CA_FILE={junk}: not a"),
        "missing_ca_file": ({}, {"COORDINATOR_TLS_CA_FILE": str(tmp_path / "no")}, https, "cannot read it"),
        "http_with_ca": ({"worker_ca_pem": pki.ca_pem}, {}, ["http://192.0.2.7:5001"], "plain HTTP refused"),
        "https_without_ca": ({}, {}, https, "the workers are https:// but there is no worker_ca_pem"),
        "cert_without_key": ({"worker_ca_pem": pki.ca_pem, **client}, {}, https, "without"),
        "key_not_matching": (
            {"worker_ca_pem": pki.ca_pem, **client, "worker_client_key_pem": pki.server[1].read_text()},
            {},
            https,
            "not a PEM certificate and the private key that matches it (key not shown)",
        ),
        "masked_key": ({"worker_ca_pem": pki.ca_pem, **client, "worker_client_key_pem": "[secret]"}, {}, https, "mask"),
        "name_without_ca": ({}, {"COORDINATOR_TLS_NAME": FLEET_TLS_NAME}, https, "no fleet CA"),
        "bad_name": ({"worker_ca_pem": pki.ca_pem, "worker_tls_name": "a b"}, {}, https, "is not a DNS name"),
    }


CASES = [
    "bad_ca_pem",
    "bad_ca_file",
    "missing_ca_file",
    "http_with_ca",
    "https_without_ca",
    "cert_without_key",
    "key_not_matching",
    "masked_key",
    "name_without_ca",
    "bad_name",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_tls_settings_are_one_config_error_without_key_text(pki, tmp_path, case):
    keys, env, urls, words = bad_settings(pki, tmp_path)[case]
    with pytest.raises(ConfigError) as error:
        load_config(workers_file=outputs_file(tmp_path, urls, **keys), environ=env)
    message = str(error.value)
    assert words in message and "\n" not in message, message
    assert "PRIVATE KEY" not in message and pki.server[1].read_text()[40:80] not in message


def test_an_http_worker_with_a_ca_configured_exits_2(pki, tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "in.png")
    env = {"COORDINATOR_WORKERS": "http://127.0.0.1:9", "COORDINATOR_TLS_CA_FILE": str(pki.ca)}
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), env=env)
    assert_one_error_line(done, 2, "plain HTTP refused: the fleet has a TLS CA")


def test_a_ca_file_that_is_a_fifo_is_one_config_error_not_a_hang(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "in.png")
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo)  # no writer ever opens it: a plain open() for reading waits forever
    env = {"COORDINATOR_WORKERS": "https://127.0.0.1:9", "COORDINATOR_TLS_CA_FILE": str(fifo)}
    done = run_cli("process", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), env=env, timeout=30)
    assert_one_error_line(done, 2, f"COORDINATOR_TLS_CA_FILE={fifo}: not a regular file")


# ---------------------------------------------------------------- real workers on TLS


def worker_tls_env(pair, client_ca=None) -> dict:
    env = {"WORKER_TLS_CERT": str(pair[0]), "WORKER_TLS_KEY": str(pair[1])}
    return {**env, "WORKER_TLS_CLIENT_CA": str(client_ca)} if client_ca else env


@pytest.fixture(scope="module")
def tls_fleet(worker_factory, pki):
    """Both runtimes serving TLS with the fleet's server certificate."""
    return {runtime: worker_factory(runtime, worker_tls_env(pki.server), tls=TlsClient(pki.ca)) for runtime in RUNTIMES}


def photo(tmp_path, name="in.png", seed=3, size=(96, 64)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / name)
    return str(tmp_path / name)


def tls_cli_env(pki, urls, ca=None, **extra) -> dict:
    return {
        "COORDINATOR_WORKERS": ",".join(urls),
        "COORDINATOR_TLS_CA_FILE": str(ca or pki.ca),
        "COORDINATOR_TLS_NAME": FLEET_TLS_NAME,
        **extra,
    }


def test_both_tls_workers_give_the_pixels_plain_workers_give(pki, tls_fleet, local_fleet, tmp_path):
    source = photo(tmp_path)
    path = outputs_file(
        tmp_path,
        [tls_fleet[runtime].url for runtime in RUNTIMES],
        worker_ca_pem=pki.ca_pem,
        worker_tls_name=FLEET_TLS_NAME,
    )
    done = run_cli("process", source, "-o", str(tmp_path / "tls.png"), "--strips", "4", "--workers-file", path)
    assert done.returncode == 0, done.stderr
    for runtime in RUNTIMES:
        assert f"on {tls_fleet[runtime].url} ({runtime})" in done.stderr
    plain = run_cli("process", source, "-o", str(tmp_path / "plain.png"), "--strips", "4", "--quiet",
                    env={"COORDINATOR_WORKERS": ",".join(local_fleet)})  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "tls.png")), np.asarray(Image.open(tmp_path / "plain.png")))
    listed = run_cli("workers", "--workers-file", path)
    assert listed.returncode == 0 and listed.stdout.count(" ok") >= 2, listed.stdout + listed.stderr


@pytest.fixture(scope="module")
def bad_tls_workers(worker_factory, pki, python_worker, nodejs_worker):
    """case -> URL of a worker that must be refused (the expired one cannot pass a verified wait)."""
    wrong_name = worker_factory("nodejs", worker_tls_env(pki.wrong_name), tls=TlsClient(pki.ca, "other.example"))
    expired = worker_factory("python", worker_tls_env(pki.expired), wait=False)
    wait_port("127.0.0.1", int(expired.url.rsplit(":", 1)[1]), expired.proc, timeout=30)
    return {
        "wrong_name": wrong_name.url,
        "expired": expired.url.replace("http://", "https://"),  # started without a verified wait
        "plain_http_python": python_worker.url.replace("http://", "https://"),
        "plain_http_nodejs": nodejs_worker.url.replace("http://", "https://"),
    }


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_name", "expired", "plain_http_python", "plain_http_nodejs"])
def test_a_bad_tls_worker_is_refused_with_one_line(pki, tls_fleet, bad_tls_workers, tmp_path, case):
    url = tls_fleet["python"].url if case == "wrong_ca" else bad_tls_workers[case]
    env = tls_cli_env(pki, [url], ca=pki.other_ca if case == "wrong_ca" else None)
    done = run_cli("process", photo(tmp_path), "-o", str(tmp_path / "out.png"), "--plan", "invert", env=env)
    assert_one_error_line(done, 3, REFUSED[case])
    assert not (tmp_path / "out.png").exists()


@pytest.fixture(scope="module")
def mutual_worker(worker_factory, pki):
    client = TlsClient(pki.ca, cert=pki.client)
    return worker_factory("nodejs", worker_tls_env(pki.server, client_ca=pki.ca), tls=client)


def test_mutual_tls_works_with_the_client_certificate_and_not_without(pki, mutual_worker, tmp_path):
    source = photo(tmp_path)
    client = {"COORDINATOR_TLS_CLIENT_CERT": str(pki.client[0]), "COORDINATOR_TLS_CLIENT_KEY": str(pki.client[1])}
    done = run_cli(
        "process", source, "-o", str(tmp_path / "out.png"), env=tls_cli_env(pki, [mutual_worker.url], **client)
    )
    assert done.returncode == 0, done.stderr
    refused = run_cli("process", source, "-o", str(tmp_path / "no.png"), env=tls_cli_env(pki, [mutual_worker.url]))
    assert_one_error_line(refused, 3, REFUSED["no_client_cert"])


# ---------------------------------------------------------------- token rotation mid-batch


def open_fifo_writer(path, proc: subprocess.Popen, timeout: float = 60) -> int:
    """The FIFO's write end, once the CLI has opened it for reading (that is, reached that input)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
    raise AssertionError(f"the CLI never opened {path}")


def token_fleet(worker_factory, folder) -> TlsFleet:
    """Both runtimes on TLS taking the fleet token from a WORKER_TOKEN_FILE, and an outputs file for them."""
    fleet = TlsFleet(worker_factory, folder)
    for runtime in RUNTIMES:
        fleet.start(runtime)
    return fleet


def test_a_token_rotated_mid_batch_fails_no_job(worker_factory, tmp_path):
    """The workers and the outputs file switch from T1 to T2 while a --jobs 2 batch is held at
    two FIFO inputs; the jobs after that still carry T1, get 401, re-read the outputs file and
    go on with T2: 0 failed."""
    fleet = token_fleet(worker_factory, tmp_path / "fleet")
    fifos = [tmp_path / "held0.png", tmp_path / "held1.png"]
    for fifo in fifos:
        os.mkfifo(fifo)
    inputs = [photo(tmp_path, f"in{i}.png", seed=i) for i in range(2)] + [str(fifo) for fifo in fifos]
    inputs += [photo(tmp_path, f"in{i}.png", seed=i) for i in range(4, 10)]
    command = [sys.executable, "-m", "coordinator", "process", *inputs, "-o", f"{tmp_path / 'out'}/", "--jobs", "2"]
    env = clean_env({"COORDINATOR_WORKERS_FILE": str(fleet.outputs)})
    with subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            writers = [open_fifo_writer(fifo, proc) for fifo in fifos]  # both jobs wait at their FIFO
            fleet.rotate(fleet.workers)
            for writer in writers:
                os.set_blocking(writer, True)
                os.write(writer, (tmp_path / "in0.png").read_bytes())
                os.close(writer)
            _, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "10 inputs: 10 written, 0 failed" in stderr
    assert len(list((tmp_path / "out").iterdir())) == len(inputs)


def test_the_page_picks_up_a_rotated_token_without_restart(worker_factory, tmp_path, monkeypatch):
    """One page session processes before and after a rotation (each run reads the config)."""
    fleet = token_fleet(worker_factory, tmp_path / "fleet")
    monkeypatch.setenv("COORDINATOR_WORKERS_FILE", str(fleet.outputs))
    for name in ("COORDINATOR_WORKERS", "COORDINATOR_PULUMI_STACK", "COORDINATOR_WORKER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    page = upload(AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run(), "colour.png", colourful_png())
    before = processed(page)
    fleet.rotate(fleet.workers)  # the page's process keeps running
    after = processed(page)
    assert after is not before and np.array_equal(after.pixels, before.pixels)


def processed(page):
    process(page)
    assert not page.error, texts(page.error)
    result = page.session_state["images"]["outcome"]["result"]
    assert result.ops == ["grayscale", "sepia"]
    return result


def test_a_401_with_an_unchanged_token_still_fails_as_before(worker_factory, pki, tmp_path):
    token_file = tmp_path / "worker-token"
    token_file.write_text("the-workers-token-1234\n")
    worker = worker_factory("python", {"WORKER_TOKEN_FILE": str(token_file)})
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"workers": [{"url": worker.url}], "worker_token": "our-stale-token-5678"}))
    done = run_cli("process", photo(tmp_path), "-o", str(tmp_path / "out.png"), "--workers-file", str(path))
    assert_one_error_line(done, 3, f"token rejected by {worker.url}")


def test_a_401_loop_re_reads_the_token_once_per_request_and_ends(worker_factory, tmp_path):
    """A worker that refuses every token while the outputs file changes all the time (each re-read
    finds a new wrong token): each request is retried once with the token read again, never more,
    and the job ends with the one-line 401 error."""
    token_file = tmp_path / "worker-token"
    token_file.write_text("the-workers-token-1234\n")
    worker = worker_factory("python", {"WORKER_TOKEN_FILE": str(token_file)})
    path = tmp_path / "outputs.json"
    stop = threading.Event()

    def churn() -> None:
        for n in range(100_000):
            temp = tmp_path / "outputs.json.new"
            temp.write_text(json.dumps({"workers": [{"url": worker.url}], "worker_token": f"wrong-token-{n:06d}"}))
            os.replace(temp, path)
            if stop.wait(0.001):  # faster than a request: every re-read finds a new token
                return

    churn_thread = threading.Thread(target=churn, daemon=True)
    churn_thread.start()
    try:
        done = run_cli("process", photo(tmp_path), "-o", str(tmp_path / "out.png"), "--workers-file", str(path))
    finally:
        stop.set()
        churn_thread.join(timeout=10)
    assert_one_error_line(done, 3, f"token rejected by {worker.url}")
    refused = [e["request_id"] for e in worker.log_entries() if e.get("path") == "/process" and e.get("status") == 401]
    assert refused, "no request reached the worker"
    assert max(refused.count(request_id) for request_id in refused) <= 2, refused


def test_a_401_with_the_outputs_read_from_a_fifo_ends_without_reading_it_again(worker_factory, tmp_path):
    """`--workers-file` a named pipe, written once: on a 401 there is nothing to re-read (opening
    it again would wait for a writer that never comes, with every strip behind it)."""
    token_file = tmp_path / "worker-token"
    token_file.write_text("the-workers-token-1234\n")
    worker = worker_factory("python", {"WORKER_TOKEN_FILE": str(token_file)})
    fifo = tmp_path / "outputs.fifo"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "coordinator", "process", photo(tmp_path), "-o", str(tmp_path / "out.png")]
    with subprocess.Popen(
        [*command, "--workers-file", str(fifo)], cwd=ROOT, env=clean_env(), stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            writer = open_fifo_writer(fifo, proc)
            os.set_blocking(writer, True)
            outputs = {"workers": [{"url": worker.url}], "worker_token": "stale-token-5678"}
            os.write(writer, json.dumps(outputs).encode())
            os.close(writer)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 3, stderr
    assert f"token rejected by {worker.url}" in stderr and "Traceback" not in stderr
