"""Strict checks for every value the fleet tool takes from the outputs file or a flag.

These values end up in ~/.ssh/config (`fleet ssh-config`), in SSH targets, in EC2 filters and
in URLs: a newline or a stray character there could add an OpenSSH directive such as
ProxyCommand. So each value must match the narrow form it has when `pulumi up` writes it, and
anything else is refused with one line naming the key (exit 2), never passed through.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from scripts.fleet.errors import USAGE, FleetError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # worker-python-0
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")  # EC2's own form
_OPERATION = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_SSH_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # POSIX portable user names
_STACK_WORD = re.compile(r"[A-Za-z0-9._-]{1,100}")  # Pulumi project/stack names
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")  # us-east-1, eu-central-2
_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PARAMETER = re.compile(r"(/[A-Za-z0-9._-]{1,200}){1,15}")  # an SSM parameter name such as /hdtp/dev/worker-token


def _bad(where: str, value, what: str) -> FleetError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return FleetError(f"{where} {shown} is not {what}", USAGE)


def _match(pattern: re.Pattern, value, where: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(where, value, what)
    return value


def name(value, where: str) -> str:
    return _match(_NAME, value, where, "a worker name (letters, digits, '.', '_', '-'; at most 63)")


def instance_id(value, where: str) -> str:
    return _match(_INSTANCE_ID, value, where, "an EC2 instance id such as i-0123456789abcdef0")


def operation(value, where: str) -> str:
    return _match(_OPERATION, value, where, "an operation name such as grayscale")


def ssh_user(value, where: str) -> str:
    return _match(_SSH_USER, value, where, "a user name such as ubuntu")


def stack_word(value, where: str) -> str:
    return _match(_STACK_WORD, value, where, "a Pulumi name (letters, digits, '.', '_', '-')")


def region(value, where: str) -> str:
    return _match(_REGION, value, where, "an AWS region such as us-east-1")


def hostname(value, where: str) -> str:
    """A DNS name such as workers.stripes.internal (the fleet's TLS name)."""
    return _match(_HOSTNAME, value, where, "a DNS name such as workers.stripes.internal")


def parameter_name(value, where: str) -> str:
    return _match(_PARAMETER, value, where, "an SSM parameter name such as /project/stack/worker-token")


def ip_address(value, where: str) -> str:
    """An IPv4 or IPv6 address in canonical form."""
    if not isinstance(value, str):
        raise _bad(where, value, "an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _bad(where, value, "an IP address") from None


def _url_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host))


def url(value, where: str) -> str:
    """http(s)://host[:port] and nothing else: no credentials, path, query or odd characters."""
    what = "an http:// or https:// URL of the form scheme://host:port"
    if not isinstance(value, str) or _CONTROL.search(value) or " " in value:
        raise _bad(where, value, what)
    try:
        parts = urlsplit(value.rstrip("/"))
        port = parts.port
    except ValueError:
        raise _bad(where, value, what) from None
    if (
        parts.scheme not in ("http", "https")
        or parts.username is not None
        or parts.path
        or parts.query
        or parts.fragment
        or not parts.hostname
        or not _url_host(parts.hostname)
        or port == 0
    ):
        raise _bad(where, value, what)
    return value.rstrip("/")


def path_text(value: str, where: str) -> str:
    """A local path that can be written into an ssh_config line (quoted): no control chars, no \"."""
    if _CONTROL.search(value) or '"' in value:
        raise _bad(where, value, "a path without control characters or double quotes")
    return value
