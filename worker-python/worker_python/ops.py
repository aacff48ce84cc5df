"""The operations on decoded RGB images: grayscale, sepia, invert and blur (Pillow's
GaussianBlur, the contract's definition), in place a band of rows at a time when asked, so a
request holds one full-size image. Pure: images in, images out."""

from __future__ import annotations

import math

from PIL import Image, ImageFilter, ImageOps

OPERATIONS = ("grayscale", "sepia", "invert", "blur")
PRIMARY_OP = "grayscale"  # applied when a request names no op
DEFAULT_RADIUS = 2.0
MAX_RADIUS = 50.0
CHANNELS = ("3", "auto")
BAND_BYTES = 4 << 20  # ops run in place, a band of rows at a time: one full-size image per request

# Pillow's convert(matrix) computes in float32 and truncates v + 0.5, which turns 4,329 of
# the 16.7M RGB colours' exact ties (x.5) into round-down. The 0.0004 offset makes every
# colour round half up like the contract's integer formula; the nearest non-tie is 0.001
# away (the coefficients are per mille) and float32 error is < 0.0001. Checked exhaustively.
_SEPIA_OFFSET = 0.0004
SEPIA_MATRIX = (
    0.393,
    0.769,
    0.189,
    _SEPIA_OFFSET,
    0.349,
    0.686,
    0.168,
    _SEPIA_OFFSET,
    0.272,
    0.534,
    0.131,
    _SEPIA_OFFSET,
)


def grayscale(image: Image.Image, one_channel: bool = False) -> Image.Image:
    gray = image.convert("L")
    return gray if one_channel else gray.convert("RGB")


def sepia(image: Image.Image) -> Image.Image:
    return image.convert("RGB", SEPIA_MATRIX)


def invert(image: Image.Image) -> Image.Image:
    return ImageOps.invert(image)


def blur(image: Image.Image, radius: float = DEFAULT_RADIUS) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def gray_reply(op: str, fmt: str, channels: str) -> bool:
    """True when the reply is 1-channel 8-bit gray: asked for with channels=auto, the op's
    result is gray by definition, and the format stores gray (PNG; raw stays P6, JPEG and
    WebP stay 3-channel)."""
    return channels == "auto" and op == "grayscale" and fmt == "png"


def apply(
    op: str, image: Image.Image, radius: float = DEFAULT_RADIUS, one_channel: bool = False, in_place: bool = False
) -> Image.Image:
    """The op's result: RGB, or mode L when one_channel and the op is grayscale.

    in_place: write an RGB result over `image`, a band of rows at a time, so a request holds
    one full-size image instead of two (50 MP: 150 MB less). Same pixels either way."""
    if in_place and image.mode == "RGB" and not (op == "grayscale" and one_channel):
        if op == "blur":
            return blur_in_place(image, radius)
        if op in _PER_PIXEL:
            return _in_bands(image, _PER_PIXEL[op])
    if op == "grayscale":
        return grayscale(image, one_channel)
    if op == "sepia":
        return sepia(image)
    if op == "invert":
        return invert(image)
    if op == "blur":
        return blur(image, radius)
    raise ValueError(f"unknown op {op!r}")


_PER_PIXEL = {"grayscale": grayscale, "sepia": sepia, "invert": invert}


def band_rows(width: int, at_least: int = 1) -> int:
    return max(at_least, BAND_BYTES // (3 * width))


def _in_bands(image: Image.Image, op) -> Image.Image:
    width, height = image.size
    rows = band_rows(width)
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        image.paste(op(image.crop(box)), box)
    return image


def blur_halo(radius: float) -> int:
    """Rows of neighbours a band needs on each side to blur exactly like the whole image:
    three box passes, each reaching at most 2 * radius + 1 rows (a generous bound)."""
    return 3 * (math.ceil(2 * radius) + 2)


def blur_in_place(image: Image.Image, radius: float) -> Image.Image:
    """GaussianBlur band by band, over `image`. A band's neighbours above were already
    overwritten, so their original rows are kept aside before each paste."""
    width, height = image.size
    halo = blur_halo(radius)
    rows = band_rows(width, 4 * halo)
    above = Image.new("RGB", (width, 0))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        below = image.crop((0, top, width, min(height, bottom + halo)))
        source = Image.new("RGB", (width, above.height + below.height))
        source.paste(above, (0, 0))
        source.paste(below, (0, above.height))
        result = blur(source, radius).crop((0, above.height, width, above.height + bottom - top))
        above = image.crop((0, max(0, bottom - halo), width, bottom))
        image.paste(result, (0, top))
    return image
