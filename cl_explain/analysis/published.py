"""The study's published metric table, as data, and how our numbers compare with it.

Source: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive
Learning", IEEE Transactions on Image Processing, 2023 (arXiv 2206.09753), Table I: 16 method rows
x 9 metrics for SimCLRv2 ResNet-50 (2x) and Barlow Twins ResNet-50 on ImageNet validation pairs.
NA (a metric the study does not define for a method, e.g. max-sensitivity of occlusion) is None.

Our embedded models are small networks on synthetic scenes, so absolute values are not expected to
match; what can agree is the ORDER of the methods on each metric. `rank_agreement` gives, per
metric, the Spearman correlation between our method means and the published ones over the methods
both tables have, with a bootstrap interval over our pairs (our sampling noise; the published
values are taken as exact).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

PUBLISHED_SOURCE = (
    "Sammani, Joukovsky, Deligiannis, Visualizing and Understanding Contrastive Learning, IEEE TIP 2023, Table I"
)

#: Column order of the published table, by our metric names.
PUBLISHED_METRICS = (
    "insertion_simultaneous",
    "deletion_simultaneous",
    "insertion_conditional",
    "deletion_conditional",
    "average_drop_simultaneous",
    "average_increase_simultaneous",
    "average_drop_conditional",
    "average_increase_conditional",
    "max_sensitivity",
)

#: The published rows, by our method labels (as in the full profile of notebook 05).
_ROWS = {
    "simclr-v2-r50-2x": """
occlusion                      .795 .714 .644 .215 .166 .223 .282 .095 NA
context_agnostic_occlusion     .793 .724 .639 .207 .167 .208 .298 .082 NA
pairwise_occlusion             .763 .643 .636 .276 .380 .068 .583 .013 NA
gradcam                        .798 .736 .663 .213 .170 .212 .303 .059 2.419
interaction_cam                .795 .719 .653 .215 .203 .180 .373 .049 3.748
interaction_cam_max            .805 .730 .663 .214 .195 .195 .441 .034 2.716
interaction_cam_attn           .802 .736 .654 .221 .168 .248 .611 .021 18.81
pixel_invariance               NA NA .692 .194 NA NA .000 .800 NA
input_x_gradient               .889 .844 .578 .102 .087 .173 .940 .000 1.891
input_x_gradient_guided        .905 .868 .724 .069 .076 .175 .798 .001 2.277
smoothgrad                     .884 .858 .637 .070 .117 .147 .837 .000 1.252
smoothgrad_guided              .882 .848 .691 .114 .104 .155 .734 .002 1.838
averaged_transforms            .892 .853 .578 .100 .077 .200 .938 .000 1.925
averaged_transforms_guided     .907 .878 .726 .069 .064 .218 .794 .001 2.407
averaged_transforms_noise      .844 .779 .601 .091 .153 .167 .916 .000 .976
averaged_transforms_guided_noise .868 .823 .711 .078 .153 .193 .782 .001 1.007
""",
    "barlow-twins-r50": """
