"""Summaries of `evaluate` results: means with bootstrap confidence intervals, and the paper-style table."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd

from .. import markdown
from .._deprecated import deprecated_alias
from .registry import METRICS


def bootstrap_ci(
    values: np.ndarray, ci: float = 0.95, n_boot: int = 1000, rng: np.random.Generator | None = None
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (a single value gives [value, value])."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = rng or np.random.default_rng(0)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(low), float(high)


def summarize(df: pd.DataFrame, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Methods (rows, in order of appearance) x metrics (columns): mean, ci_low, ci_high, n over pairs.

    Columns are a MultiIndex (metric, statistic); e.g. `summary["deletion_simultaneous"]["mean"]`.
    Each (method, metric) cell is resampled by its own generator seeded with `seed`, so its interval does
    not depend on which other methods or metrics the frame holds, nor on their order.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    missing = {"method", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"df needs the columns method, metric, value (from evaluate); missing {sorted(missing)}")
    order = {name: i for i, name in enumerate(METRICS)}
    metric_names = sorted(df["metric"].unique(), key=lambda m: (order.get(re.sub(r"_[12]$", "", m), len(order)), m))
    methods = list(dict.fromkeys(df["method"]))
    columns = pd.MultiIndex.from_product(
        [metric_names, ["mean", "ci_low", "ci_high", "n"]], names=["metric", "statistic"]
    )
    summary = pd.DataFrame(index=pd.Index(methods, name="method"), columns=columns, dtype=float)
    for (method, metric), group in df.groupby(["method", "metric"], sort=False):
        values = group["value"].to_numpy(dtype=float)
        low, high = bootstrap_ci(values, ci, n_boot, np.random.default_rng(seed))
        for stat, value in {"mean": float(values.mean()), "ci_low": low, "ci_high": high, "n": len(values)}.items():
            summary.loc[method, (metric, stat)] = value
    return summary


summarise = deprecated_alias("summarise", "summarize", summarize)


def format_table(
    summary: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    digits: int = 3,
    ci: bool = True,
    abbreviate: bool = True,
) -> str:
    """A markdown table of a `summarize` result, paper style: "mean [low, high]", NA where undefined.

    `metrics` picks and orders the columns (e.g. `PAPER_METRICS`); metrics absent from `summary` show NA.
    """
    available = list(dict.fromkeys(summary.columns.get_level_values("metric")))
    metrics = available if metrics is None else list(metrics)

    def cell(method: str, metric: str) -> str:
        mean = summary.loc[method, (metric, "mean")] if metric in available else float("nan")
        if pd.isna(mean):
            return "NA"
        text = f"{mean:.{digits}f}"
        if ci:
            low, high = summary.loc[method, (metric, "ci_low")], summary.loc[method, (metric, "ci_high")]
            text += f" [{low:.{digits}f}, {high:.{digits}f}]"
        return text

    def header(metric: str) -> str:
        return METRICS[metric].label if abbreviate and metric in METRICS else metric

    return markdown.table(
        ["method", *map(header, metrics)], [[method, *(cell(method, m) for m in metrics)] for method in summary.index]
    )
