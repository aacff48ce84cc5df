"""The CI rule for skips, for test modules and fixtures alike (importing conftest is pytest's
anti-pattern: it can be imported twice under two names)."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip for a missing system package; under CI that is a failure, since .ci/run installs it."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)
