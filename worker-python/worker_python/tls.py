"""The server's TLS context (issue 16): TLS 1.2 or later, the certificate chain and key from
WORKER_TLS_CERT / WORKER_TLS_KEY, and with WORKER_TLS_CLIENT_CA a client certificate required.

A reload builds a whole new context and swaps it in (secret_files.SecretFiles): loading into the
live one could leave it half-changed (a new certificate with the old key) when the new key is
broken, and a client CA, once loaded, cannot be taken out of a context."""

from __future__ import annotations

import os
import ssl
import stat

from worker_python.config import SettingsError

MAX_FILE_BYTES = 1024 * 1024  # a token, certificate or key file is far smaller (worker-nodejs: the same)


def read_secret_file(path: str, variable: str) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES, or SettingsError naming `variable`.
    Opened without blocking and checked before reading: a FIFO put in its place would stall the
    reader in open(), a device (/dev/zero) would never end, a huge file would be read whole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SettingsError(f"{variable}: {path} is not a regular file")
        chunks, size = [], 0
        while info.st_size <= MAX_FILE_BYTES and size <= MAX_FILE_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    if info.st_size > MAX_FILE_BYTES or size > MAX_FILE_BYTES:
        raise SettingsError(f"{variable}: {path} is over {MAX_FILE_BYTES} bytes")
    return b"".join(chunks)


def _read_text(path: str, variable: str) -> str:
    try:
        return read_secret_file(path, variable).decode("ascii")
    except UnicodeDecodeError:
        raise SettingsError(f"{variable}: cannot read {path}: not ASCII PEM text") from None


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
    context.options |= ssl.OP_NO_RENEGOTIATION  # OpenSSL 3's default; said here for older ones too
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
