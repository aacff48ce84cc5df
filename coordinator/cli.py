"""Command line: `stripes process ...` and `stripes workers` (or `python -m coordinator ...`).

Exit codes: 0 ok; 2 bad usage, config or input; 3 no worker could do it; 1 anything else;
130 interrupted. Every error is one line on stderr starting with "error:". A flag that could
not take effect (say --radius with no blur in the plan) is refused with exit 2, never ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import coordinator
from coordinator.config import DEFAULT_WORKERS, TRANSPORTS, WIRE_QUALITIES, CoordinatorConfig, load_config
from coordinator.errors import CoordinatorError, InputError
from coordinator.plan import BLUR_RADIUS_DEFAULT, BLUR_RADIUS_MAX, OPERATIONS, SEED_OPS, check_params, parse_plan

# numpy, Pillow and the engine (imaging, engine, discovery) are imported where `process` or
# `workers` first needs them, so --help, --version and usage errors start in a fraction of the
# time (tests/coordinator/test_imports.py keeps it so).
if TYPE_CHECKING:
    from coordinator.discovery import WorkerStatus
    from coordinator.engine import StripEvent, StripResult

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_NO_WORKER = 0, 1, 2, 3
STDIO = "-"
QUALITY_DEFAULT = 90
QUALITY_FORMATS = ("jpeg", "webp")
# --format value -> file extension (jpeg and tiff are accepted spellings)
FORMAT_CHOICES = {
    "png": "png",
    "jpg": "jpg",
    "jpeg": "jpg",
    "webp": "webp",
    "tif": "tif",
    "tiff": "tif",
    "bmp": "bmp",
    "ppm": "ppm",
}
# A batch admits images while the pixels in flight stay within this many largest-allowed
# images (COORDINATOR_MAX_PIXELS each); one image is always admitted. One image in flight
# peaks near 18 bytes a pixel (decode, strips out and back, result, PNG encode): 0.87 GB at
# 48 MP, measured; 4 x 48 MP with --jobs 4 and no budget peaked at 1.8 GB.
BATCH_BUDGET_IMAGES = 1
# glibc keeps freed buffers under its dynamic mmap threshold (up to 32 MB) in the heap of the
# thread that freed them, so a batch's threads each hoard an image's worth: 4 x 48 MP, --jobs 4,
# one image at a time still peaked at 1.6 GB. Buffers from 4 MB up mapped directly: 0.66 GB.
M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES = -3, 4 << 20
EXAMPLES = """\
examples:
  %(prog)s process photo.jpg -o out.png  # seed plan, 2 strips
  %(prog)s process photo.jpg -o out.webp --plan sepia --strips 4 --quality 85
  %(prog)s process logo.png -o out.png --plan blur --radius 4  # alpha kept in PNG, WebP, TIFF
  %(prog)s process *.jpg -o results/ --plan grayscale,sepia,invert --jobs 2
  %(prog)s process - -o - --format jpg < in.png > out.jpg  # stdin to stdout
  %(prog)s workers --workers 10.0.0.5:5001,10.0.0.6:5002

exit codes:
  0 ok; 2 bad usage, config or input (refused before any work where it can be);
  3 no worker could do a strip; 1 anything else; 130 interrupted.
  Errors are one line on stderr starting with "error:"; warnings start with "warning:".
