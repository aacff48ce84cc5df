"""Write the shared worker test vectors: small inputs, expected outputs and manifest.json.

    python -m tests.vectors.generate      # from the repo root; rewrites this folder

Expected pixels for grayscale/sepia/invert come from a numpy reference of the contract's
formulas applied to the source arrays below, not from either worker's code. Blur has no
closed form here: its expected output is Pillow's GaussianBlur, which the contract names.
The output is deterministic (fixed seed), so re-running it changes no committed file.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from tests.vectors.rule_vectors import build_rule_vectors

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 17, 11  # odd sizes catch row-stride and edge bugs
EXACT_TOLERANCE = 1
# Baseline 4:4:4 JPEG: no chroma upsampling, so decoders differ only by IDCT rounding.
JPEG_TOLERANCE = 6
JPEG_MEAN_TOLERANCE = 1.5


# ---- numpy reference of the contract's operations (uint8 HxWx3 in, uint8 HxWx3 out) ----


def ref_grayscale(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    lum = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
    return np.repeat(lum[..., None], 3, axis=2).astype(np.uint8)


SEPIA_PER_MILLE = ((393, 769, 189), (349, 686, 168), (272, 534, 131))


def ref_sepia(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    # integer per-mille arithmetic: "round half up" is exact, no float ties
    out = [np.clip((cr * r + cg * g + cb * b + 500) // 1000, 0, 255) for cr, cg, cb in SEPIA_PER_MILLE]
    return np.stack(out, axis=-1).astype(np.uint8)


def ref_invert(rgb: np.ndarray) -> np.ndarray:
    return (255 - rgb.astype(np.int64)).astype(np.uint8)


REFERENCE_OPS = {"grayscale": ref_grayscale, "sepia": ref_sepia, "invert": ref_invert}


# ---- source images ----


def photo_like(rng: np.random.Generator, width: int = WIDTH, height: int = HEIGHT, top: int = 255) -> np.ndarray:
    """Gradients plus noise, covering 0 and top (values rounding ties and clamps)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([x / (width - 1), y / (height - 1), 1 - (x + y) / (width + height - 2)], -1)
    noisy = base * top + rng.normal(0, top * 0.08, base.shape)
    arr = np.clip(np.rint(noisy), 0, top)
    arr[0, 0] = 0
    arr[-1, -1] = top
    arr[0, -1] = (top, top, top)
    return arr.astype(np.uint16 if top > 255 else np.uint8)


def png_bytes(arr: np.ndarray, color_type: int, bit_depth: int) -> bytes:
    """A minimal PNG writer, so 16-bit RGB (which Pillow cannot write) is possible."""
    height, width = arr.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = arr.astype(dtype).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def huge_header_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels and that has no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + crc


def tiff16_rgb_bytes(rgb16: np.ndarray) -> bytes:
    """A minimal uncompressed 16-bit RGB TIFF (little-endian, one strip): Pillow cannot write one."""
    height, width = rgb16.shape[:2]
    pixels = rgb16.astype("<u2").tobytes()
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, None),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, None),
        (277, 3, 1, 3),
        (278, 4, 1, height),
        (279, 4, 1, len(pixels)),
        (284, 3, 1, 1),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_offset = 8 + ifd_size
    pixels_offset = bits_offset + 6
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_offset, 273: pixels_offset}.get(tag, value)
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", 16, 16, 16) + pixels


def _idat_only(png: bytes) -> bytes:
    """The chunks after IHDR (pixel data and IEND) of a PNG written by Pillow."""
    return png[33:]


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def ppm_bytes(rgb: np.ndarray) -> bytes:
    height, width = rgb.shape[:2]
    return f"P6\n{width} {height}\n255\n".encode() + rgb.astype(np.uint8).tobytes()


