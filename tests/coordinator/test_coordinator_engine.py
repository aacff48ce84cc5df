"""The coordinator engine against the real workers on loopback: plans, strips, exact blur,
failover (kill -9, SIGSTOP), retries, and the errors when no worker can do a strip."""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import re
import signal
import threading

import numpy as np
import pytest
from PIL import Image, ImageFilter
from worker_python import ops as reference

from coordinator import imaging
from coordinator.config import CoordinatorConfig
from coordinator.discovery import discover
from coordinator.engine import run_job
from coordinator.errors import InputError, NoWorkerError
from scripts.testkit.faultproxy import FaultProxy
from scripts.testkit.images import png_bytes


def photo(height: int, width: int, seed: int = 3) -> np.ndarray:
    """Smooth gradients plus noise: photo-like, and different in every row."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    base = 128 + 90 * np.sin(6 * x + 3 * y + np.array([0, 1, 2]))
    return np.clip(base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def expected(pixels: np.ndarray, ops: list[str], radius: float = 2) -> np.ndarray:
    """worker-python's own image functions, strip by strip (point ops need no halo)."""
    height = pixels.shape[0]
    out = np.empty_like(pixels)
    for index, op in enumerate(ops):
        top, bottom = index * height // len(ops), (index + 1) * height // len(ops)
        out[top:bottom] = np.asarray(reference.apply(op, Image.fromarray(pixels[top:bottom]), radius=radius))
    return out


def config_for(urls, **overrides) -> CoordinatorConfig:
    return dataclasses.replace(CoordinatorConfig(workers=tuple(urls), source="test"), **overrides)


def assert_close(actual: np.ndarray, wanted: np.ndarray) -> None:
    """The contract lets runtimes differ by one per channel."""
    assert actual.shape == wanted.shape
    assert np.abs(actual.astype(int) - wanted.astype(int)).max() <= 1


def test_seed_plan_routes_each_op_to_its_own_runtime(local_fleet):
    pixels = photo(121, 90)
    threads = set()
    result = run_job(png_bytes(pixels), config_for(local_fleet), on_event=lambda e: threads.add(threading.get_ident()))
    assert threads == {threading.get_ident()}  # events arrive on the caller's thread (Streamlit needs it)
    assert result.ops == ["grayscale", "sepia"]
    assert [s.runtime for s in result.strips] == ["python", "nodejs"]
    assert [(s.top, s.bottom) for s in result.strips] == [(0, 60), (60, 121)]
    assert all(s.attempts == 1 and not s.failovers and s.wire == "raw" for s in result.strips)
    assert_close(result.pixels, expected(pixels, result.ops))
    assert result.image.mode == "RGB" and result.image.size == (90, 121)


def test_already_decoded_pixels_are_used_instead_of_decoding_again(local_fleet):
    """The page decodes once for its preview and hands the array over; the bytes are not
    decoded again (here they are not even an image)."""
    pixels = photo(40, 33, seed=9)
    result = run_job(b"not decoded", config_for(local_fleet), pixels=pixels)
    assert_close(result.pixels, expected(pixels, ["grayscale", "sepia"]))
    assert all(strip.request_id.endswith(f"-s{strip.index}-a1") for strip in result.strips)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_one_op_for_all_strips(local_fleet, count):
    pixels = photo(53, 31, seed=count)
    events = []
    result = run_job(png_bytes(pixels), config_for(local_fleet), plan="invert", strips=count, on_event=events.append)
    assert len(result.strips) == count and result.ops == ["invert"] * count
    assert np.array_equal(result.pixels, 255 - pixels)
    assert sorted(e.index for e in events if e.kind == "done") == list(range(count))
    if count > 1:  # load is spread over both workers
        assert {s.worker_url for s in result.strips} == set(local_fleet)


@pytest.mark.parametrize("height, count", [(1, 1), (1, 3), (2, 7), (7, 3), (13, 7)])
def test_small_and_odd_heights(local_fleet, height, count):
    pixels = photo(height, 17)
    result = run_job(png_bytes(pixels), config_for(local_fleet), plan="seed", strips=count)
    assert len(result.strips) == min(height, count)  # capped by the image height
    assert_close(result.pixels, expected(pixels, result.ops))


