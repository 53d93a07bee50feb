"""Deprecated: the harness is split into `registry`, `scoring`, `grid`, `cache` and `summary`.

Import from `cl_explain.metrics` instead; this module only re-exports the names it used to define.
"""

from __future__ import annotations

import warnings

from .grid import evaluate
from .registry import METRICS, MetricSpec, default_options, list_metrics, paper_metrics
from .scoring import evaluate_pair, evaluate_pairs
from .summary import bootstrap_ci, format_table, summarize

warnings.warn(
    "cl_explain.metrics.harness is deprecated; import from cl_explain.metrics", DeprecationWarning, stacklevel=2
)

PAPER_METRICS = paper_metrics()
DEFAULT_OPTIONS = default_options()

__all__ = [
    "METRICS",
    "PAPER_METRICS",
    "DEFAULT_OPTIONS",
    "MetricSpec",
    "evaluate",
    "evaluate_pair",
    "evaluate_pairs",
    "summarize",
    "format_table",
    "bootstrap_ci",
    "list_metrics",
]
