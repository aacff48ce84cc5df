"""Every coordinator setting is read here, once: flags, COORDINATOR_* variables, outputs file.

Worker list, first found wins: --workers, --workers-file, COORDINATOR_WORKERS,
COORDINATOR_WORKERS_FILE, `pulumi stack output` (when COORDINATOR_PULUMI_STACK is set and
`pulumi` is on PATH), then the two local workers. Flags beat variables, as in every CLI.
TLS (the fleet CA, its name, a client certificate) comes from the same outputs or
COORDINATOR_TLS_*, checked by tls.read_settings. The token is re-read from where it came from
when a worker answers 401 (`refreshed_token`), so a rotation needs no restart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from coordinator.errors import ConfigError, CoordinatorError
from coordinator.pool_discovery import PoolFleet, check_override, parse_pools
from coordinator.tls import TlsSettings, read_settings
from stripes import stack_outputs
from stripes.roles import ROLE_SPECS

DEFAULT_WORKERS = tuple(f"http://127.0.0.1:{spec.port}" for spec in ROLE_SPECS.values())
TRANSPORTS = ("auto", "raw", "png", "webp-lossless", "jpeg-cut")
WIRE_QUALITIES = ("lossless", "high")
REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+")  # a name, IPv4, or IPv6 (urlsplit drops its brackets)
USERINFO = re.compile(r"(//)[^/@\s]*@")
TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an HTTP header value can carry as is
TOKEN_MAX_CHARS = 4000  # the workers refuse an Authorization header over 4096 bytes
PULUMI_REREAD_SECONDS = 5.0  # a 401 re-runs `pulumi stack output` at most this often


@dataclass(frozen=True)
class Setting:
    """A numeric COORDINATOR_* variable: its default and allowed range."""

    name: str
    default: float
    low: float
    high: float
    integer: bool = False


NUMERIC_SETTINGS = (
    Setting("COORDINATOR_CONNECT_TIMEOUT", 2.0, 0.05, 60),  # seconds to open a connection to a worker
    Setting("COORDINATOR_READ_TIMEOUT", 30.0, 0.1, 600),  # seconds to wait for a worker's bytes
    Setting("COORDINATOR_HEALTH_TIMEOUT", 1.5, 0.05, 30),  # seconds for each GET /healthz
    Setting("COORDINATOR_MAX_ATTEMPTS", 4, 1, 20, integer=True),  # tries per strip, across workers
    Setting("COORDINATOR_RETRY_AFTER_MAX", 2.0, 0, 60),  # longest honoured Retry-After, seconds
    Setting("COORDINATOR_BACKOFF", 0.05, 0, 10),  # first retry backoff, seconds (doubles, capped at 1 s)
    Setting("COORDINATOR_MAX_PIXELS", 50_000_000, 1, 1_000_000_000, integer=True),  # input width*height
    Setting("COORDINATOR_PNG_LEVEL", 2, 0, 9, integer=True),  # zlib level of PNG output and transport
    Setting("COORDINATOR_DISCOVERY_SECONDS", 5.0, 0, 300),  # how long a pooled stack's instance list is reused
)


@dataclass(frozen=True)
class TokenSource:
    """Where the token came from: kind "file" (an outputs file's path), "env" (a variable's
    name) or "pulumi" (a stack), with `stack_dir` the folder pulumi runs in."""

    kind: str
    where: str
    stack_dir: str = ""


@dataclass(frozen=True)
class CoordinatorConfig:
    workers: tuple[str, ...] = DEFAULT_WORKERS
    token: str | None = None
    source: str = "default"
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    max_attempts: int = 4
    health_timeout: float = 1.5
    retry_after_max: float = 2.0
    backoff: float = 0.05
    max_pixels: int = 50_000_000
    png_level: int = 2
    transport: str = "auto"
    wire_quality: str = "lossless"  # "high": JPEG q95 replies, PSNR >= 45 dB (codecs.HIGH_PSNR_DB)
    pool_fleet: PoolFleet | None = None  # a pooled stack: workers found per job (pool_discovery)
    discovery_seconds: float = 5.0
    tls: TlsSettings | None = None  # the fleet CA and name, verified on every connection
    token_source: TokenSource | None = None  # where the token is re-read from on a 401

    @property
    def timeouts(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)


def redact_url(text: str) -> str:
    """The text with any `user:password@` of a URL in it replaced by `***@`."""
    return USERINFO.sub(r"\1***@", text)


def normalize_url(url: str, where: str) -> str:
    """http(s)://host[:port] with no path; names the setting it came from when wrong. Errors
    show the URL with any credentials redacted. A bare host:port means http://host:port."""
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = f"http://{text}"
    shown = repr(redact_url(text))[:200]
    try:
        parts = urlsplit(text)
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        raise ConfigError(f"{where}: {shown} has a bad port or host") from None
    if parts.scheme not in ("http", "https") or not HOST.fullmatch(parts.hostname or ""):
        raise ConfigError(f"{where}: {shown} is not an http(s)://host:port URL")
    if "@" in parts.netloc:
        raise ConfigError(
            f"{where}: {shown} holds a user:password@ part; workers take a bearer token "
            "(COORDINATOR_WORKER_TOKEN), not URL credentials"
        )
    if parts.path or parts.query or parts.fragment:
        raise ConfigError(f"{where}: {shown} must be a base URL with no path or query")
    return text