def test_comma_plan_and_strips_must_agree(local_fleet):
    pixels = photo(30, 20)
    result = run_job(png_bytes(pixels), config_for(local_fleet), plan="sepia,invert,grayscale", strips=3)
    assert_close(result.pixels, expected(pixels, ["sepia", "invert", "grayscale"]))
    with pytest.raises(InputError, match="plan lists 3 ops but there are 2 strips"):
        run_job(png_bytes(pixels), config_for(local_fleet), plan="sepia,invert,grayscale", strips=2)
    with pytest.raises(InputError, match="only 2 rows"):
        run_job(png_bytes(photo(2, 20)), config_for(local_fleet), plan="sepia,invert,grayscale", strips=3)


@pytest.mark.parametrize("radius", [0.7, 2.5, 15])
@pytest.mark.parametrize("count", [2, 3, 7])
def test_blur_in_strips_is_byte_identical_to_one_process(local_fleet, radius, count):
    pixels = photo(150, 64, seed=int(radius * 10))
    result = run_job(png_bytes(pixels), config_for(local_fleet), plan="blur", strips=count, params={"radius": radius})
    whole = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))
    assert np.array_equal(result.pixels, whole)
    assert {s.runtime for s in result.strips} == {"python", "nodejs"}  # both runtimes took part


def test_blur_goes_only_to_workers_that_offer_it(local_fleet, python_worker, nodejs_worker):
    statuses = discover(config_for(local_fleet))
    without_blur = [
        dataclasses.replace(s, operations=tuple(o for o in s.operations if o != "blur")) if s.runtime == "nodejs" else s
        for s in statuses
    ]
    result = run_job(png_bytes(photo(40, 20)), config_for(local_fleet), plan="blur", strips=3, workers=without_blur)
    assert {s.worker_url for s in result.strips} == {python_worker.url}
    nobody = [dataclasses.replace(s, operations=("grayscale",)) for s in statuses]
    with pytest.raises(NoWorkerError) as info:
        run_job(png_bytes(photo(40, 20)), config_for(local_fleet), plan="seed", workers=nobody)
    message = str(info.value)
    assert "no healthy worker offers sepia (strip 2)" in message
    assert f"{nodejs_worker.url}: does not offer sepia" in message and "\n" not in message


def test_all_workers_down_names_each_worker(worker_factory):
    config = config_for(["http://127.0.0.1:9", "http://127.0.0.1:1"], health_timeout=0.5)
    with pytest.raises(NoWorkerError) as info:
        run_job(png_bytes(photo(10, 10)), config)
    assert info.value.exit_code == 3
    assert "http://127.0.0.1:9: unreachable: connection refused" in str(info.value)
    assert "http://127.0.0.1:1: unreachable" in str(info.value)


def signal_all(worker, signum: int) -> None:
    """Signal the worker's whole process group: gunicorn's master and its worker process."""
    os.killpg(worker.pid, signum)


@pytest.fixture
def pair(worker_factory):
    """A fresh python + nodejs pair these tests may kill or stop."""
    workers = [worker_factory("python"), worker_factory("nodejs")]
    yield workers
    for worker in workers:
        worker.stop()


def test_failover_when_a_worker_is_killed(pair):
    python, nodejs = pair
    pixels = photo(200, 80)
    config = config_for([python.url, nodejs.url])
    healthy = run_job(png_bytes(pixels), config, strips=4)
    statuses = discover(config)  # taken while both were up: the python worker dies after it
    signal_all(python, signal.SIGKILL)
    python.proc.wait(timeout=10)
    events = []
    result = run_job(png_bytes(pixels), config, strips=4, workers=statuses, on_event=events.append)
    assert np.array_equal(result.pixels, healthy.pixels)
    assert {s.worker_url for s in result.strips} == {nodejs.url}
    failed_over = [s for s in result.strips if s.failovers]
    assert failed_over and all(python.url in s.failovers[0] for s in failed_over)
    assert any(e.kind == "retry" and e.worker_url == python.url for e in events)


