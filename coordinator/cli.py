"""Command line: `python -m coordinator process ...` and `python -m coordinator workers`.

Exit codes: 0 ok; 2 bad usage, config or input; 3 no worker could do it; 1 anything else.
Every error is one line on stderr starting with "error:".
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from coordinator import imaging
from coordinator.config import TRANSPORTS, WIRE_QUALITIES, CoordinatorConfig, load_config
from coordinator.discovery import WorkerStatus, discover
from coordinator.engine import JobResult, StripEvent, make_session, run_job
from coordinator.errors import CoordinatorError, InputError
from coordinator.plan import BLUR_RADIUS_DEFAULT

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_NO_WORKER = 0, 1, 2, 3


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line and exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="python -m coordinator",
                    description="Split images into strips, process them on the workers, stitch the result.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    def add_worker_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--workers", metavar="URLS",
                             help="comma-separated worker base URLs (beats every other source)")
        command.add_argument("--workers-file", metavar="PATH",
                             help="JSON of `pulumi stack output --json --show-secrets` (workers[].url, worker_token)")

    process = commands.add_parser("process", help="process one or more images",
                                  description="Process images on the workers. OUT is a file for one input "
                                              "(its extension picks the format) or a directory for several.")
    process.add_argument("inputs", nargs="+", metavar="IN", help="input image files")
    process.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, or directory for a batch")
    process.add_argument("--plan", default="seed",
                         help="seed (grayscale/sepia alternating), one op for all strips, "
                              "or a comma list, one per strip")
    process.add_argument("--strips", type=int, default=None,
                         help="number of horizontal strips (default 2, or the length of a comma-list plan)")
    process.add_argument("--radius", type=float, default=BLUR_RADIUS_DEFAULT, help="blur radius, 0 < r <= 50")
    process.add_argument("--quality", type=int, default=90, help="JPEG/WebP output quality 1-100")
    process.add_argument("--format", default="png", choices=("png", "jpg", "webp", "tif", "bmp"),
                         help="output format in a batch written to a directory (default png)")
    process.add_argument("--transport", choices=TRANSPORTS, default=None,
                         help="wire format to the workers (default COORDINATOR_TRANSPORT or auto: raw on loopback, "
                              "else the JPEG's own rows cut by jpegtran, or PNG)")
    process.add_argument("--wire-quality", choices=WIRE_QUALITIES, default=None,
                         help="replies from the workers: lossless (default, COORDINATOR_WIRE_QUALITY) or high "
                              "(JPEG q95, PSNR >= 45 dB, about 6x fewer bytes)")
    process.add_argument("--jobs", type=int, default=2, help="images processed at once in a batch (default 2)")
    process.add_argument("--quiet", action="store_true", help="no per-strip summary lines")
    add_worker_options(process)

    workers = commands.add_parser("workers", help="show each worker's health",
                                  description="GET /healthz on every worker; exits 3 when none is healthy.")
    add_worker_options(workers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.workers, args.workers_file, os.environ, getattr(args, "transport", None),
                             getattr(args, "wire_quality", None))
        if args.command == "workers":
            return show_workers(config)
        return process_command(args, config)
    except CoordinatorError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, no traceback
        print(f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_UNEXPECTED


def fail(exc: CoordinatorError, prefix: str = "") -> int:
    print(f"error: {prefix}{exc}", file=sys.stderr)
    return exc.exit_code


def show_workers(config: CoordinatorConfig) -> int:
    statuses = discover(config)
    rows = [("URL", "RUNTIME", "OPERATIONS", "LATENCY", "STATUS")]
    for status in statuses:
        rows.append((status.url, status.runtime or "-", ",".join(status.operations) or "-",
                     f"{status.latency_ms:.0f} ms" if status.latency_ms is not None else "-",
                     "ok" if status.ok else status.error or "unhealthy"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    print(f"(workers from {config.source})")
    if not any(status.ok for status in statuses):
        print("error: no worker is healthy", file=sys.stderr)
        return EXIT_NO_WORKER
    return EXIT_OK


def output_paths(inputs: list[str], output: str, fmt: str) -> list[Path]:
    """Where each input's result goes; InputError for clashes or a bad extension."""
    out = Path(output)
    if len(inputs) == 1 and not out.is_dir():
        imaging.format_for_path(out)
        if not out.parent.is_dir():
            raise InputError(f"output directory {out.parent} does not exist")
        return [out]
    if out.exists() and not out.is_dir():
        raise InputError(f"{len(inputs)} inputs need -o to be a directory, and {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{Path(name).stem}.{fmt}" for name in inputs]
    seen: dict[Path, str] = {}
    for name, path in zip(inputs, paths):
        if path in seen:
            raise InputError(f"{seen[path]} and {name} would both be written to {path}")
        seen[path] = name
    return paths


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside the target, then rename: readers never see a half-written file."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(data)
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise


