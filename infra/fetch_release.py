#!/usr/bin/env python3
"""Fetch one worker release from the stack's S3 bucket, check its sha256 and unpack it.

Runs on the instance at first boot (cloud-init installs it as /usr/local/sbin/fetch-worker-release),
with Ubuntu's python3 and python3-boto3; credentials come from the instance profile via IMDSv2.
Only the standard library and boto3: keep it that way.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tarfile
import time
from pathlib import PurePosixPath

ATTEMPTS = 6  # a fresh instance profile can take a few seconds to become usable
# Worth another try on a booting host (IAM propagation, throttling); anything else is final.
RETRYABLE_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
}


def download(bucket: str, key: str, region: str) -> bytes:
    import boto3
    import botocore.exceptions

    client = boto3.client("s3", region_name=region)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if attempt == ATTEMPTS or (code is not None and code not in RETRYABLE_CODES):
                raise SystemExit(f"fetch-worker-release: cannot get s3://{bucket}/{key}: {exc}") from exc
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


def unpack(archive: bytes, dest: str) -> int:
    """Regular files only, relative paths only; returns the number of files written."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            if not member.isfile() or path.is_absolute() or ".." in path.parts:
                raise SystemExit(f"fetch-worker-release: refusing archive entry {member.name!r}")
            target = os.path.join(dest, *path.parts)
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                out.write(src.read())
            os.chmod(target, 0o644)
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--sha256", required=True, help="expected sha256 of the archive")
    parser.add_argument("--dest", required=True, help="release directory to create")
    args = parser.parse_args(argv)

    archive = download(args.bucket, args.key, args.region)
    actual = hashlib.sha256(archive).hexdigest()
    if actual != args.sha256:
        print(
            f"fetch-worker-release: sha256 mismatch for s3://{args.bucket}/{args.key}: "
            f"expected {args.sha256}, got {actual}",
            file=sys.stderr,
        )
        return 1
    os.makedirs(args.dest, mode=0o755, exist_ok=True)
    count = unpack(archive, args.dest)
    print(f"fetch-worker-release: {count} files into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
