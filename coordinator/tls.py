"""TLS to the workers: the fleet CA pinned (and nothing else trusted), the fleet's one DNS name
verified on every connection while the TCP connect goes to the URL's address, an optional
client certificate (mutual TLS). Settings come from the stack outputs or COORDINATOR_TLS_*
(config.py asks `read_settings`), are checked once, and each distinct set gets one SSLContext.
An ssl failure is said as one line naming what is wrong (`failure_reason`). ssl and tempfile
are imported when a context is built: the CLI's start-up never pays for them (issue 15).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coordinator.errors import ConfigError

if TYPE_CHECKING:
    import ssl

MAX_PEM_BYTES = 1 << 20
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME = re.compile(rf"(?=.{{1,253}}$){LABEL}(?:\.{LABEL})*")
# part: (outputs key, variable); the variables name files, except COORDINATOR_TLS_NAME (the name itself)
FIELDS = {
    "ca": ("worker_ca_pem", "COORDINATOR_TLS_CA_FILE"),
    "name": ("worker_tls_name", "COORDINATOR_TLS_NAME"),
    "cert": ("worker_client_cert_pem", "COORDINATOR_TLS_CLIENT_CERT"),
    "key": ("worker_client_key_pem", "COORDINATOR_TLS_CLIENT_KEY"),
}
# X509_V_ERR_* codes (OpenSSL x509_vfy.h) that mean "no path to the pinned CA".
NOT_OUR_CA = {2, 18, 19, 20, 21, 27}
EXPIRED, NOT_YET_VALID, HOSTNAME_MISMATCH, IP_MISMATCH = 10, 9, 62, 64
# What OpenSSL says when the bytes that came back are not a TLS record (an HTTP server's reply).
NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"}
# Alerts a server sends when it will not take our client certificate (or our lack of one).
CLIENT_CERT_REFUSED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "TLSV1_ALERT_ACCESS_DENIED",
}


# A TLS 1.3 server checks the client's certificate after the client's handshake is done, then
# alerts and closes; when the close (a reset) overtakes the alert, this is all a client sees.
CLOSED_AT_HANDSHAKE = (
    "TLS: the worker closed the connection at the handshake or before answering "
    "(if it requires mutual TLS: our client certificate is missing or not signed by its client CA)"
)


@dataclass(frozen=True)
class TlsSettings:
    """What every connection to the fleet verifies. Hashable: the context cache and the
    transport's connection pool are keyed by it; the key is never shown (repr=False)."""

    ca_pem: str
    name: str | None = None  # the DNS name on every worker certificate; None: the URL's host
    client_cert_pem: str | None = field(default=None, repr=False)
    client_key_pem: str | None = field(default=None, repr=False)
    origin: str = ""  # where the CA came from, for messages

    @property
    def mutual(self) -> bool:
        return self.client_cert_pem is not None


@functools.lru_cache(maxsize=16)
def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """The one context for these settings: TLS 1.2+, only the fleet CA trusted, names checked."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=settings.ca_pem)
    if settings.client_cert_pem is not None:
        _load_client_pair(context, settings.client_cert_pem, settings.client_key_pem or "")
    return context


@functools.lru_cache(maxsize=1)
def system_context() -> ssl.SSLContext:
    """https:// workers with no CA configured: the system's trust store, as any client."""
    import ssl

    return ssl.create_default_context()