def strip_summary(name: str, result: JobResult) -> list[str]:
    lines = []
    for strip in result.strips:
        worker_ms = f", worker {strip.worker_ms:.0f} ms" if strip.worker_ms is not None else ""
        failover = f", after {'; '.join(strip.failovers)}" if strip.failovers else ""
        lines.append(f"{name}: strip {strip.index + 1}/{len(result.strips)} rows {strip.top}-{strip.bottom - 1} "
                     f"{strip.op} on {strip.worker_url} ({strip.runtime}) {strip.total_ms:.0f} ms{worker_ms}"
                     f" via {strip.wire} [request {strip.request_id}]{failover}")
    return lines


class Progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool, total_strips: int):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn

            self.bar = RichProgress(TextColumn("strips"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.description}"), transient=True,
                                    console=Console(stderr=True))
            self.task = self.bar.add_task("", total=total_strips)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc_info):
        if self.bar:
            self.bar.stop()

    def line(self, text: str) -> None:
        """A line on stderr, above the bar while it is shown."""
        if self.bar:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr)

    def on_event(self, event: StripEvent) -> None:
        if not self.bar:
            return
        if event.kind == "done":
            self.bar.advance(self.task)
        elif event.kind == "retry":
            self.bar.update(self.task, description=f"strip {event.index + 1} retrying: {event.message}"[:60])


def process_command(args: argparse.Namespace, config: CoordinatorConfig) -> int:
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, not {args.jobs}")
    if args.strips is not None and args.strips < 1:
        raise InputError(f"--strips must be >= 1, not {args.strips}")
    if not 1 <= args.quality <= 100:
        raise InputError(f"--quality {args.quality} is out of range 1..100")
    plan_ops = [op for op in args.plan.split(",") if op.strip()]
    strips = args.strips if args.strips is not None else (len(plan_ops) if len(plan_ops) > 1 else 2)
    paths = output_paths(args.inputs, args.output, args.format)
    session = make_session(strips * max(1, args.jobs))
    statuses: list[WorkerStatus] = discover(config, session)
    if any(status.ok for status in statuses) and not args.quiet:
        for status in statuses:  # reported, not fatal: the healthy ones take the strips
            if not status.ok:
                print(f"warning: worker {status.url} skipped: {status.error}", file=sys.stderr)
    lock = threading.Lock()
    interactive = sys.stderr.isatty() and not args.quiet

    def one(name: str, target: Path, progress: Progress) -> int:
        try:
            try:
                data = Path(name).read_bytes()
            except OSError as exc:
                raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
            result = run_job(data, config, plan=args.plan, strips=strips, params={"radius": args.radius},
                             on_event=progress.on_event, workers=statuses, session=session)
            encoded = imaging.encode_output(result.pixels, imaging.format_for_path(target), args.quality,
                                            config.png_level)
            write_atomic(target, encoded)
        except CoordinatorError as exc:
            with lock:
                return fail(exc, prefix=f"{name}: " if len(args.inputs) > 1 else "")
        except OSError as exc:  # e.g. the output disk is full: this input fails, the batch goes on
            with lock:
                print(f"error: {name}: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_UNEXPECTED
        if not args.quiet:
            with lock:
                for line in strip_summary(name, result):
                    progress.line(line)
        return EXIT_OK

    with Progress(interactive, strips * len(args.inputs)) as progress:
        if len(args.inputs) == 1:
            codes = [one(args.inputs[0], paths[0], progress)]
        else:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                codes = list(pool.map(lambda pair: one(pair[0], pair[1], progress), zip(args.inputs, paths)))
    session.close()
    failed = [code for code in codes if code != EXIT_OK]
    if failed and len(codes) > 1:
        print(f"error: {len(failed)} of {len(codes)} inputs failed", file=sys.stderr)
    return failed[0] if failed else EXIT_OK