"""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line and exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def add_worker_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--workers",
        metavar="URLS",
        help="comma-separated worker URLs, http://host:port or host:port "
        "(beats every other source; default: COORDINATOR_WORKERS, ..., "
        f"{','.join(DEFAULT_WORKERS)})",
    )
    command.add_argument(
        "--workers-file",
        metavar="PATH",
        help="JSON of `pulumi stack output --json --show-secrets` (workers[].url, worker_token)",
    )


def add_process_options(process: argparse.ArgumentParser) -> None:
    process.add_argument("inputs", nargs="+", metavar="IN", help="input images; - reads one from stdin")
    process.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="an output file (its extension picks the format: .png .jpg .jpeg .webp .tif .bmp "
        ".ppm); a directory (ends with / or exists; created if missing; needed for several "
        "inputs); or - for stdout",
    )
    process.add_argument(
        "--overwrite", action="store_true", help="replace existing output files (an input is never overwritten)"
    )
    process.add_argument(
        "--plan",
        default="seed",
        help=f"seed ({' and '.join(SEED_OPS)} alternating), one op for every strip, or a comma "
        f"list with one op per strip; ops: {', '.join(OPERATIONS)} (default: seed)",
    )
    process.add_argument(
        "--strips",
        type=strips_value,
        default=None,
        help="horizontal strips, at most the image's rows (default: 2, or the length of a comma-list plan); "
        "auto: the capable workers' advertised slots (max_inflight), at most 32 and the image's rows",
    )
    process.add_argument(
        "--radius",
        type=float,
        default=None,
        help=f"blur radius, 0 < r <= {BLUR_RADIUS_MAX:g}; only with a plan that blurs (default: {BLUR_RADIUS_DEFAULT})",
    )
    process.add_argument(
        "--quality",
        type=int,
        default=None,
        help=f"JPEG/WebP output quality 1-100; only for those formats (default: {QUALITY_DEFAULT})",
    )
    process.add_argument(
        "--format",
        default=None,
        choices=FORMAT_CHOICES,
        metavar="{png,jpg,webp,tif,bmp,ppm}",
        help="format of outputs written into a directory or to stdout (default: png); jpeg and tiff are accepted too",
    )
    process.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=None,
        help="wire format to the workers (default: COORDINATOR_TRANSPORT or auto: raw on loopback, "
        "else the JPEG's own rows cut by jpegtran, or PNG)",
    )
    process.add_argument(
        "--wire-quality",
        choices=WIRE_QUALITIES,
        default=None,
        help="replies from the workers: lossless (default, COORDINATOR_WIRE_QUALITY) or high "
        "(JPEG q95, PSNR >= 45 dB, about 3.6x fewer bytes back)",
    )
    process.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="images processed at once in a batch (default: 2); they also share a budget "
        "of COORDINATOR_MAX_PIXELS pixels in flight (one 50 MP image, or four of 12 MP)",
    )
    process.add_argument(
        "--trace",
        action="store_true",
        help="print each image's trace id (its spans go to OTEL_EXPORTER_OTLP_ENDPOINT when set)",
    )
    process.add_argument(
        "--quiet", action="store_true", help="only errors and warnings: no per-strip lines, wrote lines or progress bar"
    )
    add_worker_options(process)


def build_parser(prog: str = "stripes") -> Parser:
    parser = Parser(
        prog=prog,
        epilog=EXAMPLES % {"prog": prog},
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Split images into strips, process them on the workers, stitch the result.",
    )
    parser.add_argument("--version", action="version", version=f"stripes {coordinator.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    process = commands.add_parser(
        "process",
        help="process one or more images",
        epilog=EXAMPLES % {"prog": prog},
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Process images on the workers and write the results.",
    )
    add_process_options(process)
    workers = commands.add_parser(
        "workers",
        help="show each worker's health",
        description="GET /healthz on every worker; exits 3 when none is healthy.",
    )
    add_worker_options(workers)
    return parser


def main(argv: list[str] | None = None, prog: str = "stripes") -> int:
    """The program (`stripes`, `python -m coordinator`): argv None means sys.argv, and then the
    process ends here; called with a list (tests, scripts) it returns the exit code."""
    one_blas_thread()
    code = run(argv, prog)
    if argv is None:
        exit_now(code)
    return code


def one_blas_thread() -> None:
    """Before numpy is first imported: OpenBLAS starts a thread per core at load and lets them
    spin, and on 2 shared cores they took the CPU from the imports (numpy's import 160 -> 100 ms
    measured). The coordinator calls no BLAS routine; a value the user set is kept (an empty one
    is unset, as OpenBLAS reads it)."""
    if "numpy" not in sys.modules and not os.environ.get("OPENBLAS_NUM_THREADS"):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


def exit_now(code: int) -> None:
    """Leave without the interpreter's teardown (freeing numpy buffers and modules: 130-200 ms
    measured) once everything is written: outputs are renamed into place before this, and
    stdout/stderr are flushed here. If a flush fails (say a closed pipe), return and let the
    normal exit report it."""
    from coordinator import tracing

    problem = tracing.flush(tracing.CLI_FLUSH_MS)  # spans still batched: os._exit skips the SDK's flush
    try:
        if problem:
            print(f"warning: traces not exported to {tracing.endpoint()}: {problem}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def run(argv: list[str] | None, prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    from coordinator import tracing

    if tracing.enabled():
        tracing.keep_problems()  # one warning line at exit (exit_now), not the SDK's retry lines
    try:
        config = load_config(
            args.workers,
            args.workers_file,
            os.environ,
            getattr(args, "transport", None),
            getattr(args, "wire_quality", None),
        )
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
    from coordinator.discovery import discover

    statuses = discover(config)
    rows = [("URL", "RUNTIME", "OPERATIONS", "LATENCY", "STATUS")]
    for status in statuses:
        rows.append(
            (
                status.url,
                status.runtime or "-",
                ",".join(status.operations) or "-",
                f"{status.latency_ms:.0f} ms" if status.latency_ms is not None else "-",
                "ok" if status.ok else status.error or "unhealthy",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    print_metrics([status.url for status in statuses if status.ok], config.health_timeout, config.tls)
    print(f"(workers from {config.source})")
    if not any(status.ok for status in statuses):
        print("error: no worker is healthy", file=sys.stderr)
        return EXIT_NO_WORKER
    return EXIT_OK


def print_metrics(urls: list[str], timeout: float, tls=None) -> None:
    """Each healthy worker's /metrics figures (coordinator/worker_metrics.py), one line each."""
    from coordinator import worker_metrics

    for one in worker_metrics.fetch_all(urls, timeout, tls):
        print(f"{one.url}  {worker_metrics.line(one)}")


