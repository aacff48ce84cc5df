"""The Streamlit page as a real process, and Debian's headless Chromium driven by Playwright."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.procs import ROOT, RunningProcess, free_port, wait_http_ok

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Without the background-networking flags Chromium phones home at start, which this closed
# network refuses; QUIC and GPU are off for the same quiet, deterministic start.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = ROOT / ".artifacts"


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (tests/requirements.txt)"
    return None


def start_page(tmp_dir: Path, workers: list[str], extra_env: dict | None = None,
               timeout: float = 60) -> RunningProcess:
    """`streamlit run coordinator/app.py` on a free loopback port, pointed at `workers`."""
    port = free_port()
    env = {**os.environ, "COORDINATOR_WORKERS": ",".join(workers), **(extra_env or {})}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "coordinator" / "app.py"),
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"]
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp_dir / f"page-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    page = RunningProcess(proc, log_path, f"http://127.0.0.1:{port}", env)
    try:
        wait_http_ok(page.url + "/_stcore/health", proc, timeout=timeout)
    except RuntimeError as exc:
        page.stop()
        raise RuntimeError(f"the page did not start: {exc}\n{page.log_text()[-3000:]}")
    return page


@contextmanager
def chromium_page(viewport: tuple[int, int] = (1400, 1000)) -> Iterator:
    """A fresh Playwright page in headless Debian Chromium (no browser download needed)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                          accept_downloads=True)
            yield context.new_page()
        finally:
            browser.close()
