"""The stack outputs file (`pulumi stack output --json --show-secrets`): read it, or ask Pulumi.

One reader for the coordinator (coordinator/config.py), the fleet tool (scripts/fleet/config.py)
and `make stack-outputs` (scripts/stack_outputs.py). Stdlib only. Every failure is one
OutputsError whose text is one line naming the file; callers add their own setting's name.
What a worker entry may hold is each reader's business (the fleet tool is strict about values
that reach ssh_config: scripts/fleet/values.py).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = "stack-outputs.json"
MAX_BYTES = 1 << 20  # a real file is a few KB; /dev/zero must not fill the memory
PULUMI_TIMEOUT_SECONDS = 60
INSTALL_HINT = "install it (https://www.pulumi.com/docs/iac/download-install/), then `pulumi login`"


class OutputsError(Exception):
    """One line: why the outputs could not be read. `missing` is True for a file not there."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def _parse(data: bytes, name: str) -> object:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise OutputsError(f"{name} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise OutputsError(f"{name} is not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise OutputsError(f"{name} is JSON nested too deeply") from None


def read_file(path: str | os.PathLike) -> object:
    """The file's JSON, read with a size bound. A regular file or a pipe
    (`--workers-file <(pulumi ...)`); a device or directory is refused before reading."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                raise OutputsError(f"{path} is not a regular file")
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise OutputsError(
            f"cannot read {path}: {exc.strerror or exc}", missing=isinstance(exc, FileNotFoundError)
        ) from None
    if len(data) > MAX_BYTES:
        raise OutputsError(f"{path} is over {MAX_BYTES} bytes; an outputs file is a few KB")
    return _parse(data, str(path))


def pulumi_command(pulumi: str, stack: str | None) -> list[str]:
    return [
        pulumi,
        "stack",
        "output",
        "--json",
        "--show-secrets",
        *(["--stack", stack] if stack else []),
        "--non-interactive",
    ]


def run_pulumi(stack: str | None, *, cwd: str | os.PathLike = REPO_ROOT, env: dict | None = None) -> object | None:
    """The stack's outputs from the Pulumi CLI; None when `pulumi` is not on PATH."""
    pulumi = shutil.which("pulumi", path=(env or os.environ).get("PATH"))
    if pulumi is None:
        return None
    try:
        done = subprocess.run(
            pulumi_command(pulumi, stack),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=PULUMI_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OutputsError(f"pulumi failed: no answer in {PULUMI_TIMEOUT_SECONDS}s") from None
    except OSError as exc:
        raise OutputsError(f"pulumi failed: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise OutputsError(f"pulumi exited {done.returncode}: {last}")
    try:
        return json.loads(done.stdout)
    except (json.JSONDecodeError, RecursionError):
        raise OutputsError("pulumi printed no usable JSON") from None


def check_complete(outputs: object) -> dict:
    """What every reader relies on: a non-empty worker list with http(s):// URLs, the token,
    and the fleet CA when the workers are https:// (nobody may verify them by anything else)."""
    if not isinstance(outputs, dict) or not outputs.get("workers"):
        raise OutputsError("the stack has no workers in its outputs; run `pulumi up` first")
    workers = outputs["workers"]
    if not isinstance(workers, list) or not all(isinstance(w, dict) and _scheme(w.get("url")) for w in workers):
        raise OutputsError("a worker in the stack outputs has no http:// or https:// url")
    token = outputs.get("worker_token")
    if not isinstance(token, str) or not token or token == "[secret]":
        raise OutputsError("worker_token is missing or still masked in the stack outputs")
    if any(_scheme(w["url"]) == "https" for w in workers) and not _pem(outputs.get("worker_ca_pem")):
        raise OutputsError("the workers are https:// but the stack outputs have no worker_ca_pem (the fleet CA)")
    if "worker_client_key_pem" in outputs and not _pem(outputs["worker_client_key_pem"]):
        raise OutputsError("worker_client_key_pem is empty or still masked in the stack outputs")
    return outputs


def _scheme(url: object) -> str | None:
    text = str(url or "")
    return next((scheme for scheme in ("http", "https") if text.startswith(f"{scheme}://")), None)


def _pem(value: object) -> bool:
    return isinstance(value, str) and value.lstrip().startswith("-----BEGIN ")
