"""The fleet's pinned TLS: trust only the CA from the outputs file and verify the fixed name
(`worker_tls_name`) while connecting by IP, as the coordinator does. The probes that use it
(under one deadline each) are in probe.py."""

from __future__ import annotations

import functools
import hashlib
import re
import ssl
import tempfile
from dataclasses import dataclass

from scripts.fleet.errors import FleetError

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_SSL_REASON = re.compile(r"\] ([^\]]*?)(?: \(_ssl\.c:\d+\))")


def first_certificate(pem: str, where: str) -> bytes:
    """DER bytes of the first certificate in a PEM text (a leaf, or a chain's leaf)."""
    found = _PEM_CERT.search(pem or "")
    if not found:
        raise FleetError(f"{where} holds no PEM certificate")
    try:
        return ssl.PEM_cert_to_DER_cert(found.group(0))
    except ValueError:
        raise FleetError(f"{where} holds a broken PEM certificate") from None


def sha256(der: bytes) -> str:
    """Colon-separated upper-case hex, as `openssl x509 -fingerprint -sha256` prints it."""
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())


@dataclass(frozen=True)
class Pinning:
    """The CA (PEM text) and name every worker certificate is checked against, and the optional
    client certificate for a mutual-TLS fleet."""

    ca_pem: str
    name: str
    client_cert_pem: str = ""
    client_key_pem: str = ""

    def context(self) -> ssl.SSLContext:
        """A client context that trusts the pinned CA only (no system store), TLS 1.2+; made
        once and shared (an SSLContext may serve many threads' connections)."""
        return self._context

    @functools.cached_property
    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED on
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cadata=self.ca_pem)
        except ssl.SSLError as exc:
            raise FleetError(f"worker_ca_pem is not a usable CA certificate ({exc.reason or exc})") from None
        if self.client_cert_pem:
            self._load_client(context)
        return context

    def _load_client(self, context: ssl.SSLContext) -> None:
        # ssl loads a key pair only from files: a private temporary file, gone after loading.
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as pair:
            pair.write(self.client_cert_pem.strip() + "\n" + self.client_key_pem.strip() + "\n")
            pair.flush()
            try:
                context.load_cert_chain(pair.name)
            except ssl.SSLError as exc:
                raise FleetError(
                    f"worker_client_cert_pem/worker_client_key_pem do not load ({exc.reason or exc})"
                ) from None


def reason(exc: BaseException) -> str:
    """One line from an ssl error, e.g. 'certificate verify failed: Hostname mismatch, ...'."""
    text = str(exc)
    found = _SSL_REASON.search(text)
    if found:
        return found.group(1).strip().rstrip(".")
    inner = getattr(exc, "reason", None)
    return str(inner) if isinstance(inner, str) and inner else "handshake failed"
