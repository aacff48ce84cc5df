"""The CLI's fixed cost (issue 15): what starting `stripes` imports, checked by module list and
by import time relative to `import json` in the same test, never by an absolute wall clock; and
for a whole `process` run: what it loads, that its health probes go out before numpy loads, and
that OpenBLAS starts no threads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scripts.testkit.cli import ROOT, clean_env
from scripts.testkit.images import encoded, photo

# Not needed before a `process` command has an image to work on.
HEAVY = ("numpy", "PIL", "rich", "streamlit", "zlib_ng", "coordinator.imaging", "coordinator.engine", "coordinator.job")
# Never on the CLI's path: the transport is http.client (issue 11).
NEVER = ("requests", "urllib3", "charset_normalizer")
# The CLI's import time at most this many times `import json`'s, both whole interpreter
# imports (site included). Measured on the shared 2-core box: ~3x after issue 15, ~8-12x
# before (numpy and Pillow alone are ~6x).
IMPORT_RATIO_BOUND = 6.0
# Loaded by a one-image `process` run and not needed by it (each was measured on the 1 MP path:
# hashlib ~5 ms through secrets, uuid and libuuid, concurrent.futures; rich only on a terminal;
# OpenTelemetry only with an OTLP endpoint; boto3 only for a pooled stack).
NOT_FOR_ONE_IMAGE = (
    "secrets",
    "hashlib",
    "uuid",
    "concurrent.futures",
    "rich",
    "streamlit",
    "opentelemetry",
    "boto3",
    "botocore",
)
# Modules a one-image `process` run may load in all (307 after issue 15, about 150 of them
# numpy's): a guard against imports creeping back onto the path. Raise it only for a module the
# run needs, and say which in the commit.
PROCESS_MODULES_MAX = 330

MODULES_AFTER = """
import contextlib, json, sys
from coordinator import cli
with contextlib.suppress(SystemExit):
    cli.main({argv!r})
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


# A whole `process` run in a fresh interpreter. When numpy is first imported, the hook waits (at
# most PROBE_WAIT s, the GIL released) for a socket connection: one comes only if a probe was
# already under way, so `order` says whether the probes overlap numpy's import whatever the
# scheduling. Also noted: OPENBLAS_NUM_THREADS as numpy saw it, the modules, and how many
# threads the process has beside Python's own.
PROBE_WAIT = 5
PROCESS_RUN = """
import json, os, sys, threading
order, blas, connected = [], [], threading.Event()
def hook(event, args):
    if event == "socket.connect" and not connected.is_set():
        connected.set()
        order.append("connect")
    elif event == "import" and args[0] == "numpy" and "numpy" not in order:
        connected.wait({wait})
        order.append("numpy")
        blas.append(os.environ.get("OPENBLAS_NUM_THREADS"))
sys.addaudithook(hook)
from coordinator import cli
code = cli.main({argv!r})
native = len(os.listdir("/proc/self/task"))
print(json.dumps(dict(code=code, order=order, blas=blas, modules=sorted(sys.modules),
                      extra_threads=native - threading.active_count())), file=sys.stderr)
"""


def process_run(argv: list[str], env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROCESS_RUN.format(argv=argv, wait=PROBE_WAIT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(done.stderr.strip().splitlines()[-1])


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


@pytest.fixture(scope="module")
def one_image_run(local_fleet, tmp_path_factory) -> dict:
    """One 1 MP-ish JPEG through both local workers, PNG out, as `stripes process` runs it."""
    folder = tmp_path_factory.mktemp("one-image")
    (folder / "in.jpg").write_bytes(encoded(photo(640, 480, 15), "JPEG", quality=90))
    argv = ["process", str(folder / "in.jpg"), "-o", str(folder / "out.png"), "--workers", ",".join(local_fleet)]
    env = {name: value for name, value in clean_env(None).items() if name != "OPENBLAS_NUM_THREADS"}
    run = process_run(argv, env)
    assert run["code"] == 0 and (folder / "out.png").stat().st_size > 0
    return run


def test_a_process_run_loads_only_what_it_needs(one_image_run):
    modules = set(one_image_run["modules"])
    assert {"numpy", "PIL.Image", "coordinator.engine"} <= modules  # the run did load the engine
    assert loaded(modules, NEVER + NOT_FOR_ONE_IMAGE) == []
    assert len(modules) <= PROCESS_MODULES_MAX, f"{len(modules)} modules loaded: look for a new import"


def test_health_probes_go_out_before_numpy_loads(one_image_run):
    """The workers answer the probes while numpy and Pillow load (cli.process_command)."""
    assert one_image_run["order"] == ["connect", "numpy"]


def test_openblas_starts_no_threads(one_image_run):
    """OPENBLAS_NUM_THREADS=1 before numpy loads (cli.one_blas_thread), so no OpenBLAS thread
    spins beside the imports (unset, it starts one per core: one extra on a 2-core machine)."""
    assert one_image_run["blas"] == ["1"]
    assert one_image_run["extra_threads"] == 0
