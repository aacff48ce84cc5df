"""Drive the coordinator's Streamlit page headless (streamlit.testing AppTest), for page tests:

page = process(upload(open_page(monkeypatch, workers), "colour.png", colourful_png()))
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from scripts.testkit.images import png_bytes
from scripts.testkit.procs import ROOT

APP = str(ROOT / "coordinator" / "app.py")
RUN_TIMEOUT = 60


def colourful_png(width: int = 240, height: int = 160) -> bytes:
    """Crossing gradients as PNG: every pixel differs, so a wrong strip shows."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1)
    return png_bytes(Image.fromarray(pixels.astype(np.uint8)))


def open_page(monkeypatch, workers: list[str]) -> AppTest:
    monkeypatch.setenv("COORDINATOR_WORKERS", ",".join(workers))
    for name in ("COORDINATOR_WORKERS_FILE", "COORDINATOR_PULUMI_STACK", "COORDINATOR_WORKER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    page = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run()
    assert not page.exception, page.exception
    return page


def upload(page: AppTest, name: str, data: bytes, mime: str = "image/png") -> AppTest:
    page.file_uploader[0].set_value((name, data, mime)).run()
    assert not page.exception, page.exception
    return page


def process(page: AppTest) -> AppTest:
    page.button(key="process").click().run()
    assert not page.exception, page.exception
    return page


def texts(elements) -> str:
    return "\n".join(str(element.value) for element in elements)
