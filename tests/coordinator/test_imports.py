"""The CLI's fixed cost (issue 15): what starting `stripes` imports, checked by module list and
by import time relative to `import json` in the same test, never by an absolute wall clock."""

from __future__ import annotations

import json
import subprocess
import sys

from scripts.testkit.cli import ROOT, clean_env

# Not needed before a `process` command has an image to work on.
HEAVY = ("numpy", "PIL", "rich", "streamlit", "zlib_ng", "coordinator.imaging", "coordinator.engine", "coordinator.job")
# Never on the CLI's path: the transport is http.client (issue 11).
NEVER = ("requests", "urllib3", "charset_normalizer")
# The CLI's import time at most this many times `import json`'s, both whole interpreter
# imports (site included). Measured on the shared 2-core box: ~3x after issue 15, ~8-12x
# before (numpy and Pillow alone are ~6x).
IMPORT_RATIO_BOUND = 6.0

MODULES_AFTER = """
import contextlib, json, sys
from coordinator import cli
with contextlib.suppress(SystemExit):
    cli.main({argv!r})
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def modules_after(argv: list[str]) -> set[str]:
    """Modules loaded once `cli.main(argv)` has returned (or exited) in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", MODULES_AFTER.format(argv=argv)],
        cwd=ROOT,
        env=clean_env(None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if name in modules or any(m.startswith(name + ".") for m in modules))


def import_time_us(statement: str) -> int:
    """Sum of the top-level cumulative times `python -X importtime` reports for a statement."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        cwd=ROOT,
        env=clean_env(None),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    total = 0
    for line in done.stderr.splitlines():
        fields = line.split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[1].strip().isdigit():
            total += int(fields[1]) if not fields[2].startswith("  ") else 0
    return total


def test_help_version_and_usage_errors_import_nothing_heavy():
    for argv in (["--help"], ["--version"], ["process", "--help"], ["process", "in.jpg"]):
        modules = modules_after(argv)
        assert "coordinator.cli" in modules, argv
        assert loaded(modules, HEAVY + NEVER) == [], argv


def test_workers_command_needs_neither_numpy_nor_pillow():
    modules = modules_after(["workers", "--workers", "http://127.0.0.1:9"])
    assert "coordinator.discovery" in modules
    assert loaded(modules, HEAVY + NEVER) == []


def test_nothing_in_the_coordinator_imports_requests():
    code = (
        "import json, sys, coordinator.cli, coordinator.engine, coordinator.job; print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env(None), capture_output=True, text=True, timeout=60
    )
    modules = set(json.loads(done.stdout))
    assert "numpy" in modules  # the engine does load it: the check below is not vacuous
    assert loaded(modules, NEVER) == []


def test_cli_import_time_stays_a_small_multiple_of_json():
    cli = min(import_time_us("import coordinator.cli") for _ in range(3))
    baseline = min(import_time_us("import json") for _ in range(3))
    assert baseline > 0
    assert cli / baseline <= IMPORT_RATIO_BOUND, f"import coordinator.cli {cli} us vs import json {baseline} us"
