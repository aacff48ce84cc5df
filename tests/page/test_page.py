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
from coordinator.page_memory import SessionImages
from coordinator.page_overlay import StripBox, draw_strip_overlay, runtime_colour
from coordinator.page_text import (
    changed_settings,
    connection_note,
    event_line,
    human_bytes,
    input_problem,
    missing_workers,
    no_worker_message,
    plan_caption,
    runtimes_note,
    safe_name,
)
from coordinator.tls import TlsSettings
from scripts.testkit.procs import free_port
from scripts.testkit.tls import FLEET_TLS_NAME
from tests.support.hostile_worker import HostileWorker
from tests.support.page import RUN_TIMEOUT, colourful_png, open_page, process, texts, upload


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


def captions(page: AppTest) -> str:
    return "\n".join(caption for image in page.image for caption in image.captions)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def test_default_run_processes_top_grayscale_bottom_sepia(monkeypatch, local_fleet):
    page = open_page(monkeypatch, local_fleet)
    assert "2 configured, from COORDINATOR_WORKERS" in texts(page.sidebar.text)
    assert texts(page.sidebar.text).count("http · not encrypted") == 2
    assert "Upload an image" in texts(page.info)
    upload(page, "colour.png", colourful_png())
    assert "240×160 px" in texts(page.caption)
    assert len(page.image) == 1  # the original shows at once
    process(page)
    assert not page.error, texts(page.error)
    outcome = page.session_state["images"]["outcome"]
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
    assert "done by python" in texts(page.text) and "done by nodejs" in texts(page.text)
    assert page.status[0].label.startswith("Done: 2 strips in ")

    # Toggling the overlay, changing the output format or refreshing the workers reruns the
    # page but not the job: the same result object stays.
    page.checkbox(key="overlay").check().run()
    page.button_group(key="out_format").set_value("JPEG").run()
    assert page.slider(key="quality").value == 90  # shown for lossy formats only
    page.button(key="refresh_workers").click().run()
    assert not page.exception
    assert page.session_state["images"]["outcome"]["result"] is result
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
    result = page.session_state["images"]["outcome"]["result"]
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
    first = page.session_state["images"]["outcome"]["result"].strips[0]
    assert first.op == "grayscale" and first.runtime == "nodejs" and first.attempts == 2
    assert "failed on attempt 1" in texts(page.text)
    assert f"Strip 1, attempt 1: {locked.url}: token rejected by {locked.url}" in texts(page.text)
    assert "failed attempts" not in list(page.dataframe[0].value.columns)  # listed in full instead


def test_per_strip_dropdowns_are_in_strip_order(monkeypatch, local_fleet):
    """Four to a row, row by row: the page's order (Tab's, a screen reader's) is strip order;
    four tall columns gave 1, 5, 2, 6, 3, 4 (the browser test presses Tab)."""
    page = upload(open_page(monkeypatch, local_fleet), "colour.png", colourful_png())
    page.radio(key="plan_mode").set_value("An operation per strip").run()
    page.slider(key="strips").set_value(6).run()
    assert [box.key for box in page.selectbox] == [f"strip_op_{index}" for index in range(6)]


def test_no_worker_reachable_shows_guidance_and_process_is_disabled(monkeypatch):
    page = open_page(monkeypatch, [dead_url(), dead_url()])
    warnings = texts(page.warning)
    assert "make workers" in warnings and "clientCidr" in warnings
    assert "unreachable: connection refused" in texts(page.sidebar.text)
    upload(page, "colour.png", colourful_png())
    assert page.button(key="process").disabled  # nothing could run it
    assert page.slider(key="strips").value == 2  # the controls stay usable


