"""The `scenes` generator: random objects on a noisy background, deterministic from a seed.

Scenes are small enough that a BLIP-2 trained in-suite can read them, and varied enough that
questions have graded difficulty (existence < attributes < counting < spatial relations).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 2  # bump when rendering or question logic changes: it keys the cache

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 20),
    "cyan": (40, 210, 220),
    "white": (250, 250, 250),
}
SIZES: tuple[str, ...] = ("small", "large")
_SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges at 32-64 px
_JITTER = 0.1  # largest offset of an object from its cell centre, in cells
_BACKGROUND = 96  # grey level; every color above stays distinguishable from it


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    x: float  # centre, in [0, 1] of the image width
    y: float  # centre, in [0, 1] of the image height (0 = top)


def size_px(size: str, image_size: int, grid: int) -> float:
    """Object diameter in pixels: a large object fills 80 % of its grid cell, a small one 50 %."""
    return image_size / grid * (0.8 if size == "large" else 0.5)


def novel_pairs(n: int) -> frozenset[tuple[str, str]]:
    """The (color, shape) pairs held out of every split but `test_novel`: fixed, one per shape."""
    colors = list(COLORS)
    return frozenset((colors[(3 * i + 1) % len(colors)], SHAPES[i % len(SHAPES)]) for i in range(n))


def sample_scene(
    rng: np.random.Generator,
    grid: int,
    max_objects: int,
    held_out: frozenset[tuple[str, str]],
    novel: bool = False,
) -> list[SceneObject]:
    """1..max_objects objects in distinct cells of a grid x grid layout; `novel` scenes hold >= 1 held-out pair.

    Objects sit in grid cells (jittered by up to 10 % of a cell) so that, with a ViT whose patch is one
    cell, every object lands in one patch: a ViT trained from scratch in minutes can then read shapes,
    which it cannot learn in that budget when objects straddle patches at arbitrary offsets.
    """
    if max_objects > grid * grid:
        raise ValueError(f"max_objects={max_objects} does not fit a {grid}x{grid} grid")
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(grid * grid, size=n, replace=False)
    objects = []
    for i, cell in enumerate(cells):
        color, shape = _attributes(rng, held_out, want_novel=novel and i == 0)
        size = SIZES[int(rng.integers(len(SIZES)))]
        jx, jy = rng.uniform(-_JITTER, _JITTER, size=2)
        x = (int(cell) % grid + 0.5 + jx) / grid
        y = (int(cell) // grid + 0.5 + jy) / grid
        objects.append(SceneObject(shape, color, size, float(x), float(y)))
    return objects


def _attributes(
    rng: np.random.Generator, held_out: frozenset[tuple[str, str]], want_novel: bool
) -> tuple[str, str]:
    if want_novel:
        return sorted(held_out)[int(rng.integers(len(held_out)))]
    while True:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if (color, shape) not in held_out:
            return color, shape


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "triangle":
        angles = [-90, 30, 150]
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in angles]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = math.radians(-90 + 36 * k)
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}")


def render(objects: list[SceneObject], image_size: int, grid: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene at 4x, downsample, then add light Gaussian background noise."""
    big = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    for o in objects:
        cx, cy, r = o.x * big, o.y * big, size_px(o.size, image_size, grid) * _SUPERSAMPLE / 2
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLORS[o.color])
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=COLORS[o.color])
    small = np.asarray(canvas.resize((image_size, image_size), Image.Resampling.BOX), dtype=np.float32)
    noisy = small + rng.normal(0.0, 4.0, size=small.shape)  # (H, W, 3)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def scene_to_json(objects: list[SceneObject]) -> str:
    return json.dumps([asdict(o) for o in objects], sort_keys=True)


def scene_from_json(text: str) -> list[SceneObject]:
    return [SceneObject(**d) for d in json.loads(text)]
