#!/usr/bin/env python3
"""Fetch the worker's token and TLS material from SSM Parameter Store into its secrets folder.

Runs on the instance as root (cloud-init installs it as /usr/local/sbin/fetch-worker-secrets; runcmd
runs it once before the worker starts, then `<role>-secrets.timer` every minute), with Ubuntu's
python3 and python3-boto3; credentials come from the instance profile via IMDSv2. Only the
standard library and boto3: keep it that way.

    fetch-worker-secrets --region R --prefix /{project}/{stack} --dest /etc/{role}/secrets \
        --group worker [--client-ca]

Each value is checked before anything is written; a file is replaced atomically (a temporary file
in the same folder, fsync, rename) only when its content changed, so the worker's live reload sees
one complete change. Exit 0, or exit 1 with one line naming the parameter or the reason. No output
ever holds a parameter's value.
"""

from __future__ import annotations

import argparse
import grp
import os
import sys
import tempfile
import time
from dataclasses import dataclass

PROG = "fetch-worker-secrets"
ATTEMPTS = 6  # a fresh instance profile can take a few seconds to become usable
# Worth another try on a booting host (IAM propagation, throttling); anything else is final.
RETRYABLE_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "ThrottlingException",
    "InternalServerError",
}
MAX_TOKEN_LENGTH = 4096  # the workers' own rule for WORKER_TOKEN_FILE (visible ASCII, 1-4096)
DIR_MODE = 0o750


@dataclass(frozen=True)
class Secret:
    parameter: str  # name under the prefix
    filename: str  # file in the destination folder
    mode: int
    kind: str  # "token", "key" or "cert"


SECRETS = (
    Secret("worker-token", "worker-token", 0o640, "token"),
    Secret("worker-tls-key", "tls.key", 0o640, "key"),
    Secret("worker-tls-cert", "tls.crt", 0o644, "cert"),
)
CLIENT_CA = Secret("worker-client-ca", "client-ca.crt", 0o644, "cert")


class Refused(Exception):
    """One-line reason the run stops (never holds a secret value)."""


def token_file(value: str) -> str:
    """1 or 2 tokens, one per line (surrounding whitespace and empty lines ignored), visible ASCII."""
    tokens = [line.strip() for line in value.splitlines() if line.strip()]
    if not 1 <= len(tokens) <= 2:
        raise Refused(f"holds {len(tokens)} tokens; expected 1 or 2")
    for token in tokens:
        if len(token) > MAX_TOKEN_LENGTH or any(not 0x21 <= ord(ch) <= 0x7E for ch in token):
            raise Refused(f"a token is not 1-{MAX_TOKEN_LENGTH} visible ASCII characters")
    return "\n".join(tokens) + "\n"


def pem_file(value: str, kind: str) -> str:
    label = "CERTIFICATE" if kind == "cert" else "PRIVATE KEY"
    text = value.strip()
    begins = text.startswith("-----BEGIN ") and text.split("\n", 1)[0].endswith(f"{label}-----")
    if not begins or not text.endswith(f"{label}-----") or "-----END " not in text:
        raise Refused(f"is not a PEM {label.lower()}")
    if kind == "cert" and "PRIVATE KEY" in text:  # a key pasted in would land in a world-readable file
        raise Refused("holds a private key")
    return text + "\n"


def content_of(secret: Secret, value: str) -> str:
    return token_file(value) if secret.kind == "token" else pem_file(value, secret.kind)


def read_parameters(region: str, names: list[str], attempts: int) -> dict[str, str]:
    """{name: value} for every name (WithDecryption); Refused naming what is missing or unreadable."""
    import boto3
    import botocore.config
    import botocore.exceptions

    config = botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"})
    client = boto3.client("ssm", region_name=region, config=config)
    for attempt in range(1, attempts + 1):
        try:
            reply = client.get_parameters(Names=names, WithDecryption=True)
            break
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if attempt == attempts or (code is not None and code not in RETRYABLE_CODES):
                reason = code if code and not code.isdigit() else f"HTTP {code}" if code else type(exc).__name__
                raise Refused(f"cannot read {', '.join(names)}: {reason}") from exc
            time.sleep(2 * attempt)
    if reply.get("InvalidParameters"):
        raise Refused(f"parameter {reply['InvalidParameters'][0]} not found")
    return {item["Name"]: item["Value"] for item in reply["Parameters"]}


def secure_dir(path: str, gid: int) -> None:
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    put_owner(path, DIR_MODE, gid)


def put_owner(path_or_fd, mode: int, gid: int) -> None:
    """Mode always; owner root:gid when running as root (an unprivileged run cannot chown)."""
    if isinstance(path_or_fd, int):
        os.fchmod(path_or_fd, mode)
        if os.geteuid() == 0:
            os.fchown(path_or_fd, 0, gid)
    else:
        os.chmod(path_or_fd, mode)
        if os.geteuid() == 0:
            os.chown(path_or_fd, 0, gid)


def write_if_changed(folder: str, secret: Secret, content: str, gid: int) -> bool:
    """Atomic replace when the content differs; modes and owner are put right either way."""
    path = os.path.join(folder, secret.filename)
    data = content.encode()
    try:
        with open(path, "rb") as current:
            if current.read() == data:
                put_owner(path, secret.mode, gid)
                return False
    except FileNotFoundError:
        pass
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{secret.filename}.")
    try:
        with os.fdopen(fd, "wb") as out:
            put_owner(out.fileno(), secret.mode, gid)  # before the secret is in it
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return True


def fetch(args: argparse.Namespace) -> list[str]:
    """Reads, checks, writes; returns the files that changed."""
    try:
        gid = grp.getgrnam(args.group).gr_gid
    except KeyError:
        raise Refused(f"group {args.group!r} does not exist") from None
    prefix = args.prefix.rstrip("/")
    wanted = [*SECRETS, CLIENT_CA] if args.client_ca else list(SECRETS)
    values = read_parameters(args.region, [f"{prefix}/{s.parameter}" for s in wanted], args.attempts)
    contents = {}
    for secret in wanted:  # every value is checked before any file is touched
        name = f"{prefix}/{secret.parameter}"
        if name not in values:  # answered for other names than asked
            raise Refused(f"parameter {name} not found")
        try:
            contents[secret] = content_of(secret, values[name])
        except Refused as exc:
            raise Refused(f"parameter {name} {exc}") from None
    secure_dir(args.dest, gid)
    return [s.filename for s in wanted if write_if_changed(args.dest, s, contents[s], gid)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--prefix", required=True, help="/{project}/{stack}")
    parser.add_argument("--dest", required=True, help="secrets folder, e.g. /etc/worker-python/secrets")
    parser.add_argument("--group", required=True, help="group that may read the token and key")
    parser.add_argument("--client-ca", action="store_true", help="also fetch worker-client-ca (mutual TLS)")
    parser.add_argument("--attempts", type=int, default=ATTEMPTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        changed = fetch(args)
    except Refused as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: cannot write into {args.dest}: {exc.strerror} ({exc.filename})", file=sys.stderr)
        return 1
    print(f"{PROG}: {', '.join(changed) or 'nothing'} changed in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
