"""Helpers on saliency maps shared by methods, metrics and plots: min-max scaling and rank agreement."""

from __future__ import annotations

import numpy as np
import torch


def minmax(maps: torch.Tensor, constant: float) -> torch.Tensor:
    """Scale each map to [0, 1] over its last two dimensions (one H x W map or a B x H x W stack).

    A map without a positive finite range (constant) has no scale: it becomes `constant` everywhere.
    Callers say what a constant map means to them: 0 (no evidence anywhere) or 1 (no preference: keep all).
    """
    stack = maps if maps.dim() > 2 else maps[None]
    low, high = stack.amin(dim=(-2, -1), keepdim=True), stack.amax(dim=(-2, -1), keepdim=True)
    span = high - low
    usable = torch.isfinite(span) & (span > 0)
    scaled = torch.where(usable, (stack - low) / torch.where(usable, span, torch.ones_like(span)), constant)
    return scaled if maps.dim() > 2 else scaled[0]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps of the same shape (average ranks for ties), never NaN.

    A constant map has no ranking: two equal constant maps agree fully (1.0), a constant map against
    any other map shares no ranking (0.0).
    """
    from scipy.stats import rankdata

    a = torch.as_tensor(a).detach().double().flatten().cpu().numpy()
    b = torch.as_tensor(b).detach().double().flatten().cpu().numpy()
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape to be compared, got {a.size} and {b.size} values")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))
