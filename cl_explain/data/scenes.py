"""The embedded data set (the package's offline default): seeded synthetic scenes with exact masks.

A scene holds one *target* object, whose class is the label, and one to three *distractors*.
The target is one of four shapes (disk, square, triangle, cross) with one of two surface patterns
(stripes, checks): 8 classes. Colours, size, pose and pattern scale are free, so they do not
reveal the class. Distractors are other shapes (ring, star, ellipse) with plain or graded surfaces.
They are as salient as the target but carry no class. The target covers 5-12% of the image, each
distractor 3-9%; every object sits anywhere, wholly inside the image and clear of the others (when a
scene is too crowded for its target, its last distractors are left out).

Backgrounds come from a fixed pool (`background_pool`): crops of photos that ship inside
scikit-image, plus procedural colour-noise textures. Many scenes share each background, so it does
not identify a scene. A scene is defocused and hazy behind its objects and lit by one gentle light
gradient.

A scene is made of three independent seeded draws: its target (`draw_target`), its context
(background and distractors, `draw_context`) and the target's place. `compose` puts any target
into any context. The pair modes use that (`cl_explain.data.pairings`): the same object in two
different scenes, or another object on the same background. Objects are drawn without
anti-aliasing: the instance map is exact, and outside it every pixel equals the bare background.

Scene `index` of `split` is a pure function of (seed, split, index, size). Splits are disjoint
random streams, and pixels are multiples of 1/255, so the uint8 cache of a split is lossless.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ..utils import repo_root

TARGET_SHAPES = ("disk", "square", "triangle", "cross")
PATTERNS = ("stripes", "checks")
#: Class names, index = label: every (pattern, shape) combination of the target.
CLASSES = tuple(f"{pattern}-{shape}" for pattern in PATTERNS for shape in TARGET_SHAPES)
DISTRACTOR_SHAPES = ("ring", "star", "ellipse")
DISTRACTOR_SURFACES = ("plain", "gradient")
#: Fixed split sizes (scenes) used to train and evaluate the embedded models.
SPLIT_SIZES = {"train": 4000, "val": 800, "test": 800}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZE = 96
#: Share of the image area of the target and of each distractor (all within 3-15%).
TARGET_AREA, DISTRACTOR_AREA = (0.05, 0.12), (0.03, 0.09)
#: Backgrounds in the shared pool: photo crops first, then procedural textures.
POOL_PHOTOS, POOL_TEXTURES = 32, 16
_POOL_SEED = 20231101
#: Background sources: scikit-image sample images that ship inside its wheel (no download).
TEXTURE_SOURCES = (
    "grass",
    "gravel",
    "brick",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
)
#: Instance-map codes: 0 = background, 1 = target, 2.. = distractors.
TARGET_ID = 1


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


@dataclass(frozen=True)
class Context:
    """Everything in a scene but its target: background (pool entry, crop, look, light) and distractors."""

    background: int
    offset: tuple[float, float]
    flipped: bool
    blur: float
    contrast: float
    light: tuple[float, float]  # direction (radians) and strength
    distractors: tuple[ObjectSpec, ...]
    positions: tuple[tuple[float, float], ...]  # distractor centres (y, x) in [0, 1]


@dataclass
class Scene:
    """One rendered scene: image 3xHxW in [0, 1], exact masks, label and provenance.

    `objects` is the HxW instance map (0 background, 1 target, 2.. distractors); `mask` is the
    target's mask; `context` is the image without its target, `background` without any object.
    """

    image: torch.Tensor
    objects: torch.Tensor
    label: int
    context: torch.Tensor
    background: torch.Tensor
    split: str
    index: int
    seed: int
    params: dict = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.objects == TARGET_ID

    @property
    def distractor_mask(self) -> torch.Tensor:
        return self.objects > TARGET_ID

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


def check_split(split: str) -> str:
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; choose one of {tuple(_SPLIT_CODES)}")
    return split


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), _SPLIT_CODES[check_split(split)], int(index), stream])
    )


def _random_color(rng: np.random.Generator, saturation=(0.55, 1.0), value=(0.5, 1.0)) -> tuple[float, float, float]:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value))
    return tuple(float(c) for c in rgb)


def draw_target(index: int, split: str = "train", seed: int = 0) -> ObjectSpec:
    """The target of scene `index` (label = index mod 8, so every split is class-balanced)."""
    rng = _rng(seed, split, index, 1)
    pattern, shape = CLASSES[int(index) % len(CLASSES)].split("-")
    base = _random_color(rng)
    second = _random_color(rng, value=(0.0, 0.3)) if rng.uniform() < 0.5 else _random_color(rng, (0.0, 0.25), (0.9, 1))
    return ObjectSpec(
        shape,
        pattern,
        (base, second),
        float(rng.uniform(*TARGET_AREA)),
        float(rng.uniform(0, 2 * math.pi)),
        float(rng.uniform(0.45, 0.6)),
    )


def _draw_distractor(rng: np.random.Generator) -> ObjectSpec:
    shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
    surface = DISTRACTOR_SURFACES[int(rng.integers(len(DISTRACTOR_SURFACES)))]
    return ObjectSpec(
        shape,
        surface,
        (_random_color(rng), _random_color(rng)),
        float(rng.uniform(*DISTRACTOR_AREA)),
        float(rng.uniform(0, 2 * math.pi)),
        1.0,
    )


def object_radius(spec: ObjectSpec, size: int) -> float:
    """Circumradius in pixels that gives the shape its area (closed forms of each shape's area)."""
    factor = {
        "disk": math.pi,
        "square": 2.0,
        "triangle": 3 * math.sqrt(3) / 4,
        "cross": 2.3616,
        "ring": math.pi * (1 - 0.55**2),
        "star": math.pi * 0.40375,
        "ellipse": math.pi / 2.2,
    }[spec.shape]
    return math.sqrt(spec.area * size * size / factor)


def _free_position(
    rng: np.random.Generator, spec: ObjectSpec, size: int, occupied: np.ndarray
) -> tuple[float, float] | None:
    """A centre (y, x) in [0, 1] that keeps the object inside the image, 2 px clear of the `occupied` pixels."""
    radius = object_radius(spec, size)
    for _ in range(60):
        center = tuple(float(c) / size for c in rng.uniform(radius + 1, size - radius - 1, size=2))
        if not (object_mask(spec, center, size) & occupied).any():
            return center
    return None


def _occupied(specs, centers, size: int) -> np.ndarray:
    """Pixels covered by the given objects, grown by 2 px."""
    occupied = np.zeros((size, size), dtype=bool)
    for spec, center in zip(specs, centers):
        occupied |= object_mask(spec, center, size)
    grown = torch.from_numpy(occupied).float()[None, None]
    return F.max_pool2d(grown, 5, 1, 2)[0, 0].numpy() > 0


def draw_context(index: int, split: str = "train", seed: int = 0, size: int = DEFAULT_SIZE) -> Context:
    """The background and the one to three distractors of scene `index`."""
    rng = _rng(seed, split, index, 2)
    distractors, positions = [], []
    for _ in range(int(rng.integers(1, 4))):
        spec = _draw_distractor(rng)
        where = _free_position(rng, spec, size, _occupied(distractors, positions, size))
        if where is not None:
            distractors.append(spec)
            positions.append(where)
    return Context(
        int(rng.integers(POOL_PHOTOS + POOL_TEXTURES)),
        (float(rng.uniform()), float(rng.uniform())),
        bool(rng.uniform() < 0.5),
        float(rng.uniform(0.6, 1.2)),
        float(rng.uniform(0.35, 0.6)),
        (float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.05, 0.2))),
        tuple(distractors),
        tuple(positions),
    )


