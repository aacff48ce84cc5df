"""Fuzzing both real workers: the HTTP contract (schemathesis) and the image decoders.

Bounded here (seeded, a case budget and a time budget per runtime); `python -m scripts.soak`
runs the same functions with bigger budgets. Pass: zero 5xx, zero dropped connections, every
response conforms to tests/contract/openapi.json, and the worker is still healthy afterwards.
"""

from __future__ import annotations

import io

import pytest

from scripts.testkit.fuzz import (
    CONTRACT_BUDGET_S,
    CONTRACT_CASES,
    HUGE,
    LYING_HEADER_BUGS,
    FuzzStats,
    assert_healthy,
    broken_images,
    encode,
    fuzz_contract,
    fuzz_decoders,
    lying_headers,
    png_with_size,
    sample_image,
)

# -- tests --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_workers(worker_factory):
    """A worker of each runtime just for fuzzing (so a crash here cannot break other suites),
    started on first use and shared by this module's tests."""
    started = {}

    def get(runtime: str):
        if runtime not in started:
            started[runtime] = worker_factory(runtime)
        return started[runtime]

    return get


@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_contract_fuzz_has_no_server_errors_and_conforms(runtime, fuzz_workers):
    fuzz_worker = fuzz_workers(runtime)
    stats = fuzz_contract(fuzz_worker.url, CONTRACT_CASES, CONTRACT_BUDGET_S)
    assert stats.cases >= 30, f"too few cases ran in the budget: {stats.cases}"
    assert stats.server_errors == 0 and stats.transport_errors == 0 and not stats.failures, (
        f"{stats.cases} cases, statuses {stats.by_status}:\n" + "\n".join(stats.failures)
    )
    assert fuzz_worker.proc.poll() is None, "worker process died during fuzzing"
    assert_healthy(fuzz_worker.url)


def lying_header_params():
    for runtime in ("python", "nodejs"):
        for name, ctype, body, allowed in lying_headers():
            bug = LYING_HEADER_BUGS.get((runtime, name))
            marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
            yield pytest.param(runtime, (name, ctype, body, allowed), id=f"{runtime}-{name}", marks=marks)


@pytest.mark.parametrize("runtime, case", lying_header_params())
def test_lying_header_gets_4xx_not_a_huge_allocation(runtime, case, fuzz_workers):
    fuzz_worker = fuzz_workers(runtime)
    stats = fuzz_decoders(fuzz_worker.url, [case])
    assert not stats.failures, "\n".join(stats.failures)
    assert fuzz_worker.proc.poll() is None, "worker process died on a lying header"
    assert_healthy(fuzz_worker.url)


@pytest.mark.parametrize("runtime", ["python", "nodejs"])
def test_truncated_and_bitflipped_images_get_4xx(runtime, fuzz_workers):
    fuzz_worker = fuzz_workers(runtime)
    stats = fuzz_decoders(fuzz_worker.url, broken_images(bitflips_per_format=6))
    assert stats.cases >= 70
    assert not stats.failures, "\n".join(stats.failures)
    assert fuzz_worker.proc.poll() is None, "worker process died on a broken image"
    assert_healthy(fuzz_worker.url)


def test_fuzz_checks_can_fail():
    """The stats catch a 5xx and a transport error (so a green run means something)."""
    stats = FuzzStats()
    stats.record(500, "boom")
    stats.record(None, "reset")
    stats.record(503)
    assert stats.server_errors == 1 and stats.transport_errors == 1 and len(stats.failures) == 2


def test_lying_png_header_really_lies_with_a_valid_crc():
    from PIL import Image

    lied = png_with_size(encode(sample_image(), "PNG"), HUGE, HUGE)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(lied))