def test_failover_when_a_worker_hangs(pair):
    python, nodejs = pair
    pixels = photo(160, 60)
    config = config_for([python.url, nodejs.url], connect_timeout=0.5, read_timeout=1.5)
    healthy = run_job(png_bytes(pixels), config, strips=2)
    statuses = discover(config)
    signal_all(nodejs, signal.SIGSTOP)
    try:
        result = run_job(png_bytes(pixels), config, strips=2, workers=statuses)
    finally:
        signal_all(nodejs, signal.SIGCONT)
    assert np.array_equal(result.pixels, healthy.pixels)
    sepia = result.strips[1]
    assert sepia.worker_url == python.url and "timed out" in sepia.failovers[0]


def test_discovery_reports_a_hung_worker_without_failing(pair):
    python, nodejs = pair
    signal_all(nodejs, signal.SIGSTOP)
    try:
        statuses = discover(config_for([python.url, nodejs.url], health_timeout=0.5))
    finally:
        signal_all(nodejs, signal.SIGCONT)
    assert [s.ok for s in statuses] == [True, False]
    assert statuses[1].error.startswith("unreachable: ") and "timed out" in statuses[1].error


def test_busy_worker_is_retried_after_retry_after(worker_factory):
    busy = worker_factory("python", {"WORKER_MAX_INFLIGHT": "1"})
    config = config_for([busy.url], max_attempts=20, retry_after_max=0.2)
    # Pretend it takes 8 at once, so our own per-worker cap does not hide its 503s.
    statuses = [dataclasses.replace(s, max_inflight=8) for s in discover(config)]
    pixels = photo(400, 300)
    result = run_job(png_bytes(pixels), config, plan="invert", strips=6, workers=statuses)
    assert np.array_equal(result.pixels, 255 - pixels)
    assert any("busy" in reason for s in result.strips for reason in s.failovers)


def test_token_rejected_is_named_and_other_4xx_are_not_retried(worker_factory):
    guarded = worker_factory("python", {"WORKER_TOKEN": "right"})
    small = worker_factory("nodejs", {"WORKER_MAX_BYTES": "1000"})
    pixels = photo(60, 60)
    with pytest.raises(NoWorkerError, match=f"token rejected by {guarded.url}"):
        run_job(png_bytes(pixels), config_for([guarded.url], token="wrong"), plan="invert", strips=1)
    assert run_job(png_bytes(pixels), config_for([guarded.url], token="right"), plan="invert", strips=1)
    # 413 means our request is bad: the strip fails at once although another worker could try.
    # (The small worker advertises its 1000-byte limit, so we must pretend it said more.)
    config = config_for([small.url, guarded.url], token="right")
    lying = [dataclasses.replace(s, max_bytes=50_000_000) if s.url == small.url else s for s in discover(config)]
    with pytest.raises(NoWorkerError) as info:
        run_job(png_bytes(pixels), config, plan="sepia", strips=1, workers=lying)
    assert f"{small.url} refused strip 1 (op sepia)" in str(info.value) and "too_large" in str(info.value)
    assert len(info.value.attempts) == 1


@pytest.mark.parametrize("transport", ["png", "webp-lossless"])
def test_compressed_transports_give_the_same_pixels(local_fleet, transport):
    pixels = photo(70, 50)
    raw = run_job(png_bytes(pixels), config_for(local_fleet), plan="blur", strips=3)
    other = run_job(png_bytes(pixels), config_for(local_fleet, transport=transport), plan="blur", strips=3)
    assert np.array_equal(raw.pixels, other.pixels) and {s.wire for s in other.strips} == {transport}


def test_a_strip_failing_over_after_its_first_piece_was_deflated_still_gives_an_exact_png(
    python_worker, worker_factory
):
    """The output PNG is deflated as pieces arrive: a strip whose second piece fails after its
    first piece's rows were stitched (and their PNG chunk deflated) is done again by python, and
    the file is byte for byte the encode of the result. (Both runtimes' sepia are identical, so
    a chunk deflated from other rows is caught by the pngfast unit tests, not here.)"""
    pixels = photo(600, 40)
    # max_bytes for 400 rows: the sepia strip goes to nodejs as 2 pieces of 300 rows, one at a time
    nodejs = worker_factory("nodejs", {"WORKER_MAX_BYTES": str(32 + 400 * 40 * 3), "WORKER_MAX_INFLIGHT": "1"})
    proxy = FaultProxy(nodejs.url, mode="garbage").start()
    proxy.passes = 1
    try:
        config = config_for([proxy.url, python_worker.url], read_timeout=5)
        result = run_job(png_bytes(pixels), config, plan="sepia", strips=1, png_level=1)
    finally:
        proxy.stop()
    assert proxy.faulted == 1 and proxy.passes == 0  # piece 1 passed (stitched, deflated), piece 2 failed
    strip = result.strips[0]
    assert strip.worker_url == python_worker.url and proxy.url in strip.failovers[0]
    assert_close(result.pixels, expected(pixels, ["sepia"]))
    assert result.png == imaging.encode_output(result.pixels, "png", png_level=1)
    with Image.open(io.BytesIO(result.png)) as image:
        assert np.array_equal(np.asarray(image), result.pixels)


