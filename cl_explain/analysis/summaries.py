"""Summaries across pairs and models: metric tables, correlation with accuracy, paired model comparisons.

* `bootstrap_correlation`: correlation of explanation quality with downstream accuracy across models,
  with a two-level bootstrap (models resampled, and each model's pairs resampled) for its uncertainty
  and a permutation p-value.
* `correlation_table`: that correlation for every (method, metric) of a results table.
* `paired_difference`: model A minus model B on the same pairs (e.g. supervised vs self-supervised),
  mean difference with a bootstrap interval over pairs.
* `inversion_errors`: how closely feature inversions match the original image, per depth and model;
  `inversion_comparison`: whether one model's inversions resemble the images more, as a paired verdict.
* `metric_tables`: the paper's metric table (its rows and columns) per model, with bootstrap intervals.

Every input frame is tidy: columns model, pair_id, method, metric, value (as `evaluate` returns,
with a `model` column added by the caller).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..metrics.summary import bootstrap_ci

if TYPE_CHECKING:
    from ..models.similarity import SimilarityModel

CORRELATIONS = ("spearman", "pearson")


def _correlate(x: np.ndarray, y: np.ndarray, method: str) -> float:
    """Spearman or Pearson correlation; NaN when either input is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    if method == "spearman":
        return float(stats.spearmanr(x, y).statistic)
    return float(np.corrcoef(x, y)[0, 1])


