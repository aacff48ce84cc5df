"""Read a host's user-data the way cloud-init will: base64 and gzip undone, `#cloud-config` parsed,
every write_files entry decoded (`gz+b64` and friends), so no check is fooled by an encoding.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import zlib

import yaml

INSTANCE = "aws:ec2/instance:Instance"
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
HOSTS = (INSTANCE, TEMPLATE)  # what runs a worker: fixed instances and pool launch templates
_BAD_ENCODING = (binascii.Error, ValueError, OSError, EOFError, zlib.error)


def _text(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":  # cloud-init accepts gzipped user-data
        with contextlib.suppress(*_BAD_ENCODING):
            data = gzip.decompress(data)
    return data.decode("utf-8", "replace")


def user_data(resource_type: str, props) -> str:
    """The document as cloud-init reads it ('' for a resource that is not a host)."""
    if resource_type not in HOSTS:
        return ""
    text = props.get("userData") or ""
    encoded = props.get("userDataBase64") or (text if resource_type == TEMPLATE else "")
    if encoded:
        try:
            return _text(base64.b64decode(encoded, validate=True))
        except _BAD_ENCODING:
            return text
    return text


def _decode(entry: dict) -> str | None:
    """A write_files entry's content as written to disk; None when it does not decode."""
    content = entry.get("content")
    data = content if isinstance(content, bytes) else str(content or "").encode()
    encoding = str(entry.get("encoding") or "").lower()
    try:
        if "b64" in encoding or "base64" in encoding:
            data = base64.b64decode(data, validate=True)
        if "gz" in encoding:
            data = gzip.decompress(data)
    except _BAD_ENCODING:
        return None
    return data.decode("utf-8", "replace")


def files(text: str) -> dict[str, str | None]:
    """path -> decoded content (None: undecodable) of a #cloud-config's write_files."""
    try:
        document = yaml.safe_load(text) if text.startswith("#cloud-config") else None
    except yaml.YAMLError:
        return {}
    if not isinstance(document, dict):
        return {}
    entries = [e for e in document.get("write_files") or [] if isinstance(e, dict)]
    return {str(e.get("path")): _decode(e) for e in entries}


def env_values(content: str) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile syntax, comments skipped)."""
    pairs = (line.strip().split("=", 1) for line in content.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.strip().startswith("#")}
