"""How long the page takes on a large upload, from the click on Process until the result shows.

    python -m scripts.bench_page [--megapixels 12] [--runs 3]

Starts both workers and the page on free loopback ports, drives headless Debian Chromium,
prints the median and each run, and saves .artifacts/page-large.png. Needs /usr/bin/chromium.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support.browser import ARTIFACTS, chromium_missing, chromium_page, start_page
from tests.support.procs import start_worker
from tests.test_page_browser import colourful_image, encoded, upload_and_process, wait_until_idle


def camera_like_jpeg(megapixels: float) -> tuple[bytes, int, int]:
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    # Noise makes the JPEG as big as a camera's (a smooth gradient compresses to almost nothing).
    noise = np.random.default_rng(12).integers(-40, 41, (height, width, 3))
    pixels = (np.asarray(colourful_image(width, height)).astype(np.int16) + noise).clip(0, 255)
    return encoded(Image.fromarray(pixels.astype(np.uint8)), "JPEG", quality=90), width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_page", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    missing = chromium_missing()
    if missing:
        print(f"skip: page bench: {missing}")
        return 0
    data, width, height = camera_like_jpeg(args.megapixels)
    tmp = Path(tempfile.mkdtemp(prefix="bench-page-"))
    workers = [start_worker(runtime, tmp) for runtime in ("python", "nodejs")]
    server = start_page(tmp, [worker.url for worker in workers])
    seconds = []
    try:
        with chromium_page(viewport=(1400, 1700)) as page:
            for _ in range(args.runs):
                seconds.append(upload_and_process(page, server.url, "large.jpg", data, "image/jpeg"))
                wait_until_idle(page)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "page-large.png"), full_page=True)
        jobs = [json.loads(line) for line in server.log_text().splitlines()
                if line.startswith("{") and '"job done"' in line]
    finally:
        server.stop()
        for worker in workers:
            worker.stop()
    print(f"\npage, {width}x{height} ({width * height / 1e6:.1f} MP, {len(data) / 1e6:.1f} MB JPEG), "
          f"{args.runs} runs: click on Process -> result shown")
    print(f"| median | runs |\n|---|---|\n| {statistics.median(seconds):.2f} s | "
          f"{', '.join(f'{value:.2f}' for value in seconds)} s |")
    if jobs:
        print("the page's own log of the last job:", json.dumps(jobs[-1]))
    print(f"screenshot: {ARTIFACTS / 'page-large.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
