"""Words the page shows: plan captions, sizes, progress lines, notes (page only; pure functions).

Anything a worker sent (runtime names, health fields, error reasons) is shown by the page with
st.text (no Markdown, no HTML) or first passed through safe_name; only our own words are Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import groupby
from urllib.parse import urlsplit

from coordinator.page_chart import worker_host

# Inline Markdown and Streamlit's :color[...] directives; enough for one-line messages.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>#|~$:!()])")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]")


def escape_markdown(text: str) -> str:
    """File names and config sources are shown as text, not interpreted as Markdown."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def safe_name(text: str | None, fallback: str = "worker", limit: int = 24) -> str:
    """A worker-supplied name (runtime, service) reduced to letters, digits and . _ + -, so it
    can sit inside a Markdown label or a status line without becoming a link or an image."""
    cleaned = _NAME_CHARS.sub("", text or "")[:limit]
    return cleaned or fallback


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{size:,} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size:,} bytes"


def image_summary(width: int, height: int, size: int) -> str:
    return f"{width:,}×{height:,} px · {human_bytes(size)}"


def pixel_count(count: int) -> str:
    """38400 -> "38,400 pixels"; 50000000 -> "50,000,000 pixels (50 MP)"."""
    return f"{count:,} pixels" + (f" ({count / 1e6:,.3g} MP)" if count >= 1_000_000 else "")


def too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    """For a page user, who cannot change the coordinator's settings."""
    return (
        f"This image is {width:,}×{height:,} px, {pixel_count(width * height)}; this page takes "
        f"images up to {pixel_count(max_pixels)}. Scale it down or crop it, then upload it again."
    )


def input_problem(message: str) -> str:
    """An InputError from decoding, reworded for the page (the CLI keeps the technical line)."""
    if "truncated" in message or "image file is truncated" in message:
        return (
            "The file ends before the image does: it looks cut short (an unfinished download "
            "or copy?). Try the original file again."
        )
    if "not an image" in message or "not a readable image" in message:
        return "This file is not an image the page can read. It takes JPEG, PNG, WebP, BMP, TIFF or GIF."
    if "no pixels" in message:
        return "This image has no pixels (its width or height is 0)."
    found = re.search(r"(\d+) pixels, over the limit of (\d+)", message)
    if found:
        return (
            f"This image has {pixel_count(int(found.group(1)))}; this page takes images up to "
            f"{pixel_count(int(found.group(2)))}. Scale it down or crop it, then upload it again."
        )
    return f"The image can't be used: {message}"


def _strip_range(first: int, last: int) -> str:
    return f"strip {first}" if first == last else f"strips {first}–{last}"


def plan_caption(ops: Sequence[str], params: dict | None = None) -> str:
    """["grayscale", "grayscale", "sepia", "sepia"] -> "strips 1–2 grayscale · strips 3–4 sepia"."""
    if not ops:
        return "no strips"
    radius = (params or {}).get("radius")

    def op_text(op: str) -> str:
        return f"{op} (radius {radius:g})" if op == "blur" and radius is not None else op

    if len(set(ops)) == 1:
        noun = "strip" if len(ops) == 1 else f"all {len(ops)} strips"
        return f"{noun} {op_text(ops[0])}"
    runs = [(op, len(list(run))) for op, run in groupby(ops)]
    if len(runs) > 3:  # a long alternation reads better as counts
        counts = {op: ops.count(op) for op in dict.fromkeys(ops)}
        return f"{len(ops)} strips: " + ", ".join(f"{count} {op_text(op)}" for op, count in counts.items())
    parts, position = [], 1
    for op, count in runs:
        parts.append(f"{_strip_range(position, position + count - 1)} {op_text(op)}")
        position += count
    return " · ".join(parts)


def changed_settings(before: dict, now: dict) -> list[str]:
    """What differs between the settings a result was made with and the controls now, in words;
    output format and quality are left out (the download re-encodes, no new run needed)."""
    changes = []
    if before["strips"] != now["strips"]:
        changes.append(f"strips {before['strips']} → {now['strips']}")
    if before["spec"] != now["spec"]:
        old, new = before["spec"].replace(",", ", "), now["spec"].replace(",", ", ")
        changes.append(f"operations {old} → {new}")
    old_radius, new_radius = before["params"].get("radius"), now["params"].get("radius")
    if old_radius != new_radius and None not in (old_radius, new_radius):
        changes.append(f"blur radius {old_radius:g} → {new_radius:g}")
    return changes


