"""A valid progressive JPEG of an exact number of scans: the scan-bomb shape of contract rule 5.

The vectors (tests/vectors/rule_vectors.py) use small ones; the soak's hostile area
(scripts/soak.py) sends large ones, built in memory.
"""

from __future__ import annotations

import struct


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def many_scan_jpeg(scans: int, size: int = 16) -> bytes:
    """A valid progressive 8-bit gray JPEG, flat 128, of exactly `scans` scans (2..127).

    One DC scan, then one AC scan per coefficient band; bands get a first pass at Al=1 plus a
    refinement pass while scans remain. Every coefficient is 0, so each block codes one symbol
    (DC difference 0, or EOB) whose Huffman code is the single bit 0."""
    if not 2 <= scans <= 1 + 2 * 63:
        raise ValueError("scans must be 2..127")
    blocks = (size // 8) ** 2
    bits = "0" * blocks + "1" * (-blocks % 8)
    entropy = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    one_symbol = bytes([1] + [0] * 15) + b"\x00"
    out = b"\xff\xd8" + _segment(0xDB, b"\x00" + bytes([1] * 64))
    out += _segment(0xC2, struct.pack(">BHHB", 8, size, size, 1) + b"\x01\x11\x00")
    out += _segment(0xC4, b"\x00" + one_symbol + b"\x10" + one_symbol)
    passes = [(0, 0, 0)]
    refined = max(0, scans - 1 - 63)
    for band in range(1, 64):
        if len(passes) + 1 > scans:
            break
        passes += [(band, 0, 1), (band, 1, 0)] if band <= refined else [(band, 0, 0)]
    for band, high, low in passes:
        out += _segment(0xDA, bytes([1, 1, 0x00, band, band, (high << 4) | low])) + entropy
    return out + b"\xff\xd9"
