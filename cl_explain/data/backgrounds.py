"""The shared background pool of the embedded scenes: photo crops and procedural textures.

Photos ship inside scikit-image's wheel (no download; credits in data/README.md); grey ones are
tinted with two random colours. The pool is drawn from a fixed seed, so every split and scene draws
from the same 48 backgrounds.
"""

from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

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


def random_color(rng: np.random.Generator, saturation=(0.55, 1.0), value=(0.5, 1.0)) -> tuple[float, float, float]:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value))
    return tuple(float(c) for c in rgb)


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
            dark, light = np.array(random_color(rng, value=(0.1, 0.5))), np.array(random_color(rng, (0.1, 0.6)))
            crop = dark + (light - dark) * crop
        pool.append(np.clip(crop, 0, 1).astype(np.float32))
    for _ in range(POOL_TEXTURES):
        texture = np.zeros((1, 3, side, side), dtype=np.float32)
        for cells, weight in ((int(rng.integers(3, 6)), 0.7), (int(rng.integers(10, 20)), 0.3)):
            grid = torch.from_numpy(rng.uniform(0.1, 0.9, size=(1, 3, cells, cells)).astype(np.float32))
            texture += weight * F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False).numpy()
        pool.append(np.clip(texture[0].transpose(1, 2, 0), 0, 1))
    return tuple(pool)
