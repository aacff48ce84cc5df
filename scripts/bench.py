"""`make bench`: the coordinator against the one-process bound and the original design.

    python -m scripts.bench [--runs 5] [--megapixels 1,12,48] [--level 2] [--bound-level 1] [--wires png]

For each size, makes a photo-like JPEG, starts both workers on free loopback ports, and times
(interleaved run by run, so background load hits every design alike):
  (a) this coordinator in-process: JPEG bytes in -> stitched PNG bytes out (seed plan,
      2 strips, 2 workers, auto transport = raw PPM on loopback, parallel PNG encode);
  (A) the same as a user runs it: `python -m coordinator process in.jpg -o out.png` as a
      whole process, start to exit (imports, discovery, file write, teardown included);
  (b) the one-process bound in-process: decode, the same ops (the Python worker's own
      functions), stitch and PNG with Pillow at --bound-level (default 1, issue 15's bound);
  (B) the bound as a whole `python -c` program, file to file;
  (F) the CLI's fixed cost, at the smallest size: start to its first worker connection (seen
      by a pass-through relay in front of each worker) and last output byte (to a pipe, -o -)
      to exit;
  (c) the original design, re-created (scripts/README.md says how it was checked): strips
      saved as PNG level 6, posted one after the other as multipart (field `image`, no op ->
      each worker's primary), the workers' default PNG reply, stitch, final PNG level 6.
Prints per size the median, min-max and PNG size of each, the ratios (c)/(a), (a)/(b) and
(A)/(B); for 12 MP also where (a)'s time goes, the wire formats and PNG filter choices.
Whole processes run as installed: Python's bytecode cache on, in a private folder (pip compiles
it at install, a checkout writes __pycache__ on first run; under PYTHONDONTWRITEBYTECODE=1 every
changed module is recompiled each run), after one untimed run of each.
Numbers are wall time on whatever else the machine runs (the load average is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image, ImageOps
from worker_python import ops as python_ops

from coordinator import imaging, pngfast
from coordinator.config import CoordinatorConfig
from coordinator.engine import make_session, run_job
from scripts.testkit.cli import clean_env
from scripts.testkit.faultproxy import FaultProxy
from scripts.testkit.images import encoded, photo
from scripts.testkit.procs import ROOT, start_worker

WIRE_RUNS = 2
# Issue 15's targets, by ratio's numerator and size in MP.
TARGETS = {
    ("c", 12.0): ">= 10x",
    ("a", 12.0): "<= 0.8x",
    ("a", 48.0): "<= 0.7x",
    ("A", 1.0): "<= 1.5x",
    ("rss", 48.0): "<= 1.1x",
}
FIXED_COST_TARGET_MS = 150
PROCESS_TIMEOUT = 600
LARGE_MP, LARGE_RUNS = 12.0, 3  # above LARGE_MP at most LARGE_RUNS runs: (c) takes ~1 min a run at 48 MP


def photo_jpeg(megapixels: float, seed: int = 12) -> bytes:
    """A 4:3 photo-like JPEG (scripts/testkit/images.py's photo)."""
    height = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    width = int(round(height * 4 / 3))
    return encoded(photo(width, height, seed), "JPEG", quality=90)


def one_size_args(argv: list[str] | None, description: str, runs: int, runs_help: str) -> argparse.Namespace | None:
    """--runs and --megapixels of a one-size bench (bench_observe, bench_tls), checked; None after
    the one-line error (the caller exits 2)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs, help=f"{runs_help} (default {runs})")
    parser.add_argument("--megapixels", type=float, default=12.0, help="image size (default 12)")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100 or not 0.1 <= args.megapixels <= 50:
        print("error: --runs must be 1-100 and --megapixels 0.1-50", file=sys.stderr)
        return None
    return args


def coordinator_run(jpeg: bytes, config: CoordinatorConfig, level: int, overlap: bool = True) -> tuple[bytes, dict]:
    """(a): what `python -m coordinator process in.jpg -o out.png` does, minus file I/O.
    overlap=False, an A/B: the input decoded before the job, the PNG encoded after it (as
    before the job started uploads undecoded JPEG cuts and deflated the output as replies arrive)."""
    started = time.perf_counter()
    session = make_session(2)
    pixels = None if overlap else imaging.decode_pixels(jpeg, config.max_pixels)
    result = run_job(
        jpeg, config, plan="seed", strips=2, session=session, pixels=pixels, png_level=level if overlap else None
    )
    encode_started = time.perf_counter()
    out = result.png if overlap else imaging.encode_output(result.pixels, "png", png_level=level)
    finished = time.perf_counter()
    session.close()
    parts = dict(result.timings)
    # the encode not overlapped with the job: with overlap, what was left after the last reply
    parts["encode_ms"] = (finished - encode_started) * 1000 + parts.get("png_finish_ms", 0)
    parts["total_ms"] = (finished - started) * 1000
    parts["worker_ms"] = max(s.worker_ms or 0 for s in result.strips)
    return out, parts


def one_process_run(jpeg: bytes, level: int) -> tuple[bytes, dict]:
    """(b): the same work in one Python process with Pillow."""
    started = time.perf_counter()
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    middle = height // 2
    top = python_ops.apply("grayscale", image.crop((0, 0, width, middle)))
    bottom = python_ops.apply("sepia", image.crop((0, middle, width, height)))
    stitched = Image.new("RGB", (width, height))
    stitched.paste(top, (0, 0))
    stitched.paste(bottom, (0, middle))
    encode_started = time.perf_counter()
    buffer = io.BytesIO()
    stitched.save(buffer, "PNG", compress_level=level)
    finished = time.perf_counter()
    return buffer.getvalue(), {"encode_ms": (finished - encode_started) * 1000, "total_ms": (finished - started) * 1000}


def original_run(jpeg: bytes, urls: list[str]) -> tuple[bytes, dict]:
    """(c): the original coordinator: PNG level 6 everywhere, one strip after the other."""
    started = time.perf_counter()
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    image = image.convert("RGB")
    width, height = image.size
    middle = height // 2
    boxes = [(0, 0, width, middle), (0, middle, width, height)]
    stitched = Image.new("RGB", (width, height))
    with requests.Session() as session:
        for url, box in zip(urls, boxes, strict=True):  # one half per worker
            buffer = io.BytesIO()
            image.crop(box).save(buffer, "PNG")
            reply = session.post(
                f"{url}/process", files={"image": ("strip.png", buffer.getvalue(), "image/png")}, timeout=120
            )
            reply.raise_for_status()
            stitched.paste(Image.open(io.BytesIO(reply.content)).convert("RGB"), (0, box[1]))
    encode_started = time.perf_counter()
    buffer = io.BytesIO()
    stitched.save(buffer, "PNG")
    finished = time.perf_counter()
    return buffer.getvalue(), {"encode_ms": (finished - encode_started) * 1000, "total_ms": (finished - started) * 1000}


def decoded(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def median(samples: list[dict], key: str) -> float:
    return statistics.median(sample[key] for sample in samples)


def spread(samples: list[dict], key: str = "total_ms") -> str:
    values = [sample[key] for sample in samples]
    return f"{min(values):.0f}-{max(values):.0f}"


# The one-process bound as a whole program: what someone would write without workers.
ONE_PROCESS_SCRIPT = """
import sys
from PIL import Image, ImageOps
from worker_python import ops
source, target, level = sys.argv[1], sys.argv[2], int(sys.argv[3])
image = ImageOps.exif_transpose(Image.open(source)).convert("RGB")
width, height = image.size
middle = height // 2
stitched = Image.new("RGB", (width, height))
stitched.paste(ops.apply("grayscale", image.crop((0, 0, width, middle))), (0, 0))
stitched.paste(ops.apply("sepia", image.crop((0, middle, width, height))), (0, middle))
stitched.save(target, "PNG", compress_level=level)
"""


PYCACHE = [""]  # the bench's bytecode folder, in its temporary directory (set by main)


def process_env(env: dict | None = None) -> dict:
    """A whole process's environment: no COORDINATOR_* of ours, bytecode cached in PYCACHE as
    an installed program has it."""
    return clean_env({"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": PYCACHE[0], **(env or {})})


def timed_process(command: list[str], env: dict | None = None) -> dict:
    """Wall time, CPU time and peak RSS of one whole process, start to exit (killed after
    PROCESS_TIMEOUT s); a failure is its last stderr line."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, env=process_env(env), stdout=subprocess.DEVNULL, stderr=errors)
        killer = threading.Timer(PROCESS_TIMEOUT, child.kill)
        killer.start()
        peak, done = [0.0], threading.Event()
        watcher = threading.Thread(target=watch_peak_rss, args=(child.pid, done, peak), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        done.set()
        killer.cancel()
        watcher.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            last = (errors.read().decode(errors="replace").strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"exit {child.returncode}: {last}")
    return {"total_ms": elapsed * 1000, "rss_mb": peak[0], "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000}


def process_tree(pid: int) -> list[int]:
    """A process and its descendants now (a gunicorn master and its workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit():
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(parents.get(tree[-1], []))
    return tree


def cpu_ms(pids: list[int]) -> float:
    """CPU time used so far by every thread of these processes (schedstat, in ns)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e6


def watch_peak_rss(pid: int, done: threading.Event, peak: list[float]) -> None:
    """The child's VmHWM (MB) until it exits, polled every 5 ms. Not ru_maxrss: that starts
    from this (large) parent's RSS at fork and exec, so small children all read the same."""
    while not done.is_set():
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]) / 1024)
        done.wait(0.005)


