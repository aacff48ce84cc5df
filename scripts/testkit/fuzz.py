"""Fuzz drivers for both workers: the HTTP contract (schemathesis) and the image decoders.

Run bounded by tests/reliability/test_fuzz.py and with bigger budgets by scripts/soak.py.
"""

from __future__ import annotations

import contextlib
import io
import random
import struct
import time
import zlib
from dataclasses import dataclass, field

import requests

from scripts.testkit.images import encoded
from scripts.testkit.procs import ROOT

OPENAPI = ROOT / "tests" / "contract" / "openapi.json"
SEED = 20261128
CONTRACT_CASES = 100  # per runtime in make test; soak runs >= 1000
CONTRACT_BUDGET_S = 10.0
REQUEST_TIMEOUT_S = 10.0
HUGE = 60000  # 60000 x 60000 = 3.6e9 pixels, far over WORKER_MAX_PIXELS


@dataclass
class FuzzStats:
    cases: int = 0
    by_status: dict = field(default_factory=dict)
    server_errors: int = 0
    transport_errors: int = 0
    failures: list = field(default_factory=list)  # one line each, first few kept

    def record(self, status: int | None, problem: str | None = None) -> None:
        self.cases += 1
        if status is None:
            self.transport_errors += 1
        else:
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if status >= 500 and status != 503:
                self.server_errors += 1
        if problem and len(self.failures) < 20:
            self.failures.append(problem)

    def merge(self, other: FuzzStats) -> None:
        self.cases += other.cases
        self.server_errors += other.server_errors
        self.transport_errors += other.transport_errors
        for status, count in other.by_status.items():
            self.by_status[status] = self.by_status.get(status, 0) + count
        self.failures.extend(other.failures[: max(0, 20 - len(self.failures))])


# -- small valid images, and ways to break them -----------------------------------------------


def sample_image(width: int = 23, height: int = 17):
    from PIL import Image

    rng = random.Random(SEED)
    image = Image.new("RGB", (width, height))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(width * height)])
    return image


encode = encoded  # a Pillow format name, or "PPM" (binary P6)


FORMATS = {
    "PNG": "image/png",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "PPM": "image/x-portable-pixmap",
}


