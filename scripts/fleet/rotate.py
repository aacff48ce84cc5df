"""`fleet rotate-token`: replace the workers' bearer token with no failed request.

Workers accept every token listed in their token file (one or two), and hosts copy the SSM
parameter `worker-token` into that file (infra/fetch_secrets.py). So: publish current+next,
wait until every worker accepts next, switch the outputs file the coordinator reads, publish
next alone, and check the old one is refused. Until the outputs file is switched, a failure
puts the parameter back and leaves the file as it was. Tokens are never printed.

The workers are found again at the start of every wait round and once more after the last one
(tokens.wait_for), so an instance that joins mid-rotation (a pool scaling out, a replaced host)
is triggered like the others and must reach the same verdicts before the rotation goes on: the
switch waits until it accepts both tokens, the last step until it refuses the old one.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.fleet import parameters, tokens
from scripts.fleet.config import FleetConfig
from scripts.fleet.errors import ROLLBACK_FAILED, ROLLED_BACK, USAGE, WAIT_TIMEOUT, FleetError
from scripts.fleet.tokens import ACCEPTED, REFUSED, Endpoint
from scripts.fleet.trigger import Trigger
from stripes import stack_outputs
from stripes.roles import PARAM_TOKEN

STEPS = 7


@dataclass
class Rotation:
    config: FleetConfig
    ssm: object  # a boto3 SSM client
    trigger: Trigger
    timeout: float = 180  # per wait: every worker accepts next / refuses current
    interval: float = 2
    grace: float = 5  # after switching the outputs file, before retiring the current token
    step: int = 0
    seen: dict[str, Endpoint] = field(default_factory=dict)  # every worker found so far, by name
    found: list[Endpoint] = field(default_factory=list)  # the workers found last
    published: bool = False  # a new value is in the parameter: newly found workers' hosts are triggered

    def say(self, message: str) -> None:
        self.step += 1
        print(f"[{self.step}/{STEPS}] {message}", file=sys.stderr, flush=True)

    def run(self) -> int:
        name = self.config.parameter(PARAM_TOKEN)
        current, before = self.check_start(name)
        self.check_workers(self.targets(), current)
        following = tokens.new_token()
        self.publish_both(name, before, current, following)
        time.sleep(self.grace)  # requests already sent with the current token finish
        count = self.retire(name, current, following)
        print(
            f"token rotated: {count} workers accept only the new token. Run `pulumi refresh` before "
            "the next `make stack-outputs`: until then Pulumi's state holds the old token"
        )
        return 0

    def check_start(self, name: str) -> tuple[str, str]:
        """(the coordinator's current token, the parameter's value as found)."""
        current = outputs_token(self.config.outputs_path)
        before = parameters.get_value(self.ssm, name)
        if current not in token_lines(before):
            raise FleetError(
                f"the outputs file's worker_token is not in {name}; refresh the file "
                "(`pulumi refresh`, then `make stack-outputs`) before rotating (no value shown)"
            )
        self.say(f"read {name}: {len(token_lines(before))} token(s), the outputs file's among them")
        return current, before

    def targets(self, trigger: bool = True) -> list[Endpoint]:
        """The workers now (a pooled stack's instances asked of EC2 again); once a value is
        published, the hosts of workers not seen before are triggered to fetch it."""
        self.found = tokens.endpoints(self.config)
        joined = [t for t in self.found if self.seen.get(t.name) != t]
        self.seen.update((t.name, t) for t in joined)
        if joined and trigger and self.published:
            names = ", ".join(t.name for t in joined)
            how = self.trigger_problems(joined)
            print(f"      joined during the rotation: {names}; hosts fetch it {how}", file=sys.stderr, flush=True)
        return self.found

    def publish(self, name: str, value: str) -> str:
        """`value` in the parameter and every worker's host told to fetch it (those found later
        are told as they are found); says how."""
        parameters.put_value(self.ssm, name, value)
        self.published = True
        return f"hosts fetch it {self.trigger_problems(self.targets(trigger=False))}"

    def check_workers(self, targets: list[Endpoint], current: str) -> None:
        if not targets:
            raise FleetError(f"no workers in {self.config.outputs_path} to rotate the token of", USAGE)
        stray = tokens.new_token()
        wanted = [("current token", current, ACCEPTED), ("a random token", stray, REFUSED)]
        lagging = tokens.wait_for(self.config, lambda: targets, wanted, 0, self.interval)
        if lagging:
            raise FleetError(f"not rotating: {_summary(lagging)}")
        self.say(f"{len(targets)} workers accept the current token and refuse a random one")

    def publish_both(self, name: str, before: str, current: str, following: str) -> None:
        """current+next on every worker (those that join meanwhile included), then the outputs
        file switched to next; or the parameter as it was, the file untouched, and FleetError."""
        try:
            how = self.publish(name, f"{current}\n{following}")
            self.say(f"{name} = current + new token; {how}")
            wanted = [("new token", following, ACCEPTED), ("current token", current, ACCEPTED)]
            lagging = tokens.wait_for(self.config, self.targets, wanted, self.timeout, self.interval)
            if lagging:
                raise FleetError(f"after {self.timeout:g}s {_summary(lagging)}")
            self.say(f"every worker accepts both tokens ({len(self.found)})")
            try:
                rewrite_token(self.config.outputs_path, following)
            except OSError as exc:
                raise FleetError(f"cannot rewrite {self.config.outputs_path}: {exc.strerror or exc}") from None
            self.say(f"outputs file {self.config.outputs_path} now holds the new token")
        except (Exception, KeyboardInterrupt) as exc:
            raise self.roll_back(name, before, exc) from None

    def roll_back(self, name: str, before: str, cause: BaseException) -> FleetError:
        why = cause.message if isinstance(cause, FleetError) else (str(cause) or type(cause).__name__)
        try:
            parameters.put_value(self.ssm, name, before)
        except FleetError as exc:
            return FleetError(f"{why}; rolling back also failed ({exc.message}): fix {name} by hand", ROLLBACK_FAILED)
        self.trigger(list(self.seen.values()))  # every host found so far drops the new token now (else its timer does)
        return FleetError(f"{why}; rolled back: {name} restored, outputs file unchanged", ROLLED_BACK)

    def retire(self, name: str, current: str, following: str) -> int:
        """next alone on every worker; returns how many there are."""
        self.say(f"{name} = new token only; {self.publish(name, following)}")
        wanted = [("old token", current, REFUSED), ("new token", following, ACCEPTED)]
        lagging = tokens.wait_for(self.config, self.targets, wanted, self.timeout, self.interval)
        if lagging:
            raise FleetError(f"the new token is in use, but after {self.timeout:g}s {_summary(lagging)}", WAIT_TIMEOUT)
        self.say(f"every worker refuses the old token ({len(self.found)})")
        return len(self.found)

    def trigger_problems(self, targets: list[Endpoint]) -> str:
        problems = self.trigger(targets)
        return "now" if not problems else f"(trigger failed on {'; '.join(problems)}: their timer will)"


def _summary(lagging: dict[str, str]) -> str:
    return "; ".join(f"{name}: {what}" for name, what in sorted(lagging.items()))


def token_lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def outputs_token(path: Path) -> str:
    """The outputs file's worker_token; the file must be one this tool can rewrite in place (not
    a symlink: the rename would replace the link and leave its target with the old token)."""
    try:
        mode = path.lstat().st_mode
    except OSError as exc:
        raise FleetError(f"cannot read {path}: {exc.strerror}", USAGE) from None
    if not stat.S_ISREG(mode) or not os.access(path.parent, os.W_OK):
        raise FleetError(f"{path} must be a regular file in a folder this user can write (it gets rewritten)", USAGE)
    token = _outputs(path).get("worker_token")
    if not isinstance(token, str) or not token.strip():
        raise FleetError(f"{path} has no worker_token: the workers take no token to rotate", USAGE)
    return token.strip()


def _outputs(path: Path) -> dict:
    try:
        data = stack_outputs.read_file(path)
    except stack_outputs.OutputsError as exc:
        raise FleetError(f"outputs file: {exc}", USAGE) from None
    if not isinstance(data, dict):
        raise FleetError(f"{path} must hold a JSON object", USAGE)
    return data


def rewrite_token(path: Path, token: str) -> None:
    """The outputs file with worker_token = token, replaced atomically (same folder, fsync,
    rename) with its mode and, where allowed, owner kept: a reader sees the old or the new file."""
    data = _outputs(path)
    data["worker_token"] = token
    info = path.stat()
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, stat.S_IMODE(info.st_mode))
        if os.geteuid() == 0:
            os.fchown(fd, info.st_uid, info.st_gid)
        with os.fdopen(fd, "w") as out:
            fd = -1
            out.write(json.dumps(data, indent=2) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        if fd != -1:
            os.close(fd)
        if os.path.exists(temp):
            os.unlink(temp)
    try:  # the rename reaches the disk; it is done either way, so a failure here is not the caller's
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass
