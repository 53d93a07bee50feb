"""How much bf16 changes each method's maps and each metric's values (the evidence for the bf16 policy).

Every method explains the same pairs in fp32 and in bf16 (bf16 as the policy runs it: the backbone in
bfloat16, the rest in float32); a row keeps the smallest Spearman rank correlation between a bf16
map and its fp32 map, and the largest change of an insertion/deletion AUC (scored in fp32) when the
bf16 map replaces the fp32 one. Every perturbation metric scores the same fp32 explanation in fp32 and bf16;
a row keeps the largest absolute difference of its values (AUCs for insertion/deletion, the average
drop for drop/increase, plus how many increase indicators flipped). Methods and metrics the policy
refuses are measured too (inside `measuring_bf16`), so the table shows why they refuse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from . import markdown
from .data.pairs import Pair
from .explainers.base import explain, get_method
from .maps import rank_correlation
from .metrics import evaluate_pair
from .models.similarity import SimilarityModel
from .precision import BF16_ACCEPTED, measuring_bf16

#: The metric families the policy covers, with the metrics measured for each.
METRIC_FAMILIES: dict[str, tuple[str, ...]] = {
    "insertion": ("insertion_simultaneous", "insertion_conditional"),
    "deletion": ("deletion_simultaneous", "deletion_conditional"),
    "drop": (
        "average_drop_simultaneous",
        "average_drop_conditional",
        "average_increase_simultaneous",
        "average_increase_conditional",
    ),
}


@dataclass(frozen=True)
class FidelityRow:
    """One method or metric family: policy verdict, min Spearman (methods), max difference (metrics)."""

    name: str
    kind: str
    accepted: bool
    spearman: float | None = None
    difference: float | None = None
    flips: int | None = None
    seconds_fp32: float = 0.0
    seconds_bf16: float = 0.0

    def cells(self) -> list[str]:
        """Markdown cells: name, policy, Spearman, difference, speed ratio."""
        ratio = f"{self.seconds_fp32 / self.seconds_bf16:.2f}" if self.seconds_bf16 > 0 else ""
        diff = "" if self.difference is None else f"{self.difference:.4f}"
        if self.flips:
            diff += f" ({self.flips} increase flip{'s' if self.flips > 1 else ''})"
        return [
            self.name,
            "accepted" if self.accepted else "refused",
            "" if self.spearman is None else f"{self.spearman:.4f}",
            diff,
            ratio,
        ]


def _explain_both(model: SimilarityModel, pair: Pair, method: str, params: dict[str, Any]):
    x2 = pair.x2 if get_method(method).needs_pair else None
    fp32 = explain(model, pair.x1, x2, method, precision="fp32", **params)
    with measuring_bf16():
        bf16 = explain(model, pair.x1, x2, method, precision="bf16", **params)
    return fp32, bf16


#: The AUCs a method row compares (the fp32 and the bf16 map, both scored in fp32).
AUC_METRICS = ("insertion_simultaneous", "insertion_conditional", "deletion_simultaneous", "deletion_conditional")


def method_rows(
    model: SimilarityModel, pairs: Sequence[Pair], methods: dict[str, dict[str, Any]], **metric_options: Any
) -> list[FidelityRow]:
    """One row per method of `methods` (name -> explain parameters) over all `pairs`; `metric_options`
    (e.g. step) go to the fp32 insertion/deletion scoring of both maps."""
    rows = []
    for method, params in methods.items():
        correlations, differences, seconds = [], [], [0.0, 0.0]
        for pair in pairs:
            fp32, bf16 = _explain_both(model, pair, method, params)
            seconds[0] += fp32.seconds
            seconds[1] += bf16.seconds
            correlations += [rank_correlation(a, b) for a, b in zip(fp32.maps, bf16.maps)]
            ref, out = (
                evaluate_pair(
                    model, pair.x1, pair.x2, e, metrics=list(AUC_METRICS), on_not_applicable="skip", **metric_options
                )
                for e in (fp32, bf16)
            )
            differences += [abs(ref[key] - out[key]) for key in ref]
        rows.append(
            FidelityRow(
                method,
                "method",
                method in BF16_ACCEPTED,
                spearman=min(correlations),
                difference=max(differences),
                seconds_fp32=seconds[0],
                seconds_bf16=seconds[1],
            )
        )
    return rows


def metric_rows(
    model: SimilarityModel, pairs: Sequence[Pair], explanation_method: str = "gradcam", **options: Any
) -> list[FidelityRow]:
    """One row per metric family: the fp32 `explanation_method` maps scored in fp32 and in bf16."""
    rows = []
    explanations = [explain(model, p.x1, p.x2, explanation_method) for p in pairs]
    for family, names in METRIC_FAMILIES.items():
        differences, flips, seconds = [], 0, [0.0, 0.0]
        for pair, explanation in zip(pairs, explanations):
            values = []
            for index, precision in enumerate(("fp32", "bf16")):
                start = time.perf_counter()
                with measuring_bf16():
                    values.append(
                        evaluate_pair(
                            model,
                            pair.x1,
                            pair.x2,
                            explanation,
                            metrics=list(names),
                            on_not_applicable="skip",
                            precision=precision,
                            **options,
                        )
                    )
                seconds[index] += time.perf_counter() - start
            ref, out = values
            for key in ref:
                if key == "average_increase_conditional":  # the mean of _1 and _2, counted there
                    continue
                if "increase" in key:
                    flips += int(ref[key] != out[key])
                else:
                    differences.append(abs(ref[key] - out[key]))
        rows.append(
            FidelityRow(
                family,
                "metric",
                family in BF16_ACCEPTED,
                difference=max(differences) if differences else None,
                flips=flips,
                seconds_fp32=seconds[0],
                seconds_bf16=seconds[1],
            )
        )
    return rows


def table(rows: Sequence[FidelityRow]) -> str:
    """The rows as a markdown table."""
    header = [
        "method / metric family",
        "bf16 policy",
        "min Spearman to fp32",
        "max |AUC or value difference|",
        "fp32 time / bf16 time",
    ]
    return markdown.table(header, [row.cells() for row in rows])


def as_dicts(rows: Sequence[FidelityRow]) -> list[dict[str, Any]]:
    """The rows as plain dicts (for JSON)."""
    return [row.__dict__.copy() for row in rows]
