"""What a person sees: the real page process, real workers, headless Debian Chromium.

The time a 12 MP upload takes on the page is a benchmark, not a test: scripts/bench_page.py.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace
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
from scripts.testkit.cli import run_cli
from scripts.testkit.images import colourful_image, encoded
from scripts.testkit.procs import free_port
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from tests.support.ci import skip_or_fail
from tests.support.hostile_worker import HostileWorker
from tests.support.tls_fleet import TlsFleet, process_statuses

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


def start_a_slow_job(page, url: str) -> None:
    """A 3000×2000 image, blur radius 50 on both strips (a job of a few seconds), Process
    clicked; returns once the job's progress shows."""
    page.goto(url)
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
    page.keyboard.press("End")  # radius 50
    page.get_by_role("button", name=re.compile("Process")).click()
    page.get_by_text(re.compile(r"^Processing: ")).first.wait_for(timeout=30_000)


def test_a_control_changed_while_a_job_runs_keeps_the_job(page_server):
    """Issue 12.6: the controls live in a fragment, whose reruns wait for the running job (a full
    rerun used to stop it silently). The job finishes, and its result is marked out of date."""
    with chromium_page(viewport=(1400, 2200)) as page:
        start_a_slow_job(page, page_server.url)
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
        assert page.get_by_text("The job you started was stopped").count() == 0
        wait_until_idle(page)
        shot(page, "page-changed-while-running.png")


def test_a_whole_page_rerun_during_a_job_stops_it_and_says_so(page_server):
    """The workers' Refresh sits outside the controls' fragment: a click reruns the whole page,
    which stops the running job at its next progress event. The page then says how far the job
    got, instead of dropping it silently, and has no result to show."""
    cancelled = page_server.log_text().count('"msg": "job cancelled"')
    with chromium_page(viewport=(1400, 2200)) as page:
        start_a_slow_job(page, page_server.url)
        page.get_by_test_id("stSidebar").get_by_role("button", name=re.compile("Refresh")).click()
        page.get_by_text(re.compile(r"^The job you started was stopped after \d of 2 strips: the whole page")).wait_for(
            timeout=RESULT_TIMEOUT_MS
        )
        page.get_by_text("The result appears here after").wait_for(timeout=10_000)
        shot(page, "page-job-stopped.png")
    wait_for_log(page_server, '"msg": "job cancelled"', cancelled + 1)  # the stopped run, at its next st call


def focused_label(page) -> str:
    """The label of the dropdown that has the keyboard focus (or the focused tag's name)."""
    return page.evaluate(
        """() => {
            const box = document.activeElement && document.activeElement.closest('[data-testid="stSelectbox"]');
            return box ? box.querySelector('[data-testid="stWidgetLabel"]').innerText.trim()
                       : String(document.activeElement && document.activeElement.tagName);
        }"""
    )


def test_tab_moves_through_the_strip_dropdowns_in_strip_order(page_server):
    """Six per-strip dropdowns, four to a row: Tab goes 1, 2, 3 ... 6 (four tall columns went 1, 5, 2, 6, 3, 4)."""
    with chromium_page(viewport=(1400, 1700)) as page:
        page.goto(page_server.url)
        page.get_by_text("Upload an image to start").wait_for(timeout=30_000)
        page.locator('input[type="file"]').set_input_files(
            files=[{"name": "tabs.png", "mimeType": "image/png", "buffer": encoded(colourful_image(300, 200), "PNG")}]
        )
        page.get_by_text("An operation per strip").click()
        page.get_by_text("Strip 2", exact=True).wait_for(timeout=30_000)
        page.get_by_role("slider").first.focus()
        for _ in range(4):
            page.keyboard.press("ArrowRight")  # 2 -> 6 strips
        page.get_by_text("Strip 6", exact=True).wait_for(timeout=30_000)
        wait_until_settled(page)
        first = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text("Strip 1", exact=True))
        first.locator("input").focus()
        order = [focused_label(page)]
        for _ in range(5):
            page.keyboard.press("Tab")
            order.append(focused_label(page))
    assert order == [f"Strip {number}" for number in range(1, 7)]


def wait_until_settled(page) -> None:
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=30_000)
    page.wait_for_timeout(500)


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


# ---------------------------------------------------------------- a TLS fleet (issue 16)

VERIFIED = f"https · verified {FLEET_TLS_NAME} (fleet CA)"
NOT_OUR_CA = "unreachable: TLS refused: the worker's certificate is not signed by the pinned fleet CA"


