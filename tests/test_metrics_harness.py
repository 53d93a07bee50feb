"""evaluate_pair / evaluate / summarize: results equal the metric functions, caching, errors, CIs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cl_explain
from cl_explain.explainers.base import PairExplanation, explain, register_method
from cl_explain.metrics import (
    METRICS,
    MetricNotApplicable,
    Pair,
    evaluate,
    evaluate_pair,
    format_table,
    list_metrics,
    summarize,
)
from cl_explain.metrics.drop import drop_increase
from cl_explain.metrics.perturbation import perturbation_curves
from helpers import CALLS, SIDE, images, patch_map, patch_model, register_test_methods


def single_method(model, x1, x2, batch_size=64):
    """Test: a pixel-invariance-like method explaining x1 only."""
    return x1.mean(1)[0], None


def own_image_method(model, x1, x2, batch_size=64):
    """Test: an averaged-transforms-like method whose map2 belongs to an image it made itself."""
    return x1.mean(1)[0], (0.5 * x1).mean(1)[0] ** 2


@pytest.fixture(autouse=True)
def registered_test_methods():
    """The test-only methods, registered for each test (the registry fixture removes them afterwards)."""
    register_test_methods()
    register_method("_test_harness_single", {}, needs_pair=False, sensitivity=False)(single_method)
    register_method("_test_harness_own_image", {}, needs_pair=False)(own_image_method)


def make_pairs(n: int, masks: bool = False) -> list[Pair]:
    pairs = []
    for i in range(n):
        x1, x2 = images(100 + i)
        mask = torch.zeros(SIDE, SIDE, dtype=torch.bool)
        mask[2:10, 3:12] = True
        pairs.append(Pair(x1, x2, mask if masks else None, mask if masks else None, pair_id=f"p{i}", seed=i))
    return pairs


def test_list_metrics_names_every_metric():
    assert set(list_metrics()) == set(METRICS)
    assert "lower is better" in list_metrics()["deletion_simultaneous"]


def test_evaluate_pair_equals_the_metric_functions():
    model = patch_model()
    x1, x2 = images(20)
    e = explain(model, x1, x2, "_test_metrics_linear")
    out = evaluate_pair(model, x1, x2, e, batch_size=5, n_draws=2)
    curves = perturbation_curves(model, x1, x2, e.map1, e.map2, "deletion")
    assert out["deletion_simultaneous"] == pytest.approx(curves["simultaneous"].auc)
    assert out["deletion_conditional_1"] == pytest.approx(curves["conditional_1"].auc)
    assert out["deletion_conditional_2"] == pytest.approx(curves["conditional_2"].auc)
    assert out["deletion_conditional"] == pytest.approx((curves["conditional_1"].auc + curves["conditional_2"].auc) / 2)
    drops = drop_increase(model, x1, x2, e.map1, e.map2)
    assert out["average_drop_simultaneous"] == pytest.approx(drops["simultaneous"].drop)
    assert out["average_increase_conditional"] == pytest.approx(
        (drops["conditional_1"].increase + drops["conditional_2"].increase) / 2
    )
    assert set(METRICS) - set(out) == {"pointing_game", "energy_pointing_game"}
    assert all(np.isfinite(v) for v in out.values())
    # batch size changes the numbers only by float rounding; "auto" is exactly the default 64 on a CPU
    again = evaluate_pair(model, x1, x2, e, metrics=["insertion_conditional"], batch_size=1)
    assert again["insertion_conditional"] == pytest.approx(out["insertion_conditional"], abs=1e-6)
    auto = evaluate_pair(model, x1, x2, e, metrics=["insertion_conditional"], batch_size="auto")
    explicit = evaluate_pair(model, x1, x2, e, metrics=["insertion_conditional"], batch_size=64)
    assert auto["insertion_conditional"] == explicit["insertion_conditional"]
    assert auto["insertion_conditional"] == pytest.approx(out["insertion_conditional"], abs=1e-6)
    # the bf16 policy refuses insertion AUCs (they moved by more than 0.01), on any hardware
    with pytest.raises(ValueError, match="insertion refuses precision='bf16'"):
        evaluate_pair(model, x1, x2, e, metrics=["insertion_conditional"], precision="bf16")


def test_grounding_in_evaluate_pair_and_missing_masks():
    model = patch_model()
    x1, x2 = images(21)
    m = patch_map()
    e = PairExplanation("hand", m, m.flip(1), 0.0, {}, 0.0, (SIDE, SIDE))
    mask = patch_map().bool()
    out = evaluate_pair(model, x1, x2, e, metrics=["pointing_game", "energy_pointing_game"], masks=(mask, mask))
    assert out["pointing_game_1"] == 1.0 and out["energy_pointing_game_1"] == pytest.approx(1.0)
    assert out["pointing_game_2"] == 0.0 and out["energy_pointing_game_2"] == 0.0
    assert out["pointing_game"] == 0.5
    empty = torch.zeros_like(mask)  # the object is cropped out of view 2: scored on view 1 only
    out = evaluate_pair(model, x1, x2, e, metrics=["pointing_game"], masks=(mask, empty))
    assert out == {"pointing_game": 1.0, "pointing_game_1": 1.0}
    with pytest.raises(MetricNotApplicable, match="every view"):
        evaluate_pair(model, x1, x2, e, metrics=["pointing_game"], masks=(empty, empty))
    with pytest.raises(ValueError, match="masks"):
        evaluate_pair(model, x1, x2, e, metrics=["pointing_game"])
    with pytest.raises(ValueError, match="masks"):
        evaluate(model, make_pairs(1), ["_test_metrics_linear"], ["pointing_game"], progress=False)


def test_bad_input_gives_clear_errors():
    model = patch_model()
    x1, x2 = images(22)
    good = explain(model, x1, x2, "_test_metrics_linear")
    with pytest.raises(ValueError, match="valid metrics: insertion_simultaneous"):
        evaluate_pair(model, x1, x2, good, metrics=["insertion"])
    with pytest.raises(ValueError, match="valid options"):
        evaluate_pair(model, x1, x2, good, metrics=["insertion_conditional"], steps=3)
    nan_map = good.map1.clone()
    nan_map[0, 0] = float("nan")
    with pytest.raises(ValueError, match="map1.*NaN"):
        evaluate_pair(model, x1, x2, PairExplanation("x", nan_map, good.map2, 0.0, {}, 0.0, (SIDE, SIDE)))
    with pytest.raises(ValueError, match="map2.*2-D"):
        evaluate_pair(model, x1, x2, PairExplanation("x", good.map1, torch.rand(3, 4, 4), 0.0, {}, 0.0, (SIDE, SIDE)))
    with pytest.raises(ValueError, match="size"):
        evaluate_pair(model, x1, x2, PairExplanation("x", good.map1, good.map2, 0.0, {}, 0.0, (32, 32)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_pair(model, x1 * 3, x2, good)
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(model, make_pairs(1), ["no_such_method"], progress=False)


def test_single_map_explanations_get_direction_one_only():
    model = patch_model()
    x1, x2 = images(23)
    e = explain(model, x1, None, "_test_harness_single")
    out = evaluate_pair(model, x1, x2, e, metrics=["deletion_conditional", "average_increase_conditional"])
    assert set(out) == {
        "deletion_conditional",
        "deletion_conditional_1",
        "average_increase_conditional",
        "average_increase_conditional_1",
    }
    curve = perturbation_curves(model, x1, x2, e.map1, None, "deletion", ("conditional_1",))["conditional_1"]
    assert out["deletion_conditional"] == pytest.approx(curve.auc)
    for metric in ("deletion_simultaneous", "average_drop_simultaneous", "max_sensitivity"):
        with pytest.raises(MetricNotApplicable):
            evaluate_pair(model, x1, x2, e, metrics=[metric])
    skipped = evaluate_pair(model, x1, x2, e, metrics=["insertion_simultaneous"], on_not_applicable="skip")
    assert skipped == {}
    with pytest.warns(UserWarning, match="not applicable"):
        df = evaluate(
            model,
            make_pairs(2),
            ["_test_harness_single"],
            ["insertion_simultaneous", "insertion_conditional"],
            progress=False,
        )
    assert set(df["metric"]) == {"insertion_conditional", "insertion_conditional_1"}
    assert len(df.attrs["not_applicable"]) == 2 and df["value"].notna().all()


def test_map2_of_a_single_image_method_is_not_applied_to_x2():
    model = patch_model()
    x1, x2 = images(25)
    e = explain(model, x1, None, "_test_harness_own_image")
    assert e.map2 is not None
    out = evaluate_pair(model, x1, x2, e, metrics=["insertion_conditional", "max_sensitivity"], n_draws=2)
    assert {"insertion_conditional_2"} & set(out) == set()
    assert set(out) >= {"max_sensitivity_1", "max_sensitivity_2"}  # re-explains the method's own images
    with pytest.raises(MetricNotApplicable, match="x1 only"):
        evaluate_pair(model, x1, x2, e, metrics=["insertion_simultaneous"])


@pytest.mark.parametrize("n_pairs", [1, 3])
def test_evaluate_any_number_of_pairs_matches_evaluate_pair(n_pairs):
    model = patch_model()
    pairs = make_pairs(n_pairs)
    metrics = ["deletion_conditional", "average_drop_simultaneous"]
    df = evaluate(model, pairs, ["_test_metrics_linear", "random"], metrics, batch_size=3, progress=False)
    assert list(df.columns) == ["pair_id", "seed", "method", "metric", "value"]
    # per pair and method: deletion_conditional (+ _1, _2) and average_drop_simultaneous
    assert len(df) == n_pairs * 2 * 4
    p = pairs[-1]
    expected = evaluate_pair(model, p.x1, p.x2, explain(model, p.x1, p.x2, "_test_metrics_linear"), metrics)
    got = df[(df.pair_id == p.pair_id) & (df.method == "_test_metrics_linear")].set_index("metric")["value"]
    assert got.to_dict() == pytest.approx(expected)
    from cl_explain.metrics import random_explanation

    rnd = evaluate_pair(model, p.x1, p.x2, random_explanation(p.x1, p.x2, seed=p.seed), metrics)
    got = df[(df.pair_id == p.pair_id) & (df.method == "random")].set_index("metric")["value"]
    assert got.to_dict() == pytest.approx(rnd)
    coarse = evaluate(
        model, pairs, ["grid"], metrics, method_params={"grid": {"method": "random", "cells": 4}}, progress=False
    )
    expected = evaluate_pair(model, p.x1, p.x2, random_explanation(p.x1, p.x2, seed=p.seed, cells=4), metrics)
    assert coarse[coarse.pair_id == p.pair_id].set_index("metric")["value"].to_dict() == pytest.approx(expected)
    assert expected != pytest.approx(rnd)  # the grid changes the baseline
    with pytest.raises(ValueError, match=r"takes only \['cells'\]"):
        evaluate(model, pairs, ["random"], metrics, method_params={"random": {"stride": 2}}, progress=False)


def test_dict_pairs_labels_and_duplicates():
    model = patch_model()
    x1, x2 = images(24)
    df = evaluate(
        model,
        [{"x1": x1, "x2": x2, "pair_id": "a", "seed": 5}],
        ["lin", "const"],
        ["deletion_simultaneous"],
        method_params={"lin": {"method": "_test_metrics_linear"}, "const": {"method": "_test_metrics_constant"}},
        progress=False,
    )
    assert df.method.tolist() == ["lin", "const"] and df.seed.tolist() == [5, 5]
    pair = Pair(x1, x2, pair_id="a", seed=1)
    with pytest.raises(ValueError, match="distinct"):
        evaluate(model, [pair, pair], ["random"], progress=False)
    with pytest.raises(ValueError, match="not in methods"):
        evaluate(model, [pair], ["random"], method_params={"lin": {}}, progress=False)


def test_cache_makes_a_rerun_compute_nothing(tmp_path, monkeypatch):
    model = patch_model()
    pairs = make_pairs(2, masks=True)
    metrics = ["insertion_conditional", "average_increase_simultaneous", "max_sensitivity", "pointing_game"]
    kwargs = dict(metrics=metrics, cache_dir=tmp_path, progress=False, n_draws=2)
    CALLS["linear"] = 0
    with pytest.warns(UserWarning, match="random/max_sensitivity x2"):
        first = evaluate(model, pairs, ["_test_metrics_linear", "random"], **kwargs)
    assert CALLS["linear"] == 2 * (1 + 2)  # per pair: the explanation + 2 max-sensitivity draws
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 2 * 2 * len(metrics)  # one file per result, "not applicable" ones included
    assert sum("not_applicable" in f.read_text() for f in files) == 2

    forwards = []
    original = model.embed
    monkeypatch.setattr(model, "embed", lambda x: (forwards.append(1), original(x))[1])
    CALLS["linear"] = 0
    with pytest.warns(UserWarning, match="not applicable"):
        second = evaluate(model, pairs, ["_test_metrics_linear", "random"], **kwargs)
    assert CALLS["linear"] == 0 and forwards == []
    pd.testing.assert_frame_equal(first, second)
    # a different metric option is a different result: recomputed
    third = evaluate(
        model,
        pairs[:1],
        ["_test_metrics_linear"],
        ["insertion_conditional"],
        cache_dir=tmp_path,
        progress=False,
        step=SIDE // 2,
    )
    assert CALLS["linear"] == 1 and forwards
    assert third.value.iloc[0] != first.value.iloc[0]


def test_cache_key_follows_the_model_weights(tmp_path):
    pairs = make_pairs(1)
    a = evaluate(
        patch_model(), pairs, ["_test_metrics_linear"], ["deletion_conditional"], cache_dir=tmp_path, progress=False
    )
    other = patch_model()
    with torch.no_grad():
        other.backbone[0].weight.mul_(-1)
    b = evaluate(other, pairs, ["_test_metrics_linear"], ["deletion_conditional"], cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.rglob("*.json"))) == 2
    assert not np.allclose(a.value, b.value)


def test_cache_key_follows_the_package_source(tmp_path, monkeypatch):
    """A result computed by other code (another source digest) is not reused."""
    from cl_explain.metrics import grid

    pairs = make_pairs(1)

    def run():
        return evaluate(
            patch_model(), pairs, ["_test_metrics_linear"], ["deletion_conditional"], cache_dir=tmp_path, progress=False
        )

    first = run()
    (stored,) = tmp_path.rglob("*.json")
    stored.write_text(stored.read_text().replace(str(first.value.iloc[0]), "0.123456"))  # plant a stale value
    assert run().value.iloc[0] == pytest.approx(0.123456)  # same code: the cache answers
    monkeypatch.setattr(grid, "source_digest", lambda: "other-code")
    assert run().value.iloc[0] == first.value.iloc[0]  # other code: recomputed
    assert len(list(tmp_path.rglob("*.json"))) == 2


def test_source_digest_changes_with_any_source_file(tmp_path):
    import shutil

    from cl_explain.utils import source_digest

    package = Path(cl_explain.__file__).parent
    copy = tmp_path / "copy"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(copy) == source_digest()  # the digest depends on the files, not on where they are
    deep = copy / "metrics" / "perturbation.py"
    deep.write_text(deep.read_text() + "\n# changed\n")
    source_digest.cache_clear()  # it hashes once per process and folder
    assert source_digest(copy) != source_digest()


def test_summarise_ci_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    rows = [
        {"pair_id": str(i), "seed": i, "method": method, "metric": "deletion_simultaneous", "value": v}
        for method, n in (("small", 10), ("large", 1000))
        for i, v in enumerate(rng.normal(0.5, 0.1, n))
    ]
    rows.append({"pair_id": "0", "seed": 0, "method": "small", "metric": "max_sensitivity", "value": 2.0})
    summary = summarize(pd.DataFrame(rows), n_boot=500)
    assert list(summary.index) == ["small", "large"]
    for method in ("small", "large"):
        s = summary.loc[method, "deletion_simultaneous"]
        assert s["ci_low"] < s["mean"] < s["ci_high"]
    small, large = (summary.loc[m, "deletion_simultaneous"] for m in ("small", "large"))
    assert (large["ci_high"] - large["ci_low"]) < (small["ci_high"] - small["ci_low"]) / 3
    assert small["n"] == 10 and large["n"] == 1000
    assert summary.loc["small", ("max_sensitivity", "ci_low")] == 2.0  # one value: a zero-width interval
    values = np.array([r["value"] for r in rows if r["method"] == "small" and r["metric"] == "deletion_simultaneous"])
    assert small["mean"] == pytest.approx(values.mean())
    assert summarize(pd.DataFrame(rows), n_boot=500).equals(summary)  # seeded
    assert (
        format_table(summary, ["max_sensitivity", "pointing_game"], ci=False).splitlines()[2]
        == "| small | 2.000 | NA |"
    )
    table = format_table(summary)
    assert table.splitlines()[0] == "| method | SD ↓ | MS ↓ |"
    assert (
        table.splitlines()[-1]
        == f"| large | {large['mean']:.3f} [{large['ci_low']:.3f}, {large['ci_high']:.3f}] | NA |"
    )


def test_drop_increase_many_equals_pair_by_pair_and_shares_batches(monkeypatch):
    from cl_explain.metrics import drop_increase_many
    from helpers import staged_model

    model = staged_model()
    g = torch.Generator().manual_seed(8)
    items = []
    for i, side in enumerate([SIDE, SIDE, 2 * SIDE, SIDE, 2 * SIDE, SIDE]):
        x1, x2 = (torch.rand(1, 3, side, side, generator=g) for _ in range(2))
        map1, map2 = torch.rand(side, side, generator=g), torch.rand(side // 2, side // 2, generator=g)
        items.append((x1, x2, map1, None if i == 3 else map2))
    expected = [drop_increase(model, *item) for item in items]
    sizes = []
    original = model.embed
    monkeypatch.setattr(model, "embed", lambda x: (sizes.append(len(x)), original(x))[1])
    got = drop_increase_many(model, items, batch_size=8)
    assert len(got) == len(items)
    for want, have in zip(expected, got):
        assert set(want) == set(have)
        for key in want:
            assert have[key].base == pytest.approx(want[key].base, abs=1e-6)
            assert have[key].score == pytest.approx(want[key].score, abs=1e-6)
            assert have[key].increase == want[key].increase
    # 4 + 4 + 3 + 4 = 15 images of side SIDE and 8 of side 2*SIDE, in batches of at most 8
    assert sorted(sizes) == sorted([8, 7, 8]) and sum(sizes) == 23


def test_evaluate_pairs_equals_evaluate_pair_and_evaluate_orders_rows_by_pair():
    from cl_explain.metrics import evaluate_pairs

    model = patch_model()
    pairs = make_pairs(5, masks=True)
    explanations = [explain(model, p.x1, p.x2, "_test_metrics_linear") for p in pairs]
    metrics = ["average_drop_conditional", "average_increase_simultaneous", "deletion_simultaneous", "pointing_game"]
    many = evaluate_pairs(model, pairs, explanations, metrics, batch_size=8)
    for pair, explanation, values in zip(pairs, explanations, many):
        one = evaluate_pair(model, pair.x1, pair.x2, explanation, metrics, masks=(pair.mask1, pair.mask2))
        assert values == pytest.approx(one, abs=1e-6)
    with pytest.raises(ValueError, match="one explanation per pair"):
        evaluate_pairs(model, pairs, explanations[:2], metrics)
    # evaluate scores chunks of pairs per method, yet lists rows pair by pair, methods in the given order
    df = evaluate(model, pairs, ["random", "_test_metrics_linear"], metrics, batch_size=8, progress=False)
    order = df[["pair_id", "method"]].drop_duplicates()
    assert order.pair_id.tolist() == [p.pair_id for p in pairs for _ in range(2)]
    assert order.method.tolist() == ["random", "_test_metrics_linear"] * len(pairs)
    got = df[(df.pair_id == "p4") & (df.method == "_test_metrics_linear")].set_index("metric")["value"].to_dict()
    assert got == pytest.approx(many[4], abs=1e-6)
