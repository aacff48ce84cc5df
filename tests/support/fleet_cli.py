"""Run the fleet tool as a user does (a subprocess) and check its one-line errors."""

from __future__ import annotations

import subprocess
import sys

from scripts.testkit.procs import ROOT


def run_fleet(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.fleet", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_error_line(result: subprocess.CompletedProcess, code: int, fragment: str) -> str:
    """The exit code, no traceback, and a last stderr line `error: ...` naming the fragment
    (progress lines may come before it)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last, result.stderr
    return last