def cli_process(source: Path, target: Path, urls: list[str], level: int, worker_pids: list[int]) -> dict:
    """(A): `python -m coordinator process in.jpg -o out.png` as a user runs it, files and all;
    its CPU time counts the workers' too (the bound does their work itself)."""
    command = [sys.executable, "-m", "coordinator", "process", str(source), "-o", str(target), "--overwrite"]
    workers_before = cpu_ms(worker_pids)
    parts = timed_process([*command, "--quiet", "--workers", ",".join(urls)], {"COORDINATOR_PNG_LEVEL": str(level)})
    parts["cpu_ms"] += cpu_ms(worker_pids) - workers_before
    parts["bytes"] = target.stat().st_size
    return parts


class FirstContact(FaultProxy):
    """A pass-through relay in front of a worker that notes when a connection first reached it
    (the CLI's health probe) and when the first POST began (its first strip)."""

    def __init__(self, upstream_url: str):
        super().__init__(upstream_url)
        self.first: float | None = None
        self.first_post: float | None = None

    def _handle(self, client) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        super()._handle(Stamped(client, self))


class Stamped:
    """A client socket whose recv notes the relay's first POST: a request's head arrives at the
    start of a read (the client sends it whole, after reading the previous reply)."""

    def __init__(self, sock, relay: FirstContact):
        self._sock, self._relay = sock, relay

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        if self._relay.first_post is None and data.startswith(b"POST "):
            self._relay.first_post = time.perf_counter()
        return data

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def fixed_cost(source: Path, relays: list[FirstContact], level: int) -> dict:
    """(F): the CLI from start to its first worker connection, and from the last byte of its
    output (to a pipe) to its exit; both are the user's wait that no image size changes."""
    for relay in relays:
        relay.first = relay.first_post = None
    urls = ",".join(relay.url for relay in relays)
    command = [sys.executable, "-m", "coordinator", "process", str(source), "-o", "-", "--quiet", "--workers", urls]
    started = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=ROOT, env=process_env({"COORDINATOR_PNG_LEVEL": str(level)}), stdout=subprocess.PIPE
    )
    killer = threading.Timer(PROCESS_TIMEOUT, child.kill)  # a hung run ends the read below too
    killer.start()
    last, length = started, 0
    while chunk := child.stdout.read1(1 << 20):
        last, length = time.perf_counter(), length + len(chunk)
    code = child.wait()
    exited = time.perf_counter()
    killer.cancel()
    child.stdout.close()
    contacts = [relay.first for relay in relays if relay.first is not None]
    posts = [relay.first_post for relay in relays if relay.first_post is not None]
    if code != 0 or not contacts or not posts or not length:
        raise RuntimeError(f"exit {code}, {length} bytes out, {len(contacts)} workers reached, {len(posts)} posts")
    start_ms, exit_ms = (min(contacts) - started) * 1000, (exited - last) * 1000
    parts = {"start_ms": start_ms, "post_ms": (min(posts) - started) * 1000, "exit_ms": exit_ms, "bytes": length}
    return {"total_ms": start_ms + exit_ms, **parts}


