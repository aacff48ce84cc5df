"""The master page: upload an image, choose what each strip gets, watch the workers do it.

Run from the repo root: `streamlit run coordinator/app.py` (or `make run`). The page is thin: the
engine (coordinator.engine / plan / discovery / imaging) does the planning, dispatch and stitching
for the page and the CLI alike; this file only asks for input and shows what came back.
"""
from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

# `streamlit run coordinator/app.py` puts coordinator/ on sys.path, not the repo root.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402
from PIL import Image  # noqa: E402

from coordinator import discovery, engine, imaging, plan  # noqa: E402
from coordinator.config import CoordinatorConfig, load_config  # noqa: E402
from coordinator.errors import ConfigError, InputError, NoWorkerError  # noqa: E402
from coordinator.page_chart import (PARTS, chart_height, strip_table, timing_frame,  # noqa: E402
                                    worker_host)
from coordinator.page_log import page_logger  # noqa: E402
from coordinator.page_overlay import StripBox, draw_strip_overlay  # noqa: E402
from coordinator.page_text import (escape_markdown, event_line, image_summary, no_worker_message,  # noqa: E402
                                   plan_caption, status_label)

log = page_logger()

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"]
MAX_STRIPS = 16
PREVIEW_WIDTH = 1200  # previews are 1200-2400 px wide copies; the download is full size
PLAN_SEED = "Original demo: grayscale and sepia, alternating from the top"
PLAN_ONE = "One operation for every strip"
PLAN_PER_STRIP = "An operation per strip"
FORMATS = {"PNG": "png", "JPEG": "jpeg", "WebP": "webp"}
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
NO_WORKER_HELP = (
    "No worker is reachable. Locally, start them with `make workers` (or `make run`). "
    "On AWS, after `pulumi up`, check that the security group's `clientCidr` includes this "
    "machine's address, and that the instances passed their health checks."
)


# ---------------------------------------------------------------- workers


@st.cache_data(ttl=5, show_spinner=False)
def cached_discover(config: CoordinatorConfig) -> list:
    """Health of every configured worker, asked at most every 5 s per config (reruns are frequent)."""
    return discovery.discover(config)


@st.cache_resource(show_spinner=False)
def shared_session():
    """One keep-alive connection pool for every job of this page process: to remote workers a
    new TCP (and TLS) handshake per strip would cost round trips each time."""
    return engine.make_session(MAX_STRIPS)


def workers_panel(config: CoordinatorConfig) -> list:
    with st.sidebar:
        st.header("Workers")
        if st.button("Refresh", icon=":material/refresh:", key="refresh_workers"):
            cached_discover.clear()
        statuses = cached_discover(config)
        st.caption(f"{len(config.workers)} configured, from {escape_markdown(config.source)}")
        for status in statuses:
            with st.container(border=True):
                host = worker_host(status.url)
                if status.ok:
                    st.markdown(f":green[:material/check_circle:] **{status.runtime or status.service}** "
                                f"`{host}`")
                    st.caption(f"{status.service} {status.version or ''} · "
                               f"{status.latency_ms:.0f} ms · primary {status.primary}  \n"
                               f"ops: {', '.join(status.operations) or 'none'}")
                else:
                    st.markdown(f":red[:material/error:] `{host}`")
                    st.caption(escape_markdown(status.error or "no answer"))
        if not any(status.ok for status in statuses):
            st.caption(":material/cloud_off: None reachable: see the note on the page.")
    return statuses


# ---------------------------------------------------------------- upload


def preview_of(image: Image.Image) -> Image.Image:
    """A screen-sized copy: the browser gets a small JPEG instead of megapixels (and TIFF shows).
    Image.reduce averages whole blocks in C: a 12 MP result shrinks in tens of milliseconds."""
    factor = image.width // PREVIEW_WIDTH
    return image.reduce(factor) if factor >= 2 else image


