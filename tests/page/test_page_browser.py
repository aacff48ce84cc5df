"""What a person sees: the real page process, real workers, headless Debian Chromium.

The time a 12 MP upload takes on the page is a benchmark, not a test: scripts/bench_page.py.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from scripts.testkit.browser import (
    ARTIFACTS,
    RESULT_TIMEOUT_MS,
    chromium_missing,
    chromium_page,
    start_page,
    upload_and_process,
    wait_until_idle,
)
from scripts.testkit.images import colourful_image, encoded
from scripts.testkit.procs import free_port
from tests.support.ci import skip_or_fail
from tests.support.hostile_worker import HostileWorker

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page_server(local_fleet, tmp_path_factory):
    reason = chromium_missing()
    if reason:
        skip_or_fail(reason)
    server = start_page(tmp_path_factory.mktemp("page"), local_fleet)
    yield server
    server.stop()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def record_hosts(page) -> list[str]:
    """Every host the page's browser asks for, from now on (the page must work offline)."""
    hosts: list[str] = []
    page.on("request", lambda request: hosts.append(urlsplit(request.url).hostname or request.url))
    return hosts


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
            files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image"}]
        )
        page.get_by_text("This file is not an image the page can read").wait_for(timeout=30_000)
        shot(page, "page-bad-file.png")
        assert page.get_by_text("Traceback").count() == 0
        assert page.locator('[data-testid="stException"]').count() == 0


def test_download_works_on_the_first_click_after_keyboard_slider_changes(page_server):
    """Issue 12.4: arrow keys on a slider, then Download at once. The click blurs the slider,
    which commits its value and reruns the page; a download whose file id was made per run
    (a deferred callable) was dropped by that rerun and the click did nothing. The result is
    then marked out of date, naming the change."""
    with chromium_page(viewport=(1400, 1700)) as page:
        media = []
        page.on(
            "response",
            lambda response: (
                media.append(
                    (
                        response.status,
                        response.request.method,
                        response.url[-12:],
                        response.headers.get("content-disposition"),
                    )
                )
                if "/media/" in response.url
                else None
            ),
        )
        page.on(
            "requestfailed",
            lambda request: (
                media.append(("failed", request.url[-12:], request.failure)) if "/media/" in request.url else None
            ),
        )
        upload_and_process(page, page_server.url, "keys.png", encoded(colourful_image(300, 200), "PNG"), "image/png")
        wait_until_idle(page)
        for round_number in range(4):
            page.get_by_role("slider").first.focus()
            for _ in range(12):
                page.keyboard.press("ArrowRight" if round_number % 2 == 0 else "ArrowLeft")
            with page.expect_download(timeout=15_000) as download_info:
                page.get_by_test_id("stDownloadButton").get_by_role("button").click()
            assert download_info.value.failure() is None, (round_number, download_info.value.failure(), media[-4:])
            assert download_info.value.suggested_filename == "keys-processed.png", (round_number, media[-4:])
            assert download_info.value.failure() is None, (round_number, download_info.value.failure())
            wait_until_idle(page)
        page.get_by_role("slider").first.focus()
        for _ in range(12):
            page.keyboard.press("ArrowRight")
        page.get_by_text("Outline strips with their worker and time").click()  # commits the slider
        page.get_by_text(
            re.compile(
                r"^Out of date: this result and its download were made before "
                r"you changed strips 2 → 14"
            )
        ).wait_for(timeout=30_000)
        page.get_by_text(re.compile(r"^Earlier result \(out of date\) · 300×200 px")).wait_for()
        wait_until_idle(page)
        shot(page, "page-stale.png")
    assert "Deferred file" not in page_server.log_text()


def test_worker_text_is_plain_and_nothing_is_fetched_off_loopback(local_fleet, tmp_path):
    """Issue 11.12: a worker whose /healthz fields hold Markdown and HTML (links, images on
    another host) puts no link or image on the page and makes the browser ask nothing off
    127.0.0.1; the favicon is served by the page itself (it came from a font CDN before)."""
    with HostileWorker(health="markdown") as hostile:
        server = start_page(tmp_path, [hostile.url, *local_fleet])
        try:
            with chromium_page(viewport=(1400, 2300)) as page:
                hosts = record_hosts(page)
                upload_and_process(
                    page, server.url, "plain.png", encoded(colourful_image(300, 200), "PNG"), "image/png"
                )
                wait_until_idle(page)
                assert page.get_by_test_id("stSidebar").get_by_test_id("stText").count() >= 4  # 3 cards
                page.get_by_text("Done: 2 strips").wait_for(timeout=10_000)
                shot(page, "page-hostile-worker.png")
                assert page.locator('a[href*="evil"]').count() == 0
                assert page.locator('img[src*="evil"]').count() == 0
                favicon = page.locator('link[rel~="icon"]').first.get_attribute("href") or ""
                assert favicon and "evil" not in favicon and not favicon.startswith(("https:", "//"))
        finally:
            server.stop()
    assert hosts and set(hosts) == {"127.0.0.1"}, sorted(set(hosts))


