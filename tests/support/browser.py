"""Kept for `from tests.support.browser import ...` lines not yet switched: the page launcher
lives in scripts/testkit/browser.py, which scripts/bench_page.py imports too."""
from scripts.testkit.browser import ARTIFACTS, chromium_missing, chromium_page, start_page  # noqa: F401
