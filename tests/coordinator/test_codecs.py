"""Transport codecs: every path that claims lossless is exact through the real workers, the
`high` path stays within codecs.HIGH_PSNR_DB, and the JPEG row cut falls back cleanly."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import requests
from PIL import Image

from coordinator import codecs, imaging, pieces, request
from coordinator.config import CoordinatorConfig, load_config
from coordinator.engine import run_job
from coordinator.errors import ConfigError, InputError
from coordinator.plan import OPERATIONS
from scripts.testkit.images import encoded, photo, png_bytes
from tests.support.ci import skip_or_fail

PLAN = "grayscale,sepia,blur,invert,sepia"  # five strips over both runtimes, blur reads a halo


def jpeg_bytes(pixels: np.ndarray, **options) -> bytes:
    return encoded(pixels, "JPEG", quality=90, **options)


@pytest.fixture
def needs_jpegtran():
    if codecs.jpegtran_path() is None:
        skip_or_fail("jpegtran not installed (Debian package libjpeg-turbo-progs)")


def decoded_rows(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------- JPEG row cuts, pure


@pytest.mark.parametrize("subsampling, mcu_rows", [(2, 16), (0, 8)])  # 4:2:0 and 4:4:4
def test_jpeg_rows_decode_exactly_like_the_whole_image(needs_jpegtran, subsampling, mcu_rows):
    data = jpeg_bytes(photo(200, 131), subsampling=subsampling)
    whole = decoded_rows(data)
    source = codecs.jpeg_source(data)
    assert source is not None and source.mcu_rows == mcu_rows
    for top, bottom in [(0, 40), (40, 90), (17, 18), (64, 131), (90, 131), (0, 131)]:
        cut, cut_top, cut_bottom = codecs.jpeg_rows(source, top, bottom)
        assert cut_top % mcu_rows == 0 and cut_top <= top and bottom <= cut_bottom <= 131
        rows = decoded_rows(cut)
        assert rows.shape[0] == cut_bottom - cut_top
        assert np.array_equal(rows[top - cut_top : bottom - cut_top], whole[top:bottom]), (top, bottom)


def test_gray_jpeg_is_cut_too(needs_jpegtran):
    gray = photo(96, 70)[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(gray, "L").save(buffer, "JPEG", quality=85)
    source = codecs.jpeg_source(buffer.getvalue())
    assert source is not None and source.mcu_rows == 8
    cut, cut_top, _ = codecs.jpeg_rows(source, 30, 50)
    assert np.array_equal(decoded_rows(cut)[30 - cut_top : 50 - cut_top], decoded_rows(buffer.getvalue())[30:50])


def test_inputs_a_cut_would_change_are_refused(needs_jpegtran):
    pixels = photo(64, 48)
    assert codecs.jpeg_source(png_bytes(pixels)) is None
    assert codecs.jpeg_source(b"\xff\xd8\xff" + b"not really a jpeg") is None
    rotated = Image.fromarray(pixels)
    exif = rotated.getexif()
    exif[codecs.ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    rotated.save(buffer, "JPEG", exif=exif.tobytes())
    assert codecs.jpeg_source(buffer.getvalue()) is None  # file rows are not upright rows
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buffer, "JPEG")
    assert codecs.jpeg_source(buffer.getvalue()) is None


def test_no_jpegtran_means_no_cut(monkeypatch):
    monkeypatch.setattr(codecs.shutil, "which", lambda name: None)
    assert codecs.jpeg_source(jpeg_bytes(photo(64, 48))) is None


def test_a_failing_jpegtran_is_one_line_value_error(needs_jpegtran):
    source = dataclasses.replace(codecs.jpeg_source(jpeg_bytes(photo(64, 160))), jpegtran="/bin/false")
    with pytest.raises(ValueError, match="jpegtran failed"):
        codecs.jpeg_rows(source, 48, 96)


def test_psnr():
    pixels = photo(32, 32)
    assert codecs.psnr(pixels, pixels) == float("inf")
    off_by_one = pixels.astype(np.int16) + 1
    off_by_one[off_by_one > 255] = 254
    assert codecs.psnr(pixels, off_by_one.astype(np.uint8)) == pytest.approx(48.13, abs=0.01)


# ---------------------------------------------------------------- through the real workers


@pytest.fixture
def fleet_config(local_fleet):
    return CoordinatorConfig(workers=tuple(local_fleet), source="test", transport="raw")


def job(data: bytes, config: CoordinatorConfig, **changes):
    return run_job(data, dataclasses.replace(config, **changes), plan=PLAN, strips=5, params={"radius": 3})


@pytest.mark.parametrize("transport", ["png", "webp-lossless", "jpeg-cut"])
def test_lossless_transports_are_exact_through_both_workers(fleet_config, needs_jpegtran, transport, monkeypatch):
    data = jpeg_bytes(photo(320, 203))
    exact = job(data, fleet_config)  # raw PPM both ways
    requests_sent = []
    real_send = request.send_strip

    def counting_send(*args, **kwargs):
        requests_sent.append(args[2].index)
        return real_send(*args, **kwargs)

    monkeypatch.setattr(request, "send_strip", counting_send)
    monkeypatch.setattr(pieces, "WAN_PIECE_MIN_ROWS", 16)  # so these ~40-row strips go in pieces
    result = job(data, fleet_config, transport=transport)
    assert {strip.runtime for strip in result.strips} == {"python", "nodejs"}
    assert {strip.wire for strip in result.strips} == {transport}
    assert np.array_equal(result.pixels, exact.pixels)
    blur_strip = PLAN.split(",").index("blur")
    assert requests_sent.count(blur_strip) == 1  # blur reads neighbouring rows: never split
    assert all(requests_sent.count(index) == 2 for index in range(5) if index != blur_strip)
    if transport == "jpeg-cut":
        assert sum(strip.bytes_sent for strip in result.strips) < sum(strip.bytes_sent for strip in exact.strips) / 4


def test_a_jpeg_cut_job_never_decodes_the_input_and_a_truncated_one_is_an_input_error(
    fleet_config, needs_jpegtran, monkeypatch
):
    data = jpeg_bytes(photo(320, 203))
    exact = job(data, fleet_config)  # raw PPM: decoded
    decodes = []
    real_decode = imaging.decode_pixels
    monkeypatch.setattr(imaging, "decode_pixels", lambda *args: decodes.append(args) or real_decode(*args))
    result = job(data, fleet_config, transport="jpeg-cut")
    assert np.array_equal(result.pixels, exact.pixels) and decodes == []
    # jpegtran refuses a truncated file's cut; the PNG fallback decodes it and says why
    with pytest.raises(InputError, match="truncated"):
        job(data[: len(data) // 2], fleet_config, transport="jpeg-cut")
    # one strip in one piece is the whole file, sent without jpegtran: it is decoded to be checked
    with pytest.raises(InputError, match="truncated"):
        run_job(
            data[: len(data) // 2], dataclasses.replace(fleet_config, transport="jpeg-cut"), plan="invert", strips=1
        )
    assert decodes


def test_jpeg_cut_of_a_non_jpeg_falls_back_to_exact_png(fleet_config):
    data = png_bytes(photo(160, 90))
    result = job(data, fleet_config, transport="jpeg-cut")
    assert {strip.wire for strip in result.strips} == {"png"}
    assert np.array_equal(result.pixels, job(data, fleet_config).pixels)


def test_jpeg_cut_falls_back_to_png_when_jpegtran_fails(fleet_config, needs_jpegtran, monkeypatch):
    monkeypatch.setattr(codecs, "jpegtran_path", lambda: "/bin/false")
    data = jpeg_bytes(photo(160, 90))
    result = job(data, fleet_config, transport="jpeg-cut")
    assert {strip.wire for strip in result.strips} == {"png"}
    assert np.array_equal(result.pixels, job(data, fleet_config).pixels)


@pytest.mark.parametrize("transport", ["raw", "jpeg-cut"])
def test_high_quality_stays_within_the_stated_psnr(fleet_config, needs_jpegtran, transport):
    # photo-like noise, as scripts/bench.py's input; stronger per-channel colour noise can dip
    # to ~44 dB through the workers' 4:2:0 JPEG (see codecs.HIGH_PSNR_DB)
    data = jpeg_bytes(photo(320, 203, noise=4))
    exact = job(data, fleet_config)
    high = job(data, fleet_config, transport=transport, wire_quality="high")
    assert high.pixels.shape == exact.pixels.shape
    assert sum(s.bytes_received for s in high.strips) < sum(s.bytes_received for s in exact.strips) / 4
    assert codecs.psnr(exact.pixels, high.pixels) >= codecs.HIGH_PSNR_DB
    for runtime in ("python", "nodejs"):  # per runtime, so one bad encoder cannot hide in the average
        rows = np.concatenate([np.arange(s.top, s.bottom) for s in high.strips if s.runtime == runtime])
        assert codecs.psnr(exact.pixels[rows], high.pixels[rows]) >= codecs.HIGH_PSNR_DB, runtime


def test_wire_quality_setting():
    assert load_config(environ={}).wire_quality == "lossless"
    assert load_config(environ={"COORDINATOR_WIRE_QUALITY": "high"}).wire_quality == "high"
    assert load_config(environ={"COORDINATOR_WIRE_QUALITY": "high"}, wire_quality="lossless").wire_quality == "lossless"
    with pytest.raises(ConfigError, match="COORDINATOR_WIRE_QUALITY"):
        load_config(environ={"COORDINATOR_WIRE_QUALITY": "best"})


def test_auto_transport_is_raw_on_loopback_and_compressed_elsewhere():
    from coordinator.engine import wire_for

    assert wire_for("http://127.0.0.1:5001", "auto") == "raw"
    assert wire_for("http://10.0.0.7:5001", "auto") == "jpeg-cut"
    assert wire_for("http://10.0.0.7:5001", "png") == "png"


@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_gray_replies_come_as_one_channel_and_stitch_exactly(local_fleet, runtime, monkeypatch):
    """Over a compressed wire a grayscale strip comes back 1-channel (channels=auto) from
    either runtime and is expanded to R=G=B: the result equals the raw (RGB) path's."""
    url = local_fleet[["python", "nodejs"].index(runtime)]
    config = CoordinatorConfig(workers=(url,), source="test", transport="raw")
    data = jpeg_bytes(photo(160, 90))
    options = {"plan": "grayscale,invert", "strips": 2}
    exact = run_job(data, config, **options)
    shapes = []
    real_decode = imaging.decode_any

    def recording_decode(*args, **kwargs):
        pixels = real_decode(*args, **kwargs)
        shapes.append(pixels.ndim)
        return pixels

    monkeypatch.setattr(imaging, "decode_any", recording_decode)
    result = run_job(data, dataclasses.replace(config, transport="png"), **options)
    assert {strip.runtime for strip in result.strips} == {runtime}
    assert sorted(shapes) == [2, 3]  # the grayscale strip 1-channel, the invert strip RGB
    assert np.array_equal(result.pixels, exact.pixels)
    gray = result.pixels[:45]
    assert np.array_equal(gray[:, :, 0], gray[:, :, 1]) and np.array_equal(gray[:, :, 0], gray[:, :, 2])


