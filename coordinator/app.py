"""The master page: upload an image, choose what each strip gets, watch the workers do it.

Run from the repo root: `streamlit run coordinator/app.py` (or `make run`). The page is thin: the
engine (coordinator.engine / plan / discovery / imaging) does the planning, dispatch and stitching
for the page and the CLI alike; this file only asks for input and shows what came back.
Anything a worker sent (health fields, runtime names, error reasons) is shown as plain text
(st.text, or page_text.safe_name inside our own Markdown): a worker cannot put a link, an
image or styling on this page.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

# `streamlit run coordinator/app.py` puts coordinator/ on sys.path, not the repo root; the
# `coordinator` package imports because `make setup` installed it (pyproject.toml).
import numpy as np
import streamlit as st
from PIL import Image, ImageDraw
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

from coordinator import discovery, engine, imaging, plan, pool_discovery
from coordinator.config import CoordinatorConfig, load_config
from coordinator.errors import ConfigError, InputError, NoWorkerError
from coordinator.page_chart import COLOURS, PARTS, chart_height, strip_table, timing_frame, worker_host
from coordinator.page_log import page_logger
from coordinator.page_memory import SessionImages, release_freed_memory, start_reaper
from coordinator.page_overlay import StripBox, draw_strip_overlay
from coordinator.page_text import (
    cancelled_message,
    changed_settings,
    done_label,
    escape_markdown,
    event_line,
    failed_attempts,
    image_summary,
    input_problem,
    missing_workers,
    no_worker_message,
    plan_caption,
    runtimes_note,
    safe_name,
    status_label,
    too_many_pixels,
)
from coordinator.page_workers import draw_workers
from coordinator.tracing import enabled as tracing_enabled

log = page_logger()

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"]
MAX_STRIPS = 16
PREVIEW_WIDTH = 1200  # previews are 1200-2400 px wide copies; the download is full size
SHOWN_WIDTH = 600  # about how wide a preview is drawn (half the page)
MIN_SHOWN_HEIGHT = 30  # a 3000x3 image would be a 1 px line: its rows are stretched to this
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


class UploadRefused(Exception):
    """An upload the page will not decode; the message is written for the page's user."""


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


@st.cache_resource(show_spinner=False)
def favicon() -> Image.Image:
    """Three strips, drawn here: an emoji or :material: icon makes the browser fetch it from a CDN."""
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    for row, colour in enumerate(((55, 118, 171), (67, 160, 71), (230, 81, 0))):
        draw.rounded_rectangle((4, 4 + row * 20, 59, 19 + row * 20), radius=4, fill=colour)
    return icon


def workers_panel(config: CoordinatorConfig) -> list:
    """The sidebar's worker cards; the page reruns with a fresh check after a job that saw a failure."""
    with st.sidebar:
        st.header("Workers")
        if st.button("Refresh", icon=":material/refresh:", key="refresh_workers"):
            cached_discover.clear()
            pool_discovery.forget()  # a pooled stack: ask EC2 again too
        box = st.empty()
    statuses = cached_discover(config)
    draw_workers(box, config, statuses)
    return statuses


# ---------------------------------------------------------------- upload


