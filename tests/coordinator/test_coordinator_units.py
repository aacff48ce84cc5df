"""Coordinator's pure parts: config, plan and blur halo, imaging, the parallel PNG encoder."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFilter

from coordinator import imaging, pngfast, pool_discovery
from coordinator.config import DEFAULT_WORKERS, current_token, load_config, refreshed_token
from coordinator.errors import ConfigError, InputError
from coordinator.plan import blur_halo, parse_plan, plan_strips
from scripts.testkit.images import png_bytes
from scripts.testkit.tls import Authority


def noise(height: int, width: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- config ---------------------------------------------------------------------------


def outputs_file(tmp_path, urls, token="s3cret"):
    path = tmp_path / "outputs.json"
    path.write_text(
        json.dumps({"workers": [{"name": f"w{i}", "url": url} for i, url in enumerate(urls)], "worker_token": token})
    )
    return str(path)


def test_config_defaults_are_the_two_local_workers():
    config = load_config(environ={})
    assert config.workers == DEFAULT_WORKERS and config.source == "default" and config.token is None


def test_config_sources_in_order(tmp_path):
    path = outputs_file(tmp_path, ["http://10.0.0.1:5001/"])
    env = {"COORDINATOR_WORKERS": "http://a:1", "COORDINATOR_WORKERS_FILE": path}
    assert load_config("http://flag:1", path, env).workers == ("http://flag:1",)
    assert load_config(None, path, env).workers == ("http://10.0.0.1:5001",)
    assert load_config(None, None, env).workers == ("http://a:1",)
    from_env_file = load_config(None, None, {"COORDINATOR_WORKERS_FILE": path})
    assert from_env_file.workers == ("http://10.0.0.1:5001",) and from_env_file.token == "s3cret"
    assert load_config(None, path, {"COORDINATOR_WORKER_TOKEN": "other"}).token == "other"


@pytest.mark.parametrize(
    "env, setting",
    [
        ({"COORDINATOR_WORKERS": "ftp://x:1"}, "COORDINATOR_WORKERS"),
        ({"COORDINATOR_WORKERS": "http://x:1/path"}, "COORDINATOR_WORKERS"),
        ({"COORDINATOR_WORKERS": "http://x:99999"}, "COORDINATOR_WORKERS"),
        ({"COORDINATOR_WORKERS": " , "}, "COORDINATOR_WORKERS"),
        ({"COORDINATOR_READ_TIMEOUT": "soon"}, "COORDINATOR_READ_TIMEOUT"),
        ({"COORDINATOR_MAX_ATTEMPTS": "0"}, "COORDINATOR_MAX_ATTEMPTS"),
        ({"COORDINATOR_MAX_PIXELS": "1.5"}, "COORDINATOR_MAX_PIXELS"),
        ({"COORDINATOR_TRANSPORT": "carrier-pigeon"}, "COORDINATOR_TRANSPORT"),
        ({"COORDINATOR_WORKERS_FILE": "/nonexistent/outputs.json"}, "COORDINATOR_WORKERS_FILE"),
    ],
)
def test_config_errors_name_the_setting(env, setting):
    with pytest.raises(ConfigError, match=setting):
        load_config(environ=env)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"workers": []}',
        '{"workers": [{"name": "x"}]}',
        '{"workers": [{"url": "http://a:1"}], "worker_token": 5}',
    ],
)
def test_config_bad_outputs_file(tmp_path, content):
    path = tmp_path / "outputs.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="--workers-file"):
        load_config(None, str(path), {})


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\xff\xfe{not utf-8", "is not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b" " * (2 << 20), "is over 1048576 bytes"),
    ],
)
def test_config_outputs_file_read_is_bounded(tmp_path, content, words):
    """11.15: each was an uncaught UnicodeDecodeError / RecursionError / unbounded read (exit 1)."""
    path = tmp_path / "outputs.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=words):
        load_config(None, str(path), {})


def test_config_outputs_file_that_is_a_device_is_refused():
    with pytest.raises(ConfigError, match="/dev/zero is not a regular file"):
        load_config(None, "/dev/zero", {})


TOKEN_SECRET = "s3cret-value"


@pytest.mark.parametrize(
    "token",
    [
        f"{TOKEN_SECRET}\nX-Evil: 1",
        f"{TOKEN_SECRET}\r\nX: y",
        f"{TOKEN_SECRET} two",
        f"{TOKEN_SECRET}\u00e9",
        TOKEN_SECRET * 400,
    ],
)
def test_a_token_that_cannot_be_a_header_is_refused_without_echo(tmp_path, token):
    """11.13: before, requests' InvalidHeader printed `Bearer s3cret\nX-...` on the CLI and the page."""
    with pytest.raises(ConfigError) as info:
        load_config(environ={"COORDINATOR_WORKER_TOKEN": token})
    assert "COORDINATOR_WORKER_TOKEN" in str(info.value) and TOKEN_SECRET not in str(info.value)
    path = outputs_file(tmp_path, ["http://a:1"], token=token)
    with pytest.raises(ConfigError) as info:
        load_config(None, path, {})
    assert "worker_token" in str(info.value) and TOKEN_SECRET not in str(info.value)


