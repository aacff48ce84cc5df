"""Command line: `python -m scripts.fleet {status,wait,logs,redeploy,rotate-token,refresh-secrets,...} --help`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from scripts.fleet import errors
from scripts.fleet.config import RUNTIME_OF_ROLE, FleetConfig, Worker, load_config
from scripts.fleet.errors import FleetError

EXIT_CODES = """exit codes: 0 ok, 1 failure (AWS, SSH, remote command), 2 bad usage or outputs file,
3 wait, rollout or a secrets wait timed out, 4 redeploy failed and the previous release runs (rollout,
rotate-token: rolled back), 5 redeploy and rollback failed (rollout, rotate-token: rollback failed),
6 wait: a host's first boot failed (cloud-init error)"""


@dataclass
class Row:
    """One worker as seen by EC2 and by its /healthz."""

    name: str
    role: str
    instance_id: str = ""
    state: str = "-"
    checks: str = "-"
    public_ip: str = ""
    url: str = ""
    expected_runtime: str = ""
    health: object = None
    boot: object = None  # scripts.fleet.boot.Boot when cloud-init was asked, else None
    boot_strict: bool = False  # an unknown boot counts as a gap (--boot-check given)
    pool: str = ""  # the Auto Scaling group that launched the instance, if any

    def missing(self) -> list[str]:
        """Everything that keeps this worker from being ready, in the order it is needed."""
        gaps = []
        if not self.instance_id:
            gaps.append("no EC2 instance")
        elif self.state != "running":
            gaps.append(f"state {self.state}")
        elif self.checks != "ok":
            gaps.append(f"status checks: {self.checks}")
        if self.boot is not None and self.boot.problem() and (self.boot.state != "unknown" or self.boot_strict):
            gaps.append(self.boot.problem())
        if self.health is None:
            gaps.append("no url in the outputs file")
        else:
            problem = self.health.problem(self.expected_runtime)
            if problem:
                gaps.append(problem)
        return gaps

    def as_json(self) -> dict:
        health = self.health
        return {
            "name": self.name,
            "role": self.role,
            "instance_id": self.instance_id,
            "state": self.state,
            "checks": self.checks,
            "public_ip": self.public_ip,
            "url": self.url,
            "health": None
            if health is None
            else {
                "error": health.error,
                "http_status": health.http_status,
                "status": health.status,
                "runtime": health.runtime,
                "version": health.version,
                "build": health.build,
                "operations": list(health.operations),
            },
            "boot": None if self.boot is None else {"state": self.boot.state, "detail": self.boot.detail},
            "pool": self.pool,
            "ready": not self.missing(),
            "missing": self.missing(),
        }


def _join(config: FleetConfig, instances: list) -> tuple[list[Row], dict[str, Worker]]:
    """A row per worker of the outputs file, then one per tagged instance the file lacks."""
    by_id = {i.instance_id: i for i in instances}
    by_name = {i.name: i for i in instances}
    rows, seen, workers = [], set(), {}
    for worker in config.workers:
        instance = by_id.get(worker.instance_id) or by_name.get(worker.name)
        row = Row(worker.name, worker.role, url=worker.url, expected_runtime=worker.runtime)
        if instance:
            seen.add(instance.instance_id)
            row.instance_id, row.state, row.checks = instance.instance_id, instance.state, instance.checks
            row.public_ip = instance.public_ip
        rows.append(row)
        workers[row.name] = worker
    for instance in instances:
        if instance.instance_id not in seen:  # tagged for this stack, absent from the outputs
            rows.append(_extra_row(config, instance))
    return rows, workers


def _extra_row(config: FleetConfig, instance) -> Row:
    """A tagged instance the outputs file does not list: a pool's (probed on its pool's port,
    named by its id: pool members share a Name) or a stray one."""
    row = Row(
        instance.name or instance.instance_id,
        instance.role,
        instance.instance_id,
        instance.state,
        instance.checks,
        instance.public_ip,
        pool=instance.group,
    )
    port = config.pool_ports.get(instance.role)
    if instance.group and port:
        row.name = instance.instance_id
        row.expected_runtime = RUNTIME_OF_ROLE[instance.role]
        row.url = f"{config.scheme}://{instance.public_ip}:{port}" if instance.public_ip else ""
    return row