def test_gray_reply_is_refused_unless_asked_for():
    gray = photo(20, 6)[:, :, 0]
    data = png_bytes(gray)
    with pytest.raises(ValueError, match="mode L, expected RGB"):
        imaging.decode_any(data, expected_size=(20, 6))
    assert np.array_equal(imaging.decode_any(data, expected_size=(20, 6), gray_ok=True), gray)
    with pytest.raises(ValueError, match="declares 20x6"):
        imaging.decode_any(data, expected_size=(20, 7), gray_ok=True)
    rgba = png_bytes(np.dstack([photo(20, 6), np.full((6, 20), 255, np.uint8)]))
    with pytest.raises(ValueError, match="mode RGBA, expected RGB or L"):
        imaging.decode_any(rgba, expected_size=(20, 6), gray_ok=True)


def test_reply_formats():
    assert codecs.reply_query("raw", "lossless", "python") == {"format": "raw"}
    assert codecs.reply_query("jpeg-cut", "lossless", "nodejs", "grayscale", (4000, 1500)) == {
        "format": "png",
        "compression": "6",
        "channels": "auto",
    }
    assert codecs.reply_query("png", "lossless", "python", "grayscale", (4000, 1500))["compression"] == "1"
    for runtime in ("python", "nodejs"):
        assert codecs.reply_query("png", "lossless", runtime, "blur", (4000, 1500))["compression"] == "6"
    fast_webp = {"format": "webp", "lossless": "true", "quality": "1", "compression": "0"}
    for runtime in ("python", "nodejs", None):
        assert codecs.reply_query("jpeg-cut", "lossless", runtime, "sepia", (4000, 1500)) == fast_webp
        assert codecs.reply_query("png", "lossless", runtime, "invert", (4000, 1500)) == fast_webp
        assert codecs.reply_query("webp-lossless", "lossless", runtime, "grayscale", (64, 64)) == fast_webp
    # WebP holds at most 16383 per side: a wider strip or a taller piece comes back as PNG
    for size in [(16384, 100), (100, 16384)]:
        assert codecs.reply_query("jpeg-cut", "lossless", "nodejs", "sepia", size)["format"] == "png"
        assert codecs.reply_query("webp-lossless", "lossless", "python", "sepia", size)["format"] == "png"
    assert codecs.reply_query("jpeg-cut", "high", "python", "sepia", (64, 64)) == {"format": "jpeg", "quality": "95"}
    assert imaging.decode_any  # replies of every kind decode through the same function