@pytest.mark.parametrize(
    "url", ["http://user:pw-secret@10.0.0.1:5001", "http://pw-secret@10.0.0.1:5001/x", "ftp://user:pw-secret@host:1"]
)
def test_url_credentials_are_refused_and_never_shown(tmp_path, url):
    """11.13: a user:pw@ worker URL was printed in full; workers take a bearer token, so the
    URL is refused, and the message shows it redacted."""
    for where, call in (
        ("COORDINATOR_WORKERS", lambda: load_config(environ={"COORDINATOR_WORKERS": url})),
        ("--workers-file", lambda: load_config(None, outputs_file(tmp_path, [url]), {})),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        assert where in str(info.value) and "pw-secret" not in str(info.value) and "***@" in str(info.value)


def test_config_reads_pulumi_stack_when_the_cli_is_there(tmp_path):
    # A stand-in `pulumi` on PATH prints what `pulumi stack output --json --show-secrets` prints.
    fake = tmp_path / "bin" / "pulumi"
    fake.parent.mkdir()
    outputs = {"workers": [{"url": "http://192.0.2.7:5001"}], "worker_token": "from-stack"}
    fake.write_text(
        "#!/bin/sh\n"
        f'[ "$4" = --show-secrets ] && [ "$6" = dev ] && echo \'{json.dumps(outputs)}\' && exit 0\n'
        "echo 'error: no stack' >&2; exit 255\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": str(fake.parent), "COORDINATOR_PULUMI_STACK": "dev", "COORDINATOR_PULUMI_DIR": str(tmp_path)}
    config = load_config(environ=env)
    assert config.workers == ("http://192.0.2.7:5001",) and config.token == "from-stack"
    with pytest.raises(ConfigError, match="COORDINATOR_PULUMI_STACK=prod: pulumi exited 255: error: no stack"):
        load_config(environ={**env, "COORDINATOR_PULUMI_STACK": "prod"})
    assert load_config(environ={**env, "PATH": str(tmp_path / "empty")}).source == "default"


def test_a_401_re_reads_the_token_from_its_outputs_file_once_per_change(tmp_path):
    path = outputs_file(tmp_path, ["http://192.0.2.7:5001"], token="first-token")
    config = load_config(workers_file=path, environ={})
    assert current_token(config) == "first-token"
    assert refreshed_token(config, "first-token") is None  # unchanged: the 401 stands
    outputs_file(tmp_path, ["http://192.0.2.7:5001"], token="second-token")  # `fleet rotate-token`
    assert refreshed_token(config, "first-token") == "second-token"
    assert current_token(config) == "second-token"  # every later piece of the batch sends it
    os.unlink(path)
    assert refreshed_token(config, "first-token") == "second-token"  # another strip: no second read
    assert refreshed_token(config, "second-token") is None  # unreadable now: the 401 stands, no crash


def test_a_401_re_reads_an_environment_token(monkeypatch):
    monkeypatch.setenv("COORDINATOR_WORKER_TOKEN", "env-token-1")
    config = load_config(workers="http://192.0.2.7:5001", environ=dict(os.environ))
    monkeypatch.setenv("COORDINATOR_WORKER_TOKEN", "env-token-2")
    assert refreshed_token(config, "env-token-1") == "env-token-2"
    assert refreshed_token(load_config(workers="http://192.0.2.7:5001", environ={}), None) is None  # no source


def test_a_pooled_stack_with_a_fleet_ca_is_reached_over_https(tmp_path):
    path = tmp_path / "pooled.json"
    pools = [{"name": "asg-python", "role": "worker-python", "runtime": "python", "port": 5001}]
    outputs = {"workers": [], "pools": pools, "project": "p", "stack": "s", "region": "eu-west-1"}
    path.write_text(json.dumps({**outputs, "worker_ca_pem": Authority().cert_pem.decode()}))
    config = load_config(workers_file=str(path), environ={})
    tags = [{"Key": "Role", "Value": "worker-python"}]
    instance = {"InstanceId": "i-1", "PublicIpAddress": "192.0.2.9", "Tags": tags}
    assert pool_discovery._urls([instance], config.pool_fleet) == [("i-1", "https://192.0.2.9:5001")]
    path.write_text(json.dumps(outputs))
    assert load_config(workers_file=str(path), environ={}).pool_fleet.scheme == "http"


# --- plan -------------------------------------------------------------------------------


def test_parse_plan():
    assert parse_plan("seed", 1) == ["grayscale"]
    assert parse_plan("seed", 2) == ["grayscale", "sepia"]
    assert parse_plan("seed", 5) == ["grayscale", "sepia", "grayscale", "sepia", "grayscale"]
    assert parse_plan("invert", 3) == ["invert"] * 3
    assert parse_plan("blur, sepia,invert", 3) == ["blur", "sepia", "invert"]
    with pytest.raises(InputError, match="plan lists 2 ops but there are 3 strips"):
        parse_plan("sepia,invert", 3)
    with pytest.raises(InputError, match="unknown op 'emboss'"):
        parse_plan("emboss", 2)
    with pytest.raises(InputError, match="strips"):
        parse_plan("seed", 0)


@pytest.mark.parametrize("height, count", [(1, 1), (7, 3), (10, 7), (1001, 2)])
def test_plan_strips_cover_every_row_once(height, count):
    strips = plan_strips(height, ["blur"] * count, {"radius": 2})
    assert strips[0].top == 0 and strips[-1].bottom == height
    assert all(a.bottom == b.top for a, b in zip(strips, strips[1:], strict=False))
    assert all(s.send_top >= 0 and s.send_bottom <= height and s.rows >= 1 for s in strips)
    assert strips[0].halo_top == 0 and strips[-1].halo_bottom == 0


def test_plan_strips_refuses_more_listed_strips_than_rows_and_bad_radius():
    with pytest.raises(InputError, match="only 2 rows"):
        plan_strips(2, ["sepia", "invert", "sepia"])
    for radius in (0, -1, 51, "wide"):
        with pytest.raises(InputError, match="radius"):
            plan_strips(10, ["blur"], {"radius": radius})


def blur_in_strips(pixels: np.ndarray, radius: float, count: int, halo: int) -> np.ndarray:
    """What the coordinator does, with Pillow in-process standing in for the workers."""
    height = pixels.shape[0]
    out = np.empty_like(pixels)
    for index in range(count):
        top, bottom = index * height // count, (index + 1) * height // count
        above, below = min(halo, top), min(halo, height - bottom)
        part = Image.fromarray(pixels[top - above : bottom + below]).filter(ImageFilter.GaussianBlur(radius))
        out[top:bottom] = np.asarray(part)[above : above + bottom - top]
    return out


@pytest.mark.parametrize("radius", [0.3, 1, 2, 3.7, 10, 24.5])
def test_blur_halo_is_exact(radius):
    pixels = noise(160, 24)
    whole = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))
    halo = blur_halo(radius)
    assert np.array_equal(blur_in_strips(pixels, radius, 3, halo), whole)
    # The halo is the filter's full reach (3 passes of int(box radius) + 1 rows); the last
    # rows weigh too little to change an 8-bit result, so test that half of it shows the cut.
    if radius >= 1:
        assert not np.array_equal(blur_in_strips(pixels, radius, 3, halo // 2), whole)


# --- imaging ------------------------------------------------------------------------------


def test_decode_refuses_bad_inputs_with_one_line():
    good = png_bytes(noise(40, 30))
    cases = {b"": "empty", b"hello, not an image": "not an image", good[: len(good) // 2]: "truncated"}
    for data, words in cases.items():
        with pytest.raises(InputError, match=words) as info:
            imaging.decode_pixels(data, 10_000)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="1200 pixels, over the limit of 1000 .COORDINATOR_MAX_PIXELS"):
        imaging.decode_pixels(good, 1000)


def test_pixel_limit_is_checked_before_decoding():
    # A PNG header claiming 60000x60000 with no pixel data at all: refused on the header alone.
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    data = pngfast.PNG_SIGNATURE + pngfast.png_chunk(b"IHDR", ihdr) + pngfast.png_chunk(b"IEND", b"")
    with pytest.raises(InputError, match="3600000000 pixels, over the limit"):
        imaging.decode_pixels(data, 50_000_000)


def test_decode_modes_follow_the_contract():
    rgba = np.dstack([noise(4, 5), np.full((4, 5), 9, np.uint8)])
    assert np.array_equal(imaging.decode_pixels(png_bytes(rgba), 100), rgba[:, :, :3])
    gray16 = np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000
    decoded = imaging.decode_pixels(png_bytes(Image.fromarray(gray16)), 100)
    assert np.array_equal(decoded, np.repeat((gray16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2))
    palette = Image.fromarray(noise(4, 5)).convert("P")
    assert np.array_equal(imaging.decode_pixels(png_bytes(palette), 100), np.asarray(palette.convert("RGB")))


def test_decode_applies_exif_orientation():
    image = Image.fromarray(noise(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    assert imaging.decode_pixels(buffer.getvalue(), 10_000).shape == (40, 20, 3)


def test_ppm_round_trip_and_bad_ppm():
    pixels = noise(3, 5)
    assert np.array_equal(imaging.decode_ppm(imaging.encode_ppm(pixels)), pixels)
    with pytest.raises(ValueError, match="expected 45"):
        imaging.decode_ppm(imaging.encode_ppm(pixels)[:-1])
    with pytest.raises(ValueError, match="not a binary PPM"):
        imaging.decode_ppm(b"P5\n1 1\n255\n\x00")


@pytest.mark.parametrize("wire", ["raw", "png", "webp-lossless"])
def test_strip_wire_formats_are_lossless(wire):
    pixels = noise(9, 11)
    body, content_type = imaging.encode_strip(pixels, wire)
    assert content_type.startswith("image/")
    assert np.array_equal(imaging.decode_any(body), pixels)


def test_output_formats():
    assert imaging.format_for_path("a/b.JPG") == "jpeg" and imaging.format_for_path("x.tif") == "tiff"
    with pytest.raises(InputError, match="cannot write .gif"):
        imaging.format_for_path("out.gif")
    pixels = noise(6, 7)
    for fmt in ("png", "tiff", "bmp", "jpeg", "webp"):
        decoded = Image.open(io.BytesIO(imaging.encode_output(pixels, fmt)))
        assert decoded.size == (7, 6) and decoded.format.lower() == fmt
        if fmt in ("png", "tiff", "bmp"):
            assert np.array_equal(np.asarray(decoded.convert("RGB")), pixels)


# --- parallel PNG encoder -----------------------------------------------------------------


def test_adler32_combine_matches_zlib():
    data = os.urandom(100_003)
    for cut in (0, 1, 65521, 99_999):
        a, b = data[:cut], data[cut:]
        assert pngfast.adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(data)


@pytest.mark.parametrize("png_filter", ["none", "sub", "up"])
@pytest.mark.parametrize("level", [0, 1, 6])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1000, 333)])
def test_parallel_png_decodes_to_the_same_pixels(png_filter, level, shape):
    pixels = noise(*shape, seed=shape[0])
    pixels[: shape[0] // 2] //= 16  # some compressible rows as well as noise
    encoded = pngfast.encode_png(pixels, level=level, png_filter=png_filter, threads=3)
    with Image.open(io.BytesIO(encoded)) as image:
        image.load()
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), pixels)
    assert zlib.decompress(b"".join(chunk_data(encoded, b"IDAT")))  # zlib's own check of adler32


def chunk_data(png: bytes, kind: bytes) -> list[bytes]:
    out, offset = [], 8
    while offset < len(png):
        length = struct.unpack(">I", png[offset : offset + 4])[0]
        if png[offset + 4 : offset + 8] == kind:
            out.append(png[offset + 8 : offset + 8 + length])
        offset += 12 + length
    return out


def test_png_threads_keep_order_and_hand_back_an_error():
    assert pngfast.in_threads(lambda number: number * number, 7, 3) == [n * n for n in range(7)]
    assert pngfast.in_threads(lambda number: number, 1, 4) == [0]

    def fails_at_five(number: int) -> int:
        if number == 5:
            raise ValueError("chunk 5")
        return number

    with pytest.raises(ValueError, match="chunk 5"):
        pngfast.in_threads(fails_at_five, 8, 2)


def test_streaming_png_is_encode_png_of_the_final_rows_after_a_refill():
    """Rows filled in any order, a range filled with other pixels, unfilled and filled again
    (a strip that failed over after its first piece was deflated): the file is encode_png's."""
    final = noise(600, 50, seed=11)
    final[:300] //= 16
    pixels = np.zeros_like(final)
    stream = pngfast.StreamingPng(pixels, level=1, threads=2)
    assert len(stream.bounds) == 2  # chunks [0, 300) and [300, 600)
    pixels[300:] = final[300:]
    stream.fill(300, 600)
    pixels[:300] = 255 - final[:300]  # the failed attempt's rows: a whole chunk, deflated now
    stream.fill(0, 300)
    stream.worker.join(timeout=0.01)  # let the background deflate run
    stream.unfill(0, 300)
    with pytest.raises(ValueError, match="not filled"):
        stream.finish()
    pixels[:300] = final[:300]
    stream.fill(0, 300)
    encoded = stream.finish()
    assert encoded == pngfast.encode_png(final, level=1, threads=2)
    assert not stream.worker.is_alive()
    with Image.open(io.BytesIO(encoded)) as image:
        assert np.array_equal(np.asarray(image), final)


def test_streaming_png_keeps_no_chunk_deflated_from_rows_written_since():
    """A chunk deflated while its rows change (no unfill: the refill alone) is deflated again."""
    final = noise(400, 30, seed=5)
    pixels = np.zeros_like(final)
    stream = pngfast.StreamingPng(pixels, level=6, threads=1)
    for attempt in (255 - final, final):
        for top in range(0, 400, 100):
            pixels[top : top + 100] = attempt[top : top + 100]
            stream.fill(top, top + 100)
    assert stream.finish() == pngfast.encode_png(final, level=6, threads=1)


def test_parallel_png_gray():
    pixels = noise(50, 40)[:, :, 0]
    with Image.open(io.BytesIO(pngfast.encode_png(pixels))) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), pixels)


def test_worker_error_text_is_shown_printable_and_bounded():
    """A worker's JSON message reaches the CLI's stderr and the page: no terminal escapes, no
    screenful."""
    from coordinator.engine import error_reason

    hostile = {"error": {"code": "x", "message": "\x1b[2J\x1b]0;owned\x07" + "y" * 5000}}
    reason = error_reason(500, json.dumps(hostile).encode())
    assert reason.startswith("HTTP 500 x: ") and "\x1b" not in reason and "\x07" not in reason
    assert len(reason) <= 200
    assert error_reason(502, b"[" * 100_000) == "HTTP 502"
