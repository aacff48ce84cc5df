"""Inputs for the round-2 contract rules (tests/contract/README.md, rules 4 and 5).

Two kinds: edge inputs a worker must accept (P5 PGM, an RLE8 BMP, a 100-scan JPEG, a PNG with
a modest zTXt chunk), each with the reference RGB that any correct decoder produces; and
inputs that are valid files a permissive decoder would happily open, yet the contract refuses
(ASCII PNM, PAM, EPS, PDF, PSD, JPEG scan bombs, zTXt/iCCP/iTXt inflation bombs, truncated
RLE BMPs). They are refused by rule, not because they are broken, so a worker cannot pass by
accident of a decode error. Written by generate.py into inputs/ and listed under "rules" in
manifest.json.
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
from PIL import Image

from scripts.testkit.scan_jpeg import many_scan_jpeg

MIB = 1 << 20
SCAN_LIMIT = 100
FIXED_DATE = time.strptime("2026-11-28", "%Y-%m-%d")  # a deterministic PDF


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """`png` with one more chunk right after IHDR (ancillary chunks before IDAT are read first)."""
    return png[:33] + _chunk(kind, data) + png[33:]


def inflating(size: int) -> bytes:
    return zlib.compress(bytes(size), 9)


def ztxt(size: int) -> bytes:
    return b"Comment\x00\x00" + inflating(size)


def iccp(size: int) -> bytes:
    return b"icc\x00\x00" + inflating(size)


def itxt_compressed(size: int) -> bytes:
    return b"Comment\x00\x01\x00en\x00\x00" + inflating(size)


# ---- RLE BMP ----


def rle_bmp(
    index: np.ndarray, palette: np.ndarray, bits: int, rows: int | None = None, end_mark: bool | None = None
) -> bytes:
    """An RLE8 (bits=8) or RLE4 (bits=4) BMP of `index` (bottom-up, one run per row).

    rows=None writes every row; rows=k stops after k rows, so the data ends before the bitmap
    is complete. The end-of-bitmap mark is written when the bitmap is complete, unless
    end_mark says otherwise (an early mark: a decoder may not fill the rest in)."""
    height, width = index.shape
    data = b""
    for y in range(height - 1, height - 1 - (height if rows is None else rows), -1):
        value = int(index[y, 0])
        data += bytes([width, value if bits == 8 else (value << 4) | value]) + b"\x00\x00"
    if (rows is None) if end_mark is None else end_mark:
        data += b"\x00\x01"
    colours = len(palette)
    info = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, bits, 1 if bits == 8 else 2, len(data), 2835, 2835, colours, 0
    )
    table = b"".join(bytes([b, g, r, 0]) for r, g, b in palette.tolist())
    offset = 14 + len(info) + len(table)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + table + data


def rle_source(width: int = 17, height: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Row-constant palette indices (a run per row) and a 16-colour palette."""
    palette = np.array([(i * 16, 255 - i * 16, (i * 40) % 256) for i in range(16)], np.uint8)
    index = np.repeat((np.arange(height) % 16)[:, None], width, axis=1).astype(np.uint8)
    return index, palette


# ---- PNM family and other formats that are refused ----


def pgm(gray: np.ndarray, maxval: int) -> bytes:
    height, width = gray.shape
    dtype = ">u2" if maxval > 255 else "u1"
    return f"P5\n{width} {height}\n{maxval}\n".encode() + gray.astype(dtype).tobytes()


def ascii_pnm(rgb: np.ndarray, magic: str) -> bytes:
    height, width = rgb.shape[:2]
    if magic == "P1":
        values, head = (rgb[..., 0] < 128).astype(int), f"P1\n{width} {height}\n"
    elif magic == "P2":
        values, head = rgb[..., 0], f"P2\n{width} {height}\n255\n"
    else:
        values, head = rgb, f"P3\n{width} {height}\n255\n"
    return (head + " ".join(str(int(v)) for v in values.flatten()) + "\n").encode()


def pbm_binary(rgb: np.ndarray) -> bytes:
    height, width = rgb.shape[:2]
    bits = np.packbits(rgb[..., 0] < 128, axis=1)
    return f"P4\n{width} {height}\n".encode() + bits.tobytes()


def pam(rgb: np.ndarray) -> bytes:
    height, width = rgb.shape[:2]
    return (
        f"P7\nWIDTH {width}\nHEIGHT {height}\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n".encode()
        + rgb.astype(np.uint8).tobytes()
    )


def psd(rgb: np.ndarray) -> bytes:
    """A minimal uncompressed 8-bit RGB Photoshop file (Pillow reads PSD; it cannot write one)."""
    height, width = rgb.shape[:2]
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    planes = b"".join(rgb[..., c].astype(np.uint8).tobytes() for c in range(3))
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planes


def saved(rgb: np.ndarray, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, fmt, **params)
    return buffer.getvalue()


# ---- the table ----


