"""Helpers the notebooks call: cl_explain.notebook (setup, tables, pairs, findings, variants) and
cl_explain.analysis (correlation with accuracy, paired model comparison, inversion errors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats

from cl_explain.analysis import bootstrap_correlation, correlation_table, inversion_errors, paired_difference
from cl_explain.exercises import tiny_model
from cl_explain.notebook import (
    explain_variants,
    findings,
    load_pairs,
    markdown_table,
    overall,
    pair_maps_only,
    save_table,
    score_table,
    score_variants,
    setup,
)


def test_setup_seeds_and_creates_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = setup(3, "a/b")
    first = torch.rand(3)
    assert out == (tmp_path / "a" / "b").resolve() and out.is_dir()
    setup(3, "a/b")
    assert torch.equal(first, torch.rand(3))


def test_save_table_writes_csv_and_markdown(tmp_path):
    df = pd.DataFrame({"method": ["a", "b|c"], "value": [0.12345, float("nan")]})
    save_table(df, tmp_path / "t")
    assert pd.read_csv(tmp_path / "t.csv").shape == (2, 2)
    assert (tmp_path / "t.md").read_text() == "| method | value |\n|---|---|\n| a | 0.123 |\n| b\\|c | NA |\n"
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError, match="without suffix"):
        save_table(df, tmp_path / "t.csv")


def test_markdown_table_with_index():
    df = pd.DataFrame({"x": [1.0]}, index=pd.Index(["m"], name="method"))
    assert markdown_table(df, digits=1, index=True).splitlines()[2] == "| m | 1.0 |"


def _write_images(folder, count):
    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.full((40, 50, 3), 40 * i, dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")


def test_load_pairs_from_a_folder_cycles_and_seeds(tmp_path):
    _write_images(tmp_path / "imgs", 2)
    pairs = load_pairs(3, 32, seed=5, image_folder=str(tmp_path / "imgs"))
    assert [p.pair_id for p in pairs] == ["img0-5", "img1-6", "img0-7"]
    assert all(p.x1.shape == (1, 3, 32, 32) and p.mask1 is None for p in pairs)
    again = load_pairs(3, 32, seed=5, image_folder=str(tmp_path / "imgs"))
    assert all(torch.equal(a.x2, b.x2) for a, b in zip(pairs, again))


def test_load_pairs_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_pairs(1, 32, 0, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_pairs(1, 32, 0, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="at least 1"):
        load_pairs(0, 32, 0)


def test_load_pairs_from_scenes_have_masks():
    pairs = load_pairs(2, 32, seed=0)
    assert len(pairs) == 2 and all(p.mask1 is not None and p.mask1.shape == (32, 32) for p in pairs)


def test_findings_renders_bullets():
    text = findings("Title", ["one", "two"], notes=["note"]).data
    assert text == "### Title\n\n- one\n- two\n\nnote"


def test_variants_explain_and_score_only_what_applies():
    model = tiny_model()
    pair = load_pairs(1, 32, seed=0)[0]  # the smallest scene side
    variants = {
        "cam": {"method": "gradcam", "weighting": "channel"},
        "avgt": {"method": "averaged_transforms"},
        "pi": {"method": "pixel_invariance", "samples": 8, "epochs": 3},
    }
    explanations = explain_variants(model, pair, variants)
    assert explanations["cam"].params["weighting"] == "channel"
    assert explanations["avgt"].params["transform"] == "combine"
    scores = score_variants(
        model, [pair], [explanations], ["deletion_simultaneous", "deletion_conditional", "pointing_game"]
    )
    by_method = scores.groupby("method").metric.apply(set).to_dict()
    assert "deletion_simultaneous" in by_method["cam"]
    assert "deletion_simultaneous" not in by_method["pi"]  # explains x1 alone
    assert "deletion_conditional_1" in by_method["pi"] and "deletion_conditional_2" not in by_method["pi"]
    assert scores.value.notna().all()
    shown = pair_maps_only(explanations)  # map2 of a single-image method never lands on x2
    assert shown["avgt"].map2 is None and torch.equal(shown["cam"].map2, explanations["cam"].map2)


def test_score_table_keeps_overall_values_in_order():
    rows = [
        ("p1", "b", "cd", 0.4),
        ("p1", "b", "cd_1", 0.2),
        ("p1", "b", "cd_2", 0.6),
        ("p1", "a", "cd", 0.1),
        ("p2", "b", "cd", 0.6),
        ("p2", "a", "cd", 0.3),
        ("p2", "a", "epg", 0.5),
    ]
    df = pd.DataFrame(rows, columns=["pair_id", "method", "metric", "value"])
    assert set(overall(df).metric) == {"cd", "epg"}
    table = score_table(df)
    assert list(table.index) == ["b", "a"] and list(table.columns) == ["cd", "epg"]
    assert table.loc["b", "cd"] == pytest.approx(0.5) and table.loc["a", "cd"] == pytest.approx(0.2)
    assert np.isnan(table.loc["b", "epg"])


# ------------------------------------------------------------------------------------ analysis


def test_bootstrap_correlation_perfect_and_against_scipy():
    rng = np.random.default_rng(0)
    accuracy = {f"m{i}": 0.1 * i for i in range(8)}
    values = {f"m{i}": 0.1 * i + rng.normal(0, 0.001, 5) for i in range(8)}
    result = bootstrap_correlation(values, accuracy, "spearman", n_boot=300)
    assert result["r"] == pytest.approx(1.0) and result["ci_low"] > 0.8 and result["p_value"] < 0.01
    noisy = {f"m{i}": rng.normal(0, 1, 6) for i in range(8)}
    pearson = bootstrap_correlation(noisy, accuracy, "pearson", n_boot=200)
    means = [noisy[f"m{i}"].mean() for i in range(8)]
    assert pearson["r"] == pytest.approx(stats.pearsonr(means, list(accuracy.values())).statistic)
    assert pearson["ci_low"] <= pearson["r"] <= pearson["ci_high"]


def test_bootstrap_correlation_errors_and_constant_input():
    with pytest.raises(ValueError, match="at least 3 models"):
        bootstrap_correlation({"a": [1.0], "b": [2.0]}, {"a": 0.1, "b": 0.2})
    with pytest.raises(ValueError, match="no accuracy"):
        bootstrap_correlation({"a": [1.0], "b": [2.0], "c": [3.0]}, {"a": 0.1, "b": 0.2})
    flat = bootstrap_correlation({k: [1.0] for k in "abc"}, {"a": 0.1, "b": 0.2, "c": 0.3}, n_boot=20)
    assert np.isnan(flat["r"]) and flat["n_valid_boot"] == 0


def test_correlation_table_covers_every_method_and_metric():
    rows = [
        {"model": m, "method": meth, "metric": "x", "pair_id": p, "value": i + p}
        for i, m in enumerate("abcd")
        for meth in ("u", "v")
        for p in range(3)
    ]
    table = correlation_table(pd.DataFrame(rows), {"a": 1, "b": 2, "c": 3, "d": 4}, n_boot=50)
    assert list(table.method) == ["u", "v"] and table.r.tolist() == pytest.approx([1.0, 1.0])


def test_paired_difference_keeps_the_pairing():
    pairs = np.arange(10.0)
    rows = [
        {"model": model, "pair_id": i, "method": "m", "metric": "x", "value": 10 * v + shift}
        for model, shift in (("A", 0.1), ("B", 0.0))
        for i, v in enumerate(pairs)
    ]
    result = paired_difference(pd.DataFrame(rows), "A", "B", n_boot=200).iloc[0]
    assert result.difference == pytest.approx(0.1)
    assert result.ci_high - result.ci_low < 1e-9  # the pair effect cancels; an unpaired bootstrap would be wide
    assert result.n_pairs == 10
    with pytest.raises(ValueError, match="not in the results"):
        paired_difference(pd.DataFrame(rows), "A", "C")


def test_inversion_errors_of_a_perfect_inversion():
    model = tiny_model()
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    other = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    table = inversion_errors({"tiny": model}, image, {"stem": {"tiny": image}, "layer1": {"tiny": other}}).set_index(
        "depth"
    )
    assert table.loc["stem", "feature_error"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc["stem", "pixel_correlation"] == pytest.approx(1.0)
    assert table.loc["layer1", "feature_error"] > 0.05


def test_inversion_comparison_is_a_paired_verdict_per_depth():
    from cl_explain.analysis import inversion_comparison

    rng = np.random.default_rng(0)
    rows = []
    for image in range(12):
        base = rng.uniform(0.2, 0.8)  # an image effect shared by both models: pairing removes it
        for depth, gap in (("stem", 0.0), ("layer2", 0.2), ("layer3", -0.2)):
            for model, shift in (("A", gap + rng.normal(0, 0.01)), ("B", 0.0)):
                rows.append(
                    {
                        "image": image,
                        "depth": depth,
                        "model": model,
                        "pixel_correlation": base + shift,
                        "feature_error": 0.1,
                    }
                )
    table = inversion_comparison(pd.DataFrame(rows), "A", "B", n_boot=500).set_index("depth")
    assert list(table.index) == ["stem", "layer2", "layer3"]
    assert table.loc["layer2", "verdict"] == "holds" and table.loc["layer2", "difference"] == pytest.approx(
        0.2, abs=0.01
    )
    assert table.loc["layer3", "verdict"] == "fails"
    assert (
        table.loc["stem", "verdict"] == "inconclusive"
        and table.loc["stem", "ci_low"] < 0 < table.loc["stem", "ci_high"]
    )
    assert table.loc["stem", "n"] == 12 and table.loc["stem", "worst feature error"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not in the inversion errors"):
        inversion_comparison(pd.DataFrame(rows), "A", "C")


def test_metric_tables_format_and_means():
    from cl_explain.analysis import metric_tables

    rows = [
        {"model": "m", "pair_id": p, "method": meth, "metric": metric, "value": v + p / 10}
        for p in range(3)
        for meth, v in (("a", 0.2), ("b", 0.5))
        for metric in ("deletion_simultaneous", "deletion_conditional", "deletion_conditional_1")
    ]
    rows.append({"model": "m", "pair_id": 0, "method": "a", "metric": "max_sensitivity", "value": 1.0})
    formatted, means = metric_tables(pd.DataFrame(rows), ["deletion_simultaneous", "max_sensitivity"], n_boot=50)
    assert list(formatted.columns) == ["model", "method", "scored on", "SD ↓", "MS ↓"]
    assert set(formatted["scored on"]) == {""}  # hand-made labels: no registered method to describe
    assert formatted.loc[1, "MS ↓"] == "NA"
    assert formatted.loc[0, "SD ↓"].startswith("0.300 [")
    assert means.loc[0, "deletion_simultaneous"] == pytest.approx(0.3)
    assert list(means.columns) == ["model", "method", "deletion_simultaneous", "max_sensitivity"]