def _load_client_pair(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """ssl loads a certificate chain only from files: a private 0700 folder, removed at once."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="stripes-tls-") as folder:
        cert, key = os.path.join(folder, "client.crt"), os.path.join(folder, "client.key")
        for path, text in ((cert, cert_pem), (key, key_pem)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii", errors="replace") as handle:
                handle.write(text)
        context.load_cert_chain(cert, key)


def _read_pem_file(path: str, variable: str) -> str:
    """A PEM file named by a variable, bounded; every failure one ConfigError naming it. Opened
    without blocking: a FIFO there is refused instead of waiting for a writer."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise ConfigError(f"{variable}={path}: not a regular file")
        with open(descriptor, "rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{variable}={path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"{variable}={path}: over {MAX_PEM_BYTES} bytes; a PEM file is a few KB")
    return data.decode("ascii", errors="replace")


def _pick(part: str, outputs: Mapping, where: str, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """One setting's value and a label of where it came from: the variable beats the outputs."""
    key, variable = FIELDS[part]
    raw = environ.get(variable, "").strip()
    if raw:
        if part == "name":
            return raw, variable
        return _read_pem_file(raw, variable), f"{variable}={raw}"
    value = outputs.get(key)
    if value is None or value == "":
        return None, f"{where} {key}"
    if not isinstance(value, str) or value == "[secret]":
        shown = "still masked (pulumi stack output needs --show-secrets)" if value == "[secret]" else "not a string"
        raise ConfigError(f"{where} {key}: {shown}")
    return value, f"{where} {key}"


def _check_name(name: str, label: str) -> str:
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    if not DNS_NAME.fullmatch(name):
        raise ConfigError(f"{label}={name[:80]!r} is not a DNS name or IP address")
    return name


def read_settings(outputs: Mapping, where: str, environ: Mapping[str, str]) -> TlsSettings | None:
    """The TLS settings from an outputs object (or {} for a URL list) and COORDINATOR_TLS_*;
    None when no CA is configured. Raises ConfigError with one line, never a key's text."""
    ca, ca_from = _pick("ca", outputs, where, environ)
    name, name_from = _pick("name", outputs, where, environ)
    cert, cert_from = _pick("cert", outputs, where, environ)
    key, key_from = _pick("key", outputs, where, environ)
    if ca is None:
        for value, label in ((name, name_from), (cert, cert_from), (key, key_from)):
            if value is not None:
                raise ConfigError(f"{label} is set but no fleet CA is (COORDINATOR_TLS_CA_FILE or worker_ca_pem)")
        return None
    if (cert is None) != (key is None):
        have, missing = (cert_from, key_from) if key is None else (key_from, cert_from)
        raise ConfigError(f"{have} is set without {missing}: mutual TLS needs the certificate and its key")
    settings = TlsSettings(ca, _check_name(name, name_from) if name else None, cert, key, ca_from)
    check(settings, ca_from, cert_from, key_from)
    return settings


def check(settings: TlsSettings, ca_from: str, cert_from: str, key_from: str) -> None:
    """Build the context now, so bad PEM stops the command at start-up by the setting's name."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=settings.ca_pem)
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"{ca_from}: not a PEM certificate (the fleet CA)") from None
    try:
        client_context(settings)
    except (ssl.SSLError, ValueError):
        raise ConfigError(
            f"{cert_from} / {key_from}: not a PEM certificate and the private key that matches it (key not shown)"
        ) from None


def failure_reason(exc: BaseException, name: str) -> str:
    """An ssl failure as one line a person can act on."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return _verify_reason(exc, name)
    reason = getattr(exc, "reason", None) or ""
    if reason in NOT_TLS:
        return "TLS refused: the worker did not answer TLS (a plain HTTP server on that port?)"
    if reason in CLIENT_CERT_REFUSED:
        return f"TLS refused: the worker refused our client certificate, or its absence (mutual TLS; alert {reason})"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return CLOSED_AT_HANDSHAKE
    return f"TLS failed: {reason or type(exc).__name__}"


def _verify_reason(exc: ssl.SSLCertVerificationError, name: str) -> str:
    code = exc.verify_code
    if code in NOT_OUR_CA:
        return "TLS refused: the worker's certificate is not signed by the pinned fleet CA"
    if code in (HOSTNAME_MISMATCH, IP_MISMATCH):
        return f"TLS refused: certificate name mismatch (expected {name})"
    if code == EXPIRED:
        return "TLS refused: the worker's certificate has expired"
    if code == NOT_YET_VALID:
        return "TLS refused: the worker's certificate is not valid yet (check the clocks)"
    message = "".join(ch if ch.isprintable() else "?" for ch in str(exc.verify_message or "")[:120])
    return f"TLS refused: certificate verify failed ({message or code})"
