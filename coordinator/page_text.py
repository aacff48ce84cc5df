"""Words the page shows: plan captions, sizes, progress lines (page only; pure functions)."""
from __future__ import annotations

import re
from itertools import groupby
from typing import Sequence

from coordinator.page_chart import worker_host

# Inline Markdown and Streamlit's :color[...] directives; enough for one-line messages.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>#|~$])")


def escape_markdown(text: str) -> str:
    """Worker messages and file names are shown as text, not interpreted as Markdown."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{size:,} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size:,} bytes"


def image_summary(width: int, height: int, size: int) -> str:
    return f"{width}×{height} px · {human_bytes(size)}"


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


def event_line(event) -> str | None:
    """One Markdown line for the progress log, or None for events shown only in the status label."""
    where = f"{event.runtime or 'worker'} at `{worker_host(event.worker_url or '?')}`"
    strip = f"Strip {event.index + 1} ({event.op})"
    if event.kind == "done":
        return f":material/check_circle: {strip} done by {where} in {event.elapsed_ms:.0f} ms"
    if event.kind == "retry":
        return (f":material/warning: {strip}: {where} failed on attempt {event.attempt} "
                f"({escape_markdown(event.message or 'no reason given')}); trying again")
    if event.kind == "failed":
        return f":material/error: {strip} failed: {escape_markdown(event.message or 'no worker could do it')}"
    return None


def status_label(done: int, total: int, event=None) -> str:
    if event is not None and event.kind == "start":
        return f"Processing: {done}/{total} strips done · strip {event.index + 1} sent to {event.runtime or 'a worker'}"
    return f"Processing: {done}/{total} strips done"


def no_worker_message(error, strip_count: int) -> str:
    """Markdown naming the strip (1-based, as on the page) and each worker's reason."""
    if error.strip_index is None:
        head = f"No reachable worker can do **{error.op}**."
    else:
        head = (f"Strip {error.strip_index + 1} of {strip_count} (**{error.op}**) could not be done "
                f"by any worker.")
    if not error.attempts:
        return f"{head} No worker was tried."
    tried = "\n".join(f"- {escape_markdown(attempt)}" for attempt in error.attempts)
    return f"{head} Tried:\n{tried}"
