"""The study's orderings re-tested as paired differences with bootstrap intervals and a verdict.

Sammani et al. (Sec. V, Table I) read several orderings off their metric table for SimCLRv2 and
Barlow Twins, for example "Interaction-CAM deletes better than Grad-CAM". A difference of point
means over a few pairs says nothing by itself, so each ordering is written here as one or more
`Comparison`s "value(A) > value(B)", where A and B are (method label, metric) cells scored on the
same pairs. For each comparison the per-pair differences A - B get a percentile bootstrap interval
over pairs (pairing kept) and a verdict from that interval alone:

* holds: the whole interval lies above 0;
* fails: the whole interval lies below 0 (the opposite ordering is supported);
* inconclusive: the interval contains 0 (too few pairs, or no difference), or fewer than
  `MIN_PAIRS` pairs were scored (a bootstrap of one or two values has no spread to speak of).

A `Claim` groups the comparisons of one ordering ("for every gradient method and every CAM ...");
its verdict is `fails` if any comparison fails, `holds` if all hold, `inconclusive` otherwise.
Comparisons whose cells were not scored (a method or metric not in the run) are left out and
counted. The published table (`published.PUBLISHED`) gives the study's own outcome of each
comparison from its point values, shown beside ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..metrics.summary import bootstrap_ci

VERDICTS = ("holds", "fails", "inconclusive")
#: Fewer paired differences than this give no verdict but "inconclusive".
MIN_PAIRS = 5

#: Row groups of the study's table, by our method labels (the labels of the full profile of notebook 05).
OCCLUSION = ("occlusion", "context_agnostic_occlusion", "pairwise_occlusion")
CAMS = ("gradcam", "interaction_cam", "interaction_cam_max", "interaction_cam_attn")
GRADIENTS = ("input_x_gradient", "smoothgrad", "averaged_transforms")
GUIDED = {
    "input_x_gradient": "input_x_gradient_guided",
    "smoothgrad": "smoothgrad_guided",
    "averaged_transforms": "averaged_transforms_guided",
}
BASELINES = ("random", "random_grid")


@dataclass(frozen=True)
class Comparison:
    """The claim value(method_a, metric_a) > value(method_b, metric_b), over the same pairs."""

    method_a: str
    metric_a: str
    method_b: str
    metric_b: str

    @property
    def text(self) -> str:
        if self.metric_a == self.metric_b:
            return f"{self.metric_a}: {self.method_a} > {self.method_b}"
        return (
            f"{self.method_a}: {self.metric_a} > {self.metric_b}"
            if self.method_a == self.method_b
            else f"{self.method_a} {self.metric_a} > {self.method_b} {self.metric_b}"
        )


@dataclass(frozen=True)
class Claim:
    """One ordering of the study: a name, its statement, and how to build its comparisons from the
    method labels present in a run (`comparisons(methods, means)`; `means` maps (method, metric) to
    the run's mean, for claims that pick a row by its value such as "the best occlusion method")."""

    key: str
    statement: str
    comparisons: Callable[[Sequence[str], dict[tuple[str, str], float]], list[Comparison]]


def paired_verdict(differences: Sequence[float], n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> dict:
    """Mean of the paired differences, its percentile bootstrap interval over pairs, and the verdict."""
    diff = np.asarray(differences, dtype=float)
    if diff.ndim != 1 or diff.size == 0 or not np.isfinite(diff).all():
        raise ValueError(f"need a non-empty 1-d array of finite paired differences, got shape {diff.shape}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    low, high = bootstrap_ci(diff, ci, n_boot, np.random.default_rng(seed))
    verdict = (
        "inconclusive" if diff.size < MIN_PAIRS else "holds" if low > 0 else "fails" if high < 0 else "inconclusive"
    )
    return {
        "n": int(diff.size),
        "difference": float(diff.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "verdict": verdict,
    }


def combine(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its comparisons': fails if any fails, holds if all hold, else inconclusive."""
    if not verdicts:
        return "not tested"
    if "fails" in verdicts:
        return "fails"
    return "holds" if all(v == "holds" for v in verdicts) else "inconclusive"


def _present(methods: Sequence[str], group: Sequence[str]) -> list[str]:
    return [m for m in group if m in methods]


def _intcam_deletes_better(methods, means):
    return [
        Comparison("gradcam", "deletion_simultaneous", cam, "deletion_simultaneous")
        for cam in _present(methods, ("interaction_cam", "interaction_cam_max"))
        if "gradcam" in methods
    ]


def _gradients_over_cams(metric: str):
    def build(methods, means):
        return [Comparison(g, metric, c, metric) for g in _present(methods, GRADIENTS) for c in _present(methods, CAMS)]

    return build


def _guided_raises(metric: str):
    def build(methods, means):
        return [
            Comparison(guided, metric, plain, metric)
            for plain, guided in GUIDED.items()
            if plain in methods and guided in methods
        ]

    return build


def _occlusion_deletes_best(methods, means):
    occluders = [m for m in _present(methods, OCCLUSION) if (m, "deletion_simultaneous") in means]
    if not occluders:
        return []
    best = min(occluders, key=lambda m: means[(m, "deletion_simultaneous")])
    others = [m for m in methods if m not in OCCLUSION and m not in BASELINES]
    return [Comparison(other, "deletion_simultaneous", best, "deletion_simultaneous") for other in others]


def _insertion_above_deletion(methods, means):
    return [Comparison(m, "insertion_simultaneous", m, "deletion_simultaneous") for m in methods if m not in BASELINES]


def _random_below_insertion(methods, means):
    return [
        Comparison(m, "insertion_simultaneous", b, "insertion_simultaneous")
        for b in _present(methods, BASELINES)
        for m in methods
        if m not in BASELINES
    ]


def _random_above_deletion(methods, means):
    return [
        Comparison(b, "deletion_simultaneous", m, "deletion_simultaneous")
        for b in _present(methods, BASELINES)
        for m in methods
        if m not in BASELINES
    ]


#: The orderings that held on both of the study's models (its Table I), in the study's order.
CLAIMS = (
    Claim("1", "Interaction-CAM (mean, max) deletes better (lower SD) than Grad-CAM", _intcam_deletes_better),
    Claim(
        "2a",
        "gradient maps (IxG, SmoothGrad, AvgT) insert better (higher SI) than every CAM",
        _gradients_over_cams("insertion_simultaneous"),
    ),
    Claim(
        "2b",
        "gradient maps have a much higher, i.e. worse, conditional average drop (CAD) than every CAM",
        _gradients_over_cams("average_drop_conditional"),
    ),
    Claim(
        "3a",
        "guided variants raise conditional insertion (CI) over their plain method",
        _guided_raises("insertion_conditional"),
    ),
    Claim(
        "3b",
        "guided variants raise simultaneous insertion (SI) over their plain method",
        _guided_raises("insertion_simultaneous"),
    ),
    Claim("4", "the best occlusion method deletes better (lower SD) than every other method", _occlusion_deletes_best),
    Claim("5a", "insertion AUC > deletion AUC for every method (simultaneous)", _insertion_above_deletion),
    Claim("5b", "a random map inserts worse (lower SI) than every method", _random_below_insertion),
    Claim("5c", "a random map deletes worse (higher SD) than every method", _random_above_deletion),
)


def _cells(results: pd.DataFrame) -> pd.DataFrame:
    """Wide table: index pair_id, columns (method, metric)."""
    return results.pivot_table(index="pair_id", columns=["method", "metric"], values="value", aggfunc="mean")


def claim_verdicts(
    results: pd.DataFrame,
    claims: Sequence[Claim] = CLAIMS,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    published: dict[str, dict[str, dict[str, float | None]]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Verdicts of `claims` on each model of `results` (tidy: model, pair_id, method, metric, value).

    Returns (claims_table, comparisons_table). comparisons_table: one row per (model, claim,
    comparison) with n, mean paired difference, interval and verdict (and, for each published model
    in `published` ({paper model: {method: {metric: value}}}), the study's outcome "holds"/"fails"
    from its point values, or NA where it has no value). claims_table: one row per (model, claim)
    with the counts of comparisons by verdict and the combined verdict.
    """
    missing = {"model", "pair_id", "method", "metric", "value"} - set(results.columns)
    if missing:
        raise ValueError(f"results need the columns model, pair_id, method, metric, value; missing {sorted(missing)}")
    rows, summary = [], []
    for model, frame in results.groupby("model", sort=False):
        wide = _cells(frame)
        methods = list(dict.fromkeys(frame["method"]))
        means = {key: float(wide[key].mean()) for key in wide.columns}
        for claim in claims:
            verdicts, untested = [], 0
            for comparison in claim.comparisons(methods, means):
                a, b = (comparison.method_a, comparison.metric_a), (comparison.method_b, comparison.metric_b)
                if a not in wide.columns or b not in wide.columns:
                    untested += 1
                    continue
                paired = (wide[a] - wide[b]).dropna()
                result = paired_verdict(paired.to_numpy(), n_boot, ci, seed)
                verdicts.append(result["verdict"])
                row = {"model": model, "claim": claim.key, "comparison": comparison.text, **result}
                for paper_model, table in (published or {}).items():
                    row[f"published {paper_model}"] = _published_outcome(table, comparison)
                rows.append(row)
            counts = {v: verdicts.count(v) for v in VERDICTS}
            summary.append(
                {
                    "model": model,
                    "claim": claim.key,
                    "statement": claim.statement,
                    "comparisons": len(verdicts),
                    **counts,
                    "untested": untested,
                    "verdict": combine(verdicts),
                }
            )
    return pd.DataFrame(summary), pd.DataFrame(rows)


def _published_outcome(table: dict[str, dict[str, float | None]], comparison: Comparison) -> str:
    a = table.get(comparison.method_a, {}).get(comparison.metric_a)
    b = table.get(comparison.method_b, {}).get(comparison.metric_b)
    if a is None or b is None:
        return "NA"
    return "holds" if a > b else "fails" if a < b else "tie"


__all__ = ["VERDICTS", "Comparison", "Claim", "CLAIMS", "paired_verdict", "combine", "claim_verdicts"]
