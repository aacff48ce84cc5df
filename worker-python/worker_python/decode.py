"""Decoding: accepted bytes to 8-bit RGB, EXIF orientation applied, first frame only, with the
pixel limit checked from the header before any pixel is decoded and a deadline on the decode.
Pure: bytes in, images out; raises only ImageError subclasses (errors.py)."""

from __future__ import annotations

import contextlib
import io
import re
import struct
import time
import zlib

from PIL import Image, ImageOps

from worker_python.errors import BadImage, TooManyPixels, UnsupportedFormat
from worker_python.sniff import (
    ACCEPTED_PILLOW_FORMATS,
    check_jpeg_scan_count,
    check_jpeg_scan_length,
    check_pixels,
    check_png_data_length,
    declared_size,
    sniff_format,
)

DECODE_SECONDS = 30.0  # a backstop: the worst accepted input (49 MP, 100 scans) takes ~3.5 s

# Pillow raises these for corrupt or truncated files, from its parsers and C decoders.
DECODER_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    zlib.error,
    Image.DecompressionBombWarning,
)


class _DeadlineBytes(io.BytesIO):
    """The input as Pillow reads it while decoding: once armed, no more bytes after the
    deadline. Pillow feeds its decoders 64 KiB at a time, so a decode that has run too long
    stops at its next read (decoders that read the file themselves, like libtiff, are not
    bounded this way; the pixel limit and the JPEG scan cap bound their work)."""

    deadline: float | None = None

    def read(self, size: int | None = -1, /) -> bytes:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BadImage(f"decoding took longer than {DECODE_SECONDS:g} s; refused")
        return super().read(size)


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse more than max_pixels before any pixel is decoded."""
    fmt = sniff_format(data)
    if fmt not in ACCEPTED_PILLOW_FORMATS:  # a sniffing bug must not reach another decoder
        raise UnsupportedFormat(f"{fmt} images are not accepted")
    size = declared_size(data, fmt)
    if size:
        check_pixels(*size, max_pixels)
    try:
        image = Image.open(_DeadlineBytes(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"image declares too many pixels ({exc})") from None
    except Image.UnidentifiedImageError:
        raise BadImage(f"not a readable {fmt} file") from None
    except DECODER_ERRORS as exc:
        raise BadImage(f"cannot read the {fmt} header: {_one_line(exc)}") from None
    width, height = image.size
    check_pixels(width, height, max_pixels)
    if width < 1 or height < 1:
        raise BadImage(f"image has no pixels ({width}x{height})")
    return image


_PPM16_HEADER = re.compile(
    rb"P6(?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+65535\s"
)  # P5: Pillow's mode I, to_rgb


def _ppm16_high_bytes(data: bytes) -> Image.Image | None:
    """A 16-bit (maxval 65535) PPM as 8-bit RGB by v >> 8, as the contract says for 16-bit
    samples; Pillow would scale by round(v / 257). None for any other PPM."""
    header = _PPM16_HEADER.match(data[:1024])
    if not header:
        return None
    width, height = int(header[1]), int(header[2])
    samples = data[header.end() : header.end() + width * height * 6]
    if len(samples) < width * height * 6:
        raise BadImage("cannot decode PPM: image file is truncated")
    return Image.frombytes("RGB", (width, height), samples[0::2])  # big-endian: high byte first


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Any accepted input as 8-bit RGB, EXIF orientation applied, first frame only."""
    return load_rgb(open_checked(data, max_pixels), data)


def load_rgb(image: Image.Image, data: bytes, seconds: float = DECODE_SECONDS) -> Image.Image:
    """The pixels of an image from open_checked(data), as decode() returns them; BadImage if
    decoding runs past `seconds` (checked between Pillow's reads)."""
    if isinstance(image.fp, _DeadlineBytes):
        image.fp.deadline = time.monotonic() + seconds
    if image.format == "PPM":
        high = _ppm16_high_bytes(data)
        if high is not None:
            return high
    try:
        if image.format == "JPEG":
            check_jpeg_scan_count(data)
            check_jpeg_scan_length(data)
        image.load()
        if image.format == "PNG":
            check_png_data_length(data, image)
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(_one_line(exc)) from None
    except DECODER_ERRORS as exc:
        raise BadImage(f"cannot decode {image.format}: {_one_line(exc)}") from None
    # unreadable EXIF: keep the stored orientation rather than refuse the picture
    with contextlib.suppress(DECODER_ERRORS):
        ImageOps.exif_transpose(image, in_place=True)
    try:
        return to_rgb(image)
    except DECODER_ERRORS as exc:
        raise BadImage(f"cannot convert {image.mode} pixels: {_one_line(exc)}") from None


_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: alpha dropped (not composited), 16-bit scaled by v >> 8, gray expanded."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "I":
        image, mode = image.convert("I;16"), "I;16"  # clamps to 0..65535
    if mode in _GRAY16_MODES:
        # the high byte of each big-endian sample is exactly v >> 8 (convert("L") would clip)
        high = image.tobytes("raw", "I;16B")[0::2]
        return Image.frombytes("L", image.size, high).convert("RGB")
    if mode in ("1", "L", "LA", "La", "F"):
        return image.convert("L").convert("RGB")
    if mode in ("P", "PA"):
        image.info.pop("transparency", None)  # dropped anyway; avoids Pillow's RGBA warning
        return image.convert("RGBA").convert("RGB") if mode == "PA" else image.convert("RGB")
    return image.convert("RGB")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
