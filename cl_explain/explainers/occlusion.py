"""Perturbation explainers (the paper's occlusion family): conditional, context-agnostic and pairwise occlusion.

With S = cos(f(x1), f(x2)), and "zeroed" meaning set to zero in model input space:

* conditional occlusion slides a square window over one image while the other stays intact; a
  window position's value is how far S falls when that window is zeroed;
* context-agnostic occlusion judges a window apart from its surroundings: its value is the cosine
  between the other image's embedding and f(only the window kept) - f(the window zeroed); each map
  is min-max normalised;
* pairwise occlusion erases a random rectangle in both images at once, many times; each draw's fall
  of S, softmax-weighted over the draws, is credited to the erased pixels of the image whose
  perturbed embedding has the smaller norm, and each map is divided by its maximum.

All three run under no_grad, embed each unperturbed image once, and build perturbed images batch by
batch (`batch_size` at a time) with tensor masks, so memory stays bounded whatever the grid size.
The grid helpers (`occlusion_grid`, `rectangle_masks`, `embed_occluded`) are public for reuse.

Source: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive
Learning", IEEE TIP 2023 (arXiv 2206.09753), its perturbation methods Conditional Occlusion,
Context-Agnostic Conditional Occlusion and Pairwise Occlusion. Occlusion of a single image's
prediction goes back to Zeiler and Fergus, ECCV 2014.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.similarity import SimilarityModel, cosine, embed_stream
from .._deprecated import deprecated_alias
from ..maps import minmax
from .base import register_method
from ..utils import cpu_generator

_WINDOW_DEFAULTS = {"window": 64, "stride": 8}
_WINDOW_SCALED = {"window": "length", "stride": "length"}


def rectangle_masks(
    tops: torch.Tensor,
    lefts: torch.Tensor,
    heights: torch.Tensor | int,
    widths: torch.Tensor | int,
    size: tuple[int, int],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean masks Bx1xHxW, True inside rectangle b = rows [top, top+height) x cols [left, left+width)."""
    tops, lefts = torch.as_tensor(tops, device=device), torch.as_tensor(lefts, device=device)
    heights = torch.as_tensor(heights, device=device).expand_as(tops)
    widths = torch.as_tensor(widths, device=device).expand_as(lefts)
    rows = torch.arange(size[0], device=device)
    cols = torch.arange(size[1], device=device)
    in_rows = (rows >= tops[:, None]) & (rows < (tops + heights)[:, None])
    in_cols = (cols >= lefts[:, None]) & (cols < (lefts + widths)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


@dataclass(frozen=True)
class OcclusionGrid:
    """Square `window` x `window` occluders slid with `stride` over a height x width image, row-major."""

    height: int
    width: int
    window: int
    stride: int

    @property
    def shape(self) -> tuple[int, int]:
        """Map size (rows, cols): one value per window position."""
        return (
            (self.height - self.window) // self.stride + 1,
            (self.width - self.window) // self.stride + 1,
        )

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def corners(
        self, start: int, stop: int, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-left pixel (tops, lefts) of the windows with row-major indices start..stop-1, made on `device`."""
        index = torch.arange(start, stop, device=device)
        cols = self.shape[1]
        return (index // cols) * self.stride, (index % cols) * self.stride

    def masks(self, start: int, stop: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean masks (stop-start)x1xHxW, True inside windows start..stop-1."""
        tops, lefts = self.corners(start, stop, device)  # built where the batch is: no copy per batch
        return rectangle_masks(tops, lefts, self.window, self.window, (self.height, self.width), device)


def occlusion_grid(height: int, width: int, window: int, stride: int) -> OcclusionGrid:
    """Validated grid of occluding windows (e.g. 224 px, window 64, stride 8 -> a 21x21 map)."""
    check_window(
        window,
        stride,
        (height, width),
        "occlusion",
        "pixels",
        f"the image ({height}x{width} px)",
        "the default scales with the image side",
    )
    return OcclusionGrid(int(height), int(width), window, stride)


def embed_occluded(
    model: SimilarityModel,
    x: torch.Tensor,
    grid: OcclusionGrid,
    batch_size: int,
    *,
    keep_window: bool = False,
) -> torch.Tensor:
    """Embeddings (len(grid) x D) of `x` with each window set to zero in model input space.

    With `keep_window=True` the complement is zeroed instead: only the window stays visible.
    """
    zero = model.zero_pixel.to(device=x.device, dtype=x.dtype)

    def make_batch(start: int, stop: int) -> torch.Tensor:
        masks = grid.masks(start, stop, x.device)
        return torch.where(~masks if keep_window else masks, zero, x)

    return embed_stream(model, len(grid), make_batch, batch_size)


def check_window(window: int, stride: int, grid: tuple[int, int], owner: str, unit: str, area: str, hint: str) -> None:
    """Window and stride are positive ints and the window fits the `grid` (rows, cols) it slides over."""
    for name, value in (("window", window), ("stride", stride)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner} {name} must be a positive integer number of {unit}, got {value!r}")
    if window > min(grid):
        raise ValueError(f"{owner} window ({window} {unit}) is larger than {area}; pass window <= {min(grid)} ({hint})")


def _grid(x: torch.Tensor, window: int, stride: int) -> OcclusionGrid:
    return occlusion_grid(x.shape[-2], x.shape[-1], window, stride)


def _scaled(heat: torch.Tensor) -> torch.Tensor:
    """An occlusion map in [0, 1]; a constant map (no window changes S more than another) is all zeros."""
    return minmax(heat, constant=0.0)


minmax_normalise = deprecated_alias("minmax_normalise", "cl_explain.maps.minmax(saliency, constant=0.0)", _scaled)


@register_method("occlusion", _WINDOW_DEFAULTS, scaled=_WINDOW_SCALED, sensitivity=False)
@torch.no_grad()
def conditional_occlusion(
    model: SimilarityModel, x1: torch.Tensor, x2: torch.Tensor, *, window: int, stride: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional occlusion (M1): drop of S when a window of one image is zeroed, the other image intact."""
    f1, f2 = model.embed_pair(x1, x2)
    base = cosine(f1, f2)
    maps = []
    for x, other in ((x1, f2), (x2, f1)):
        grid = _grid(x, window, stride)
        occluded = embed_occluded(model, x, grid, batch_size)
        maps.append((base - cosine(occluded, other)).view(grid.shape))
    return maps[0], maps[1]


@register_method("context_agnostic_occlusion", _WINDOW_DEFAULTS, scaled=_WINDOW_SCALED, sensitivity=False)
@torch.no_grad()
def context_agnostic_occlusion(
    model: SimilarityModel, x1: torch.Tensor, x2: torch.Tensor, *, window: int, stride: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Context-agnostic occlusion (M2): cos(f(window only) - f(window zeroed), f(other)), min-max normalised."""
    f1, f2 = model.embed_pair(x1, x2)
    maps = []
    for x, other in ((x1, f2), (x2, f1)):
        grid = _grid(x, window, stride)
        masked = embed_occluded(model, x, grid, batch_size)
        window_only = embed_occluded(model, x, grid, batch_size, keep_window=True)
        heat = cosine(window_only - masked, other).view(grid.shape)
        maps.append(_scaled(heat))
    return maps[0], maps[1]


def sample_erasing_rectangles(
    count: int,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """`count` rectangles (top, left, height, width) drawn as torchvision's RandomErasing draws them.

    Per draw up to `attempts` tries of area fraction ~ U(scale) and log aspect (h/w) ~ U(log ratio);
    the first rectangle that fits strictly inside the image wins; if none fits the draw erases nothing
    (height = width = 0), as RandomErasing then returns the image unchanged.
    """
    height, width = size
    if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
    u = torch.rand(count, attempts, 4, generator=generator, dtype=torch.float64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * u[..., 1])
    rect_h = torch.round(torch.sqrt(area * aspect)).long()
    rect_w = torch.round(torch.sqrt(area / aspect)).long()
    fits = (rect_h < height) & (rect_w < width)
    tops = torch.floor(u[..., 2] * (height - rect_h + 1).clamp(min=1)).long()
    lefts = torch.floor(u[..., 3] * (width - rect_w + 1).clamp(min=1)).long()
    first = fits.long().argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none fits)
    rects = torch.stack([t.gather(1, first)[:, 0] for t in (tops, lefts, rect_h, rect_w)], dim=1)
    rects[~fits.any(dim=1), 2:] = 0
    return rects


def _erased_batch(x: torch.Tensor, rects: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """`x` with rectangle b of `rects` (on x's device) set to `zero`, one image per rectangle."""
    masks = rectangle_masks(*rects.unbind(1), size=tuple(x.shape[-2:]), device=x.device)
    return torch.where(masks, zero, x)


def _credit_map(rects: torch.Tensor, credit: torch.Tensor, size: tuple[int, int], batch_size: int) -> torch.Tensor:
    """sum_n credit_n * mask_n, accumulated `batch_size` rectangles at a time; divided by its max."""
    total = torch.zeros(size, dtype=torch.float64)
    for start in range(0, len(rects), batch_size):
        masks = rectangle_masks(*rects[start : start + batch_size].unbind(1), size=size)[:, 0]
        total += torch.einsum("n,nhw->hw", credit[start : start + batch_size].double(), masks.double())
    peak = total.max()
    return (total / peak if peak > 0 else total).float()


@register_method(
    "pairwise_occlusion",
    {"erasures": 100, "scale": (0.1, 0.3), "ratio": (1.0, 1.5), "seed": 0},
    sensitivity=False,
)
@torch.no_grad()
def pairwise_occlusion(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    *,
    erasures: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    seed: int,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise occlusion (M3): random erasures in both images, softmax(drop)-weighted, credited by embedding norm.

    Each draw erases an independent rectangle in x1 and in x2 (zero in model input space). With
    d_n = S - cos(f(x1^n), f(x2^n)) and w = softmax(d), draw n adds w_n to the erased rectangle of
    the image whose perturbed embedding has the strictly smaller L2 norm (neither on an exact tie).
    Each map is divided by its maximum. Maps are at full image resolution; `seed` fixes the draws.
    """
    if not isinstance(erasures, int) or erasures < 1:
        raise ValueError(f"erasures must be a positive integer, got {erasures!r}")
    generator = cpu_generator(seed)
    rects1 = sample_erasing_rectangles(erasures, tuple(x1.shape[-2:]), scale, ratio, generator)
    rects2 = sample_erasing_rectangles(erasures, tuple(x2.shape[-2:]), scale, ratio, generator)
    zero = model.zero_pixel.to(device=x1.device, dtype=x1.dtype)
    f1, f2 = model.embed_pair(x1, x2)
    # drawn on the CPU (the seed rule), moved to the images' device once (not once per batch)
    on1, on2 = rects1.to(x1.device), rects2.to(x2.device)
    e1 = embed_stream(model, erasures, lambda a, b: _erased_batch(x1, on1[a:b], zero), batch_size)
    e2 = embed_stream(model, erasures, lambda a, b: _erased_batch(x2, on2[a:b], zero), batch_size)
    drops = cosine(f1, f2) - cosine(e1, e2)
    weights = torch.softmax(drops.double(), dim=0).cpu()
    norm1, norm2 = e1.norm(dim=-1).cpu(), e2.norm(dim=-1).cpu()
    map1 = _credit_map(rects1, weights * (norm1 < norm2), tuple(x1.shape[-2:]), batch_size)
    map2 = _credit_map(rects2, weights * (norm2 < norm1), tuple(x2.shape[-2:]), batch_size)
    return map1, map2
