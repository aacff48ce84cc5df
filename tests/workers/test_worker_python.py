"""Unit tests for worker-python: config, sniff/decode/ops/encode, the app factory, and the real process."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from worker_python import __version__, ops
from worker_python.app import create_app
from worker_python.config import Settings, SettingsError, load_settings
from worker_python.decode import decode, load_rgb, open_checked, to_rgb
from worker_python.encode import WEBP_MAX_SIDE, encode, raw_chunks, raw_length
from worker_python.errors import ApiError, BadImage, CannotEncode, TooManyPixels, UnsupportedFormat
from worker_python.health import self_check
from worker_python.log import JsonFormatter
from worker_python.ops import apply, grayscale, invert, sepia
from worker_python.params import authorized_by_any, encoding_options, response_format
from worker_python.secret_files import SecretFiles, read_tokens
from worker_python.sniff import ACCEPTED_PILLOW_FORMATS, sniff_format
from worker_python.tls import server_context

from scripts.testkit.images import solid_png
from scripts.testkit.procs import ROOT, TlsClient, start_worker
from scripts.testkit.tls import FLEET_TLS_NAME, Authority
from tests.vectors.generate import SEPIA_PER_MILLE, huge_header_png, ppm_bytes, ref_grayscale

VECTORS = ROOT / "tests" / "vectors"


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# ---------------------------------------------------------------- module map (issue 14)

PIXEL_MODULES = ("sniff", "decode", "ops", "encode")


def imported_modules(module: str) -> set[str]:
    tree = ast.parse((ROOT / "worker-python" / "worker_python" / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return names


@pytest.mark.parametrize("module", PIXEL_MODULES)
def test_pixel_modules_do_no_io_and_read_no_config(module):
    """The pixels stay apart from HTTP, config and logging (STYLE.md; README module map)."""
    forbidden = {
        "flask",
        "werkzeug",
        "gunicorn",
        "os",
        "socket",
        "logging",
        "worker_python.config",
        "worker_python.log",
        "worker_python.app",
        "worker_python.state",
        "worker_python.body",
    }
    assert not {name for name in imported_modules(module) if name.split(".")[0] in forbidden or name in forbidden}


def test_only_the_server_imports_the_app_and_binds():
    importers = [
        path.stem
        for path in (ROOT / "worker-python" / "worker_python").glob("*.py")
        if "worker_python.app" in imported_modules(path.stem)
    ]
    assert importers == ["server"]
    main = (ROOT / "worker-python" / "worker_python" / "__main__.py").read_text()
    assert "from worker_python.server import main" in main and len(main.splitlines()) < 10


# ---------------------------------------------------------------- settings


def test_defaults_need_no_environment():
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.token, settings.max_inflight) == ("127.0.0.1", 5001, None, 4)
    assert (settings.max_bytes, settings.max_pixels, settings.grace_seconds) == (50_000_000, 50_000_000, 20.0)
    assert (settings.build, settings.log_level) == ("dev", "info")


def test_every_variable_is_read():
    settings = load_settings(
        {
            "WORKER_HOST": "0.0.0.0",
            "WORKER_PORT": "6001",
            "WORKER_TOKEN": "t0k",
            "WORKER_MAX_BYTES": "1000",
            "WORKER_MAX_PIXELS": "2000",
            "WORKER_MAX_INFLIGHT": "2",
            "WORKER_MAX_INFLIGHT_PIXELS": "3000",
            "WORKER_GRACE_SECONDS": "1.5",
            "WORKER_BUILD": "abc123",
            "WORKER_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings == Settings("0.0.0.0", 6001, "t0k", 1000, 2000, 2, 3000, 1.5, "abc123", "debug")


def test_empty_token_means_unset_and_repr_hides_the_token():
    assert load_settings({"WORKER_TOKEN": ""}).token is None
    assert "t0k-secret" not in repr(load_settings({"WORKER_TOKEN": "t0k-secret"}))


@pytest.mark.parametrize(
    "name, value",
    [
        ("WORKER_PORT", "abc"),
        ("WORKER_PORT", "0"),
        ("WORKER_PORT", "70000"),
        ("WORKER_MAX_BYTES", "-1"),
        ("WORKER_MAX_BYTES", "1e6"),
        ("WORKER_MAX_PIXELS", "0"),
        ("WORKER_MAX_INFLIGHT", "0"),
        ("WORKER_MAX_INFLIGHT", "1000"),
        ("WORKER_GRACE_SECONDS", "-1"),
        ("WORKER_GRACE_SECONDS", "nan"),
        ("WORKER_GRACE_SECONDS", "soon"),
        ("WORKER_LOG_LEVEL", "loud"),
        ("WORKER_BUILD", "x" * 200),
        ("WORKER_TOKEN", "new\nline"),
        ("WORKER_MAX_INFLIGHT_PIXELS", "0"),
    ],
)
def test_bad_value_names_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize(
    "name, value", [("WORKER_PORT", "http"), ("WORKER_MAX_INFLIGHT", "-3"), ("WORKER_TOKEN", "bad\x01token")]
)
def test_bad_config_exits_2_with_one_line(name, value):
    env = {"PATH": "/usr/bin:/bin", name: value}
    result = subprocess.run(
        [sys.executable, "-m", "worker_python"],
        cwd=ROOT / "worker-python",
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert "bad\x01token" not in result.stderr


@pytest.mark.parametrize("pillow_blocks_max, cached", [(None, "3"), ("0", "0"), ("5", "5")])
def test_tune_malloc_keeps_three_pillow_blocks_unless_the_variable_says(pillow_blocks_max, cached):
    """server.tune_malloc caches 3 freed Pillow blocks (fewer page faults per strip, measured in
    worker-python/README.md); PILLOW_BLOCKS_MAX, which Pillow reads at import, wins. In a child
    process: the setting is process-wide."""
    env = {"PATH": "/usr/bin:/bin"} | ({"PILLOW_BLOCKS_MAX": pillow_blocks_max} if pillow_blocks_max else {})
    code = "from PIL import Image; from worker_python import server; server.tune_malloc(); "
    code += "print(Image.core.get_blocks_max())"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "worker-python", env=env, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, cached, "")


# ---------------------------------------------------------------- sniffing and header checks


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("photo.png", "PNG"),
        ("oriented6.jpg", "JPEG"),
        ("photo.bmp", "BMP"),
        ("photo.tiff", "TIFF"),
        ("two_frames.gif", "GIF"),
        ("lossless.webp", "WEBP"),
        ("photo.ppm", "PPM"),
    ],
)
def test_sniff_accepted_formats(name, fmt):
    assert sniff_format((VECTORS / "inputs" / name).read_bytes()) == fmt


@pytest.mark.parametrize(
    "data, error",
    [
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", UnsupportedFormat),
        (b"\x00\x00\x01\x00" + bytes(40), UnsupportedFormat),
        (b"\x00\x00\x00\x1cftypavif" + bytes(40), UnsupportedFormat),
        (b"P2\n2 2\n255\n0 0 0 0\n", UnsupportedFormat),
        (b"P3\n1 1\n255\n0 0 0\n", UnsupportedFormat),
        (b"P7\nWIDTH 1\n", UnsupportedFormat),
        (b"Pf\n1 1\n-1\n", UnsupportedFormat),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", UnsupportedFormat),
        (b"%PDF-1.7\n", UnsupportedFormat),
        (b"just some text", BadImage),
        (b"", BadImage),
    ],
)
def test_sniff_refuses_other_bytes(data, error):
    with pytest.raises(error):
        sniff_format(data)


def patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    return data[:offset] + struct.pack(fmt, *values) + data[offset + struct.calcsize(fmt) :]


def big_headers() -> dict[str, bytes]:
    """Small files whose headers were edited to claim 60000x60000 pixels."""
    small = Image.new("RGB", (8, 8), (1, 2, 3))
    jpeg = encoded(small, "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    return {
        "png": huge_header_png(60000, 60000),
        "gif": patched(encoded(small, "GIF"), 6, "<HH", 60000, 60000),
        "bmp": patched(encoded(small, "BMP"), 18, "<ii", 60000, -60000),
        "jpeg": patched(jpeg, sof + 5, ">HH", 60000, 60000),
        "ppm": b"P6\n# comment\n60000 60000\n255\n" + bytes(30),
        "webp": b"RIFF\x00\x00\x00\x00WEBPVP8X" + bytes(8) + (59999).to_bytes(3, "little") * 2,
    }


@pytest.mark.parametrize("fmt", ["png", "gif", "bmp", "jpeg", "ppm", "webp"])
def test_header_pixel_count_is_checked_before_decoding(fmt):
    with pytest.raises(TooManyPixels, match="60000x60000"):
        decode(big_headers()[fmt], max_pixels=50_000_000)


def test_pixel_limit_applies_to_tiff_through_pillow_header():
    data = encoded(Image.new("RGB", (30, 20)), "TIFF")
    with pytest.raises(TooManyPixels):
        decode(data, max_pixels=599)
    assert decode(data, max_pixels=600).size == (30, 20)


@pytest.mark.parametrize(
    "data",
    [
        (VECTORS / "inputs" / "truncated.png").read_bytes(),
        (VECTORS / "inputs" / "oriented6.jpg").read_bytes()[:300],
        b"GIF89a" + bytes(3),
        b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
        b"P6\n4 4\n255\n" + bytes(5),
        b"P6\n4 4\n65535\n" + bytes(95),
        b"BM" + bytes(60),
    ],
)
def test_corrupt_inputs_are_bad_image(data):
    with pytest.raises(BadImage):
        decode(data, max_pixels=50_000_000)


# ---------------------------------------------------------------- decoding to 8-bit RGB


def test_sixteen_bit_gray_is_shifted_not_clipped():
    values = np.array([[0, 255, 256, 32767, 65535]], np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    got = pixels(decode(encoded(image, "PNG"), 100))[..., 0]
    assert got.tolist() == [[0, 0, 1, 127, 255]]
    as_int32 = to_rgb(Image.fromarray(values.astype(np.int32)))
    assert pixels(as_int32)[..., 0].tolist() == [[0, 0, 1, 127, 255]]


def test_sixteen_bit_ppm_is_shifted_like_other_16_bit_inputs():
    samples = np.array([[[0, 255, 256], [32767, 65280, 65535]]], ">u2")
    image = decode(b"P6\n# sixteen\n2 1\n65535\n" + samples.tobytes(), 2)
    assert pixels(image).tolist() == [[[0, 0, 1], [127, 255, 255]]]


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new(mode, (3, 2))
    assert to_rgb(image).mode == "RGB"


def test_alpha_is_dropped_not_composited():
    image = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    assert pixels(decode(encoded(image, "PNG"), 100)).tolist() == [[[10, 20, 30]] * 2]


def test_exif_orientation_is_applied():
    image = decode((VECTORS / "inputs" / "oriented6.jpg").read_bytes(), 10_000)
    assert image.size == (16, 32)  # stored 32x16, orientation 6 = rotate 90 degrees clockwise
    top_left, top_right = image.getpixel((2, 2)), image.getpixel((13, 2))
    assert top_left[2] > 150 and top_right[0] > 150  # blue quadrant moved to the top-left


def test_gif_first_frame_only():
    first, second = Image.new("P", (4, 4), 1), Image.new("P", (4, 4), 2)
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759
    first.putpalette(palette)
    second.putpalette(palette)
    data = encoded(first, "GIF", save_all=True, append_images=[second])
    assert decode(data, 100).getpixel((0, 0)) == (200, 10, 10)


# ---------------------------------------------------------------- operations


def test_sepia_matches_the_integer_formula_for_every_colour():
    """All 2^24 colours: Pillow's float matrix plus the offset must round half up exactly."""
    values = np.arange(256, dtype=np.uint8)
    rgb = np.empty((256, 256, 256, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = values[:, None, None], values[None, :, None], values
    got = pixels(sepia(Image.fromarray(rgb.reshape(4096, 4096, 3), "RGB"))).reshape(rgb.shape)
    v = values.astype(np.int32)
    for channel, (cr, cg, cb) in enumerate(SEPIA_PER_MILLE):
        expected = np.minimum(((cr * v)[:, None, None] + (cg * v)[None, :, None] + cb * v + 500) // 1000, 255)
        wrong = np.argwhere(got[..., channel] != expected)
        assert wrong.size == 0, f"sepia channel {channel} differs first at RGB {tuple(wrong[0])}"


def test_grayscale_and_invert_match_the_formulas():
    rgb = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    image = Image.fromarray(rgb, "RGB")
    assert np.array_equal(pixels(grayscale(image)), ref_grayscale(rgb))
    assert np.array_equal(pixels(invert(image)), 255 - rgb)


def test_blur_is_pillow_gaussian_and_keeps_size():
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")
    blurred = apply("blur", image, 3.0)
    assert blurred.size == (30, 20) and blurred.mode == "RGB"
    assert np.asarray(blurred).std() < np.asarray(image).std()


def test_unknown_op_is_a_programming_error():
    with pytest.raises(ValueError):
        apply("sharpen", Image.new("RGB", (1, 1)))


# ---------------------------------------------------------------- encoding


def test_raw_is_binary_ppm():
    image = Image.new("RGB", (3, 2), (1, 2, 3))
    assert encode(image, "raw") == b"P6\n3 2\n255\n" + bytes([1, 2, 3]) * 6


@pytest.mark.parametrize("fmt, pillow_format", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encoders(fmt, pillow_format):
    data = encode(Image.new("RGB", (5, 4), (9, 90, 200)), fmt, quality=50)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == pillow_format and decoded.size == (5, 4)


def test_webp_too_wide_is_refused_as_bad_param():
    with pytest.raises(CannotEncode) as caught:
        encode(Image.new("RGB", (WEBP_MAX_SIDE + 1, 1)), "webp")
    assert caught.value.status == 400 and caught.value.code == "bad_param"


def test_process_round_trip_from_ppm():
    rgb = np.random.default_rng(5).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    out = encode(apply("grayscale", decode(ppm_bytes(rgb), max_pixels=63)), "raw")
    assert out == b"P6\n9 7\n255\n" + ref_grayscale(rgb).tobytes()


def test_self_check_passes():
    self_check()


# ---------------------------------------------------------------- app helpers


@pytest.mark.parametrize(
    "query, accept, fmt",
    [
        (None, "", "png"),
        ("raw", "image/webp", "raw"),
        (None, "image/webp, image/png", "webp"),
        (None, "image/png;q=0.5, image/jpeg", "jpeg"),
        (None, "image/webp;q=0", "png"),
        (None, "text/html, */*", "png"),
        (None, "image/jpeg;q=bad, image/png", "png"),
    ],
)
def test_response_format(query, accept, fmt):
    assert response_format(query, accept) == fmt


@pytest.mark.parametrize("args", [{"format": "gif"}])
def test_bad_format(args):
    with pytest.raises(ApiError) as caught:
        response_format(args["format"], "")
    assert caught.value.code == "bad_param"


@pytest.mark.parametrize(
    "args",
    [
        {"quality": "0"},
        {"quality": "+5"},
        {"quality": "9" * 10},
        {"compression": "1.0"},
        {"lossless": "yes"},
        {"radius": "nan"},
        {"radius": "inf"},
        {"radius": "0"},
        {"radius": "1_0"},
        {"radius": "-2"},
        {"radius": " 2"},
        # rule 1: exact syntax, case-sensitive values
        {"radius": ".5"},
        {"radius": "5."},
        {"radius": "1e1"},
        {"radius": "2.1234567"},
        {"radius": "0002"},
        {"quality": "0090"},
        {"quality": ""},
        {"quality": "9 0"},
        {"lossless": "TRUE"},
        {"lossless": "True"},
        {"lossless": ""},
        {"lossless": " 1"},
        {"channels": "AUTO"},
        {"quality": "\u0661"},
    ],
)
def test_bad_encoding_options(args):
    with pytest.raises(ApiError) as caught:
        encoding_options(args)
    assert caught.value.status == 400 and caught.value.code == "bad_param"


def test_good_encoding_options():
    assert encoding_options({"quality": "7", "compression": "0", "lossless": "true", "radius": "0.5"}) == {
        "quality": 7,
        "compression": 0,
        "lossless": True,
        "radius": 0.5,
    }
    assert [encoding_options({"lossless": raw})["lossless"] for raw in ("true", "false", "1", "0")] == [
        True,
        False,
        True,
        False,
    ]
    assert [encoding_options({"radius": raw})["radius"] for raw in ("2", "0.5", "050", "2.123456", "50")] == [
        2.0,
        0.5,
        50.0,
        2.123456,
        50.0,
    ]


# ---------------------------------------------------------------- app factory (Flask test client)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthz_fails_when_self_check_fails_and_caches_for_10_seconds():
    calls = []

    def broken_check():
        calls.append(1)
        raise RuntimeError("encoder gone")

    clock = FakeClock()
    client = create_app(Settings(), self_check=broken_check, clock=clock).test_client()
    first = client.get("/healthz")
    assert first.status_code == 503
    assert first.json["status"] == "unhealthy" and "encoder gone" in first.json["reason"]
    client.get("/healthz")
    assert len(calls) == 1  # cached
    clock.now += 10
    client.get("/healthz")
    assert len(calls) == 2


def test_healthz_ok_reports_version_and_build():
    body = create_app(Settings(build="b1")).test_client().get("/healthz").json
    assert (body["status"], body["version"], body["build"]) == ("ok", __version__, "b1")


def test_draining_state_refuses_work():
    app = create_app(Settings())
    app.extensions["worker_python"].begin_draining()
    client = app.test_client()
    assert client.get("/healthz").json["status"] == "draining"
    response = client.post("/process", data=b"x", content_type="image/png")
    assert response.status_code == 503 and response.json["error"]["code"] == "draining"
    assert response.headers["Retry-After"] == "20"


def test_slot_is_freed_when_the_response_closes():
    app = create_app(Settings(max_inflight=1))
    state = app.extensions["worker_python"]
    client = app.test_client()
    data = (VECTORS / "inputs" / "photo.png").read_bytes()
    response = client.post("/process", data=data, content_type="image/png", buffered=False)
    assert response.status_code == 200 and state.inflight == 1
    response.close()
    assert state.inflight == 0
    failed = client.post("/process", data=b"", content_type="image/png")
    assert failed.status_code == 400
    failed.close()
    assert state.inflight == 0


def test_a_bug_is_a_json_500_with_a_log_line(caplog):
    app = create_app(Settings())

    def broken():
        raise RuntimeError("bug")

    app.add_url_rule("/broken", view_func=broken)
    with caplog.at_level(logging.ERROR, logger="worker_python"):
        response = app.test_client().get("/broken")
    assert response.status_code == 500 and response.json["error"]["code"] == "internal"
    assert any(record.getMessage() == "unexpected error" for record in caplog.records)


def test_json_log_line_fields():
    record = logging.LogRecord("worker_python", logging.INFO, __file__, 1, "request", None, None)
    record.request_id, record.status, record.secret = "r1", 200, "not-logged"
    line = json.loads(JsonFormatter().format(record))
    assert line["service"] == "worker-python" and line["level"] == "info" and line["msg"] == "request"
    assert line["request_id"] == "r1" and line["status"] == 200 and "secret" not in line
    assert line["time"].endswith("Z")


@pytest.mark.parametrize("level", [0, 1, 6, 7, 9])
def test_png_is_lossless_at_every_level(level):
    rgb = np.random.default_rng(level).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    data = encode(Image.fromarray(rgb, "RGB"), "png", compression=level)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)


# ---------------------------------------------------------------- data shorter than the header


def interlaced_png(rgb: np.ndarray, keep_passes: int = 7) -> bytes:
    """An Adam7 PNG written by hand (Pillow cannot write one); keep_passes < 7 drops data."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = b""
    for x0, y0, dx, dy in passes[:keep_passes]:
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", rgb.shape[1], rgb.shape[0], 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_interlaced_png_complete_and_short():
    rgb = np.random.default_rng(9).integers(1, 256, (13, 11, 3), dtype=np.uint8)
    assert np.array_equal(pixels(decode(interlaced_png(rgb), 1000)), rgb)
    with pytest.raises(BadImage, match="pixel data ends"):
        decode(interlaced_png(rgb, keep_passes=6), 1000)


def test_png_with_fewer_rows_than_its_header_is_bad_image():
    with pytest.raises(BadImage, match="pixel data ends"):
        decode((VECTORS / "inputs" / "short_rows.png").read_bytes(), 10_000)


def test_png_whose_last_row_is_black_is_fine():
    rgb = np.full((5, 4, 3), 200, np.uint8)
    rgb[-1] = 0
    assert np.array_equal(pixels(decode(encoded(Image.fromarray(rgb), "PNG"), 100)), rgb)


def test_jpeg_scan_too_short_for_its_header_is_bad_image():
    with pytest.raises(BadImage, match="scan data"):
        decode((VECTORS / "inputs" / "short_scan.jpg").read_bytes(), 50_000_000)


@pytest.mark.parametrize("params", [{}, {"progressive": True}, {"optimize": True, "quality": 5}])
def test_flat_jpegs_pass_the_scan_length_check(params):
    """A flat 1024x1024 picture has the smallest scans a Huffman JPEG can have."""
    data = encoded(Image.new("RGB", (1024, 1024), (90, 90, 90)), "JPEG", **params)
    assert decode(data, 2_000_000).size == (1024, 1024)
    assert decode(encoded(Image.new("L", (1024, 8), 7), "JPEG", **params), 10_000).size == (1024, 8)


# ---------------------------------------------------------------- header gate (real process)


def raw_exchange(url: str, chunks: list[bytes], pause: float = 0.05) -> bytes:
    """Send a request in pieces on one socket and return everything the worker answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer


def test_half_sent_requests_do_not_take_the_threads(worker_factory):
    worker = worker_factory("python", {"WORKER_MAX_INFLIGHT": "1"})  # 3 threads
    host, port = worker.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(8)]
    try:
        for sock in idle:
            sock.sendall(b"POST /process HTTP/1.1\r\nHost: x\r\n")
        assert requests.get(worker.url + "/healthz", timeout=5).status_code == 200
        body = (VECTORS / "inputs" / "photo.png").read_bytes()
        response = requests.post(worker.url + "/process", data=body, headers={"Content-Type": "image/png"}, timeout=10)
        assert response.status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_headers_in_pieces_keepalive_and_pipelining(python_worker):
    body = (VECTORS / "inputs" / "photo.png").read_bytes()
    head = (
        f"POST /process?op=invert HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    pieces = [head[:10], head[10:30], head[30:], body[:100], body[100:]]
    answer = raw_exchange(python_worker.url, pieces)
    assert answer.startswith(b"HTTP/1.1 200")
    pipelined = raw_exchange(python_worker.url, [head + body + head + body])
    assert pipelined.count(b"HTTP/1.1 200") == 2
    with requests.Session() as session:  # keep-alive: the second request waits at the gate again
        for _ in range(2):
            assert (
                session.post(
                    python_worker.url + "/process", data=body, headers={"Content-Type": "image/png"}, timeout=10
                ).status_code
                == 200
            )


# ---------------------------------------------------------------- round-2 rules (issue 11), test client

RULE_VECTORS = json.loads((VECTORS / "manifest.json").read_text())["rules"]
MULTIPART = "multipart/form-data; boundary=XyZ"


def post(app, query: str = "", data: bytes = b"", content_type: str = "image/png", **headers):
    """One /process exchange on the test client, closed at once so the slot is free again."""
    response = app.test_client().post(f"/process{query}", data=data, content_type=content_type, headers=headers)
    response.get_data()
    response.close()
    return response


def error_code(response) -> str | None:
    return response.json["error"]["code"] if response.status_code != 200 else None


@pytest.mark.parametrize("vector", RULE_VECTORS, ids=[v["input"] for v in RULE_VECTORS])
def test_rule_vectors_formats_and_bombs(vector):
    """Rules 4 and 5: P5 PGM accepted, other formats 415, scan and inflation bombs 400."""
    data = (VECTORS / "inputs" / vector["input"]).read_bytes()
    response = post(create_app(Settings()), "?op=invert", data, vector["content_type"])
    assert (response.status_code, error_code(response)) == (vector["status"], vector["code"])


def test_p5_pgm_is_gray_as_rgb():
    gray = np.array([[0, 7, 255]], np.uint8)
    image = decode(b"P5\n3 1\n255\n" + gray.tobytes(), 10)
    assert np.array_equal(pixels(image), np.repeat(gray[..., None], 3, 2))
    sixteen = decode(b"P5\n2 1\n65535\n\x12\x34\xff\x01", 10)
    assert pixels(sixteen)[0].tolist() == [[0x12] * 3, [0xFF] * 3]


@pytest.mark.parametrize(
    "query",
    [
        "?op=invert&op=invert",
        "?format=png&format=png",
        "?quality=5&quality=6",
        "?lossless=1&lossless=1",
        "?radius=2&radius=2",
        "?channels=3&channels=3",
        "?compression=1&compression=1",
    ],
)
def test_repeated_known_key_is_bad_param(query):
    data = (VECTORS / "inputs" / "photo.png").read_bytes()
    response = post(create_app(Settings()), query, data)
    assert (response.status_code, error_code(response)) == (400, "bad_param")


@pytest.mark.parametrize(
    "query", ["?format=webp&lossless=1", "?format=webp&lossless=0", "?Op=bogus&OP=x", "?unknown=1&unknown=2"]
)
def test_lossless_digits_and_unknown_keys_are_fine(query):
    data = (VECTORS / "inputs" / "photo.png").read_bytes()
    assert post(create_app(Settings()), query, data).status_code == 200


@pytest.mark.parametrize(
    "header, allowed",
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("BEARER    s3cret", True),
        ("Bearer\ts3cret", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("Basic s3cret", False),
        ("Bearers3cret", False),
        ("Bearer s3cre", False),
        ("Bearer " + " " * 4100 + "s3cret", False),
        ("Bearer \ts3cret", False),
        ("", False),
    ],
)
def test_bearer_parsing(header, allowed):
    response = post(create_app(Settings(token="s3cret")), "", b"", Authorization=header)
    assert (response.status_code != 401) is allowed
    if not allowed:
        assert response.json["error"]["code"] == "unauthorized"


def multipart(*parts: tuple[str, str | None, bytes], close: bool = True) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + (b"--XyZ--\r\n" if close else b"")


def test_multipart_image_with_or_without_filename():
    data = (VECTORS / "inputs" / "photo.png").read_bytes()
    app = create_app(Settings())
    for filename in ("photo.png", None):
        response = post(app, "?format=raw", multipart(("note", None, b"hi"), ("image", filename, data)), MULTIPART)
        assert response.status_code == 200
        assert response.data == encode(grayscale(decode(data, 10**8)), "raw")


@pytest.mark.parametrize(
    "body, status, code",
    [
        (multipart(("image", "a.png", b"x"), ("image", None, b"y")), 400, "bad_param"),
        (multipart(("other", "a.png", b"x")), 400, "missing_image"),
        (multipart(("image", "a.bmp", b"BM"), close=False)[:-2], 400, "bad_image"),
        (b'--XyZ\r\nContent-Disposition: form-data; name="image"\r\n\r\nBM', 400, "bad_image"),
        (b"\x00garbage", 400, "bad_image"),
    ],
)
def test_multipart_refusals(body, status, code):
    response = post(create_app(Settings()), "", body, MULTIPART)
    assert (response.status_code, error_code(response)) == (status, code)


def test_413_wording_and_refusals_close_the_connection():
    response = post(create_app(Settings(max_bytes=10)), "", b"x" * 11)
    assert response.status_code == 413
    assert response.json["error"]["message"] == "body of 11 bytes is over the 10 byte limit"
    assert response.headers["Connection"] == "close"
    fine = post(create_app(Settings()), "", (VECTORS / "inputs" / "photo.png").read_bytes())
    assert fine.status_code == 200 and "Connection" not in fine.headers


def test_options_and_other_methods_on_process_are_405():
    client = create_app(Settings()).test_client()
    for method in ("OPTIONS", "GET", "PUT", "DELETE", "PATCH", "HEAD"):
        response = client.open("/process", method=method)
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "POST", method


def test_pixel_admission_by_declared_pixels():
    """Rule 9: the sum of declared pixels in flight is bounded; a lone request always goes."""
    data = (VECTORS / "inputs" / "photo.png").read_bytes()
    pixels_in_photo = Image.open(io.BytesIO(data)).width * Image.open(io.BytesIO(data)).height
    app = create_app(Settings(max_inflight_pixels=pixels_in_photo + 1))
    state = app.extensions["worker_python"]
    assert post(app, "", data).status_code == 200 and state.inflight_pixels == 0  # lone: admitted
    state.inflight_pixels = 2  # another request in flight
    busy = post(app, "", data)
    assert (busy.status_code, error_code(busy)) == (503, "busy") and busy.headers["Retry-After"] == "1"
    assert state.inflight == 0 and state.inflight_pixels == 2
    health = app.test_client().get("/healthz").json
    assert (health["inflight_pixels"], health["max_inflight_pixels"]) == (2, pixels_in_photo + 1)
    small = create_app(Settings(max_inflight_pixels=10))
    assert post(small, "", data).status_code == 200  # over the bound, but nothing else in flight


def test_pixels_are_held_until_the_reply_closes():
    data = (VECTORS / "inputs" / "photo.png").read_bytes()
    app = create_app(Settings())
    state = app.extensions["worker_python"]
    response = app.test_client().post("/process?format=raw", data=data, content_type="image/png", buffered=False)
    assert response.status_code == 200 and state.inflight_pixels > 0
    response.close()
    assert state.inflight_pixels == 0 and state.inflight == 0


@pytest.mark.parametrize("op", ["grayscale", "sepia", "invert", "blur"])
def test_in_place_ops_match_the_plain_ops(op, monkeypatch):
    monkeypatch.setattr(ops, "BAND_BYTES", 3 * 37 * 5)  # many bands of a 37 px wide image
    rgb = np.random.default_rng(3).integers(0, 256, (301, 37, 3), dtype=np.uint8)
    for radius in (0.5, 2.0, 11.3, 50.0) if op == "blur" else (2.0,):
        plain = apply(op, Image.fromarray(rgb), radius)
        in_place = apply(op, Image.fromarray(rgb), radius, in_place=True)
        assert np.array_equal(pixels(in_place), pixels(plain)), radius


def test_raw_reply_is_streamed_in_pieces(monkeypatch):
    monkeypatch.setattr("worker_python.encode.RAW_PIECE_BYTES", 3 * 20 * 4)
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (9, 20, 3), dtype=np.uint8))
    pieces = list(raw_chunks(image))
    assert len(pieces) == 1 + 3 and b"".join(pieces) == b"P6\n20 9\n255\n" + image.tobytes()
    assert raw_length(image) == len(b"".join(pieces))


def test_every_decode_names_exactly_one_allowed_format(monkeypatch):
    """Rule 4: Pillow only ever runs the decoder the magic bytes chose (no EPS via Ghostscript)."""
    calls = []
    real_open = Image.open

    def spy(fp, mode="r", formats=None):
        calls.append(formats)
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    for name in (
        "photo.png",
        "oriented6.jpg",
        "photo.bmp",
        "photo.tiff",
        "two_frames.gif",
        "lossless.webp",
        "photo.ppm",
        "gray8.pgm",
    ):
        decode((VECTORS / "inputs" / name).read_bytes(), 10**8)
    assert len(calls) == 8 and all(len(f) == 1 and f[0] in ACCEPTED_PILLOW_FORMATS for f in calls), calls


# ---------------------------------------------------------------- round-2 rules, real process and raw sockets


def connect(worker) -> socket.socket:
    host, port = worker.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Everything the worker sends until it closes (or `seconds` pass), and when it closed."""
    started, answer = time.monotonic(), b""
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        answer += data
    return answer, time.monotonic() - started


def health_seconds(worker) -> float:
    started = time.monotonic()
    assert requests.get(worker.url + "/healthz", timeout=10).status_code == 200
    return time.monotonic() - started


def test_unauthorised_big_body_is_refused_and_closed_at_once(worker_factory):
    """Rule 3 (issue 11.2a): 8 clients announcing 10 MB without a token, then trickling."""
    worker = worker_factory("python", {"WORKER_TOKEN": "s3cret"})
    head = b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 10000000\r\n\r\nx"
    socks = [connect(worker) for _ in range(8)]
    try:
        for sock in socks:
            sock.sendall(head)
        slowest_health = max(health_seconds(worker) for _ in range(3))
        for sock in socks:
            answer, closed_after = read_until_closed(sock, 6)
            assert answer.startswith(b"HTTP/1.1 401") and b"Connection: close" in answer
            assert b"\r\nServer:" not in answer and closed_after < 4
        assert slowest_health < 2.5  # rule 10 says < 1 s; generous for a shared machine
    finally:
        for sock in socks:
            sock.close()


def test_a_thousand_idle_connections_do_not_lock_the_worker_out(worker_factory):
    """Rule 10 (issue 11.2b): gunicorn stopped accepting at 1000 connections; now the oldest
    idle one is evicted, so a health probe still gets in."""
    worker = worker_factory("python")
    idle = []
    try:
        for _ in range(1100):
            idle.append(connect(worker))
        assert health_seconds(worker) < 2.5
    finally:
        for sock in idle:
            sock.close()


def test_half_sent_headers_are_closed_after_5_seconds(python_worker):
    with connect(python_worker) as sock:
        sock.sendall(b"POST /process HTTP/1.1\r\nHost: x\r\n")
        answer, closed_after = read_until_closed(sock, 12)
    assert answer == b"" and 4.5 < closed_after < 8


def test_slow_body_is_cut_off_and_its_slot_freed(worker_factory):
    """Rule 10: a body must arrive at 64 KiB/s after a 10 s allowance; a trickle is answered 400."""
    worker = worker_factory("python", {"WORKER_MAX_INFLIGHT": "1"})
    with connect(worker) as sock:
        sock.sendall(b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n")
        started, answer = time.monotonic(), b""
        sock.settimeout(0.5)
        while time.monotonic() - started < 16 and not answer:
            sock.sendall(b"x")
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(65536)
            if time.monotonic() - started < 2:
                assert requests.get(worker.url + "/healthz", timeout=5).json()["inflight"] == 1
        while answer and not answer.rstrip().endswith(b"}"):  # the body may follow the headers' segment
            more = sock.recv(65536)  # within the 0.5 s timeout, or the test fails
            answer += more
            if not more:
                break
    assert answer.startswith(b"HTTP/1.1 400") and b'"bad_image"' in answer, answer[:200]
    assert 9 < time.monotonic() - started < 16
    assert requests.get(worker.url + "/healthz", timeout=5).json()["inflight"] == 0


def reply_parts(answer: bytes) -> tuple[int, bytes, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, json.loads(body) if body.startswith(b"{") else {}


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (
            b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;" + b"e" * 20000,
            400,
        ),  # an extension past the 8190-byte line limit, never terminated
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /process HTTP/1.1\r\nHost: x\r\nAuthorization Bearer s3cret-in-a-bad-line\r\n\r\n", 400),
    ],
)
def test_server_level_errors_are_contract_json_and_quote_nothing(python_worker, request_bytes, status):
    """Rule 8 (issue 11.7): gunicorn's own errors were HTML or a 500, and logged the token."""
    answer = raw_exchange(python_worker.url, [request_bytes])
    got, head, body = reply_parts(answer)
    assert got == status and set(body["error"]) == {"code", "message"}, answer[:300]
    assert b"\r\nServer:" not in head and b"Connection: close" in head
    assert b"s3cret-in-a-bad-line" not in answer
    time.sleep(0.2)
    log = python_worker.log_text()
    assert "s3cret-in-a-bad-line" not in log and "Traceback" not in log and '"internal"' not in log


def test_replies_name_no_framework(python_worker):
    for response in (
        requests.get(python_worker.url + "/healthz", timeout=5),
        requests.options(python_worker.url + "/process", timeout=5),
    ):
        assert "Server" not in response.headers and "X-Powered-By" not in response.headers
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


def test_client_leaving_mid_chunked_body_is_a_quiet_400(python_worker):
    marker = "left-mid-chunk"
    with connect(python_worker) as sock:
        sock.sendall(
            b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-Request-Id: "
            + marker.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc"
        )
    deadline = time.monotonic() + 10
    while marker not in python_worker.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [json.loads(line) for line in python_worker.log_text().splitlines() if marker in line]
    assert [(line["status"], line["code"]) for line in lines] == [(400, "bad_image")]
    assert "NoMoreData" not in python_worker.log_text()


def test_eps_never_starts_ghostscript(worker_factory, tmp_path):
    """Rule 4 (issue 11.10): a fake `gs` first on PATH would leave a marker if anything ran it."""
    marker = tmp_path / "gs-ran"
    fake_gs = tmp_path / "bin" / "gs"
    fake_gs.parent.mkdir()
    fake_gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_gs.chmod(0o755)
    worker = worker_factory("python", {"PATH": f"{fake_gs.parent}:/usr/bin:/bin"})
    eps = (VECTORS / "inputs" / "photo.eps").read_bytes()
    for content_type in ("image/png", "image/x-eps", "application/postscript"):
        response = requests.post(worker.url + "/process", data=eps, headers={"Content-Type": content_type}, timeout=10)
        assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_type"
    assert not marker.exists()
    assert subprocess.run([str(fake_gs)], env={"PATH": "/usr/bin:/bin"}).returncode == 1 and marker.exists()


def test_reply_holds_its_pixels_until_written_or_gone(worker_factory):
    """Rule 9: a client that does not read its reply keeps its slot; leaving frees it."""
    worker = worker_factory("python")
    body = encoded(Image.new("RGB", (2000, 2000), (9, 99, 199)), "PNG")
    head = (
        f"POST /process?format=raw HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = connect(worker)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(head + body)
    try:
        deadline, health = time.monotonic() + 10, {}
        while time.monotonic() < deadline and health.get("inflight_pixels") != 4_000_000:
            health = requests.get(worker.url + "/healthz", timeout=5).json()
            time.sleep(0.2)
        assert (health["inflight"], health["inflight_pixels"]) == (1, 4_000_000)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # reset: the reply can no longer be written
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and health["inflight"]:
        health = requests.get(worker.url + "/healthz", timeout=5).json()
        time.sleep(0.2)
    assert (health["inflight"], health["inflight_pixels"]) == (0, 0)


def test_paced_socket_bounds_reads_and_writes():
    """Rule 9/10: a body or a reply slower than 64 KiB/s after 10 s is cut off."""
    from worker_python import wire

    clock = FakeClock()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        paced = wire.PacedSocket(ours, clock)
        theirs.sendall(b"abc")
        assert paced.recv(10) == b"abc"
        clock.now += wire.ALLOWANCE_SECONDS + 1
        theirs.sendall(b"late")
        assert paced.recv(10) == b""  # past the bound: seen as the end of the body
        fresh = wire.PacedSocket(ours, clock)
        fresh.sendall(b"x" * 1000)  # inside the allowance
        clock.now += wire.ALLOWANCE_SECONDS + (8 << 20) / wire.MIN_BYTES_PER_SECOND + 1
        started = time.monotonic()
        with pytest.raises(wire.ReplyTooSlow):
            fresh.sendall(b"x" * (8 << 20))  # nobody reads: the kernel buffers fill
        assert time.monotonic() - started < 5
        assert ours.gettimeout() is None


def test_healthz_with_a_body_closes_instead_of_draining(python_worker):
    with connect(python_worker) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\nx")
        answer, closed_after = read_until_closed(sock, 8)
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer and closed_after < 4


def test_pipelined_half_request_waits_at_the_gate_not_in_a_thread(worker_factory):
    """A whole request followed by half of the next one: the half must not hold a thread."""
    worker = worker_factory("python", {"WORKER_MAX_INFLIGHT": "1"})  # 3 threads
    socks = [connect(worker) for _ in range(6)]
    try:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.5)
        assert health_seconds(worker) < 2.5
        body = (VECTORS / "inputs" / "photo.png").read_bytes()
        response = requests.post(worker.url + "/process", data=body, headers={"Content-Type": "image/png"}, timeout=4)
        assert response.status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_decode_has_a_deadline():
    """Issue 11.3: past its deadline a decode stops at Pillow's next read, as 400 bad_image."""
    from tests.vectors.rule_vectors import many_scan_jpeg

    data = many_scan_jpeg(100, 2000)
    assert load_rgb(open_checked(data, 10**8), data).size == (2000, 2000)
    started = time.monotonic()
    with pytest.raises(BadImage, match="decoding took longer"):
        load_rgb(open_checked(data, 10**8), data, seconds=0.0)
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------- TLS and the token file (issue 16)


@pytest.mark.parametrize(
    "env, name",
    [
        ({"WORKER_TLS_CERT": "a.crt"}, "WORKER_TLS_KEY"),
        ({"WORKER_TLS_KEY": "a.key"}, "WORKER_TLS_CERT"),
        ({"WORKER_TLS_CLIENT_CA": "ca.crt"}, "WORKER_TLS_CLIENT_CA"),
        ({"WORKER_TOKEN": "t0k", "WORKER_TOKEN_FILE": "tokens"}, "WORKER_TOKEN_FILE"),
    ],
)
def test_secret_file_variables_that_do_not_go_together(env, name):
    with pytest.raises(SettingsError, match=name):
        load_settings(env)


def test_secret_file_paths_are_read_and_tls_follows_the_cert():
    settings = load_settings({"WORKER_TLS_CERT": " a.crt ", "WORKER_TLS_KEY": "a.key", "WORKER_TOKEN_FILE": "t"})
    assert (settings.tls_cert, settings.tls_key, settings.token_file, settings.tls) == ("a.crt", "a.key", "t", True)
    assert load_settings({}).tls is False


def test_token_file_lines_are_stripped_and_the_errors_never_show_a_token(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("\n  first-t0k \r\n\n\tsecond-t0k\n")
    assert read_tokens(str(path)) == ("first-t0k", "second-t0k")
    for text in ("", " \n\n", "one-t0k\ntwo-t0k\nthree-t0k\n", "has space-t0k\n", "tab\tin-t0k\n"):
        path.write_text(text)
        with pytest.raises(SettingsError, match="WORKER_TOKEN_FILE") as caught:
            read_tokens(str(path))
        assert "t0k" not in str(caught.value)


def test_any_listed_token_is_accepted():
    assert authorized_by_any("Bearer b-t0k", ("a-t0k", "b-t0k"))
    assert authorized_by_any("Bearer a-t0k", ("a-t0k", "b-t0k"))
    assert not authorized_by_any("Bearer c-t0k", ("a-t0k", "b-t0k"))
    assert not authorized_by_any("Bearer a-t0k", ())


def replace_file(path, data: bytes) -> None:
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    os.replace(temp, path)


def test_token_file_reload_swaps_the_set_and_a_broken_one_keeps_it(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text("old-t0k\n")
    files = SecretFiles.load(load_settings({"WORKER_TOKEN_FILE": str(path)}))
    assert files.tokens == ("old-t0k",)
    files.refresh()  # nothing changed: nothing logged
    assert not caplog.records
    replace_file(path, b"old-t0k\nnew-t0k\n")
    with caplog.at_level(logging.INFO, logger="worker_python"):
        files.refresh()
        assert files.tokens == ("old-t0k", "new-t0k")
        replace_file(path, b"\n")
        files.refresh()
    assert files.tokens == ("old-t0k", "new-t0k")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["secrets reloaded", "secrets reload failed"]
    assert caplog.records[0].files == ["WORKER_TOKEN_FILE"] and caplog.records[1].levelname == "ERROR"
    assert "keeping the previous ones" in caplog.records[1].getMessage()
    assert not any("t0k" in r.getMessage() for r in caplog.records)


def server_files(tmp_path, ca: Authority | None = None) -> tuple[Authority, dict]:
    ca = ca or Authority()
    cert, key = ca.issue(FLEET_TLS_NAME).write(tmp_path, "server")
    return ca, {"WORKER_TLS_CERT": str(cert), "WORKER_TLS_KEY": str(key)}


def test_tls_reload_builds_a_new_context_and_a_broken_key_keeps_the_old_one(tmp_path):
    ca, env = server_files(tmp_path)
    files = SecretFiles.load(load_settings(env))
    first = files.context
    assert first is not None and first.minimum_version == ssl.TLSVersion.TLSv1_2
    assert first.verify_mode == ssl.CERT_NONE  # no client CA: no client certificate asked for
    replace_file(Path(env["WORKER_TLS_KEY"]), ca.issue(FLEET_TLS_NAME).key_pem)  # the key of another cert
    files.refresh()
    assert files.context is first
    fresh = ca.issue(FLEET_TLS_NAME)
    replace_file(Path(env["WORKER_TLS_CERT"]), fresh.cert_pem)
    replace_file(Path(env["WORKER_TLS_KEY"]), fresh.key_pem)
    files.refresh()
    assert files.context is not first and files.context is not None


def test_client_ca_asks_for_a_client_certificate(tmp_path):
    ca, env = server_files(tmp_path)
    env["WORKER_TLS_CLIENT_CA"] = str(ca.write_ca(tmp_path))
    assert SecretFiles.load(load_settings(env)).context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    "variable, content",
    [
        ("WORKER_TLS_CERT", b"not PEM"),
        ("WORKER_TLS_CERT", b"-----BEGIN CERTIFICATE-----\nbad\n-----END CERTIFICATE-----\n"),
        ("WORKER_TLS_KEY", b"not PEM"),
    ],
)
def test_a_bad_pem_names_its_variable(tmp_path, variable, content):
    _, env = server_files(tmp_path)
    Path(env[variable]).write_bytes(content)
    with pytest.raises(SettingsError, match=variable):
        server_context(env["WORKER_TLS_CERT"], env["WORKER_TLS_KEY"])


def test_healthz_says_whether_the_worker_serves_tls(tmp_path):
    _, env = server_files(tmp_path)
    assert create_app(Settings()).test_client().get("/healthz").json["tls"] is False
    assert create_app(load_settings(env)).test_client().get("/healthz").json["tls"] is True


@pytest.fixture(scope="module")
def tls_worker(tmp_path_factory):
    """A TLS worker with one /process slot (3 threads), for the header gate over TLS."""
    folder = tmp_path_factory.mktemp("tls-worker")
    ca, env = server_files(folder)
    worker = start_worker(
        "python", folder, {**env, "WORKER_MAX_INFLIGHT": "1"}, tls=TlsClient(ca.write_ca(folder), FLEET_TLS_NAME)
    )
    yield worker
    worker.stop()


def tls_connect(worker) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(worker.tls.ca_file))
    host, port = worker.url.removeprefix("https://").split(":")
    return context.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=worker.tls.name)


