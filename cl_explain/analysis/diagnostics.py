"""What a model looks at on the embedded scenes: object-versus-background diagnostics.

Two tests built from the scenes' decomposition (`cl_explain.data.pairings`):
- swap triplets (anchor, its target elsewhere, another target on its background): the share of
  triplets in which the anchor is more similar to the same object than to the same background;
- bare backgrounds (two views of a scene with every object removed, and a view of the next scene's):
  the share in which the background alone is more similar to itself than to another scene.
A model that explains similarity through the shared object scores high on the first, near or below
one half on the second. Rates come with Wilson 95% intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from ..models.similarity import SimilarityModel

Triplet = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@torch.no_grad()
def triplet_similarities(
    model: SimilarityModel, triplets: Sequence[Triplet] | Triplet, batch_size: int = 200
) -> torch.Tensor:
    """N x 2 float64: (S(a, b), S(a, c)) for each triplet (a, b, c); `triplets` is a list of 1x3xHxW
    triples or three stacked N x 3 x H x W tensors."""
    if isinstance(triplets, tuple) and len(triplets) == 3 and triplets[0].dim() == 4 and len(triplets[0]) > 1:
        stacked = triplets
    else:
        stacked = tuple(torch.cat(column) for column in zip(*triplets))
    if len({len(x) for x in stacked}) != 1:
        raise ValueError(
            f"the three members of the triplets must come in equal numbers, got {[len(x) for x in stacked]}"
        )
    out = []
    for a, b, c in zip(*(x.split(batch_size) for x in stacked)):
        ea, eb, ec = (model(x.to(model.device)).double().cpu() for x in (a, b, c))
        out.append(torch.stack([F.cosine_similarity(ea, eb, dim=-1), F.cosine_similarity(ea, ec, dim=-1)], 1))
    return torch.cat(out)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default)."""
    if n < 1:
        raise ValueError("a proportion needs at least one trial")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # In exact arithmetic the interval lies in [0, 1] and holds p; clamping removes float rounding
    # (at 10 of 10 successes the upper end comes out as 0.9999999999999999).
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def diagnostics_table(
    models: Mapping[str, SimilarityModel], swap: Sequence[Triplet] | Triplet, bare: Sequence[Triplet] | Triplet
) -> pd.DataFrame:
    """One row per model and test: the rate, its Wilson interval, and the mean similarity gap."""
    rows = []
    for name, model in models.items():
        for test, triplets in (("object over background", swap), ("background identifies scene", bare)):
            sims = triplet_similarities(model, triplets)
            wins, n = int((sims[:, 0] > sims[:, 1]).sum()), len(sims)
            low, high = wilson_interval(wins, n)
            rows.append(
                {
                    "model": name,
                    "test": test,
                    "rate": wins / n,
                    "ci_low": low,
                    "ci_high": high,
                    "n": n,
                    "mean_gap": float((sims[:, 0] - sims[:, 1]).mean()),
                }
            )
    return pd.DataFrame(rows)
