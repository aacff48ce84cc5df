"""TLS and the token file (issue 16), the same cases against both real worker processes.

The contract (tests/contract/README.md, "TLS and token file"): WORKER_TLS_CERT/WORKER_TLS_KEY
serve HTTPS only, WORKER_TLS_CLIENT_CA asks for a client certificate, WORKER_TOKEN_FILE holds
one or two tokens; all four files are re-read on change without dropping connections. Test ids
carry the runtime name (`-k python`, `-k nodejs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from scripts.testkit.images import solid_png
from scripts.testkit.procs import RUNTIMES, TlsClient, http_session, start_worker
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from tests.support.contract import validate

IMAGE = solid_png(8, 8, (10, 120, 240))
RELOAD_SECONDS = 15  # the workers check once a second; generous for a loaded machine
CUT_OFF_SECONDS = 15  # the 5 s header/handshake bound, plus slack
TIMEOUT = 30
RELOAD_FAILED = "secrets reload failed"
SECRET_FILE_LIMIT = 1024 * 1024  # bytes: a bigger token, certificate or key file is refused unread


# ---------------------------------------------------------------- helpers


@dataclass
class Pki:
    """A fleet CA and the worker's server certificate, as files."""

    ca: Authority
    ca_file: Path
    cert: Path
    key: Path

    def env(self) -> dict:
        return {"WORKER_TLS_CERT": str(self.cert), "WORKER_TLS_KEY": str(self.key)}

    def client(self, cert: tuple[Path, Path] | None = None) -> TlsClient:
        return TlsClient(self.ca_file, FLEET_TLS_NAME, cert)


def make_pki(folder: Path, expired: bool = False) -> Pki:
    ca = Authority()
    cert, key = ca.issue(FLEET_TLS_NAME, expired=expired).write(folder, "server")
    return Pki(ca, ca.write_ca(folder), cert, key)


def replace_file(path: Path, data: bytes) -> None:
    """Write path atomically: a temp file in the same folder, renamed over it."""
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    os.replace(temp, path)


def wait_until(predicate, what: str, timeout: float = RELOAD_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def port_of(worker) -> int:
    return urlsplit(worker.url).port


def verifying_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def tls_connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=FLEET_TLS_NAME)
    except BaseException:
        raw.close()
        raise


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def presented_fingerprint(port: int, context: ssl.SSLContext) -> str:
    """The sha256 of the certificate a new handshake presents."""
    with tls_connect(port, context) as tls:
        return fingerprint(tls.getpeercert(binary_form=True))


def pem_fingerprint(cert_file: Path) -> str:
    return fingerprint(ssl.PEM_cert_to_DER_cert(cert_file.read_text()))