def check_token(token: str | None, where: str) -> str | None:
    """The token, if it can travel in an Authorization header; else ConfigError naming the
    setting and never showing the value."""
    if token is None:
        return None
    if len(token) > TOKEN_MAX_CHARS:
        raise ConfigError(f"{where}: the token is longer than {TOKEN_MAX_CHARS} characters (value not shown)")
    if not TOKEN.fullmatch(token):
        raise ConfigError(
            f"{where}: the token holds a space, control character (such as a line break) or "
            "non-ASCII character, which cannot go in an HTTP header (value not shown)"
        )
    return token


def parse_worker_list(text: str, where: str) -> tuple[str, ...]:
    urls: list[str] = []
    for item in text.split(","):
        if item.strip():
            url = normalize_url(item, where)
            if url not in urls:
                urls.append(url)
    if not urls:
        raise ConfigError(f"{where} names no worker URL")
    return tuple(urls)


def parse_fleet(outputs: object, where: str) -> tuple[tuple[str, ...], str | None, PoolFleet | None]:
    """Workers, token and pools (a pooled stack has `workers: []` and `pools`)."""
    if not isinstance(outputs, dict) or not isinstance(outputs.get("workers"), list):
        raise ConfigError(f"{where}: expected a JSON object with a 'workers' list")
    urls: list[str] = []
    for index, worker in enumerate(outputs["workers"]):
        if not isinstance(worker, dict) or not isinstance(worker.get("url"), str):
            raise ConfigError(f"{where}: workers[{index}] has no 'url' string")
        url = normalize_url(worker["url"], f"{where} workers[{index}].url")
        if url not in urls:
            urls.append(url)
    pools = parse_pools(outputs, where)
    if not urls and pools is None:
        raise ConfigError(f"{where}: the 'workers' list is empty and there are no 'pools'")
    token = outputs.get("worker_token")
    if token is not None and not isinstance(token, str):
        raise ConfigError(f"{where}: 'worker_token' must be a string")
    return tuple(urls), check_token(token or None, f"{where} worker_token"), pools


def read_outputs_file(path: str, where: str) -> tuple[tuple[str, ...], str | None]:
    """Workers and token from an outputs file (read_fleet_file without the pools)."""
    urls, token, _pools = read_fleet_file(path, where)
    return urls, token


def read_fleet_file(path: str, where: str) -> tuple[tuple[str, ...], str | None, PoolFleet | None]:
    """Workers, token and pools from an outputs file, read with a size bound; every failure
    (missing, a device, too big, not UTF-8, not JSON, nested too deep) is one ConfigError."""
    return parse_fleet(read_outputs_object(path, where), f"{where} {path}")


def read_outputs_object(path: str, where: str) -> object:
    try:
        return stack_outputs.read_file(path)
    except stack_outputs.OutputsError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def pulumi_outputs(stack: str, stack_dir: str, environ: Mapping[str, str]) -> object | None:
    """Stack outputs straight from the Pulumi CLI; None when the CLI is not installed."""
    try:
        return stack_outputs.run_pulumi(stack, cwd=stack_dir, env=dict(environ))
    except stack_outputs.OutputsError as exc:
        raise ConfigError(f"COORDINATOR_PULUMI_STACK={stack}: {exc}") from None


