"""The engine's retry, backoff and failover policy without processes: the pure `decide`, and
whole jobs run against FakeTransport, an in-memory stand-in for transport.Transport (as
httpx's MockTransport stands in for its transports). No socket is opened here."""

from __future__ import annotations

import http.client
import io
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from coordinator import imaging
from coordinator.config import CoordinatorConfig
from coordinator.discovery import WorkerStatus
from coordinator.engine import run_job
from coordinator.errors import NoWorkerError
from coordinator.routing import (
    BAD_REPLY,
    BUSY,
    DOWN,
    FAILOVER,
    GIVE_UP,
    REFUSED,
    RETRY_SAME,
    SERVER,
    TOKEN,
    UNFIT,
    Failure,
    RetryPolicy,
    Router,
    WorkerSlots,
    decide,
)
from coordinator.transport import MIN_TRANSFER_RATE, Reply, TransportError

OPS = ("grayscale", "sepia", "invert", "blur")


# --- the pure decision ------------------------------------------------------------------

POLICY = RetryPolicy(retry_after_max=2.0, backoff=0.05, backoff_cap=1.0)


def test_busy_is_retried_after_its_retry_after_capped_and_never_before_the_backoff():
    decision = decide(Failure("busy", BUSY, 0.5), 1, POLICY)
    assert (decision.action, decision.delay, decision.mark_down) == (RETRY_SAME, 0.5, False)
    assert decide(Failure("busy", BUSY, 30.0), 1, POLICY).delay == 2.0  # capped at retry_after_max
    assert decide(Failure("busy", BUSY, 0.0), 1, POLICY).delay == 0.05  # no Retry-After: the backoff
    assert decide(Failure("busy", BUSY, float("nan")), 1, POLICY).delay == 0.05
    assert decide(Failure("busy", BUSY, 0.01), 3, POLICY).delay == 0.2  # backoff doubles per try


def test_backoff_doubles_per_try_on_the_worker_and_is_capped():
    delays = [decide(Failure("x", SERVER), tries, POLICY).delay for tries in range(1, 9)]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.4] and delays[-1] == 1.0 and max(delays) == 1.0


@pytest.mark.parametrize(
    ("kind", "action", "down"),
    [
        (DOWN, FAILOVER, True),  # connection error, timeout, redirect: down for the whole job
        (TOKEN, FAILOVER, False),  # 401: not this worker for this strip
        (UNFIT, FAILOVER, False),  # its limits are too small for this strip
        (SERVER, RETRY_SAME, False),  # 5xx: stays a candidate, others first (least tried)
        (BAD_REPLY, RETRY_SAME, False),
        (REFUSED, GIVE_UP, False),  # other 4xx: our request is wrong, no worker will take it
    ],
)
def test_each_failure_kind_has_one_action(kind, action, down):
    decision = decide(Failure("why", kind), 1, POLICY)
    assert (decision.action, decision.mark_down) == (action, down)


# --- a fake transport ---------------------------------------------------------------------


@dataclass
class Sent:
    method: str
    url: str
    limits: object
    headers: dict
    body: bytes | None
    at: float

    @property
    def worker(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def op(self) -> str:
        return parse_qs(urlsplit(self.url).query)["op"][0]


class FakeTransport:
    """Transport's interface in memory: `handler(sent)` returns a Reply or raises
    TransportError; every request is recorded with its time, and the in-flight count per
    worker is tracked so a test can check the slots."""

    def __init__(self, handler):
        self.handler = handler
        self.sent: list[Sent] = []
        self.lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}
        self.closed = False

    def exchange(self, method, url, limits, headers=None, body=None, cancel=None, tls=None) -> Reply:
        sent = Sent(method, url, limits, dict(headers or {}), body, time.monotonic())
        with self.lock:
            self.sent.append(sent)
            self.in_flight[sent.worker] = self.in_flight.get(sent.worker, 0) + 1
            self.most_in_flight[sent.worker] = max(self.most_in_flight.get(sent.worker, 0), self.in_flight[sent.worker])
        try:
            return self.handler(sent)
        finally:
            with self.lock:
                self.in_flight[sent.worker] -= 1

    def close(self) -> None:
        self.closed = True

    def to(self, worker: str) -> list[Sent]:
        return [sent for sent in self.sent if sent.worker == worker]


