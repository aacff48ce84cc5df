"""The worker contract (tests/contract/), one suite run against both real worker processes.

Run one runtime with `-k python` or `-k nodejs`. Test ids carry the runtime name; the
cross-runtime tests are named `python-vs-nodejs`.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import select
import signal
import socket
import time
import uuid

import numpy as np
import pytest
import requests
from PIL import Image

from scripts.testkit.images import encoded, photo, solid_png
from scripts.testkit.procs import RUNTIMES
from tests.support.contract import MANIFEST, VECTORS, assert_start_up_refused, check_error, validate, vector_input

KNOWN_OPS = {"grayscale", "sepia", "invert", "blur"}
REQUIRED_OPS = {"grayscale", "sepia", "invert"}
SERVICE = {"python": "worker-python", "nodejs": "worker-nodejs"}
PRIMARY = {"python": "grayscale", "nodejs": "sepia"}
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "raw": "image/x-portable-pixmap"}
TOKEN = "contract-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The strict worker: token, one slot, small limits, so every error status is reachable.
STRICT_ENV = {
    "WORKER_TOKEN": TOKEN,
    "WORKER_MAX_INFLIGHT": "1",
    "WORKER_MAX_BYTES": "20000",
    "WORKER_MAX_PIXELS": "10000",
    "WORKER_GRACE_SECONDS": "10",
}
TIMEOUT = 30


# ---------------------------------------------------------------- helpers


def content_type_of(name: str) -> str:
    return MANIFEST["inputs"][name]["content_type"]


def rgb_pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGB", f"output must be 8-bit RGB, got mode {image.mode}"
    return np.asarray(image)


def ppm_pixels(data: bytes) -> np.ndarray:
    match = re.match(rb"P6\n(\d+) (\d+)\n255\n", data)
    assert match, f"raw output must start with 'P6\\n<w> <h>\\n255\\n', got {data[:20]!r}"
    width, height = int(match[1]), int(match[2])
    pixels = data[match.end() :]
    assert len(pixels) == width * height * 3, "raw output has the wrong number of pixel bytes"
    return np.frombuffer(pixels, np.uint8).reshape(height, width, 3)


def assert_close(got: np.ndarray, expected: np.ndarray, tolerance: float, mean_tolerance=None, what=""):
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != expected {expected.shape}"
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= tolerance, (
        f"{what}: max |diff| {diff.max()} > {tolerance} at {np.argwhere(diff == diff.max())[0]}"
    )
    if mean_tolerance is not None:
        assert diff.mean() <= mean_tolerance, f"{what}: mean |diff| {diff.mean():.2f} > {mean_tolerance}"


def post(
    worker, data: bytes = b"", content_type: str | None = "image/png", params=None, headers=None, **kwargs
) -> requests.Response:
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return requests.post(
        worker.url + "/process", params=params, data=data, headers=all_headers, timeout=TIMEOUT, **kwargs
    )


def health(worker) -> dict:
    response = requests.get(worker.url + "/healthz", timeout=TIMEOUT)
    return response.json()


def runtime_of(worker) -> str:
    return health(worker)["runtime"]


def expected_for(op: str, name: str = "photo.png") -> np.ndarray:
    return np.asarray(Image.open(VECTORS / "expected" / f"{name.replace('.', '_')}-{op}.png").convert("RGB"))


class SlowUpload:
    """A /process request on a raw socket whose body is only partly sent, so it holds a slot."""

    def __init__(self, worker, body: bytes, headers: dict | None = None, sent: int = 100):
        host, port = worker.url.removeprefix("http://").split(":")
        self.body, self.sent = body, sent
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        head = [
            "POST /process?op=invert HTTP/1.1",
            f"Host: {host}:{port}",
            "Content-Type: image/png",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        head += [f"{key}: {value}" for key, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body[:sent])

    def finish(self) -> tuple[int, dict, bytes]:
        self.sock.sendall(self.body[self.sent :])
        response = http.client.HTTPResponse(self.sock)
        response.begin()
        data = response.read()
        self.sock.close()
        return response.status, dict(response.getheaders()), data

    def close(self):
        self.sock.close()


def hold_slot(worker, headers=None, limit: float = 10) -> tuple[SlowUpload, requests.Response]:
    """Open a slow upload and poll until it holds a slot: a probe gets 503 busy while the
    upload has had no answer. If a probe held the slot at the moment the upload arrived, the
    upload itself was refused; then start a new one. Bounded by `limit` seconds."""
    deadline = time.monotonic() + limit
    held = SlowUpload(worker, vector_input("photo.png"), headers)
    while True:
        probe = post(worker, vector_input("photo.png"), headers=headers)
        refused = select.select([held.sock], [], [], 0)[0]
        if probe.status_code == 503 and not refused:
            return held, probe
        if time.monotonic() > deadline:
            held.close()
            raise AssertionError(
                f"no request held the slot within {limit}s; last probe: {probe.status_code} {probe.text[:200]}"
            )
        if refused:
            held.close()
            held = SlowUpload(worker, vector_input("photo.png"), headers)
        time.sleep(0.05)


def read_raw_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, dict(response.getheaders()), response.read()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=RUNTIMES)
def strict_worker(request, worker_factory):
    return worker_factory(request.param, STRICT_ENV)


@pytest.fixture(scope="module")
def worker_health(any_worker):
    return health(any_worker)


# ---------------------------------------------------------------- /healthz


def test_healthz_reports_capabilities(any_worker):
    response = requests.get(any_worker.url + "/healthz", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    validate(body, "Health")
    runtime = body["runtime"]
    assert body["status"] == "ok"
    assert body["service"] == SERVICE[runtime]
    assert body["primary"] == PRIMARY[runtime]
    assert body["version"] == "1.0.0"
    if not any_worker.env.get("WORKER_BUILD"):
        assert body.get("build") == "dev", "WORKER_BUILD unset must show build 'dev'"
    assert REQUIRED_OPS <= set(body["operations"]) <= KNOWN_OPS
    assert set(body.get("formats", MIME)) == set(MIME)


def test_healthz_shows_configured_limits_and_needs_no_token(strict_worker):
    response = requests.get(strict_worker.url + "/healthz", timeout=TIMEOUT)
    assert response.status_code == 200
    body = response.json()
    validate(body, "Health")
    for key, env in (
        ("max_inflight", "WORKER_MAX_INFLIGHT"),
        ("max_bytes", "WORKER_MAX_BYTES"),
        ("max_pixels", "WORKER_MAX_PIXELS"),
    ):
        if key in body:
            assert body[key] == int(STRICT_ENV[env])


@pytest.mark.parametrize(
    "name, value",
    [
        ("WORKER_PORT", "abc"),
        ("WORKER_MAX_INFLIGHT", "0"),
        ("WORKER_GRACE_SECONDS", "-1"),
        ("WORKER_MAX_BYTES", "lots"),
        ("WORKER_METRICS", "maybe"),
    ],
)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bad_config_stops_start_up_with_one_line_and_exit_2(tmp_path, runtime, name, value):
    assert_start_up_refused(runtime, tmp_path, {name: value}, name)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_build_id_from_environment(worker_factory, runtime):
    worker = worker_factory(runtime, {"WORKER_BUILD": "abc123"})
    assert health(worker)["build"] == "abc123"


# ---------------------------------------------------------------- vectors


@pytest.mark.parametrize(
    "case",
    MANIFEST["cases"],
    ids=[f"{c['input']}-{c['op']}-{json.dumps(c['params'], sort_keys=True)}" for c in MANIFEST["cases"]],
)
def test_vector(any_worker, worker_health, case):
    if case["op"] not in worker_health["operations"]:
        pytest.skip(f"{worker_health['service']} does not offer {case['op']}")
    name = case["input"]
    response = post(any_worker, vector_input(name), content_type_of(name), params={"op": case["op"], **case["params"]})
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("image/png")
    expected = np.asarray(Image.open(VECTORS / case["expected"]).convert("RGB"))
    assert_close(
        rgb_pixels(response.content), expected, case["tolerance"], case.get("mean_tolerance"), f"{name} {case['op']}"
    )


@pytest.mark.parametrize("error", MANIFEST["errors"], ids=[e["input"] for e in MANIFEST["errors"]])
def test_error_vector(any_worker, error):
    response = post(any_worker, vector_input(error["input"]), error["content_type"], params={"op": "invert"})
    check_error(response, error["status"], error["code"])


def test_unoffered_ops_are_unknown(any_worker, worker_health):
    for op in ["sharpen", "GRAYSCALE", *sorted(KNOWN_OPS - set(worker_health["operations"]))]:
        response = post(any_worker, vector_input("photo.png"), params={"op": op})
        check_error(response, 400, "unknown_op")


def test_no_op_applies_primary_and_returns_png(any_worker, worker_health):
    response = post(any_worker, vector_input("photo.png"))
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("image/png")
    assert_close(rgb_pixels(response.content), expected_for(worker_health["primary"]), 1)


def test_original_multipart_request(any_worker, worker_health):
    """The original coordinator's request: multipart field `image`, no op, no format."""
    response = requests.post(
        any_worker.url + "/process",
        timeout=TIMEOUT,
        files={"image": ("strip.png", vector_input("photo.png"), "image/png")},
    )
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("image/png")
    assert_close(rgb_pixels(response.content), expected_for(worker_health["primary"]), 1)