# -- what the flags ask for, checked before any work -------------------------------------------


@dataclass(frozen=True)
class Target:
    path: Path | None  # None: stdout
    fmt: str  # imaging.OUTPUT_FORMATS value

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "stdout"


def strips_value(text: str) -> int | str:
    """--strips: a whole number, or auto (see auto_strips)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, not {text!r}") from None


def auto_strips(statuses: list[WorkerStatus], plan: str, height: int | None = None) -> int:
    """--strips auto: the capable workers' advertised slots, bounded by the strip threads and rows."""
    from coordinator.discovery import advertised_slots
    from coordinator.pieces import MAX_STRIP_THREADS

    slots = min(advertised_slots(statuses, set(parse_plan(plan, 2))), MAX_STRIP_THREADS)
    return max(1, min(slots, height)) if height is not None else slots


def job_workers(batch: Batch) -> list[WorkerStatus]:
    """The batch's workers; a pooled stack's are found again per job (cached a few seconds), so
    an instance that joins takes strips and a dead one is dropped within one interval."""
    if batch.config.pool_fleet is None:
        return batch.statuses
    from coordinator.discovery import discover

    return discover(batch.config, batch.session)


def check_flags(args: argparse.Namespace) -> tuple[int, dict]:
    """Strips and op parameters; InputError for a flag out of range or one that could not take effect."""
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, not {args.jobs}")
    if args.strips == "auto" and len([op for op in args.plan.split(",") if op.strip()]) > 1:
        raise InputError("--strips auto needs the seed plan or one op, not a comma list (its length is the count)")
    if args.strips not in (None, "auto") and args.strips < 1:
        raise InputError(f"--strips must be >= 1, not {args.strips}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise InputError(f"--quality {args.quality} is out of range 1..100")
    listed = [op for op in args.plan.split(",") if op.strip()]
    strips = args.strips if args.strips not in (None, "auto") else (len(listed) if len(listed) > 1 else 2)
    ops = parse_plan(args.plan, strips)
    if args.radius is not None and "blur" not in ops:
        raise InputError(f"--radius applies to blur, and the plan ({args.plan}) has no blur strip")
    if "-" in args.inputs and len(args.inputs) > 1:
        raise InputError("- (stdin) can only be the one input")
    return strips, check_params(ops, {"radius": args.radius})


def plan_targets(inputs: list[str], output: str, format_flag: str | None) -> list[Target]:
    """Where each input's result goes: a file, a directory (trailing / or existing) or stdout."""
    directory = output != STDIO and (output.endswith(("/", os.sep)) or Path(output).is_dir())
    if len(inputs) > 1 and not directory:
        where = "stdout" if output == STDIO else output
        raise InputError(
            f"{len(inputs)} inputs need -o to be a directory, not {where}: end it with / "
            f"(e.g. -o {output.rstrip('/') if output != STDIO else 'results'}/)"
        )
    from coordinator import imaging

    extension = FORMAT_CHOICES[format_flag or "png"]
    if output == STDIO:
        return [Target(None, imaging.format_for_path(f"out.{extension}"))]
    if directory:
        paths = [Path(output) / f"{'stdin' if name == STDIO else Path(name).stem}.{extension}" for name in inputs]
        seen: dict[Path, str] = {}
        for name, path in zip(inputs, paths, strict=True):
            if path in seen:
                raise InputError(f"{seen[path]} and {name} would both be written to {path}")
            seen[path] = name
        return [Target(path, imaging.format_for_path(path)) for path in paths]
    path = Path(output)
    fmt = imaging.format_for_path(path)
    if format_flag and imaging.format_for_path(f"out.{extension}") != fmt:
        raise InputError(
            f"--format {format_flag} contradicts -o {path.name}: an output file's extension "
            "picks its format (--format is for a directory or stdout)"
        )
    if not path.parent.is_dir():
        raise InputError(f"output directory {path.parent} does not exist (end -o with / to create it)")
    return [Target(path, fmt)]


def file_key(path: str | Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def check_targets(inputs: list[str], targets: list[Target], overwrite: bool, quality: int | None) -> None:
    """Never over an input; over an existing file only with --overwrite; --quality only where it counts."""
    sources = {file_key(name): name for name in inputs if name != STDIO}
    existing = []
    for target in targets:
        key = file_key(target.path) if target.path is not None else None
        if key is not None and key in sources:
            raise InputError(f"refusing to write {target.path} over its input {sources[key]}")
        if key is not None:
            existing.append(target.path)
    if existing and not overwrite:
        what = f"{existing[0]} exists" if len(existing) == 1 else f"{len(existing)} outputs exist ({existing[0]}, ...)"
        raise InputError(f"{what}; pass --overwrite to replace {'it' if len(existing) == 1 else 'them'}")
    unqualified = sorted({target.fmt for target in targets} - set(QUALITY_FORMATS))
    if quality is not None and unqualified:
        raise InputError(f"--quality applies to JPEG and WebP outputs, not {unqualified[0].upper()}")
    if targets[0].path is None and sys.stdout.isatty():
        raise InputError("-o - writes image bytes to stdout, which is a terminal: redirect it to a file or pipe")


def prepare_outputs(targets: list[Target]) -> None:
    """Create the output directory once every check has passed."""
    directory = targets[0].path.parent if targets[0].path is not None else None
    if directory is not None and not directory.is_dir():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create output directory {directory}: {exc.strerror or exc}") from None


# -- writing ------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, replace: bool = True) -> None:
    """Write beside the target, then rename: readers never see a half-written file. A new file
    gets its mode from the umask like any other; a replaced one keeps its mode. With
    replace=False an existing target is kept, even one that appeared during the run
    (FileExistsError)."""
    temp = path.parent / f".{path.name}.{os.urandom(4).hex()}.tmp"  # not secrets: it loads hashlib (~5 ms)
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with contextlib.suppress(FileNotFoundError):
            if replace:
                os.fchmod(descriptor, stat.S_IMODE(os.stat(path).st_mode))
        with open(descriptor, "wb") as handle:
            handle.write(data)
        publish(temp, path, replace)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def publish(temp: Path, path: Path, replace: bool) -> None:
    if replace:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)  # atomic, and fails if the target exists
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP) or path.exists():
            raise
        os.replace(temp, path)  # a file system without hard links
        return
    os.unlink(temp)