def collect(config: FleetConfig, boot_done: frozenset[str] = frozenset()) -> list[Row]:
    """EC2 state and status checks for the stack's instances, joined with each worker's /healthz
    and, with config.boot_check, cloud-init's verdict read over SSH (skipped for `boot_done`).

    Health uses the URL from the outputs file (what the coordinator uses), not EC2's IP.
    """
    from scripts.fleet.aws import fleet_instances
    from scripts.fleet.boot import Boot, read_boot
    from scripts.fleet.health import check_health

    rows, workers = _join(config, fleet_instances(config))

    def boot_of(row: Row):
        worker = workers.get(row.name)
        if not config.boot_check or worker is None or row.state != "running":
            return None
        return Boot("done") if row.name in boot_done else read_boot(config, worker)

    with ThreadPoolExecutor(max_workers=8) as pool:
        healths = pool.map(lambda r: check_health(r.url, tls=config.tls) if r.url else None, rows)
        boots = pool.map(boot_of, rows)
        for row, health, boot in zip(rows, healths, boots, strict=True):
            row.health, row.boot, row.boot_strict = health, boot, config.boot_strict
    return rows


def _render_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="fleet")
    for column in (
        "name",
        "role",
        "instance",
        "state",
        "checks",
        "public ip",
        "boot",
        "healthz",
        "runtime",
        "version",
        "build",
        "ops",
    ):
        table.add_column(column)
    for row in rows:
        h = row.health
        healthz = "-" if h is None else (h.error or f"{h.http_status} {h.status}")
        boot = "-" if row.boot is None else (row.boot.problem() or "done")
        cells = (
            row.name,
            row.role,
            row.instance_id or "-",
            row.state,
            row.checks,
            row.public_ip or "-",
            boot,
            healthz,
            h.runtime if h else "",
            h.version if h else "",
            h.build if h else "",
            ",".join(h.operations) if h else "",
        )
        table.add_row(*(Text(str(cell)) for cell in cells))  # Text: host replies are not markup
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def cmd_status(config: FleetConfig, args) -> int:
    from scripts.fleet import pool_commands

    rows = collect(config)
    pools = pool_commands.find_pools(config) if config.pooled else None
    if args.json:
        listed = [row.as_json() for row in rows]
        # A pooled stack's JSON is an object (pools + workers); a fixed one's stays the list.
        print(
            json.dumps(
                listed if pools is None else {"pools": [p.as_json() for p in pools], "workers": listed}, indent=2
            )
        )
    else:
        if pools is not None:
            pool_commands.render_pools(pools)
        _render_table(rows)
    return errors.OK


def _stop_on_failed_boot(rows: list[Row]) -> None:
    failed = [row for row in rows if row.boot is not None and row.boot.failed]
    if failed:
        names = "; ".join(f"{row.name}: {row.boot.detail}" for row in failed)
        raise FleetError(
            f"boot failed on {names} (cloud-init error; the boot log is /var/log/cloud-init-output.log on the host)",
            errors.BOOT_FAILED,
        )


def cmd_wait(config: FleetConfig, args) -> int:
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    last_report = None
    booted: frozenset[str] = frozenset()
    while True:
        rows = [row for row in collect(config, booted) if row.url]
        _stop_on_failed_boot(rows)  # a failed first boot never becomes ready: say so now
        booted |= {row.name for row in rows if row.boot is not None and row.boot.state == "done"}
        lagging = {row.name: row.missing() for row in rows if row.missing()}
        if config.pooled:
            from scripts.fleet.pool_commands import pool_gaps

            lagging.update(pool_gaps(config))
        if not lagging:
            print(f"all {len(rows)} workers ready after {time.monotonic() - started:.0f}s", flush=True)
            return errors.OK
        summary = ", ".join(f"{name} ({'; '.join(gaps)})" for name, gaps in sorted(lagging.items()))
        if time.monotonic() >= deadline:
            raise FleetError(f"timed out after {args.timeout:g}s waiting for: {summary}", errors.WAIT_TIMEOUT)
        if summary != last_report:  # progress: one line whenever what we wait for changes
            ready = len(rows) - len(lagging)
            print(
                f"[{time.monotonic() - started:4.0f}s] {ready}/{len(rows)} ready; waiting for: {summary}",
                file=sys.stderr,
                flush=True,
            )
            last_report = summary
        time.sleep(max(0.0, min(args.interval, deadline - time.monotonic())))


