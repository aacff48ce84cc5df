"""`make bench`, batch part: `python -m coordinator process` on a batch of 4K photos against a
local 2-process Pillow pool doing the same work.

    python -m scripts.bench_batch [--images 20] [--runs 2] [--jobs 2]

Writes N photo-like 3840x2160 JPEGs to a temporary directory, starts both workers on free
loopback ports, and times, interleaved, wall clock from start to the last PNG written:
  (a) `python -m coordinator process *.jpg -o OUT/ --jobs J` (seed plan, 2 strips, auto
      transport = raw on loopback), as a user runs it (a fresh process each time);
  (b) a multiprocessing pool of 2 processes, each image: Pillow decode, the Python worker's
      own grayscale/sepia on the two halves, stitch, Pillow PNG at the same zlib level.
Prints medians, images/s, (a)/(b) throughput (target >= 0.9) and bytes per image.

Then the scaling table (issue 17): the same CLI batch (--scale-images photo-like 1920x1080 JPEGs,
blur plan, --jobs 2) against 1+1 and 2+2 loopback workers (python+nodejs), medians over
--scale-runs runs each, interleaved, the ratio 2+2/1+1, and why the gain is bounded by the cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from worker_python import ops as python_ops

from coordinator.config import CoordinatorConfig
from scripts.testkit.images import encoded, photo
from scripts.testkit.procs import start_worker

ROOT = Path(__file__).resolve().parents[1]

WIDTH, HEIGHT = 3840, 2160
SCALE_WIDTH, SCALE_HEIGHT = 1920, 1080  # ~2 MP, the scaling table's photos
SCALE_ARGS = ("--plan", "blur", "--radius", "4")


def photo_4k(seed: int) -> bytes:
    """A photo-like 3840x2160 JPEG; seed varies the scene (scripts/testkit/images.py)."""
    return encoded(photo(WIDTH, HEIGHT, seed, random_phase=True), "JPEG", quality=90)


def pool_one(job: tuple[str, str, int]) -> int:
    """(b) for one image; returns the PNG size."""
    source, target, level = job
    with Image.open(source) as image:
        image = image.convert("RGB")
    width, height = image.size
    middle = height // 2
    stitched = Image.new("RGB", (width, height))
    stitched.paste(python_ops.apply("grayscale", image.crop((0, 0, width, middle))), (0, 0))
    stitched.paste(python_ops.apply("sepia", image.crop((0, middle, width, height))), (0, middle))
    stitched.save(target, "PNG", compress_level=level)
    return os.path.getsize(target)


def run_pool(inputs: list[Path], out: Path, level: int) -> float:
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(pool_one, [(str(path), str(out / (path.stem + ".png")), level) for path in inputs], chunksize=1)
    return time.perf_counter() - started


def run_cli(
    inputs: list[Path], out: Path, urls: list[str], jobs: int, level: int, extra: tuple[str, ...] = ()
) -> float:
    command = [
        sys.executable,
        "-m",
        "coordinator",
        "process",
        *map(str, inputs),
        "-o",
        str(out),
        "--format",
        "png",
        "--jobs",
        str(jobs),
        "--quiet",
        "--workers",
        ",".join(urls),
        *extra,
    ]
    env = {**os.environ, "COORDINATOR_PNG_LEVEL": str(level)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"coordinator exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def scale_table(root: Path, images: int, runs: int, jobs: int, level: int) -> int:
    """1+1 vs 2+2 workers on one batch of ~2 MP photos: medians, img/s and the 2+2/1+1 ratio."""
    inputs = []
    for index in range(images):
        path = root / f"scale{index:02d}.jpg"
        path.write_bytes(encoded(photo(SCALE_WIDTH, SCALE_HEIGHT, 300 + index, random_phase=True), "JPEG", quality=90))
        inputs.append(path)
    workers = [start_worker(runtime, root / "scale-logs") for runtime in ("python", "nodejs") * 2]
    pools = {"1+1": [w.url for w in workers[:2]], "2+2": [w.url for w in workers]}
    times: dict[str, list[float]] = {name: [] for name in pools}
    try:
        for run in range(runs):  # interleaved, so background load hits both alike
            for name, urls in pools.items():
                out = root / f"scale-{name}-{run}"
                out.mkdir()
                times[name].append(run_cli(inputs, out, urls, jobs, level, extra=SCALE_ARGS))
                written = len(list(out.glob("*.png")))
                if written != images:
                    print(f"error: ({name}) wrote {written} of {images} outputs", file=sys.stderr)
                    return 1
    finally:
        for worker in workers:
            worker.stop()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print()
    print(
        f"scaling: {images} photo-like {SCALE_WIDTH}x{SCALE_HEIGHT} JPEGs, {' '.join(SCALE_ARGS)}, "
        f"--jobs {jobs}, median of {runs} runs each"
    )
    print(f"{'workers (python+nodejs)':26}{'median s':>9}{'img/s':>7}  runs (s)")
    for name, median in medians.items():
        runs_text = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"{name:26}{median:9.1f}{images / median:7.2f}  {runs_text}")
    cores = os.cpu_count() or 1
    print(f"throughput 2+2/1+1 = {medians['1+1'] / medians['2+2']:.2f}x")
    print(
        f"why bounded: os.cpu_count() = {cores}; 1+1 already keeps {cores} cores busy, so 2+2 adds processes "
        "that share the same cores with the coordinator's decode and PNG encode; it gains only by overlapping "
        "one worker's waits on the wire with another's compute"
        if cores <= 2
        else f"why bounded: os.cpu_count() = {cores}; the coordinator's decode and PNG encode share those cores"
    )
    return 0


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20, help="4K images in the batch (default 20)")
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each (default 2)")
    parser.add_argument("--jobs", type=int, default=2, help="coordinator --jobs (default 2)")
    parser.add_argument("--scale-images", type=int, default=8, help="~2 MP images, 1+1 vs 2+2 table (default 8)")
    parser.add_argument("--scale-runs", type=int, default=3, help="runs of each pool in that table (default 3)")
    parser.add_argument("--scale-only", action="store_true", help="only the 1+1 vs 2+2 workers table")
    args = parser.parse_args(argv)
    if args.scale_only:
        with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
            return scale_table(
                Path(tmp), max(1, args.scale_images), max(1, args.scale_runs), args.jobs, CoordinatorConfig().png_level
            )
    images, runs = max(1, args.images), max(1, args.runs)
    level = CoordinatorConfig().png_level
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = Path(tmp)
        inputs = []
        for index in range(images):
            path = root / f"photo{index:02d}.jpg"
            path.write_bytes(photo_4k(100 + index))
            inputs.append(path)
        input_mb = sum(path.stat().st_size for path in inputs) / images / 1e6
        print(
            f"batch: {images} photo-like {WIDTH}x{HEIGHT} JPEGs ({input_mb:.1f} MB each), {runs} runs each, "
            f"PNG level {level}, coordinator --jobs {args.jobs}; shared machine: treat small differences as noise"
        )
        workers = [start_worker("python", root), start_worker("nodejs", root)]
        times: dict[str, list[float]] = {"a": [], "b": []}
        sizes: dict[str, int] = {}
        try:
            urls = [worker.url for worker in workers]
            for run in range(runs):  # interleaved, so background load hits both alike
                for name in ("a", "b"):
                    out = root / f"out-{name}-{run}"
                    out.mkdir()
                    if name == "a":
                        times[name].append(run_cli(inputs, out, urls, args.jobs, level))
                    else:
                        times[name].append(run_pool(inputs, out, level))
                    sizes[name] = folder_bytes(out)
                    written = len(list(out.glob("*.png")))
                    if written != images:
                        print(f"error: ({name}) wrote {written} of {images} outputs", file=sys.stderr)
                        return 1
            check = inputs[0].stem + ".png"
            with Image.open(root / "out-a-0" / check) as got, Image.open(root / "out-b-0" / check) as want:
                difference = int(np.abs(np.asarray(got, dtype=int) - np.asarray(want, dtype=int)).max())
        finally:
            for worker in workers:
                worker.stop()
    if difference > 1:
        print(f"error: coordinator output differs from the pool's by {difference}", file=sys.stderr)
        return 1
    a, b = statistics.median(times["a"]), statistics.median(times["b"])
    wire = WIDTH * HEIGHT * 3 * 2 + 2 * 2 * len(b"P6\n3840 1080\n255\n")  # raw PPM out and back
    print()
    print(f"{'':4}{'design':52}{'median s':>9}{'img/s':>7}{'PNG MB/img':>11}{'wire MB/img':>12}")
    print(
        f"{'(a)':4}{'python -m coordinator process, 2 workers':52}{a:9.1f}{images / a:7.2f}"
        f"{sizes['a'] / images / 1e6:11.1f}{wire / 1e6:12.1f}"
    )
    print(
        f"{'(b)':4}{'2-process Pillow pool, same ops, PNG level ' + str(level):52}{b:9.1f}{images / b:7.2f}"
        f"{sizes['b'] / images / 1e6:11.1f}{0:12.1f}"
    )
    print()
    runs = {key: ", ".join(f"{t:.1f}" for t in times[key]) for key in ("a", "b")}
    print(f"throughput (a)/(b) = {b / a:.2f}x  (target >= 0.9x); runs (s): a={runs['a']}  b={runs['b']}")
    with tempfile.TemporaryDirectory(prefix="bench-batch-scale-") as tmp:
        return scale_table(Path(tmp), max(1, args.scale_images), max(1, args.scale_runs), args.jobs, level)


if __name__ == "__main__":
    sys.exit(main())