@pytest.mark.parametrize(
    "mode, words",
    [
        ("narrow", "bad reply: 79x"),
        ("one_column", "bad reply: 1x"),
        ("garbage", "bad reply"),
        ("close_mid_response", "connection"),
    ],
)
def test_a_bad_reply_is_never_stitched(python_worker, nodejs_worker, mode, words):
    pixels = photo(90, 80)
    proxy = FaultProxy(python_worker.url, mode=mode).start()
    try:
        config = config_for([proxy.url, nodejs_worker.url], read_timeout=5)
        result = run_job(png_bytes(pixels), config, plan="invert", strips=2)
    finally:
        proxy.stop()
    assert proxy.faulted >= 1
    assert np.array_equal(result.pixels, 255 - pixels)
    failed_over = [s for s in result.strips if s.failovers]
    assert failed_over and all(s.worker_url == nodejs_worker.url for s in failed_over)
    assert words in failed_over[0].failovers[0]


def test_many_strips_on_a_tall_narrow_image(local_fleet):
    pixels = photo(300, 5)
    result = run_job(png_bytes(pixels), config_for(local_fleet), plan="invert", strips=100)
    assert len(result.strips) == 100 and np.array_equal(result.pixels, 255 - pixels)


# -- discovery against a hostile worker (tests/support/hostile_worker.py) ----------------------


def hostile_status(**modes):
    from tests.support.hostile_worker import HostileWorker

    with HostileWorker(**modes) as bad:
        [status] = discover(config_for([bad.url], health_timeout=2))
        return status, bad


def test_a_huge_health_reply_is_cut_off_at_the_cap():
    """11.12: a /healthz body with no end (2 GB before) is read only up to 64 KiB."""
    status, bad = hostile_status(health="huge")
    assert not status.ok and "over the 65536 byte limit" in status.error, status.error
    assert bad.sent < 32_000_000, f"the worker got {bad.sent} bytes out of us"  # socket buffers, not 2 GB


def test_a_health_redirect_is_not_followed():
    from tests.support.hostile_worker import HostileWorker

    with HostileWorker(health="html") as elsewhere:
        status, _ = hostile_status(health="redirect", location=f"{elsewhere.url}/healthz")
        assert elsewhere.requests["/healthz"] == 0
    assert not status.ok and f"redirected (HTTP 302 to {elsewhere.url}/healthz)" in status.error


def test_a_web_page_is_not_a_worker():
    """12.11: before, `unreachable: JSONDecodeError: Expecting value ...`."""
    status, bad = hostile_status(health="html")
    assert status.error == f"not a worker: {bad.url} answered /healthz with HTTP 200 text/html"


def test_markup_in_health_fields_never_reaches_a_status():
    """11.12: fields are short names in a safe charset and ops from the known set; the rest is
    dropped, so no link, image or tag can reach the page's sidebar or the CLI table."""
    status, _ = hostile_status(health="markdown")
    assert status.ok  # service and runtime are fine; the cosmetic fields are dropped
    assert status.version is None and status.build is None and status.primary is None
    assert status.operations == ("grayscale", "invert")
    shown = [status.service, status.runtime, *status.operations]
    assert all(re.fullmatch(r"[A-Za-z0-9._+-]+", text) for text in shown), shown


