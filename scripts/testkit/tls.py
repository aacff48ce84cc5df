"""Throwaway certificate authorities for loopback TLS (tests, benches): a CA, and server or
client certificates it signs, as PEM bytes or files. ECDSA P-256, like the fleet's own CA; the
certificates are made by scripts/local_tls.py, the same code as `make run TLS=1`'s local CA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts.local_tls import cert_pem, issue, key_pem, make_ca, new_key, validity

# The name the fleet's server certificate carries (infra); tests use it so the pinning code is the real one.
from stripes.roles import FLEET_TLS_NAME

DAYS = 30  # a test CA and its leaves are valid this long (an expired leaf ended yesterday)


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """`<stem>.crt` and `<stem>.key` (mode 0600) in folder; returns (cert, key)."""
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        return cert, key


class Authority:
    """A self-signed CA that issues leaf certificates (server or client)."""

    def __init__(self, common_name: str = "stripes test CA") -> None:
        self._key = new_key()
        self._cert = make_ca(self._key, common_name, validity(DAYS))
        self.cert_pem = cert_pem(self._cert)

    def issue(self, name: str = FLEET_TLS_NAME, *, client: bool = False, expired: bool = False) -> KeyPair:
        """A leaf certificate for DNS name (or IP literal) `name`, for a server or a client."""
        cert, key = issue(self._cert, self._key, name, validity(DAYS, expired), client=client)
        return KeyPair(cert_pem(cert), key_pem(key))

    def write_ca(self, folder: Path, stem: str = "ca") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.crt"
        path.write_bytes(self.cert_pem)
        return path
