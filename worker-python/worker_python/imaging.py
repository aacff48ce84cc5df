"""Pure image logic: bytes in, bytes or images out. No I/O, no config, no logging.

Every function that touches untrusted bytes raises only ImageError subclasses, each carrying
the contract's HTTP status and error code, so the transport layer never sends a 500 for input.
"""
from __future__ import annotations

import io
import math
import re
import struct
import time
import zlib

from PIL import Image, ImageFilter, ImageOps

OPERATIONS = ("grayscale", "sepia", "invert", "blur")
FORMATS = ("png", "jpeg", "webp", "raw")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp",
               "raw": "image/x-portable-pixmap"}
DEFAULT_RADIUS = 2.0
MAX_RADIUS = 50.0
# zlib strategy for PNG replies, measured on a 4000x1500 photo-like strip (README, Performance).
# 1-channel gray: Z_RLE is smaller *and* faster than the default strategy at levels 1-6
# (2.43 MB / ~0.2 s vs 2.74 MB / 1.2 s at level 6). RGB: the default strategy is smaller at
# every level and as fast at 1-2 (gray as RGB, level 2: 4.44 MB vs 6.33 MB); at 3-6 it costs
# 1.5-4x the CPU, so Z_RLE stays there (the default level 6 keeps its speed). 7-9: the full
# deflate search for whoever asks for the smallest file and accepts the time.
PNG_RLE_LEVELS_GRAY = range(1, 7)
PNG_RLE_LEVELS_RGB = range(3, 7)
CHANNELS = ("3", "auto")
WEBP_MAX_SIDE = 16383
MAX_JPEG_SCANS = 100  # contract rule 5: libjpeg decodes every scan over the whole image
DECODE_SECONDS = 30.0  # a backstop: the worst accepted input (49 MP, 100 scans) takes ~3.5 s
BAND_BYTES = 4 << 20  # ops run in place, a band of rows at a time: one full-size image per request
JPEG_MAX_SIDE = 65535

# Pillow's convert(matrix) computes in float32 and truncates v + 0.5, which turns 4,329 of
# the 16.7M RGB colours' exact ties (x.5) into round-down. The 0.0004 offset makes every
# colour round half up like the contract's integer formula; the nearest non-tie is 0.001
# away (the coefficients are per mille) and float32 error is < 0.0001. Checked exhaustively.
_SEPIA_OFFSET = 0.0004
SEPIA_MATRIX = (0.393, 0.769, 0.189, _SEPIA_OFFSET,
                0.349, 0.686, 0.168, _SEPIA_OFFSET,
                0.272, 0.534, 0.131, _SEPIA_OFFSET)

# Pillow raises these for corrupt or truncated files, from its parsers and C decoders.
DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                  TypeError, ZeroDivisionError, zlib.error, Image.DecompressionBombWarning)


class ImageError(Exception):
    status = 400
    code = "bad_image"


class BadImage(ImageError):
    status, code = 400, "bad_image"


class UnsupportedFormat(ImageError):
    status, code = 415, "unsupported_type"


class TooManyPixels(ImageError):
    status, code = 413, "too_many_pixels"


class CannotEncode(ImageError):
    status, code = 400, "bad_param"


