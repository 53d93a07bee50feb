"""The embedded data set (the package's offline default): seeded synthetic scenes with exact masks.

A scene holds one *target* object, whose class is the label, and one to three *distractors*.
The target is one of four shapes (disk, square, triangle, cross) with one of two surface patterns
(stripes, checks): 8 classes. Colours, size, pose and pattern scale are free, so they do not
reveal the class. Distractors are other shapes (ring, star, ellipse) with plain or graded surfaces.
They are as salient as the target but carry no class. The target covers 6-14% of the image, each
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

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ..utils import repo_root
from .backgrounds import POOL_PHOTOS, POOL_TEXTURES, TEXTURE_SOURCES, background_pool, random_color
from .shapes import (
    CLASSES,
    DISTRACTOR_SHAPES,
    DISTRACTOR_SURFACES,
    PATTERNS,
    TARGET_SHAPES,
    ObjectSpec,
    draw_object,
    object_mask,
    object_radius,
    pattern_mask,
    shape_mask,
)

__all__ = [
    "CLASSES",
    "DISTRACTOR_SHAPES",
    "DISTRACTOR_SURFACES",
    "PATTERNS",
    "TARGET_SHAPES",
    "ObjectSpec",
    "draw_object",
    "object_mask",
    "object_radius",
    "pattern_mask",
    "shape_mask",
    "POOL_PHOTOS",
    "POOL_TEXTURES",
    "TEXTURE_SOURCES",
    "background_pool",
    "random_color",
    "Context",
    "Scene",
    "SceneSet",
    "DEFAULT_SIZE",
    "SPLIT_SIZES",
    "TARGET_AREA",
    "DISTRACTOR_AREA",
    "TARGET_ID",
    "check_split",
    "draw_target",
    "draw_context",
    "place_target",
    "compose",
    "render_scene",
    "load_split",
    "cache_root",
]

#: Fixed split sizes (scenes) used to train and evaluate the embedded models.
SPLIT_SIZES = {"train": 4000, "val": 800, "test": 800}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZE = 96
#: Share of the image area of the target and of each distractor (all within 3-15%).
TARGET_AREA, DISTRACTOR_AREA = (0.06, 0.14), (0.03, 0.09)
#: Instance-map codes: 0 = background, 1 = target, 2.. = distractors.
TARGET_ID = 1


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


def draw_target(index: int, split: str = "train", seed: int = 0) -> ObjectSpec:
    """The target of scene `index` (label = index mod 8, so every split is class-balanced)."""
    rng = _rng(seed, split, index, 1)
    pattern, shape = CLASSES[int(index) % len(CLASSES)].split("-")
    base = random_color(rng)
    second = random_color(rng, value=(0.0, 0.3)) if rng.uniform() < 0.5 else random_color(rng, (0.0, 0.25), (0.9, 1))
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
        (random_color(rng), random_color(rng)),
        float(rng.uniform(*DISTRACTOR_AREA)),
        float(rng.uniform(0, 2 * math.pi)),
        1.0,
    )


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
    """Digest of the modules that decide a rendered scene (this one, shapes, backgrounds)."""
    folder = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("scenes.py", "shapes.py", "backgrounds.py"):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


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