def png_with_size(data: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR rewritten to width x height, CRC fixed so only the size lies."""
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + data[33:]


def gif_with_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    out[6:10] = struct.pack("<HH", width, height)  # logical screen
    descriptor = out.find(b"\x2c", 13)  # first image descriptor
    if descriptor > 0:
        out[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(out)


def bmp_with_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    out[18:26] = struct.pack("<ii", width, height)
    return bytes(out)


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = out.find(marker)
        if at > 0:
            out[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def ppm_with_size(width: int, height: int, pixel_bytes: bytes) -> bytes:
    return f"P6\n{width} {height}\n255\n".encode() + pixel_bytes


def lying_headers() -> list[tuple[str, str, bytes, tuple[int, ...]]]:
    """(name, content type, body, acceptable statuses): sizes that disagree with the data."""
    image = sample_image()
    png, gif, bmp = encode(image, "PNG"), encode(image, "GIF"), encode(image, "BMP")
    jpeg, pixels = encode(image, "JPEG"), image.tobytes()
    too_many = (413,)  # contract: the declared size is checked before decoding
    bad = (400, 413)  # bigger than the data, but under the pixel limit: undecodable
    return [
        ("png-huge", "image/png", png_with_size(png, HUGE, HUGE), too_many),
        ("png-wide", "image/png", png_with_size(png, 2000, 17), bad),
        ("png-tall", "image/png", png_with_size(png, 23, 3000), bad),
        ("png-zero", "image/png", png_with_size(png, 0, 0), (400,)),
        ("gif-huge", "image/gif", gif_with_size(gif, HUGE, HUGE), (400, 413)),
        ("gif-wide", "image/gif", gif_with_size(gif, 3000, 17), (200, 400, 413)),
        ("bmp-huge", "image/bmp", bmp_with_size(bmp, HUGE, HUGE), too_many),
        ("bmp-huge-topdown", "image/bmp", bmp_with_size(bmp, HUGE, -HUGE), too_many),
        ("bmp-wide", "image/bmp", bmp_with_size(bmp, 3000, 3000), bad),
        ("jpeg-huge", "image/jpeg", jpeg_with_size(jpeg, HUGE, HUGE), too_many),
        ("jpeg-wide", "image/jpeg", jpeg_with_size(jpeg, 2000, 2000), bad),
        ("ppm-huge", "image/x-portable-pixmap", ppm_with_size(HUGE, HUGE, pixels), too_many),
        ("ppm-short", "image/x-portable-pixmap", ppm_with_size(46, 34, pixels), (400,)),
        ("ppm-zero", "image/x-portable-pixmap", ppm_with_size(0, 0, b""), (400,)),
        ("ppm-negative", "image/x-portable-pixmap", b"P6\n-23 17\n255\n" + pixels, (400,)),
        ("ppm-maxval-0", "image/x-portable-pixmap", b"P6\n23 17\n0\n" + pixels, (400,)),
        ("ppm-overflow", "image/x-portable-pixmap", ppm_with_size(2**32 + 23, 17, pixels), (400, 413)),
    ]


def broken_images(bitflips_per_format: int, seed: int = SEED):
    """(name, content type, body, acceptable statuses) from truncation and bit flips."""
    rng = random.Random(seed)
    image = sample_image()
    for fmt, ctype in FORMATS.items():
        data = encode(image, fmt)
        # Cuts inside the header and inside the pixel data; not in the trailer, where some
        # decoders rightly return the complete pixels (PNG without IEND).
        for cut in sorted({8, 16, 40, len(data) // 3, len(data) // 2, 2 * len(data) // 3}):
            if 0 < cut < len(data):
                # A truncated file is never a whole image: 4xx, never a padded 200.
                yield f"{fmt.lower()}-cut{cut}", ctype, data[:cut], (400, 413, 415)
        for n in range(bitflips_per_format):
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(flipped))
                flipped[at] ^= 1 << rng.randrange(8)
            # A flip in pixel data can leave a valid image, so 200 is allowed here.
            yield f"{fmt.lower()}-flip{n}", ctype, bytes(flipped), (200, 400, 413, 415)


def fuzz_decoders(base_url: str, cases, token: str | None = None) -> FuzzStats:
    stats = FuzzStats()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with requests.Session() as session:
        for name, ctype, body, allowed in cases:
            try:
                response = session.post(
                    f"{base_url}/process",
                    data=body,
                    headers={**headers, "Content-Type": ctype},
                    params={"format": "raw"},
                    timeout=REQUEST_TIMEOUT_S,
                )
            except requests.RequestException as exc:
                stats.record(None, f"{name}: {type(exc).__name__} (hang or dropped connection)")
                continue
            problem = None
            if response.status_code not in allowed:
                code = error_code(response)
                problem = f"{name}: HTTP {response.status_code} {code}, expected one of {allowed}"
            elif response.status_code == 200 and not response.content.startswith(b"P6"):
                problem = f"{name}: 200 but the body is not a PPM"
            elif response.status_code != 200 and not error_code(response):
                problem = f"{name}: HTTP {response.status_code} without a JSON error body"
            stats.record(response.status_code, problem)
    return stats


def error_code(response) -> str:
    """The contract's error code of a reply, or "" when its body is not one."""
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""


# -- the HTTP contract, with schemathesis -----------------------------------------------------


def fuzz_contract(
    base_url: str, max_examples: int, budget_s: float, seed: int = SEED, token: str | None = None
) -> FuzzStats:
    """Positive and negative cases for every operation in the contract, plus valid images with
    generated parameters (so the 200 path is fuzzed too). Failures are collected, not raised,
    so one bad case does not hide the rest and the budget bounds the run."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        negative_data_rejection,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    schema = schemathesis.openapi.from_path(str(OPENAPI))
    operations = [result.ok() for result in schema.get_all_operations()]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stats = FuzzStats()
    deadline = time.monotonic() + budget_s
    valid_png = encode(sample_image(9, 7), "PNG")

    # (operation, mode, fixed parts, checks, share of the case budget, valid image sent?)
    passes = []
    for operation in operations:
        if operation.method.upper() != "POST":  # GET /healthz takes no input: one case or so
            passes.append((operation, GenerationMode.POSITIVE, {}, checks, 0.01, False))
            continue
        passes.append((operation, GenerationMode.POSITIVE, {}, checks, 0.4, False))
        # X-Request-Id's maxLength is advice to clients (the contract never says a long id is
        # rejected), so negative cases get a valid id and break the parameters that matter.
        passes.append(
            (
                operation,
                GenerationMode.NEGATIVE,
                {"headers": {"X-Request-Id": "fuzz"}},
                checks + [negative_data_rejection],
                0.3,
                False,
            )
        )
        passes.append(
            (operation, GenerationMode.POSITIVE, {"body": valid_png, "media_type": "image/png"}, checks, 0.3, True)
        )

    session = requests.Session()

    def run_pass(number, operation, mode, fixed, pass_checks, share, valid_image) -> None:

        @hypothesis_seed(seed + number)
        @settings(
            max_examples=max(1, round(max_examples * share)),
            deadline=None,
            database=None,
            derandomize=False,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, **fixed))
        def one(case):
            if time.monotonic() > deadline:
                return
            label = f"{case.method} {case.formatted_path} {mode.value} query={case.query}"
            try:
                response = case.call(base_url=base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S)
            except requests.RequestException as exc:
                stats.record(None, f"{label}: {type(exc).__name__}")
                return
            problem = None
            try:
                case.validate_response(response, checks=pass_checks, headers=headers)
            except (AssertionError, BaseExceptionGroup) as exc:  # a schemathesis FailureGroup
                problem = f"{label}: HTTP {response.status_code}: " + _first_lines(exc)
            if valid_image and response.status_code == 200:
                problem = problem or _check_same_size(response, (9, 7), label)
            stats.record(response.status_code, problem)

        # e.g. negative cases for GET /healthz: it takes no input to get wrong
        with contextlib.suppress(Unsatisfiable):
            one()

    for number, one_pass in enumerate(passes):
        run_pass(number, *one_pass)
    session.close()
    return stats


def _first_lines(exc: Exception, limit: int = 3) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " | ".join(lines[:limit])[:400]


def _check_same_size(response, size, label) -> str | None:
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(response.content))
        image.load()
    except Exception as exc:
        return f"{label}: 200 but the body does not decode ({type(exc).__name__})"
    if image.size != size:
        return f"{label}: 200 but the image is {image.size}, sent {size}"
    return None


def assert_healthy(base_url: str) -> None:
    response = requests.get(f"{base_url}/healthz", timeout=5)
    assert response.status_code == 200, f"worker unhealthy after fuzzing: {response.text[:200]}"


# Known bugs, kept visible: (runtime, case) -> the bug. Remove an entry when its fix lands
# (strict xfail turns a fixed bug into a failure, so this list cannot go stale).
LYING_HEADER_BUGS: dict[tuple[str, str], str] = {
    # Fixed in dd0d555: worker-python answered 200 with padded pixels for "png-tall" (IHDR
    # declares more rows than the IDAT holds) and "jpeg-wide" (SOF larger than the scan data).
}