def test_multipart_with_op_and_other_fields(any_worker):
    response = requests.post(
        any_worker.url + "/process",
        params={"op": "invert"},
        timeout=TIMEOUT,
        data={"note": "ignored"},
        files={"image": ("strip.ppm", vector_input("photo.ppm"), "application/octet-stream")},
    )
    assert response.status_code == 200, response.text[:300]
    assert_close(rgb_pixels(response.content), expected_for("invert", "photo.ppm"), 1)


def test_multipart_without_image_field(any_worker):
    response = requests.post(
        any_worker.url + "/process",
        timeout=TIMEOUT,
        files={"picture": ("strip.png", vector_input("photo.png"), "image/png")},
    )
    check_error(response, 400, "missing_image")


def test_empty_body_is_missing_image(any_worker):
    check_error(post(any_worker, b"", params={"op": "invert"}), 400, "missing_image")


def test_multipart_body_without_its_boundary_is_bad_image(any_worker):
    """Round-2 rule 6: a multipart body with no closing boundary (here none at all) is bad_image."""
    response = post(
        any_worker, b"this body has no parts at all", "multipart/form-data; boundary=xyz123", params={"op": "invert"}
    )
    check_error(response, 400, "bad_image")


def test_bytes_decide_the_input_format_not_the_content_type(any_worker):
    response = post(any_worker, vector_input("photo.png"), "image/jpeg", params={"op": "invert"})
    assert response.status_code == 200, response.text[:300]
    assert_close(rgb_pixels(response.content), expected_for("invert"), 1)


