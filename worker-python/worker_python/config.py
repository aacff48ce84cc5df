"""Every WORKER_* setting, read once at start-up into a frozen dataclass."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(ValueError):
    """A WORKER_* variable has a bad value; the message names it, on one line."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 5001
    token: str | None = None
    max_bytes: int = 50_000_000
    max_pixels: int = 50_000_000
    max_inflight: int = 4
    max_inflight_pixels: int = 100_000_000
    grace_seconds: float = 20.0
    build: str = "dev"
    log_level: str = "info"
    metrics: bool = True  # WORKER_METRICS=off: for benchmarking the metrics' own cost only
    # secret files (paths, not secrets), re-read on change by secret_files.SecretFiles
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def __repr__(self) -> str:  # never show the token, e.g. in a traceback or a log line
        token = "set" if self.token else "unset"
        return (
            f"Settings(host={self.host!r}, port={self.port}, token={token}, max_bytes={self.max_bytes}, "
            f"max_pixels={self.max_pixels}, max_inflight={self.max_inflight}, "
            f"max_inflight_pixels={self.max_inflight_pixels}, "
            f"grace_seconds={self.grace_seconds}, build={self.build!r}, log_level={self.log_level!r}, "
            f"metrics={self.metrics}, token_file={self.token_file!r}, tls_cert={self.tls_cert!r}, "
            f"tls_key={self.tls_key!r}, tls_client_ca={self.tls_client_ca!r})"
        )


def _integer(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be an integer from {low} to {high}, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be an integer from {low} to {high}, got {raw!r}")
    return value


def _seconds(environ: Mapping[str, str], name: str, default: float, high: float) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds from 0 to {high:g}, got {raw!r}") from None
    if not 0 <= value <= high:  # also rejects nan
        raise SettingsError(f"{name} must be a number of seconds from 0 to {high:g}, got {raw!r}")
    return value


def _text(environ: Mapping[str, str], name: str, default: str, max_length: int = 128) -> str:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip()
    if len(value) > max_length or not value.isprintable():
        raise SettingsError(f"{name} must be at most {max_length} printable characters")
    return value


def _switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in ("on", "off"):
        raise SettingsError(f"{name} must be on or off, got {raw!r}")
    return value == "on"


def _path(environ: Mapping[str, str], name: str) -> str | None:
    raw = environ.get(name)
    return raw.strip() if raw is not None and raw.strip() else None


def _secret_files(environ: Mapping[str, str], token: str | None) -> dict:
    """The paths of WORKER_TOKEN_FILE and WORKER_TLS_*, checked for the combinations allowed."""
    files = {
        "token_file": _path(environ, "WORKER_TOKEN_FILE"),
        "tls_cert": _path(environ, "WORKER_TLS_CERT"),
        "tls_key": _path(environ, "WORKER_TLS_KEY"),
        "tls_client_ca": _path(environ, "WORKER_TLS_CLIENT_CA"),
    }
    if token is not None and files["token_file"] is not None:
        raise SettingsError("WORKER_TOKEN_FILE and WORKER_TOKEN are both set; set one of them")
    if files["tls_cert"] is None and files["tls_key"] is not None:
        raise SettingsError("WORKER_TLS_KEY is set without WORKER_TLS_CERT; set both or neither")
    if files["tls_cert"] is not None and files["tls_key"] is None:
        raise SettingsError("WORKER_TLS_CERT is set without WORKER_TLS_KEY; set both or neither")
    if files["tls_client_ca"] is not None and files["tls_cert"] is None:
        raise SettingsError("WORKER_TLS_CLIENT_CA needs TLS: set WORKER_TLS_CERT and WORKER_TLS_KEY too")
    return files


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check every WORKER_* variable; raises SettingsError naming the first bad one."""
    environ = os.environ if environ is None else environ
    token = environ.get("WORKER_TOKEN")
    if token is not None:
        token = token.strip() or None  # empty means unset (as `WORKER_TOKEN=` in an env file)
        if token is not None and not token.isprintable():
            raise SettingsError("WORKER_TOKEN must be printable characters")  # never echo the value
    log_level = environ.get("WORKER_LOG_LEVEL", "info").strip().lower() or "info"
    if log_level not in LOG_LEVELS:
        raise SettingsError(
            f"WORKER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {environ['WORKER_LOG_LEVEL']!r}"
        )
    return Settings(
        host=_text(environ, "WORKER_HOST", "127.0.0.1", 255),
        port=_integer(environ, "WORKER_PORT", 5001, 1, 65535),
        token=token,
        max_bytes=_integer(environ, "WORKER_MAX_BYTES", 50_000_000, 1, 2**40),
        max_pixels=_integer(environ, "WORKER_MAX_PIXELS", 50_000_000, 1, 2**40),
        max_inflight=_integer(environ, "WORKER_MAX_INFLIGHT", 4, 1, 256),
        max_inflight_pixels=_integer(environ, "WORKER_MAX_INFLIGHT_PIXELS", 100_000_000, 1, 2**40),
        grace_seconds=_seconds(environ, "WORKER_GRACE_SECONDS", 20.0, 3600),
        build=_text(environ, "WORKER_BUILD", "dev"),
        log_level=log_level,
        metrics=_switch(environ, "WORKER_METRICS", True),
        **_secret_files(environ, token),
    )
