"""A PNG encoder that uses every core: the pigz technique for one zlib stream.

Rows are filtered with numpy and split into chunks; each chunk is raw-deflated in its own
thread (zlib releases the GIL), ending with a sync flush so the pieces concatenate into one
valid deflate stream; the last chunk finishes it. The zlib header, the pieces and the adler32
of the whole filtered stream (combined from per-chunk sums) go into IDAT chunks.
Pure: array in, bytes out.
"""

from __future__ import annotations

import os
import queue
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


def chunk_bounds(height: int, row_bytes: int, threads: int) -> list[tuple[int, int]]:
    """Row ranges deflated apart: one per thread, capped at CHUNK_TARGET_BYTES of scanlines."""
    rows_per_chunk = max(1, min(-(-height // threads), CHUNK_TARGET_BYTES // row_bytes or 1))
    return [(start, min(height, start + rows_per_chunk)) for start in range(0, height, rows_per_chunk)]


def deflate_chunk(pixels: np.ndarray, bounds: list[tuple[int, int]], index: int, kind: int, level: int):
    """(raw deflate of the chunk's filtered rows, their adler32, their length); every chunk but
    the last ends with a sync flush, so the pieces concatenate into one stream."""
    start, stop = bounds[index]
    filtered = filter_rows(pixels, start, stop, kind)
    data = memoryview(filtered).cast("B")
    compressor = deflate_lib.compressobj(level, zlib.DEFLATED, -15, 9)
    last = index == len(bounds) - 1
    body = compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return body, deflate_lib.adler32(data), len(data)


def assemble(pixels: np.ndarray, level: int, pieces: list) -> bytes:
    """The PNG file from the chunks' (body, adler32, length) in row order."""
    height, width, channels = pixels.shape
    adler = 1
    for _, piece_adler, length in pieces:
        adler = adler32_combine(adler, piece_adler, length)
    # FLEVEL is informative only; each pair passes the header check (CMF*256+FLG) % 31 == 0.
    header = bytes((0x78, 0x01 if level < 2 else 0x5E if level < 6 else 0x9C if level == 6 else 0xDA))
    stream = b"".join([header, *(body for body, _, _ in pieces), struct.pack(">I", adler)])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, {1: 0, 3: 2, 4: 6}[channels], 0, 0, 0)
    view = memoryview(stream)
    idats = [png_chunk(b"IDAT", view[offset : offset + IDAT_MAX]) for offset in range(0, len(stream), IDAT_MAX)]
    return b"".join([PNG_SIGNATURE, png_chunk(b"IHDR", ihdr), *idats, png_chunk(b"IEND", b"")])


def as_3d(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype != np.uint8:
        raise ValueError("encode_png needs uint8 pixels")
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def encode_png(pixels: np.ndarray, level: int = 2, png_filter: str = "sub", threads: int | None = None) -> bytes:
    """PNG bytes of an (H, W, 3) RGB or (H, W) gray uint8 array, deflated in parallel."""
    pixels = as_3d(pixels)
    height, width, channels = pixels.shape
    kind = FILTERS[png_filter]
    threads = threads or os.cpu_count() or 1
    bounds = chunk_bounds(height, width * channels + 1, threads)
    pieces = in_threads(lambda index: deflate_chunk(pixels, bounds, index, kind, level), len(bounds), threads)
    return assemble(pixels, level, pieces)


class StreamingPng:
    """encode_png of an array that is filled range of rows by range of rows (a job's strips as
    their replies arrive): a chunk is deflated on a background thread as soon as all its rows
    are filled, so only the last rows' chunks are left for finish(). The same bytes as
    encode_png(pixels, level, "sub"). Rows filled again after unfill() (a strip that failed
    over) make their chunks stale: a chunk is kept only if no fill or unfill touched it since
    its deflate began. Sub filters read no other row, so chunks are independent."""

    def __init__(self, pixels: np.ndarray, level: int = 2, threads: int | None = None):
        self.pixels, self.level = as_3d(pixels), level
        self.threads = threads or os.cpu_count() or 1
        height, width, channels = self.pixels.shape
        self.bounds = chunk_bounds(height, width * channels + 1, self.threads)
        self.filled = np.zeros(height, dtype=bool)
        self.generation = [0] * len(self.bounds)
        self.done: dict[int, tuple[int, tuple]] = {}  # chunk -> (generation it was deflated at, piece)
        self.lock = threading.Lock()
        self.todo: queue.SimpleQueue = queue.SimpleQueue()
        self.worker = threading.Thread(target=self._work, name="png-stream", daemon=True)
        self.worker.start()

    def _touched(self, top: int, bottom: int) -> list[int]:
        return [i for i, (start, stop) in enumerate(self.bounds) if start < bottom and top < stop]

    def fill(self, top: int, bottom: int) -> None:
        """Rows [top, bottom) of pixels hold their final values (until an unfill)."""
        with self.lock:
            self.filled[top:bottom] = True
            for index in self._touched(top, bottom):
                self.generation[index] += 1
                start, stop = self.bounds[index]
                if self.filled[start:stop].all():
                    self.todo.put((index, self.generation[index]))

    def unfill(self, top: int, bottom: int) -> None:
        """Rows [top, bottom) will be written again: their chunks wait for the next fill."""
        with self.lock:
            self.filled[top:bottom] = False
            for index in self._touched(top, bottom):
                self.generation[index] += 1
                self.done.pop(index, None)

    def _stale(self, index: int) -> bool:
        kept = self.done.get(index)
        return kept is None or kept[0] != self.generation[index]

    def _deflate(self, index: int, generation: int) -> None:
        piece = deflate_chunk(self.pixels, self.bounds, index, FILTERS["sub"], self.level)
        with self.lock:
            if self.generation[index] == generation:
                self.done[index] = (generation, piece)

    def _work(self) -> None:
        while (item := self.todo.get()) is not None:
            self._deflate(*item)

    def close(self) -> None:
        """End the background thread (a job that failed; finish() does it too)."""
        self.todo.put(None)

    def finish(self) -> bytes:
        """The PNG file; every row must be filled. Deflates what is left on `threads` threads."""
        with self.lock:
            if not self.filled.all():
                raise ValueError("StreamingPng.finish: rows not filled")
            while True:  # what is queued is done below, in parallel
                try:
                    self.todo.get_nowait()
                except queue.Empty:
                    break
        self.close()
        self.worker.join()
        with self.lock:
            missing = [(i, self.generation[i]) for i in range(len(self.bounds)) if self._stale(i)]
        in_threads(lambda n: self._deflate(*missing[n]), len(missing), self.threads)
        return assemble(self.pixels, self.level, [self.done[i][1] for i in range(len(self.bounds))])