def place_target(
    target: ObjectSpec, context: Context, rng: np.random.Generator, size: int
) -> tuple[tuple[float, float], Context]:
    """A centre (y, x) in [0, 1] for the target, anywhere off the context's distractors, and the context.

    If the target finds no free place, the context's last distractors are left out until it does
    (the returned context is the one to compose with).
    """
    while True:
        where = _free_position(rng, target, size, _occupied(context.distractors, context.positions, size))
        if where is not None or not context.distractors:
            return (where if where is not None else (0.5, 0.5)), context
        context = replace(context, distractors=context.distractors[:-1], positions=context.positions[:-1])


# ------------------------------------------------------------------------------------------ drawing
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
        arm = 0.36 * radius
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


@lru_cache(maxsize=1)
def _photo_bank() -> tuple[np.ndarray, ...]:
    """The background source photos as float32 HxWx3 arrays in [0, 1] (grey ones as HxWx1), shorter side 192."""
    import skimage.data

    bank = []
    for name in TEXTURE_SOURCES:
        tensor = torch.from_numpy(np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255)
        tensor = (tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1))[None]
        scale = 192 / min(tensor.shape[-2:])
        target = [max(1, round(tensor.shape[-2] * scale)), max(1, round(tensor.shape[-1] * scale))]
        tensor = F.interpolate(tensor, size=target, mode="bilinear", antialias=True, align_corners=False)
        bank.append(tensor[0].permute(1, 2, 0).clamp(0, 1).numpy())
    return tuple(bank)