def test_health_field_rules():
    from coordinator.discovery import status_from

    good = {
        "status": "ok",
        "service": "worker-python",
        "runtime": "python",
        "version": "1.0.0",
        "operations": ["grayscale", "sepia"],
        "max_inflight": 2,
        "max_bytes": 1000,
        "max_pixels": 300,
    }
    status = status_from("http://w", 200, good, 1.0)
    assert status.ok and (status.max_inflight, status.max_bytes, status.max_pixels) == (2, 1000, 300)
    bad_runtime = status_from("http://w", 200, {**good, "runtime": "py](http://x)"}, 1.0)
    assert not bad_runtime.ok and "field 'runtime'" in bad_runtime.error
    absurd = status_from("http://w", 200, {**good, "max_inflight": 10**9, "max_bytes": True, "max_pixels": -5}, 1.0)
    assert (absurd.max_inflight, absurd.max_bytes, absurd.max_pixels) == (64, 50_000_000, 50_000_000)
    sick = status_from("http://w", 503, {**good, "status": "draining", "reason": "[x](http://evil)"}, 1.0)
    assert not sick.ok and "http" not in sick.error and "unsafe text" in sick.error
    many = status_from("http://w", 200, {**good, "operations": ["grayscale"] * 10**5}, 1.0)
    assert many.operations == ("grayscale",)


def test_a_worker_that_reads_the_upload_late_is_not_failed_by_the_connect_timeout():
    """11.11: the body is sent under the read (silence) timeout, not the connect timeout: a
    busy but healthy worker that starts reading 2.5 s late still gets the strip (before: urllib3
    sent the 12 MB body under the 1 s connect timeout, the strip failed, the worker was marked down)."""
    from tests.support.hostile_worker import HostileWorker

    pixels = photo(1000, 4000, seed=21)
    with HostileWorker(process="late_reader", delay=2.5) as late:
        config = config_for([late.url], connect_timeout=1, read_timeout=10)
        result = run_job(b"", config, plan="invert", strips=1, pixels=pixels)
        assert late.requests["/process"] == 1
    assert np.array_equal(result.pixels, 255 - pixels)
    assert result.strips[0].attempts == 1 and not result.strips[0].failovers


# -- the largest accepted input, on every transport (issue 12, item 1) -------------------------

LARGEST = (5000, 10000)  # 50 MP: COORDINATOR_MAX_PIXELS and the workers' WORKER_MAX_PIXELS


def flat_rows(height: int, width: int) -> np.ndarray:
    """Each row one colour: cheap to make and to compress with every codec, yet every row differs."""
    rows = np.arange(height, dtype=np.uint32)
    colours = np.stack([rows % 251, (rows * 7) % 253, (rows * 13) % 255], axis=1).astype(np.uint8)
    return np.broadcast_to(colours[:, None, :], (height, width, 3))


@pytest.mark.parametrize("transport", ["raw", "png", "webp-lossless", "jpeg-cut"])
def test_the_largest_input_goes_through_at_the_default_strips(local_fleet, transport):
    """12.1: at 2 strips a 50 MP strip's raw body is 75 MB, over the workers' advertised 50 MB:
    before, HTTP 413 and exit 3. Now every request is sized from the workers' max_bytes and
    max_pixels, so nothing is refused, on every transport."""
    from coordinator import codecs

    height, width = LARGEST
    pixels = flat_rows(height, width)
    if transport == "jpeg-cut":
        if codecs.jpegtran_path() is None:
            from tests.support.ci import skip_or_fail

            skip_or_fail("jpegtran not installed (Debian package libjpeg-turbo-progs)")
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "JPEG", quality=90)
        data, pixels = buffer.getvalue(), None
        decoded = imaging.decode_pixels(data, 50_000_000)
    else:
        data, decoded = b"", np.ascontiguousarray(pixels)
    statuses = discover(config_for(local_fleet))
    assert all(s.max_bytes == 50_000_000 and s.max_pixels == 50_000_000 for s in statuses)
    result = run_job(
        data,
        config_for(local_fleet, transport=transport, read_timeout=120),
        plan="invert",
        strips=2,
        pixels=None if transport == "jpeg-cut" else decoded,
        workers=statuses,
    )
    assert len(result.strips) == 2 and all(s.attempts == 1 and not s.failovers for s in result.strips)
    assert max(s.bytes_sent for s in result.strips) > 0
    assert np.array_equal(result.pixels, 255 - decoded)