def preview_of(image: Image.Image) -> tuple[Image.Image, bool]:
    """(a screen-sized copy, whether its rows were stretched). The browser gets a small JPEG
    instead of megapixels (and TIFF shows). Image.reduce averages whole blocks in C: a 12 MP
    result shrinks in tens of milliseconds. A very wide, thin image is stretched in height so it
    shows as more than a line."""
    factor = image.width // PREVIEW_WIDTH
    small = image.reduce(factor) if factor >= 2 else image
    min_rows = -(-MIN_SHOWN_HEIGHT * small.width // SHOWN_WIDTH)
    if small.height >= min_rows:
        return small, False
    return small.resize((small.width, min_rows), Image.Resampling.NEAREST), True


def shown_pixels(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """What a preview shows: the colour, with transparent parts on white (as JPEG output gets)."""
    return colour if alpha is None else imaging.flatten_on_white(np.dstack((colour, alpha)))


def jpeg_bytes(image: Image.Image) -> bytes:
    """Encoded once and kept: st.image re-encodes a PIL image on every rerun, bytes it sends as-is."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


@st.cache_resource(show_spinner=False)
def session_store() -> SessionImages:
    """Where every session's image-sized data lives, emptied when its browser has gone."""
    from streamlit import runtime

    if not runtime.exists():  # AppTest: no server, no session outlives its test
        return SessionImages(lambda session_id: True)
    server = runtime.get_instance()

    def drop_streamlit_copies(session_id: str) -> None:
        """What Streamlit holds for a session it has not shut down: the raw upload, and the
        media (download bytes, previews). One orphan pass, as at the end of any run: a
        download is marked now and deleted by the next pass (a second pass here could
        delete another session's download in the middle of its rerun)."""
        server.uploaded_file_mgr.remove_session_files(session_id)
        server.media_file_mgr.clear_session_refs(session_id)
        server.media_file_mgr.remove_orphaned_files()

    store = SessionImages(
        server.is_active_session, float(st.get_option("server.disconnectedSessionTTL")), on_gone=drop_streamlit_copies
    )
    start_reaper(store)
    return store


def session_id() -> str:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx else "bare"


def images() -> dict:
    """This session's "upload", "outcome" and "encoded" (one of each at most); st.session_state
    holds the same dict, so tests see it as session_state["images"]."""
    held = session_store().for_session(session_id())
    st.session_state["images"] = held
    return held


@st.cache_resource(show_spinner=False)
def running_jobs() -> dict:
    """Session id -> {"done", "total"} of the job its script is running now. A whole-page rerun
    (a new upload, the workers' Refresh) does not wait for a job: Streamlit starts the new run at
    once and stops the old one at its next event (runner.fastReruns). The new run finds the job
    here and says it is stopped; the old run cannot (its st calls, session state included, raise)."""
    return {}


def forget_images() -> None:
    """Drop this session's image-sized data before new data is made (one image per session)."""
    held = images()
    if held:
        held.clear()
        release_freed_memory()


def decode_upload(uploaded, config: CoordinatorConfig) -> dict:
    data = uploaded.getvalue()
    size = imaging.probe_size(data)
    if size is not None and size[0] * size[1] > config.max_pixels:
        raise UploadRefused(too_many_pixels(size[0], size[1], config.max_pixels))
    try:
        # once: run_job reuses the colour; the alpha waits beside it (issue 12.7)
        pixels, alpha = imaging.decode_with_alpha(data, config.max_pixels)
    except InputError as exc:
        raise UploadRefused(input_problem(str(exc))) from None
    preview, stretched = preview_of(Image.fromarray(shown_pixels(pixels, alpha)))
    # The raw bytes are not kept: Streamlit holds the upload already (uploaded.getvalue()).
    return {
        "file_id": uploaded.file_id,
        "name": uploaded.name,
        "size": len(data),
        "pixels": pixels,
        "alpha": alpha,
        "width": pixels.shape[1],
        "height": pixels.shape[0],
        "preview": jpeg_bytes(preview),
        "stretched": stretched,
    }


def read_upload(config: CoordinatorConfig):
    """(the decoded upload as a dict, the uploaded file), decoded once per upload; (None, None)
    if none. Raises UploadRefused for a file the page will not use."""
    uploaded = st.file_uploader(
        "Image", type=UPLOAD_TYPES, key="image", help="JPEG, PNG, WebP, BMP, TIFF or GIF (first frame)."
    )
    if uploaded is None:
        forget_images()
        return None, None
    upload = images().get("upload")
    if upload is None or upload["file_id"] != uploaded.file_id:
        forget_images()  # a result belongs to the image it came from
        upload = decode_upload(uploaded, config)
        images()["upload"] = upload
    return upload, uploaded


# ---------------------------------------------------------------- controls


def offered_ops(statuses: list) -> set[str]:
    return {op for status in statuses if status.ok for op in status.operations}


def op_label(offered: set[str]):
    return lambda op: op if op in offered else f"{op} (no reachable worker offers it)"


def output_formats(width: int, height: int) -> tuple[list[str], str | None]:
    """(format labels that can store width x height, a note on those that cannot or None)."""
    fits, notes = [], []
    for label, fmt in FORMATS.items():
        try:
            imaging.check_output_size(fmt, width, height)
            fits.append(label)
        except InputError:
            notes.append(f"{label} stores at most {imaging.MAX_SIDE[fmt]:,} px a side")
    if not notes:
        return fits, None
    return fits, (
        f"{' and '.join(notes)}, and this image is {width:,}×{height:,} px: download it as {' or '.join(fits)}."
    )


def strip_controls(strips: int, ops: list[str], fmt) -> str:
    """A dropdown per strip, four to a row. A row of columns each, not four columns for all:
    the page's order (and so Tab's) is then strip order; four tall columns read 1, 5, 9, 13, 2..."""
    chosen = []
    for index in range(strips):
        default = plan.SEED_OPS[index % len(plan.SEED_OPS)]  # as the demo, until changed
        if index % 4 == 0:
            columns = st.columns(4)
        with columns[index % 4]:
            chosen.append(
                st.selectbox(
                    f"Strip {index + 1}",
                    ops,
                    key=f"strip_op_{index}",
                    index=ops.index(default) if default in ops else 0,
                    format_func=fmt,
                )
            )
    return ",".join(chosen)


def plan_controls(upload: dict, statuses: list) -> dict:
    ops = list(plan.OPERATIONS)
    fmt = op_label(offered_ops(statuses))
    max_strips = max(1, min(MAX_STRIPS, upload["height"]))
    mode = st.radio("Plan", [PLAN_SEED, PLAN_ONE, PLAN_PER_STRIP], key="plan_mode")
    if max_strips == 1:  # a slider cannot range over one value
        strips = 1
        st.caption("1 strip: the image is one row high.")
    else:
        strips = st.slider(
            "Strips",
            1,
            max_strips,
            min(2, max_strips),
            key="strips",
            help="Horizontal strips, sent to the workers concurrently.",
        )
    if mode == PLAN_SEED:
        spec = "seed"
    elif mode == PLAN_ONE:
        spec = st.selectbox("Operation", ops, key="one_op", format_func=fmt)
    else:
        spec = strip_controls(strips, ops, fmt)
    params = {}
    if "blur" in spec.split(","):  # right under the control that asked for it
        params["radius"] = st.slider(
            "Blur radius",
            0.5,
            50.0,
            2.0,
            step=0.5,
            key="blur_radius",
            format="%g",
            help="Gaussian blur radius in pixels.",
        )
    return {"spec": spec, "strips": strips, "params": params}


def format_controls(upload: dict) -> dict:
    labels, note = output_formats(upload["width"], upload["height"])
    label = st.segmented_control("Output format", labels, default="PNG", key="out_format", required=True)
    if note:
        st.caption(note)
    out_format = FORMATS[label if label in labels else "PNG"]
    quality = 90
    if out_format in ("jpeg", "webp"):
        quality = st.slider("Quality", 1, 100, 90, key="quality")
    return {"format": out_format, "quality": quality}


def controls(upload: dict, statuses: list) -> dict:
    left, right = st.columns([3, 2], gap="large")
    with left:
        choice = plan_controls(upload, statuses)
    with right:
        choice.update(format_controls(upload))
    return choice


# ---------------------------------------------------------------- processing


def store_failure(exc: NoWorkerError, total: int, lines: list[str], status) -> None:
    head, reasons = no_worker_message(exc, total)
    where = "the plan" if exc.strip_index is None else f"strip {exc.strip_index + 1}"
    status.update(label=f"Failed at {where}", state="error", expanded=bool(lines))
    images()["outcome"] = {"error": head, "reasons": reasons, "lines": lines}
    log.warning("job failed", extra={"fields": {"error": str(exc), "strip": exc.strip_index, "op": exc.op}})


def run_with_progress(
    upload: dict, uploaded, config: CoordinatorConfig, choice: dict, status, lines: list, progress: dict
):
    """engine.run_job with each event shown as it comes, and counted in `progress`."""
    total = choice["strips"]

    def on_event(event) -> None:  # the engine calls this on this (the script's) thread
        progress["done"] += event.kind == "done"
        line = event_line(event)
        if line:
            lines.append(line)
            status.text(line)
        status.update(label=status_label(progress["done"], total, event))

    return engine.run_job(
        uploaded.getvalue(),
        config,
        plan=choice["spec"],
        strips=total,
        params=choice["params"] or None,
        on_event=on_event,
        session=shared_session(),
        pixels=upload["pixels"],
    )


def process(upload: dict, uploaded, config: CoordinatorConfig, choice: dict, known_runtimes: dict) -> bool:
    """process_job, listed in running_jobs while it runs. A control change does not stop it (the
    fragment's rerun waits for it); a whole-page rerun or Stop does, at its next st call
    (Streamlit raises StopException there). A stopped job stays listed until a run has said so
    (show_notes), whichever of the two runs gets there first."""
    running, session = running_jobs(), session_id()
    progress = running[session] = {"done": 0, "total": choice["strips"]}
    try:
        return process_job(upload, uploaded, config, choice, known_runtimes, progress)
    except (RerunException, StopException):
        progress["stopped"] = True
        log.info("job cancelled", extra={"fields": {"done": progress["done"], "strips": choice["strips"]}})
        raise
    finally:
        if (not progress.get("stopped") or progress.get("reported")) and running.get(session) is progress:
            running.pop(session, None)


def process_job(
    upload: dict, uploaded, config: CoordinatorConfig, choice: dict, known_runtimes: dict, progress: dict
) -> bool:
    """Run the job and keep its outcome in the session; True when some worker failed (the
    workers panel is then out of date)."""
    lines: list[str] = []
    status = st.status(status_label(0, choice["strips"]), expanded=True)
    started = time.perf_counter()
    try:
        result = run_with_progress(upload, uploaded, config, choice, status, lines, progress)
    except NoWorkerError as exc:
        store_failure(exc, choice["strips"], lines, status)
        return True
    except InputError as exc:
        log.info("job refused", extra={"fields": {"error": str(exc)}})
        status.update(label="Not processed", state="error", expanded=False)
        images()["outcome"] = {"error": input_problem(str(exc)), "reasons": [], "lines": lines}
        return False
    job_ms = (time.perf_counter() - started) * 1000
    retries = sum(strip.attempts - 1 for strip in result.strips)
    summary = done_label(len(result.strips), result.elapsed_ms, retries)
    status.update(label=summary, state="complete", expanded=False)
    images().pop("outcome", None)  # the old result goes before the new preview is made
    images().pop("encoded", None)
    release_freed_memory()  # the job's strip bodies and replies, freed in its threads' arenas
    radius = (choice["params"] or {}).get("radius")
    output = imaging.with_alpha(result.pixels, upload["alpha"], result.strips, radius)
    # frombuffer shares the result's memory (fromarray would copy 36 MB for 12 MP); only read.
    pixels = np.ascontiguousarray(result.pixels if upload["alpha"] is None else imaging.flatten_on_white(output))
    preview_image, stretched = preview_of(
        Image.frombuffer("RGB", (result.width, result.height), pixels, "raw", "RGB", 0, 1)
    )
    missing = missing_workers(result.workers, result.strips, known_runtimes)
    images()["outcome"] = {
        "job": uuid.uuid4().hex,
        "result": result,
        "output": output,  # the result with the input's alpha back, when it had one
        "preview": jpeg_bytes(preview_image),
        "preview_image": preview_image,
        "stretched": stretched,
        "lines": lines,
        "summary": summary,
        "caption": plan_caption(result.ops, choice["params"]),
        "missing": missing,
        "choice": {key: choice[key] for key in ("spec", "strips", "params")},
    }
    log.info(
        "job done",
        extra={
            "fields": {
                "strips": len(result.strips),
                "ops": result.ops,
                "ms": round(result.elapsed_ms, 1),
                "job_ms": round(job_ms, 1),
                "preview_ms": round((time.perf_counter() - started) * 1000 - job_ms, 1),
                **{name: round(value, 1) for name, value in result.timings.items()},
                "retries": retries,
                "width": result.width,
                "height": result.height,
                "missing": len(missing),
            }
        },
    )
    return bool(missing) or retries > 0


# ---------------------------------------------------------------- result


def show_notes(outcome: dict, choice: dict, replay_log: bool) -> None:
    """The stopped-job note, a failed job's error, the progress log replayed, and a warning
    on a result whose settings no longer match the controls."""
    stopped = running_jobs().get(session_id())  # a job of this session's previous run, stopped or being stopped
    if stopped:
        stopped["reported"] = True
        if stopped.get("stopped"):
            running_jobs().pop(session_id(), None)
        st.warning(cancelled_message(stopped), icon=":material/cancel:")
    replay_log = replay_log and bool(outcome.get("lines"))
    if "error" in outcome:
        if replay_log:
            with st.status("Failed", state="error", expanded=False):
                st.text("\n".join(outcome["lines"]))
        st.error(outcome["error"], icon=":material/error:")
        if outcome["reasons"]:
            st.text("\n".join(f"- {reason}" for reason in outcome["reasons"]))
    if outcome.get("result") is None:
        return
    if replay_log:
        with st.status(outcome["summary"], state="complete", expanded=False):
            st.text("\n".join(outcome["lines"]))
    note = runtimes_note(outcome["result"].strips, outcome["missing"])
    if note:
        st.warning(note, icon=":material/dns:")
        st.text("\n".join(f"- {line}" for _, line in outcome["missing"]))
    changes = changed_settings(outcome["choice"], choice)
    if changes:
        st.warning(
            f"**Out of date:** this result and its download were made before you changed "
            f"{'; '.join(changes)}. Press **Process** to apply the new settings.",
            icon=":material/history:",
        )


def result_image(outcome: dict, overlay: bool, stale: bool) -> None:
    result = outcome["result"]
    shown = outcome["preview"]
    if overlay:
        boxes = [
            StripBox(
                strip.top,
                strip.bottom,
                f"{strip.index + 1} · {strip.op} · {safe_name(strip.runtime, worker_host(strip.worker_url))}"
                f" · {strip.total_ms:,.0f} ms",
                safe_name(strip.runtime, ""),
            )
            for strip in result.strips
        ]
        shown = jpeg_bytes(draw_strip_overlay(outcome["preview_image"], boxes, result.height))
    caption = (
        f"{'Earlier result (out of date)' if stale else 'Result'} · "
        f"{result.width:,}×{result.height:,} px · {outcome['caption']}"
        + (" · rows stretched to show" if outcome["stretched"] else "")
    )
    st.image(shown, width="stretch", caption=caption)


def metrics(result) -> None:
    used = len({strip.worker_url for strip in result.strips})
    columns = st.columns(4)
    columns[0].metric("Total", f"{result.elapsed_ms:,.0f} ms")
    columns[1].metric("Strips", len(result.strips))
    columns[2].metric("Workers used", f"{used} of {len(result.workers)}")
    columns[3].metric("Retries", sum(strip.attempts - 1 for strip in result.strips))


def download_bytes(outcome: dict, out_format: str, quality: int, png_level: int) -> bytes:
    """The result encoded once per (job, format, quality) and kept until either changes.
    Encoded now, not in a deferred callable: Streamlit gives a callable a new file id on every
    rerun and drops the old one, so a click that itself caused a rerun (a slider still focused
    from the keyboard commits on blur) asked for an id already gone and did nothing (issue 12.4).
    Bytes get an id from their content, the same across reruns."""
    key = (outcome["job"], out_format, quality if out_format != "png" else None)
    cached = images().get("encoded")
    if cached and cached["key"] == key:
        return cached["data"]
    images().pop("encoded", None)  # one encoded copy per session
    with st.spinner(f"Encoding the full-size {out_format.upper()}…"):
        data = imaging.encode_output(outcome["output"], out_format, quality, png_level)
    images()["encoded"] = {"key": key, "data": data}
    return data


def transparency_note(outcome: dict, out_format: str) -> str:
    if outcome["output"].shape[2] != 4:
        return ""
    if out_format in imaging.ALPHA_FORMATS:
        return " Transparency is kept."
    return f" {out_format.upper()} has no transparency: transparent parts are flattened onto white."


def download(upload: dict, outcome: dict, choice: dict, config: CoordinatorConfig) -> None:
    out_format, quality = choice["format"], choice["quality"]
    st.markdown("**Download**")
    st.caption(
        f"Full size, {out_format.upper()}"
        + (f", quality {quality}" if out_format != "png" else "")
        + ". Change the format above; no need to process again."
        + transparency_note(outcome, out_format)
    )
    data = download_bytes(outcome, out_format, quality, config.png_level)
    stem = Path(upload["name"]).stem or "image"
    st.download_button(
        f"Download {out_format.upper()}",
        data=data,
        file_name=f"{stem}-processed.{'jpg' if out_format == 'jpeg' else out_format}",
        mime=MIME[out_format],
        type="primary",
        icon=":material/download:",
        on_click="ignore",
        key="download",
    )


def timings(result) -> None:
    def runtime(strip) -> str:
        return safe_name(strip.runtime, "")

    st.markdown("**Time per strip**")
    st.caption(
        "In the worker (its own timing), on the network (sending, the reply, reading it), "
        "encoding the strip here, and waiting for a free slot on that worker."
    )
    st.bar_chart(
        timing_frame(result.strips, runtime),
        x="strip",
        y=list(PARTS),
        horizontal=True,
        stack=True,
        sort=False,
        color=COLOURS,
        x_label="",
        y_label="ms",
        height=chart_height(len(result.strips)),
    )


def show_outcome(upload: dict, config: CoordinatorConfig, choice: dict) -> None:
    """Original and result side by side, plus timing and download; reruns reuse the stored outcome."""
    outcome = images().get("outcome") or {}
    result = outcome.get("result")
    overlay = st.checkbox("Outline strips with their worker and time", key="overlay", disabled=result is None)
    original_col, result_col = st.columns(2)
    with original_col:
        st.image(
            upload["preview"],
            width="stretch",
            caption=f"Original · {image_summary(upload['width'], upload['height'], upload['size'])}"
            + (" · rows stretched to show" if upload["stretched"] else ""),
        )
    with result_col:
        if result is None:
            st.info("The result appears here after **Process**.", icon=":material/hourglass_empty:")
            return
        result_image(outcome, overlay, stale=bool(changed_settings(outcome["choice"], choice)))
    metrics(result)
    chart_col, side_col = st.columns([3, 2], gap="large")
    with chart_col:
        timings(result)
    with side_col:
        download(upload, outcome, choice, config)
    st.markdown("**Strips**")
    table = strip_table(result.strips, lambda strip: safe_name(strip.runtime, ""))
    if tracing_enabled():  # the id to look the job up by in the trace collector
        table["trace"] = [strip.trace_id for strip in sorted(result.strips, key=lambda s: s.index)]
    st.dataframe(table.drop(columns=["failed attempts"]), hide_index=True, width="stretch")
    failures = failed_attempts(result.strips)
    if failures:  # in full, as text: as the table's last column they were cut off
        st.markdown("**Failed attempts**")
        st.text("\n".join(failures))


# ---------------------------------------------------------------- page


def main() -> None:
    st.set_page_config(page_title="Distributed image processor", page_icon=favicon(), layout="wide")
    st.title("Distributed image processor")
    st.caption(
        "The image is cut into horizontal strips; each strip goes to a worker (Python or "
        "Node.js) that offers its operation, and the results are stitched back together."
    )
    try:
        config = load_config(environ=os.environ)
    except ConfigError as exc:
        st.error(f"Configuration: {exc}", icon=":material/settings:")
        return
    if st.session_state.pop("refresh_workers_now", False):
        cached_discover.clear()
    try:
        statuses = workers_panel(config)
    except (ConfigError, NoWorkerError) as exc:  # a pooled stack that cannot be listed now
        st.error(f"Workers: {exc}", icon=":material/cloud_off:")
        return
    if not any(status.ok for status in statuses):
        st.warning(NO_WORKER_HELP, icon=":material/cloud_off:")
    try:
        upload, uploaded = read_upload(config)
    except UploadRefused as exc:
        st.error(str(exc), icon=":material/broken_image:")
        return
    if upload is None:
        st.info("Upload an image to start.", icon=":material/upload:")
        return
    st.caption(
        f"**{escape_markdown(upload['name'])}** · {image_summary(upload['width'], upload['height'], upload['size'])}"
    )
    workbench(config, statuses)


@st.fragment
def workbench(config: CoordinatorConfig, statuses: list) -> None:
    """Controls, Process and the result, as a fragment: a control change reruns only this part.
    That is what keeps Download working on the first click (issue 12.4): every full run drops
    the previous run's media references, and a run cut short by the next keypress (a keyboard
    slider reruns on every step) never registers the download again, so two such runs in a row
    deleted the file the button still pointed at; a fragment run keeps the references.
    The image comes from the session, not as an argument: Streamlit keeps a fragment's
    arguments with the session, where the reaper could not free them."""
    upload, uploaded = images().get("upload"), st.session_state.get("image")
    if upload is None or uploaded is None:
        return
    try:
        workbench_body(upload, uploaded, config, statuses)
    except Exception as exc:  # a fragment rerun is not inside main()'s catch
        last_resort(exc)


def workbench_body(upload: dict, uploaded, config: CoordinatorConfig, statuses: list) -> None:
    reachable = any(status.ok for status in statuses)
    choice = controls(upload, statuses)
    processed_now = st.button(
        "Process",
        type="primary",
        icon=":material/play_arrow:",
        key="process",
        disabled=not reachable,
        help=None if reachable else "No worker is reachable: see the note above.",
    )
    with st.container():  # what varies from run to run (progress, notes): later elements keep their place
        if processed_now:
            known = {status.url: status.runtime for status in statuses if status.runtime}
            if process(upload, uploaded, config, choice, known):
                # A worker failed during the job: redraw the whole page, the workers panel
                # from a fresh health check (the panel is outside this fragment).
                st.session_state["refresh_workers_now"] = True
                st.rerun(scope="app")
        show_notes(images().get("outcome") or {}, choice, replay_log=not processed_now)
    show_outcome(upload, config, choice)


def last_resort(exc: Exception) -> None:
    """One line on the page, the traceback in the log."""
    log.exception("page error")
    first_line = (str(exc).splitlines() or [""])[0]
    st.error(
        f"Something went wrong ({type(exc).__name__}: {escape_markdown(first_line)}). "
        "The details are in the page's log; the page still works.",
        icon=":material/bug_report:",
    )


try:
    main()
except Exception as exc:  # last resort
    last_resort(exc)