@lru_cache(maxsize=4)
def background_pool(side: int) -> tuple[np.ndarray, ...]:
    """The shared backgrounds, each side x side x 3 float32 in [0, 1] (fixed seed, the same for every split).

    Photo crops (randomly zoomed, flipped, grey photos tinted with two colours) and procedural
    textures (colour noise at two scales).
    """
    rng = np.random.default_rng(_POOL_SEED)
    bank, pool = _photo_bank(), []
    for k in range(POOL_PHOTOS):
        source = bank[k % len(bank)]
        h, w = source.shape[:2]
        crop_side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        top, left = int(rng.integers(h - crop_side + 1)), int(rng.integers(w - crop_side + 1))
        crop = torch.from_numpy(np.ascontiguousarray(source[top : top + crop_side, left : left + crop_side]))
        crop = (
            F.interpolate(
                crop.permute(2, 0, 1)[None], size=(side, side), mode="bilinear", antialias=True, align_corners=False
            )[0]
            .permute(1, 2, 0)
            .numpy()
        )
        if crop.shape[2] == 1:
            dark, light = np.array(_random_color(rng, value=(0.1, 0.5))), np.array(_random_color(rng, (0.1, 0.6)))
            crop = dark + (light - dark) * crop
        pool.append(np.clip(crop, 0, 1).astype(np.float32))
    for _ in range(POOL_TEXTURES):
        texture = np.zeros((1, 3, side, side), dtype=np.float32)
        for cells, weight in ((int(rng.integers(3, 6)), 0.7), (int(rng.integers(10, 20)), 0.3)):
            grid = torch.from_numpy(rng.uniform(0.1, 0.9, size=(1, 3, cells, cells)).astype(np.float32))
            texture += weight * F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False).numpy()
        pool.append(np.clip(texture[0].transpose(1, 2, 0), 0, 1))
    return tuple(pool)


def _background(context: Context, size: int) -> np.ndarray:
    """The context's defocused, hazy background crop (HxWx3 float64)."""
    source = background_pool(math.ceil(size * 4 / 3))[context.background]
    spare = source.shape[0] - size
    top, left = round(context.offset[0] * spare), round(context.offset[1] * spare)
    crop = source[top : top + size, left : left + size]
    if context.flipped:
        crop = crop[:, ::-1]
    blurred = (
        TF.gaussian_blur(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1), [5, 5], [context.blur])
        .permute(1, 2, 0)
        .numpy()
        .astype(np.float64)
    )
    mean = blurred.mean(axis=(0, 1), keepdims=True)
    return mean + (blurred - mean) * context.contrast


