"""Pair metrics (the paper's adaptation of single-image metrics to pairs) and the evaluation harness.

Every metric is registered next to its implementation with `@register_metric` (`registry`):
insertion/deletion curves (`perturbation`), average drop/increase (`drop`), max-sensitivity
(`sensitivity`), pointing games (`grounding`); sanity checks are in `sanity`. `evaluate_pair` scores one
explanation (`scoring`), `evaluate` a grid of pairs x methods (`grid`, cached by `cache`, on a Dask
cluster with `client=`: `cluster`), and `summarize` / `format_table` make the paper table with bootstrap
confidence intervals (`summary`).
"""

from ..data.pairs import Pair
from .common import MetricNotApplicable, ScoredPair
from .drop import drop_increase, drop_increase_many
from .grid import evaluate
from .grounding import energy_pointing_game, pointing_game
from .perturbation import Curve, conditional_curve, mean_curves, perturbation_curves, simultaneous_curve
from .registry import METRICS, MetricSpec, default_options, get_metric, list_metrics, paper_metrics, register_metric
from .sanity import random_explanation, randomisation_test, randomization_test
from .scoring import evaluate_pair, evaluate_pairs
from .sensitivity import max_sensitivity
from .summary import bootstrap_ci, format_table, summarise, summarize

#: The columns of the paper's metric table (Table I), in its order.
PAPER_METRICS = paper_metrics()

__all__ = [
    "METRICS",
    "PAPER_METRICS",
    "MetricSpec",
    "MetricNotApplicable",
    "ScoredPair",
    "Pair",
    "register_metric",
    "get_metric",
    "list_metrics",
    "default_options",
    "evaluate_pair",
    "evaluate_pairs",
    "evaluate",
    "summarize",
    "summarise",
    "format_table",
    "bootstrap_ci",
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
    "randomization_test",
    "randomisation_test",
]
