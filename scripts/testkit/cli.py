"""Run the coordinator's command line as a user would, and check its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

from scripts.testkit.procs import ROOT


def clean_env(env: dict | None = None) -> dict:
    """This environment without any COORDINATOR_* setting, plus `env`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}, **(env or {})}


def run_cli(*args: str, env: dict | None = None, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        **{"cwd": ROOT, **kwargs},
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_error_line(done: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr
