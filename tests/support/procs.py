"""Kept so existing `from tests.support.procs import ...` lines work: the launcher lives in
scripts/testkit/procs.py, which benches and the soak import too (scripts never import tests)."""
from scripts.testkit.procs import (ROOT, RUNTIMES, RunningProcess, free_port, start_worker,  # noqa: F401
                                   wait_http_ok, worker_command)