# ---------------------------------------------------------------- formats and negotiation


@pytest.mark.parametrize("fmt", ["png", "raw", "jpeg", "webp", "webp-lossless"])
def test_output_format(any_worker, fmt):
    params = {"op": "invert", "format": fmt.split("-")[0]}
    if fmt == "webp-lossless":
        params["lossless"] = "true"
    response = post(any_worker, vector_input("photo.png"), params=params)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith(MIME[params["format"]])
    expected = expected_for("invert")
    if fmt == "raw":
        assert_close(ppm_pixels(response.content), expected, 0, what="raw")
        return
    image = Image.open(io.BytesIO(response.content))
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[params["format"]]
    if fmt in ("png", "webp-lossless"):
        assert_close(rgb_pixels(response.content), expected, 0, what=fmt)
    else:  # lossy: right size and roughly the right picture
        assert_close(np.asarray(image.convert("RGB")), expected, 255, 40, what=fmt)


def test_webp_compression_sets_its_effort_and_lossless_stays_exact(any_worker):
    """compression 0-9 is also WebP's effort (compression * 2 // 3, so the default 6 is libwebp's
    4): the coordinator asks for lossless at 0 over a slow link, which must stay exact."""
    data = encoded(photo(192, 128), "PNG")
    expected = ppm_pixels(post(any_worker, data, params={"op": "sepia", "format": "raw"}).content)
    sizes = {}
    for compression in ("0", "6", "9"):
        params = {"op": "sepia", "format": "webp", "lossless": "true", "quality": "1", "compression": compression}
        response = post(any_worker, data, params=params)
        assert response.status_code == 200, response.text[:300]
        assert_close(rgb_pixels(response.content), expected, 0, what=f"webp lossless, compression={compression}")
        sizes[compression] = len(response.content)
    assert sizes["6"] < sizes["0"], sizes  # effort 4 finds a smaller file than effort 0


