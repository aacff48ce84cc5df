"""The server's TLS context (issue 16): TLS 1.2 or later, the certificate chain and key from
WORKER_TLS_CERT / WORKER_TLS_KEY, and with WORKER_TLS_CLIENT_CA a client certificate required.

A reload builds a whole new context and swaps it in (secret_files.SecretFiles): loading into the
live one could leave it half-changed (a new certificate with the old key) when the new key is
broken, and a client CA, once loaded, cannot be taken out of a context."""

from __future__ import annotations

import ssl
from pathlib import Path

from worker_python.config import SettingsError


def _read_text(path: str, variable: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not ASCII PEM text"
        raise SettingsError(f"{variable}: cannot read {path}: {reason}") from None


def _check_certificates(pem: str, path: str, variable: str) -> None:
    """Raises SettingsError unless pem holds at least one well-formed certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise SettingsError(f"{variable}: {path} holds no valid PEM certificate") from None


def _no_password() -> bytes:
    return b""  # an encrypted key fails to load instead of prompting on a terminal


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A new server context from the files; SettingsError naming the variable of a bad file."""
    _check_certificates(_read_text(cert, "WORKER_TLS_CERT"), cert, "WORKER_TLS_CERT")
    _read_text(key, "WORKER_TLS_KEY")  # readable; its content is never shown
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, OSError):
        raise SettingsError(
            f"WORKER_TLS_KEY: {key} is not an unencrypted PEM private key matching WORKER_TLS_CERT"
        ) from None
    if client_ca is not None:
        ca_pem = _read_text(client_ca, "WORKER_TLS_CLIENT_CA")
        _check_certificates(ca_pem, client_ca, "WORKER_TLS_CLIENT_CA")
        context.load_verify_locations(cadata=ca_pem)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