@dataclass
class Found:
    """Where the workers are, and what came with them from the same source."""

    urls: tuple[str, ...]
    source: str
    token: str | None = None
    pools: PoolFleet | None = None
    outputs: Mapping = dataclasses.field(default_factory=dict)  # an outputs object: TLS is read from it
    where: str = ""  # the setting that named the outputs, for messages
    token_source: TokenSource | None = None


def from_outputs(outputs: object, where: str, source: str, token_source: TokenSource) -> Found:
    urls, token, pools = parse_fleet(outputs, where)
    return Found(urls, source, token, pools, outputs, where, token_source)


def find_workers(workers: str | None, workers_file: str | None, environ: Mapping[str, str]) -> Found:
    """The first worker source that is set (module docstring)."""
    if workers:
        return Found(parse_worker_list(workers, "--workers"), "--workers")
    if workers_file:
        return from_file(workers_file, "--workers-file")
    if environ.get("COORDINATOR_WORKERS", "").strip():
        return Found(parse_worker_list(environ["COORDINATOR_WORKERS"], "COORDINATOR_WORKERS"), "COORDINATOR_WORKERS")
    if environ.get("COORDINATOR_WORKERS_FILE", "").strip():
        return from_file(environ["COORDINATOR_WORKERS_FILE"].strip(), "COORDINATOR_WORKERS_FILE")
    return from_stack(environ)


def from_file(path: str, setting: str) -> Found:
    outputs = read_outputs_object(path, setting)
    return from_outputs(outputs, f"{setting} {path}", f"outputs file {path}", TokenSource("file", path))


def from_stack(environ: Mapping[str, str]) -> Found:
    """`pulumi stack output` when COORDINATOR_PULUMI_STACK is set and pulumi is installed, else the defaults."""
    stack = environ.get("COORDINATOR_PULUMI_STACK", "").strip()
    stack_dir = environ.get("COORDINATOR_PULUMI_DIR") or str(REPO_ROOT / "infra")
    outputs = pulumi_outputs(stack, stack_dir, environ) if stack else None
    if outputs is not None:
        where = f"COORDINATOR_PULUMI_STACK={stack}"
        return from_outputs(outputs, where, f"pulumi stack {stack}", TokenSource("pulumi", stack, stack_dir))
    return Found(DEFAULT_WORKERS, "default")


def fleet_tls(found: Found, environ: Mapping[str, str]) -> TlsSettings | None:
    """The TLS settings, checked against the URLs: with a CA no worker may be plain HTTP; an
    https:// stack must bring its CA."""
    settings = read_settings(found.outputs, found.where or "outputs", environ)
    urls = found.urls
    if settings is not None:
        plain = [url for url in urls if url.startswith("http://")]
        if plain:
            raise ConfigError(
                f"plain HTTP refused: the fleet has a TLS CA ({settings.origin}), but {found.source} lists {plain[0]}"
            )
    elif found.where and any(url.startswith("https://") for url in urls):
        raise ConfigError(
            f"{found.where}: the workers are https:// but there is no worker_ca_pem to verify them by "
            "(or set COORDINATOR_TLS_CA_FILE)"
        )
    return settings


def read_number(setting: Setting, environ: Mapping[str, str]) -> float | int:
    raw = environ.get(setting.name, "").strip()
    if not raw:
        return int(setting.default) if setting.integer else setting.default
    try:
        value = int(raw) if setting.integer else float(raw)
    except ValueError:
        kind = "an integer" if setting.integer else "a number"
        raise ConfigError(f"{setting.name}={raw!r} is not {kind}") from None
    if not (setting.low <= value <= setting.high):
        raise ConfigError(f"{setting.name}={raw} is out of range {setting.low:g}..{setting.high:g}")
    return value


