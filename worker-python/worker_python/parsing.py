"""Request parsing by the contract's round-2 rules: query parameters (rule 1), the bearer
header (rule 2), Accept negotiation and the multipart body (rule 6). Pure functions; each
refusal is an ApiError carrying the contract's status and code."""
from __future__ import annotations

import hmac
import re

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from worker_python import imaging

KNOWN_KEYS = ("op", "format", "quality", "lossless", "compression", "radius", "channels")
MAX_AUTHORIZATION_BYTES = 4096
MAX_MULTIPART_PARTS = 1000
_INTEGER = re.compile(r"[0-9]{1,3}")
_RADIUS = re.compile(r"[0-9]{1,3}(\.[0-9]{1,6})?")
_LOSSLESS = {"true": True, "1": True, "false": False, "0": False}
_ACCEPT_TO_FORMAT = {mime: fmt for fmt, mime in imaging.MEDIA_TYPES.items()}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def authorized(header: str, token: str) -> bool:
    """`Bearer` (any case), one or more spaces (0x20 only), then the token, compared in
    constant time. Linear in the header's length; over MAX_AUTHORIZATION_BYTES is refused."""
    if len(header) > MAX_AUTHORIZATION_BYTES:
        return False
    scheme, space, given = header.partition(" ")
    if not space or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.lstrip(" ").encode(), token.encode())


def single_values(args) -> dict[str, str]:
    """The known query keys, each given at most once (rule 1); unknown keys are ignored."""
    values = {}
    for key in KNOWN_KEYS:
        given = args.getlist(key)
        if len(given) > 1:
            raise ApiError(400, "bad_param", f"{key} is given {len(given)} times; give it once")
        if given:
            values[key] = given[0]
    return values


def response_format(query_format: str | None, accept: str) -> str:
    """?format= wins; else the first Accept type this worker knows (by q, then order); else png."""
    if query_format is not None:
        if query_format not in imaging.FORMATS:
            raise ApiError(400, "bad_param", f"format must be one of {', '.join(imaging.FORMATS)}, got {query_format!r}")
        return query_format
    ranked = []
    for position, item in enumerate(accept.split(",")):
        mime, *params = [part.strip() for part in item.split(";")]
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        fmt = _ACCEPT_TO_FORMAT.get(mime.lower())
        if fmt and quality > 0:
            ranked.append((-quality, position, fmt))
    return min(ranked)[2] if ranked else "png"


def encoding_options(args) -> dict:
    """quality, lossless, compression, radius and channels, by the exact syntax of rule 1."""
    options = {}
    for name, low, high in (("quality", 1, 100), ("compression", 0, 9)):
        raw = args.get(name)
        if raw is not None:
            if not _INTEGER.fullmatch(raw) or not low <= int(raw) <= high:
                raise ApiError(400, "bad_param", f"{name} must be an integer from {low} to {high}, got {raw!r}")
            options[name] = int(raw)
    raw = args.get("lossless")
    if raw is not None:
        if raw not in _LOSSLESS:
            raise ApiError(400, "bad_param", f"lossless must be one of true, false, 1, 0, got {raw!r}")
        options["lossless"] = _LOSSLESS[raw]
    raw = args.get("radius")
    if raw is not None:
        radius = float(raw) if _RADIUS.fullmatch(raw) else 0.0
        if not 0 < radius <= imaging.MAX_RADIUS:
            raise ApiError(400, "bad_param", f"radius must be a number > 0 and <= {imaging.MAX_RADIUS:g}, got {raw!r}")
        options["radius"] = radius
    raw = args.get("channels")
    if raw is not None:
        if raw not in imaging.CHANNELS:
            raise ApiError(400, "bad_param", f"channels must be one of {', '.join(imaging.CHANNELS)}, got {raw!r}")
        options["channels"] = raw
    return options


def multipart_image(body: bytes, content_type: str) -> bytes:
    """The bytes of the one part named `image`, with or without a filename (rule 6)."""
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        raise ApiError(400, "missing_image", "multipart body has no boundary parameter")
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_parts=MAX_MULTIPART_PARTS)
    images, current, ended = [], None, False
    try:
        decoder.receive_data(body)
        decoder.receive_data(None)
        while not ended:
            event = decoder.next_event()
            if isinstance(event, (Field, File)):
                current = [] if event.name == "image" else None
                if current is not None:
                    images.append(current)
            elif isinstance(event, Data) and current is not None:
                current.append(event.data)
            ended = isinstance(event, (Epilogue, NeedData))
    except Exception as exc:  # noqa: BLE001 - any parser error on untrusted bytes is the client's
        raise ApiError(400, "bad_image", f"cannot read the multipart body: {type(exc).__name__}") from None
    if not isinstance(event, Epilogue):
        raise ApiError(400, "bad_image", "the multipart body ends before its closing boundary")
    if len(images) > 1:
        raise ApiError(400, "bad_param", f"multipart body has {len(images)} parts named image; send one")
    if not images:
        raise ApiError(400, "missing_image", "multipart body has no part named image")
    return b"".join(images[0])