def bootstrap_correlation(
    values: Mapping[str, Sequence[float]],
    accuracy: Mapping[str, float],
    method: str = "spearman",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Correlation across models between the mean explanation metric and the accuracy.

    `values`: model -> per-pair metric values; `accuracy`: model -> downstream accuracy. The interval
    comes from a two-level bootstrap: each draw resamples the models with replacement and, for each
    drawn model, its pairs (draws where a resample is constant are dropped). The p-value is a
    two-sided permutation test of the observed correlation (accuracies shuffled across models).
    Returns r, ci_low, ci_high, p_value, n_models, n_valid_boot.
    """
    if method not in CORRELATIONS:
        raise ValueError(f"method must be one of {CORRELATIONS}, got {method!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    models = [m for m in values if m in accuracy]
    missing = sorted(set(values) - set(accuracy))
    if missing:
        raise ValueError(f"no accuracy for model(s) {missing}; give every evaluated model an accuracy")
    if len(models) < 3:
        raise ValueError(f"a correlation across models needs at least 3 models, got {len(models)}: {models}")
    per_model = [np.asarray(values[m], dtype=float) for m in models]
    if any(v.size == 0 for v in per_model):
        raise ValueError("every model needs at least one metric value")
    x = np.array([v.mean() for v in per_model])
    y = np.array([float(accuracy[m]) for m in models])
    r = _correlate(x, y, method)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        chosen = rng.integers(0, len(models), len(models))
        means = np.array([per_model[i][rng.integers(0, per_model[i].size, per_model[i].size)].mean() for i in chosen])
        boots.append(_correlate(means, y[chosen], method))
    boots = np.asarray(boots)
    boots = boots[np.isfinite(boots)]
    low, high = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2]) if boots.size else (np.nan, np.nan)
    if np.isfinite(r):
        permuted = np.array([_correlate(x, rng.permutation(y), method) for _ in range(n_boot)])
        p_value = float((np.abs(permuted) >= abs(r) - 1e-12).mean())
    else:
        p_value = float("nan")
    return {
        "r": r,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": p_value,
        "n_models": len(models),
        "n_valid_boot": int(boots.size),
    }


def _check_columns(df: pd.DataFrame, needed: set[str]) -> None:
    missing = needed - set(df.columns)
    if missing:
        raise ValueError(
            f"results need the columns {sorted(needed)}; missing {sorted(missing)} "
            "(add a 'model' column to each evaluate() result before concatenating)"
        )


def correlation_table(
    df: pd.DataFrame,
    accuracy: Mapping[str, float],
    method: str = "spearman",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """`bootstrap_correlation` for every (method, metric) in `df` (columns model, method, metric, value)."""
    _check_columns(df, {"model", "method", "metric", "value"})
    rows = []
    for (label, metric), group in df.groupby(["method", "metric"], sort=False):
        values = {model: g["value"].to_numpy(dtype=float) for model, g in group.groupby("model", sort=False)}
        result = bootstrap_correlation(values, accuracy, method, n_boot, ci, seed)
        rows.append({"method": label, "metric": metric, **result})
    return pd.DataFrame(rows)


def read_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """`correlation_table` output plus `aligned` (r signed so that > 0 means better explanations go with
    better accuracy, whatever the metric's direction) and `reading` (what the interval says in words)."""
    from ..metrics import METRICS

    sign = table["metric"].map(lambda m: 1 if METRICS[m].higher_is_better else -1)
    out = table.assign(aligned=table["r"] * sign)
    decided = (out["ci_low"] > 0) | (out["ci_high"] < 0)
    out["reading"] = np.where(
        ~decided,
        "the interval includes 0: no clear relation",
        np.where(
            out["aligned"] > 0, "better explanations with better accuracy", "worse explanations with better accuracy"
        ),
    )
    return out


def per_model_means(df: pd.DataFrame) -> pd.DataFrame:
    """Mean value per (model, method, metric) with the number of pairs."""
    _check_columns(df, {"model", "method", "metric", "value"})
    grouped = df.groupby(["model", "method", "metric"], sort=False)["value"]
    return grouped.agg(mean="mean", n="count").reset_index()


def paired_difference(
    df: pd.DataFrame, model_a: str, model_b: str, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per (method, metric): mean of A, mean of B, and mean(A - B) over the pairs both models scored.

    The interval of the difference is a percentile bootstrap over pairs (the pairing is kept), drawn for
    each (method, metric) by its own generator seeded with `seed`, so a row does not depend on the others.
    Whether a positive difference is good depends on the metric's direction (see `cl_explain.metrics.METRICS`).
    """
    _check_columns(df, {"model", "pair_id", "method", "metric", "value"})
    for name in (model_a, model_b):
        if name not in set(df["model"]):
            raise ValueError(f"model {name!r} is not in the results; models present: {sorted(set(df['model']))}")
    wide = (
        df[df["model"].isin([model_a, model_b])]
        .pivot_table(index=["method", "metric", "pair_id"], columns="model", values="value", aggfunc="mean")
        .dropna()
    )
    rows = []
    for (label, metric), group in wide.groupby(level=["method", "metric"], sort=False):
        diff = (group[model_a] - group[model_b]).to_numpy(dtype=float)
        low, high = bootstrap_ci(diff, ci, n_boot, np.random.default_rng(seed))
        rows.append(
            {
                "method": label,
                "metric": metric,
                "mean_a": float(group[model_a].mean()),
                "mean_b": float(group[model_b].mean()),
                "difference": float(diff.mean()),
                "ci_low": float(low),
                "ci_high": float(high),
                "n_pairs": int(diff.size),
            }
        )
    return pd.DataFrame(rows)


def inversion_errors(
    models: Mapping[str, "SimilarityModel"], image, grid: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    """How well each feature inversion matches: per (depth, model), the relative feature error
    ||Phi(x) - Phi(x0)|| / ||Phi(x0)|| at that depth and the Pearson correlation of x with the image x0.

    `grid` is the output of `invert_features_grid` ({depth: {model name: inverted image}}).
    """
    import torch

    from ..explainers.inversion import feature_map

    rows = []
    with torch.no_grad():
        for depth, per_model in grid.items():
            for name, inverted in per_model.items():
                model = models[name]
                target = feature_map(model, image, depth)
                error = float((feature_map(model, inverted, depth) - target).norm() / target.norm().clamp_min(1e-12))
                pixels = np.corrcoef(inverted.flatten().cpu().numpy(), image.flatten().cpu().numpy())[0, 1]
                rows.append({"depth": depth, "model": name, "feature_error": error, "pixel_correlation": float(pixels)})
    return pd.DataFrame(rows)


def inversion_comparison(
    errors: pd.DataFrame, model_a: str, model_b: str, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Does model A keep more of the image than model B? Per depth, the pixel correlation of A's
    inversion minus B's over the same images, with its bootstrap interval and a verdict ("holds":
    A's inversions resemble the image more, "fails": B's do). `errors` stacks `inversion_errors` of
    several images, told apart by an `image` column."""
    from .verdicts import paired_verdict

    _check_columns(errors, {"image", "depth", "model", "pixel_correlation", "feature_error"})
    wide = errors.pivot_table(index=["depth", "image"], columns="model", values="pixel_correlation")
    missing = {model_a, model_b} - set(wide.columns)
    if missing:
        raise ValueError(f"models {sorted(missing)} are not in the inversion errors; present: {sorted(wide.columns)}")
    rows = []
    for depth in errors["depth"].drop_duplicates():
        pair = wide.loc[depth].dropna(subset=[model_a, model_b])
        verdict = paired_verdict((pair[model_a] - pair[model_b]).to_numpy(), n_boot=n_boot, seed=seed)
        errors_here = errors[errors["depth"] == depth].groupby("model")["feature_error"].max()
        rows.append(
            {
                "depth": depth,
                f"correlation {model_a}": float(pair[model_a].mean()),
                f"correlation {model_b}": float(pair[model_b].mean()),
                **verdict,
                "worst feature error": float(errors_here[[model_a, model_b]].max()),
            }
        )
    return pd.DataFrame(rows)


def scored_on(label: str, method_params: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """Which pair a result row was scored on: "x1, x2" (the pair), "x1, T(x1)" (Averaged Transforms
    builds its own aligned partner) or "x1 only" (Pixel Invariance explains one image); "" for the
    random baselines and explanations made outside the registry. `method_params` maps labels to explain
    parameters ({"method": name} for variants)."""
    from ..explainers import get_method, list_methods

    name = dict((method_params or {}).get(label, {})).get("method", label)
    return get_method(name).scored_pair if name in list_methods() else ""


def method_ranks(means: pd.DataFrame, model: str) -> pd.DataFrame:
    """Rank of every method on every metric for one model (1 = best in the metric's direction).

    `means` is the second output of `metric_tables`; columns are headed by the metric abbreviations."""
    from ..metrics import METRICS

    first = means[means["model"] == model].set_index("method").drop(columns="model")
    return pd.DataFrame(
        {METRICS[m].abbreviation: first[m].rank(ascending=not METRICS[m].higher_is_better) for m in first.columns}
    )


def metric_tables(
    results: pd.DataFrame,
    metrics: Sequence[str],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's table for every model of `results` (columns model, pair_id, method, metric, value).

    Per-direction rows (`<metric>_1`, `_2`) are dropped (the plain name holds their mean). Returns
    (formatted, means): `formatted` has one column per metric headed by its abbreviation and better
    direction (e.g. "SD ↓") with cells "mean [low, high]" (bootstrap over pairs) or "NA", and a
    "scored on" column naming the pair each row was scored on (see `scored_on`); `means` has the
    plain means with the metric names as columns. Rows are (model, method) in first-seen order.
    """
    from ..metrics import METRICS, summarize

    _check_columns(results, {"model", "method", "metric", "value"})
    plain = results[~results["metric"].str.contains(r"_[12]$", regex=True)]
    formatted, means = [], []
    for model, frame in plain.groupby("model", sort=False):
        summary = summarize(frame, ci=ci, n_boot=n_boot, seed=seed)
        present = [m for m in metrics if m in set(summary.columns.get_level_values("metric"))]
        mean = summary.xs("mean", axis=1, level="statistic")[present]
        means.append(mean.rename_axis(columns=None).reset_index().assign(model=model))
        cells = {}
        for metric in present:
            stats_ = summary[metric]
            cells[METRICS[metric].label] = [
                f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if pd.notna(r["mean"]) else "NA"
                for _, r in stats_.iterrows()
            ]
        labels = list(summary.index)
        formatted.append(
            pd.DataFrame(
                {
                    "model": model,
                    "method": labels,
                    "scored on": [scored_on(label, method_params) for label in labels],
                    **cells,
                }
            )
        )
    formatted = pd.concat(formatted, ignore_index=True).fillna("NA")
    means = pd.concat(means, ignore_index=True)
    return formatted, means[["model", "method", *[m for m in metrics if m in means.columns]]]