def process(session: requests.Session, worker, token: str | None = None) -> requests.Response:
    headers = {"Content-Type": "image/png"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return session.post(worker.url + "/process", data=IMAGE, headers=headers, timeout=TIMEOUT)


def reload_failures(worker) -> list[dict]:
    return [e for e in worker.log_entries() if str(e.get("msg", "")).startswith(RELOAD_FAILED)]


def wait_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """Read until the peer closes (EOF or reset); the bytes it sent, or None if still open at deadline."""
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            break
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return received
        if not data:
            return received
        received += data
    return None


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One TLS worker per runtime (started on first use) and its PKI, for the cases that change nothing."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    started = {}

    def get(runtime: str):
        if runtime not in started:
            folder = tmp_path_factory.mktemp(f"tls-{runtime}")
            started[runtime] = start_worker(runtime, folder, pki.env(), tls=pki.client())
        return started[runtime]

    yield pki, get
    for worker in started.values():
        worker.stop()


# ---------------------------------------------------------------- serving over TLS


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_health_says_tls_true_over_tls_and_false_on_plain_http(shared, request, runtime):
    _, get = shared
    worker = get(runtime)
    body = worker.session().get(worker.url + "/healthz", timeout=TIMEOUT).json()
    validate(body, "Health")
    assert body["tls"] is True
    plain = request.getfixturevalue(f"{runtime}_worker")
    assert requests.get(plain.url + "/healthz", timeout=TIMEOUT).json()["tls"] is False


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_process_over_tls_with_the_pinned_ca_and_name(shared, runtime):
    _, get = shared
    worker = get(runtime)
    response = worker.session().post(
        worker.url + "/process?op=invert&format=raw", data=IMAGE, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert response.status_code == 200, response.text[:300]
    header = b"P6\n8 8\n255\n"
    assert response.content[: len(header)] == header
    assert response.content[len(header) : len(header) + 3] == bytes([245, 135, 15])


@pytest.mark.parametrize("client", ["another CA", "another name"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_verifying_client_refuses_the_wrong_ca_or_name(shared, tmp_path, runtime, client):
    pki, get = shared
    worker = get(runtime)
    if client == "another CA":
        tls = TlsClient(Authority("someone else's CA").write_ca(tmp_path))
    else:
        tls = TlsClient(pki.ca_file, "other.stripes.internal")
    with pytest.raises(requests.exceptions.SSLError):
        http_session(tls).get(worker.url + "/healthz", timeout=TIMEOUT)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_expired_server_certificate_fails_verification(spawn, tmp_path, runtime):
    pki = make_pki(tmp_path / "pki", expired=True)
    worker = spawn(runtime, pki.env(), wait=False)
    port = port_of(worker)

    def handshakes() -> bool:
        assert worker.proc.poll() is None, worker.log_text()[-2000:]
        try:
            presented_fingerprint(port, unverified_context())
            return True
        except OSError:
            return False

    wait_until(handshakes, "the worker serving TLS", timeout=TIMEOUT)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        presented_fingerprint(port, verifying_context(pki.ca_file))
    with pytest.raises(requests.exceptions.SSLError):
        http_session(pki.client()).get(f"https://127.0.0.1:{port}/healthz", timeout=TIMEOUT)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_plain_http_to_the_tls_port_is_not_served_and_cut_off(shared, runtime):
    _, get = shared
    worker = get(runtime)
    with socket.create_connection(("127.0.0.1", port_of(worker)), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = wait_closed(sock, time.monotonic() + CUT_OFF_SECONDS)
    assert received is not None, f"plain HTTP peer still connected after {CUT_OFF_SECONDS}s"
    assert b" 200 " not in received and b'"status"' not in received, received[:200]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_idle_and_stalled_handshakes_are_cut_off_and_never_delay_health(shared, runtime):
    _, get = shared
    worker = get(runtime)
    port = port_of(worker)
    session = worker.session()
    session.get(worker.url + "/healthz", timeout=TIMEOUT)  # warm: the first probe is not the one measured
    partial_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello that stops early
    peers = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(50)]
    try:
        for sock in peers[:10]:
            sock.sendall(partial_hello)
        seconds = []
        for _ in range(3):  # each probe is a new connection and handshake
            started = time.monotonic()
            response = worker.session().get(worker.url + "/healthz", timeout=TIMEOUT)
            seconds.append(time.monotonic() - started)
            assert response.status_code == 200
        assert max(seconds) < 3.0, f"/healthz over TLS took {seconds} with 50 idle peers"
        deadline = time.monotonic() + CUT_OFF_SECONDS
        still_open = sum(wait_closed(sock, deadline) is None for sock in peers)
        assert still_open == 0, f"{still_open} of 50 idle or stalled peers still connected after {CUT_OFF_SECONDS}s"
    finally:
        for sock in peers:
            sock.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_more_stalled_handshakes_than_the_idle_cap_leave_a_tokened_request_served(spawn, tmp_path, runtime):
    """1100 peers without the token, each stopped inside its ClientHello (worker-python keeps at
    most 1000 idle connections, evicting the oldest; node holds each until its 5 s deadline)."""
    pki = make_pki(tmp_path / "pki")
    worker = spawn(runtime, {**pki.env(), "WORKER_TOKEN": "stall-token-GGGG"}, tls=pki.client())
    partial_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    peers = []
    try:
        for _ in range(1100):
            peers.append(socket.create_connection(("127.0.0.1", port_of(worker)), timeout=TIMEOUT))
            peers[-1].sendall(partial_hello)
        session = worker.session()
        assert session.get(worker.url + "/healthz", timeout=TIMEOUT).status_code == 200
        assert process(session, worker, "stall-token-GGGG").status_code == 200
        assert process(session, worker, "wrong-token").status_code == 401
    finally:
        for sock in peers:
            sock.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_client_hello_over_the_size_bound_is_refused_with_an_alert_at_once(shared, runtime):
    _, get = shared
    worker = get(runtime)
    header = b"\x01\xff\xff\xff"  # a ClientHello declaring 16 MiB (TLS keeps it under 64 KiB)
    record = b"\x16\x03\x01\x40\x00" + header + b"\x03\x03" + bytes(16384 - len(header) - 2)
    with socket.create_connection(("127.0.0.1", port_of(worker)), timeout=TIMEOUT) as sock:
        sock.sendall(record)  # one full record: the server reads the message header, not 16 MiB
        received = wait_closed(sock, time.monotonic() + CUT_OFF_SECONDS)
    assert received is not None, "still connected: the server is waiting for the rest of the message"
    # a fatal alert (not the 5 s handshake deadline's silent close): the size was refused when read
    assert received[:1] == b"\x15" and received[5:6] == b"\x02", received[:20]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (s_client renegotiates)")
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_client_initiated_renegotiation_is_refused(shared, runtime):
    pki, get = shared
    worker = get(runtime)
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port_of(worker)}", "-tls1_2"]
    command += ["-CAfile", str(pki.ca_file), "-servername", FLEET_TLS_NAME]
    client = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    bound = threading.Timer(TIMEOUT, client.kill)  # the read below ends when the connection does, or then
    bound.start()
    try:
        client.stdin.write(b"R\n")  # s_client's command: renegotiate (a new ClientHello on this connection)
        client.stdin.flush()
        time.sleep(1)  # a separate read for the request below, which must not be answered
        with contextlib.suppress(OSError):
            client.stdin.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            client.stdin.flush()
        output = client.stdout.read().decode(errors="replace")  # until the server closes the connection
        client.wait(timeout=TIMEOUT)
    finally:
        bound.cancel()
        client.kill()
        client.wait()
    assert "RENEGOTIATING" in output, output[-1000:]
    assert "HTTP/1.1 200" not in output, "served a request after a renegotiation"


# ---------------------------------------------------------------- mutual TLS


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_mutual_tls_serves_only_a_client_certificate_from_the_client_ca(spawn, tmp_path, runtime):
    pki = make_pki(tmp_path / "pki")
    right = pki.ca.issue("coordinator", client=True).write(tmp_path / "right", "client")
    wrong = Authority("another CA").issue("coordinator", client=True).write(tmp_path / "wrong", "client")
    env = {**pki.env(), "WORKER_TLS_CLIENT_CA": str(pki.ca_file)}
    worker = spawn(runtime, env, tls=pki.client(right))
    assert process(worker.session(), worker).status_code == 200
    for name, cert in (("no client certificate", None), ("a certificate from another CA", wrong)):
        with pytest.raises(requests.exceptions.ConnectionError):
            process(http_session(pki.client(cert)), worker)
            pytest.fail(f"served a client with {name}")


# ---------------------------------------------------------------- token file


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_token_file_accepts_either_listed_token_and_refuses_others(spawn, tmp_path, runtime):
    tokens = tmp_path / "worker-token"
    tokens.write_text("  current-TOKEN-1111  \n\nnext-TOKEN-2222\n")
    worker = spawn(runtime, {"WORKER_TOKEN_FILE": str(tokens)})
    session = worker.session()
    assert process(session, worker, "current-TOKEN-1111").status_code == 200
    assert process(session, worker, "next-TOKEN-2222").status_code == 200
    for token in ("third-TOKEN-3333", None):
        response = process(session, worker, token)
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    log = worker.log_text()
    assert "TOKEN-1111" not in log and "TOKEN-2222" not in log


class Hammer:
    """A bounded loop of /process requests with one token on a thread, recording every status."""

    def __init__(self, worker, token: str, limit: int = 400):
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(worker, token, limit), daemon=True)
        self._thread.start()

    def _run(self, worker, token: str, limit: int) -> None:
        session = worker.session()
        while not self._stop.is_set() and len(self.statuses) < limit:
            try:
                self.statuses.append(process(session, worker, token).status_code)
            except requests.RequestException as exc:
                self.statuses.append(type(exc).__name__)

    def stop(self) -> list[int | str]:
        self._stop.set()
        self._thread.join(timeout=TIMEOUT)
        return self.statuses


def accepted(worker, token: str) -> bool:
    return process(worker.session(), worker, token).status_code == 200


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_token_rotation_by_rewriting_the_file_fails_no_request(spawn, tmp_path, runtime):
    tokens = tmp_path / "worker-token"
    tokens.write_text("old-token-AAAA\n")
    worker = spawn(runtime, {"WORKER_TOKEN_FILE": str(tokens)})
    assert not accepted(worker, "new-token-BBBB")
    old_load = Hammer(worker, "old-token-AAAA")
    replace_file(tokens, b"old-token-AAAA\nnew-token-BBBB\n")
    wait_until(lambda: accepted(worker, "new-token-BBBB"), "the next token accepted")
    statuses = old_load.stop()
    assert statuses and set(statuses) == {200}, f"requests with the current token failed: {statuses}"
    new_load = Hammer(worker, "new-token-BBBB")
    replace_file(tokens, b"new-token-BBBB\n")
    wait_until(lambda: not accepted(worker, "old-token-AAAA"), "the old token retired")
    statuses = new_load.stop()
    assert statuses and set(statuses) == {200}, f"requests with the next token failed: {statuses}"
    assert process(worker.session(), worker, "old-token-AAAA").status_code == 401


# ---------------------------------------------------------------- certificate swap and broken reloads


def keepalive_connection(worker, pki: Pki) -> http.client.HTTPSConnection:
    """An open HTTPS keep-alive connection verified by the pinned CA and name."""
    port = port_of(worker)
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT)
    connection.sock = tls_connect(port, verifying_context(pki.ca_file))
    return connection


def health_on(connection: http.client.HTTPSConnection) -> int:
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    return response.status


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cert_swap_reaches_new_handshakes_while_an_open_connection_keeps_working(spawn, tmp_path, runtime):
    pki = make_pki(tmp_path / "pki")
    worker = spawn(runtime, pki.env(), tls=pki.client())
    port, context = port_of(worker), verifying_context(pki.ca_file)
    kept = keepalive_connection(worker, pki)
    kept_sock = kept.sock
    assert health_on(kept) == 200
    old = fingerprint(kept_sock.getpeercert(binary_form=True))
    assert old == pem_fingerprint(pki.cert)
    fresh = pki.ca.issue(FLEET_TLS_NAME)
    replace_file(pki.key, fresh.key_pem)
    replace_file(pki.cert, fresh.cert_pem)
    new = pem_fingerprint(pki.cert)

    def swapped() -> bool:
        assert health_on(kept) == 200  # the open connection answers throughout (and stays within its idle bound)
        return presented_fingerprint(port, context) == new

    wait_until(swapped, "new handshakes presenting the new certificate")
    assert health_on(kept) == 200 and kept.sock is kept_sock
    assert fingerprint(kept.sock.getpeercert(binary_form=True)) == old
    kept.close()
    assert process(worker.session(), worker).status_code == 200
    assert any(str(e.get("msg", "")).startswith("secrets reloaded") for e in worker.log_entries())


BROKEN_RELOADS = [
    "empty token file",
    "token file removed",
    "token file over 1 MiB",
    "garbage certificate",
    "key of another certificate",
]


@pytest.mark.parametrize("broken", BROKEN_RELOADS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_broken_reload_keeps_the_previous_secrets_and_logs_one_error(spawn, tmp_path, runtime, broken):
    pki = make_pki(tmp_path / "pki")
    tokens = tmp_path / "worker-token"
    tokens.write_text("kept-token-CCCC\n")
    worker = spawn(runtime, {**pki.env(), "WORKER_TOKEN_FILE": str(tokens)}, tls=pki.client())
    port, context = port_of(worker), verifying_context(pki.ca_file)
    old = presented_fingerprint(port, context)
    if broken == "empty token file":
        replace_file(tokens, b"\n")
    elif broken == "token file removed":
        tokens.unlink()
    elif broken == "token file over 1 MiB":
        replace_file(tokens, b"other-token-FFFF\n" + b"\n" * SECRET_FILE_LIMIT)
    elif broken == "garbage certificate":
        replace_file(pki.cert, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    else:
        replace_file(pki.key, pki.ca.issue(FLEET_TLS_NAME).key_pem)
    wait_until(lambda: reload_failures(worker), f"an error line '{RELOAD_FAILED}...'")
    failure = reload_failures(worker)[0]
    assert failure.get("level") == "error" and "keeping the previous" in failure["msg"], failure
    assert presented_fingerprint(port, context) == old
    assert process(worker.session(), worker, "kept-token-CCCC").status_code == 200
    log = worker.log_text()
    assert "kept-token-CCCC" not in log and "PRIVATE KEY" not in log


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_token_file_that_is_a_symlink_is_reread_when_the_link_is_retargeted(spawn, tmp_path, runtime):
    """The secret-volume pattern: the path is a link, swapped atomically to a new file (the
    link's own mtime never matters; the target's inode changes)."""
    for name, token in (("first", "first-token-HHHH"), ("second", "second-token-IIII")):
        (tmp_path / name).write_text(token + "\n")
    tokens = tmp_path / "worker-token"
    tokens.symlink_to(tmp_path / "first")
    worker = spawn(runtime, {"WORKER_TOKEN_FILE": str(tokens)})
    assert accepted(worker, "first-token-HHHH") and not accepted(worker, "second-token-IIII")
    (tmp_path / "next-link").symlink_to(tmp_path / "second")
    os.replace(tmp_path / "next-link", tokens)
    wait_until(lambda: accepted(worker, "second-token-IIII"), "the retargeted link's token accepted")
    assert not accepted(worker, "first-token-HHHH")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_token_file_swapped_for_a_fifo_stalls_neither_serving_nor_the_next_reload(spawn, tmp_path, runtime):
    tokens = tmp_path / "worker-token"
    tokens.write_text("kept-token-DDDD\n")
    worker = spawn(runtime, {"WORKER_TOKEN_FILE": str(tokens)})
    fifo = tmp_path / "worker-token.fifo"
    os.mkfifo(fifo)  # no writer ever opens it: a plain open() for reading would wait forever
    os.replace(fifo, tokens)
    wait_until(lambda: reload_failures(worker), f"an error line '{RELOAD_FAILED}...' for the FIFO")
    assert process(worker.session(), worker, "kept-token-DDDD").status_code == 200
    replace_file(tokens, b"next-token-EEEE\n")
    wait_until(lambda: accepted(worker, "next-token-EEEE"), "the regular file that replaced the FIFO read")
    assert len(reload_failures(worker)) == 1


# ---------------------------------------------------------------- start-up checks


def bad_config(case: str, folder: Path) -> tuple[dict, str]:
    """(environment, the variable the one error line must name) for one bad start configuration."""
    pki = make_pki(folder / "pki")
    three = folder / "three-tokens"
    three.write_text("token-one-1111\ntoken-two-2222\ntoken-three-3333\n")
    empty = folder / "empty-tokens"
    empty.write_text("\n  \n")
    garbage = folder / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    other_key = pki.ca.issue(FLEET_TLS_NAME).write(folder / "other", "server")[1]
    fifo = folder / "token-fifo"
    os.mkfifo(fifo)  # no writer ever opens it: a plain read would wait forever
    huge_tokens = folder / "huge-tokens"
    huge_tokens.write_bytes(b"token-one-1111\n" + b"\n" * SECRET_FILE_LIMIT)  # one valid token, over the bound
    huge_cert = folder / "huge.crt"
    huge_cert.write_bytes(pki.cert.read_bytes() + b"\n" * SECRET_FILE_LIMIT)
    encrypted_key = folder / "encrypted.key"  # the server key under a passphrase: no prompt, a refusal
    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    encrypted_key.write_bytes(key.private_bytes(pem, pkcs8, serialization.BestAvailableEncryption(b"a passphrase")))
    binary = folder / "binary-tokens"
    binary.write_bytes(b"token-one\x00-1111\n\xff\xfe\n")
    cases = {
        "cert without key": ({"WORKER_TLS_CERT": str(pki.cert)}, "WORKER_TLS_KEY"),
        "key without cert": ({"WORKER_TLS_KEY": str(pki.key)}, "WORKER_TLS_CERT"),
        "client CA without TLS": ({"WORKER_TLS_CLIENT_CA": str(pki.ca_file)}, "WORKER_TLS_CLIENT_CA"),
        "token and token file": ({"WORKER_TOKEN": "x-token", "WORKER_TOKEN_FILE": str(three)}, "WORKER_TOKEN_FILE"),
        "three tokens": ({"WORKER_TOKEN_FILE": str(three)}, "WORKER_TOKEN_FILE"),
        "empty token file": ({"WORKER_TOKEN_FILE": str(empty)}, "WORKER_TOKEN_FILE"),
        "missing token file": ({"WORKER_TOKEN_FILE": str(folder / "absent")}, "WORKER_TOKEN_FILE"),
        "unreadable cert": ({**pki.env(), "WORKER_TLS_CERT": str(folder / "absent.crt")}, "WORKER_TLS_CERT"),
        "cert is a folder": ({**pki.env(), "WORKER_TLS_CERT": str(folder)}, "WORKER_TLS_CERT"),
        "garbage cert": ({**pki.env(), "WORKER_TLS_CERT": str(garbage)}, "WORKER_TLS_CERT"),
        "key of another cert": ({**pki.env(), "WORKER_TLS_KEY": str(other_key)}, "WORKER_TLS_KEY"),
        "garbage client CA": ({**pki.env(), "WORKER_TLS_CLIENT_CA": str(garbage)}, "WORKER_TLS_CLIENT_CA"),
        "token file is a FIFO": ({"WORKER_TOKEN_FILE": str(fifo)}, "WORKER_TOKEN_FILE"),
        "token file is a device": ({"WORKER_TOKEN_FILE": "/dev/zero"}, "WORKER_TOKEN_FILE"),
        "token file over 1 MiB": ({"WORKER_TOKEN_FILE": str(huge_tokens)}, "WORKER_TOKEN_FILE"),
        "binary token file": ({"WORKER_TOKEN_FILE": str(binary)}, "WORKER_TOKEN_FILE"),
        "cert over 1 MiB": ({**pki.env(), "WORKER_TLS_CERT": str(huge_cert)}, "WORKER_TLS_CERT"),
        "key is a FIFO": ({**pki.env(), "WORKER_TLS_KEY": str(fifo)}, "WORKER_TLS_KEY"),
        "encrypted key": ({**pki.env(), "WORKER_TLS_KEY": str(encrypted_key)}, "WORKER_TLS_KEY"),
    }
    return cases[case]


BAD_CONFIGS = [
    "cert without key",
    "key without cert",
    "client CA without TLS",
    "token and token file",
    "three tokens",
    "empty token file",
    "missing token file",
    "unreadable cert",
    "cert is a folder",
    "garbage cert",
    "key of another cert",
    "garbage client CA",
    "token file is a FIFO",
    "token file is a device",
    "token file over 1 MiB",
    "binary token file",
    "cert over 1 MiB",
    "key is a FIFO",
    "encrypted key",
]


@pytest.mark.parametrize("case", BAD_CONFIGS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_bad_tls_or_token_config_stops_start_up_with_one_line_and_exit_2(tmp_path, runtime, case):
    env, variable = bad_config(case, tmp_path)
    worker = start_worker(runtime, tmp_path / "worker", env, wait=False)
    try:
        code = worker.proc.wait(timeout=TIMEOUT)
    finally:
        worker.stop()
    text = worker.log_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2, text[-500:]
    assert len(lines) == 1 and variable in lines[0], f"want one line naming {variable}, got: {lines}"
    for secret in ("x-token", "token-one-1111", "token-two-2222", "token-three-3333", "PRIVATE KEY"):
        assert secret not in text, f"the error line shows a secret: {lines}"
