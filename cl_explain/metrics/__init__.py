"""Pair metrics (the paper's adaptation of single-image metrics to pairs) and the evaluation harness.

Families: insertion/deletion curves (`perturbation`), average drop/increase (`drop`),
max-sensitivity (`sensitivity`), pointing games (`grounding`), sanity checks (`sanity`).
`evaluate_pair` scores one explanation, `evaluate` a grid of pairs x methods (cached),
`summarise` / `format_table` make the paper table with bootstrap confidence intervals.
"""
from .common import MetricNotApplicable
from .drop import drop_increase, drop_increase_many
from .grounding import energy_pointing_game, pointing_game
from .harness import (
    METRICS,
    PAPER_METRICS,
    MetricSpec,
    Pair,
    evaluate,
    evaluate_pair,
    evaluate_pairs,
    format_table,
    list_metrics,
    summarise,
)
from .perturbation import Curve, conditional_curve, mean_curves, perturbation_curves, simultaneous_curve
from .sanity import random_explanation, randomisation_test
from .sensitivity import max_sensitivity

__all__ = [
    "METRICS",
    "PAPER_METRICS",
    "MetricSpec",
    "MetricNotApplicable",
    "Pair",
    "evaluate_pair",
    "evaluate_pairs",
    "evaluate",
    "summarise",
    "format_table",
    "list_metrics",
    "Curve",
    "perturbation_curves",
    "mean_curves",
    "simultaneous_curve",
    "conditional_curve",
    "drop_increase",
    "drop_increase_many",
    "max_sensitivity",
    "pointing_game",
    "energy_pointing_game",
    "random_explanation",
    "randomisation_test",
]