def write_output(target: Target, data: bytes, replace: bool) -> None:
    if target.path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(target.path, data, replace)


def read_input(name: str) -> bytes:
    if name == STDIO:
        if sys.stdin.isatty():
            raise InputError("- reads the image from stdin, which is a terminal: pipe or redirect a file into it")
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None


def human_size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    return f"{size / 1e3:.1f} kB" if size < 1_000_000 else f"{size / 1e6:.1f} MB"


def strip_summary(name: str, strips: list[StripResult]) -> list[str]:
    lines = []
    for strip in strips:
        worker_ms = f", worker {strip.worker_ms:.0f} ms" if strip.worker_ms is not None else ""
        failover = f", after {'; '.join(strip.failovers)}" if strip.failovers else ""
        lines.append(
            f"{name}: strip {strip.index + 1}/{len(strips)} rows {strip.top}-{strip.bottom - 1} "
            f"{strip.op} on {strip.worker_url} ({strip.runtime}) {strip.total_ms:.0f} ms{worker_ms}"
            f" via {strip.wire} [request {strip.request_id}]{failover}"
        )
    return lines


# -- running ------------------------------------------------------------------------------------


class PixelBudget:
    """Admits jobs while the pixels in flight stay within `budget`; one job always runs, however
    large, so a batch can never stall."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        with self.changed:
            self.changed.wait_for(lambda: self.used == 0 or self.used + pixels <= self.budget)
            self.used += pixels
        try:
            yield
        finally:
            with self.changed:
                self.used -= pixels
                self.changed.notify_all()


class Progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool, total_strips: int):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("strips"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                transient=True,
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task("", total=total_strips)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc_info):
        if self.bar:
            self.bar.refresh()
            self.bar.stop()

    def line(self, text: str) -> None:
        """A line on stderr, above the bar while it is shown."""
        if self.bar:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr)

    def advance(self, strips: int) -> None:
        """Count strips that will not come (their input failed, or had fewer rows than strips)."""
        if self.bar and strips > 0:
            self.bar.advance(self.task, strips)

    def on_event(self, event: StripEvent) -> None:
        if not self.bar:
            return
        if event.kind == "done":
            self.bar.advance(self.task)
        elif event.kind == "retry":
            self.bar.update(self.task, description=f"strip {event.index + 1} retrying: {event.message}"[:60])


@dataclass
class Batch:
    """What every input of one `process` run shares."""

    args: argparse.Namespace
    config: CoordinatorConfig
    strips: int
    params: dict
    statuses: list[WorkerStatus]
    session: object
    budget: PixelBudget
    progress: Progress
    lock: threading.Lock


def check_input(batch: Batch, size: tuple[int, int] | None, target: Target) -> None:
    """Refuse before any work what the output format or --strips cannot do with this image."""
    if size is None:
        return  # unreadable header: decoding says why
    from coordinator import imaging

    width, height = size
    imaging.check_output_size(target.fmt, width, height)
    if isinstance(batch.args.strips, int) and batch.args.strips > height:
        raise InputError(f"--strips {batch.args.strips} is more than the {height} rows of the image")


def produce(batch: Batch, name: str, data: bytes, target: Target, on_event) -> tuple[int, list[StripResult]]:
    """Decode, process, encode and write one image; returns the bytes written and the strips."""
    from coordinator import imaging
    from coordinator.engine import run_job, undecoded_size

    size = undecoded_size(data, batch.config)  # a JPEG cut losslessly: no decode here, no alpha
    pixels, alpha = (size, None) if size else imaging.decode_with_alpha(data, batch.config.max_pixels)
    height, width = size or pixels.shape[:2]
    imaging.check_output_size(target.fmt, width, height)
    workers = job_workers(batch)
    auto = batch.args.strips == "auto"
    result = run_job(
        data,
        batch.config,
        plan=batch.args.plan,
        strips=auto_strips(workers, batch.args.plan, height) if auto else batch.strips,
        params=batch.params,
        on_event=on_event,
        workers=workers,
        session=batch.session,
        pixels=pixels,
        png_level=batch.config.png_level if target.fmt == "png" and alpha is None else None,
    )
    del pixels
    output = imaging.with_alpha(result.pixels, alpha, result.strips, batch.params.get("radius"))
    if alpha is not None and target.fmt not in imaging.ALPHA_FORMATS:
        with batch.lock:
            batch.progress.line(
                f"warning: {name} has transparency and {target.fmt.upper()} has none: "
                "the result is flattened onto white (PNG, WebP and TIFF keep it)"
            )
    encoded = result.png or imaging.encode_output(
        output, target.fmt, batch.args.quality or QUALITY_DEFAULT, batch.config.png_level
    )
    write_output(target, encoded, replace=batch.args.overwrite)
    return len(encoded), result.strips


def process_one(batch: Batch, name: str, target: Target) -> int:
    """One input to one output; its errors are reported here and the batch goes on."""
    started, done = time.perf_counter(), [0]

    def on_event(event: StripEvent) -> None:
        done[0] += event.kind == "done"
        batch.progress.on_event(event)

    from coordinator import imaging

    prefix = f"{name}: " if len(batch.args.inputs) > 1 else ""
    try:
        data = read_input(name)
        size = imaging.probe_size(data)
        check_input(batch, size, target)
        with batch.budget.hold(size[0] * size[1] if size else 0):
            written, strips = produce(batch, name, data, target, on_event)
    except CoordinatorError as exc:
        with batch.lock:
            return fail(exc, prefix=prefix)
    except OSError as exc:  # e.g. the output disk is full: this input fails, the batch goes on
        with batch.lock:
            print(f"error: {prefix}cannot write {target.name}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNEXPECTED
    finally:
        batch.progress.advance(batch.strips - done[0])
    if batch.args.trace and strips:
        with batch.lock:
            batch.progress.line(f"{prefix}trace {strips[0].trace_id}")
    if not batch.args.quiet:
        with batch.lock:
            for line in strip_summary(name, strips):
                batch.progress.line(line)
            batch.progress.line(
                f"wrote {target.name} ({human_size(written)}, {(time.perf_counter() - started) * 1000:.0f} ms)"
            )
    return EXIT_OK


def return_freed_memory() -> None:
    """Large buffers go straight to mmap and back to the system when freed (glibc; else nothing)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