def test_a_worker_that_died_is_named_in_the_result_and_the_panel(worker_factory, tmp_path):
    """Issue 12.10: the panel said green (cached) when the job started; the result says the job
    ran on one runtime, and the panel is redrawn from a fresh health check."""
    python, nodejs = worker_factory("python"), worker_factory("nodejs")
    server = start_page(tmp_path, [python.url, nodejs.url])
    try:
        with chromium_page(viewport=(1400, 1700)) as page:
            page.goto(server.url)
            page.get_by_text("Upload an image to start").wait_for(timeout=30_000)
            assert page.get_by_test_id("stSidebar").get_by_text("Not available").count() == 0
            nodejs.stop()
            upload_and_process(page, server.url, "alone.png", encoded(colourful_image(300, 200), "PNG"), "image/png")
            wait_until_idle(page)
            page.get_by_text("This job ran on python only").wait_for(timeout=10_000)
            page.get_by_text(re.compile(r"nodejs at 127\.0\.0\.1:\d+: unreachable")).wait_for(timeout=10_000)
            page.get_by_test_id("stSidebar").get_by_text("Not available").wait_for(timeout=10_000)
            page.get_by_text("1 of 2").wait_for(timeout=10_000)  # workers used
            shot(page, "page-worker-died.png")
    finally:
        server.stop()


def test_a_control_changed_while_a_job_runs_keeps_the_job(page_server):
    """Issue 12.6: the controls live in a fragment, whose reruns wait for the running job (a full
    rerun used to stop it silently). The job finishes, and its result is marked out of date."""
    with chromium_page(viewport=(1400, 2200)) as page:
        page.goto(page_server.url)
        page.get_by_text("Upload an image to start").wait_for(timeout=30_000)
        page.locator('input[type="file"]').set_input_files(
            files=[{"name": "slow.png", "mimeType": "image/png", "buffer": encoded(colourful_image(3000, 2000), "PNG")}]
        )
        page.get_by_text("One operation for every strip").click()
        page.get_by_test_id("stSelectbox").first.click()
        page.get_by_role("option", name="blur").click()
        radius = page.get_by_role("slider").nth(1)  # strips, then the blur radius under the op
        radius.wait_for(timeout=30_000)
        radius.focus()
        page.keyboard.press("End")  # radius 50: a job of a few seconds
        page.get_by_role("button", name=re.compile("Process")).click()
        page.get_by_text(re.compile(r"^Processing: ")).first.wait_for(timeout=30_000)
        strips = page.get_by_role("slider").first
        strips.focus()
        page.keyboard.press("ArrowRight")
        page.get_by_text(re.compile(r"^Out of date: .*you changed strips 2 → 3")).wait_for(timeout=RESULT_TIMEOUT_MS)
        page.get_by_text(
            re.compile(
                r"^Earlier result \(out of date\) · 3,000×2,000 px · all 2 strips blur "
                r"\(radius 50\)"
            )
        ).wait_for(timeout=10_000)
        assert page.get_by_text("was cancelled").count() == 0
        wait_until_idle(page)
        shot(page, "page-changed-while-running.png")


def test_a_very_wide_thin_image_is_visible_and_offers_formats_that_fit(page_server):
    """Issue 11.14 / 12 polish: a 17,000×3 image shows as more than a line, and WebP (16,383 px
    a side at most) is not offered, with the reason, before anything is processed."""
    wide = Image.new("RGB", (17_000, 3), (40, 120, 200))
    with chromium_page(viewport=(1400, 1700)) as page:
        upload_and_process(page, page_server.url, "wide.bmp", encoded(wide, "BMP"), "image/bmp")
        page.get_by_text(
            re.compile(
                r"^WebP stores at most 16,383 px a side, and this image is 17,000×3 px: "
                r"download it as PNG or JPEG"
            )
        ).wait_for(timeout=10_000)
        wait_until_idle(page)
        assert page.get_by_role("button", name="WebP").count() == 0
        for image in page.locator('[data-testid="stImage"] img').all():
            assert image.evaluate("img => img.getBoundingClientRect().height") >= 20
        shot(page, "page-wide-image.png")


def test_process_is_disabled_with_no_worker(tmp_path):
    server = start_page(tmp_path, [f"http://127.0.0.1:{free_port()}"])
    try:
        with chromium_page() as page:
            page.goto(server.url)
            page.get_by_text("Upload an image to start").wait_for(timeout=30_000)
            page.locator('input[type="file"]').set_input_files(
                files=[
                    {"name": "idle.png", "mimeType": "image/png", "buffer": encoded(colourful_image(300, 200), "PNG")}
                ]
            )
            button = page.get_by_role("button", name=re.compile("Process"))
            button.wait_for(timeout=30_000)
            assert button.is_disabled()
            page.get_by_text("No worker is reachable").first.wait_for()
            shot(page, "page-no-worker.png")
    finally:
        server.stop()
