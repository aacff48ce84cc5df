"""Encoding a result image as the reply: PNG (zlib strategy by channel count and level, as
measured), JPEG, WebP, or raw binary PPM streamed in bands. Pure: images in, bytes out."""

from __future__ import annotations

import io
import zlib

from PIL import Image

from worker_python.errors import CannotEncode

FORMATS = ("png", "jpeg", "webp", "raw")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "raw": "image/x-portable-pixmap"}
# zlib strategy for PNG replies, measured on a 4000x1500 photo-like strip (README, Performance).
# 1-channel gray: Z_RLE is smaller *and* faster than the default strategy at levels 1-6
# (2.43 MB / ~0.2 s vs 2.74 MB / 1.2 s at level 6). RGB: the default strategy is smaller at
# every level and as fast at 1-2 (gray as RGB, level 2: 4.44 MB vs 6.33 MB); at 3-6 it costs
# 1.5-4x the CPU, so Z_RLE stays there (the default level 6 keeps its speed). 7-9: the full
# deflate search for whoever asks for the smallest file and accepts the time.
PNG_RLE_LEVELS_GRAY = range(1, 7)
PNG_RLE_LEVELS_RGB = range(3, 7)
WEBP_MAX_SIDE = 16383
# `compression` 0-9 also sets WebP's effort (libwebp's method 0-6) as compression * 2 // 3, so
# the default 6 keeps libwebp's default 4. Lossless at method 0 and quality 1 (for lossless,
# quality is effort too) is what the coordinator asks for over a slow link: a 4000x1500 sepia
# strip is 5.2 MB in ~0.35 s CPU, where PNG level 1 is 7.3 MB in ~0.45 s (coordinator/README.md).
JPEG_MAX_SIDE = 65535
# Raw replies go out in pieces this small so that each piece's buffer comes from malloc's heap and
# is reused: a piece above the mmap threshold (1 MiB, server.tune_malloc; 128 KiB from the
# environment) is fresh pages every time, and 4 MiB pieces cost 6 MP ~4400 page faults, 10-13 ms
# of a 3 ms pack (scripts/README.md, per strip). 64 KiB: ~290 sendall calls for 6 MP, no faults.
RAW_PIECE_BYTES = 64 << 10


def encode(
    image: Image.Image, fmt: str = "png", quality: int = 90, lossless: bool = False, compression: int = 6
) -> bytes:
    width, height = image.size
    if image.mode == "L" and fmt != "png":
        image = image.convert("RGB")  # only PNG replies carry one channel (gray_reply)
    if fmt == "raw":
        return b"".join(raw_chunks(image))
    limit = {"webp": WEBP_MAX_SIDE, "jpeg": JPEG_MAX_SIDE}.get(fmt)
    if limit and max(width, height) > limit:
        raise CannotEncode(f"format={fmt} cannot hold a {width}x{height} image (at most {limit} per side)")
    buffer = io.BytesIO()
    if fmt == "png":
        rle_levels = PNG_RLE_LEVELS_GRAY if image.mode == "L" else PNG_RLE_LEVELS_RGB
        strategy = zlib.Z_RLE if compression in rle_levels else zlib.Z_DEFAULT_STRATEGY
        image.save(buffer, "PNG", compress_level=compression, compress_type=strategy)
    elif fmt == "jpeg":
        image.save(buffer, "JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, lossless=lossless, method=webp_method(compression))
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buffer.getvalue()


def webp_method(compression: int) -> int:
    return compression * 2 // 3


def raw_header(image: Image.Image) -> bytes:
    return b"P6\n%d %d\n255\n" % image.size


def raw_length(image: Image.Image) -> int:
    return len(raw_header(image)) + image.width * image.height * 3


def raw_chunks(image: Image.Image):
    """Binary PPM in pieces of about RAW_PIECE_BYTES, so a 150 MB reply is never one more copy.
    Pillow's raw encoder writes each piece straight from the image: one copy per byte, where
    crop + tobytes made two (6 MP: 20 ms instead of 34)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    yield raw_header(image)
    encoder = Image._getencoder("RGB", "raw", "RGB")  # what Image.tobytes uses, a piece at a time
    try:
        encoder.setimage(image.im, (0, 0, *image.size))
        while True:
            _, status, data = encoder.encode(max(RAW_PIECE_BYTES, image.width * 3))  # whole rows
            if status < 0:
                raise RuntimeError(f"raw encoder error {status}")
            yield data
            if status:
                break
    finally:
        encoder.cleanup()