def test_half_sent_requests_over_tls_do_not_take_the_threads(tls_worker):
    socks = [tls_connect(tls_worker) for _ in range(8)]
    try:
        for sock in socks:
            sock.sendall(b"POST /process HTTP/1.1\r\nHost: x\r\n")
        session = tls_worker.session()
        started = time.monotonic()
        assert session.get(tls_worker.url + "/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 2.5
        body = (VECTORS / "inputs" / "photo.png").read_bytes()
        response = session.post(
            tls_worker.url + "/process", data=body, headers={"Content-Type": "image/png"}, timeout=10
        )
        assert response.status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_pipelined_requests_left_in_the_tls_buffer_are_answered(tls_worker):
    """gunicorn reads a request in 8192-byte pieces; a TLS record holding the end of a body and
    the next requests leaves decrypted bytes in the TLS socket once the parser's buffer ends on
    a request boundary. The poller cannot see them: without the gate reading them after the
    reply, the last requests hang until the idle timeout closes the connection."""
    body = solid_png(8, 8)
    head = f"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    in_the_parser = 8192 - len(body)  # after the body, the rest of the parser's first 8192-byte read
    pad = in_the_parser - 3 * len(health) - len(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n")
    padded = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * pad + b"\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    record = body + 3 * health + padded + 2 * health + last  # one TLS record (under 16 KiB)
    assert len(body + 3 * health + padded) == 8192 and len(record) < 16384
    with tls_connect(tls_worker) as sock:
        sock.sendall(head.encode())
        time.sleep(0.3)  # the headers alone reach the gate
        sock.sendall(record)
        sock.settimeout(4)  # under the 5 s idle bound: a hang shows as a timeout, not a close
        answer = b""
        with contextlib.suppress(TimeoutError):
            while data := sock.recv(65536):
                answer += data
    assert answer.count(b"HTTP/1.1 200") == 8, answer.count(b"HTTP/1.1 200")


def error_lines(worker) -> list[str]:
    return [line for line in worker.log_text().splitlines() if '"level": "error"' in line]


def test_a_broken_tls_record_mid_request_closes_without_an_error_line(tls_worker):
    """A record that fails its integrity check while the body is read: the body counts as ended
    early (400, which cannot be sent on the broken session), the connection closes, nothing is
    logged as the worker's error and the worker goes on serving."""
    before = len(error_lines(tls_worker))
    head = b"POST /process HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    with tls_connect(tls_worker) as sock:
        sock.sendall(head + b"\x89PNG\r\n\x1a\n")
        time.sleep(0.3)
        with socket.socket(fileno=os.dup(sock.fileno())) as raw:  # under TLS: a forged application-data record
            raw.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))
        sock.settimeout(5)  # a TimeoutError here: the worker kept the broken connection open
        answer = b""
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):  # the worker's alert, or its close
            while data := sock.recv(65536):
                answer += data
    assert b"HTTP/1.1" not in answer
    assert len(error_lines(tls_worker)) == before, error_lines(tls_worker)[before:]
    assert tls_worker.session().get(tls_worker.url + "/healthz", timeout=5).status_code == 200


def test_a_restarted_worker_process_starts_with_the_current_token_file(tmp_path):
    """gunicorn forks a new worker process from the master's copy of the secrets, read at start;
    the new process re-reads the changed files before it serves (not a second later)."""
    tokens = tmp_path / "tokens"
    tokens.write_text("old-t0k\n")
    worker = start_worker("python", tmp_path / "w", {"WORKER_TOKEN_FILE": str(tokens)})
    try:
        replace_file(tokens, b"new-t0k\n")
        deadline = time.monotonic() + 15
        while process_status(worker, "old-t0k") != 401 and time.monotonic() < deadline:
            time.sleep(0.2)
        child = int(Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()[0])
        os.kill(child, signal.SIGKILL)
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                status = process_status(worker, "old-t0k")
                assert status == 401, "the restarted worker process took the retired token"
                return
            time.sleep(0.05)
        pytest.fail("the worker did not come back")
    finally:
        worker.stop()


def process_status(worker, token: str) -> int:
    headers = {"Content-Type": "image/png", "Authorization": f"Bearer {token}"}
    return requests.post(worker.url + "/process", data=solid_png(4, 4), headers=headers, timeout=5).status_code