def bound_process(source: Path, target: Path, level: int) -> dict:
    """(B): the one-process bound as a whole `python -c` program, files and all."""
    parts = timed_process([sys.executable, "-c", ONE_PROCESS_SCRIPT, str(source), str(target), str(level)])
    parts["bytes"] = target.stat().st_size
    return parts


@dataclasses.dataclass
class SizeRun:
    """One input size: every design's samples (a dict per run), outputs and failures."""

    megapixels: float
    size: tuple[int, int]
    samples: dict[str, list[dict]]
    outputs: dict[str, bytes]
    failed: dict[str, str]


def runs_for(megapixels: float, runs: int) -> int:
    return runs if megapixels <= LARGE_MP else max(1, min(runs, LARGE_RUNS))


def bench_size(
    megapixels: float,
    runs: int,
    urls: list[str],
    levels: tuple[int, int],
    tmp: Path,
    relays: list | None = None,
    worker_pids: list[int] | None = None,
) -> SizeRun:
    """All five designs at one size (and (F) given relays), interleaved run by run so background
    load hits them alike."""
    level, bound_level = levels
    jpeg = photo_jpeg(megapixels)
    source = tmp / f"in-{megapixels:g}mp.jpg"
    source.write_bytes(jpeg)
    config = CoordinatorConfig(workers=tuple(urls), source="bench", png_level=level)
    designs = {
        "a": lambda: coordinator_run(jpeg, config, level),
        "A": lambda: (None, cli_process(source, tmp / "out-A.png", urls, level, worker_pids or [])),
        "b": lambda: one_process_run(jpeg, bound_level),
        "B": lambda: (None, bound_process(source, tmp / "out-B.png", bound_level)),
        "c": lambda: original_run(jpeg, urls),
    }
    if relays:
        designs["F"] = lambda: (None, fixed_cost(source, relays, level))
    run = SizeRun(megapixels, Image.open(io.BytesIO(jpeg)).size, {name: [] for name in designs}, {}, {})
    for warm_up in ("a", "A", "B"):  # imports, thread pools, first connections, bytecode cache
        with contextlib.suppress(Exception):
            designs[warm_up]()
    for _ in range(runs_for(megapixels, runs)):
        for name, design in designs.items():
            if name in run.failed:
                continue
            try:
                out, parts = design()
            except Exception as exc:  # reported in its row; the other designs go on
                run.failed[name] = " ".join(str(exc).split())[:100]
                continue
            if out is not None:
                parts["bytes"] = len(out)
                run.outputs[name] = out
            run.samples[name].append(parts)
    return run