def test_raw_ppm_in_and_out(any_worker):
    response = post(
        any_worker, vector_input("photo.ppm"), "image/x-portable-pixmap", params={"op": "invert", "format": "raw"}
    )
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("image/x-portable-pixmap")
    assert response.content.startswith(b"P6\n17 11\n255\n")
    assert_close(ppm_pixels(response.content), expected_for("invert", "photo.ppm"), 1)


@pytest.mark.parametrize(
    "accept, fmt",
    [
        ("image/webp", "webp"),
        ("image/jpeg", "jpeg"),
        ("image/x-portable-pixmap", "raw"),
        ("image/png", "png"),
        ("text/html, image/webp, image/png", "webp"),
        ("image/png, image/jpeg", "png"),
        ("application/json", "png"),
        ("*/*", "png"),
        ("", "png"),
        ("image/webp;q=0.9", "webp"),
        ("image/jpeg;q=0, image/png", "png"),
    ],
)
def test_accept_negotiation(any_worker, accept, fmt):
    response = post(any_worker, vector_input("photo.png"), params={"op": "invert"}, headers={"Accept": accept})
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith(MIME[fmt])


def test_format_parameter_wins_over_accept(any_worker):
    response = post(
        any_worker,
        vector_input("photo.png"),
        params={"op": "invert", "format": "jpeg"},
        headers={"Accept": "image/webp"},
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("image/jpeg")


@pytest.mark.parametrize(
    "params",
    [
        {"format": "png", "compression": "0"},
        {"format": "png", "compression": "9"},
        {"format": "jpeg", "quality": "1"},
        {"format": "jpeg", "quality": "100"},
        {"format": "webp", "quality": "50"},
        {"format": "webp", "lossless": "false"},
        {"unknown_key": "is ignored"},
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()),
)
def test_good_parameters(any_worker, params):
    response = post(any_worker, vector_input("photo.png"), params={"op": "invert", **params})
    assert response.status_code == 200, response.text[:300]
    assert Image.open(io.BytesIO(response.content)).size == (17, 11)


@pytest.mark.parametrize(
    "default, explicit",
    [
        ({"format": "png"}, {"format": "png", "compression": "6"}),
        ({"format": "jpeg"}, {"format": "jpeg", "quality": "90"}),
        ({"format": "webp"}, {"format": "webp", "quality": "90", "lossless": "false"}),
    ],
    ids=["compression-6", "jpeg-quality-90", "webp-quality-90-lossy"],
)
def test_parameter_defaults(any_worker, default, explicit):
    """Encoders are deterministic, so the default must give the same bytes as the documented value."""
    outputs = [
        post(any_worker, vector_input("photo.png"), params={"op": "sepia", **params}).content
        for params in (default, explicit)
    ]
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    "params",
    [
        {"format": "gif"},
        {"format": "jpeg", "quality": "0"},
        {"format": "jpeg", "quality": "101"},
        {"format": "jpeg", "quality": "high"},
        {"format": "webp", "quality": "-5"},
        {"format": "png", "compression": "10"},
        {"format": "png", "compression": "-1"},
        {"format": "png", "compression": "fast"},
        {"format": "webp", "lossless": "maybe"},
        {"format": "png", "channels": "1"},
        {"format": "png", "channels": "AUTO"},
        {"format": "png", "channels": ""},
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()),
)
def test_bad_parameters(any_worker, params):
    response = post(any_worker, vector_input("photo.png"), params={"op": "invert", **params})
    check_error(response, 400, "bad_param")