def reply(status: int, body: bytes = b"", **headers) -> Reply:
    message = http.client.HTTPMessage()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return Reply(status, message, body)


def inverted(sent: Sent) -> Reply:
    """What a healthy worker answers to an invert request: the body's rows inverted, raw PPM."""
    assert sent.op == "invert"
    with Image.open(io.BytesIO(sent.body)) as image:
        pixels = 255 - np.asarray(image.convert("RGB"))
    data, content_type = imaging.encode_strip(pixels, "raw", 1)
    return reply(200, data, Content_Type=content_type, X_Processing_Ms="1")


def error(status: int, code: str, **headers) -> Reply:
    return reply(status, b'{"error": {"code": "%s", "message": "m"}}' % code.encode(), **headers)


def worker(url: str, max_inflight: int = 4) -> WorkerStatus:
    return WorkerStatus(url, True, service="worker-python", runtime="python", operations=OPS, max_inflight=max_inflight)


def config(urls, **changes) -> CoordinatorConfig:
    return CoordinatorConfig(**{"workers": tuple(urls), "source": "test", "transport": "raw", **changes})


PIXELS = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)


def run(urls, fake, strips=1, workers=None, on_event=None, **changes):
    """run_job: PIXELS inverted through `fake` by `urls` (each healthy, 4 slots, unless `workers`)."""
    workers = workers or [worker(url) for url in urls]
    return run_job(
        b"",
        config(urls, **changes),
        plan="invert",
        strips=strips,
        pixels=PIXELS,
        workers=workers,
        session=fake,
        on_event=on_event,
    )


def job(urls, handler, strips=1, workers=None, on_event=None, **changes):
    fake = FakeTransport(handler)
    result = run(urls, fake, strips, workers, on_event, **changes)
    assert np.array_equal(result.pixels, 255 - PIXELS)
    return result, fake


def first_then(first, then=inverted):
    """A handler that answers `first` to the first request and `then` to the rest."""
    calls = []

    def handler(sent):
        calls.append(sent)
        return first(sent) if len(calls) == 1 else then(sent)

    return handler


# --- jobs against the fake transport ----------------------------------------------------------


def test_busy_worker_is_asked_again_after_its_retry_after():
    events = []
    result, fake = job(
        ["http://busy-a"],
        first_then(lambda sent: error(503, "busy", Retry_After="0.3")),
        on_event=events.append,
        retry_after_max=2.0,
    )
    first, second = fake.sent
    assert second.at - first.at >= 0.3  # honoured
    assert result.strips[0].attempts == 2 and result.strips[0].failovers == ["http://busy-a: HTTP 503 busy: m"]
    assert [event.kind for event in events] == ["start", "retry", "start", "done"]


def test_a_long_retry_after_is_capped():
    started = time.monotonic()
    _, fake = job(
        ["http://busy-b"], first_then(lambda sent: error(503, "busy", Retry_After="3600")), retry_after_max=0.2
    )
    first, second = fake.sent
    assert second.at - first.at >= 0.2
    assert time.monotonic() - started < 30  # not the hour it asked for (generous bound: shared machine)


def test_a_failing_worker_is_retried_no_sooner_than_the_backoff():
    _, fake = job(["http://flaky"], first_then(lambda sent: error(500, "internal")), backoff=0.25)
    assert fake.sent[1].at - fake.sent[0].at >= 0.25


def test_connection_error_fails_over_and_marks_the_worker_down_for_the_job():
    def handler(sent):
        if sent.worker == "http://dead":
            raise TransportError("connection refused", "connect")
        return inverted(sent)

    result, fake = job(["http://dead", "http://alive"], handler, strips=4)
    assert {strip.worker_url for strip in result.strips} == {"http://alive"}
    assert fake.to("http://dead")  # it was tried, so the failover was exercised
    failed = [strip for strip in result.strips if strip.failovers]
    assert failed and all(strip.failovers == ["http://dead: connection refused"] for strip in failed)