def test_a_strip_no_worker_can_do_is_named_with_each_reason(monkeypatch, worker_factory):
    locked = worker_factory("python", env={"WORKER_TOKEN": "only-for-someone-else"})
    page = upload(open_page(monkeypatch, [locked.url, dead_url()]), "colour.png", colourful_png())
    process(page)
    errors = texts(page.error)  # whichever strip failed first names the job's failure
    assert (
        "Strip 1 of 2 (**grayscale**) could not be done by any worker" in errors
        or "Strip 2 of 2 (**sepia**) could not be done by any worker" in errors
    ), errors
    assert "token rejected" in texts(page.text) and "connection refused" in texts(page.text)
    assert "result" not in page.session_state["images"]["outcome"]
    assert page.button(key="process") is not None and page.slider(key="strips").value == 2


def test_one_row_image_is_one_strip(monkeypatch, local_fleet):
    page = upload(open_page(monkeypatch, local_fleet), "row.bmp", encoded_bmp(7, 1), "image/bmp")
    assert not page.slider and "one row high" in texts(page.caption)
    process(page)
    assert not page.error, texts(page.error)
    assert page.session_state["images"]["outcome"]["result"].ops == ["grayscale"]


def test_bad_upload_gets_one_clear_message(monkeypatch, local_fleet):
    page = upload(open_page(monkeypatch, local_fleet), "broken.png", b"this is not a picture at all")
    errors = texts(page.error)
    assert "This file is not an image the page can read" in errors
    assert "Traceback" not in errors
    assert not page.image


def test_upload_over_the_pixel_limit_is_refused_before_processing(monkeypatch, local_fleet):
    monkeypatch.setenv("COORDINATOR_MAX_PIXELS", "10000")
    page = upload(open_page(monkeypatch, local_fleet), "colour.png", colourful_png())
    error = texts(page.error)
    assert "This image is 240×160 px, 38,400 pixels; this page takes images up to 10,000 pixels." in error
    assert "Scale it down or crop it" in error and "COORDINATOR_MAX_PIXELS" not in error
    assert [button.key for button in page.button] == ["refresh_workers"]  # no Process button


