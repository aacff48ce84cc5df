"""A worker's /metrics (contract README, "Metrics") read into the figures `stripes workers` and
the page show: /process requests, errors (4xx/5xx), 503s, in flight, p50/p95 latency.

The Prometheus text is parsed here (a small parser: the coordinator does not depend on
prometheus_client), from a body capped at METRICS_MAX_BYTES and a reply under a deadline; a
line that is not a sample is skipped, so a hostile worker can only make its own figures wrong."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from coordinator.transport import Limits, Transport, TransportError, daemon_map

METRICS_MAX_BYTES = 1 << 20  # a real body is ~10 KiB (a few dozen series)
MAX_SAMPLES = 20_000
DURATION = "http_server_request_duration_seconds"
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.{0,2000})\})?[ \t]+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.){0,500})"')


@dataclass
class WorkerFigures:
    url: str
    requests: int = 0  # /process requests answered
    errors: int = 0  # of those, 4xx and 5xx
    busy: int = 0  # of those, 503
    inflight: int = 0  # requests being answered now (any route)
    p50_ms: float | None = None  # /process latency, from the histogram's buckets
    p95_ms: float | None = None
    error: str | None = None  # why there are no figures


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of each sample line, at most MAX_SAMPLES; others skipped."""
    count = 0
    for line in text.splitlines():
        match = SAMPLE.fullmatch(line.strip())
        if line.startswith("#") or match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        if not math.isfinite(value) or abs(value) > 1e15:  # counts we could not show (int(inf) raises)
            continue
        yield match.group(1), dict(LABEL.findall(match.group(2) or "")), value
        count += 1
        if count >= MAX_SAMPLES:
            return


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative buckets {le: count}: linear within the bucket; the
    +Inf bucket answers the highest finite bound."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def bucket_bound(text: str) -> float:
    """A bucket's `le` (NaN when it is not a number: that bucket is skipped)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def figures(url: str, text: str) -> WorkerFigures:
    result, buckets = WorkerFigures(url), {}
    for name, labels, value in samples(text):
        if name == "http_server_active_requests":
            result.inflight = int(value)
        if labels.get("http_route") != "/process":
            continue
        if name == f"{DURATION}_count":
            status = labels.get("http_response_status_code", "")
            result.requests += int(value)
            result.errors += int(value) if status[:1] in ("4", "5") else 0
            result.busy += int(value) if status == "503" else 0
        elif name == f"{DURATION}_bucket":
            le = bucket_bound(labels.get("le", ""))
            if not math.isnan(le):
                buckets[le] = buckets.get(le, 0.0) + value
    p50, p95 = quantile(0.5, buckets), quantile(0.95, buckets)
    result.p50_ms = None if p50 is None else p50 * 1000
    result.p95_ms = None if p95 is None else p95 * 1000
    return result


def fetch(url: str, timeout: float, transport: Transport, tls=None) -> WorkerFigures:
    """One worker's figures; a failure is in `error`."""
    limits = Limits(connect=timeout, idle=timeout, total=2 * timeout, max_body=METRICS_MAX_BYTES)
    try:
        reply = transport.exchange("GET", f"{url}/metrics", limits, headers={"Accept": "text/plain"}, tls=tls)
    except TransportError as exc:
        return WorkerFigures(url, error=f"/metrics: {exc.reason}")
    if reply.status != 200:
        return WorkerFigures(url, error=f"/metrics: HTTP {reply.status}")
    if not reply.content_type.startswith("text/plain"):
        return WorkerFigures(url, error="/metrics: not Prometheus text")
    return figures(url, reply.body.decode("utf-8", "replace"))


def fetch_all(urls: list[str], timeout: float, tls=None) -> list[WorkerFigures]:
    """Every worker's figures at once; tls: the config's TlsSettings (fleet CA and name)."""
    transport = Transport(max(1, len(urls)))
    try:
        return daemon_map(lambda url: fetch(url, timeout, transport, tls), urls)
    finally:
        transport.close()


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def line(one: WorkerFigures) -> str:
    """The figures as one plain line (the CLI table's cells, the page's text)."""
    if one.error:
        return one.error
    return (
        f"{one.requests} requests, {one.errors} errors, {one.busy} busy (503), {one.inflight} in flight, "
        f"p50 {ms(one.p50_ms)}, p95 {ms(one.p95_ms)}"
    )