def jpeg_bytes(image: Image.Image) -> bytes:
    """Encoded once and kept: st.image re-encodes a PIL image on every rerun, bytes it sends as-is."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def read_upload(config: CoordinatorConfig):
    """The uploaded image as a dict (bytes, size, preview), decoded once per upload; None if none.
    Raises InputError for a file that is not an image the engine accepts."""
    uploaded = st.file_uploader("Image", type=UPLOAD_TYPES,
                                help="JPEG, PNG, WebP, BMP, TIFF or GIF (first frame).")
    if uploaded is None:
        st.session_state.pop("upload", None)
        return None
    upload = st.session_state.get("upload")
    if upload is None or upload["file_id"] != uploaded.file_id:
        st.session_state.pop("upload", None)
        st.session_state.pop("outcome", None)  # a result belongs to the image it came from
        data = uploaded.getvalue()
        pixels = imaging.decode_pixels(data, config.max_pixels)  # once: run_job reuses it
        image = Image.fromarray(pixels)
        preview = jpeg_bytes(preview_of(image))
        upload = {"file_id": uploaded.file_id, "name": uploaded.name, "data": data, "pixels": pixels,
                  "width": image.width, "height": image.height, "preview": preview}
        st.session_state["upload"] = upload
    return upload


# ---------------------------------------------------------------- controls


def offered_ops(statuses: list) -> set[str]:
    return {op for status in statuses if status.ok for op in status.operations}


def op_label(offered: set[str]):
    return lambda op: op if op in offered else f"{op} (no reachable worker offers it)"


def controls(upload: dict, statuses: list) -> dict:
    ops = list(plan.OPERATIONS)
    fmt = op_label(offered_ops(statuses))
    max_strips = max(1, min(MAX_STRIPS, upload["height"]))
    left, right = st.columns([3, 2], gap="large")
    with left:
        mode = st.radio("Plan", [PLAN_SEED, PLAN_ONE, PLAN_PER_STRIP], key="plan_mode")
        if max_strips == 1:  # a slider cannot range over one value
            strips = 1
            st.caption("1 strip: the image is one row high.")
        else:
            strips = st.slider("Strips", 1, max_strips, min(2, max_strips), key="strips",
                               help="Horizontal strips, sent to the workers concurrently.")
        if mode == PLAN_SEED:
            spec = "seed"
        elif mode == PLAN_ONE:
            spec = st.selectbox("Operation", ops, key="one_op", format_func=fmt)
        else:
            chosen = []
            columns = st.columns(4)
            for index in range(strips):
                default = plan.SEED_OPS[index % len(plan.SEED_OPS)]  # as the demo, until changed
                with columns[index % 4]:
                    chosen.append(st.selectbox(f"Strip {index + 1}", ops, key=f"strip_op_{index}",
                                               index=ops.index(default) if default in ops else 0,
                                               format_func=fmt))
            spec = ",".join(chosen)
    with right:
        params = {}
        if "blur" in spec.split(","):
            params["radius"] = st.slider("Blur radius", 0.5, 50.0, 2.0, step=0.5, key="blur_radius")
        label = st.segmented_control("Output format", list(FORMATS), default="PNG",
                                     key="out_format", required=True)
        out_format = FORMATS[label or "PNG"]
        quality = 90
        if out_format in ("jpeg", "webp"):
            quality = st.slider("Quality", 1, 100, 90, key="quality")
    return {"spec": spec, "strips": strips, "params": params, "format": out_format, "quality": quality}


# ---------------------------------------------------------------- processing


def process(upload: dict, config: CoordinatorConfig, choice: dict) -> None:
    """Run the job, showing each strip as it comes back; keep the outcome in the session."""
    total = choice["strips"]
    lines: list[str] = []
    done = 0
    status = st.status(status_label(0, total), expanded=True)

    def on_event(event) -> None:  # the engine calls this on this (the script's) thread
        nonlocal done
        done += event.kind == "done"
        line = event_line(event)
        if line:
            lines.append(line)
            status.markdown(line)
        status.update(label=status_label(done, total, event))

    started = time.perf_counter()
    try:
        result = engine.run_job(upload["data"], config, plan=choice["spec"], strips=total,
                                params=choice["params"] or None, on_event=on_event,
                                session=shared_session(), pixels=upload["pixels"])
    except NoWorkerError as exc:
        message = no_worker_message(exc, total)
        where = "the plan" if exc.strip_index is None else f"strip {exc.strip_index + 1}"
        status.update(label=f"Failed at {where}", state="error", expanded=bool(lines))
        st.session_state["outcome"] = {"error": message, "lines": lines}
        log.warning("job failed", extra={"fields": {"error": str(exc), "strip": exc.strip_index, "op": exc.op}})
        return
    except InputError as exc:
        log.info("job refused", extra={"fields": {"error": str(exc)}})
        status.update(label="Not processed", state="error", expanded=False)
        st.session_state["outcome"] = {"error": str(exc), "lines": lines}
        return
    job_ms = (time.perf_counter() - started) * 1000
    retries = sum(strip.attempts - 1 for strip in result.strips)
    summary = (f"Done: {len(result.strips)} strips in {result.elapsed_ms:.0f} ms"
               + (f" · {retries} retried" if retries else ""))
    status.update(label=summary, state="complete", expanded=False)
    # frombuffer shares the result's memory (fromarray would copy 36 MB for 12 MP); only read.
    pixels = np.ascontiguousarray(result.pixels)
    preview_image = preview_of(Image.frombuffer("RGB", (result.width, result.height), pixels, "raw", "RGB", 0, 1))
    st.session_state["outcome"] = {
        "result": result, "preview": jpeg_bytes(preview_image), "preview_image": preview_image,
        "lines": lines, "summary": summary,
        "caption": plan_caption(result.ops, choice["params"]),
    }
    log.info("job done", extra={"fields": {
        "strips": len(result.strips), "ops": result.ops, "ms": round(result.elapsed_ms, 1),
        "job_ms": round(job_ms, 1), "preview_ms": round((time.perf_counter() - started) * 1000 - job_ms, 1),
        **{name: round(value, 1) for name, value in result.timings.items()},
        "retries": retries, "width": result.width, "height": result.height}})


# ---------------------------------------------------------------- result


def show_outcome(upload: dict, config: CoordinatorConfig, choice: dict, replay_log: bool) -> None:
    """Original and result side by side, plus timing and download; reruns reuse the stored outcome."""
    outcome = st.session_state.get("outcome") or {}
    original_caption = f"Original · {image_summary(upload['width'], upload['height'], len(upload['data']))}"
    replay_log = replay_log and bool(outcome.get("lines"))
    if "error" in outcome:
        if replay_log:
            with st.status("Failed", state="error", expanded=False):
                for line in outcome["lines"]:
                    st.markdown(line)
        st.error(outcome["error"], icon=":material/error:")
    result = outcome.get("result")
    if result is not None and replay_log:
        with st.status(outcome["summary"], state="complete", expanded=False):
            for line in outcome["lines"]:
                st.markdown(line)
    overlay = st.checkbox("Outline strips with their worker and time", key="overlay",
                          disabled=result is None)
    original_col, result_col = st.columns(2)
    with original_col:
        st.image(upload["preview"], width="stretch", caption=original_caption)
    with result_col:
        if result is None:
            st.info("The result appears here after **Process**.", icon=":material/hourglass_empty:")
            return
        shown = outcome["preview"]
        if overlay:
            boxes = [StripBox(strip.top, strip.bottom,
                              f"{strip.index + 1} · {strip.op} · {strip.runtime or worker_host(strip.worker_url)}"
                              f" · {strip.total_ms:.0f} ms", strip.runtime or "") for strip in result.strips]
            shown = jpeg_bytes(draw_strip_overlay(outcome["preview_image"], boxes, result.height))
        st.image(shown, width="stretch",
                 caption=f"Result · {result.width}×{result.height} px · {outcome['caption']}")
    metrics = st.columns(4)
    metrics[0].metric("Total", f"{result.elapsed_ms:.0f} ms")
    metrics[1].metric("Strips", len(result.strips))
    metrics[2].metric("Workers used", len({strip.worker_url for strip in result.strips}))
    metrics[3].metric("Retries", sum(strip.attempts - 1 for strip in result.strips))
    chart_col, side_col = st.columns([3, 2], gap="large")
    with chart_col:
        st.markdown("**Time per strip**")
        st.bar_chart(timing_frame(result.strips), x="strip", y=list(PARTS), horizontal=True,
                     stack=True, sort=False, color=["#1f77b4", "#ffbf00"], x_label="", y_label="ms",
                     height=chart_height(len(result.strips)))
    with side_col:
        out_format, quality = choice["format"], choice["quality"]
        stem = Path(upload["name"]).stem or "image"
        pixels, png_level = result.pixels, config.png_level
        st.markdown("**Download**")
        st.caption(f"Full size, {out_format.upper()}"
                   + (f", quality {quality}" if out_format != "png" else "")
                   + ". Change the format above; no need to process again.")
        st.download_button(
            f"Download {out_format.upper()}",
            data=lambda: imaging.encode_output(pixels, out_format, quality, png_level),  # encoded on click
            file_name=f"{stem}-processed.{'jpg' if out_format == 'jpeg' else out_format}",
            mime=MIME[out_format], type="primary", icon=":material/download:", on_click="ignore",
            key="download")
    st.markdown("**Strips**")
    st.dataframe(strip_table(result.strips), hide_index=True, width="stretch")


# ---------------------------------------------------------------- page


def main() -> None:
    st.set_page_config(page_title="Distributed image processor", page_icon=":material/view_agenda:",
                       layout="wide")
    st.title("Distributed image processor")
    st.caption("The image is cut into horizontal strips; each strip goes to a worker (Python or "
               "Node.js) that offers its operation, and the results are stitched back together.")
    try:
        config = load_config(environ=os.environ)
    except ConfigError as exc:
        st.error(f"Configuration: {exc}", icon=":material/settings:")
        return
    statuses = workers_panel(config)
    if not any(status.ok for status in statuses):
        st.warning(NO_WORKER_HELP, icon=":material/cloud_off:")
    try:
        upload = read_upload(config)
    except InputError as exc:
        st.error(f"That file can't be used: {exc}", icon=":material/broken_image:")
        return
    if upload is None:
        st.info("Upload an image to start.", icon=":material/upload:")
        return
    st.caption(f"**{escape_markdown(upload['name'])}** · "
               f"{image_summary(upload['width'], upload['height'], len(upload['data']))}")
    choice = controls(upload, statuses)
    processed_now = st.button("Process", type="primary", icon=":material/play_arrow:", key="process")
    if processed_now:
        process(upload, config, choice)
    show_outcome(upload, config, choice, replay_log=not processed_now)


try:
    main()
except Exception as exc:  # last resort: one line on the page, the traceback in the log
    log.exception("page error")
    first_line = (str(exc).splitlines() or [""])[0]
    st.error(f"Something went wrong ({type(exc).__name__}: {first_line}). "
             "The details are in the page's log; the page still works.", icon=":material/bug_report:")
