"""How long the page takes on a large upload, from the click on Process until the result shows;
with --memory, how much the page process holds for 3 sessions and after they close.

    python -m scripts.bench_page [--megapixels 12] [--runs 3]
    python -m scripts.bench_page --memory [--sessions 3] [--megapixels 30] [--wait 150]

Starts both workers and the page on free loopback ports, drives headless Debian Chromium,
prints the median and each run, and saves .artifacts/page-large.png. Needs /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.testkit.browser import (
    ARTIFACTS,
    chromium_missing,
    chromium_page,
    start_page,
    upload_and_process,
    wait_until_idle,
)
from scripts.testkit.images import colourful_image, encoded
from scripts.testkit.procs import start_worker


def camera_like_jpeg(megapixels: float) -> tuple[bytes, int, int]:
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    # Noise makes the JPEG as big as a camera's (a smooth gradient compresses to almost nothing).
    noise = np.random.default_rng(12).integers(-40, 41, (height, width, 3))
    pixels = (np.asarray(colourful_image(width, height)).astype(np.int16) + noise).clip(0, 255)
    return encoded(Image.fromarray(pixels.astype(np.uint8)), "JPEG", quality=90), width, height


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory_bench(server, sessions: int, megapixels: float, wait: float) -> None:
    """RSS of the page process: idle, with `sessions` sessions each holding an uploaded BMP and
    its result, and `wait` s after the browsers closed (the page empties a session's images
    once it has had no browser for server.disconnectedSessionTTL, 120 s); then during and after
    one new visit: Streamlit itself drops a closed session (with the raw upload its uploader
    holds) only when a later disconnect writes to its session store."""
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    data = encoded(colourful_image(width, height), "BMP")
    upload_path = Path(tempfile.mkdtemp(prefix="bench-page-mem-")) / "big.bmp"
    upload_path.write_bytes(data)  # Playwright takes buffers up to 50 MB only
    figures = {"idle": rss_mib(server.pid)}
    with chromium_page(viewport=(1400, 1700)) as first:
        pages = [first] + [first.context.browser.new_context().new_page() for _ in range(sessions - 1)]
        for page in pages:
            upload_and_process(page, server.url, "big.bmp", upload_path, "image/bmp")
            wait_until_idle(page)
        figures[f"{sessions} sessions"] = rss_mib(server.pid)
    started = time.monotonic()
    while time.monotonic() - started < wait:
        time.sleep(10)
    figures[f"{wait:.0f} s after closing"] = rss_mib(server.pid)
    with chromium_page() as page:
        page.goto(server.url)
        page.get_by_text("Upload an image to start").wait_for(timeout=30_000)
        time.sleep(3)
        figures["during one new visit"] = rss_mib(server.pid)
    time.sleep(10)  # its disconnect is a write to Streamlit's session store, which reaps expired ones
    figures["after it closed"] = rss_mib(server.pid)
    print(
        f"\npage memory, {sessions} sessions, each a {width}x{height} BMP ({len(data) / 1e6:.0f} MB) processed and held"
    )
    print(
        "| "
        + " | ".join(figures)
        + " |\n|"
        + "---|" * len(figures)
        + "\n| "
        + " | ".join(f"{value:.0f} MiB" for value in figures.values())
        + " |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench_page", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="measure the page's RSS instead")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--wait", type=float, default=150, help="seconds after closing the browsers")
    args = parser.parse_args(argv)
    missing = chromium_missing()
    if missing:
        print(f"skip: page bench: {missing}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-page-"))
    workers = [start_worker(runtime, tmp) for runtime in ("python", "nodejs")]
    server = start_page(tmp, [worker.url for worker in workers])
    if args.memory:
        try:
            memory_bench(server, args.sessions, args.megapixels, args.wait)
        finally:
            server.stop()
            for worker in workers:
                worker.stop()
        return 0
    data, width, height = camera_like_jpeg(args.megapixels)
    seconds = []
    try:
        with chromium_page(viewport=(1400, 1700)) as page:
            for _ in range(args.runs):
                seconds.append(upload_and_process(page, server.url, "large.jpg", data, "image/jpeg"))
                wait_until_idle(page)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "page-large.png"), full_page=True)
        jobs = [
            json.loads(line) for line in server.log_text().splitlines() if line.startswith("{") and '"job done"' in line
        ]
    finally:
        server.stop()
        for worker in workers:
            worker.stop()
    print(
        f"\npage, {width}x{height} ({width * height / 1e6:.1f} MP, {len(data) / 1e6:.1f} MB JPEG), "
        f"{args.runs} runs: click on Process -> result shown"
    )
    print(
        f"| median | runs |\n|---|---|\n| {statistics.median(seconds):.2f} s | "
        f"{', '.join(f'{value:.2f}' for value in seconds)} s |"
    )
    if jobs:
        print("the page's own log of the last job:", json.dumps(jobs[-1]))
    print(f"screenshot: {ARTIFACTS / 'page-large.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
