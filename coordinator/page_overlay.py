"""Strip outlines and labels drawn over the result preview (page only; pure: image in, image out)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# One colour per runtime, so the eye groups strips by the worker that did them.
RUNTIME_COLOURS = {"python": (55, 118, 171), "nodejs": (67, 160, 71)}
OTHER_COLOURS = ((230, 81, 0), (142, 36, 170), (0, 131, 143), (198, 40, 40))


@dataclass(frozen=True)
class StripBox:
    top: int  # first row, in the full-size result
    bottom: int  # one past the last row
    label: str
    runtime: str


def runtime_colour(runtime: str) -> tuple[int, int, int]:
    if runtime in RUNTIME_COLOURS:
        return RUNTIME_COLOURS[runtime]
    return OTHER_COLOURS[sum(runtime.encode()) % len(OTHER_COLOURS)]


def draw_strip_overlay(image: Image.Image, boxes: Sequence[StripBox], source_height: int) -> Image.Image:
    """A copy of `image` (possibly a scaled preview of a `source_height`-row result) with each strip
    outlined in its runtime's colour and labelled in its top-left corner."""
    out = image.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    scale = out.height / max(source_height, 1)
    line = max(2, round(out.width / 300))
    # The preview is shown about half the page wide, so size text to the image, not to pixels.
    base_size = max(10, round(out.width / 32))
    for box in boxes:
        top = round(box.top * scale)
        bottom = max(top + 1, round(box.bottom * scale)) - 1
        colour = runtime_colour(box.runtime)
        draw.rectangle((0, top, out.width - 1, bottom), outline=(*colour, 255), width=line)
        font_size = min(base_size, int((bottom - top - 2 * line) * 0.6))
        if font_size < 8:
            continue  # too thin to label without covering the next strip
        font = ImageFont.load_default(size=font_size)
        pad = max(2, font_size // 4)
        left, text_top, right, text_bottom = draw.textbbox((0, 0), box.label, font=font)
        label_height = text_bottom - text_top + 2 * pad
        x, y = line + 1, top + line + 1
        draw.rectangle((x, y, x + right - left + 2 * pad, y + label_height), fill=(*colour, 215))
        draw.text((x + pad - left, y + pad - text_top), box.label, font=font, fill=(255, 255, 255, 255))
    return Image.alpha_composite(out, layer).convert("RGB")
