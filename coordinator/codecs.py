"""Transport codecs: how a strip travels to a worker and how its result comes back.

Pure bytes in, bytes out (jpegtran runs as a filter on bytes). The choices and the numbers
behind them are in coordinator/README.md ("Wire formats") and `python -m scripts.bench_wan`.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

# `high`: JPEG q95 replies (the workers encode 4:2:0, so chroma sets the error). Measured per
# image from both runtimes: sepia 46.7-48.9 dB, invert 49-52, grayscale 55-56; a single thin
# strip of noisy saturated colour can dip to ~44. Promise (and test): >= HIGH_PSNR_DB per image.
HIGH_QUALITY = 95
HIGH_PSNR_DB = 45.0
# Lossless replies, per runtime and op, by measured bytes and CPU on a 4000x1500 photo strip
# (coordinator/README.md, "Wire formats"). WebP lossless at its fastest (method/effort 0 via
# compression=0, quality 1) subtracts green and codes the rest, which PNG cannot: sepia is
# nearly rank-one, so it falls from 6.0-7.3 MB (PNG) to 5.2 MB and invert from 6.4-9.7 to 4.2,
# for less CPU than PNG on worker-python and ~0.25 s more on sharp (hidden while the previous
# piece downloads). A grayscale strip stays a 1-channel PNG (2.4-2.7 MB; WebP's fastest is 3.9).
# Blur (never split, so its encode is not hidden): PNG 6, 1.4 MB (Z_RLE) / 2.2 MB (sharp), where
# WebP saves <= 0.65 MB (0.1 s at 50 Mbit/s) for ~0.16 s more CPU. worker-python's gray PNG is
# Z_RLE at levels 1-6, all the same size, so 1.
WEBP_LOSSLESS_FAST = {"format": "webp", "lossless": "true", "quality": "1", "compression": "0"}
WEBP_MAX_SIDE = 16383  # a larger strip or piece comes back as PNG
LOSSLESS_REPLY = {
    "python": {"grayscale": ("png", 1), "blur": ("png", 6)},
    "nodejs": {"grayscale": ("png", 6), "blur": ("png", 6)},
}
ORIENTATION_TAG = 0x0112
JPEGTRAN_TIMEOUT_SECONDS = 30


def reply_query(
    wire: str, quality: str, runtime: str | None, op: str = "", size: tuple[int, int] = (0, 0)
) -> dict[str, str]:
    """Query parameters that pick the worker's reply format for a strip of `op` and `size`
    (width, rows). Lossless PNG replies ask for channels=auto: a grayscale strip then comes
    back as one channel, a third of the bytes."""
    if quality == "high":
        return {"format": "jpeg", "quality": str(HIGH_QUALITY)}
    if wire == "raw":
        return {"format": "raw"}
    codec, level = LOSSLESS_REPLY.get(runtime or "", {}).get(op, ("webp", 0))
    if wire == "webp-lossless":
        codec = "webp"
    if codec == "webp" and max(size) <= WEBP_MAX_SIDE:
        return dict(WEBP_LOSSLESS_FAST)
    return {"format": "png", "compression": str(level or 6), "channels": "auto"}


@dataclass(frozen=True)
class JpegSource:
    """A JPEG whose rows can be cut out losslessly (no re-encode) for the workers."""

    data: bytes
    width: int
    height: int
    mcu_rows: int  # rows per iMCU: 8 * the largest vertical sampling factor
    jpegtran: str


def jpegtran_path() -> str | None:
    return shutil.which("jpegtran")


def jpeg_source(data: bytes) -> JpegSource | None:
    """The input as a JpegSource when a lossless row cut decodes to the same pixels as the
    whole image: 8-bit YCbCr or gray JPEG, upright (EXIF orientation 1), jpegtran present."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    jpegtran = jpegtran_path()
    if jpegtran is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
                if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                    return None  # CMYK / YCCK: the workers convert, a cut would not help
                if image.getexif().get(ORIENTATION_TAG, 1) != 1:
                    return None  # rows of the file are not rows of the upright image
                vertical = max((layer[2] for layer in getattr(image, "layer", [])), default=1)
                return JpegSource(data, image.width, image.height, 8 * vertical, jpegtran)
        except Exception:  # anything odd: fall back to a lossless re-encode
            return None


def jpeg_rows(source: JpegSource, top: int, bottom: int) -> tuple[bytes, int, int]:
    """A JPEG of rows [cut_top, cut_bottom) that covers [top, bottom), cut at iMCU rows with
    two spare rows each side: chroma upsampling reads the neighbouring chroma row, so the
    covered rows decode exactly as in the whole image. Returns (jpeg, cut_top, cut_bottom).
    Raises ValueError when jpegtran fails."""
    mcu = source.mcu_rows
    cut_top = max(0, (top - 2) // mcu * mcu)
    cut_bottom = min(source.height, -(-(bottom + 2) // mcu) * mcu)
    if cut_top == 0 and cut_bottom == source.height:
        return source.data, 0, source.height
    try:
        done = subprocess.run(
            [source.jpegtran, "-crop", f"{source.width}x{cut_bottom - cut_top}+0+{cut_top}", "-copy", "none"],
            input=source.data,
            capture_output=True,
            timeout=JPEGTRAN_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"jpegtran failed: {exc}") from None
    if done.returncode != 0 or not done.stdout:
        raise ValueError(f"jpegtran failed: {done.stderr.decode(errors='replace').strip()[:200]}")
    return done.stdout, cut_top, cut_bottom


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images; inf when identical."""
    error = np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))
