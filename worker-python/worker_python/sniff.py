"""What an upload is, read from its bytes before and around Pillow: magic-byte sniffing (one
decoder per accepted format, contract rule 4), the size a header declares (rule 5: 413 before
any pixel is decoded), and the guards against files that would cost or lie more than Pillow
checks (too many JPEG scans, JPEG or PNG data shorter than its header). Pure functions."""

from __future__ import annotations

import re
import struct
import zlib

from PIL import Image

from worker_python.errors import BadImage, TooManyPixels, UnsupportedFormat

MAX_JPEG_SCANS = 100  # contract rule 5: libjpeg decodes every scan over the whole image

# ---------------------------------------------------------------- format sniffing

# The only Pillow decoders ever run (contract rule 4): Image.open gets exactly one of these.
ACCEPTED_PILLOW_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
_ACCEPTED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)
_OTHER_MAGIC = (
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"#?RADIANCE", "HDR"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
)
_PNM = re.compile(rb"P([1-7Ff])\s")
_SVG = re.compile(rb"^\s*(<\?xml|<svg|<!--|<!doctype\s+svg)", re.IGNORECASE)


def sniff_format(data: bytes) -> str:
    """The Pillow format name of an accepted input; raises for anything else."""
    head = data[:64]
    for magic, name in _ACCEPTED_MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    pnm = _PNM.match(head)
    if pnm:
        if pnm.group(1) in (b"5", b"6"):
            return "PPM"  # Pillow's PPM plugin reads binary PGM (P5) too
        raise UnsupportedFormat(f"netpbm P{pnm.group(1).decode()} is not accepted; send binary PPM (P6) or PGM (P5)")
    other = _other_format(data)
    if other:
        raise UnsupportedFormat(f"{other} images are not accepted; send JPEG, PNG, WebP, BMP, TIFF, GIF, PPM or PGM")
    raise BadImage("the body is not a recognisable image")


def _other_format(data: bytes) -> str | None:
    head = data[:64]
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":  # ISO base media: AVIF, HEIC
        brand = head[8:12].decode("ascii", "replace").strip()
        return "AVIF" if brand.startswith("avi") else f"ISO media ({brand})"
    text = data[:1024].lstrip(b"\xef\xbb\xbf")
    if _SVG.match(text) and b"<svg" in data[:4096].lower():
        return "SVG"
    return None


# ---------------------------------------------------------------- header sizes

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PPM_HEADER = re.compile(rb"P[56](?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)")


def declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height as the header states them, read without Pillow: a header that claims
    a huge image must get 413 even when the pixel data behind it is missing or broken.
    None when this reader cannot tell (then Pillow's header parse decides)."""
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if fmt == "GIF":
            return struct.unpack("<HH", data[6:10])
        if fmt == "BMP":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if fmt == "PPM":
            match = _PPM_HEADER.match(data[:1024])
            return (int(match[1]), int(match[2])) if match else None
        if fmt == "WEBP":
            return _webp_size(data)
        if fmt == "JPEG":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25:
        b1, b2, b3, b4 = data[21:25]
        return 1 + (b1 | (b2 & 0x3F) << 8), 1 + ((b2 >> 6) | b3 << 2 | (b4 & 0x0F) << 10)
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    index = 2
    while index + 9 < len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            return width, height
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            index += 2
            continue
        index += 2 + struct.unpack(">H", data[index + 2 : index + 4])[0]
    return None


def check_jpeg_scan_count(data: bytes) -> None:
    """Refuse a JPEG with more than MAX_JPEG_SCANS scans before decoding it.

    A progressive JPEG can hold thousands of tiny scans (long end-of-band runs), each costing
    a pass over every block: 324 KB made each worker spend 30 s. Inside entropy-coded data
    0xFF is always followed by 0x00 or a marker, so counting FF DA from the first scan on
    counts every scan (a table segment holding those bytes can only add to the count)."""
    index = 2
    while index + 4 <= len(data) and data[index] == 0xFF:
        marker = data[index + 1]
        if marker == 0xFF:
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            index += 2
            continue
        if marker == 0xDA:
            scans = data.count(b"\xff\xda", index)
            if scans > MAX_JPEG_SCANS:
                raise BadImage(f"JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are accepted")
            return
        index += 2 + struct.unpack(">H", data[index + 2 : index + 4])[0]


# ---------------------------------------------------------------- data shorter than the header

_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2}  # arithmetic coding can spend < 1 bit per block: not checked
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def check_jpeg_scan_length(data: bytes) -> None:
    """Refuse a Huffman JPEG whose scan data cannot cover the blocks its SOF declares.

    libjpeg fills missing blocks with grey and only warns, which Pillow ignores. Every block
    costs at least one bit in some scan (its DC code), so fewer scan bits than blocks means
    the file lies about its size or lost its data."""
    index, frame = 2, None
    while index + 4 <= len(data) and data[index] == 0xFF:
        marker = data[index + 1]
        if marker == 0xFF:
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            index += 2
            continue
        length = struct.unpack(">H", data[index + 2 : index + 4])[0]
        if marker in _HUFFMAN_SOF | {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}:
            frame = (marker, data[index + 4 : index + 2 + length])
        if marker == 0xDA:  # start of scan: entropy-coded data follows its header
            declared = _jpeg_blocks(frame[1]) if frame is not None and frame[0] in _HUFFMAN_SOF else None
            if declared is None:
                return
            width, height, blocks = declared
            scan_bits = (len(data) - (index + 2 + length)) * 8
            if scan_bits < blocks:
                raise BadImage(
                    f"cannot decode JPEG: scan data ({scan_bits // 8} bytes) is too short "
                    f"for the {width}x{height} its header declares"
                )
            return
        index += 2 + length