@pytest.mark.parametrize("radius", ["0", "-1", "50.5", "51", "wide"])
def test_bad_blur_radius(any_worker, worker_health, radius):
    if "blur" not in worker_health["operations"]:
        pytest.skip(f"{worker_health['service']} does not offer blur")
    response = post(any_worker, vector_input("photo.png"), params={"op": "blur", "radius": radius})
    check_error(response, 400, "bad_param")


def test_blur_radius_upper_bound_is_allowed(any_worker, worker_health):
    if "blur" not in worker_health["operations"]:
        pytest.skip(f"{worker_health['service']} does not offer blur")
    response = post(any_worker, vector_input("photo.png"), params={"op": "blur", "radius": "50"})
    assert response.status_code == 200, response.text[:300]


# ---------------------------------------------------------------- headers and logs


def test_response_headers(any_worker, worker_health):
    response = post(
        any_worker, vector_input("photo.png"), params={"op": "invert"}, headers={"X-Request-Id": "contract-req-1"}
    )
    assert response.status_code == 200
    assert float(response.headers["X-Processing-Ms"]) >= 0
    assert response.headers["X-Worker"] == worker_health["service"]
    assert response.headers["X-Request-Id"] == "contract-req-1"


def test_request_id_generated_when_absent_and_on_errors(any_worker):
    ok = post(any_worker, vector_input("photo.png"), params={"op": "invert"})
    assert ok.headers.get("X-Request-Id", "").strip()
    other = post(any_worker, vector_input("photo.png"), params={"op": "invert"})
    assert other.headers["X-Request-Id"] != ok.headers["X-Request-Id"]
    failed = post(any_worker, b"", params={"op": "invert"}, headers={"X-Request-Id": "contract-req-err"})
    check_error(failed, 400, "missing_image")
    assert failed.headers.get("X-Request-Id") == "contract-req-err"


def test_logs_are_json_lines_with_request_fields_and_no_token(strict_worker):
    request_id = f"log-{uuid.uuid4().hex}"
    response = post(
        strict_worker, vector_input("photo.png"), params={"op": "invert"}, headers={**AUTH, "X-Request-Id": request_id}
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while request_id not in strict_worker.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in strict_worker.log_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "service", "msg"} <= set(record), line
        assert record["service"] == health(strict_worker)["service"]
        records.append(record)
    mine = [r for r in records if r.get("request_id") == request_id and r.get("status") == 200]
    assert mine, f"no log line with request_id {request_id} and status 200"
    assert {"op", "ms", "bytes_in", "bytes_out"} <= set(mine[0])
    assert mine[0]["op"] == "invert"
    assert TOKEN not in strict_worker.log_text()


# ---------------------------------------------------------------- errors: routes and types


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("GET", "/nope", 404, "not_found"),
        ("POST", "/nope", 404, "not_found"),
        ("GET", "/process", 405, "method_not_allowed"),
        ("PUT", "/process", 405, "method_not_allowed"),
        ("POST", "/healthz", 405, "method_not_allowed"),
    ],
)
def test_unknown_route_or_method(any_worker, method, path, status, code):
    response = requests.request(method, any_worker.url + path, timeout=TIMEOUT)
    check_error(response, status, code)


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None])
def test_unsupported_content_type(any_worker, content_type):
    response = post(any_worker, vector_input("photo.png"), content_type, params={"op": "invert"})
    check_error(response, 415, "unsupported_type")


