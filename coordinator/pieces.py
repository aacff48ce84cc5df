"""How a strip travels: the wire format per worker, and the strip split into requests (pieces)
that fit the worker's limits, each with its halo."""

from __future__ import annotations

import math
from dataclasses import dataclass

from coordinator.config import is_loopback
from coordinator.discovery import WorkerStatus
from coordinator.plan import OPERATIONS, Strip, no_halo
from coordinator.routing import UNFIT, StripFailed
from coordinator.transport import Transport

# Over a compressed (slow-link) wire a pointwise strip travels as up to WAN_PIECES requests to
# the same worker, so the first piece's reply is downloading while the worker still encodes
# the next (scripts/bench_wan.py: 4.3 s -> 3.x s on 12 MP at 50 Mbit/s). Pieces under
# WAN_PIECE_MIN_ROWS rows would cost more in request overhead than they overlap.
WAN_PIECES = 3
WAN_PIECE_MIN_ROWS = 256
# A piece is sized so its raw PPM fits the worker's max_bytes and max_pixels: a PPM header is
# under 32 bytes, and a JPEG row cut adds at most an iMCU (16) + 2 rows on each side.
PPM_HEADER_MAX = 32
JPEG_CUT_SPARE_ROWS = 2 * (16 + 2)
MAX_PIECES = 64  # more requests per strip than this means a worker's limits are absurd for the image
MAX_STRIP_THREADS = 32  # a job's strips in flight at once (job.py's threads)


def make_session(pool_size: int) -> Transport:
    """One keep-alive transport; the pool holds a connection per concurrent strip (and its
    pieces). Here, not in engine.py, so the CLI can start its health probes before numpy loads."""
    return Transport(pool_size=max(4, pool_size * WAN_PIECES))


def wire_for(worker_url: str, transport: str) -> str:
    """auto: raw PPM on loopback (a memory copy beats any encode); elsewhere the JPEG's own rows
    (falling back to PNG for other inputs): below ~200 Mbit/s bytes cost more than CPU
    (figures in README "Wire formats")."""
    if transport != "auto":
        return transport
    return "raw" if is_loopback(worker_url) else "jpeg-cut"


@dataclass
class StripBody:
    """One request of a strip: the body holds rows [first_row, first_row + rows) of the image
    and fills rows [fills_top, fills_bottom) of the result."""

    data: bytes
    content_type: str
    wire: str  # what was actually sent: jpeg-cut falls back to png, anything to raw
    first_row: int
    rows: int
    fills_top: int
    fills_bottom: int


@dataclass(frozen=True)
class Piece:
    """Rows [send_top, send_bottom) go to the worker; rows [fill_top, fill_bottom) of the reply's
    image are kept (the rest is halo)."""

    send_top: int
    send_bottom: int
    fill_top: int
    fill_bottom: int


def piece_rows_cap(worker: WorkerStatus, width: int, halo: int, wire: str) -> int:
    """Most result rows one request may fill so that its body (raw PPM, the largest form we
    send) and pixel count stay within what the worker said it accepts."""
    raw_rows = (worker.max_bytes - PPM_HEADER_MAX) // (3 * width)
    pixel_rows = worker.max_pixels // width
    spare = JPEG_CUT_SPARE_ROWS if wire == "jpeg-cut" else 0
    return min(raw_rows, pixel_rows) - 2 * halo - spare


def piece_ranges(
    strip: Strip,
    wire: str,
    width: int = 1,
    height: int | None = None,
    worker: WorkerStatus | None = None,
    halo: int = 0,
) -> list[Piece]:
    """The strip split into requests: as many as the worker's limits need, and up to
    WAN_PIECES over a slow link when the op reads no neighbouring rows. Each piece carries
    its own halo. Raises StripFailed when this worker cannot take even one row's piece."""
    top, bottom = strip.top, strip.bottom
    height = strip.send_bottom if height is None else height
    count = 1
    if wire != "raw" and OPERATIONS[strip.op].halo is no_halo:
        count = max(1, min(WAN_PIECES, (bottom - top) // WAN_PIECE_MIN_ROWS))
    if worker is not None:
        cap = piece_rows_cap(worker, width, halo, wire)
        needed = math.ceil((bottom - top) / cap) if cap >= 1 else MAX_PIECES + 1
        if needed > MAX_PIECES:
            raise StripFailed(
                f"its limits (max_bytes {worker.max_bytes}, max_pixels {worker.max_pixels}) "
                f"are too small for rows {width} pixels wide",
                UNFIT,
            )
        count = max(count, needed)
    edges = [top + (bottom - top) * k // count for k in range(count + 1)]
    return [Piece(max(0, a - halo), min(height, b + halo), a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