class _DeadlineBytes(io.BytesIO):
    """The input as Pillow reads it while decoding: once armed, no more bytes after the
    deadline. Pillow feeds its decoders 64 KiB at a time, so a decode that has run too long
    stops at its next read (decoders that read the file themselves, like libtiff, are not
    bounded this way; the pixel limit and the JPEG scan cap bound their work)."""

    deadline: float | None = None

    def read(self, size: int | None = -1, /) -> bytes:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BadImage(f"decoding took longer than {DECODE_SECONDS:g} s; refused")
        return super().read(size)


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
            height, width = struct.unpack(">HH", data[index + 5:index + 9])
            return width, height
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            index += 2
            continue
        index += 2 + struct.unpack(">H", data[index + 2:index + 4])[0]
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
        index += 2 + struct.unpack(">H", data[index + 2:index + 4])[0]


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
        length = struct.unpack(">H", data[index + 2:index + 4])[0]
        if marker in _HUFFMAN_SOF | {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}:
            frame = (marker, data[index + 4:index + 2 + length])
        if marker == 0xDA:  # start of scan: entropy-coded data follows its header
            if frame is None or frame[0] not in _HUFFMAN_SOF or len(frame[1]) < 6:
                return
            height, width, count = struct.unpack(">HHB", frame[1][1:6])
            factors = [(frame[1][7 + 3 * i] >> 4, frame[1][7 + 3 * i] & 15) for i in range(count)
                       if 8 + 3 * i < len(frame[1])]
            if not factors or not all(h and v for h, v in factors):
                return
            if len(factors) == 1:
                blocks = -(-width // 8) * -(-height // 8)
            else:
                h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
                mcus = -(-width // (8 * h_max)) * -(-height // (8 * v_max))
                blocks = mcus * sum(h * v for h, v in factors)
            scan_bits = (len(data) - (index + 2 + length)) * 8
            if scan_bits < blocks:
                raise BadImage(f"cannot decode JPEG: scan data ({scan_bits // 8} bytes) is too short "
                               f"for the {width}x{height} its header declares")
            return
        index += 2 + length


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
    bits = _PNG_CHANNELS.get(colour, 4) * depth

    def row_bytes(columns: int) -> int:
        return 1 + (columns * bits + 7) // 8  # filter byte + packed samples

    if interlace:
        expected = 0
        for x0, y0, dx, dy in _ADAM7:
            columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
            if columns > 0 and rows > 0:
                expected += rows * row_bytes(columns)
    else:
        expected = height * row_bytes(width)
    inflater, produced, index = zlib.decompressobj(), 0, 8
    while index + 8 <= len(data) and produced < expected:
        length, kind = struct.unpack(">I4s", data[index:index + 8])
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            pending = data[index + 8:index + 8 + length]
            while pending and produced < expected:
                try:
                    produced += len(inflater.decompress(pending, 1 << 20))
                except zlib.error:
                    raise BadImage("cannot decode PNG: corrupt pixel data") from None
                pending = inflater.unconsumed_tail
        index += 12 + length
    if produced < expected:
        raise BadImage(f"cannot decode PNG: pixel data ends after {produced} of {expected} bytes")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooManyPixels(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")


# ---------------------------------------------------------------- decoding

def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse more than max_pixels before any pixel is decoded."""
    fmt = sniff_format(data)
    if fmt not in ACCEPTED_PILLOW_FORMATS:  # a sniffing bug must not reach another decoder
        raise UnsupportedFormat(f"{fmt} images are not accepted")
    size = declared_size(data, fmt)
    if size:
        _check_pixels(*size, max_pixels)
    try:
        image = Image.open(_DeadlineBytes(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"image declares too many pixels ({exc})") from None
    except Image.UnidentifiedImageError:
        raise BadImage(f"not a readable {fmt} file") from None
    except DECODER_ERRORS as exc:
        raise BadImage(f"cannot read the {fmt} header: {_one_line(exc)}") from None
    width, height = image.size
    _check_pixels(width, height, max_pixels)
    if width < 1 or height < 1:
        raise BadImage(f"image has no pixels ({width}x{height})")
    return image


_PPM16_HEADER = re.compile(rb"P6(?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+65535\s")  # P5: Pillow's mode I, to_rgb


def _ppm16_high_bytes(data: bytes) -> Image.Image | None:
    """A 16-bit (maxval 65535) PPM as 8-bit RGB by v >> 8, as the contract says for 16-bit
    samples; Pillow would scale by round(v / 257). None for any other PPM."""
    header = _PPM16_HEADER.match(data[:1024])
    if not header:
        return None
    width, height = int(header[1]), int(header[2])
    samples = data[header.end():header.end() + width * height * 6]
    if len(samples) < width * height * 6:
        raise BadImage("cannot decode PPM: image file is truncated")
    return Image.frombytes("RGB", (width, height), samples[0::2])  # big-endian: high byte first


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Any accepted input as 8-bit RGB, EXIF orientation applied, first frame only."""
    return load_rgb(open_checked(data, max_pixels), data)


def load_rgb(image: Image.Image, data: bytes, seconds: float = DECODE_SECONDS) -> Image.Image:
    """The pixels of an image from open_checked(data), as decode() returns them; BadImage if
    decoding runs past `seconds` (checked between Pillow's reads)."""
    if isinstance(image.fp, _DeadlineBytes):
        image.fp.deadline = time.monotonic() + seconds
    if image.format == "PPM":
        high = _ppm16_high_bytes(data)
        if high is not None:
            return high
    try:
        if image.format == "JPEG":
            check_jpeg_scan_count(data)
            check_jpeg_scan_length(data)
        image.load()
        if image.format == "PNG":
            check_png_data_length(data, image)
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(_one_line(exc)) from None
    except DECODER_ERRORS as exc:
        raise BadImage(f"cannot decode {image.format}: {_one_line(exc)}") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except DECODER_ERRORS:
        pass  # unreadable EXIF: keep the stored orientation rather than refuse the picture
    try:
        return to_rgb(image)
    except DECODER_ERRORS as exc:
        raise BadImage(f"cannot convert {image.mode} pixels: {_one_line(exc)}") from None


_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: alpha dropped (not composited), 16-bit scaled by v >> 8, gray expanded."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "I":
        image, mode = image.convert("I;16"), "I;16"  # clamps to 0..65535
    if mode in _GRAY16_MODES:
        # the high byte of each big-endian sample is exactly v >> 8 (convert("L") would clip)
        high = image.tobytes("raw", "I;16B")[0::2]
        return Image.frombytes("L", image.size, high).convert("RGB")
    if mode in ("1", "L", "LA", "La", "F"):
        return image.convert("L").convert("RGB")
    if mode in ("P", "PA"):
        image.info.pop("transparency", None)  # dropped anyway; avoids Pillow's RGBA warning
        return image.convert("RGBA").convert("RGB") if mode == "PA" else image.convert("RGB")
    return image.convert("RGB")


# ---------------------------------------------------------------- operations

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


def apply(op: str, image: Image.Image, radius: float = DEFAULT_RADIUS, one_channel: bool = False,
          in_place: bool = False) -> Image.Image:
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


def _band_rows(width: int, at_least: int = 1) -> int:
    return max(at_least, BAND_BYTES // (3 * width))


def _in_bands(image: Image.Image, op) -> Image.Image:
    width, height = image.size
    rows = _band_rows(width)
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
    rows = _band_rows(width, 4 * halo)
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


# ---------------------------------------------------------------- encoding

def encode(image: Image.Image, fmt: str = "png", quality: int = 90, lossless: bool = False,
           compression: int = 6) -> bytes:
    width, height = image.size
    if image.mode == "L" and fmt != "png":
        image = image.convert("RGB")  # only PNG replies carry one channel (gray_reply)
    if fmt == "raw":
        return b"".join(raw_chunks(image))
    limit = {"webp": WEBP_MAX_SIDE, "jpeg": JPEG_MAX_SIDE}.get(fmt)
    if limit and max(width, height) > limit:
        raise CannotEncode(f"format={fmt} cannot hold a {width}x{height} image (at most {limit} per side)")
    buffer = io.BytesIO()
    if fmt == "png":
        rle_levels = PNG_RLE_LEVELS_GRAY if image.mode == "L" else PNG_RLE_LEVELS_RGB
        strategy = zlib.Z_RLE if compression in rle_levels else zlib.Z_DEFAULT_STRATEGY
        image.save(buffer, "PNG", compress_level=compression, compress_type=strategy)
    elif fmt == "jpeg":
        image.save(buffer, "JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, lossless=lossless)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buffer.getvalue()


def raw_header(image: Image.Image) -> bytes:
    return b"P6\n%d %d\n255\n" % image.size


def raw_length(image: Image.Image) -> int:
    return len(raw_header(image)) + image.width * image.height * 3


def raw_chunks(image: Image.Image):
    """Binary PPM in pieces of about BAND_BYTES, so a 150 MB reply is never one more copy."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    yield raw_header(image)
    rows = _band_rows(width)
    for top in range(0, height, rows):
        yield image.crop((0, top, width, min(height, top + rows))).tobytes()


def self_check() -> None:
    """A tiny image through decode, every op and every encoder; raises if any step is broken."""
    source = Image.new("RGB", (4, 3), (200, 100, 50))
    data = encode(source, "png")
    image = decode(data, max_pixels=12)
    expected = {"grayscale": (124, 124, 124), "sepia": (165, 147, 114), "invert": (55, 155, 205),
                "blur": (200, 100, 50)}
    for op, pixel in expected.items():
        got = apply(op, image, 1.0).getpixel((1, 1))
        if got != pixel:
            raise RuntimeError(f"self-check: {op} gave {got}, expected {pixel}")
    for fmt in FORMATS:
        if not encode(image, fmt):
            raise RuntimeError(f"self-check: {fmt} encoder returned nothing")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
