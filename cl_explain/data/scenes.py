"""The embedded data set (the package's offline default): seeded synthetic scenes with exact object masks and labels.

Each scene is one textured object (a shape with a surface pattern; pattern x shape = the class) on a
cluttered, slightly defocused and hazy background cut from permissively licensed photos shipped
inside scikit-image (grass, gravel, brick, coffee, chelsea, rocket, ...; see data/README.md). Objects are drawn without
anti-aliasing, so the mask is exact: outside the mask every pixel equals the background image.

Scene `index` of split `split` is a pure function of (seed, split, index, size): the splits are
disjoint random streams, and the same arguments give the same scene bit for bit. Pixel values are
multiples of 1/255, so the uint8 cache of a split is lossless.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ..utils import cpu_generator, repo_root
from .pairs import Pair
from .transforms import pure_view, simclr_view

SHAPES = ("disk", "cross")
PATTERNS = ("stripes", "dots", "checks", "plain")
#: Class names, index = label: every (pattern, shape) combination.
CLASSES = tuple(f"{pattern}-{shape}" for pattern in PATTERNS for shape in SHAPES)
#: Fixed split sizes (scenes) used to train and evaluate the embedded models.
SPLIT_SIZES = {"train": 4000, "val": 800, "test": 800}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZE = 64

#: Background sources: scikit-image sample images that ship inside its wheel (no download).
TEXTURE_SOURCES = ("grass", "gravel", "brick", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
_TEXTURE_SIDE = 192  # bank images are stored with this shorter side


@dataclass
class Scene:
    """One rendered scene: image 3xHxW in [0, 1], exact object mask HxW (bool), label, and provenance."""

    image: torch.Tensor
    mask: torch.Tensor
    label: int
    background: torch.Tensor
    split: str
    index: int
    seed: int
    params: dict = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


@dataclass
class SceneSet:
    """A whole split as tensors: images N x 3 x H x W (uint8), masks N x H x W (bool), labels N (long)."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    split: str
    seed: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def image(self, i: int) -> torch.Tensor:
        """Scene `i` as a float 3xHxW tensor in [0, 1]."""
        return self.images[i].float() / 255

    def float_images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scenes start..stop as a float Bx3xHxW tensor in [0, 1]."""
        return self.images[start:stop].float() / 255


def check_split(split: str) -> str:
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; choose one of {tuple(_SPLIT_CODES)}")
    return split


@lru_cache(maxsize=1)
def texture_bank() -> tuple[np.ndarray, ...]:
    """The background source photos as float32 HxWx3 arrays in [0, 1] (grey ones as HxWx1)."""
    import skimage.data

    bank = []
    for name in TEXTURE_SOURCES:
        array = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255
        if array.ndim == 2:
            array = array[..., None]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
        scale = _TEXTURE_SIDE / min(tensor.shape[-2:])
        size = [max(1, round(tensor.shape[-2] * scale)), max(1, round(tensor.shape[-1] * scale))]
        tensor = F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)
        bank.append(tensor[0].permute(1, 2, 0).clamp(0, 1).numpy())
    return tuple(bank)


def _random_color(rng: np.random.Generator, saturation=(0.5, 1.0), value=(0.45, 1.0)) -> np.ndarray:
    """An RGB colour from a uniformly drawn hue and the given saturation/value ranges."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value)), dtype=np.float32)


def _texture_patch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size x 3 crop of a random background photo, randomly zoomed, flipped and tinted."""
    bank = texture_bank()
    source = bank[int(rng.integers(len(bank)))]
    h, w = source.shape[:2]
    side = int(rng.integers(max(8, size // 2), min(h, w) + 1))
    top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = torch.from_numpy(np.ascontiguousarray(source[top:top + side, left:left + side])).permute(2, 0, 1)[None]
    crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    patch = crop.permute(1, 2, 0).numpy()
    if rng.uniform() < 0.5:
        patch = patch[:, ::-1]
    if patch.shape[2] == 1:  # grey texture: map dark..light onto two random colours
        dark, light = _random_color(rng, value=(0.1, 0.5)), _random_color(rng, saturation=(0.1, 0.6), value=(0.6, 1.0))
        patch = dark + (light - dark) * patch
    return np.clip(patch, 0, 1).astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in [0, 1]."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(coords, coords, indexing="ij")


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Inside test of a shape in its own rotated frame (u, v relative to the centre)."""
    if shape == "disk":
        return u**2 + v**2 <= radius**2
    if shape == "cross":
        arm = 0.36 * radius
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Where the object's second colour goes: stripes along v, a lattice of dots, a checkerboard, or nowhere."""
    if pattern == "stripes":
        return np.floor(u / (period / 2)).astype(np.int64) % 2 == 0
    if pattern == "dots":
        du = np.mod(u, period) - period / 2
        dv = np.mod(v, period) - period / 2
        return du**2 + dv**2 <= (0.3 * period) ** 2
    if pattern == "checks":
        return (np.floor(u / (period / 2)).astype(np.int64) + np.floor(v / (period / 2)).astype(np.int64)) % 2 == 0
    if pattern == "plain":
        return np.zeros_like(u, dtype=bool)
    raise ValueError(f"unknown pattern {pattern!r}; patterns are {PATTERNS}")