def compose(
    target: ObjectSpec, center: tuple[float, float], context: Context, size: int = DEFAULT_SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render `target` at `center` into `context`: (image, instance map, context image, bare background).

    Images are 3xHxW float tensors quantised to multiples of 1/255, the instance map HxW uint8.
    """
    background = _background(context, size)
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    direction, strength = context.light
    light = (1 + strength * 2 * ((x - 0.5) * math.cos(direction) + (y - 0.5) * math.sin(direction)))[..., None]
    objects = np.zeros((size, size), dtype=np.uint8)
    canvas = background.copy()
    for k, (spec, where) in enumerate(zip(context.distractors, context.positions)):
        mask, colour = draw_object(spec, where, size)
        canvas[mask] = colour[mask]
        objects[mask] = TARGET_ID + 1 + k
    without_target = canvas.copy()
    mask, colour = draw_object(target, center, size)
    canvas[mask] = colour[mask]
    objects[mask] = TARGET_ID

    def finish(img: np.ndarray) -> torch.Tensor:  # light, then quantise exactly as the uint8 cache stores it
        quantised = np.round(np.clip(img * light, 0, 1) * 255).astype(np.uint8)
        return torch.from_numpy(quantised).permute(2, 0, 1).float() / 255

    return finish(canvas), torch.from_numpy(objects), finish(without_target), finish(background)


def render_scene(index: int, split: str = "train", seed: int = 0, size: int = DEFAULT_SIZE) -> Scene:
    """Render scene `index` of `split`: its own target, context and target place."""
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    target, context = draw_target(index, split, seed), draw_context(index, split, seed, size)
    center, context = place_target(target, context, _rng(seed, split, index, 3), size)
    image, objects, without_target, background = compose(target, center, context, size)
    params = {"target": target, "center": center, "context": context}
    return Scene(
        image=image,
        objects=objects,
        label=int(target.label),
        context=without_target,
        background=background,
        split=split,
        index=int(index),
        seed=int(seed),
        params=params,
    )


@dataclass
class SceneSet:
    """A whole split as uint8 tensors: images, context images (target removed), bare backgrounds
    (N x 3 x H x W), instance maps (N x H x W) and labels (N, long)."""

    images: torch.Tensor
    contexts: torch.Tensor
    backgrounds: torch.Tensor
    objects: torch.Tensor
    labels: torch.Tensor
    split: str
    seed: int

    def __post_init__(self) -> None:
        self.masks = self.objects == TARGET_ID  # target masks, N x H x W bool

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def image(self, i: int) -> torch.Tensor:
        """Scene `i` as a float 3xHxW tensor in [0, 1]."""
        return self.images[i].float() / 255

    def float_images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scenes start..stop as a float Bx3xHxW tensor in [0, 1]."""
        return self.images[start:stop].float() / 255


def cache_root() -> Path:
    """<repo>/.cache in a checkout (gitignored), else ~/.cache/cl_explain."""
    try:
        return repo_root() / ".cache"
    except FileNotFoundError:
        return Path.home() / ".cache" / "cl_explain"


def _source_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def load_split(
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> SceneSet:
    """The first `n` scenes (default: the split's fixed size) of a split, as tensors.

    Rendered once and cached under <repo>/.cache/scenes (keyed by the arguments and this file's
    source, so a code change never serves stale scenes); `cache=False` always renders.
    """
    check_split(split)
    n = SPLIT_SIZES[split] if n is None else int(n)
    if n < 1:
        raise ValueError(f"n must be a positive number of scenes, got {n}")
    keys = ("images", "contexts", "backgrounds", "objects", "labels")
    path = None
    if cache:
        folder = Path(cache_dir) if cache_dir is not None else cache_root() / "scenes"
        path = folder / f"{split}-n{n}-s{seed}-px{size}-{_source_digest()}.pt"
        if path.is_file():
            stored = torch.load(path, weights_only=True)
            return SceneSet(*(stored[key] for key in keys), split, seed)
    scenes = [render_scene(i, split, seed, size) for i in range(n)]

    def stack(name: str) -> torch.Tensor:
        return torch.stack([torch.round(getattr(s, name) * 255).to(torch.uint8) for s in scenes])

    arrays = {
        "images": stack("image"),
        "contexts": stack("context"),
        "backgrounds": stack("background"),
        "objects": torch.stack([s.objects for s in scenes]),
        "labels": torch.tensor([s.label for s in scenes], dtype=torch.long),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(arrays, partial)
        partial.replace(path)
    return SceneSet(*(arrays[key] for key in keys), split, seed)