def test_mutated_inputs_never_get_500(any_worker):
    """Truncations and byte flips of every vector input: only contract statuses, never 500."""
    rng = np.random.default_rng(7)
    for name in MANIFEST["inputs"]:
        data = bytearray(vector_input(name))
        cut = bytes(data[: int(rng.integers(1, len(data)))])
        flipped = bytearray(data)
        for index in rng.integers(0, len(data), 8):
            flipped[index] ^= 0xFF
        for body in (cut, bytes(flipped)):
            response = post(any_worker, body, content_type_of(name), params={"op": "invert"})
            assert response.status_code in (200, 400, 413, 415), f"{name}: {response.status_code}"
            if response.status_code != 200:
                validate(response.json(), "Error")


# ---------------------------------------------------------------- strict worker: limits, token, busy


def test_token_required(strict_worker):
    body = vector_input("photo.png")
    check_error(post(strict_worker, body), 401, "unauthorized")
    for value in (f"Bearer {TOKEN}x", "Bearer wrong", TOKEN, f"Basic {TOKEN}", "Bearer "):
        check_error(post(strict_worker, body, headers={"Authorization": value}), 401, "unauthorized")
    assert post(strict_worker, body, headers=AUTH).status_code == 200


def test_too_large_by_content_length(strict_worker):
    response = post(strict_worker, b"\x89PNG" + bytes(25000), headers=AUTH)
    check_error(response, 413, "too_large")


def test_too_large_counted_while_reading_chunked_body(strict_worker):
    chunks = (bytes(1000) for _ in range(30))  # a generator: requests sends it chunked, no length
    response = post(strict_worker, chunks, headers=AUTH)
    assert "Content-Length" not in response.request.headers
    check_error(response, 413, "too_large")


def test_huge_declared_body_is_refused_without_reading_it(strict_worker):
    host, port = strict_worker.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(
            (
                f"POST /process HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1000000000000\r\n\r\n"
            ).encode()
            + bytes(1000)
        )
        status, headers, data = read_raw_response(sock)
    assert status == 413
    assert json.loads(data)["error"]["code"] == "too_large"


def test_pixel_limit_is_checked_from_the_header(strict_worker):
    check_error(post(strict_worker, solid_png(200, 51), headers=AUTH), 413, "too_many_pixels")
    assert post(strict_worker, solid_png(200, 50), headers=AUTH).status_code == 200  # exactly the limit


