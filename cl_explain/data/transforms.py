"""Seeded views as the paper builds its pairs: pure, SimCLR augmented, no-shift views and averaged-transform families.

Every random draw comes from an explicit torch.Generator, so the same seed gives the same view bit for
bit. Sizes stated at 224 px (blur kernels and sigmas) are scaled with the output side. Images are float
tensors in [0, 1], 3xHxW or 1x3xHxW; views are returned as 1x3xHxW. Masks (HxW) follow the geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

from ..utils import scale_kernel, scale_sigma

#: The SimCLR augmentation recipe the paper uses (values at 224 px).
SIMCLR_RECIPE = {
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (3 / 4, 4 / 3),
    "flip_p": 0.5,
    "jitter": (0.8, 0.8, 0.8, 0.2),
    "jitter_p": 0.8,
    "gray_p": 0.2,
    "blur_kernel": 21,
    "blur_sigma": (0.1, 2.0),
    "blur_p": 0.5,
}

AVERAGED_FAMILIES = ("color_jitter", "blur", "grayscale", "solarize", "combine")


@dataclass(frozen=True)
class ViewParams:
    """Geometry of a view: the crop (top, left, height, width) taken from the source and the flip."""

    crop: tuple[int, int, int, int]
    flipped: bool
    size: tuple[int, int]

    def apply_to_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Map a source mask (HxW) into this view with nearest-neighbour resampling."""
        top, left, height, width = self.crop
        out = TF.resized_crop(
            mask[None].to(torch.uint8),
            top,
            left,
            height,
            width,
            list(self.size),
            interpolation=TF.InterpolationMode.NEAREST,
        )[0]
        if self.flipped:
            out = out.flip(-1)
        return out.to(mask.dtype)


