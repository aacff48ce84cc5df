"""Every HTTP(S) probe the fleet tool makes to a worker ends within its total deadline (connect,
TLS handshake, request and the whole reply; scripts/fleet/probe.py), against a real server on
loopback that drips: a valid status line, then one byte a second for as long as the client
stays (plain and TLS), or a TLS handshake record a byte a second. Per-read timeouts never fire
on such a server: before probe.py the token probe had only those, so `rotate-token` hung on it
(its wait never reached --timeout). /healthz was bounded by a thread left behind, and the TLS
handshake by CPython, which bounds a whole handshake by the socket timeout; both now share the
one deadline and its one-line reason.

The subprocess timeouts and pytest-timeout are hang guards only, well above the deadlines.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import ssl

import pytest

from scripts.fleet import probe, tokens
from scripts.fleet.errors import ROLLED_BACK, WAIT_TIMEOUT
from scripts.fleet.health import check_health
from scripts.fleet.tls import Pinning, sha256
from scripts.testkit.socket_server import ThreadedSocketServer
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from tests.support.fleet_cli import assert_one_error_line, run_fleet
from tests.support.moto_server import REGION, aws_env, run_tagged_instance

PROJECT, STACK = "hdtp", "probe-deadline-test"
PREFIX = f"/{PROJECT}/{STACK}"
TOKEN = "CurrentToken0123456789abcdefghijklmnopqr"
fleet = functools.partial(run_fleet, timeout=60)  # a hang guard: every command here ends in ~15 s
DRIP_SECONDS = 120  # the server drips this long at most (far past every hang guard)


class DripServer(ThreadedSocketServer):
    """Loopback server that stalls its client while never staying silent for a second.

    mode "reply": reads the request, answers `HTTP/1.1 200 OK\\r\\n`, then one header byte a
    second. mode "handshake": answers the ClientHello with a TLS record header announcing 16 KB,
    then one byte of it a second. With `server` (a KeyPair) "reply" speaks TLS. The first
    `honest` requests get a worker's token answer instead (415 for TOKEN, else 401)."""

    thread_name = "drip"

    def __init__(self, tmp_path, mode: str = "reply", server=None, honest: int = 0):
        self.mode, self.honest, self.dripped = mode, honest, 0
        self.context = None
        if server is not None:
            cert, key = server.write(tmp_path, "drip")
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(cert, key)
        self._serve()
        if self.context is not None or mode == "handshake":
            self.url = self.url.replace("http://", "https://")

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            if self.mode == "handshake":
                client.recv(4096)  # the ClientHello
                self._drip(client, b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KB, never complete
                return
            if self.context is not None:
                client = self.context.wrap_socket(client, server_side=True)
            head = self._received_head(client)
            if self.honest > 0:
                self.honest -= 1
                self._token_answer(client, head)
                return
            self._drip(client, b"HTTP/1.1 200 OK\r\n")
        except OSError:
            pass
        finally:
            client.close()

    @staticmethod
    def _token_answer(client, head: bytes) -> None:
        accepted = f"Bearer {TOKEN}".encode() in head
        status, code = (
            ("415 Unsupported Media Type", "unsupported_media_type")
            if accepted
            else ("401 Unauthorized", "unauthorized")
        )
        body = json.dumps({"error": {"code": code, "message": code}}).encode()
        header = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        client.sendall(header.encode() + b"Connection: close\r\n\r\n" + body)

    def _drip(self, client, first: bytes) -> None:
        client.sendall(first)
        for _ in range(DRIP_SECONDS):
            if self._stopping.wait(1):
                return
            client.sendall(b"X")
            self.dripped += 1


@pytest.fixture(scope="module")
def authority():
    return Authority()


def pinning(authority) -> Pinning:
    return Pinning(authority.cert_pem.decode(), FLEET_TLS_NAME)


def _drip(tmp_path, authority, scheme: str, **kwargs) -> DripServer:
    return DripServer(tmp_path, server=authority.issue() if scheme == "https" else None, **kwargs)


# --- each probe, called directly ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_token_probe_ends_at_its_deadline_on_a_dripping_reply(scheme, authority, tmp_path):
    with _drip(tmp_path, authority, scheme) as drip:
        got = tokens.verdict(drip.url, TOKEN, pinning(authority) if scheme == "https" else None, deadline=2)
    assert got == "no complete answer within 2s"
    assert drip.dripped >= 1  # it was dripping, not silent (a per-read timeout would not fire)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_health_probe_ends_at_its_deadline_on_a_dripping_reply(scheme, authority, tmp_path):
    with _drip(tmp_path, authority, scheme) as drip:
        health = check_health(drip.url, timeout=2, tls=pinning(authority) if scheme == "https" else None)
    assert health.error == "no complete answer within 3s" and health.problem("python") == f"/healthz {health.error}"


@pytest.mark.timeout(60)
def test_the_certificate_probe_ends_at_its_deadline_on_a_dripping_handshake(authority, tmp_path):
    with DripServer(tmp_path, mode="handshake") as drip, pytest.raises(probe.ProbeError) as failed:
        probe.peer_certificate(drip.url, pinning(authority), total=2)
    assert failed.value.why == "no TLS handshake within 2s"
    assert drip.dripped >= 1


@pytest.mark.timeout(60)
def test_the_certificate_probe_still_reads_a_worker_certificate(authority, tmp_path):
    server = authority.issue()
    with DripServer(tmp_path, server=server) as drip:  # the handshake completes; the reply would drip
        der = probe.peer_certificate(drip.url, pinning(authority), total=5)
    assert sha256(der) == sha256(ssl.PEM_cert_to_DER_cert(server.cert_pem.decode()))


# --- the commands, as a user runs them ----------------------------------------------------------


@pytest.fixture
def ssm(moto):
    moto.reset()
    client = moto.client("ssm")
    client.put_parameter(Name=f"{PREFIX}/worker-token", Value=TOKEN, Type="SecureString")
    return client


def write_outputs(path, url: str, authority=None, instance_id: str = ""):
    worker = {"name": "worker-0", "role": "worker-python", "url": url, "public_ip": "127.0.0.1"}
    data = {
        "workers": [{**worker, "instance_id": instance_id} if instance_id else worker],
        "worker_token": TOKEN,
        "project": PROJECT,
        "stack": STACK,
        "region": REGION,
    }
    if authority is not None:
        data.update(worker_ca_pem=authority.cert_pem.decode(), worker_tls_name=FLEET_TLS_NAME)
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_rotate_token_rolls_back_when_a_worker_drips_after_the_first_check(scheme, moto, ssm, authority, tmp_path):
    """The worker answers the start check (current token accepted, a random one refused), then
    drips: the wait for 'both tokens accepted' caps each probe at the time it has left (here
    --timeout 1, so at most 1 s, not the probe's own 5 s) and the rotation is rolled back (exit 4,
    parameter restored, file unchanged)."""
    with _drip(tmp_path, authority, scheme, honest=2) as drip:
        outputs = write_outputs(tmp_path / "out.json", drip.url, authority if scheme == "https" else None)
        before = outputs.read_bytes()
        result = fleet(
            "rotate-token", "--outputs", str(outputs), "--trigger", "timer", "--interval", "0.3", "--grace", "0",
            "--timeout", "1", env=aws_env(moto.url),
        )  # fmt: skip
    line = assert_one_error_line(result, ROLLED_BACK, "worker-0: new token: no complete answer within ")
    capped = re.search(r"no complete answer within ([\d.]+)s, not accepted", line)
    assert capped and 0.5 <= float(capped[1]) <= 1, line
    assert "rolled back: " in line and "restored, outputs file unchanged" in line
    assert ssm.get_parameter(Name=f"{PREFIX}/worker-token", WithDecryption=True)["Parameter"]["Value"] == TOKEN
    assert outputs.read_bytes() == before


def test_refresh_secrets_ends_at_its_timeout_when_a_worker_drips_its_handshake(moto, ssm, authority, tmp_path):
    server = authority.issue()
    ssm.put_parameter(Name=f"{PREFIX}/worker-tls-cert", Value=server.cert_pem.decode(), Type="String")
    with DripServer(tmp_path, mode="handshake") as drip:
        outputs = write_outputs(tmp_path / "out.json", drip.url, authority)
        result = fleet(
            "refresh-secrets", "--outputs", str(outputs), "--trigger", "timer", "--interval", "0.3", "--timeout", "1",
            env=aws_env(moto.url),
        )  # fmt: skip
    assert_one_error_line(result, WAIT_TIMEOUT, "worker-0: error: no TLS handshake within 5s")


def test_status_shows_a_tls_worker_that_drips_its_reply_as_one_line(moto, authority, tmp_path):
    moto.reset()
    instance = run_tagged_instance(moto.ec2(), "worker-0", "worker-python", PROJECT, STACK)
    with _drip(tmp_path, authority, "https") as drip:
        outputs = write_outputs(tmp_path / "out.json", drip.url, authority, instance)
        result = fleet("status", "--json", "--outputs", str(outputs), env=aws_env(moto.url))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["health"]["error"] == "no complete answer within 4s" and row["ready"] is False
