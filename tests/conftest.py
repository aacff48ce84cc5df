"""Shared fixtures: real worker processes on loopback (the CI rule for skips: tests/support/ci.py)."""

from __future__ import annotations

import pytest

from scripts.testkit.procs import RUNTIMES, start_worker


def _started(folder_for):
    """A start(runtime, env, **start_worker_options) for a fixture, which stops them all after."""
    started = []

    def start(runtime: str, env: dict | None = None, **kwargs):
        worker = start_worker(runtime, folder_for(runtime, len(started)), env, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def worker_factory(tmp_path_factory):
    """Start extra workers with their own env; all are stopped at the end of the session."""
    yield from _started(lambda runtime, _: tmp_path_factory.mktemp(f"w-{runtime}"))


@pytest.fixture
def spawn(tmp_path):
    """Start workers for one test (worker_factory's arguments); each is stopped when the test ends."""
    yield from _started(lambda _, count: tmp_path / f"worker-{count}")


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A real moto server (tests/support/moto_server.py) for one test module; a module that needs
    another kind (SSM checked per parameter ARN) makes its own."""
    from tests.support.moto_server import start_moto_server  # boto3 loads only where a test uses it

    server = start_moto_server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def python_worker(worker_factory):
    return worker_factory("python")


@pytest.fixture(scope="session")
def nodejs_worker(worker_factory):
    return worker_factory("nodejs")


@pytest.fixture(scope="session", params=RUNTIMES)
def any_worker(request, worker_factory):
    """The same test, once against each runtime."""
    return request.getfixturevalue(f"{request.param}_worker")


@pytest.fixture(scope="session")
def local_fleet(python_worker, nodejs_worker):
    """Both default workers, as the coordinator's worker URL list."""
    return [python_worker.url, nodejs_worker.url]
