"""What a person sees: the real page process, real workers, headless Debian Chromium.

The time a 12 MP upload takes on the page is a benchmark, not a test: scripts/bench_page.py.
"""
from __future__ import annotations

import io
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import skip_or_fail
from tests.support.browser import ARTIFACTS, chromium_missing, chromium_page, start_page

pytestmark = pytest.mark.browser
RESULT_TIMEOUT_MS = 60_000


def colourful_image(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, 255 - (x + y) * 255 // (width + height)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def page_server(local_fleet, tmp_path_factory):
    reason = chromium_missing()
    if reason:
        skip_or_fail(reason)
    server = start_page(tmp_path_factory.mktemp("page"), local_fleet)
    yield server
    server.stop()


def wait_until_idle(page) -> None:
    """The rerun finished: Streamlit's running indicator is gone and the last elements are drawn."""
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=30_000)
    page.get_by_test_id("stDataFrame").wait_for(timeout=30_000)
    page.get_by_test_id("stDownloadButton").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)  # charts and the data grid draw on a canvas after they mount


def upload_and_process(page, url: str, name: str, data: bytes, mime: str) -> float:
    """Upload, click Process, wait for the result image; returns seconds from click to result."""
    page.goto(url)
    page.get_by_text("Upload an image to start").wait_for(timeout=30_000)
    page.locator('input[type="file"]').set_input_files(files=[{"name": name, "mimeType": mime, "buffer": data}])
    page.get_by_role("button", name=re.compile("Process")).wait_for(timeout=30_000)
    clicked = time.perf_counter()
    page.get_by_role("button", name=re.compile("Process")).click()
    page.get_by_text(re.compile(r"^Result · ")).wait_for(timeout=RESULT_TIMEOUT_MS)
    page.locator('[data-testid="stImage"] img').nth(1).wait_for(timeout=RESULT_TIMEOUT_MS)
    return time.perf_counter() - clicked


def test_upload_process_download_in_chromium(page_server):
    original = colourful_image(600, 400)
    with chromium_page(viewport=(1400, 1700)) as page:
        upload_and_process(page, page_server.url, "colourful.png", encoded(original, "PNG"), "image/png")
        result_image = page.locator('[data-testid="stImage"] img').nth(1)
        assert result_image.evaluate("img => img.complete && img.naturalWidth > 0")
        page.get_by_text("Done: 2 strips").wait_for(timeout=10_000)
        page.get_by_text("Outline strips with their worker and time").click()
        wait_until_idle(page)
        page.get_by_text(re.compile(r"^Result · 600×400 px")).wait_for(timeout=10_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)

        with page.expect_download(timeout=30_000) as download_info:
            page.get_by_test_id("stDownloadButton").get_by_role("button").click()
        download = download_info.value
        assert download.suggested_filename == "colourful-processed.png"
        downloaded = Image.open(download.path())
        downloaded.load()
    assert downloaded.format == "PNG" and downloaded.size == (600, 400)
    pixels = np.asarray(downloaded.convert("RGB")).astype(int)
    top, bottom = pixels[:200], pixels[200:]
    assert (top[..., 0] == top[..., 1]).all() and (top[..., 1] == top[..., 2]).all()  # gray
    assert (bottom[..., 0] >= bottom[..., 1]).all() and (bottom[..., 1] >= bottom[..., 2]).all()  # sepia
    assert (bottom[..., 0] > bottom[..., 2]).mean() > 0.9


def test_bad_file_shows_a_message_not_a_traceback(page_server):
    with chromium_page() as page:
        page.goto(page_server.url)
        page.get_by_text("Upload an image to start").wait_for(timeout=30_000)
        page.locator('input[type="file"]').set_input_files(
            files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image"}])
        page.get_by_text("That file can't be used").wait_for(timeout=30_000)
        assert page.get_by_text("Traceback").count() == 0
        assert page.locator('[data-testid="stException"]').count() == 0
