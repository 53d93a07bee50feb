"""What every metric module shares: the "not applicable" signal and the item a metric scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..explainers.base import PairExplanation

#: A metric's result for one pair: its value under the metric's name, plus per-direction keys.
Values = dict[str, float]


class MetricNotApplicable(ValueError):
    """The metric is not defined for this explanation or pair (reported as NA, never as NaN)."""


@dataclass(frozen=True)
class ScoredPair:
    """One explanation to score: the pair it explains (its partner, if it chose one), maps at image size,
    the metrics wanted and the object masks (or None)."""

    x1: torch.Tensor
    x2: torch.Tensor
    explanation: PairExplanation
    maps: tuple[torch.Tensor, torch.Tensor | None]
    metrics: tuple[str, ...]
    masks: Any = None


def directional(name: str, per_direction: dict[int, float]) -> Values:
    """A conditional metric: the mean over the available directions plus one key per direction."""
    values = {name: float(np.mean(list(per_direction.values())))}
    values.update({f"{name}_{d}": v for d, v in per_direction.items()})
    return values


def single_map(name: str) -> MetricNotApplicable:
    """The reason a metric that needs both maps does not apply to an explanation of x1 alone."""
    return MetricNotApplicable(
        f"{name} needs a map for both images; this explanation explains x1 only (map2 is None), so only the "
        "conditional metrics in direction 1 apply"
    )
