"""The Streamlit page's logic with streamlit.testing.v1.AppTest, against real local workers.

AppTest in Streamlit 1.67 drives st.file_uploader itself (`set_value`), so the page needs no
test-only upload seam. The page's pure helpers (page_text, page_chart, page_overlay) are checked
at the end.
"""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from coordinator.page_chart import strip_table, timing_frame
from coordinator.page_overlay import StripBox, draw_strip_overlay, runtime_colour
from coordinator.page_text import event_line, human_bytes, no_worker_message, plan_caption
from tests.support.procs import ROOT, free_port

APP = str(ROOT / "coordinator" / "app.py")
RUN_TIMEOUT = 60


def colourful_png(width: int = 240, height: int = 160) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def encoded_bmp(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buffer, "BMP")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def fresh_cache():
    """Worker health is cached across reruns (and AppTests) in this process; start clean."""
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def open_page(monkeypatch, workers: list[str]) -> AppTest:
    monkeypatch.setenv("COORDINATOR_WORKERS", ",".join(workers))
    for name in ("COORDINATOR_WORKERS_FILE", "COORDINATOR_PULUMI_STACK", "COORDINATOR_WORKER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    page = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run()
    assert not page.exception, page.exception
    return page


def upload(page: AppTest, name: str, data: bytes, mime: str = "image/png") -> AppTest:
    page.file_uploader[0].set_value((name, data, mime)).run()
    assert not page.exception, page.exception
    return page


def process(page: AppTest) -> AppTest:
    page.button(key="process").click().run()
    assert not page.exception, page.exception
    return page


def texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)


def captions(page: AppTest) -> str:
    return "\n".join(caption for image in page.image for caption in image.captions)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_default_run_processes_top_grayscale_bottom_sepia(monkeypatch, local_fleet):
    page = open_page(monkeypatch, local_fleet)
    assert "2 configured, from COORDINATOR\\_WORKERS" in texts(page.sidebar.caption)
    assert "Upload an image" in texts(page.info)
    upload(page, "colour.png", colourful_png())
    assert "240×160 px" in texts(page.caption)
    assert len(page.image) == 1  # the original shows at once
    process(page)
    assert not page.error, texts(page.error)
    outcome = page.session_state["outcome"]
    result = outcome["result"]
    assert result.ops == ["grayscale", "sepia"]
    assert [strip.runtime for strip in result.strips] == ["python", "nodejs"]
    top, bottom = result.pixels[:80].astype(int), result.pixels[80:].astype(int)
    assert (top[..., 0] == top[..., 1]).all() and (top[..., 1] == top[..., 2]).all()
    assert (bottom[..., 0] >= bottom[..., 1]).all() and (bottom[..., 1] >= bottom[..., 2]).all()
    assert len(page.image) == 2  # original and result side by side
    assert "Result · 240×160 px · strip 1 grayscale · strip 2 sepia" in captions(page)
    assert "Original · 240×160 px" in captions(page)
    assert len(page.download_button) == 1
    assert "done by python" in texts(page.markdown) and "done by nodejs" in texts(page.markdown)

    # Toggling the overlay, changing the output format or refreshing the workers reruns the
    # page but not the job: the same result object stays.
    page.checkbox(key="overlay").check().run()
    page.button_group(key="out_format").set_value("JPEG").run()
    assert page.slider(key="quality").value == 90  # shown for lossy formats only
    page.button(key="refresh_workers").click().run()
    assert not page.exception
    assert page.session_state["outcome"]["result"] is result
    assert len(page.image) == 2
    assert page.download_button[0].label == "Download JPEG"


def test_per_strip_plan_with_blur_radius(monkeypatch, local_fleet):
    page = upload(open_page(monkeypatch, local_fleet), "colour.png", colourful_png())
    page.radio(key="plan_mode").set_value("An operation per strip").run()
    page.slider(key="strips").set_value(3).run()
    for index, op in enumerate(["invert", "blur", "sepia"]):
        page.selectbox(key=f"strip_op_{index}").set_value(op)
    page.run()
    page.slider(key="blur_radius").set_value(3.0).run()  # shown only because a strip blurs
    process(page)
    assert not page.error, texts(page.error)
    result = page.session_state["outcome"]["result"]
    assert result.ops == ["invert", "blur", "sepia"]
    assert [strip.index for strip in result.strips] == [0, 1, 2]
    original = np.asarray(Image.open(io.BytesIO(colourful_png())).convert("RGB"))
    top = slice(result.strips[0].top, result.strips[0].bottom)
    assert (result.pixels[top] == 255 - original[top]).all()
    assert "strip 1 invert · strip 2 blur (radius 3) · strip 3 sepia" in captions(page)


def test_failover_is_shown_when_a_worker_rejects_the_strip(monkeypatch, worker_factory, nodejs_worker):
    locked = worker_factory("python", env={"WORKER_TOKEN": "only-for-someone-else"})
    page = upload(open_page(monkeypatch, [locked.url, nodejs_worker.url]), "colour.png", colourful_png())
    process(page)
    assert not page.error, texts(page.error)
    first = page.session_state["outcome"]["result"].strips[0]
    assert first.op == "grayscale" and first.runtime == "nodejs" and first.attempts == 2
    assert "failed on attempt 1" in texts(page.markdown)
    assert "token rejected" in texts(page.markdown)