def check_exact(run: SizeRun) -> str | None:
    """(a) and (c) must match (b) within 1 per channel (JPEG decode rounding); None if so."""
    if "b" not in run.outputs:
        return None
    reference = decoded(run.outputs["b"]).astype(np.int16)
    for name in ("a", "c"):
        if name in run.outputs:
            difference = int(np.abs(decoded(run.outputs[name]).astype(np.int16) - reference).max())
            if difference > 1:
                return f"({name}) differs from (b) by {difference} in some channel at {run.megapixels:g} MP"
    return None


def print_sizes(sizes: list[SizeRun], levels: tuple[int, int]) -> None:
    level, bound_level = levels
    texts = {
        "a": f"coordinator in-process: JPEG bytes -> PNG {level} bytes",
        "A": "coordinator CLI, whole process, file to file",
        "b": f"one-process bound in-process, Pillow PNG {bound_level}",
        "B": "one-process bound, whole `python -c` process, file to file",
        "c": "original: PNG 6 strips one by one as multipart, PNG 6 out",
    }
    print(f"{'':8}{'':5}{'design':60}{'median ms':>10}{'min-max':>14}{'PNG MB':>8}{'peak RSS MB':>12}")
    for run in sizes:
        label = f"{run.megapixels:g} MP"
        for name, text in texts.items():
            samples = run.samples[name]
            if name in run.failed or not samples:
                print(f"{label:8}({name}) {text:60}  failed: {run.failed.get(name, 'no run')}")
            else:
                value, mb = median(samples, "total_ms"), median(samples, "bytes") / 1e6
                rss = f"{median(samples, 'rss_mb'):.0f}" if "rss_mb" in samples[0] else "-"
                print(f"{label:8}({name}) {text:60}{value:10.0f}{spread(samples):>14}{mb:8.1f}{rss:>12}")
            label = ""
    print()
    print(f"{'':8}{'ratio (medians)':44}{'value':>8}  target")
    for run in sizes:
        label = f"{run.megapixels:g} MP"
        for top, bottom, text in (
            ("c", "a", "(c)/(a) faster than the original"),
            ("a", "b", "(a)/(b) of the one-process bound"),
            ("A", "B", "(A)/(B) whole processes"),
        ):
            if run.samples[top] and run.samples[bottom] and not {top, bottom} & set(run.failed):
                ratio = median(run.samples[top], "total_ms") / median(run.samples[bottom], "total_ms")
                print(f"{label:8}{text:44}{ratio:7.2f}x  {TARGETS.get((top, run.megapixels), '')}")
                label = ""
        if run.samples["A"] and run.samples["B"] and not {"A", "B"} & set(run.failed):
            ratio = median(run.samples["A"], "rss_mb") / median(run.samples["B"], "rss_mb")
            print(f"{label:8}{'(A)/(B) peak RSS':44}{ratio:7.2f}x  {TARGETS.get(('rss', run.megapixels), '')}")
            cpu_a, cpu_b = median(run.samples["A"], "cpu_ms"), median(run.samples["B"], "cpu_ms")
            print(
                f"{'':8}{'(A)/(B) CPU time, the CLI + both workers':44}{cpu_a / cpu_b:7.2f}x  "
                f"({cpu_a:.0f} vs {cpu_b:.0f} ms: what a saturated machine's wall time tends to)"
            )
    counts = ", ".join(f"{run.megapixels:g} MP {len(run.samples['B'])}" for run in sizes)
    print(f"timed runs per size: {counts}")
    for run in sizes:
        if "F" in run.failed:
            print(f"{run.megapixels:g} MP (F) CLI fixed cost: failed: {run.failed['F']}")
        elif run.samples.get("F"):
            print_fixed_cost(run)


