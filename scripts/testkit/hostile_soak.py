"""The long forms of the hostile-client attacks (issue 11, contract rules 3, 5 and 10), for the soak.

Each function attacks one running worker for a bounded time and returns (subject, figures, ok).
The short forms, with assertions, are in tests/contract/test_contract_rules.py. PASS means /healthz
stayed under 1 s (every probe answered 200), the worker is alive and the statuses are right.
Loopback only; every attack has a deadline and closes its sockets.
"""

from __future__ import annotations

import threading
import time

import requests

from scripts.testkit import hostile_client as hostile
from scripts.testkit.hostile_client import HealthProbe, Target
from scripts.testkit.scan_jpeg import many_scan_jpeg

HEALTH_BOUND = 1.0  # rule 10
EARLY_CLOSE_BOUND = 1 << 20  # rule 3: 64 KiB read + socket buffers, far below 10 MB
SCAN_SIDE = 7000  # 49 MP: under the 50 MP default, so the scan count is what is judged
TOKEN = "soak-hostile-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOKEN_ENV = {"WORKER_TOKEN": TOKEN}


def health_figures(probe: HealthProbe) -> tuple[str, bool]:
    """`/healthz max X ms, p95 Y ms (N probes)` and whether every probe was a 200 under 1 s."""
    times = sorted(seconds for seconds, _ in probe.samples)
    if not times:
        return "/healthz: no probes", False
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    text = f"/healthz max {times[-1] * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms ({len(times)} probes"
    text += f", {probe.failed()} not 200)" if probe.failed() else ")"
    return text, probe.failed() == 0 and times[-1] < HEALTH_BOUND and len(times) >= 10


def alive(worker) -> bool:
    if worker.proc.poll() is not None:
        return False
    try:
        return requests.get(worker.url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def verdict(worker, figures: str, ok: bool) -> tuple[str, bool]:
    if alive(worker):
        return figures, ok
    return figures + "; WORKER DIED", False


def idle_connections(worker, seconds: float = 25, count: int = 1000) -> tuple:
    target = Target.of(worker.url)
    with HealthProbe(worker.url) as probe, hostile.IdleConnections(target, count, seconds, renew_every=1.0) as idle:
        time.sleep(seconds)
    health, ok = health_figures(probe)
    figures = f"{health}; opened {idle.opened}, refused {idle.refused}, renewed {idle.renewed} after server close"
    return (f"{count} idle connections, renewed, {seconds:.0f}s", *verdict(worker, figures, ok and not idle.errors))


def slow_bodies(worker, authorised: bool, seconds: float = 20, count: int = 8) -> tuple:
    """`count` POSTs declaring 10 MB, 1 byte every 0.5 s; unauthorised ones must be 401 at once."""
    target = Target.of(worker.url)
    headers = AUTH if authorised else {}
    with (
        HealthProbe(worker.url) as probe,
        hostile.SlowBody(target, count, headers=headers, declared=10_000_000, interval=0.5, duration=seconds) as slow,
    ):
        time.sleep(seconds)
    health, ok = health_figures(probe)
    figures = f"{health}; bytes accepted after the head {slow.sent}; closed by worker {slow.closed}/{count}"
    figures += f"; statuses {sorted(slow.statuses)}"
    if not authorised:
        ok = ok and slow.statuses == [401] * count
    who = "authorised, every slot held" if authorised else "unauthorised"
    return (f"{count} slow bodies {who}, {seconds:.0f}s", *verdict(worker, figures, ok and not slow.errors))


def long_auth_flood(worker, seconds: float = 20) -> tuple:
    target = Target.of(worker.url)
    with (
        HealthProbe(worker.url) as probe,
        hostile.LongAuthFlood(target, parallel=4, duration=seconds, max_requests=2000) as flood,
    ):
        time.sleep(seconds)
    health, ok = health_figures(probe)
    replies = flood.replies
    statuses = sorted({reply.status if reply else None for reply in replies}, key=str)
    worst = max((reply.seconds for reply in replies if reply), default=0.0)
    ok = ok and replies and all(reply is not None and reply.status in (401, 431) for reply in replies)
    figures = f"{health}; {len(replies)} replies {statuses}, slowest {worst * 1000:.0f} ms"
    return (f"16 KB Authorization flood x4, {seconds:.0f}s", *verdict(worker, figures, bool(ok)))


def refused_push(worker) -> tuple:
    result = hostile.push_body(Target.of(worker.url), {}, total=10_000_000, limit=5)
    status = result.reply.status if result.reply else None
    ok = status == 401 and result.closed and result.accepted <= EARLY_CLOSE_BOUND
    figures = f"status {status}; worker took {result.accepted} bytes; closed after {result.seconds * 1000:.0f} ms"
    return ("refused 10 MB push (no token)", *verdict(worker, figures, ok))


def truncated_multiparts(worker, count: int = 20) -> tuple:
    target = Target.of(worker.url)
    replies = [hostile.truncated_multipart(target) for _ in range(count)]
    statuses = [reply.status if reply else None for reply in replies]
    figures = f"statuses {sorted(set(statuses), key=str)} x{count}"
    return (f"truncated multipart x{count}", *verdict(worker, figures, statuses == [400] * count))


def post_all(url: str, data: bytes, count: int) -> list:
    """POST `data` `count` times at once; each entry is (status or None, seconds)."""
    results: list = [(None, 0.0)] * count

    def one(index: int) -> None:
        started = time.monotonic()
        try:
            response = requests.post(url, data=data, headers={"Content-Type": "image/jpeg"}, timeout=60)
            results[index] = (response.status_code, time.monotonic() - started)
        except requests.RequestException:
            results[index] = (None, time.monotonic() - started)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=70)
    return results


def scan_jpegs(worker, scans: int, count: int = 4) -> tuple:
    """`count` concurrent 7000x7000 progressive JPEGs of `scans` scans. 100 scans is at the
    limit: 200, or 503 busy when admission is full, or 400 when the decode deadline ends it;
    127 scans is over it: all 400."""
    data = many_scan_jpeg(scans, SCAN_SIDE)
    with HealthProbe(worker.url) as probe:
        results = post_all(worker.url + "/process?op=invert", data, count)
        time.sleep(1)  # a probe or two after the last reply
    health, ok = health_figures(probe)
    statuses = [status for status, _ in results]
    allowed = {200, 400, 503} if scans <= 100 else {400}
    ok = ok and all(status in allowed for status in statuses)
    worst = max(seconds for _, seconds in results)
    figures = f"{health}; statuses {statuses}; slowest reply {worst * 1000:.0f} ms ({len(data) / 1e6:.1f} MB each)"
    return (f"{count} x {scans}-scan {SCAN_SIDE}x{SCAN_SIDE} JPEG", *verdict(worker, figures, ok))
