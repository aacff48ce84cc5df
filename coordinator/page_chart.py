"""Per-strip timing table and chart data for the page (pure: strip results in, DataFrames out)."""
from __future__ import annotations

from typing import Sequence
from urllib.parse import urlsplit

import pandas as pd

PARTS = ("processing ms", "transfer ms")


def worker_host(url: str) -> str:
    """`http://10.0.1.5:5001` -> `10.0.1.5:5001`: short enough for a label."""
    return urlsplit(url).netloc or url


def split_ms(strip) -> tuple[float, float]:
    """(processing, transfer) ms; a worker that sent no X-Processing-Ms counts as all transfer."""
    if strip.worker_ms is None:
        return 0.0, max(strip.total_ms, 0.0)
    transfer = strip.transfer_ms if strip.transfer_ms is not None else strip.total_ms - strip.worker_ms
    return max(strip.worker_ms, 0.0), max(transfer, 0.0)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def strip_name(strip) -> str:
    return f"strip {strip.index + 1} · {strip.runtime or worker_host(strip.worker_url)}"


def strip_table(strips: Sequence) -> pd.DataFrame:
    """One row per strip: what was done, where, in how many attempts and how long it took."""
    rows = [{
        "strip": strip.index + 1,
        "rows": f"{strip.top}–{strip.bottom - 1}",
        "op": strip.op,
        "runtime": strip.runtime,
        "worker": worker_host(strip.worker_url),
        "attempts": strip.attempts,
        "processing ms": _ms(strip.worker_ms),
        "transfer ms": _ms(strip.transfer_ms),
        "total ms": _ms(strip.total_ms),
        "failed attempts": "; ".join(strip.failovers),
    } for strip in sorted(strips, key=lambda s: s.index)]
    return pd.DataFrame(rows)


def timing_frame(strips: Sequence) -> pd.DataFrame:
    """One row per strip, in image order: processing (inside the worker) and transfer (the rest of
    the request's wall time: network, encoding, queueing), for a stacked bar each."""
    rows = []
    for strip in sorted(strips, key=lambda s: s.index):
        processing, transfer = split_ms(strip)
        rows.append({"strip": strip_name(strip), PARTS[0]: round(processing, 1), PARTS[1]: round(transfer, 1)})
    return pd.DataFrame(rows, columns=["strip", *PARTS])


def chart_height(strip_count: int) -> int:
    return 150 + 30 * strip_count  # axis, title and legend take ~150 px of the height