def gray16_ramp(shape: tuple[int, int]) -> np.ndarray:
    """16-bit samples including 255, 256 and 32767, where v >> 8 differs from rounding v / 257."""
    ramp = (np.arange(shape[0] * shape[1], dtype=np.int64).reshape(shape) * 347) % 65536
    ramp.flat[1:5] = (255, 256, 32767, 65535)
    return ramp.astype(np.uint16)


def build_rule_vectors(photo: np.ndarray, photo_png: bytes) -> dict:
    """name -> dict(data, content_type, status, code, rule, why, reference RGB or None)."""
    gray8 = photo[..., 1]
    gray16 = gray16_ramp(gray8.shape)
    index, palette = rle_source()
    flat128 = np.full((16, 16, 3), 128, np.uint8)
    gray_rgb = np.repeat(gray8[..., None], 3, 2)
    gray16_rgb = np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, 2)

    def ok(data, content_type, rule, why, reference):
        return dict(
            data=data, content_type=content_type, status=200, code=None, rule=rule, why=why, reference=reference
        )

    def refused(data, status, code, rule, why):
        return dict(data=data, content_type="image/png", status=status, code=code, rule=rule, why=why, reference=None)

    refuse_format = "a valid file of a format outside the contract's list; sent as image/png"
    return {
        "gray8.pgm": ok(
            pgm(gray8, 255), "image/x-portable-graymap", 4, "binary PGM (P5), 8-bit: gray becomes R=G=B", gray_rgb
        ),
        "gray16.pgm": ok(
            pgm(gray16, 65535), "image/x-portable-graymap", 4, "binary PGM (P5), 16-bit: v >> 8, then R=G=B", gray16_rgb
        ),
        "rle8.bmp": ok(rle_bmp(index, palette, 8), "image/bmp", 5, "a complete RLE8 BMP", palette[index]),
        "scans100.jpg": ok(
            many_scan_jpeg(SCAN_LIMIT),
            "image/jpeg",
            5,
            "a progressive JPEG of exactly 100 scans: at the limit, accepted",
            flat128,
        ),
        "ztxt_512k.png": ok(
            png_with_chunk(photo_png, b"zTXt", ztxt(MIB // 2)),
            "image/png",
            5,
            "a zTXt chunk that inflates to 512 KiB: under the 1 MiB bound",
            photo,
        ),
        "ascii_p1.pbm": refused(ascii_pnm(photo, "P1"), 415, "unsupported_type", 4, refuse_format),
        "ascii_p2.pgm": refused(ascii_pnm(photo, "P2"), 415, "unsupported_type", 4, refuse_format),
        "ascii_p3.ppm": refused(ascii_pnm(photo, "P3"), 415, "unsupported_type", 4, refuse_format),
        "binary_p4.pbm": refused(pbm_binary(photo), 415, "unsupported_type", 4, refuse_format),
        "photo.pam": refused(pam(photo), 415, "unsupported_type", 4, refuse_format),
        "photo.eps": refused(saved(photo, "EPS"), 415, "unsupported_type", 4, refuse_format),
        "photo.pdf": refused(
            saved(photo, "PDF", creationDate=FIXED_DATE, modDate=FIXED_DATE), 415, "unsupported_type", 4, refuse_format
        ),
        "photo.psd": refused(psd(photo), 415, "unsupported_type", 4, refuse_format),
        "scans127.jpg": refused(
            many_scan_jpeg(127), 400, "bad_image", 5, "a valid progressive JPEG of 127 scans: over the 100-scan bound"
        ),
        "ztxt_bomb.png": refused(
            png_with_chunk(photo_png, b"zTXt", ztxt(2 * MIB)),
            400,
            "bad_image",
            5,
            "a zTXt chunk that inflates to 2 MiB",
        ),
        "iccp_bomb.png": refused(
            png_with_chunk(photo_png, b"iCCP", iccp(2 * MIB)),
            400,
            "bad_image",
            5,
            "an iCCP chunk that inflates to 2 MiB",
        ),
        "itxt_bomb.png": refused(
            png_with_chunk(photo_png, b"iTXt", itxt_compressed(2 * MIB)),
            400,
            "bad_image",
            5,
            "a compressed iTXt chunk that inflates to 2 MiB",
        ),
        "truncated_rle8.bmp": refused(
            rle_bmp(index, palette, 8, rows=3),
            400,
            "bad_image",
            5,
            "RLE8 data ends after 3 of 11 rows, no end-of-bitmap mark",
        ),
        "truncated_rle4.bmp": refused(
            rle_bmp(index, palette, 4, rows=3),
            400,
            "bad_image",
            5,
            "RLE4 data ends after 3 of 11 rows, no end-of-bitmap mark",
        ),
        "rle8_early_end.bmp": refused(
            rle_bmp(index, palette, 8, rows=3, end_mark=True),
            400,
            "bad_image",
            5,
            "RLE8: 3 of 11 rows, then an end-of-bitmap mark",
        ),
        "rle8_end_only.bmp": refused(
            rle_bmp(index, palette, 8, rows=0, end_mark=True),
            400,
            "bad_image",
            5,
            "RLE8 whose data is only the end-of-bitmap mark (issue 11 item 5)",
        ),
    }
