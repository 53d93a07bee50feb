"""Reading images from files or PIL objects into 1x3xHxW float tensors in [0, 1]."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: 16-bit and float images are rescaled, transparency is put on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            peak = max(float(arr.max()), 1.0) if arr.max() > 1 else 1.0
        arr = np.clip(arr / peak, 0, 1)
        return Image.fromarray((arr * 255).round().astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("LA", "RGBA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image (any mode) -> 1x3xHxW float tensor in [0, 1]."""
    if img.width == 0 or img.height == 0:
        raise ValueError(f"image has zero size {img.size}; nothing to explain")
    arr = np.asarray(_to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255.0


def load_image(source: str | os.PathLike | Image.Image) -> torch.Tensor:
    """Load a file path or PIL image as a 1x3xHxW tensor in [0, 1], honouring EXIF rotation.

    Accepts RGB, L, LA, RGBA, P, CMYK and 16-bit images.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no image file at {path!r}")
        try:
            img = Image.open(path)
            img.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(
                f"{path!r} is not a readable image ({error}); pass a PNG, JPEG or other PIL-readable file"
            ) from error
    if img.width == 0 or img.height == 0:
        raise ValueError(f"image has zero size {img.size}; nothing to explain")
    img = ImageOps.exif_transpose(img)
    return to_tensor(img)