def cmd_logs(config: FleetConfig, args) -> int:
    from scripts.fleet import ssh

    worker = config.worker(args.name)
    command = ["journalctl", "-u", worker.role, "--no-pager", "-n", str(args.lines)]
    if args.since:
        command += ["--since", args.since]
    if args.follow:
        command.append("-f")
    client = ssh.connect(config, worker)
    try:
        code = ssh.stream(client, "sudo -n " + shlex.join(command), sys.stdout.buffer, sys.stderr.buffer)
    except KeyboardInterrupt:
        return errors.OK  # Ctrl-C is how --follow ends
    finally:
        client.close()
    if code != 0:
        raise FleetError(f"journalctl on {worker.name} exited with {code}")
    return errors.OK


def cmd_redeploy(config: FleetConfig, args) -> int:
    from scripts.fleet.deploy import redeploy

    if args.all == bool(args.name):
        raise FleetError("redeploy needs a worker NAME or --all (not both)", errors.USAGE)
    workers: list[Worker] = list(config.workers) if args.all else [config.worker(args.name)]
    if not workers:
        raise FleetError(f"no workers in {config.outputs_path}", errors.USAGE)
    if not args.skip_pool_check:
        from scripts.fleet.pool_commands import refuse_pooled

        refuse_pooled(config, workers)
    redeploy(config, workers, args.health_timeout, args.command_timeout, args.force, args.keep)
    return errors.OK


def cmd_ssh_config(config: FleetConfig, args) -> int:
    # Every value here was checked by scripts/fleet/values.py: no newline can add a directive.
    for worker in config.workers:
        if not worker.public_ip:
            print(f"# {worker.name}: no public_ip in the outputs file (is it running?)\n")
            continue
        lines = [f"Host {worker.name}", f"  HostName {worker.public_ip}", f"  User {config.ssh_user}"]
        if config.ssh_port != 22:
            lines.append(f"  Port {config.ssh_port}")
        if config.ssh_key:
            lines += [f'  IdentityFile "{config.ssh_key}"', "  IdentitiesOnly yes"]
        lines += [f'  UserKnownHostsFile "{config.known_hosts}"', "  StrictHostKeyChecking yes"]
        print("\n".join(lines) + "\n")
    return errors.OK


def cmd_rotate_token(config: FleetConfig, args) -> int:
    from scripts.fleet import parameters, trigger
    from scripts.fleet.rotate import Rotation

    chosen, how = trigger.choose(config, args.trigger)
    print(f"hosts fetch secrets {how}", file=sys.stderr, flush=True)
    rotation = Rotation(config, parameters.ssm_client(config), chosen, args.timeout, args.interval, args.grace)
    return rotation.run()


def cmd_refresh_secrets(config: FleetConfig, args) -> int:
    from scripts.fleet import parameters, trigger
    from scripts.fleet.refresh import refresh

    chosen, how = trigger.choose(config, args.trigger)
    print(f"hosts fetch secrets {how}", file=sys.stderr, flush=True)
    return refresh(config, parameters.ssm_client(config), chosen, args.timeout, args.interval)


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


