"""Per-strip timing table and chart data for the page (pure: strip results in, DataFrames out)."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import pandas as pd

# What each strip's request time was spent on, as measured: the worker's own X-Processing-Ms;
# encoding (or cutting) the body and waiting for a free slot on that worker, both timed by the
# engine before the request left; and the rest, which is the network (upload, reply, decode).
PARTS = ("in worker ms", "network ms", "encoding ms", "waiting ms")
COLOURS = ["#1f77b4", "#ffbf00", "#2ca02c", "#9e9e9e"]


def worker_host(url: str) -> str:
    """`http://10.0.1.5:5001` -> `10.0.1.5:5001`: short enough for a label."""
    return urlsplit(url).netloc or url


def split_ms(strip) -> dict[str, float]:
    """The strip's total_ms split into PARTS; a worker that sent no X-Processing-Ms counts as 0
    in the worker (its time is then inside "network")."""
    encode = max(getattr(strip, "encode_ms", 0.0) or 0.0, 0.0)
    queue = max(getattr(strip, "queue_ms", 0.0) or 0.0, 0.0)
    worker = max(strip.worker_ms or 0.0, 0.0)
    network = max(strip.total_ms - worker - encode - queue, 0.0)
    return dict(zip(PARTS, (worker, network, encode, queue), strict=True))


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def strip_name(strip, runtime: str) -> str:
    return f"strip {strip.index + 1} · {runtime}"


def strip_table(strips: Sequence, runtime_name=lambda strip: strip.runtime or "") -> pd.DataFrame:
    """One row per strip: what was done, where, in how many attempts and how long it took."""
    rows = []
    for strip in sorted(strips, key=lambda s: s.index):
        parts = split_ms(strip)
        rows.append(
            {
                "strip": strip.index + 1,
                "rows": f"{strip.top:,}–{strip.bottom - 1:,}",
                "op": strip.op,
                "runtime": runtime_name(strip),
                "worker": worker_host(strip.worker_url),
                "attempts": strip.attempts,
                **{part: round(value, 1) for part, value in parts.items()},
                "total ms": _ms(strip.total_ms),
                "failed attempts": "; ".join(strip.failovers),
            }
        )
    return pd.DataFrame(rows)


def timing_frame(strips: Sequence, runtime_name=lambda strip: strip.runtime or "") -> pd.DataFrame:
    """One row per strip, in image order, with PARTS for a stacked bar each."""
    rows = []
    for strip in sorted(strips, key=lambda s: s.index):
        parts = split_ms(strip)
        rows.append(
            {
                "strip": strip_name(strip, runtime_name(strip) or worker_host(strip.worker_url)),
                **{part: round(value, 1) for part, value in parts.items()},
            }
        )
    return pd.DataFrame(rows, columns=["strip", *PARTS])


def chart_height(strip_count: int) -> int:
    return 150 + 30 * strip_count  # axis, title and legend take ~150 px of the height