def print_fixed_cost(run: SizeRun) -> None:
    samples = run.samples["F"]
    print(f"{run.megapixels:g} MP (F) CLI fixed cost, whole process, median of {len(samples)} (min-max):")
    for key, text, target in (
        ("start_ms", "start -> first worker connection (its health probe)", ""),
        ("exit_ms", "last output byte (to a pipe) -> exit", ""),
        ("total_ms", "fixed cost: the two together", f"<= {FIXED_COST_TARGET_MS} ms"),
        ("post_ms", "start -> first strip POST (imports and decode done)", ""),
    ):
        print(f"  {text:58}{median(samples, key):6.0f} ms {spread(samples, key):>10}  {target}")


def print_detail(run: SizeRun, level: int, wires: dict[str, list[dict]], runs: int) -> None:
    samples = run.samples["a"]
    c = median(run.samples["c"], "total_ms")
    # Derived, not timed: how much of (c)'s lead is only its final level-6 encode.
    c_same_encode = c - median(run.samples["c"], "encode_ms") + median(samples, "encode_ms")
    print(
        f"{run.megapixels:g} MP: (c) with (a)'s final encode instead of its own: ~{c_same_encode:.0f} ms, "
        f"{c_same_encode / median(samples, 'total_ms'):.1f}x (a) (derived from the medians)"
    )
    print()
    print(f"where (a)'s time goes at {run.megapixels:g} MP (medians, ms):")
    for key, text in (
        ("decode_ms", "decode JPEG before the job (0: the first PPM body does)"),
        ("discover_ms", "GET /healthz on both workers"),
        ("dispatch_ms", "dispatch: decode, PPM both ways, workers, stitch, deflate"),
        ("worker_ms", "  of which the slower worker's own time (X-Processing-Ms)"),
        ("stitch_ms", "  of which copying strips into the result"),
        ("encode_ms", f"PNG encode left after the last reply, level {level}"),
    ):
        print(f"  {text:58}{median(samples, key):8.0f}")
    print(
        f"(b) spends {median(run.samples['b'], 'encode_ms'):.0f} ms in its PNG encode; "
        f"(c) spends {median(run.samples['c'], 'encode_ms'):.0f} ms in its final PNG encode"
    )
    print()
    print(f"(a) with each wire format for strips (raw: median of {runs}; others: median of {WIRE_RUNS}):")
    for wire, runs_of in {"raw": samples, **wires}.items():
        total, dispatch = median(runs_of, "total_ms"), median(runs_of, "dispatch_ms")
        print(f"  {wire:15}total {total:6.0f} ms   dispatch {dispatch:6.0f} ms")
    print()
    print(f"final encode, PNG filter choice at level {level} (median of 3):")
    for name, seconds, length in filter_table(decoded(run.outputs["a"]), level):
        print(f"  {name:6}{seconds * 1000:8.0f} ms{length / 1e6:8.1f} MB")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (default 5, at least 1)")
    parser.add_argument(
        "--megapixels",
        type=size_list,
        default=[1.0, 12.0, 48.0],
        help=f"input sizes, comma list (default 1,12,48; above {LARGE_MP:g} MP at most {LARGE_RUNS} runs)",
    )
    parser.add_argument(
        "--level",
        type=int,
        default=None,
        help="PNG zlib level of (a) and (A) (default COORDINATOR_PNG_LEVEL's default)",
    )
    parser.add_argument("--bound-level", type=int, default=1, help="PNG level of the bound (b), (B) (default 1)")
    parser.add_argument(
        "--wires",
        type=wire_list,
        default=["png"],
        help="other strip wire formats to time against raw at 12 MP (or the first size) (default png; "
        "webp-lossless is slow: minutes at 12 MP)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = max(1, args.runs)
    level = CoordinatorConfig().png_level if args.level is None else args.level
    levels = (level, args.bound_level)
    detail_mp = 12.0 if 12.0 in args.megapixels else args.megapixels[0]
    print(
        f"sizes {', '.join(f'{mp:g}' for mp in args.megapixels)} MP photo-like JPEGs; {runs} runs each "
        f"(at most {LARGE_RUNS} above {LARGE_MP:g} MP); shared machine, load average "
        f"{os.getloadavg()[0]:.1f} at the start: treat small differences as noise"
    )
    smallest = min(args.megapixels)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        PYCACHE[0] = str(Path(tmp) / "pycache")
        workers = [start_worker("python", Path(tmp)), start_worker("nodejs", Path(tmp))]
        relays = [FirstContact(worker.url).start() for worker in workers]
        try:
            urls = [worker.url for worker in workers]
            worker_pids = [pid for worker in workers for pid in process_tree(worker.pid)]
            sizes = [
                bench_size(mp, runs, urls, levels, Path(tmp), relays if mp == smallest else None, worker_pids)
                for mp in args.megapixels
            ]
            detail = next(run for run in sizes if run.megapixels == detail_mp)
            jpeg = photo_jpeg(detail_mp)
            config = CoordinatorConfig(workers=tuple(urls), source="bench", png_level=level)
            wires = {}
            for wire in args.wires:  # why auto picks raw on loopback
                wire_config = dataclasses.replace(config, transport=wire)
                wires[wire] = [coordinator_run(jpeg, wire_config, level)[1] for _ in range(WIRE_RUNS)]
        finally:
            for relay in relays:
                relay.stop()
            for worker in workers:
                worker.stop()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for run in sizes:
        problem = check_exact(run)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
    print()
    print_sizes(sizes, levels)
    print()
    if {"a", "b", "c"} <= {name for name, samples in detail.samples.items() if samples} and not detail.failed:
        print_detail(detail, level, wires, runs)
    return 0


def size_list(text: str) -> list[float]:
    try:
        sizes = [float(size) for size in text.split(",") if size.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None
    if not sizes or any(size <= 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be > 0: {text!r}")
    return sizes


def wire_list(text: str) -> list[str]:
    wires = [wire.strip() for wire in text.split(",") if wire.strip() and wire.strip() != "raw"]
    unknown = [wire for wire in wires if wire not in ("png", "webp-lossless")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown wire format {unknown[0]!r} (png, webp-lossless)")
    return wires


def filter_table(pixels: np.ndarray, level: int) -> list[tuple[str, float, int]]:
    rows = []
    for name in pngfast.FILTERS:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            length = len(pngfast.encode_png(pixels, level=level, png_filter=name))
            times.append(time.perf_counter() - started)
        rows.append((name, statistics.median(times), length))
    return rows


if __name__ == "__main__":
    sys.exit(main())