def _blob(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """An irregular clutter region: a disk with a wobbly radius."""
    cy, cx = rng.uniform(-0.1, 1.1, size=2)
    r0 = rng.uniform(0.06, 0.2)
    k, phase, wobble = int(rng.integers(2, 6)), rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.35)
    angle = np.arctan2(y - cy, x - cx)
    return np.hypot(y - cy, x - cx) <= r0 * (1 + wobble * np.sin(k * angle + phase))


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODES[check_split(split)], int(index)]))


def render_scene(index: int, split: str = "train", seed: int = 0, size: int = DEFAULT_SIZE) -> Scene:
    """Render scene `index` of `split` (label = index mod 8, so every split is class-balanced)."""
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    rng = _scene_rng(seed, split, index)
    label = int(index) % len(CLASSES)
    pattern, shape = CLASSES[label].split("-")
    y, x = _grid(size)

    background = _texture_patch(rng, size)
    for _ in range(int(rng.integers(2, 6))):  # clutter: photo-textured blobs
        region = _blob(rng, y, x)
        background = np.where(region[..., None], _texture_patch(rng, size), background)
    # the background is out of focus and hazier than the object (depth of field, aerial perspective)
    blurred = TF.gaussian_blur(torch.from_numpy(np.ascontiguousarray(background)).permute(2, 0, 1), [5, 5],
                               [float(rng.uniform(0.6, 1.2))])
    background = blurred.permute(1, 2, 0).numpy()
    mean = background.mean(axis=(0, 1), keepdims=True)
    background = mean + (background - mean) * rng.uniform(0.35, 0.65)
    # gentle directional lighting over the whole scene
    light_dir = rng.uniform(0, 2 * math.pi)
    light = 1 + rng.uniform(0.05, 0.2) * ((x - 0.5) * math.cos(light_dir) + (y - 0.5) * math.sin(light_dir)) * 2

    cy, cx = rng.uniform(0.38, 0.62, size=2)
    radius = rng.uniform(0.27, 0.36)
    theta = rng.uniform(0, 2 * math.pi)
    u = math.cos(theta) * (x - cx) + math.sin(theta) * (y - cy)
    v = -math.sin(theta) * (x - cx) + math.cos(theta) * (y - cy)
    mask = shape_mask(shape, u, v, radius)
    period = rng.uniform(0.09, 0.13)
    base = _random_color(rng)
    second = _random_color(rng, value=(0.05, 0.45)) if rng.uniform() < 0.5 else _random_color(rng, saturation=(0.0, 0.3), value=(0.9, 1.0))
    surface = np.where(pattern_mask(pattern, u, v, period)[..., None], second, base)
    shading = 1 - 0.25 * np.clip(np.hypot(u, v) / radius, 0, 1) ** 2  # rounded look

    def finish(img: np.ndarray) -> torch.Tensor:  # light, then quantise exactly as the uint8 cache stores it
        # one precision for the image and its background (float64), so that a value near a rounding
        # boundary lands on the same uint8 level in both and the mask stays exact
        lit = np.asarray(img, dtype=np.float64) * light[..., None]
        quantised = np.round(np.clip(lit, 0, 1) * 255).astype(np.uint8)
        return torch.from_numpy(quantised).permute(2, 0, 1).float() / 255

    background_t = finish(background)
    image_t = finish(np.where(mask[..., None], surface * shading[..., None], background))
    params = {"shape": shape, "pattern": pattern, "center": (float(cy), float(cx)), "radius": float(radius),
              "angle": float(theta), "period": float(period)}
    return Scene(image=image_t, mask=torch.from_numpy(mask), label=label, background=background_t,
                 split=split, index=int(index), seed=int(seed), params=params)


