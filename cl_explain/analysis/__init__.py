"""Analyses on top of the tidy results of `cl_explain.evaluate` (columns model, pair_id, method, metric, value).

* `summaries`: the paper's metric table with bootstrap intervals, correlation of explanation quality
  with downstream accuracy across models, paired model comparisons, inversion errors.
* `verdicts`: the orderings the study reports, each re-tested as paired differences over the same
  pairs with a bootstrap interval and a verdict holds / fails / inconclusive.
* `published`: the authors' published metric table, as data, and its comparison with ours.
* `diagnostics`: what a model looks at on the embedded scenes (object versus background).
"""

from .diagnostics import diagnostics_table, triplet_similarities, wilson_interval
from .published import PUBLISHED, PUBLISHED_SOURCE, published_table, rank_agreement, side_by_side
from .summaries import (
    CORRELATIONS,
    bootstrap_correlation,
    correlation_table,
    inversion_comparison,
    inversion_errors,
    method_ranks,
    metric_tables,
    paired_difference,
    per_model_means,
    read_correlations,
    scored_on,
)
from .verdicts import CLAIMS, Claim, Comparison, claim_verdicts, paired_verdict

__all__ = [
    "CORRELATIONS",
    "bootstrap_correlation",
    "correlation_table",
    "inversion_comparison",
    "inversion_errors",
    "method_ranks",
    "metric_tables",
    "scored_on",
    "paired_difference",
    "per_model_means",
    "read_correlations",
    "CLAIMS",
    "Claim",
    "Comparison",
    "claim_verdicts",
    "paired_verdict",
    "PUBLISHED",
    "PUBLISHED_SOURCE",
    "published_table",
    "rank_agreement",
    "side_by_side",
    "diagnostics_table",
    "triplet_similarities",
    "wilson_interval",
]
