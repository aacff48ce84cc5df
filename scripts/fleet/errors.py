"""One exception type for every expected failure; the CLI turns it into `error: ...` and a code."""

from __future__ import annotations

# Exit codes (also in scripts/README.md).
OK = 0
FAILED = 1  # AWS/SSH/HTTP failure, nothing found, remote command failed
USAGE = 2  # bad flags or a bad/missing outputs file
WAIT_TIMEOUT = 3  # `wait` gave up: some worker is still not ready
ROLLED_BACK = 4  # `redeploy` failed; the previous release is running again (or was never left)
ROLLBACK_FAILED = 5  # `redeploy` failed and so did the rollback: the worker needs a person
BOOT_FAILED = 6  # `wait`: cloud-init reports a host's first boot failed; waiting cannot help


class FleetError(Exception):
    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.message = message
        self.code = code