@pytest.mark.parametrize(
    "name, request_kwargs, status, code",
    [
        ("404 before 401", dict(method="GET", path="/nope"), 404, "not_found"),
        ("405 before 401", dict(method="GET", path="/process"), 405, "method_not_allowed"),
        (
            "401 before 413/415/400",
            dict(data=bytes(25000), content_type="text/plain", params={"op": "bogus"}),
            401,
            "unauthorized",
        ),
        (
            "413 before 415/400",
            dict(data=bytes(25000), content_type="text/plain", params={"op": "bogus"}, auth=True),
            413,
            "too_large",
        ),
        (
            "415 before 400",
            dict(data=b"", content_type="text/plain", params={"op": "bogus"}, auth=True),
            415,
            "unsupported_type",
        ),
        ("unknown op before missing image", dict(data=b"", params={"op": "bogus"}, auth=True), 400, "unknown_op"),
        ("bad format before missing image", dict(data=b"", params={"format": "gif"}, auth=True), 400, "bad_param"),
        ("pixels before bad image", dict(data=None, auth=True), 413, "too_many_pixels"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_check_order(strict_worker, name, request_kwargs, status, code):
    kwargs = dict(request_kwargs)
    headers = AUTH if kwargs.pop("auth", False) else {}
    method, path = kwargs.pop("method", "POST"), kwargs.pop("path", "/process")
    if method != "POST" or path != "/process":
        response = requests.request(method, strict_worker.url + path, timeout=TIMEOUT)
    else:
        data = kwargs.pop("data")
        data = vector_input("huge_header.png") if data is None else data
        response = post(strict_worker, data, kwargs.pop("content_type", "image/png"), headers=headers, **kwargs)
    check_error(response, status, code)


def test_busy_when_all_slots_are_taken(strict_worker):
    held, busy = hold_slot(strict_worker, AUTH)
    try:
        check_error(busy, 503, "busy")
        # the order still holds while busy: 401 before busy, busy before 413 and 415
        check_error(post(strict_worker, vector_input("photo.png")), 401, "unauthorized")
        check_error(post(strict_worker, bytes(25000), "text/plain", headers=AUTH), 503, "busy")
        assert requests.get(strict_worker.url + "/healthz", timeout=TIMEOUT).status_code == 200
        status, headers, data = held.finish()
    finally:
        held.close()
    assert status == 200, data[:300]
    assert_close(rgb_pixels(data), expected_for("invert"), 1)
    # the slot is free again once the held response is sent
    deadline = time.monotonic() + 5
    while (
        response := post(strict_worker, vector_input("photo.png"), headers=AUTH)
    ).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert response.status_code == 200


# ---------------------------------------------------------------- SIGTERM


def wait_not_ok(worker, limit: float = 5) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if requests.get(worker.url + "/healthz", timeout=2).status_code != 200:
                return
        except requests.ConnectionError:
            return
        time.sleep(0.05)
    raise AssertionError("worker still reports ok after SIGTERM")


@contextlib.contextmanager
def sigterm_while_busy(worker):
    """One request holds the only slot (the next is 503 busy) when SIGTERM arrives; yields it."""
    held, busy = hold_slot(worker, AUTH)
    try:
        check_error(busy, 503, "busy")
        worker.signal(signal.SIGTERM)
        yield held
    finally:
        held.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sigterm_lets_inflight_request_finish_and_exits_0(worker_factory, runtime):
    worker = worker_factory(runtime, STRICT_ENV)
    with sigterm_while_busy(worker) as held:
        wait_not_ok(worker)
        status, _, data = held.finish()
    assert status == 200, data[:300]
    assert_close(rgb_pixels(data), expected_for("invert"), 1)
    assert worker.proc.wait(timeout=15) == 0
    assert "Traceback" not in worker.log_text()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_draining_refuses_new_work(worker_factory, runtime):
    worker = worker_factory(runtime, STRICT_ENV)
    with sigterm_while_busy(worker) as held:
        deadline = time.monotonic() + 5
        while (
            response := requests.get(worker.url + "/healthz", timeout=5)
        ).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert response.status_code == 503
        validate(response.json(), "Health")
        assert response.json()["status"] == "draining"
        check_error(post(worker, vector_input("photo.png")), 503, "draining")  # before 401
        check_error(post(worker, vector_input("photo.png"), headers=AUTH), 503, "draining")
        check_error(requests.get(worker.url + "/nope", timeout=TIMEOUT), 404, "not_found")
        status, _, _ = held.finish()
    assert status == 200
    assert worker.proc.wait(timeout=15) == 0


# ---------------------------------------------------------------- across runtimes


@pytest.mark.parametrize("compression", ["1", "6", "9"])
def test_channels_auto_gray_png_is_one_channel_and_equals_red(any_worker, compression):
    """channels=auto: a grayscale PNG reply is 8-bit gray whose values are the RGB reply's R."""
    params = {"op": "grayscale", "format": "png", "compression": compression}
    rgb = post(any_worker, noisy_strip(), params=params)
    gray = post(any_worker, noisy_strip(), params={**params, "channels": "auto"})
    assert rgb.status_code == gray.status_code == 200, gray.text[:300]
    image = Image.open(io.BytesIO(gray.content))
    assert image.mode == "L", f"channels=auto grayscale PNG must be mode L, got {image.mode}"
    assert np.array_equal(np.asarray(image), rgb_pixels(rgb.content)[:, :, 0])


@pytest.mark.parametrize(
    "params",
    [
        {"op": "sepia", "format": "png"},
        {"op": "grayscale", "format": "raw"},
        {"op": "grayscale", "format": "webp", "lossless": "true"},
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()),
)
def test_channels_auto_keeps_rgb_for_colour_ops_and_other_formats(any_worker, params):
    default = post(any_worker, vector_input("photo.png"), params=params)
    auto = post(any_worker, vector_input("photo.png"), params={**params, "channels": "auto"})
    assert default.status_code == auto.status_code == 200, auto.text[:300]
    assert auto.content == default.content


def test_channels_default_is_3(any_worker):
    params = {"op": "grayscale", "format": "png"}
    outputs = [
        post(any_worker, vector_input("photo.png"), params=extra).content
        for extra in (params, {**params, "channels": "3"})
    ]
    assert outputs[0] == outputs[1]
    assert rgb_pixels(outputs[0]).shape == (11, 17, 3)


AGREEMENT_INPUTS = ["photo.png", "rgb16.png", "palette.png", "oriented6.jpg", "lossless.webp", "gray16.png"]


def noisy_strip(width: int = 257, height: int = 61, seed: int = 11) -> bytes:
    """Gradients, noise and hard edges: more values and neighbourhoods than the 17x11 vectors."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / (width - 1), y * 255 / (height - 1), (x ^ y) & 255], -1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    pixels[:, width // 3] = 255
    pixels[height // 2, :] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def agree(python_worker, nodejs_worker, data: bytes, content_type: str, params: dict, what: str) -> None:
    results = []
    for worker in (python_worker, nodejs_worker):
        response = post(worker, data, content_type, params={**params, "format": "raw"})
        assert response.status_code == 200, f"{worker.url} {what}: {response.text[:200]}"
        results.append(ppm_pixels(response.content))
    assert_close(results[1], results[0], 1, what=f"{what}: python vs nodejs")


def offered_by_both(op: str, *workers) -> None:
    if not all(op in health(worker)["operations"] for worker in workers):
        pytest.skip(f"{op} is not offered by both runtimes")


@pytest.mark.parametrize("op", sorted(KNOWN_OPS), ids=[f"python-vs-nodejs-{op}" for op in sorted(KNOWN_OPS)])
def test_runtimes_agree(python_worker, nodejs_worker, op):
    offered_by_both(op, python_worker, nodejs_worker)
    for name in AGREEMENT_INPUTS:
        agree(python_worker, nodejs_worker, vector_input(name), content_type_of(name), {"op": op}, f"{name} {op}")
    agree(python_worker, nodejs_worker, noisy_strip(), "image/png", {"op": op}, f"noisy strip {op}")


def test_runtimes_agree_on_one_channel_gray(python_worker, nodejs_worker):
    replies = [
        post(worker, noisy_strip(), params={"op": "grayscale", "format": "png", "channels": "auto"})
        for worker in (python_worker, nodejs_worker)
    ]
    assert all(reply.status_code == 200 for reply in replies)
    python_gray, nodejs_gray = (np.asarray(Image.open(io.BytesIO(reply.content))) for reply in replies)
    assert python_gray.ndim == nodejs_gray.ndim == 2
    assert_close(nodejs_gray, python_gray, 1, what="channels=auto grayscale: python vs nodejs")


@pytest.mark.parametrize("radius", ["0.3", "1", "2.5", "13.7", "50"], ids=lambda r: f"python-vs-nodejs-r{r}")
def test_runtimes_agree_on_blur_radius(python_worker, nodejs_worker, radius):
    offered_by_both("blur", python_worker, nodejs_worker)
    agree(
        python_worker,
        nodejs_worker,
        noisy_strip(),
        "image/png",
        {"op": "blur", "radius": radius},
        f"noisy strip blur radius {radius}",
    )
