"""The worker contract's shared checks (tests/contract/): the OpenAPI schemas and the vectors,
the JSON error every refusal must be, and the one-line exit 2 a bad setting must cause."""

from __future__ import annotations

import json
import re
from pathlib import Path

import requests
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

from scripts.testkit.hostile_client import Reply
from scripts.testkit.procs import ROOT, start_worker

SPEC = json.loads((ROOT / "tests" / "contract" / "openapi.json").read_text())
SCHEMAS = Registry().with_resource("urn:openapi", DRAFT7.create_resource(SPEC))
VECTORS = ROOT / "tests" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


def vector_input(name: str) -> bytes:
    return (VECTORS / "inputs" / name).read_bytes()


def validate(instance, schema_name: str) -> None:
    Draft7Validator({"$ref": f"urn:openapi#/components/schemas/{schema_name}"}, registry=SCHEMAS).validate(instance)


def as_reply(response: requests.Response) -> Reply:
    headers = {name.lower(): value for name, value in response.headers.items()}
    return Reply(response.status_code, headers, response.content, response.elapsed.total_seconds())


def check_error(reply: Reply | requests.Response | None, status: int | tuple, code: str | None = None) -> dict:
    """The reply is the contract's JSON error with that status (one of them) and code."""
    assert reply is not None, f"the server closed the connection without a reply (want {status} {code})"
    if isinstance(reply, requests.Response):
        reply = as_reply(reply)
    statuses = status if isinstance(status, tuple) else (status,)
    assert reply.status in statuses, f"want {status} {code}, got {reply.status}: {reply.body[:300]!r}"
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    body = json.loads(reply.body)
    validate(body, "Error")
    if code is not None:
        assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert message.strip() and "\n" not in message, f"message must be one line: {message!r}"
    if reply.status == 503:
        assert re.fullmatch(r"\d+", reply.headers.get("retry-after", "")), "503 needs Retry-After seconds"
    return body


def assert_start_up_refused(runtime: str, tmp_path: Path, env: dict, name: str) -> None:
    """A worker started with `env` exits 2 after one log line that names the setting `name`."""
    worker = start_worker(runtime, tmp_path, env, wait=False)
    try:
        code = worker.proc.wait(timeout=20)
    finally:
        worker.stop()
    lines = [line for line in worker.log_text().splitlines() if line.strip()]
    assert code == 2, worker.log_text()[-500:]
    assert len(lines) == 1 and name in lines[0], f"want one line naming {name}, got: {lines}"
