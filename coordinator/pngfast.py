"""A PNG encoder that uses every core: the pigz technique for one zlib stream.

Rows are filtered with numpy and split into chunks; each chunk is raw-deflated in its own
thread (zlib releases the GIL), ending with a sync flush so the pieces concatenate into one
valid deflate stream; the last chunk finishes it. The zlib header, the pieces and the adler32
of the whole filtered stream (combined from per-chunk sums) go into IDAT chunks.
Pure: array in, bytes out.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib

import numpy as np

try:  # zlib-ng: same stream format, several times faster at low levels
    from zlib_ng import zlib_ng as deflate_lib
except ImportError:  # pragma: no cover - exercised only where zlib-ng is not installed
    deflate_lib = zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTERS = {"none": 0, "sub": 1, "up": 2}
ADLER_BASE = 65521
IDAT_MAX = 1 << 22
CHUNK_TARGET_BYTES = 1 << 21


def adler32_combine(adler1: int, adler2: int, length2: int) -> int:
    """adler32 of A+B from adler32(A), adler32(B) and len(B) (as zlib's adler32_combine)."""
    low1, high1 = adler1 & 0xFFFF, adler1 >> 16
    low2, high2 = adler2 & 0xFFFF, adler2 >> 16
    low = (low1 + low2 - 1) % ADLER_BASE
    high = (high1 + high2 + length2 * (low1 - 1)) % ADLER_BASE
    return (high << 16) | low


def filter_rows(pixels: np.ndarray, start: int, stop: int, kind: int) -> np.ndarray:
    """PNG-filtered scanlines start..stop of an (H, W, C) uint8 array, filter byte first."""
    height, width, channels = pixels.shape
    flat = pixels.reshape(height, width * channels)
    rows = flat[start:stop]
    out = np.empty((stop - start, width * channels + 1), dtype=np.uint8)
    out[:, 0] = kind
    if kind == 0:
        out[:, 1:] = rows
    elif kind == 1:  # Sub: byte minus the same channel of the pixel to its left
        out[:, 1 : channels + 1] = rows[:, :channels]
        np.subtract(rows[:, channels:], rows[:, :-channels], out=out[:, channels + 1 :])
    elif kind == 2:  # Up: byte minus the byte above (row 0 of the image has none)
        above = flat[start - 1 : stop - 1] if start > 0 else None
        if above is None:
            out[0, 1:] = rows[0]
            np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
        else:
            np.subtract(rows, above, out=out[:, 1:])
    else:
        raise ValueError(f"unknown PNG filter {kind}")
    return out


def png_chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return b"".join([struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)])


def in_threads(function, count: int, threads: int) -> list:
    """[function(0), ..., function(count - 1)] on up to `threads` threads, this one included.
    Plain threads, not concurrent.futures: that import (and logging's) is ~5 ms of a 1 MP run."""
    results: list = [None] * count
    errors: list[BaseException] = []
    todo = iter(range(count))  # shared: each thread takes the next number (next() is atomic)

    def work() -> None:
        try:
            for number in todo:
                results[number] = function(number)
        except BaseException as exc:  # re-raised on the calling thread
            errors.append(exc)

    helpers = [threading.Thread(target=work, daemon=True) for _ in range(min(threads, count) - 1)]
    for helper in helpers:
        helper.start()
    work()
    for helper in helpers:
        helper.join()
    if errors:
        raise errors[0]
    return results


def encode_png(pixels: np.ndarray, level: int = 2, png_filter: str = "sub", threads: int | None = None) -> bytes:
    """PNG bytes of an (H, W, 3) RGB or (H, W) gray uint8 array, deflated in parallel."""
    if pixels.dtype != np.uint8:
        raise ValueError("encode_png needs uint8 pixels")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    kind = FILTERS[png_filter]
    row_bytes = width * channels + 1
    threads = threads or os.cpu_count() or 1
    rows_per_chunk = max(1, min(-(-height // threads), CHUNK_TARGET_BYTES // row_bytes or 1))
    bounds = [(start, min(height, start + rows_per_chunk)) for start in range(0, height, rows_per_chunk)]

    def deflate(index: int) -> tuple[bytes, int, int]:
        start, stop = bounds[index]
        filtered = filter_rows(pixels, start, stop, kind)
        data = memoryview(filtered).cast("B")
        compressor = deflate_lib.compressobj(level, zlib.DEFLATED, -15, 9)
        last = index == len(bounds) - 1
        body = compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
        return body, deflate_lib.adler32(data), len(data)

    pieces = in_threads(deflate, len(bounds), threads)
    adler = 1
    for _, piece_adler, length in pieces:
        adler = adler32_combine(adler, piece_adler, length)
    # FLEVEL is informative only; each pair passes the header check (CMF*256+FLG) % 31 == 0.
    header = bytes((0x78, 0x01 if level < 2 else 0x5E if level < 6 else 0x9C if level == 6 else 0xDA))
    stream = b"".join([header, *(body for body, _, _ in pieces), struct.pack(">I", adler)])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    view = memoryview(stream)
    idats = [png_chunk(b"IDAT", view[offset : offset + IDAT_MAX]) for offset in range(0, len(stream), IDAT_MAX)]
    return b"".join([PNG_SIGNATURE, png_chunk(b"IHDR", ihdr), *idats, png_chunk(b"IEND", b"")])