def _jpeg_blocks(frame: bytes) -> tuple[int, int, int] | None:
    """Width, height and the count of 8x8 blocks a Huffman SOF segment declares; None when
    the segment is too short or a sampling factor is zero."""
    if len(frame) < 6:
        return None
    height, width, count = struct.unpack(">HHB", frame[1:6])
    factors = [(frame[7 + 3 * i] >> 4, frame[7 + 3 * i] & 15) for i in range(count) if 8 + 3 * i < len(frame)]
    if not factors or not all(h and v for h, v in factors):
        return None
    if len(factors) == 1:
        return width, height, -(-width // 8) * -(-height // 8)
    h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
    mcus = -(-width // (8 * h_max)) * -(-height // (8 * v_max))
    return width, height, mcus * sum(h * v for h, v in factors)


def check_png_data_length(data: bytes, image: Image.Image) -> None:
    """Refuse a PNG whose pixel data ends before its IHDR's last row.

    Pillow stops at the end of a short zlib stream and leaves the missing rows black. The
    full check inflates the data a second time, so it runs only when the last row is all
    zero (which a short stream leaves) or the PNG is interlaced."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    last_row = image.crop((0, height - 1, width, height)).getextrema()
    maxima = [band[1] for band in last_row] if isinstance(last_row[0], tuple) else [last_row[1]]
    if any(maxima) and not interlace:
        return
    expected = _png_data_bytes(width, height, _PNG_CHANNELS.get(colour, 4) * depth, interlace)
    produced = _png_inflated_bytes(data, expected)
    if produced < expected:
        raise BadImage(f"cannot decode PNG: pixel data ends after {produced} of {expected} bytes")


def _png_data_bytes(width: int, height: int, bits: int, interlace: int) -> int:
    """The inflated size of the pixel data an IHDR declares (filter bytes included)."""

    def row_bytes(columns: int) -> int:
        return 1 + (columns * bits + 7) // 8  # filter byte + packed samples

    if not interlace:
        return height * row_bytes(width)
    expected = 0
    for x0, y0, dx, dy in _ADAM7:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            expected += rows * row_bytes(columns)
    return expected


def _png_inflated_bytes(data: bytes, expected: int) -> int:
    """How many bytes the IDAT chunks inflate to, counting no further than `expected`."""
    inflater, produced, index = zlib.decompressobj(), 0, 8
    while index + 8 <= len(data) and produced < expected:
        length, kind = struct.unpack(">I4s", data[index : index + 8])
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            pending = data[index + 8 : index + 8 + length]
            while pending and produced < expected:
                try:
                    produced += len(inflater.decompress(pending, 1 << 20))
                except zlib.error:
                    raise BadImage("cannot decode PNG: corrupt pixel data") from None
                pending = inflater.unconsumed_tail
        index += 12 + length
    return produced


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooManyPixels(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
