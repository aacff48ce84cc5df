"""A host's first boot as cloud-init reports it, read over SSH with `cloud-init status`.

/healthz alone cannot tell "still booting" from "the boot failed": a first boot that died in
runcmd leaves no worker to answer. cloud-init keeps the verdict; this reads it.
`--format json` (cloud-init 22.4+; Ubuntu 24.04 has 24.x) first, then `--long` text for older
ones. No sudo: cloud-init's status files are world-readable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from scripts.fleet import ssh
from scripts.fleet.config import FleetConfig, Worker
from scripts.fleet.errors import FleetError

JSON_COMMAND = "cloud-init status --format json"
LONG_COMMAND = "cloud-init status --long"
MAX_DETAIL = 200  # one line in a table or an error message
MAX_REPORT = 1_000_000  # a real report is a few KB
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


@dataclass(frozen=True)
class Boot:
    state: str  # done | running | not started | disabled | error | unknown
    detail: str = ""  # the first error when it failed; why the state is unknown

    @property
    def failed(self) -> bool:
        return self.state == "error"

    def problem(self) -> str | None:
        """What keeps the host from being booted (None when cloud-init is done)."""
        if self.state == "done":
            return None
        if self.failed:
            return f"boot failed: {self.detail}"
        return f"boot {self.state}" + (f": {self.detail}" if self.detail else "")


def one_line(text: str) -> str:
    """Host text made safe to print: printable ASCII, one line, at most MAX_DETAIL characters."""
    flat = " ".join(_UNPRINTABLE.sub(" ", str(text)).split())
    return flat if len(flat) <= MAX_DETAIL else flat[: MAX_DETAIL - 3] + "..."


NO_MESSAGE = "cloud-init reported an error, with no message"


def _first_error(report: dict) -> str:
    errors = report.get("errors")
    if not errors:  # older reports keep errors per stage only
        stages = (v for _, v in sorted(report.items()) if isinstance(v, dict))
        errors = next((s["errors"] for s in stages if s.get("errors")), None)
    if isinstance(errors, list) and errors:
        return one_line(errors[0]) or NO_MESSAGE
    return one_line(report.get("detail") or "") or NO_MESSAGE


def _state(state: str) -> Boot:
    if state in ("done", "running", "not started", "disabled"):
        return Boot(state)
    if state == "not run":  # cloud-init before 23.x
        return Boot("not started")
    return Boot("unknown", f"cloud-init status {one_line(state)!r}")


def from_json(text: str) -> Boot | None:
    """The report of `cloud-init status --format json`, or None when the text is not one."""
    try:
        report = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("status"), str):
        return None
    if report["status"] == "error":
        return Boot("error", _first_error(report))
    return _state(report["status"])


def from_long(text: str) -> Boot:
    """The `status:`/`detail:`/`errors:` lines of `cloud-init status --long` (any version)."""
    lines = text.splitlines()
    fields = {
        key: value.strip() for key, _, value in (line.partition(":") for line in lines) if key and not key[0].isspace()
    }
    state = fields.get("status", "")
    if not state:
        return Boot("unknown", "cloud-init status printed no status line")
    if state != "error":
        return _state(state)
    listed = [line.strip()[2:] for line in lines if line.strip().startswith("- ")]
    below_detail = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == "detail:"]
    detail = listed[0] if listed else (fields.get("detail") or next(iter(below_detail), ""))
    return Boot("error", one_line(detail) or NO_MESSAGE)


def read_boot(config: FleetConfig, worker: Worker) -> Boot:
    """cloud-init's verdict on the worker's host; Boot('unknown', why) when SSH cannot tell."""
    try:
        client = ssh.connect(config, worker)
    except FleetError as exc:
        return Boot("unknown", one_line(exc.message))
    try:
        code, out, err = ssh.run(client, JSON_COMMAND, config.ssh_timeout, MAX_REPORT)
        boot = from_json(out)
        if boot is None:
            code, out, err = ssh.run(client, LONG_COMMAND, config.ssh_timeout, MAX_REPORT)
            if code == 127 or "not found" in err:
                return Boot("unknown", "cloud-init is not installed on the host")
            boot = from_long(out)
        return boot
    except FleetError as exc:
        return Boot("unknown", one_line(exc.message))
    finally:
        client.close()
