"""The Streamlit page as a real process, and Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scripts import local
from scripts.testkit.procs import ROOT, RunningProcess, free_port, spawn_logged, wait_started

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Without the background-networking flags Chromium phones home at start, which this closed
# network refuses; QUIC and GPU are off for the same quiet, deterministic start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = ROOT / ".artifacts"


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401 - availability probe
    except ImportError:
        return "playwright is not installed (tests/requirements.txt)"
    return None


def start_page(tmp_dir: Path, workers: list[str], extra_env: dict | None = None, timeout: float = 60) -> RunningProcess:
    """`streamlit run coordinator/app.py` on a free loopback port, pointed at `workers`."""
    port = free_port()
    env = {**os.environ, "COORDINATOR_WORKERS": ",".join(workers), **(extra_env or {})}
    local_only = ["--server.address", "127.0.0.1", "--server.fileWatcherType", "none"]
    cmd = local.page_command(port, *local_only, "--client.toolbarMode", "minimal")
    log_path = tmp_dir / f"page-{port}.log"
    page = RunningProcess(spawn_logged(cmd, log_path, ROOT, env), log_path, f"http://127.0.0.1:{port}", env)
    return wait_started(page, page.url + "/_stcore/health", "the page did not start", timeout=timeout)


@contextmanager
def chromium_page(viewport: tuple[int, int] = (1400, 1000)) -> Iterator:
    """A fresh Playwright page in headless Debian Chromium (no browser download needed)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
            yield context.new_page()
        finally:
            browser.close()


RESULT_TIMEOUT_MS = 60_000


def wait_until_idle(page) -> None:
    """The rerun finished: Streamlit's running indicator is gone and the last elements are drawn."""
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=30_000)
    page.get_by_test_id("stDataFrame").wait_for(timeout=30_000)
    page.get_by_test_id("stDownloadButton").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)  # charts and the data grid draw on a canvas after they mount


def upload_and_process(page, url: str, name: str, data: bytes | Path, mime: str) -> float:
    """Upload, click Process, wait for the result image; returns seconds from click to result."""
    page.goto(url)
    page.get_by_text("Upload an image to start").wait_for(timeout=30_000)
    upload_file = data if isinstance(data, Path) else {"name": name, "mimeType": mime, "buffer": data}
    page.locator('input[type="file"]').set_input_files(files=[upload_file])  # a Path over 50 MB
    page.get_by_role("button", name=re.compile("Process")).wait_for(timeout=30_000)
    clicked = time.perf_counter()
    page.get_by_role("button", name=re.compile("Process")).click()
    page.get_by_text(re.compile(r"^Result · ")).wait_for(timeout=RESULT_TIMEOUT_MS)
    page.locator('[data-testid="stImage"] img').nth(1).wait_for(timeout=RESULT_TIMEOUT_MS)
    return time.perf_counter() - clicked
