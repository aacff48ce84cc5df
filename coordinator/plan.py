"""Which op each horizontal strip gets, and which rows (with halo) each strip sends."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.errors import InputError

GAUSSIAN_PASSES = 3  # Pillow's GaussianBlur: three extended box-blur passes
BLUR_RADIUS_MAX = 50.0
BLUR_RADIUS_DEFAULT = 2.0


def gaussian_box_radius(radius: float, passes: int = GAUSSIAN_PASSES) -> float:
    """Pillow's _gaussian_blur_radius (libImaging/BoxBlur.c), in the same float32 arithmetic.

    The extended box of radius l + a covers int(l + a) whole pixels on each side plus a
    fractional weight on the next one, so one pass reads int(l + a) + 1 rows each way.
    """
    import numpy as np  # here, not at the top: the CLI's --help and `workers` never need numpy

    f32 = np.float32
    sigma2 = f32(radius) * f32(radius) / f32(passes)
    big_l = f32(math.sqrt(12.0 * float(sigma2) + 1.0))
    small_l = f32(math.floor((float(big_l) - 1.0) / 2.0))
    a = (f32(2) * small_l + f32(1)) * (small_l * (small_l + f32(1)) - f32(3) * sigma2)
    a = a / (f32(6) * (sigma2 - (small_l + f32(1)) * (small_l + f32(1))))
    return float(small_l + a)


def blur_halo(radius: float) -> int:
    """Rows of neighbours a strip needs on each side to blur exactly like the whole image."""
    return GAUSSIAN_PASSES * (int(gaussian_box_radius(radius)) + 1)


def no_halo(params: dict) -> int:
    return 0


@dataclass(frozen=True)
class OpSpec:
    name: str
    primary_runtime: str | None  # the runtime whose primary op this is; routed there first
    halo: Callable[[dict], int] = no_halo
    params: tuple[str, ...] = ()


OPERATIONS: dict[str, OpSpec] = {
    "grayscale": OpSpec("grayscale", "python"),
    "sepia": OpSpec("sepia", "nodejs"),
    "invert": OpSpec("invert", None),
    # Pillow defines blur, so the Python worker is exact by construction.
    "blur": OpSpec("blur", "python", lambda params: blur_halo(params["radius"]), ("radius",)),
}
SEED_OPS = ("grayscale", "sepia")


@dataclass(frozen=True)
class Strip:
    index: int
    top: int  # first row of the result this strip fills
    bottom: int  # one past its last row
    halo_top: int  # extra rows sent above top and cropped off on return
    halo_bottom: int
    op: str

    @property
    def send_top(self) -> int:
        return self.top - self.halo_top

    @property
    def send_bottom(self) -> int:
        return self.bottom + self.halo_bottom

    @property
    def rows(self) -> int:
        return self.bottom - self.top


def parse_plan(spec: str, strips: int) -> list[str]:
    """'seed' (grayscale, sepia alternating) | one op for all | a comma list, one per strip."""
    if not isinstance(strips, int) or strips < 1:
        raise InputError(f"strips must be a whole number >= 1, not {strips!r}")
    text = (spec or "seed").strip().lower()
    if text == "seed":
        return [SEED_OPS[index % len(SEED_OPS)] for index in range(strips)]
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in OPERATIONS:
            raise InputError(f"unknown op {name!r} in plan (known: seed, {', '.join(OPERATIONS)})")
    if len(names) == 1:
        return names * strips
    if len(names) != strips:
        raise InputError(f"plan lists {len(names)} ops but there are {strips} strips")
    return names


def check_params(ops: list[str], params: dict | None) -> dict:
    """The parameters the plan's ops need, with defaults, range-checked."""
    params = dict(params or {})
    if "blur" in ops:
        radius = params.get("radius")
        radius = BLUR_RADIUS_DEFAULT if radius is None else radius
        try:
            radius = float(radius)
        except (TypeError, ValueError):
            raise InputError(f"blur radius {radius!r} is not a number") from None
        if not (0 < radius <= BLUR_RADIUS_MAX) or math.isnan(radius):
            raise InputError(f"blur radius {radius:g} is out of range (0, {BLUR_RADIUS_MAX:g}]")
        params["radius"] = radius
    return params


def plan_strips(height: int, ops: list[str], params: dict | None = None) -> list[Strip]:
    """Even horizontal strips, one per op; halo rows where the op reads its neighbours."""
    if height < len(ops):
        raise InputError(f"plan has {len(ops)} strips but the image is only {height} rows high")
    params = check_params(ops, params)
    strips = []
    count = len(ops)
    for index, op in enumerate(ops):
        top, bottom = index * height // count, (index + 1) * height // count
        halo = OPERATIONS[op].halo(params)
        strips.append(Strip(index, top, bottom, min(halo, top), min(halo, height - bottom), op))
    return strips
