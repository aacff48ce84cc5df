"""Images for tests and benches: samples, encoders, and the contract's reference formulas."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def sample_rgb(width: int, height: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    return encoded(image, "PNG")


def expected_pixels(image, op: str) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if op == "grayscale":
        gray = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
        out = np.stack([gray, gray, gray], axis=-1)
    elif op == "sepia":

        def channel(kr, kg, kb):
            return np.floor(kr * r + kg * g + kb * b + 0.5)

        out = np.stack(
            [channel(0.393, 0.769, 0.189), channel(0.349, 0.686, 0.168), channel(0.272, 0.534, 0.131)], axis=-1
        )
    elif op == "invert":
        out = 255 - rgb
    else:
        raise ValueError(f"no reference for op {op!r}")
    return np.clip(out, 0, 255).astype(np.uint8)


def max_pixel_diff(image, expected: np.ndarray) -> int:
    got = np.asarray(image.convert("RGB"), dtype=np.int16)
    if got.shape != expected.shape:
        return 999
    return int(np.abs(got - expected.astype(np.int16)).max())


def encoded(image: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    """The image in a Pillow format ("PNG", "JPEG", ...), or "PPM" as binary P6 bytes."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    if fmt.upper() == "PPM":
        rgb = image.convert("RGB")
        return f"P6\n{rgb.width} {rgb.height}\n255\n".encode() + rgb.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int = 12, noise: float = 4, random_phase: bool = False) -> np.ndarray:
    """Photo-like RGB pixels: smooth colour gradients, soft shapes, sensor-like noise; compresses
    like a photo, which the benches' figures depend on. random_phase: the seed moves the scene."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 3, 3).astype(np.float32) if random_phase else np.float32([0, 0, 1])
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    red = 120 + 80 * np.sin(5 * x + 2 * y + phase[0]) * np.cos(3 * y)
    green = 110 + 70 * np.cos(4 * y - 3 * x + phase[1]) + 30 * ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.04)
    blue = 100 + 60 * np.sin(8 * x * y + phase[2]) - 40 * (np.abs(x - y) < 0.05)
    pixels = np.stack([red, green, blue], axis=-1)
    pixels += rng.normal(0, noise, pixels.shape).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def colourful_image(width: int, height: int) -> Image.Image:
    """Three crossing gradients: every pixel differs, so a wrong strip shows."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, 255 - (x + y) * 255 // (width + height)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def solid_png(width: int, height: int, colour: tuple[int, int, int] = (10, 120, 240)) -> bytes:
    """A one-colour RGB PNG: the smallest valid request body for a worker."""
    return png_bytes(Image.new("RGB", (width, height), colour))