@pytest.mark.parametrize("transport", ["raw", "png", "webp-lossless", "jpeg-cut"])
def test_no_request_is_over_a_small_workers_advertised_limits(worker_factory, transport):
    """12.1 at small scale: a worker advertising 200 KB / 100 kpx gets pieces it accepts, on
    every transport, with a blur halo too (noise, so a compressed piece may come out bigger
    than raw and must fall back). Before: one 720 KB body and HTTP 413."""
    from coordinator import codecs

    small = worker_factory("python", {"WORKER_MAX_BYTES": "200000", "WORKER_MAX_PIXELS": "100000"})
    pixels = np.random.default_rng(4).integers(0, 256, (600, 400, 3), dtype=np.uint8)
    data = b""
    if transport == "jpeg-cut":
        if codecs.jpegtran_path() is None:
            from tests.support.ci import skip_or_fail

            skip_or_fail("jpegtran not installed (Debian package libjpeg-turbo-progs)")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
        data = buffer.getvalue()
        pixels = imaging.decode_pixels(data, 10**6)
    config = config_for([small.url], transport=transport)
    for plan, wanted in (
        ("invert", 255 - pixels),
        ("blur", np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2)))),
    ):
        result = run_job(data, config, plan=plan, strips=1, pixels=None if data else pixels)
        assert np.array_equal(result.pixels, wanted), plan
        assert result.strips[0].attempts == 1 and not result.strips[0].failovers
    assert "too_large" not in small.log_text() and "too_many_pixels" not in small.log_text()


def test_piece_ranges_follow_the_worker_limits_and_carry_their_halo():
    from coordinator.discovery import WorkerStatus
    from coordinator.engine import StripFailed, piece_ranges
    from coordinator.plan import Strip

    strip = Strip(1, 100, 400, 6, 6, "blur")
    worker = WorkerStatus("http://w", True, max_bytes=32 + 3 * 10 * 62, max_pixels=10**6)  # 62 rows of 10 px
    pieces = piece_ranges(strip, "raw", width=10, height=500, worker=worker, halo=6)
    assert [p.fill_top for p in pieces][0] == 100 and pieces[-1].fill_bottom == 400
    assert all(a.fill_bottom == b.fill_top for a, b in itertools.pairwise(pieces))  # every row once
    assert all((p.send_top, p.send_bottom) == (p.fill_top - 6, p.fill_bottom + 6) for p in pieces)
    assert all(p.send_bottom - p.send_top <= 62 for p in pieces) and len(pieces) == 6
    tiny = WorkerStatus("http://w", True, max_bytes=100, max_pixels=10**6)
    with pytest.raises(StripFailed, match="too small"):
        piece_ranges(strip, "raw", width=10, height=500, worker=tiny, halo=6)
    # over a compressed wire a pointwise strip is split for overlap; raw and halo ops are not
    point = Strip(0, 0, 3000, 0, 0, "invert")
    roomy = WorkerStatus("http://w", True)
    assert len(piece_ranges(point, "png", 10, 3000, roomy)) == 3
    assert len(piece_ranges(point, "raw", 10, 3000, roomy)) == 1


def test_an_upload_that_keeps_moving_is_not_cut_by_the_read_timeout():
    """The read timeout bounds silence, not the upload: a 12 MB strip read at 2 MB/s takes
    ~6 s, twice the 3 s read timeout, and must still go through (one sendall of the whole body
    would have had 3 s in all)."""
    from tests.support.hostile_worker import HostileWorker

    pixels = photo(2000, 2000, seed=22)
    with HostileWorker(process="late_reader", delay=0, read_rate=2_000_000) as slow:
        config = config_for([slow.url], connect_timeout=1, read_timeout=3)
        result = run_job(b"", config, plan="invert", strips=1, pixels=pixels)
    assert np.array_equal(result.pixels, 255 - pixels)
    assert result.strips[0].attempts == 1 and result.strips[0].total_ms > 3000


@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_an_early_refusal_of_a_big_body_is_read_not_reported_as_a_broken_pipe(worker_factory, runtime):
    """Workers answer 401 before reading a body and close (contract rule 3): with an 18 MB
    strip our send breaks first, and the answer waiting in the socket is what we report."""
    guarded = worker_factory(runtime, {"WORKER_TOKEN": "right"})
    with pytest.raises(NoWorkerError, match=f"token rejected by {guarded.url}"):
        run_job(
            b"",
            config_for([guarded.url], token="wrong"),
            plan="invert",
            strips=1,
            pixels=np.zeros((2000, 3000, 3), np.uint8),
        )
