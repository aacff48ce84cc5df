"""Pure image logic: decode input, PPM strips, stitch, encode output. No I/O, no config."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from coordinator import pngfast
from coordinator.errors import InputError

OUTPUT_FORMATS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".bmp": "bmp",
    ".ppm": "ppm",
}
ALPHA_FORMATS = ("png", "webp", "tiff")  # the others get the result flattened onto white
# Largest width or height a format can store: WebP keeps 14 bits per side, JPEG 16.
MAX_SIDE = {"webp": 16383, "jpeg": 65535}
ORIENTATION_TAG = 0x0112
# The worker contract's input formats; Image.open tries no other plugin (an EPS named .png must
# never reach Ghostscript). Replies come back as PPM (read by decode_ppm), PNG, JPEG or WebP.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM")
REPLY_FORMATS = ("PNG", "JPEG", "WEBP")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# One whitespace byte ends the header; workers write no comments.
PPM_HEADER = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+(\d+)\s")


def decode_pixels(data: bytes, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 of the input; checks the pixel count from the header before decoding."""
    return to_rgb_array(load_image(data, max_pixels))


def decode_with_alpha(data: bytes, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 colour for the workers and (H, W) uint8 alpha beside it; alpha is None
    when the input has none or is opaque everywhere."""
    image = load_image(data, max_pixels)
    return to_rgb_array(image), alpha_of(image)


def load_image(data: bytes, max_pixels: int) -> Image.Image:
    """The decoded input, EXIF orientation applied; InputError for anything we cannot use."""
    if not data:
        raise InputError("input is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            count = found.group(1) if found else "far more"
            raise InputError(
                f"image has {count} pixels, over the limit of {max_pixels} (COORDINATOR_MAX_PIXELS)"
            ) from None
        except UnidentifiedImageError:
            raise InputError(f"input is not an image ({len(data)} bytes of an unknown format)") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"input is not a readable image: {exc}") from None
        width, height = image.size
        if width * height > max_pixels:
            raise InputError(
                f"image is {width}x{height} = {width * height} pixels, "
                f"over the limit of {max_pixels} (COORDINATOR_MAX_PIXELS)"
            )
        if width == 0 or height == 0:
            raise InputError(f"image is {width}x{height}: it has no pixels")
        try:
            image.load()
            # unreadable EXIF: keep the stored orientation, as the workers do
            with contextlib.suppress(OSError, ValueError, SyntaxError, EOFError, KeyError):
                image = ImageOps.exif_transpose(image)
            return image
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InputError(f"image is truncated or corrupt ({image.format}): {exc}") from None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """8-bit RGB as the worker contract says: alpha dropped, 16-bit scaled by >> 8, gray expanded."""
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, 65535)
        return np.repeat((wide >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    if image.mode in ("1", "L", "LA", "La", "F"):
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def alpha_of(image: Image.Image) -> np.ndarray | None:
    """(H, W) uint8 alpha of a decoded image, or None when it has none or is fully opaque."""
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return None
    alpha = np.asarray(image.getchannel("A") if "A" in image.getbands() else image.convert("RGBA").getchannel("A"))
    return None if alpha.min() == 255 else alpha


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as displayed (EXIF orientation applied), read from the header without
    decoding; None when the header is unreadable (decoding then says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=INPUT_FORMATS) as image:
            width, height = image.size
            try:
                turned = image.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8)
            except (OSError, ValueError, SyntaxError, EOFError, KeyError):
                turned = False
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    return (height, width) if turned else (width, height)


def check_output_size(fmt: str, width: int, height: int) -> None:
    """InputError when `fmt` cannot store a width x height image; call it before any work."""
    limit = MAX_SIDE.get(fmt)
    if limit is not None and max(width, height) > limit:
        raise InputError(
            f"{fmt.upper()} stores at most {limit:,} pixels a side, and the image is "
            f"{width:,}x{height:,}; choose PNG or TIFF"
        )


def with_alpha(pixels: np.ndarray, alpha: np.ndarray | None, strips, radius: float | None = None) -> np.ndarray:
    """The workers' (H, W, 3) result with the input's alpha put back as (H, W, 4); unchanged
    when alpha is None. The ops change colour only; on rows of blur strips the alpha is blurred
    with the same Pillow GaussianBlur, so edges fade with the colour. `strips`: objects with
    .top, .bottom, .op (the engine's JobResult.strips)."""
    if alpha is None:
        return pixels
    blurred = None
    out = alpha.copy()
    for strip in strips:
        if strip.op == "blur":
            if blurred is None:
                blurred = np.asarray(Image.fromarray(alpha).filter(ImageFilter.GaussianBlur(radius)))
            out[strip.top : strip.bottom] = blurred[strip.top : strip.bottom]
    return np.dstack((pixels, out))


def flatten_on_white(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) of (H, W, 4): each pixel composited over white, rounded."""
    alpha = pixels[:, :, 3:].astype(np.uint32)
    colour = pixels[:, :, :3].astype(np.uint32)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def encode_ppm(rows: np.ndarray) -> bytes:
    """Binary PPM (P6) of (H, W, 3) uint8 rows: the raw wire format."""
    height, width, _ = rows.shape
    header = b"P6\n%d %d\n255\n" % (width, height)
    # join copies the pixels once, straight from the array (tobytes() + concat would copy twice)
    return b"".join([header, memoryview(np.ascontiguousarray(rows)).cast("B")])


def decode_ppm(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 from binary PPM; ValueError when it is not one."""
    header = PPM_HEADER.match(data)
    if header is None:
        raise ValueError(f"not a binary PPM (starts {bytes(data[:12])!r})")
    width, height, maxval = (int(value) for value in header.groups())
    if maxval != 255:
        raise ValueError(f"PPM maxval is {maxval}, expected 255")
    expected = width * height * 3
    if len(data) - header.end() != expected:
        raise ValueError(f"PPM body is {len(data) - header.end()} bytes, expected {expected} for {width}x{height}")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header.end()).reshape(height, width, 3)


def decode_any(data: bytes, expected_size: tuple[int, int] | None = None, gray_ok: bool = False) -> np.ndarray:
    """A worker's reply in any format it may send, as (H, W, 3) uint8, or (H, W) for an 8-bit
    gray reply when gray_ok (we asked for channels=auto); raises ValueError.
    With expected_size (width, height), a reply declaring another size is refused before its
    pixels are decoded (a lying header must not make us allocate gigabytes)."""
    if data[:2] == b"P6":
        return decode_ppm(data)
    try:
        with Image.open(io.BytesIO(data), formats=REPLY_FORMATS) as image:
            if expected_size is not None and image.size != tuple(expected_size):
                width, height = image.size
                raise ValueError(f"reply declares {width}x{height}, expected {expected_size[0]}x{expected_size[1]}")
            if image.mode not in (("RGB", "L") if gray_ok else ("RGB",)):
                raise ValueError(f"reply is mode {image.mode}, expected {'RGB or L' if gray_ok else 'RGB'}")
            image.load()
            return np.asarray(image)
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"reply is not a readable image: {exc}") from None


