"""Request parameters by the contract's round-2 rules: the query (rule 1), the bearer header
(rule 2) and Accept negotiation, read into a Job. Pure functions; each refusal is an ApiError
carrying the contract's status and code."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from worker_python.encode import FORMATS, MEDIA_TYPES
from worker_python.errors import ApiError
from worker_python.ops import CHANNELS, DEFAULT_RADIUS, MAX_RADIUS, OPERATIONS, PRIMARY_OP, gray_reply

KNOWN_KEYS = ("op", "format", "quality", "lossless", "compression", "radius", "channels")
MAX_AUTHORIZATION_BYTES = 4096
_INTEGER = re.compile(r"[0-9]{1,3}")
_RADIUS = re.compile(r"[0-9]{1,3}(\.[0-9]{1,6})?")
_LOSSLESS = {"true": True, "1": True, "false": False, "0": False}
_ACCEPT_TO_FORMAT = {mime: fmt for fmt, mime in MEDIA_TYPES.items()}


@dataclass
class Job:
    """What a /process request asks for. The image bytes travel apart, so the handler can
    drop them as soon as they are decoded."""

    op: str
    fmt: str
    radius: float
    one_channel: bool
    options: dict  # the encoder's: quality, lossless, compression


def parse_job(params: dict[str, str], accept: str) -> Job:
    """The op, the reply format and the options, checked in the contract's order."""
    op = params.get("op", PRIMARY_OP)
    if op not in OPERATIONS:
        raise ApiError(400, "unknown_op", f"unknown op {op!r}; this worker offers {', '.join(OPERATIONS)}")
    fmt = response_format(params.get("format"), accept)
    options = encoding_options(params)
    radius = options.pop("radius", DEFAULT_RADIUS)
    one_channel = gray_reply(op, fmt, options.pop("channels", "3"))
    return Job(op, fmt, radius, one_channel, options)


def authorized(header: str, token: str) -> bool:
    """`Bearer` (any case), one or more spaces (0x20 only), then the token, compared in
    constant time. Linear in the header's length; over MAX_AUTHORIZATION_BYTES is refused."""
    if len(header) > MAX_AUTHORIZATION_BYTES:
        return False
    scheme, space, given = header.partition(" ")
    if not space or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.lstrip(" ").encode(), token.encode())


def authorized_by_any(header: str, tokens: tuple[str, ...]) -> bool:
    """authorized() against each token (one or two during a rotation); every one is compared."""
    results = [authorized(header, token) for token in tokens]
    return any(results)


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
        if query_format not in FORMATS:
            raise ApiError(400, "bad_param", f"format must be one of {', '.join(FORMATS)}, got {query_format!r}")
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
        if not 0 < radius <= MAX_RADIUS:
            raise ApiError(400, "bad_param", f"radius must be a number > 0 and <= {MAX_RADIUS:g}, got {raw!r}")
        options["radius"] = radius
    raw = args.get("channels")
    if raw is not None:
        if raw not in CHANNELS:
            raise ApiError(400, "bad_param", f"channels must be one of {', '.join(CHANNELS)}, got {raw!r}")
        options["channels"] = raw
    return options
