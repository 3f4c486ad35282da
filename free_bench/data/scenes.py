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

GENERATOR_VERSION = 1  # bump when rendering or question logic changes: it keys the cache

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
_BACKGROUND = 96  # grey level; every color above stays distinguishable from it


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    x: float  # centre, in [0, 1] of the image width
    y: float  # centre, in [0, 1] of the image height (0 = top)


def size_px(size: str, image_size: int) -> float:
    """Object diameter in pixels: large objects are ~1.7x small ones at every resolution."""
    return image_size * (0.28 if size == "large" else 0.17)


def novel_pairs(n: int) -> frozenset[tuple[str, str]]:
    """The (color, shape) pairs held out of every split but `test_novel`: fixed, one per shape."""
    colors = list(COLORS)
    return frozenset((colors[(3 * i + 1) % len(colors)], SHAPES[i % len(SHAPES)]) for i in range(n))


def sample_scene(
    rng: np.random.Generator,
    image_size: int,
    max_objects: int,
    held_out: frozenset[tuple[str, str]],
    novel: bool = False,
) -> list[SceneObject]:
    """1..max_objects non-overlapping objects; `novel` scenes contain >= 1 held-out pair, others none."""
    for _ in range(100):
        n = int(rng.integers(1, max_objects + 1))
        objects: list[SceneObject] = []
        for i in range(n):
            placed = _place(rng, image_size, objects, held_out, want_novel=novel and i == 0)
            if placed is None:
                break
            objects.append(placed)
        if objects and (not novel or any((o.color, o.shape) in held_out for o in objects)):
            return objects
    raise RuntimeError("could not place objects; the image is too small for max_objects")


def _place(
    rng: np.random.Generator,
    image_size: int,
    existing: list[SceneObject],
    held_out: frozenset[tuple[str, str]],
    want_novel: bool,
) -> SceneObject | None:
    for _ in range(50):
        if want_novel:
            color, shape = sorted(held_out)[int(rng.integers(len(held_out)))]
        else:
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            if (color, shape) in held_out:
                continue
        size = SIZES[int(rng.integers(len(SIZES)))]
        r = size_px(size, image_size) / 2 / image_size  # radius in [0, 1] units
        x, y = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
        gap = 1.5 / image_size  # at least 1.5 px between objects
        if all(
            math.hypot(x - o.x, y - o.y) > r + size_px(o.size, image_size) / 2 / image_size + gap
            for o in existing
        ):
            return SceneObject(shape, color, size, float(x), float(y))
    return None


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


def render(objects: list[SceneObject], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene at 4x, downsample, then add light Gaussian background noise."""
    big = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(canvas)
    for o in objects:
        cx, cy, r = o.x * big, o.y * big, size_px(o.size, image_size) * _SUPERSAMPLE / 2
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