def test_no_worker_reachable_shows_guidance_and_a_named_strip(monkeypatch):
    page = open_page(monkeypatch, [dead_url(), dead_url()])
    warnings = texts(page.warning)
    assert "make workers" in warnings and "clientCidr" in warnings
    assert "unreachable: connection refused" in texts(page.sidebar.caption)
    upload(page, "colour.png", colourful_png())
    process(page)
    errors = texts(page.error)
    assert "Strip 1 of 2 (**grayscale**) could not be done by any worker" in errors
    assert "connection refused" in errors
    assert "result" not in page.session_state["outcome"]
    # Still usable: the controls and the Process button are there for another try.
    assert page.button(key="process") is not None and page.slider(key="strips").value == 2


def test_one_row_image_is_one_strip(monkeypatch, local_fleet):
    page = upload(open_page(monkeypatch, local_fleet), "row.bmp", encoded_bmp(7, 1), "image/bmp")
    assert not page.slider and "one row high" in texts(page.caption)
    process(page)
    assert not page.error, texts(page.error)
    assert page.session_state["outcome"]["result"].ops == ["grayscale"]


def test_bad_upload_gets_one_clear_message(monkeypatch, local_fleet):
    page = upload(open_page(monkeypatch, local_fleet), "broken.png", b"this is not a picture at all")
    errors = texts(page.error)
    assert "That file can't be used: input is not an image" in errors
    assert "Traceback" not in errors
    assert not page.image


def test_upload_over_the_pixel_limit_is_refused_before_processing(monkeypatch, local_fleet):
    monkeypatch.setenv("COORDINATOR_MAX_PIXELS", "10000")
    page = upload(open_page(monkeypatch, local_fleet), "colour.png", colourful_png())
    assert "over the limit of 10000 (COORDINATOR_MAX_PIXELS)" in texts(page.error)
    assert [button.key for button in page.button] == ["refresh_workers"]  # no Process button


def test_unexpected_error_is_one_line_not_a_traceback(monkeypatch, local_fleet):
    import coordinator.discovery

    def broken_discover(config, session=None):
        raise RuntimeError("health table exploded\nsecond line of detail")

    # The one stand-in in this file: no real part fails this way, and the top-level catch must hold.
    monkeypatch.setattr(coordinator.discovery, "discover", broken_discover)
    page = open_page(monkeypatch, local_fleet)
    assert "Something went wrong (RuntimeError: health table exploded)" in texts(page.error)
    assert "second line" not in texts(page.error)


def test_bad_config_names_the_setting(monkeypatch):
    page = open_page(monkeypatch, ["ftp://nowhere"])
    assert "COORDINATOR_WORKERS" in texts(page.error)
    assert not page.file_uploader


# ---------------------------------------------------------------- pure helpers


def strip(index, top, bottom, runtime="python", worker_ms=10.0, total_ms=25.0, failovers=()):
    return SimpleNamespace(index=index, top=top, bottom=bottom, op="grayscale", runtime=runtime,
                           worker_url=f"http://127.0.0.1:500{index}", attempts=1 + len(failovers),
                           worker_ms=worker_ms, total_ms=total_ms,
                           transfer_ms=None if worker_ms is None else total_ms - worker_ms,
                           failovers=list(failovers))


def test_plan_caption_groups_runs_of_the_same_op():
    assert plan_caption(["grayscale", "grayscale", "sepia"]) == "strips 1–2 grayscale · strip 3 sepia"
    assert plan_caption(["sepia"] * 4) == "all 4 strips sepia"
    assert plan_caption(["grayscale", "sepia"] * 3) == "6 strips: 3 grayscale, 3 sepia"
    assert plan_caption(["blur", "invert"], {"radius": 2.5}) == "strip 1 blur (radius 2.5) · strip 2 invert"


def test_sizes_and_messages_are_plain_text():
    assert human_bytes(512) == "512 bytes" and human_bytes(2_500_000) == "2.5 MB"
    error = SimpleNamespace(strip_index=1, op="sepia", attempts=["http://a:1: connection refused"])
    message = no_worker_message(error, 4)
    assert message.startswith("Strip 2 of 4 (**sepia**)") and "connection refused" in message
    event = SimpleNamespace(kind="retry", index=0, op="blur", worker_url="http://h:1", runtime="nodejs",
                            attempt=1, message="HTTP 503 busy: *try* later", elapsed_ms=3.0)
    assert "\\*try\\*" in event_line(event)  # worker text is not Markdown
    assert event_line(SimpleNamespace(kind="start", index=0, op="x", worker_url=None, runtime=None,
                                      attempt=1, message="", elapsed_ms=0.0)) is None


def test_timing_frame_orders_strips_and_tolerates_missing_worker_time():
    strips = [strip(1, 50, 100, "nodejs", worker_ms=None, total_ms=40.0), strip(0, 0, 50)]
    frame = timing_frame(strips)
    assert list(frame["strip"]) == ["strip 1 · python", "strip 2 · nodejs"]
    assert list(frame["processing ms"]) == [10.0, 0.0] and list(frame["transfer ms"]) == [15.0, 40.0]
    table = strip_table(strips + [strip(2, 100, 120, failovers=["http://x:1: token rejected"])])
    assert list(table["rows"]) == ["0–49", "50–99", "100–119"]
    assert table["failed attempts"].iloc[2] == "http://x:1: token rejected"


def test_overlay_outlines_each_strip_in_its_runtime_colour():
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    boxes = [StripBox(0, 200, "1 · python", "python"), StripBox(200, 400, "2 · nodejs", "nodejs")]
    out = draw_strip_overlay(image, boxes, source_height=400)  # a half-size preview
    assert out.size == image.size and image.getpixel((150, 50)) == (255, 255, 255)  # input untouched
    assert out.getpixel((299, 50)) == runtime_colour("python")  # right edge of strip 1
    assert out.getpixel((299, 150)) == runtime_colour("nodejs")  # right edge of strip 2
    assert out.getpixel((150, 50)) == (255, 255, 255)  # the middle stays visible