def test_5xx_fails_over_to_another_worker_first():
    def handler(sent):
        return error(500, "internal") if sent.worker == "http://broken" else inverted(sent)

    result, fake = job(
        ["http://broken", "http://good"], handler, workers=[worker("http://broken"), worker("http://good")]
    )
    strip = result.strips[0]
    assert strip.worker_url == "http://good" and strip.attempts == 2
    assert strip.failovers == ["http://broken: HTTP 500 internal: m"]
    assert [sent.worker for sent in fake.sent] == ["http://broken", "http://good"]


def test_gives_up_once_every_worker_is_tried():
    def handler(sent):
        raise TransportError("connection refused", "connect")

    fake = FakeTransport(handler)
    with pytest.raises(NoWorkerError) as caught:
        run(["http://x1", "http://x2"], fake)
    assert caught.value.exit_code == 3 and caught.value.strip_index == 0
    assert caught.value.attempts == ["http://x1: connection refused", "http://x2: connection refused"]
    assert sorted(sent.worker for sent in fake.sent) == ["http://x1", "http://x2"]  # each once: both down


def test_gives_up_after_max_attempts_on_a_worker_that_keeps_failing():
    fake = FakeTransport(lambda sent: error(500, "internal"))
    with pytest.raises(NoWorkerError, match="no worker could do strip 1"):
        run(["http://x3"], fake, max_attempts=3, backoff=0.01)
    assert len(fake.sent) == 3


def test_a_4xx_is_not_retried():
    fake = FakeTransport(lambda sent: error(400, "bad_request"))
    with pytest.raises(NoWorkerError, match=r"http://r1 refused strip 1 \(op invert\)"):
        run(["http://r1", "http://r2"], fake)
    assert len(fake.sent) == 1


def test_token_rejected_tries_the_other_worker():
    def handler(sent):
        return error(401, "unauthorized") if sent.worker == "http://t1" else inverted(sent)

    result, _ = job(["http://t1", "http://t2"], handler, strips=2)
    assert {strip.worker_url for strip in result.strips} == {"http://t2"}


def test_a_slow_worker_gets_the_exchange_deadline_and_the_strip_moves_on():
    """The transport enforces the deadline (tests/reliability/test_faults.py does it on sockets); here the
    engine must ask for the right one and fail over when it runs out."""

    def handler(sent):
        if sent.worker == "http://slow":
            raise TransportError(f"no reply within the {sent.limits.total:.1f} s deadline", "timeout")
        return inverted(sent)

    settings = {"connect_timeout": 2.0, "read_timeout": 5.0}
    result, fake = job(["http://slow", "http://quick"], handler, **settings)
    slow = fake.to("http://slow")[0]
    raw = PIXELS.size  # the reply's raw pixels: one strip, all rows
    assert slow.limits.total == pytest.approx(2.0 + 5.0 + (len(slow.body) + raw) / MIN_TRANSFER_RATE)
    assert (slow.limits.connect, slow.limits.idle) == (2.0, 5.0) and slow.limits.max_body == 2 * raw + 65536
    assert result.strips[0].worker_url == "http://quick"
    assert result.strips[0].failovers[0].startswith("http://slow: no reply within")


def test_requests_in_flight_stay_within_the_worker_slots_across_jobs():
    def handler(sent):
        time.sleep(0.05)
        return inverted(sent)

    fake = FakeTransport(handler)
    url, errors = "http://slots-a", []

    def one_job():
        try:
            run([url], fake, strips=8, workers=[worker(url, max_inflight=2)])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one_job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(fake.sent) == 16
    assert fake.most_in_flight[url] == 2  # the cap, reached, never passed: two jobs share it


def test_a_router_can_own_its_slots():
    status = worker("http://own-slots", max_inflight=3)
    own, shared = Router([status], slots=WorkerSlots()), Router([status])
    assert own.slots is not shared.slots
    assert own.slots.for_worker(status) is own.slots.for_worker(status)
    assert own.slots.for_worker(status) is not shared.slots.for_worker(status)