def palette_image(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    colours = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (HEIGHT, WIDTH), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(colours.flatten().tolist() + [0] * (256 - 16) * 3)
    return image, colours[index]


def build_inputs() -> tuple[dict, dict]:
    """name -> (bytes, content type, reference RGB of what a decoder must produce)."""
    rng = np.random.default_rng(20261128)
    inputs: dict[str, tuple[bytes, str, np.ndarray | None]] = {}

    photo = photo_like(rng)
    inputs["photo.png"] = (save(Image.fromarray(photo, "RGB"), "PNG"), "image/png", photo)

    rgba = np.dstack([photo_like(rng), rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)])
    rgba[0, :, 3] = 0  # fully transparent pixels keep their colour: alpha is dropped, not composited
    inputs["rgba.png"] = (png_bytes(rgba, 6, 8), "image/png", rgba[..., :3])

    pal_image, pal_rgb = palette_image(rng)
    inputs["palette.png"] = (save(pal_image, "PNG", transparency=3), "image/png", pal_rgb)

    rgb16 = photo_like(rng, top=65535)
    inputs["rgb16.png"] = (png_bytes(rgb16, 2, 16), "image/png", (rgb16 >> 8).astype(np.uint8))

    gray16 = photo_like(rng, top=65535)[..., 0]
    gray16[0, 1:4] = (255, 256, 32767)  # values that clipping (instead of >> 8) would get wrong
    inputs["gray16.png"] = (
        png_bytes(gray16, 0, 16),
        "image/png",
        np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, 2),
    )

    gray8 = photo_like(rng)[..., 1]
    inputs["gray8.png"] = (png_bytes(gray8, 0, 8), "image/png", np.repeat(gray8[..., None], 3, 2))

    gray_alpha = np.dstack([gray8[::-1], rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)])
    inputs["gray_alpha.png"] = (png_bytes(gray_alpha, 4, 8), "image/png", np.repeat(gray_alpha[..., :1], 3, 2))

    bmp = photo_like(rng)
    inputs["photo.bmp"] = (save(Image.fromarray(bmp, "RGB"), "BMP"), "image/bmp", bmp)

    tiff = photo_like(rng)
    inputs["photo.tiff"] = (save(Image.fromarray(tiff, "RGB"), "TIFF"), "image/tiff", tiff)

    first, first_rgb = palette_image(rng)
    second, _ = palette_image(rng)
    gif = save(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0, optimize=False)
    inputs["two_frames.gif"] = (gif, "image/gif", first_rgb)

    webp = photo_like(rng)
    inputs["lossless.webp"] = (
        save(Image.fromarray(webp, "RGB"), "WEBP", lossless=True, exact=True),
        "image/webp",
        webp,
    )

    ppm = photo_like(rng)
    inputs["photo.ppm"] = (ppm_bytes(ppm), "image/x-portable-pixmap", ppm)

    ppm16 = photo_like(rng, top=65535)
    ppm16[0, 1:4] = (255, 256, 32767)  # v >> 8, not v * 255 / 65535 rounded
    inputs["rgb16.ppm"] = (
        f"P6\n{WIDTH} {HEIGHT}\n65535\n".encode() + ppm16.astype(">u2").tobytes(),
        "image/x-portable-pixmap",
        (ppm16 >> 8).astype(np.uint8),
    )

    tiff16 = photo_like(rng, top=65535)
    tiff16[0, 1:4] = (255, 256, 32767)
    inputs["rgb16.tiff"] = (tiff16_rgb_bytes(tiff16), "image/tiff", (tiff16 >> 8).astype(np.uint8))

    # EXIF orientation 6: stored 32x16, shown rotated 90 degrees clockwise as 16x32.
    # Four flat quadrants make a wrong or missing rotation fail by a wide margin.
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:8, :16] = (220, 40, 40)
    stored[:8, 16:] = (40, 200, 60)
    stored[8:, :16] = (50, 60, 210)
    stored[8:, 16:] = (235, 225, 70)
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = save(Image.fromarray(stored, "RGB"), "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    inputs["oriented6.jpg"] = (jpeg, "image/jpeg", None)  # reference filled in below

    errors = {
        "drawing.svg": (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4" '
            b'height="4"><rect width="4" height="4" fill="red"/></svg>\n',
            "image/svg+xml",
            415,
            "unsupported_type",
        ),
        "icon.ico": (
            save(Image.fromarray(photo[:8, :8], "RGB"), "ICO", sizes=[(8, 8)]),
            "image/x-icon",
            415,
            "unsupported_type",
        ),
        "truncated.png": (inputs["photo.png"][0][: len(inputs["photo.png"][0]) // 2], "image/png", 400, "bad_image"),
        "not_an_image.png": (b"hello, this is plain text and not a picture\n" * 4, "image/png", 400, "bad_image"),
        "huge_header.png": (huge_header_png(100000, 100000), "image/png", 413, "too_many_pixels"),
        # complete files whose headers claim more pixels than their data holds
        "short_rows.png": (
            png_bytes(np.vstack([photo, np.zeros((29, WIDTH, 3), np.uint8)]), 2, 8)[:33]
            + _idat_only(inputs["photo.png"][0]),
            "image/png",
            400,
            "bad_image",
        ),
        "short_scan.jpg": (
            jpeg_with_size(save(Image.fromarray(photo, "RGB"), "JPEG"), 2000, 2000),
            "image/jpeg",
            400,
            "bad_image",
        ),
    }
    # without an AVIF encoder in this Pillow, the committed file (if any) stays as it is
    with contextlib.suppress(KeyError, OSError, ValueError):
        errors["tiny.avif"] = (save(Image.fromarray(photo, "RGB"), "AVIF"), "image/avif", 415, "unsupported_type")
    return inputs, errors


def decoded_jpeg_reference(data: bytes) -> np.ndarray:
    """The JPEG's pixels as libjpeg-turbo (via Pillow) decodes them, with orientation 6 applied."""
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return np.rot90(stored, k=-1).copy()  # orientation 6 = rotate 90 degrees clockwise


def check_roundtrip(name: str, data: bytes, reference: np.ndarray) -> None:
    """The file must hold exactly the reference pixels (guards this generator, not the workers)."""
    image = Image.open(io.BytesIO(data))
    if image.mode in ("I;16", "I;16B", "I"):
        decoded = np.asarray(image).astype(np.uint32) >> 8
        decoded = np.repeat(decoded.astype(np.uint8)[..., None], 3, 2)
    else:
        decoded = np.asarray(
            image.convert("RGBA").convert("RGB") if image.mode in ("LA", "P") else image.convert("RGB")
        )
    if not np.array_equal(decoded, reference):
        raise SystemExit(f"error: {name} does not round-trip its reference pixels")


def main() -> None:
    inputs, errors = build_inputs()
    (HERE / "inputs").mkdir(exist_ok=True)
    (HERE / "expected").mkdir(exist_ok=True)
    manifest: dict = {
        "about": "Shared worker vectors; written by tests/vectors/generate.py. Compare decoded "
        "8-bit RGB pixels: max |diff| per channel <= tolerance, and mean |diff| <= "
        "mean_tolerance when given.",
        "inputs": {},
        "cases": [],
        "errors": [],
    }
    for name, (data, content_type, reference) in inputs.items():
        (HERE / "inputs" / name).write_bytes(data)
        lossy = name.endswith(".jpg")
        if lossy:
            reference = decoded_jpeg_reference(data)
        elif name != "rgb16.ppm":  # Pillow reads 16-bit PPM as round(v / 257), not v >> 8
            check_roundtrip(name, data, reference)
        height, width = reference.shape[:2]
        manifest["inputs"][name] = {"content_type": content_type, "width": width, "height": height, "lossy": lossy}
        for op, func in REFERENCE_OPS.items():
            expected_name = f"{name.replace('.', '_')}-{op}.png"
            Image.fromarray(func(reference), "RGB").save(HERE / "expected" / expected_name)
            case = {
                "input": name,
                "op": op,
                "params": {},
                "expected": f"expected/{expected_name}",
                "tolerance": EXACT_TOLERANCE,
            }
            if lossy:
                case.update(
                    tolerance=JPEG_TOLERANCE,
                    mean_tolerance=JPEG_MEAN_TOLERANCE,
                    why="JPEG decoders may round the IDCT differently; the quadrants "
                    "still catch a wrong orientation by >100 levels",
                )
            manifest["cases"].append(case)
    photo = np.asarray(Image.open(HERE / "inputs" / "photo.png").convert("RGB"))
    for radius in (2, 0.7, 6):
        blurred = Image.fromarray(photo, "RGB").filter(ImageFilter.GaussianBlur(radius))
        expected_name = f"photo_png-blur-r{str(radius).replace('.', '_')}.png"
        blurred.save(HERE / "expected" / expected_name)
        params = {} if radius == 2 else {"radius": radius}
        manifest["cases"].append(
            {
                "input": "photo.png",
                "op": "blur",
                "params": params,
                "expected": f"expected/{expected_name}",
                "tolerance": EXACT_TOLERANCE,
                "why": "expected = Pillow ImageFilter.GaussianBlur, the contract's definition",
            }
        )
    for name, (data, content_type, status, code) in errors.items():
        (HERE / "inputs" / name).write_bytes(data)
        manifest["errors"].append({"input": name, "content_type": content_type, "status": status, "code": code})
    manifest["rules"] = write_rule_vectors(photo, (HERE / "inputs" / "photo.png").read_bytes())
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(
        f"wrote {len(manifest['inputs'])} inputs, {len(manifest['cases'])} cases, "
        f"{len(manifest['errors'])} error inputs, {len(manifest['rules'])} rule inputs to {HERE}"
    )


def write_rule_vectors(photo: np.ndarray, photo_png: bytes) -> list:
    """The round-2 rule inputs (rule_vectors.py); accepted ones get their expected invert output."""
    entries = []
    for name, vector in build_rule_vectors(photo, photo_png).items():
        (HERE / "inputs" / name).write_bytes(vector["data"])
        entry = {
            "input": name,
            "content_type": vector["content_type"],
            "status": vector["status"],
            "code": vector["code"],
            "rule": vector["rule"],
            "why": vector["why"],
        }
        if vector["reference"] is not None:
            expected_name = f"{name.replace('.', '_')}-invert.png"
            Image.fromarray(ref_invert(vector["reference"]), "RGB").save(HERE / "expected" / expected_name)
            entry["expected"] = {"invert": f"expected/{expected_name}"}
        entries.append(entry)
    return entries


if __name__ == "__main__":
    main()
