"""Pointing game and energy-based pointing game against ground-truth object masks (ours, beyond the paper).

Maps are bilinearly resized to the mask (= image) size first.

* Pointing game: 1 if the map's maximum lies inside the object mask, else 0. Pixels within
  `PEAK_TOLERANCE` of the map's value range below the maximum count as tied for it, and with ties
  the score is the fraction of the tied pixels inside the mask (so a constant map scores the mask's
  area share, i.e. chance level, instead of depending on raster order). The tolerance makes the
  score a property of the map rather than of float rounding: CPU kernels (AVX2 against AVX512, say)
  change a map by about 1e-6 of its range, which decides an exact argmax between the near-equal
  pixels of an upsampled plateau and moved a 20-pair table entry by 0.012.
* Energy pointing game: share of the positive map energy, sum(ReLU(map) * mask) / sum(ReLU(map)).
  A map without positive values has no energy: `MetricNotApplicable`.

An empty mask (the object is not visible in this view, e.g. cropped away) is `MetricNotApplicable`.

Not in Sammani, Joukovsky, Deligiannis, "Visualizing and Understanding Contrastive Learning", IEEE
TIP 2023 (arXiv 2206.09753). Pointing game: Zhang et al., "Top-down Neural Attention by Excitation
Backprop", ECCV 2016; energy-based pointing game: Wang et al., "Score-CAM", CVPR Workshops 2020.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..explainers.base import resize_map
from ..models.similarity import SimilarityModel
from .common import MetricNotApplicable, ScoredPair, directional
from .registry import register_metric

#: Pixels within this fraction of the map's range below its maximum are tied with the maximum.
PEAK_TOLERANCE = 1e-4


def check_mask(mask: torch.Tensor, size: tuple[int, int], name: str = "mask") -> torch.Tensor:
    """An object mask as an HxW bool tensor of the image size (accepts 1xHxW / 1x1xHxW, 0/1 values)."""
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    while mask.dim() > 2 and mask.shape[0] == 1:
        mask = mask[0]
    if tuple(mask.shape) != tuple(size):
        raise ValueError(f"{name} must be an HxW mask of the image size {tuple(size)}, got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must be boolean or 0/1 valued")
        mask = mask.bool()
    if not bool(mask.any()):
        raise MetricNotApplicable(f"{name} is empty: the object is not visible in this view, so grounding is undefined")
    return mask.cpu()


def pointing_game(saliency: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the map's maximal pixels (up to `PEAK_TOLERANCE` of its range) inside the mask (1/0 for one peak)."""
    mask = check_mask(mask, tuple(mask.shape[-2:]))
    resized = resize_map(saliency, tuple(mask.shape)).cpu().double()
    peak, low = resized.max(), resized.min()
    top = resized >= peak - PEAK_TOLERANCE * (peak - low)
    return float((top & mask).sum()) / float(top.sum())


def energy_pointing_game(saliency: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the positive map energy inside the mask: sum(ReLU(map)[mask]) / sum(ReLU(map))."""
    mask = check_mask(mask, tuple(mask.shape[-2:]))
    energy = resize_map(saliency, tuple(mask.shape)).cpu().clamp(min=0).double()
    total = float(energy.sum())
    if total <= 0:
        raise MetricNotApplicable("the map has no positive values, so the energy pointing game is undefined")
    return float(energy[mask].sum()) / total


def _checked_masks(
    masks: Any, map2: torch.Tensor | None, size: tuple[int, int], metric: str
) -> list[torch.Tensor | None]:
    """The masks the maps need, validated; None for a view whose mask is empty (object not visible)."""
    needed = 1 if map2 is None else 2
    masks = list(masks) if masks is not None else []
    if len(masks) < needed or any(m is None for m in masks[:needed]):
        raise ValueError(
            f"{metric} needs ground-truth object masks for {'x1' if needed == 1 else 'both images'}: pass "
            "masks=(mask1, mask2) to evaluate_pair, or pairs with mask1/mask2 to evaluate"
        )
    checked = []
    for i, m in enumerate(masks[:needed], start=1):
        try:
            checked.append(check_mask(m, size, f"mask{i}"))
        except MetricNotApplicable:
            checked.append(None)
    return checked


_GAMES = {"pointing_game": pointing_game, "energy_pointing_game": energy_pointing_game}


@register_metric(
    "pointing_game",
    family="grounding",
    higher_is_better=True,
    abbreviation="PG",
    needs_masks=True,
    description="map maximum inside the object mask (mean over the views showing it)",
)
@register_metric(
    "energy_pointing_game",
    family="grounding",
    higher_is_better=True,
    abbreviation="EPG",
    needs_masks=True,
    description="share of positive map energy inside the object mask",
)
def _grounding_family(model: SimilarityModel, items: Sequence[ScoredPair], options: dict) -> list[dict]:
    """Both pointing games of every item, per view that shows the object."""
    out = []
    for item in items:
        checked = _checked_masks(item.masks, item.maps[1], tuple(item.x1.shape[-2:]), item.metrics[0])
        visible = {
            i: (m, k) for i, (m, k) in enumerate(zip(item.maps, checked), start=1) if m is not None and k is not None
        }
        values: dict = {}
        for name in item.metrics:
            if not visible:
                values[name] = MetricNotApplicable(
                    f"{name}: the object mask is empty in every view, so grounding is undefined"
                )
                continue
            try:
                values[name] = directional(name, {i: _GAMES[name](m, k) for i, (m, k) in visible.items()})
            except MetricNotApplicable as reason:
                values[name] = reason
        out.append(values)
    return out