def encode_strip(rows: np.ndarray, wire: str, png_level: int = 1) -> tuple[bytes, str]:
    """Request body and Content-Type for one strip in the chosen wire format."""
    if wire == "raw":
        return encode_ppm(rows), "image/x-portable-pixmap"
    if wire == "png":
        return pngfast.encode_png(rows, level=png_level, threads=1), "image/png"
    if wire == "webp-lossless":
        buffer = io.BytesIO()
        Image.fromarray(rows).save(buffer, "WEBP", lossless=True, quality=0, method=0)
        return buffer.getvalue(), "image/webp"
    raise ValueError(f"unknown wire format {wire!r}")


def format_for_path(path: str | Path) -> str:
    """Output format from the file extension; InputError for one we do not write."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        known = ", ".join(OUTPUT_FORMATS)
        raise InputError(f"cannot write {suffix or 'a file without extension'} ({Path(path).name}); use one of {known}")
    return OUTPUT_FORMATS[suffix]


def encode_output(image: Image.Image | np.ndarray, fmt: str, quality: int = 90, png_level: int = 2) -> bytes:
    """Bytes of the result, (H, W, 3) or (H, W, 4) with alpha; a format without alpha
    (ALPHA_FORMATS lists those with) gets it flattened onto white. PNG uses the parallel encoder."""
    if isinstance(image, np.ndarray):
        pixels = image
    else:
        pixels = np.asarray(image if image.mode in ("RGB", "RGBA") else image.convert("RGB"))
    if pixels.ndim == 3 and pixels.shape[2] == 4 and fmt not in ALPHA_FORMATS:
        pixels = flatten_on_white(pixels)
    if fmt == "png":
        return pngfast.encode_png(pixels, level=png_level)
    if not 1 <= quality <= 100:
        raise InputError(f"quality {quality} is out of range 1..100")
    buffer = io.BytesIO()
    picture = Image.fromarray(pixels)
    if fmt == "jpeg":
        picture.save(buffer, "JPEG", quality=quality)
    elif fmt == "webp":
        picture.save(buffer, "WEBP", quality=quality)
    elif fmt == "tiff":
        picture.save(buffer, "TIFF", compression="tiff_deflate")
    elif fmt == "bmp":
        picture.save(buffer, "BMP")
    elif fmt == "ppm":
        picture.save(buffer, "PPM")
    else:
        raise InputError(f"unknown output format {fmt!r}")
    return buffer.getvalue()