def cache_root() -> Path:
    """<repo>/.cache in a checkout (gitignored), else ~/.cache/cl_explain."""
    try:
        return repo_root() / ".cache"
    except FileNotFoundError:
        return Path.home() / ".cache" / "cl_explain"


def _source_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def load_split(
    split: str = "train", n: int | None = None, seed: int = 0, size: int = DEFAULT_SIZE,
    cache: bool = True, cache_dir: str | Path | None = None,
) -> SceneSet:
    """The first `n` scenes (default: the split's fixed size) of a split, as tensors.

    Rendered once and cached under <repo>/.cache/scenes (keyed by the arguments and this file's
    source, so a code change never serves stale scenes); `cache=False` always renders.
    """
    check_split(split)
    n = SPLIT_SIZES[split] if n is None else int(n)
    if n < 1:
        raise ValueError(f"n must be a positive number of scenes, got {n}")
    path = None
    if cache:
        folder = Path(cache_dir) if cache_dir is not None else cache_root() / "scenes"
        path = folder / f"{split}-n{n}-s{seed}-px{size}-{_source_digest()}.pt"
        if path.is_file():
            stored = torch.load(path, weights_only=True)
            return SceneSet(stored["images"], stored["masks"], stored["labels"], split, seed)
    scenes = [render_scene(i, split, seed, size) for i in range(n)]
    images = torch.stack([torch.round(s.image * 255).to(torch.uint8) for s in scenes])
    masks = torch.stack([s.mask for s in scenes])
    labels = torch.tensor([s.label for s in scenes], dtype=torch.long)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save({"images": images, "masks": masks, "labels": labels}, partial)
        partial.replace(path)
    return SceneSet(images, masks, labels, split, seed)


def scene_pairs(
    n: int, split: str = "test", seed: int = 0, size: int = DEFAULT_SIZE, mode: str = "pure-augmented",
    scene_seed: int = 0, scenes: SceneSet | None = None,
) -> list[Pair]:
    """`n` seeded evaluation pairs of held-out scenes, with object masks that follow each view.

    mode: "pure-augmented" (the paper's protocol: pure view and SimCLR view of one scene),
    "augmented-augmented" (two SimCLR views of one scene) or "different" (pure views of scene i and of
    another scene drawn at random). Scenes come from `scenes` (e.g. a cached `load_split`) or are
    rendered at `size` with `scene_seed`; `seed` drives the augmentations and the partner draw.
    """
    modes = ("pure-augmented", "augmented-augmented", "different")
    if mode not in modes:
        raise ValueError(f"unknown pair mode {mode!r}; choose one of {modes}")
    check_split(split)
    total = len(scenes) if scenes is not None else SPLIT_SIZES[split]
    if not 1 <= n <= total:
        raise ValueError(f"n must be between 1 and {total} (the number of {split} scenes), got {n}")

    def scene(i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if scenes is not None:
            return scenes.image(i), scenes.masks[i], int(scenes.labels[i])
        rendered = render_scene(i, split, scene_seed, size)
        return rendered.image, rendered.mask, rendered.label

    pairs = []
    for i in range(n):
        pair_seed = seed * 1_000_003 + i
        generator = cpu_generator(pair_seed)
        image, mask, label = scene(i)
        if mode == "different":
            other = (i + 1 + int(torch.randint(0, total - 1, (), generator=generator))) % total
            image2, mask2, label2 = scene(other)
            x1, m1 = pure_view(image, size, mask)
            x2, m2 = pure_view(image2, size, mask2)
        else:
            if mode == "pure-augmented":
                x1, m1 = pure_view(image, size, mask)
            else:
                x1, m1, _ = simclr_view(image, size, generator, mask)
            x2, m2, _ = simclr_view(image, size, generator, mask)
            label2 = label
        pairs.append(Pair(x1=x1, x2=x2, mask1=m1, mask2=m2, label=label, label2=label2,
                               pair_id=f"{split}-{i:04d}-{mode}-s{seed}", seed=pair_seed))
    return pairs
