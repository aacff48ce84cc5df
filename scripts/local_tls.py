"""The cloud's security setup on one machine (`make run TLS=1`): a local fleet CA, a server
certificate for FLEET_TLS_NAME, a bearer token file and, for mutual TLS, a client certificate,
all in one private folder (0700, key and token files 0600, each written atomically).

Made once and reused by later starts; a piece that is missing, unreadable, not signed by the
CA, or expired (or within RENEW_BEFORE of it) is made again, and a new CA re-issues every leaf.
ECDSA P-256, like the fleet's CA. The certificate primitives (new_key, make_ca, issue) are
shared with scripts/testkit/tls.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stripes.roles import FLEET_TLS_NAME

CA_NAME = "stripes local fleet CA"
CLIENT_NAME = "coordinator.stripes.internal"  # the name on the client certificate (mutual TLS)
CA_DAYS, LEAF_DAYS = 365, 90
RENEW_BEFORE = dt.timedelta(days=1)  # a certificate closer than this to its end is made again
BACKDATE = dt.timedelta(minutes=5)  # tolerates a little clock skew between the processes
TOKEN_BYTES = 20  # 40 hex characters, as long as a fleet token


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def validity(days: int, expired: bool = False) -> tuple[dt.datetime, dt.datetime]:
    """(not before, not after): `days` from now, or a window that ended yesterday."""
    now = dt.datetime.now(dt.UTC)
    if expired:
        return now - dt.timedelta(days=days + 1), now - dt.timedelta(days=1)
    return now - BACKDATE, now + dt.timedelta(days=days)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ca(key: ec.EllipticCurvePrivateKey, common_name: str, window: tuple[dt.datetime, dt.datetime]):
    """A self-signed CA certificate that may sign leaves only (path length 0)."""
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # cert + CRL sign
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0])
        .not_valid_after(window[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )


def issue(ca_cert, ca_key, name: str, window, *, client: bool = False):
    """(certificate, key) of a leaf for DNS name (or IP literal) `name`, server or client."""
    key = new_key()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0])
        .not_valid_after(window[1])
        .add_extension(x509.SubjectAlternativeName([_san(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` atomically (temp file in the same folder, fsync, rename) with `mode` from
    the first byte on: a reader sees the old or the new content, never a part or a wider mode."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # the umask may have narrowed it; never widened past `mode`
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class LocalTls:
    """Where the local material is, and what the workers and the coordinator are given."""

    folder: Path
    mutual: bool = False

    ca_cert = property(lambda self: self.folder / "ca.crt")
    ca_key = property(lambda self: self.folder / "ca.key")
    server_cert = property(lambda self: self.folder / "server.crt")
    server_key = property(lambda self: self.folder / "server.key")
    client_cert = property(lambda self: self.folder / "client.crt")
    client_key = property(lambda self: self.folder / "client.key")
    token_file = property(lambda self: self.folder / "worker-token")

    def worker_env(self) -> dict[str, str]:
        """WORKER_* for a worker that serves this material (as the fleet's env file does)."""
        env = {
            "WORKER_TLS_CERT": str(self.server_cert),
            "WORKER_TLS_KEY": str(self.server_key),
            "WORKER_TOKEN_FILE": str(self.token_file),
        }
        if self.mutual:
            env["WORKER_TLS_CLIENT_CA"] = str(self.ca_cert)
        return env

    def outputs(self) -> dict[str, str]:
        """The TLS keys of a stack outputs file (coordinator/tls.py reads them)."""
        keys = {
            "worker_ca_pem": self.ca_cert.read_text(),
            "worker_tls_name": FLEET_TLS_NAME,
            "worker_token": self.token_file.read_text().strip(),
        }
        if self.mutual:
            keys["worker_client_cert_pem"] = self.client_cert.read_text()
            keys["worker_client_key_pem"] = self.client_key.read_text()
        return keys

    def client_context(self):
        """An SSLContext that trusts only the local CA and checks FLEET_TLS_NAME (and shows the
        client certificate with mutual TLS); wrap with server_hostname=FLEET_TLS_NAME."""
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if self.mutual:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def ensure(folder: Path, mutual: bool = False) -> tuple[LocalTls, list[str]]:
    """The material in `folder`, made where missing or stale; returns it and what was made."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    tls, made = LocalTls(folder, mutual), []
    for private in (tls.ca_key, tls.server_key, tls.client_key, tls.token_file):
        if private.exists():
            os.chmod(private, 0o600)  # a copy restored with a wider mode is narrowed again
    ca = _load_pair(tls.ca_cert, tls.ca_key)
    if ca is None or not _current(ca[0]):
        key = new_key()
        ca = make_ca(key, CA_NAME, validity(CA_DAYS)), key
        _write_pair(ca, tls.ca_cert, tls.ca_key)
        made.append("CA")
    leaves = [("server certificate", FLEET_TLS_NAME, False, tls.server_cert, tls.server_key)]
    if mutual:
        leaves.append(("client certificate", CLIENT_NAME, True, tls.client_cert, tls.client_key))
    for label, name, client, cert_path, key_path in leaves:
        if not _leaf_ok(_load_pair(cert_path, key_path), ca[0], name):
            _write_pair(issue(*ca, name, validity(LEAF_DAYS), client=client), cert_path, key_path)
            made.append(label)
    if not _token_ok(tls.token_file):
        write_private(tls.token_file, (secrets.token_hex(TOKEN_BYTES) + "\n").encode())
        made.append("token")
    return tls, made


def _write_pair(pair, cert_path: Path, key_path: Path) -> None:
    write_private(key_path, key_pem(pair[1]))
    write_private(cert_path, cert_pem(pair[0]), 0o644)


def _load_pair(cert_path: Path, key_path: Path):
    """(certificate, key) if both load and belong together, else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return (cert, key) if cert.public_key() == key.public_key() else None


def _current(cert: x509.Certificate) -> bool:
    now = dt.datetime.now(dt.UTC)
    return cert.not_valid_before_utc <= now and now + RENEW_BEFORE < cert.not_valid_after_utc


def _leaf_ok(pair, ca_cert: x509.Certificate, name: str) -> bool:
    """A current leaf for `name` that this CA signed."""
    if pair is None or not _current(pair[0]):
        return False
    try:
        pair[0].verify_directly_issued_by(ca_cert)
        names = pair[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return name in names.get_values_for_type(x509.DNSName)


def _token_ok(path: Path) -> bool:
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return len(token) >= 16 and token.isalnum() and "\n" not in token
