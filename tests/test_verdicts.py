"""Paired verdicts of the study's orderings and the published table, on constructed data with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cl_explain.analysis import CLAIMS, PUBLISHED, claim_verdicts, paired_verdict, rank_agreement, side_by_side
from cl_explain.analysis.published import PUBLISHED_METRICS, published_table
from cl_explain.analysis.verdicts import combine


def tidy(model: str, cells: dict[tuple[str, str], np.ndarray]) -> pd.DataFrame:
    """Tidy results from {(method, metric): per-pair values}."""
    rows = [
        {"model": model, "pair_id": i, "method": method, "metric": metric, "value": float(v)}
        for (method, metric), values in cells.items()
        for i, v in enumerate(values)
    ]
    return pd.DataFrame(rows)


def noise(n: int, seed: int, scale: float = 0.05) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, n)


def test_paired_verdict_reads_the_interval_not_the_mean():
    assert paired_verdict(0.2 + noise(40, 0))["verdict"] == "holds"
    assert paired_verdict(-0.2 + noise(40, 1))["verdict"] == "fails"
    centred = noise(40, 2)
    result = paired_verdict(centred - centred.mean() + 0.002)  # positive mean, interval across 0
    assert result["difference"] > 0 and result["verdict"] == "inconclusive"
    assert result["ci_low"] < 0 < result["ci_high"] and result["n"] == 40
    assert paired_verdict([0.3, 0.31, 0.29, 0.3])["verdict"] == "inconclusive"  # fewer than MIN_PAIRS pairs
    assert paired_verdict([0.3, 0.31, 0.29, 0.3, 0.32])["verdict"] == "holds"
    with pytest.raises(ValueError, match="finite"):
        paired_verdict([0.1, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        paired_verdict([])


def test_combined_verdict():
    assert combine(["holds", "holds"]) == "holds"
    assert combine(["holds", "inconclusive"]) == "inconclusive"
    assert combine(["holds", "fails", "inconclusive"]) == "fails"
    assert combine([]) == "not tested"


def test_claim_verdicts_on_constructed_results():
    n = 30
    sd = "deletion_simultaneous"
    better = tidy("better", {("gradcam", sd): 0.5 + noise(n, 0), ("interaction_cam", sd): 0.3 + noise(n, 1)})
    worse = tidy("worse", {("gradcam", sd): 0.3 + noise(n, 2), ("interaction_cam", sd): 0.5 + noise(n, 3)})
    same = np.full(n, 0.4) + noise(n, 4)
    tie = tidy("tie", {("gradcam", sd): same, ("interaction_cam", sd): same[::-1].copy()})
    claims, comparisons = claim_verdicts(
        pd.concat([better, worse, tie]), claims=[CLAIMS[0]], n_boot=500, published=PUBLISHED
    )
    assert dict(zip(claims.model, claims.verdict)) == {"better": "holds", "worse": "fails", "tie": "inconclusive"}
    assert (claims.comparisons == 1).all() and (claims.untested == 0).all()
    # The study's own outcome from its point values: IntCAM mean SD .719 < Grad-CAM .736, and .475 < .498.
    assert set(comparisons["published simclr-v2-r50-2x"]) == {"holds"}
    assert set(comparisons["published barlow-twins-r50"]) == {"holds"}
    row = comparisons[comparisons.model == "better"].iloc[0]
    assert row.difference == pytest.approx(0.2, abs=0.05) and row.ci_low > 0


def test_claims_expand_over_the_methods_present():
    n, si, sd = 20, "insertion_simultaneous", "deletion_simultaneous"
    cells = {
        ("gradcam", si): 0.6 + noise(n, 0),
        ("gradcam", sd): 0.2 + noise(n, 1),
        ("input_x_gradient", si): 0.8 + noise(n, 2),
        ("input_x_gradient", sd): 0.3 + noise(n, 3),
        ("random", si): 0.5 + noise(n, 4),
        ("random", sd): 0.25 + noise(n, 5),
    }
    claims, comparisons = claim_verdicts(tidy("m", cells), n_boot=300)
    verdict = dict(zip(claims.claim, claims.verdict))
    assert verdict["2a"] == "holds"  # IxG SI 0.8 > Grad-CAM 0.6
    assert verdict["5a"] == "holds" and verdict["5b"] == "holds"
    assert verdict["5c"] == "fails"  # random SD 0.25 is below IxG's 0.3
    assert verdict["3a"] == "not tested" and verdict["2b"] == "not tested"  # no guided rows, no CAD scored
    assert set(comparisons[comparisons.claim == "5c"].comparison) == {
        "deletion_simultaneous: random > gradcam",
        "deletion_simultaneous: random > input_x_gradient",
    }
    untested = dict(zip(claims.claim, claims.untested))
    assert untested["2b"] == 1  # IxG vs Grad-CAM on CAD: neither cell was scored


def test_published_table_is_the_studys_table():
    assert set(PUBLISHED) == {"simclr-v2-r50-2x", "barlow-twins-r50"}
    for rows in PUBLISHED.values():
        assert len(rows) == 16 and all(len(v) == len(PUBLISHED_METRICS) for v in rows.values())
    assert PUBLISHED["simclr-v2-r50-2x"]["input_x_gradient"]["average_drop_conditional"] == 0.940
    assert PUBLISHED["barlow-twins-r50"]["gradcam"]["max_sensitivity"] == 143.50
    assert PUBLISHED["barlow-twins-r50"]["pixel_invariance"]["insertion_simultaneous"] is None
    table = published_table("simclr-v2-r50-2x")
    assert table.loc["pairwise_occlusion", "deletion_simultaneous"] == table["deletion_simultaneous"].min()
    with pytest.raises(ValueError, match="available"):
        published_table("simclr-v1")


def test_rank_agreement_is_one_for_the_published_order_and_minus_one_reversed():
    reference = published_table("barlow-twins-r50")["insertion_simultaneous"].dropna()
    methods = list(reference.index[:6])
    n = 15
    same = {(m, "insertion_simultaneous"): reference[m] + noise(n, i, 1e-4) for i, m in enumerate(methods)}
    flipped = {(m, "insertion_simultaneous"): -reference[m] + noise(n, i, 1e-4) for i, m in enumerate(methods)}
    results = pd.concat([tidy("same", same), tidy("flipped", flipped)])
    table = rank_agreement(results, "barlow-twins-r50", n_boot=200).set_index("model")
    assert table.loc["same", "spearman"] == pytest.approx(1.0) and table.loc["same", "ci_low"] == pytest.approx(1.0)
    assert table.loc["flipped", "spearman"] == pytest.approx(-1.0)
    assert (table.methods == 6).all() and (table.pairs == n).all()
    means = pd.DataFrame(
        [{"model": "same", "method": m, "insertion_simultaneous": float(reference[m])} for m in methods]
    )
    side = side_by_side(means)
    assert len(side) == 6 and (side.ours == side["barlow-twins-r50"]).all()


def test_too_few_methods_give_empty_tables_with_their_columns():
    results = tidy("m", {("gradcam", "insertion_simultaneous"): np.full(4, 0.5)})
    agreement = rank_agreement(results, "simclr-v2-r50-2x", n_boot=10)
    assert agreement.empty and "spearman" in agreement.columns
    assert list(side_by_side(pd.DataFrame({"model": [], "method": []})).columns)[:4] == [
        "model",
        "method",
        "metric",
        "ours",
    ]


def test_read_correlations_signs_by_the_metrics_direction():
    from cl_explain.analysis import read_correlations

    table = pd.DataFrame(
        {
            "method": ["a", "a", "a"],
            "metric": ["deletion_simultaneous", "insertion_simultaneous", "insertion_simultaneous"],
            "r": [-0.9, -0.9, 0.2],
            "ci_low": [-0.99, -0.99, -0.5],
            "ci_high": [-0.5, -0.5, 0.7],
        }
    )
    read = read_correlations(table)
    assert list(read.aligned) == [0.9, -0.9, 0.2]  # lower deletion with better accuracy is the good direction
    assert list(read.reading) == [
        "better explanations with better accuracy",
        "worse explanations with better accuracy",
        "the interval includes 0: no clear relation",
    ]


def test_scored_on_names_the_pair_each_method_scores():
    from cl_explain.analysis import scored_on

    assert scored_on("gradcam") == "x1, x2"
    assert scored_on("averaged_transforms") == "x1, T(x1)"
    assert scored_on("pixel_invariance") == "x1 only"
    assert scored_on("avgt_noise", {"avgt_noise": {"method": "averaged_transforms", "noise": True}}) == "x1, T(x1)"
    assert scored_on("random_grid", {"random_grid": {"method": "random", "cells": 8}}) == ""


def test_a_rows_interval_does_not_depend_on_the_other_rows():
    """Bootstrap intervals are drawn per row from the seed: a row computed alone equals the same row in a
    larger table (with one generator shared down the table, each row's draws followed from the rows before it)."""
    from cl_explain.analysis import paired_difference
    from cl_explain.metrics import summarize

    reference = published_table("barlow-twins-r50")
    metrics = ["insertion_simultaneous", "deletion_simultaneous"]
    methods = list(reference[metrics].dropna().index[:10])
    cells = {
        (m, k): reference.loc[m, k] + noise(12, 10 * i + j, 0.5)
        for i, m in enumerate(methods)
        for j, k in enumerate(metrics)
    }
    shifted = {key: values - 0.05 + noise(12, 99, 0.1) for key, values in cells.items()}
    both = pd.concat([tidy("a", cells), tidy("b", shifted)])
    last = both[both.method == methods[-1]]

    full = summarize(both[both.model == "a"], n_boot=300)
    single = summarize(last[last.model == "a"], n_boot=300)
    assert single.loc[methods[-1]].equals(full.loc[methods[-1], single.columns])

    agreement = rank_agreement(both, "barlow-twins-r50", n_boot=300).set_index(["model", "metric"])
    only_b = rank_agreement(both[both.model == "b"], "barlow-twins-r50", n_boot=300).set_index(["model", "metric"])
    assert only_b.equals(agreement.loc[only_b.index])

    rows = ["method", "metric"]
    difference = paired_difference(both, "a", "b", n_boot=300).set_index(rows)
    one_method = paired_difference(last, "a", "b", n_boot=300).set_index(rows)
    assert one_method.equals(difference.loc[one_method.index])
    assert difference.ci_low.nunique() > 1  # rows differ, so the equalities above are not equal by construction