def event_line(event) -> str | None:
    """One plain-text line for the progress log (shown with st.text: worker reasons are not
    Markdown), or None for events shown only in the status label."""
    where = f"{safe_name(event.runtime)} at {worker_host(event.worker_url or '?')}"
    strip = f"Strip {event.index + 1} ({event.op})"
    if event.kind == "done":
        return f"✓ {strip} done by {where} in {event.elapsed_ms:,.0f} ms"
    if event.kind == "retry":
        return (
            f"⚠ {strip}: {where} failed on attempt {event.attempt} ({event.message or 'no reason given'}); trying again"
        )
    if event.kind == "failed":
        return f"✗ {strip} failed: {event.message or 'no worker could do it'}"
    return None


def status_label(done: int, total: int, event=None) -> str:
    head = f"Processing: {done}/{plural(total, 'strip')} done"
    if event is not None and event.kind == "start":
        return f"{head} · strip {event.index + 1} sent to {safe_name(event.runtime, 'a worker')}"
    return head


def done_label(strip_count: int, elapsed_ms: float, retries: int) -> str:
    return f"Done: {plural(strip_count, 'strip')} in {elapsed_ms:,.0f} ms" + (
        f" · {retries} retried" if retries else ""
    )


def no_worker_message(error, strip_count: int) -> tuple[str, list[str]]:
    """(Markdown head in our words, plain-text reasons per worker) for a failed job."""
    if error.strip_index is None:
        head = f"No reachable worker can do **{error.op}**."
    else:
        head = f"Strip {error.strip_index + 1} of {strip_count} (**{error.op}**) could not be done by any worker."
    if not error.attempts:
        return f"{head} No worker was tried.", []
    return f"{head} Tried:", [str(attempt) for attempt in error.attempts]


def cancelled_message(info: dict) -> str:
    """A job cut short by a whole-page rerun (a new upload, the workers' Refresh) or Stop; a
    control change does not cut a job short (the controls' rerun waits for it)."""
    return (
        f"The job you started was stopped after {info['done']} of {plural(info['total'], 'strip')}: "
        "the whole page reloaded while it ran (a new upload, the workers' **Refresh**, or **Stop**). "
        "The result below (if any) is from before. Press **Process** to run it again."
    )


def connection_note(url: str, ok: bool, tls) -> str:
    """How the page reaches a worker (plain text for its card): https verified against the
    pinned fleet CA and the name every connection checks, https on the system's trust store,
    or plain http. `tls`: the config's TlsSettings or None."""
    if not url.startswith("https://"):
        return "http · not encrypted"
    if not ok:
        return "https · not verified"
    if tls is None:
        return "https · verified by the system's CAs"
    name = tls.name or urlsplit(url).hostname or "?"
    return f"https · verified {name} (fleet CA)" + (" · mutual TLS" if tls.mutual else "")


def missing_workers(workers: Sequence, strips: Sequence, known_runtimes: dict) -> list[tuple[str, str]]:
    """(runtime, plain-text line) for each configured worker the job could not use (down before
    it, or failed during it), naming its runtime from `known_runtimes` (url -> runtime seen
    earlier) when the worker could not say."""
    used = {strip.worker_url for strip in strips}
    failed = {}
    for strip in strips:
        for failover in strip.failovers:
            url, _, reason = failover.partition(": ")
            failed.setdefault(url, reason)
    missing = []
    for worker in workers:
        if worker.url in used:
            continue
        reason = worker.error if not worker.ok else failed.get(worker.url)
        if reason is None:
            continue
        runtime = safe_name(worker.runtime or known_runtimes.get(worker.url), "unknown runtime")
        missing.append((runtime, f"{runtime} at {worker_host(worker.url)}: {reason}"))
    return missing


def runtimes_note(strips: Sequence, missing: list[tuple[str, str]]) -> str | None:
    """Markdown (our words only) when a job ran without some of its workers; it names the
    runtimes that did the work when a runtime was missing altogether."""
    if not missing:
        return None
    used = sorted({safe_name(strip.runtime, "unknown") for strip in strips})
    workers = plural(len(missing), "configured worker")
    if {runtime for runtime, _ in missing} - set(used):
        head = f"This job ran on **{', '.join(used)}** only: {workers} could not be used (below)."
    else:
        head = f"This job ran without {workers} (below), on **{', '.join(used)}**."
    return head + " The result is complete; the sidebar now shows the workers' state."


def failed_attempts(strips: Sequence) -> list[str]:
    """Plain-text lines, one per failed attempt, in full (a table column cut them off)."""
    return [
        f"Strip {strip.index + 1}, attempt {number}: {failover}"
        for strip in sorted(strips, key=lambda s: s.index)
        for number, failover in enumerate(strip.failovers, start=1)
    ]
