"""Write the stack outputs file the coordinator and the fleet tool read (`make stack-outputs`).

Runs `pulumi stack output --json --show-secrets` in the repo root and writes the JSON atomically
with mode 0600 (it holds the worker token). Usage:
    python -m scripts.stack_outputs [--stack dev] [--output stack-outputs.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = "stack-outputs.json"
PULUMI_TIMEOUT_SECONDS = 120
INSTALL_HINT = "install it (https://www.pulumi.com/docs/iac/download-install/), then `pulumi login`"


class OutputsError(Exception):
    """A one-line reason the file could not be written."""


def fetch_outputs(stack: str | None, pulumi: str | None = None) -> dict:
    pulumi = pulumi or shutil.which("pulumi")
    if pulumi is None:
        raise OutputsError(f"the pulumi CLI is not on PATH; {INSTALL_HINT}")
    command = [pulumi, "stack", "output", "--json", "--show-secrets", "--non-interactive"]
    if stack:
        command += ["--stack", stack]
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=PULUMI_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise OutputsError(f"`pulumi stack output` did not finish in {PULUMI_TIMEOUT_SECONDS}s") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no error text"])[-1]
        raise OutputsError(f"`pulumi stack output` failed (exit {result.returncode}): {detail}")
    try:
        outputs = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise OutputsError("`pulumi stack output --json` did not print JSON") from None
    check_outputs(outputs)
    return outputs


def check_outputs(outputs: object) -> None:
    """The parts every reader relies on: a non-empty worker list with URLs, and the token."""
    if not isinstance(outputs, dict) or not outputs.get("workers"):
        raise OutputsError("the stack has no workers in its outputs; run `pulumi up` first")
    if not all(isinstance(w, dict) and str(w.get("url", "")).startswith("http://")
               for w in outputs["workers"]):
        raise OutputsError("a worker in the stack outputs has no http:// url")
    token = outputs.get("worker_token")
    if not isinstance(token, str) or not token or token == "[secret]":
        raise OutputsError("worker_token is missing or still masked in the stack outputs")


def write_private(path: Path, text: str) -> None:
    """Write-then-rename in the same folder, mode 0600: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.stack_outputs",
                                     description="Write the Pulumi stack outputs file (mode 0600).")
    parser.add_argument("--stack", help="Pulumi stack name (default: the selected stack)")
    parser.add_argument("--output", type=Path,
                        default=Path(os.environ.get("COORDINATOR_WORKERS_FILE") or DEFAULT_OUTPUT),
                        help="file to write (default: $COORDINATOR_WORKERS_FILE or stack-outputs.json)")
    args = parser.parse_args(argv)
    try:
        outputs = fetch_outputs(args.stack)
        write_private(args.output, json.dumps(outputs, indent=2, sort_keys=True) + "\n")
    except (OutputsError, OSError) as exc:
        print(f"stack_outputs: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({len(outputs['workers'])} workers, stack {outputs.get('stack', '?')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