def test_truncated_jpeg_is_explained_for_a_page_user(monkeypatch, local_fleet):
    whole = io.BytesIO()
    Image.open(io.BytesIO(colourful_png())).convert("RGB").save(whole, "JPEG", quality=90)
    page = upload(
        open_page(monkeypatch, local_fleet), "cut.jpg", whole.getvalue()[: len(whole.getvalue()) // 3], "image/jpeg"
    )
    errors = texts(page.error)
    assert "The file ends before the image does: it looks cut short" in errors
    assert "bytes not processed" not in errors and "truncated" not in errors


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


def test_a_result_is_marked_out_of_date_when_its_settings_change(monkeypatch, local_fleet):
    page = upload(open_page(monkeypatch, local_fleet), "colour.png", colourful_png())
    page.radio(key="plan_mode").set_value("One operation for every strip").run()
    page.selectbox(key="one_op").set_value("blur").run()
    page.slider(key="blur_radius").set_value(5.0).run()
    process(page)
    assert not page.warning and "Result · 240×160 px" in captions(page)
    page.slider(key="blur_radius").set_value(20.0).run()
    page.slider(key="strips").set_value(3).run()
    warning = texts(page.warning)
    assert "Out of date" in warning and "strips 2 → 3; blur radius 5 → 20" in warning
    assert "Earlier result (out of date) · 240×160 px · all 2 strips blur (radius 5)" in captions(page)
    page.button_group(key="out_format").set_value("JPEG").run()  # the download re-encodes: no note
    page.slider(key="strips").set_value(2).run()
    page.slider(key="blur_radius").set_value(5.0).run()
    assert not page.warning and "Result · 240×160 px" in captions(page)


def hostile_cards():
    """Run by AppTest.from_function: worker cards for health replies full of Markdown and HTML,
    as a worker could send them if discovery let them through."""
    from coordinator.discovery import WorkerStatus
    from coordinator.page_workers import worker_card

    evil = "http://evil.example"
    worker_card(
        WorkerStatus(
            "http://127.0.0.1:9",
            True,
            "**svc**",
            f"python]({evil}/phish)",
            f"[update now]({evil}/)",
            f"![x]({evil}/pixel.png)",
            ("grayscale", f"[sepia]({evil}/)"),
            2.0,
        )
    )
    worker_card(WorkerStatus("http://127.0.0.1:9", False, error=f"unhealthy: <img src={evil}/t.png> :red[x]"))


def test_worker_supplied_text_is_never_markdown(monkeypatch, local_fleet):
    page = AppTest.from_function(hostile_cards, default_timeout=RUN_TIMEOUT).run()
    assert not page.exception, page.exception
    markdown = texts(page.markdown)
    # our Markdown holds worker text only cut to safe characters: no link, image, tag or directive
    assert not any(mark in markdown for mark in ("](", "://", "<", ":red[x]", "**svc**"))
    assert "**pythonhttpevil.exampleph**" in markdown  # 24 characters at most
    plain = texts(page.text)
    assert "[update now](http://evil.example/)" in plain and "![x](http://evil.example/pixel.png)" in plain
    assert "<img src=http://evil.example/t.png> :red[x]" in plain and "[sepia](http://evil.example/)" in plain
    # and through the whole page, with a hostile worker configured beside real ones
    with HostileWorker(health="markdown") as hostile:
        page = open_page(monkeypatch, [hostile.url, *local_fleet])
    assert "evil" not in texts(page.sidebar.markdown) + texts(page.sidebar.caption)


def test_a_worker_down_at_job_time_is_named_and_the_panel_refreshed(monkeypatch, worker_factory, python_worker):
    doomed = worker_factory("nodejs")
    page = upload(open_page(monkeypatch, [python_worker.url, doomed.url]), "colour.png", colourful_png())
    assert "Not available" not in texts(page.sidebar.markdown)  # green, and cached for 5 s
    doomed.stop()
    process(page)
    assert not page.error, texts(page.error)
    assert "This job ran on **python** only: 1 configured worker could not be used" in texts(page.warning)
    assert f"nodejs at {doomed.url.split('//')[1]}: unreachable: connection refused" in texts(page.text)
    assert "Not available" in texts(page.sidebar.markdown)  # redrawn after the job
    assert page.metric[2].value == "1 of 2"


def test_wide_image_offers_only_formats_that_fit_and_shows_a_visible_preview(monkeypatch, local_fleet):
    page = upload(open_page(monkeypatch, local_fleet), "wide.bmp", encoded_bmp(17_000, 3), "image/bmp")
    assert page.button_group(key="out_format").options == ["PNG", "JPEG"]
    assert "WebP stores at most 16,383 px a side, and this image is 17,000×3 px: download it as PNG or JPEG" in texts(
        page.caption
    )
    preview = Image.open(io.BytesIO(page.session_state["images"]["upload"]["preview"]))
    assert preview.height * 600 / preview.width >= 30  # 30 px high at 600 px wide, 20 px at 400
    assert "rows stretched to show" in captions(page)


def test_a_new_upload_drops_the_old_image_and_result(monkeypatch, local_fleet):
    page = upload(open_page(monkeypatch, local_fleet), "first.png", colourful_png())
    process(page)
    held = page.session_state["images"]
    assert held["outcome"]["result"] is not None and "encoded" in held
    assert "data" not in held["upload"]  # raw bytes stay with Streamlit's uploader only
    upload(page, "second.png", colourful_png(120, 80))
    assert set(held) == {"upload"} and held["upload"]["width"] == 120


def test_a_gone_session_s_images_are_emptied_after_the_grace_period():
    now, active = [0.0], {"a": True, "b": True}
    dropped = []
    store = SessionImages(lambda session_id: active[session_id], grace=60, clock=lambda: now[0], on_gone=dropped.append)
    kept, gone = store.for_session("a"), store.for_session("b")
    kept["upload"], gone["upload"] = "pixels a", "pixels b"
    active["b"] = False
    assert store.reap() == 0  # gone for 0 s
    now[0] = 59.0
    assert store.reap() == 0 and gone == {"upload": "pixels b"}
    now[0] = 60.0
    assert store.reap() == 1 and gone == {} and kept == {"upload": "pixels a"} and dropped == ["b"]
    assert store.sessions() == 1 and store.for_session("b") == {}  # a reconnect starts empty


# ---------------------------------------------------------------- pure helpers


def strip(index, top, bottom, runtime="python", worker_ms=10.0, total_ms=25.0, failovers=()):
    return SimpleNamespace(
        index=index,
        top=top,
        bottom=bottom,
        op="grayscale",
        runtime=runtime,
        worker_url=f"http://127.0.0.1:500{index}",
        attempts=1 + len(failovers),
        worker_ms=worker_ms,
        total_ms=total_ms,
        transfer_ms=None if worker_ms is None else total_ms - worker_ms,
        failovers=list(failovers),
    )


def test_a_worker_card_says_how_the_worker_is_reached():
    fleet = TlsSettings("fleet CA PEM", FLEET_TLS_NAME)
    assert connection_note("https://10.0.1.5:5001", True, fleet) == f"https · verified {FLEET_TLS_NAME} (fleet CA)"
    assert connection_note("https://10.0.1.5:5001", True, TlsSettings("pem")) == "https · verified 10.0.1.5 (fleet CA)"
    mutual = TlsSettings("pem", FLEET_TLS_NAME, "client cert", "client key")
    assert connection_note("https://10.0.1.5:5001", True, mutual).endswith("(fleet CA) · mutual TLS")
    assert connection_note("https://10.0.1.5:5001", False, fleet) == "https · not verified"  # the reason follows
    assert connection_note("https://w.example:443", True, None) == "https · verified by the system's CAs"
    assert connection_note("http://127.0.0.1:5001", True, None) == "http · not encrypted"


def test_plan_caption_groups_runs_of_the_same_op():
    assert plan_caption(["grayscale", "grayscale", "sepia"]) == "strips 1–2 grayscale · strip 3 sepia"
    assert plan_caption(["sepia"] * 4) == "all 4 strips sepia"
    assert plan_caption(["grayscale", "sepia"] * 3) == "6 strips: 3 grayscale, 3 sepia"
    assert plan_caption(["blur", "invert"], {"radius": 2.5}) == "strip 1 blur (radius 2.5) · strip 2 invert"


def test_sizes_and_messages_are_plain_text():
    assert human_bytes(512) == "512 bytes" and human_bytes(2_500_000) == "2.5 MB"
    error = SimpleNamespace(strip_index=1, op="sepia", attempts=["http://a:1: connection refused"])
    head, reasons = no_worker_message(error, 4)
    assert head.startswith("Strip 2 of 4 (**sepia**)") and reasons == ["http://a:1: connection refused"]
    event = SimpleNamespace(
        kind="retry",
        index=0,
        op="blur",
        worker_url="http://h:1",
        runtime="nodejs](http://evil.example)",
        attempt=1,
        message="HTTP 503 busy: *try* later",
        elapsed_ms=3.0,
    )
    # shown with st.text, so kept literally; a runtime name is cut to safe characters
    assert "(HTTP 503 busy: *try* later)" in event_line(event)
    assert event_line(event).startswith("⚠ Strip 1 (blur): nodejshttpevil.example at h:1 failed")
    assert safe_name("![x](http://e/p.png)") == "xhttpep.png" and safe_name("") == "worker"
    assert "cut short" in input_problem(
        "image is truncated or corrupt (JPEG): image file is truncated (54 bytes not processed)"
    )
    assert "54 bytes" not in input_problem("image is truncated or corrupt (JPEG): (54 bytes not processed)")
    assert "120,000,000 pixels (120 MP)" in input_problem(
        "image has 120000000 pixels, over the limit of 50000000 (COORDINATOR_MAX_PIXELS)"
    )
    assert (
        event_line(
            SimpleNamespace(
                kind="start", index=0, op="x", worker_url=None, runtime=None, attempt=1, message="", elapsed_ms=0.0
            )
        )
        is None
    )


def test_timing_frame_orders_strips_and_tolerates_missing_worker_time():
    strips = [strip(1, 50, 100, "nodejs", worker_ms=None, total_ms=40.0), strip(0, 0, 50)]
    frame = timing_frame(strips)
    assert list(frame["strip"]) == ["strip 1 · python", "strip 2 · nodejs"]
    assert list(frame["in worker ms"]) == [10.0, 0.0] and list(frame["network ms"]) == [15.0, 40.0]
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


def test_timing_frame_keeps_encoding_and_waiting_out_of_the_network_part():
    queued = SimpleNamespace(**vars(strip(0, 0, 50, worker_ms=100.0, total_ms=1000.0)), encode_ms=250.0, queue_ms=600.0)
    frame = timing_frame([queued])
    row = frame.iloc[0]
    assert (row["in worker ms"], row["network ms"], row["encoding ms"], row["waiting ms"]) == (100, 50, 250, 600)


def test_changed_settings_name_what_changed():
    before = {"spec": "blur", "strips": 2, "params": {"radius": 5.0}}
    assert changed_settings(before, {"spec": "blur", "strips": 2, "params": {"radius": 5.0}}) == []
    assert changed_settings(before, {"spec": "blur", "strips": 3, "params": {"radius": 20.0}}) == [
        "strips 2 → 3",
        "blur radius 5 → 20",
    ]
    assert changed_settings(before, {"spec": "seed", "strips": 2, "params": {}}) == ["operations blur → seed"]


def test_missing_workers_name_the_runtime_and_reason():
    down = SimpleNamespace(url="http://127.0.0.1:5002", ok=False, runtime=None, error="unreachable: connection refused")
    used = SimpleNamespace(url="http://127.0.0.1:5000", ok=True, runtime="python", error=None)
    lines = missing_workers([used, down], [strip(0, 0, 10)], {"http://127.0.0.1:5002": "nodejs"})
    assert lines == [("nodejs", "nodejs at 127.0.0.1:5002: unreachable: connection refused")]
    assert runtimes_note([strip(0, 0, 10)], lines).startswith("This job ran on **python** only: 1 configured")
    assert runtimes_note([strip(0, 0, 10)], [("python", "python at h:1: down")]).startswith(
        "This job ran without 1 configured worker (below), on **python**."
    )


def test_transparency_is_kept_in_png_and_flattened_onto_white_for_jpeg(monkeypatch, local_fleet):
    """Issue 12.7: the ops change colour, the upload's alpha passes through to the download."""
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (160, 240, 4), dtype=np.uint8)
    rgba[:, :120, 3] = 0  # a transparent left half, as a logo's background
    rgba[:, 120:, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    page = upload(open_page(monkeypatch, local_fleet), "logo.png", buffer.getvalue())
    process(page)
    assert not page.error, texts(page.error)
    outcome = page.session_state["images"]["outcome"]
    assert (outcome["output"][..., 3] == rgba[..., 3]).all()
    assert (outcome["output"][..., :3] == outcome["result"].pixels).all()
    png = Image.open(io.BytesIO(page.session_state["images"]["encoded"]["data"]))
    assert png.mode == "RGBA" and (np.asarray(png)[..., 3] == rgba[..., 3]).all()
    assert "Transparency is kept." in texts(page.caption)

    page.button_group(key="out_format").set_value("JPEG").run()
    assert "transparent parts are flattened onto white" in texts(page.caption)
    jpeg = np.asarray(Image.open(io.BytesIO(page.session_state["images"]["encoded"]["data"])))
    # white, away from the edge where JPEG rings against the noise (16 px chroma blocks)
    assert jpeg.shape == (160, 240, 3) and jpeg[:, :96].min() >= 250