def load_config(
    workers: str | None = None,
    workers_file: str | None = None,
    environ: Mapping[str, str] = os.environ,
    transport: str | None = None,
    wire_quality: str | None = None,
) -> CoordinatorConfig:
    """The whole configuration, validated; raises ConfigError naming the bad setting."""
    found = find_workers(workers, workers_file, environ)
    tls = fleet_tls(found, environ)
    token, token_source, pools = found.token, found.token_source, found.pools
    env_token = environ.get("COORDINATOR_WORKER_TOKEN", "")
    if env_token.strip():
        token = check_token(env_token.strip(), "COORDINATOR_WORKER_TOKEN")
        token_source = TokenSource("env", "COORDINATOR_WORKER_TOKEN")
    chosen_transport = (transport or environ.get("COORDINATOR_TRANSPORT", "") or "auto").strip()
    if chosen_transport not in TRANSPORTS:
        where = "--transport" if transport else "COORDINATOR_TRANSPORT"
        raise ConfigError(f"{where}={chosen_transport!r} is not one of {', '.join(TRANSPORTS)}")
    chosen_quality = (wire_quality or environ.get("COORDINATOR_WIRE_QUALITY", "") or "lossless").strip()
    if chosen_quality not in WIRE_QUALITIES:
        where = "--wire-quality" if wire_quality else "COORDINATOR_WIRE_QUALITY"
        raise ConfigError(f"{where}={chosen_quality!r} is not one of {', '.join(WIRE_QUALITIES)}")
    numbers = {s.name: read_number(s, environ) for s in NUMERIC_SETTINGS}
    override = check_override(environ.get("COORDINATOR_POOL_ADDRESS_OVERRIDE", ""))
    if pools is not None and override:
        pools = dataclasses.replace(pools, address_override=override)
    if pools is not None and tls is not None:
        pools = dataclasses.replace(pools, scheme="https")
    return CoordinatorConfig(
        workers=found.urls,
        token=token,
        source=found.source,
        connect_timeout=numbers["COORDINATOR_CONNECT_TIMEOUT"],
        read_timeout=numbers["COORDINATOR_READ_TIMEOUT"],
        max_attempts=numbers["COORDINATOR_MAX_ATTEMPTS"],
        health_timeout=numbers["COORDINATOR_HEALTH_TIMEOUT"],
        retry_after_max=numbers["COORDINATOR_RETRY_AFTER_MAX"],
        backoff=numbers["COORDINATOR_BACKOFF"],
        max_pixels=numbers["COORDINATOR_MAX_PIXELS"],
        png_level=numbers["COORDINATOR_PNG_LEVEL"],
        transport=chosen_transport,
        wire_quality=chosen_quality,
        pool_fleet=pools,
        discovery_seconds=numbers["COORDINATOR_DISCOVERY_SECONDS"],
        tls=tls,
        token_source=token_source,
    )


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the token, re-read on a 401 (a rotation: `fleet rotate-token` rewrites the outputs file) --

_refreshed: dict[tuple[TokenSource, str | None], str] = {}  # (source, token at load) -> newest read
_last_pulumi_read: dict[TokenSource, float] = {}
_token_lock = threading.Lock()


def current_token(config: CoordinatorConfig) -> str | None:
    """The token to send: the one loaded, or a newer one a 401 made us re-read from its source."""
    if config.token_source is None:
        return config.token
    with _token_lock:
        return _refreshed.get((config.token_source, config.token), config.token)


def refreshed_token(config: CoordinatorConfig, sent: str | None) -> str | None:
    """After a 401 to `sent`: the token read again from its source if it differs from `sent`
    (another strip may have re-read it already); None when it did not change or cannot be
    read now (the 401 then stands, as before)."""
    source = config.token_source
    if source is None:
        return None
    key = (source, config.token)
    with _token_lock:  # one re-read at a time; the strips that wait find it done
        latest = _refreshed.get(key, config.token)
        if latest != sent:
            return latest
        try:
            fresh = reread_token(source)
        except CoordinatorError:
            return None
        if not fresh or fresh == sent:
            return None
        _refreshed[key] = fresh
        return fresh


def _is_pipe(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def reread_token(source: TokenSource) -> str | None:
    """The token as its source holds it now; ConfigError when it cannot be read or is bad."""
    if source.kind == "env":
        return check_token(os.environ.get(source.where, "").strip() or None, source.where)
    if source.kind == "file":
        if _is_pipe(source.where):  # read once already; opening it again would wait for a writer
            return None
        return read_fleet_file(source.where, "token re-read")[1]
    now = time.monotonic()
    if now - _last_pulumi_read.get(source, -PULUMI_REREAD_SECONDS) < PULUMI_REREAD_SECONDS:
        return None  # a batch of 401s must not start a pulumi process each
    _last_pulumi_read[source] = now
    outputs = pulumi_outputs(source.where, source.stack_dir, os.environ)
    return None if outputs is None else parse_fleet(outputs, f"COORDINATOR_PULUMI_STACK={source.where}")[1]
