"""Write the stack outputs file the coordinator and the fleet tool read (`make stack-outputs`).

Runs `pulumi stack output --json --show-secrets` in the repo root and writes the JSON atomically
with mode 0600 (it holds the worker token). Usage:
    python -m scripts.stack_outputs [--stack dev] [--output stack-outputs.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from stripes.stack_outputs import DEFAULT_FILE, INSTALL_HINT, OutputsError, check_complete, run_pulumi


def fetch_outputs(stack: str | None) -> dict:
    outputs = run_pulumi(stack)
    if outputs is None:
        raise OutputsError(f"the pulumi CLI is not on PATH; {INSTALL_HINT}")
    return check_complete(outputs)


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
    parser = argparse.ArgumentParser(
        prog="python -m scripts.stack_outputs", description="Write the Pulumi stack outputs file (mode 0600)."
    )
    parser.add_argument("--stack", help="Pulumi stack name (default: the selected stack)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(os.environ.get("COORDINATOR_WORKERS_FILE") or DEFAULT_FILE),
        help="file to write (default: $COORDINATOR_WORKERS_FILE or stack-outputs.json)",
    )
    args = parser.parse_args(argv)
    try:
        outputs = fetch_outputs(args.stack)
        write_private(args.output, json.dumps(outputs, indent=2, sort_keys=True) + "\n")
    except (OutputsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # one line, as every other tool of ours says it
        return 1
    print(f"wrote {args.output} ({len(outputs['workers'])} workers, stack {outputs.get('stack', '?')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