occlusion                      .657 .424 .535 .176 .508 .140 .547 .121 NA
context_agnostic_occlusion     .651 .429 .515 .172 .441 .170 .475 .133 NA
pairwise_occlusion             .648 .501 .528 .186 .557 .092 .693 .028 NA
gradcam                        .683 .498 .561 .179 .385 .178 .431 .114 143.50
interaction_cam                .673 .475 .556 .169 .413 .163 .446 .099 110.16
interaction_cam_max            .689 .483 .564 .169 .425 .158 .531 .081 79.06
interaction_cam_attn           .686 .496 .556 .173 .452 .155 .704 .045 94.67
pixel_invariance               NA NA .453 .375 NA NA .000 .558 NA
input_x_gradient               .724 .587 .489 .119 .471 .038 .979 .001 16.554
input_x_gradient_guided        .822 .602 .699 .068 .465 .047 .940 .001 578.03
smoothgrad                     .750 .576 .533 .089 .459 .035 .972 .002 12.82
smoothgrad_guided              .829 .607 .709 .076 .449 .057 .933 .001 10.02
averaged_transforms            .728 .593 .488 .117 .431 .047 .980 .002 14.53
averaged_transforms_guided     .826 .619 .702 .069 .450 .050 .939 .002 81.72
averaged_transforms_noise      .716 .554 .500 .112 .513 .042 .974 .002 12.46
averaged_transforms_guided_noise .828 .597 .705 .070 .447 .047 .936 .002 25.16
""",
}


def _parse(block: str) -> dict[str, dict[str, float | None]]:
    table = {}
    for line in block.strip().splitlines():
        label, *values = line.split()
        if len(values) != len(PUBLISHED_METRICS):
            raise ValueError(f"published row {label!r} has {len(values)} values, expected {len(PUBLISHED_METRICS)}")
        table[label] = {m: (None if v == "NA" else float(v)) for m, v in zip(PUBLISHED_METRICS, values)}
    return table


#: {paper model: {method label: {metric: value or None}}}.
PUBLISHED: dict[str, dict[str, dict[str, float | None]]] = {model: _parse(block) for model, block in _ROWS.items()}


def published_table(paper_model: str) -> pd.DataFrame:
    """The published rows of one paper model as a DataFrame (index: method label, columns: metrics)."""
    if paper_model not in PUBLISHED:
        raise ValueError(f"no published numbers for {paper_model!r}; available: {sorted(PUBLISHED)}")
    return pd.DataFrame.from_dict(PUBLISHED[paper_model], orient="index")[list(PUBLISHED_METRICS)].astype(float)


def side_by_side(means: pd.DataFrame, paper_models: Sequence[str] = tuple(PUBLISHED)) -> pd.DataFrame:
    """Long table (model, method, metric, ours, <paper model>...) for the methods and metrics both have.

    `means`: one row per (model, method) with a column per metric (the `means` of `metric_tables`).
    """
    rows = []
    for record in means.to_dict("records"):
        for metric in PUBLISHED_METRICS:
            if metric not in record or pd.isna(record[metric]):
                continue
            published = {p: PUBLISHED[p].get(record["method"], {}).get(metric) for p in paper_models}
            if all(v is None for v in published.values()):
                continue
            rows.append(
                {
                    "model": record["model"],
                    "method": record["method"],
                    "metric": metric,
                    "ours": float(record[metric]),
                    **{p: (np.nan if v is None else v) for p, v in published.items()},
                }
            )
    return pd.DataFrame(rows, columns=["model", "method", "metric", "ours", *paper_models])


AGREEMENT_COLUMNS = ("model", "paper_model", "metric", "methods", "pairs", "spearman", "ci_low", "ci_high")


def rank_agreement(
    results: pd.DataFrame, paper_model: str, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per (model, metric): Spearman correlation of our method means with the published ones, over the
    methods both have (at least 3), with a percentile bootstrap interval over our pairs.

    `results` is tidy (model, pair_id, method, metric, value). Each (model, metric) row draws from its own
    generator seeded with `seed`, so its interval does not depend on the other rows.
    """
    reference = published_table(paper_model)
    rows = []
    for (model, metric), frame in results[results["metric"].isin(PUBLISHED_METRICS)].groupby(
        ["model", "metric"], sort=False
    ):
        wide = frame.pivot_table(index="pair_id", columns="method", values="value", aggfunc="mean")
        methods = [m for m in wide.columns if m in reference.index and np.isfinite(reference.loc[m, metric])]
        wide = wide[methods].dropna()
        if len(methods) < 3 or len(wide) == 0:
            continue
        published = reference.loc[methods, metric].to_numpy()
        values = wide.to_numpy()
        rho = float(stats.spearmanr(values.mean(axis=0), published).statistic)
        rng = np.random.default_rng(seed)
        draws = [
            stats.spearmanr(values[rng.integers(0, len(values), len(values))].mean(axis=0), published).statistic
            for _ in range(n_boot)
        ]
        draws = np.asarray(draws, dtype=float)
        draws = draws[np.isfinite(draws)]
        low, high = np.quantile(draws, [(1 - ci) / 2, 1 - (1 - ci) / 2]) if draws.size else (np.nan, np.nan)
        rows.append(
            {
                "model": model,
                "paper_model": paper_model,
                "metric": metric,
                "methods": len(methods),
                "pairs": len(wide),
                "spearman": rho,
                "ci_low": float(low),
                "ci_high": float(high),
            }
        )
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


__all__ = ["PUBLISHED", "PUBLISHED_SOURCE", "PUBLISHED_METRICS", "published_table", "side_by_side", "rank_agreement"]