def _positive(value: str) -> float:
    number = _number(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def _size(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {value!r}")
    return int(value)


def _pool_parsers(commands, common) -> None:
    from scripts.fleet.pool_commands import cmd_rollout, cmd_scale

    scale = commands.add_parser(
        "scale",
        parents=[common],
        epilog=EXIT_CODES,
        help="set a pool's desired size",
        description="Set an Auto Scaling group's desired size (within its min..max).",
    )
    scale.add_argument("pool", help="group name or role (worker-python)")
    scale.add_argument("size", type=_size, help="desired number of instances")
    scale.set_defaults(run=cmd_scale)
    rollout = commands.add_parser(
        "rollout",
        parents=[common],
        epilog=EXIT_CODES,
        help="replace a pool's hosts from its launch template",
        description="Start (or follow the running) instance refresh of a pool: new hosts boot the template's "
        "release before old ones go, with checkpoints and automatic rollback. Prints progress; "
        "exit 0 on success, 4 rolled back, 1 failed or cancelled, 3 timed out.",
    )
    rollout.add_argument("pool", help="group name or role (worker-python)")
    rollout.add_argument("--timeout", type=_positive, default=3600, help="seconds (default 3600)")
    rollout.add_argument("--interval", type=_positive, default=15, help="seconds between polls (default 15)")
    rollout.set_defaults(run=cmd_rollout)


def _not_negative(value: str) -> float:
    number = _number(value)
    if not 0 <= number <= 600:
        raise argparse.ArgumentTypeError(f"must be 0-600, got {value}")
    return number


def _secrets_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trigger",
        choices=("ssh", "timer"),
        help="how hosts fetch the SSM secrets now: ssh runs `systemctl start <role>-secrets.service`, "
        "timer waits for <role>-secrets.timer (~60 s) (default: ssh with --ssh-key / FLEET_SSH_KEY "
        "on a fixed stack, else timer)",
    )
    parser.add_argument("--timeout", type=_positive, default=180, help="seconds per wait (default 180)")
    parser.add_argument("--interval", type=_positive, default=2, help="seconds between probes (default 2)")


def _secrets_parsers(commands, common) -> None:
    rotate = commands.add_parser(
        "rotate-token",
        parents=[common],
        epilog=EXIT_CODES,
        help="replace the workers' bearer token with no failed request",
        description="Put current+new in the SSM parameter worker-token, make hosts fetch it, wait until "
        "every worker accepts the new token, switch the outputs file's worker_token (atomic, mode kept), "
        "put the new token alone, and check the old one is refused. A failure before the switch puts "
        "the parameter back (exit 4). No token is ever printed.",
    )
    _secrets_flags(rotate)
    rotate.add_argument(
        "--grace",
        type=_not_negative,
        default=5,
        help="seconds between switching the outputs file and retiring the old token (default 5)",
    )
    rotate.set_defaults(run=cmd_rotate_token)
    refresh = commands.add_parser(
        "refresh-secrets",
        parents=[common],
        epilog=EXIT_CODES,
        help="hosts fetch token and certificate from SSM now; check the certificate served",
        description="Make every host fetch its secrets from SSM (over SSH, or wait for the timer), then "
        "check that every worker presents the certificate in the parameter worker-tls-cert (SHA-256), "
        "verified against the fleet CA and name. Exit 3 when one does not within --timeout.",
    )
    _secrets_flags(refresh)
    refresh.set_defaults(run=cmd_refresh_secrets)


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return int(value)


def _at_least_two(value: str) -> int:
    if not value.isdigit() or int(value) < 2:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 2 (new + previous), got {value!r}")
    return int(value)


def _boot_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--boot-check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also read `cloud-init status` over SSH and show a failed first boot; "
        "given, a host SSH cannot reach is not ready (default: on when "
        "--ssh-key / FLEET_SSH_KEY is set, forgiving unreachable hosts)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("fleet settings")
    group.add_argument(
        "--outputs",
        metavar="FILE",
        help="stack outputs JSON (default: $COORDINATOR_WORKERS_FILE or stack-outputs.json)",
    )
    group.add_argument("--region", help="AWS region (default: the file's region, then $AWS_REGION)")
    group.add_argument("--endpoint-url", help="EC2 endpoint (default: $AWS_ENDPOINT_URL or AWS's)")
    group.add_argument("--ssh-key", metavar="PATH", help="private key (default: $FLEET_SSH_KEY, else agent/~/.ssh)")
    group.add_argument("--ssh-user", help="SSH user (default: the file's ssh_user, else ubuntu)")
    group.add_argument("--ssh-port", help="SSH port (default: $FLEET_SSH_PORT or 22)")
    group.add_argument(
        "--ssh-timeout", metavar="SECONDS", help="SSH connect/greeting/auth timeout (default: $FLEET_SSH_TIMEOUT or 15)"
    )
    group.add_argument(
        "--known-hosts",
        metavar="PATH",
        help="host keys file, trust-on-first-use (default: $FLEET_KNOWN_HOSTS or ~/.config/hdtp/known_hosts)",
    )
    group.add_argument(
        "--remote-root", metavar="DIR", help="prefix of /opt and /etc on hosts (default: $FLEET_REMOTE_ROOT or /)"
    )

    parser = argparse.ArgumentParser(
        prog="python -m scripts.fleet", description="Operate the EC2 worker fleet of one stack.", epilog=EXIT_CODES
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser(
        "status",
        parents=[common],
        epilog=EXIT_CODES,
        help="instances, status checks and /healthz as a table",
        description="Show each worker's EC2 state, status checks, IP and /healthz.",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _boot_flag(status)
    status.set_defaults(run=cmd_status)

    wait = commands.add_parser(
        "wait",
        parents=[common],
        epilog=EXIT_CODES,
        help="block until every worker is running, checked and healthy",
        description="Wait until every worker in the outputs file is running, "
        "passes both EC2 status checks and answers /healthz with "
        "its runtime (and, with --boot-check, whose cloud-init is "
        "done). Exit 3 on timeout, naming the laggards; exit 6 "
        "at once when a host's first boot failed.",
    )
    wait.add_argument("--timeout", type=_positive, default=600, help="seconds (default 600)")
    wait.add_argument("--interval", type=_positive, default=5, help="seconds between polls (default 5)")
    _boot_flag(wait)
    wait.set_defaults(run=cmd_wait)

    logs = commands.add_parser(
        "logs",
        parents=[common],
        epilog=EXIT_CODES,
        help="a worker's journal over SSH",
        description="Run `journalctl -u <role>` on the worker's host over SSH.",
    )
    logs.add_argument("name", help="worker name from the outputs file")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming (Ctrl-C ends)")
    logs.add_argument("--lines", "-n", type=_count, default=100, help="lines of history (default 100)")
    logs.add_argument("--since", help="journalctl --since value, e.g. '1 hour ago' or '2026-01-01 10:00'")
    logs.set_defaults(run=cmd_logs)

    redeploy = commands.add_parser(
        "redeploy",
        parents=[common],
        epilog=EXIT_CODES,
        help="ship the current worker source",
        description="Bundle the worker source (infra/bundle.py), upload it, switch the `current` "
        "release, restart, and wait for /healthz to report the new build; roll back "
        "when it does not. --all deploys one worker at a time, stopping at a failure.",
    )
    redeploy.add_argument("name", nargs="?", help="worker name from the outputs file")
    redeploy.add_argument("--all", action="store_true", help="every worker, one after another")
    redeploy.add_argument(
        "--health-timeout", type=_positive, default=90, help="seconds to wait for the new build's /healthz (default 90)"
    )
    redeploy.add_argument(
        "--command-timeout",
        type=_positive,
        default=900,
        help="seconds any one remote step may take, e.g. npm ci (default 900)",
    )
    redeploy.add_argument("--force", action="store_true", help="restart even when the build is current")
    redeploy.add_argument(
        "--keep",
        type=_at_least_two,
        default=5,
        help="releases kept on the host after a deploy, new and previous included (default 5)",
    )
    redeploy.add_argument("--source-root", metavar="DIR", help="checkout to bundle from (default: this repository)")
    redeploy.add_argument(
        "--skip-pool-check",
        action="store_true",
        help="do not ask EC2 whether the hosts belong to an Auto Scaling group (redeploy "
        "refuses pooled hosts; use when you have SSH but no AWS keys for a fixed fleet)",
    )
    redeploy.set_defaults(run=cmd_redeploy)
    _pool_parsers(commands, common)
    _secrets_parsers(commands, common)

    ssh_config = commands.add_parser(
        "ssh-config",
        parents=[common],
        epilog=EXIT_CODES,
        help="OpenSSH config stanzas for the workers",
        description="Print a ~/.ssh/config stanza per worker that checks host keys against the fleet's known_hosts.",
    )
    ssh_config.set_defaults(run=cmd_ssh_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
        return args.run(config, args)
    except FleetError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