class InBackground:
    """function(*args) started now on a daemon thread; result() waits for it and re-raises its error."""

    def __init__(self, function, *args):
        self.value, self.error = None, None
        self.thread = threading.Thread(target=self.run, args=(function, args), daemon=True)
        self.thread.start()

    def run(self, function, args) -> None:
        try:
            self.value = function(*args)
        except BaseException as exc:  # handed to result()'s caller
            self.error = exc

    def result(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def process_command(args: argparse.Namespace, config: CoordinatorConfig) -> int:
    from coordinator.discovery import discover
    from coordinator.pieces import MAX_STRIP_THREADS, make_session

    strips, params = check_flags(args)
    most = MAX_STRIP_THREADS if args.strips == "auto" else strips
    session = make_session(most * max(1, min(args.jobs, len(args.inputs))))
    # The health probes go out now and the workers answer while numpy and Pillow load (imaging,
    # below): a probe's few ms off the fixed cost. Its errors are raised only after the checks
    # of the outputs, so a usage error still comes first.
    probes = InBackground(discover, config, session)
    targets = plan_targets(args.inputs, args.output, args.format)
    check_targets(args.inputs, targets, args.overwrite, args.quality)
    prepare_outputs(targets)
    return_freed_memory()
    statuses: list[WorkerStatus] = probes.result()
    if args.strips == "auto":
        strips = auto_strips(statuses, args.plan)
    if any(status.ok for status in statuses) and not args.quiet:
        for status in statuses:  # reported, not fatal: the healthy ones take the strips
            if not status.ok:
                print(f"warning: worker {status.url} skipped: {status.error}", file=sys.stderr)
    interactive = sys.stderr.isatty() and not args.quiet
    with Progress(interactive, strips * len(args.inputs)) as progress:
        batch = Batch(
            args,
            config,
            strips,
            params,
            statuses,
            session,
            PixelBudget(BATCH_BUDGET_IMAGES * config.max_pixels),
            progress,
            threading.Lock(),
        )
        if len(args.inputs) == 1:
            codes = [process_one(batch, args.inputs[0], targets[0])]
        else:
            codes = process_many(batch, targets)
    session.close()
    return summarise(codes, args.quiet)


def process_many(batch: Batch, targets: list[Target]) -> list[int]:
    """A batch, --jobs images at once; Ctrl-C ends all of them."""
    from concurrent.futures import ThreadPoolExecutor

    from coordinator.engine import cancel_on_interrupt

    with ThreadPoolExecutor(max_workers=batch.args.jobs) as pool, cancel_on_interrupt():
        return list(pool.map(lambda pair: process_one(batch, *pair), zip(batch.args.inputs, targets, strict=True)))


def summarise(codes: list[int], quiet: bool) -> int:
    """The batch's exit code: the first failure's; one summary line for a batch."""
    failed = [code for code in codes if code != EXIT_OK]
    code = failed[0] if failed else EXIT_OK
    if len(codes) > 1 and (failed or not quiet):
        line = f"{len(codes)} inputs: {len(codes) - len(failed)} written, {len(failed)} failed (exit {code})"
        print(f"error: {line}" if failed else line, file=sys.stderr)
    return code