@pytest.fixture(scope="module")
def tls_page(worker_factory, tmp_path_factory):
    """Both runtimes on TLS with the fleet's certificate and token file, a third worker whose
    certificate another CA signed, and the page reading the outputs file that lists all three."""
    reason = chromium_missing()
    if reason:
        skip_or_fail(reason)
    folder = tmp_path_factory.mktemp("tls-page")
    fleet = TlsFleet(worker_factory, folder)
    good = [fleet.start("python"), fleet.start("nodejs")]
    stranger = fleet.start("python", authority=Authority("another CA"))
    server = start_page(folder, [], {"COORDINATOR_WORKERS_FILE": str(fleet.outputs)})
    yield SimpleNamespace(fleet=fleet, good=good, stranger=stranger, server=server, folder=folder)
    server.stop()


def cli_pixels(tls_page, source: bytes) -> np.ndarray:
    """What the command line makes of `source` with the page's outputs file (seed plan, 2 strips)."""
    path, out = tls_page.folder / "cli-in.png", tls_page.folder / "cli-out.png"
    path.write_bytes(source)
    done = run_cli("process", str(path), "-o", str(out), "--workers-file", str(tls_page.fleet.outputs), "--overwrite")
    assert done.returncode == 0, done.stderr
    return np.asarray(Image.open(out).convert("RGB"))


def downloaded_pixels(page) -> np.ndarray:
    with page.expect_download(timeout=30_000) as download_info:
        page.get_by_test_id("stDownloadButton").get_by_role("button").click()
    image = Image.open(download_info.value.path())
    image.load()
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_a_tls_fleet_works_on_the_page_and_each_card_says_how_it_is_reached(tls_page):
    """Issue 16: https workers verified against the pinned CA and the fleet's name; the one
    signed by another CA is named with the coordinator's one-line reason, as plain text; the
    download is the CLI's result to the pixel."""
    source = encoded(colourful_image(600, 400), "PNG")
    with chromium_page(viewport=(1400, 2000)) as page:
        upload_and_process(page, tls_page.server.url, "tls.png", source, "image/png")
        wait_until_idle(page)
        page.get_by_text(re.compile(r"^Done: 2 strips")).wait_for(timeout=10_000)
        sidebar = page.get_by_test_id("stSidebar")
        for worker in tls_page.good:
            card = sidebar.get_by_test_id("stText").filter(has_text=urlsplit(worker.url).netloc)
            assert card.count() == 1 and VERIFIED in card.inner_text(), sidebar.inner_text()
        stranger = sidebar.get_by_test_id("stText").filter(has_text=urlsplit(tls_page.stranger.url).netloc)
        assert stranger.count() == 1 and NOT_OUR_CA in stranger.inner_text(), sidebar.inner_text()
        assert "https · not verified" in stranger.inner_text()
        assert sidebar.get_by_test_id("stMarkdown").filter(has_text="TLS refused").count() == 0  # plain text only
        shot(page, "page-tls-fleet.png")
        pixels = downloaded_pixels(page)
    assert pixels.shape == (400, 600, 3)
    assert np.array_equal(pixels, cli_pixels(tls_page, source))


def test_a_token_rotated_while_the_page_is_open_is_picked_up_by_the_next_job(tls_page):
    """Issue 16: the outputs file and the workers switch tokens while a page session is open.
    Process reruns only the controls' fragment, which holds the config read before the rotation:
    its first requests get 401, the coordinator re-reads the outputs file and the job succeeds
    with the new token (the workers' logs show both)."""
    source = encoded(colourful_image(300, 200), "PNG")
    with chromium_page(viewport=(1400, 2000)) as page:
        upload_and_process(page, tls_page.server.url, "rotate.png", source, "image/png")
        wait_until_idle(page)
        done_before = tls_page.server.log_text().count('"msg": "job done"')
        tls_page.fleet.rotate(tls_page.good)
        marks = [len(worker.log_text()) for worker in tls_page.good]
        page.get_by_role("button", name=re.compile("Process")).click()
        wait_for_log(tls_page.server, '"msg": "job done"', done_before + 1)
        wait_until_idle(page)
        assert page.get_by_text("could not be done by any worker").count() == 0
        assert page.get_by_text("token rejected").count() == 0
        pixels = downloaded_pixels(page)
    after = [process_statuses(worker, mark) for worker, mark in zip(tls_page.good, marks, strict=True)]
    assert 401 in sum(after, []) and sum(after, []).count(200) >= 2, after
    assert '"msg": "job failed"' not in tls_page.server.log_text()
    assert np.array_equal(pixels, cli_pixels(tls_page, source))


def wait_for_log(server, marker: str, count: int, timeout: float = RESULT_TIMEOUT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while server.log_text().count(marker) < count:
        assert time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.2)
