"""Object-versus-background diagnostics: similarities of triplets, Wilson intervals, the table."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cl_explain.analysis.diagnostics import diagnostics_table, triplet_similarities, wilson_interval
from cl_explain.models.similarity import SimilarityModel


class MeanColour(nn.Module):
    """A 'backbone' whose 1x1 map is the image's mean colour plus a constant, so S is a cosine of colours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True) + 1.0


def colour_model() -> SimilarityModel:
    return SimilarityModel(MeanColour(), None, name="mean-colour")


def test_triplet_similarities_equal_hand_computed_cosines():
    g = torch.Generator().manual_seed(0)
    triplets = [tuple(torch.rand(1, 3, 8, 8, generator=g) for _ in range(3)) for _ in range(5)]
    sims = triplet_similarities(colour_model(), triplets, batch_size=2)
    assert sims.shape == (5, 2) and sims.dtype == torch.float64
    for (a, b, c), (s_ab, s_ac) in zip(triplets, sims.tolist()):
        ea, eb, ec = (x.double().mean((2, 3))[0] + 1.0 for x in (a, b, c))
        assert s_ab == pytest.approx(float(ea @ eb / (ea.norm() * eb.norm())), abs=1e-6)
        assert s_ac == pytest.approx(float(ea @ ec / (ea.norm() * ec.norm())), abs=1e-6)
    stacked = tuple(torch.cat(column) for column in zip(*triplets))
    assert torch.allclose(triplet_similarities(colour_model(), stacked), sims)
    with pytest.raises(ValueError, match="equal numbers"):
        triplet_similarities(colour_model(), (stacked[0], stacked[1][:3], stacked[2]))


def test_wilson_interval_holds_the_rate_and_stays_in_0_1_at_the_extremes():
    for n in range(1, 201):
        for successes in (0, n):
            low, high = wilson_interval(successes, n)
            assert 0.0 <= low <= successes / n <= high <= 1.0, (successes, n, low, high)


def test_wilson_interval_matches_the_closed_form_and_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook example
    low, high = wilson_interval(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12) and 0.1 < high < 0.2
    assert wilson_interval(50, 100)[0] == pytest.approx(1 - wilson_interval(50, 100)[1])
    with pytest.raises(ValueError, match="at least one"):
        wilson_interval(0, 0)


def test_diagnostics_table_counts_wins():
    """b equal to a always wins (S = 1), so the object test passes every triplet; with b and c swapped none."""
    g = torch.Generator().manual_seed(1)
    anchors = [torch.rand(1, 3, 8, 8, generator=g) for _ in range(6)]
    others = [torch.rand(1, 3, 8, 8, generator=g) * 0.2 for _ in range(6)]
    swap = [(a, a.clone(), o) for a, o in zip(anchors, others)]
    bare = [(a, o, a.clone()) for a, o in zip(anchors, others)]
    table = diagnostics_table({"colour": colour_model()}, swap, bare)
    rates = dict(zip(table.test, table.rate))
    assert rates == {"object over background": 1.0, "background identifies scene": 0.0}
    assert (table.ci_low <= table.rate).all() and (table.rate <= table.ci_high).all() and (table.n == 6).all()
    assert math.isfinite(table.mean_gap.iloc[0]) and table.mean_gap.iloc[0] > 0