@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_every_lossless_reply_codec_is_exact(python_worker, nodejs_worker, runtime):
    """Each (runtime, op) reply the coordinator asks for decodes to the raw reply's pixels."""
    url = {"python": python_worker, "nodejs": nodejs_worker}[runtime].url
    pixels = photo(331, 203)  # odd sizes: no codec gets an aligned block for free
    body, content_type = imaging.encode_strip(pixels, "raw")
    for op in OPERATIONS:
        extra = {"radius": "3"} if op == "blur" else {}

        def reply(query, op=op, extra=extra):
            got = requests.post(
                f"{url}/process",
                params={"op": op, **query, **extra},
                data=body,
                headers={"Content-Type": content_type},
                timeout=60,
            )
            assert got.status_code == 200, got.text[:200]
            return got

        query = codecs.reply_query("jpeg-cut", "lossless", runtime, op, (331, 203))
        compressed = reply(query)
        assert compressed.headers["Content-Type"].startswith(f"image/{query['format']}")
        got = imaging.decode_any(compressed.content, expected_size=(331, 203), gray_ok=True)
        got = got if got.ndim == 3 else np.repeat(got[:, :, None], 3, axis=2)
        assert np.array_equal(got, imaging.decode_any(reply({"format": "raw"}).content)), (runtime, op, query)