def as_batch(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Return a 1x3xHxW float view of a 3xHxW or 1x3xHxW image tensor in [0, 1]."""
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"{name} must be 3xHxW or 1x3xHxW, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"{name} must be float in [0, 1]; got {image.dtype} (use cl_explain.data.to_tensor)")
    if min(image.shape[-2:]) < 1:
        raise ValueError(f"{name} has zero size {tuple(image.shape)}")
    return image


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


def _coin(generator: torch.Generator, p: float) -> bool:
    return bool(torch.rand((), generator=generator) < p)


def sample_crop(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A random-resized-crop box (top, left, h, w): area fraction in `scale`, aspect in `ratio` (log-uniform).

    Up to ten tries; if none fits, the central crop with the aspect ratio clamped to `ratio`.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(
    image: torch.Tensor,
    generator: torch.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> torch.Tensor:
    """Colour jitter with factors drawn from the generator, applied in a random order."""
    factors = {
        "brightness": _uniform(generator, max(0.0, 1 - brightness), 1 + brightness),
        "contrast": _uniform(generator, max(0.0, 1 - contrast), 1 + contrast),
        "saturation": _uniform(generator, max(0.0, 1 - saturation), 1 + saturation),
        "hue": _uniform(generator, -hue, hue),
    }
    adjust = {
        "brightness": TF.adjust_brightness,
        "contrast": TF.adjust_contrast,
        "saturation": TF.adjust_saturation,
        "hue": TF.adjust_hue,
    }
    order = list(factors)
    for index in torch.randperm(4, generator=generator).tolist():
        name = order[index]
        image = adjust[name](image, factors[name])
    return image.clamp(0, 1)


def grayscale(image: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(image, num_output_channels=3)


def gaussian_blur(image: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def solarize(image: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels at or above `threshold` (128 of 255 in the paper)."""
    return torch.where(image >= threshold, 1 - image, image)


def random_blur(
    image: torch.Tensor,
    generator: torch.Generator,
    side: int,
    kernel: int = 21,
    sigma: tuple[float, float] = (0.1, 2.0),
) -> torch.Tensor:
    """Gaussian blur with a random sigma; kernel and sigma range scaled from 224 px to `side`."""
    s = _uniform(generator, scale_sigma(sigma[0], side), scale_sigma(sigma[1], side))
    return gaussian_blur(image, scale_kernel(kernel, side), s)


def photometric(
    image: torch.Tensor,
    generator: torch.Generator,
    side: int,
    jitter=(0.8, 0.8, 0.8, 0.2),
    jitter_p=0.8,
    gray_p=0.2,
    blur_p: float | None = 0.5,
) -> torch.Tensor:
    """The colour part of the SimCLR recipe: jitter (p), grayscale (p), then blur (p; None = no blur)."""
    if _coin(generator, jitter_p):
        image = color_jitter(image, generator, *jitter)
    if _coin(generator, gray_p):
        image = grayscale(image)
    if blur_p is not None and _coin(generator, blur_p):
        image = random_blur(image, generator, side)
    return image


def _pure_resize(height: int, width: int, size: int) -> tuple[int, int]:
    """The (height, width) the pure view resizes to before its centre crop (shorter side size*256/224)."""
    scale = int(round(size * 256 / 224)) / min(height, width)
    return max(size, int(round(height * scale))), max(size, int(round(width * scale)))


def pure_crop_box(height: int, width: int, size: int) -> tuple[float, float, float, float]:
    """The source region (top, left, height, width) that the pure view of `size` shows, in source pixels."""
    nh, nw = _pure_resize(height, width, size)
    box_h, box_w = size * height / nh, size * width / nw
    return (height - box_h) / 2, (width - box_w) / 2, box_h, box_w


def pure_view(
    image: torch.Tensor, size: int = 224, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize the shorter side to size*256/224, then centre-crop size x size (mask follows)."""
    image = as_batch(image)
    nh, nw = _pure_resize(*image.shape[-2:], size)
    view = TF.resize(image, [nh, nw], antialias=True).clamp(0, 1)
    view = TF.center_crop(view, [size, size])
    if mask is None:
        return view, None
    m = TF.resize(mask[None].to(torch.uint8), [nh, nw], interpolation=TF.InterpolationMode.NEAREST)
    return view, TF.center_crop(m, [size, size])[0].to(mask.dtype)


def simclr_view(
    image: torch.Tensor, size: int, generator: torch.Generator, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, ViewParams]:
    """The SimCLR augmented view: random resized crop, flip, jitter, grayscale, blur; no solarisation."""
    image = as_batch(image)
    h, w = image.shape[-2:]
    recipe = SIMCLR_RECIPE
    crop = sample_crop(h, w, generator, recipe["crop_scale"], recipe["crop_ratio"])
    flipped = _coin(generator, recipe["flip_p"])
    params = ViewParams(crop=crop, flipped=flipped, size=(size, size))
    view = TF.resized_crop(image, *crop, [size, size], antialias=True).clamp(0, 1)
    if flipped:
        view = view.flip(-1)
    view = photometric(view, generator, size, recipe["jitter"], recipe["jitter_p"], recipe["gray_p"], recipe["blur_p"])
    view_mask = params.apply_to_mask(mask) if mask is not None else None
    return view.clamp(0, 1), view_mask, params


def no_shift_view(
    image: torch.Tensor,
    size: int,
    generator: torch.Generator,
    erase: bool = False,
    erase_p: float = 0.5,
    erase_scale=(0.02, 0.33),
    erase_ratio=(0.3, 3.3),
    erase_value: float = 0.0,
) -> torch.Tensor:
    """Pixel-aligned augmentation: resize to size x size, jitter (p .8), grayscale (p .2), optional erasing."""
    image = TF.resize(as_batch(image), [size, size], antialias=True).clamp(0, 1)
    view = photometric(image, generator, size, blur_p=None)
    if erase and _coin(generator, erase_p):
        top, left, h, w = sample_crop(size, size, generator, erase_scale, erase_ratio)
        view = view.clone()
        view[..., top : top + h, left : left + w] = erase_value
    return view


def averaged_transform(image: torch.Tensor, family: str, generator: torch.Generator) -> torch.Tensor:
    """A pixel-aligned transformed copy of `image` for Averaged Transforms.

    The paper's transform families, each applied with p=1.
    """
    image = as_batch(image)
    side = min(image.shape[-2:])
    if family == "color_jitter":
        out = color_jitter(image, generator, 0.8, 0.8, 0.8, 0.4)
    elif family == "blur":
        out = gaussian_blur(image, scale_kernel(11, side), scale_sigma(5.0, side))
    elif family == "grayscale":
        out = grayscale(image)
    elif family == "solarize":
        out = solarize(image)
    elif family == "combine":
        out = photometric(image, generator, side)
    else:
        raise ValueError(f"unknown averaged-transform family {family!r}; choose one of {AVERAGED_FAMILIES}")
    return out.clamp(0, 1)
