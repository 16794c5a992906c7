"""Image rendering for the tiny world: a shape of a colour and size on a scene, 32x32 RGB.

Private: `world.render_image` is the public entry point. Everything is drawn at 4x (128x128) and
box-downsampled, so edges are antialiased and a 13-px star still looks like a star.

Example:
    >>> arr = draw_image({"shape": "star", "colour": "red", "size": "large", "scene": "snow"}, seed=0)
    >>> arr.shape, arr.dtype
    ((32, 32, 3), dtype('uint8'))
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["COLOUR_RGB", "IMAGE_SIZE", "SHAPE_SIZE_PX", "draw_image"]

IMAGE_SIZE = 32
_SS = 4  # supersampling factor
_BIG = IMAGE_SIZE * _SS

# Saturated and far apart in RGB so colour is never a judgement call, on any background.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 35),
    "green": (40, 190, 50),
    "blue": (35, 80, 240),
    "yellow": (250, 225, 25),
    "purple": (150, 45, 210),
    "orange": (255, 135, 0),
}
# Width across, in output pixels. Large shapes make shape legible at 32x32; the ratio keeps size obvious.
SHAPE_SIZE_PX: dict[str, float] = {"small": 13.0, "large": 23.0}


def draw_image(attrs: dict[str, str], seed: int) -> np.ndarray:
    """(32, 32, 3) uint8 render of `attrs`; every random choice comes from `seed`."""
    # Separate streams: the layout (position, rotation) does not move when the scene or colour is
    # edited, so an edit renders as the same picture with one thing changed.
    layout = np.random.default_rng([seed, 1])
    u = layout.uniform(-1.0, 1.0, size=2)
    rot = layout.uniform(-10.0, 10.0)
    size_jit = layout.uniform(-0.6, 0.6)
    col_jit = layout.integers(-10, 11, size=3)
    bg = _background(attrs["scene"], np.random.default_rng([seed, 2]))  # (128, 128, 3) float

    size = (SHAPE_SIZE_PX[attrs["size"]] + size_jit) * _SS
    # The widest shape (the star) spans 1.2x `size`: keep every shape fully inside the frame.
    max_shift = max(0.0, (IMAGE_SIZE * _SS - 1.2 * size) / 2 - _SS)
    cx, cy = _BIG / 2 + u[0] * max_shift, _BIG / 2 + u[1] * max_shift
    colour = tuple(int(c) for c in np.clip(np.array(COLOUR_RGB[attrs["colour"]]) + col_jit, 0, 255))
    outline = tuple(int(c * 0.45) for c in colour)  # a darker rim keeps the silhouette on any scene

    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    width = 3
    if attrs["shape"] == "circle":
        r = size / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour, outline=outline, width=width)
    else:
        pts = _polygon(attrs["shape"], size, rot)
        pts = [(cx + x, cy + y) for x, y in pts]
        draw.polygon(pts, fill=colour, outline=outline, width=width)
    small = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    noise = np.random.default_rng([seed, 3]).normal(0.0, 3.0, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(np.asarray(small, dtype=np.float32) + noise, 0, 255).round().astype(np.uint8)


def _polygon(shape: str, size: float, rot_deg: float) -> list[tuple[float, float]]:
    """Vertices centred on (0, 0), about `size` across, rotated by `rot_deg`."""
    if shape == "square":
        h = size * 0.42
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        # Equilateral, pointing up, centred on its bounding box rather than its centroid.
        w = size * 1.1  # a triangle covers little of its box; widen it to match the others
        h = w * math.sqrt(3) / 2
        pts = [(0.0, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    elif shape == "star":
        outer, inner = size * 0.6, size * 0.6 * 0.45  # fat points survive downsampling
        pts = []
        for i in range(10):
            r = outer if i % 2 == 0 else inner
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a) + size * 0.04))
    elif shape == "cross":
        a, t = size / 2, size * 0.18  # arm half-length, half-thickness
        pts = [
            (-t, -a),
            (t, -a),
            (t, -t),
            (a, -t),
            (a, t),
            (t, t),
            (t, a),
            (-t, a),
            (-t, t),
            (-a, t),
            (-a, -t),
            (-t, -t),
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    return [(x * c - y * s, x * s + y * c) for x, y in pts]


def _gradient(top: tuple[int, int, int], bottom: tuple[int, int, int], rows: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, rows)[:, None, None]
    return (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)  # (rows, 1, 3)


def _background(scene: str, rng: np.random.Generator) -> np.ndarray:
    """(128, 128, 3) float32 scene; each scene has its own palette *and* texture."""
    n = _BIG
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    img = np.zeros((n, n, 3), np.float32)
    if scene == "day":  # light blue sky over green ground
        horizon = n * rng.uniform(0.58, 0.72)
        sky = _gradient((120, 180, 240), (175, 215, 250), n)
        ground = _gradient((95, 175, 70), (60, 135, 45), n)
        img[:] = np.where(yy[..., None] < horizon, sky, ground)
    elif scene == "night":  # dark navy with a few stars
        img[:] = _gradient((8, 12, 38), (25, 32, 75), n)
        for _ in range(int(rng.integers(5, 9))):
            x, y = rng.integers(2, n - 6, size=2)
            img[y : y + 4, x : x + 4] = 235.0
    elif scene == "snow":  # pale grey sky, white ground, falling flakes
        horizon = n * rng.uniform(0.55, 0.7)
        img[:] = np.where(yy[..., None] < horizon, _gradient((190, 195, 205), (215, 218, 225), n), 245.0)
        for _ in range(int(rng.integers(25, 40))):
            x, y = rng.integers(0, n - 4, size=2)
            img[y : y + 4, x : x + 4] = 250.0
    elif scene == "rain":  # mid grey with light diagonal streaks
        img[:] = _gradient((85, 90, 100), (115, 120, 130), n)
        phase = rng.uniform(0, 24)
        streak = ((xx + 0.5 * yy + phase) % 24) < 3
        img[streak] = (165.0, 170.0, 185.0)
    elif scene == "desert":  # pale sky over sand dunes with a wavy horizon
        base = n * rng.uniform(0.45, 0.6)
        amp, freq, ph = rng.uniform(4, 10), rng.uniform(0.03, 0.06), rng.uniform(0, 2 * math.pi)
        horizon = base + amp * np.sin(freq * xx + ph)
        sky = _gradient((250, 225, 170), (250, 205, 140), n)
        sand = _gradient((225, 170, 95), (195, 135, 70), n)
        img[:] = np.where((yy < horizon)[..., None], sky, sand)
    elif scene == "forest":  # dark green with darker vertical trunks
        img[:] = _gradient((20, 70, 30), (30, 55, 25), n)
        for _ in range(int(rng.integers(4, 7))):
            x, w = int(rng.integers(0, n - 8)), int(rng.integers(5, 10))
            img[:, x : x + w] = (45.0, 35.0, 20.0)
    else:
        raise ValueError(f"unknown scene {scene!r}")
    # Texture at the supersampled scale, so it survives downsampling only as gentle mottling.
    return img + rng.normal(0.0, 6.0, size=(n, n, 1))
