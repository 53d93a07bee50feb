"""Shapes and surfaces of the embedded scenes' objects, drawn without anti-aliasing (exact masks).

An object is described apart from its place (`ObjectSpec`); `object_radius` inverts each shape's
closed-form area, so that a spec's `area` is the share of the image it covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TARGET_SHAPES = ("disk", "square", "triangle", "cross")
PATTERNS = ("stripes", "checks")
#: Class names, index = label: every (pattern, shape) combination of the target.
CLASSES = tuple(f"{pattern}-{shape}" for pattern in PATTERNS for shape in TARGET_SHAPES)
DISTRACTOR_SHAPES = ("ring", "star", "ellipse")
DISTRACTOR_SURFACES = ("plain", "gradient")


@dataclass(frozen=True)
class ObjectSpec:
    """What an object looks like, independent of where it is: shape, surface, colours, size and pose."""

    shape: str
    surface: str  # a class pattern for the target, "plain" or "gradient" for a distractor
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    area: float  # share of the image
    angle: float
    period: float  # pattern period in units of the object's size

    @property
    def label(self) -> int | None:
        name = f"{self.surface}-{self.shape}"
        return CLASSES.index(name) if name in CLASSES else None


def object_radius(spec: ObjectSpec, size: int) -> float:
    """Circumradius in pixels that gives the shape its area (closed forms of each shape's area)."""
    factor = {
        "disk": math.pi,
        "square": 2.0,
        "triangle": 3 * math.sqrt(3) / 4,
        "cross": 1.75,
        "ring": math.pi * (1 - 0.55**2),
        "star": math.pi * 0.40375,
        "ellipse": math.pi / 2.2,
    }[spec.shape]
    return math.sqrt(spec.area * size * size / factor)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Inside test of a shape of circumradius `radius`, in its own rotated frame (u, v from the centre)."""
    if shape == "disk":
        return u**2 + v**2 <= radius**2
    if shape == "square":
        half = radius / math.sqrt(2)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == "triangle":  # equilateral: inside the three edges at distance radius / 2 from the centre
        return np.all(
            [
                u * math.cos(a) + v * math.sin(a) <= radius / 2
                for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
            ],
            axis=0,
        )
    if shape == "cross":
        arm = 0.25 * radius
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    if shape == "ring":
        d2 = u**2 + v**2
        return (d2 <= radius**2) & (d2 >= (0.55 * radius) ** 2)
    if shape == "star":  # a five-lobed star: polar radius R (0.55 + 0.45 cos 5 theta)
        return np.hypot(u, v) <= radius * (0.55 + 0.45 * np.cos(5 * np.arctan2(v, u)))
    if shape == "ellipse":
        return u**2 + (2.2 * v) ** 2 <= radius**2
    raise ValueError(f"unknown shape {shape!r}; shapes are {TARGET_SHAPES + DISTRACTOR_SHAPES}")


def pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Where a class pattern puts the object's second colour: stripes across u, or a checkerboard."""
    if pattern == "stripes":
        return np.floor(u / (period / 2)).astype(np.int64) % 2 == 0
    if pattern == "checks":
        return (np.floor(u / (period / 2)).astype(np.int64) + np.floor(v / (period / 2)).astype(np.int64)) % 2 == 0
    raise ValueError(f"unknown pattern {pattern!r}; patterns are {PATTERNS}")


def _object_frame(spec: ObjectSpec, center: tuple[float, float], size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel-centre coordinates (u, v) in the object's rotated frame, and its circumradius in pixels."""
    coords = np.arange(size, dtype=np.float64) + 0.5
    y, x = np.meshgrid(coords, coords, indexing="ij")
    cy, cx = center[0] * size, center[1] * size
    cos, sin = math.cos(spec.angle), math.sin(spec.angle)
    return cos * (x - cx) + sin * (y - cy), -sin * (x - cx) + cos * (y - cy), object_radius(spec, size)


def object_mask(spec: ObjectSpec, center: tuple[float, float], size: int) -> np.ndarray:
    """The object's exact mask (HxW bool) at `center` (y, x in [0, 1])."""
    u, v, radius = _object_frame(spec, center, size)
    return shape_mask(spec.shape, u, v, radius)


def draw_object(spec: ObjectSpec, center: tuple[float, float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The object's mask (HxW bool) and its shaded colour (HxWx3) at `center` (y, x in [0, 1])."""
    u, v, radius = _object_frame(spec, center, size)
    mask = shape_mask(spec.shape, u, v, radius)
    base, second = (np.array(c) for c in spec.colors)
    if spec.surface in PATTERNS:
        colour = np.where(pattern_mask(spec.surface, u, v, spec.period * radius)[..., None], second, base)
    elif spec.surface == "gradient":
        t = np.clip((u / radius + 1) / 2, 0, 1)[..., None]
        colour = base + (second - base) * t
    else:
        colour = np.broadcast_to(base, (*u.shape, 3))
    shading = 1 - 0.25 * np.clip(np.hypot(u, v) / radius, 0, 1) ** 2  # a rounded look
    return mask, colour * shading[..., None]
