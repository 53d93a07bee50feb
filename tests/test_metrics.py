"""Metric families against independent computations (hand-derived cases and naive reference loops).

The explainers are written elsewhere; these tests use maps built by hand and tiny test-only methods
registered below, and stub out the import of the real method modules.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from cl_explain.explainers.base import explain
from cl_explain.metrics import MetricNotApplicable, max_sensitivity, random_explanation, randomization_test
from cl_explain.metrics.drop import drop_increase, mask_weights, masked_image
from cl_explain.metrics.grounding import energy_pointing_game, pointing_game
from cl_explain.metrics.perturbation import (
    area_under_curve,
    foreign_start,
    perturbation_counts,
    perturbation_curves,
    rank_pixels,
    reference_image,
)
from cl_explain.metrics.sanity import spearman
from cl_explain.models.similarity import SimilarityModel

from helpers import SIDE, images, patch_map, patch_model, register_test_methods, staged_model


@pytest.fixture(autouse=True)
def registered_test_methods():
    """The test-only methods, registered for each test (the registry fixture removes them afterwards)."""
    register_test_methods()


# ------------------------------------------------------------------------------ insertion/deletion


def test_auc_of_constant_and_linear_curves():
    assert area_under_curve(torch.full((17,), 0.3)) == pytest.approx(0.3)
    assert area_under_curve(torch.linspace(0, 1, 225)) == pytest.approx(0.5)
    assert area_under_curve(torch.linspace(1, 0, 5)) == pytest.approx(0.5)
    s = torch.rand(11, generator=torch.Generator().manual_seed(3)).double()
    n = s.numel() - 1
    assert area_under_curve(s) == pytest.approx(float((s.sum() - s[0] / 2 - s[-1] / 2) / n))


def test_step_rule_matches_paper_and_handles_remainder():
    counts = perturbation_counts(224, 224)
    assert counts.numel() == 225 and counts[1] == 224 and counts[-1] == 224 * 224
    counts = perturbation_counts(16, 16, step=5)  # 256 = 51 * 5 + 1
    assert counts.numel() == 53 and counts[-2] == 255 and counts[-1] == 256
    assert perturbation_counts(12, 20).tolist()[:3] == [0, 12, 24]


def test_rank_pixels_orders_by_decreasing_saliency_with_stable_ties():
    m = torch.tensor([[0.1, 0.9], [0.5, 0.9]])
    assert rank_pixels(m).tolist() == [[3, 0], [2, 1]]
    assert rank_pixels(torch.full((2, 2), 0.3)).tolist() == [[0, 1], [2, 3]]  # a flat map: raster order


def test_rank_pixels_treats_rounding_level_differences_as_ties():
    """Values a rounding error apart (as different CPU kernels produce) rank in raster order, whichever
    of them is larger; a difference above the tolerance still decides."""
    m = torch.tensor([[0.2, 0.7], [0.7 + 3e-7, 1.0]])
    swapped = torch.tensor([[0.2, 0.7 + 3e-7], [0.7, 1.0]])
    assert rank_pixels(m).tolist() == rank_pixels(swapped).tolist() == [[3, 1], [2, 0]]
    apart = torch.tensor([[0.2, 0.7], [0.7 + 1e-3, 1.0]])
    assert rank_pixels(apart).tolist() == [[3, 2], [1, 0]]
    # a chain of small gaps is one group; a random map's ranks are a permutation that follows its values
    chain = torch.tensor([[0.5, 0.5 + 4e-6], [0.5 + 8e-6, 0.0]]) + torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert rank_pixels(chain).tolist() == [[1, 2], [3, 0]]
    noise = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    ranks = rank_pixels(noise).flatten()
    assert sorted(ranks.tolist()) == list(range(256))
    assert torch.equal(torch.argsort(ranks), torch.argsort(noise.flatten(), descending=True))


def naive_curve(model, x, other, saliency, mode, step, fill_kind="zero", perturb_other_map=None, role=0):
    """Reference: one image at a time, pixels replaced by explicit indexing in sorted order; insertion
    starts from the default start, the image's foreign scene (`role` 0 for x1, 1 for x2)."""
    h, w = x.shape[-2:]
    order = np.argsort(-saliency.flatten().numpy(), kind="stable")
    full = (reference_image(model, x, fill_kind) if mode == "deletion" else foreign_start(x, role)).expand_as(x)
    start, fill = (x, full) if mode == "deletion" else (full, x)
    scores = []
    for k in list(range(0, h * w, step)) + [h * w]:
        img = start.clone().reshape(3, -1)
        img[:, order[:k]] = fill.reshape(3, -1)[:, order[:k]]
        with torch.no_grad():
            a = model.embed(img.view(1, 3, h, w))
            b = model.embed(other)
        scores.append(float(torch.nn.functional.cosine_similarity(a, b)))
    return np.array(scores)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("step", [None, 5])
def test_conditional_curve_matches_naive_loop_for_any_batch_size(mode, step):
    model = patch_model(normalize=((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    x1, x2 = images(1)
    map1 = torch.rand(SIDE, SIDE, generator=torch.Generator().manual_seed(7))
    reference = naive_curve(model, x1, x2, map1, mode, step or SIDE)
    for batch_size in (1, 7, 1000):
        curve = perturbation_curves(
            model, x1, x2, map1, None, mode, ("conditional_1",), step=step, batch_size=batch_size
        )
        c = curve["conditional_1"]
        np.testing.assert_allclose(c.scores.numpy(), reference, atol=1e-5)
        assert c.auc == pytest.approx(np.trapezoid(reference, c.fractions.numpy()), abs=1e-6)


def test_simultaneous_curve_matches_naive_loop():
    model = patch_model()
    x1, x2 = images(2)
    g = torch.Generator().manual_seed(1)
    map1, map2 = torch.rand(SIDE, SIDE, generator=g), torch.rand(SIDE, SIDE, generator=g)
    curves = perturbation_curves(model, x1, x2, map1, map2, "deletion", batch_size=4)
    o1, o2 = (np.argsort(-m.flatten().numpy(), kind="stable") for m in (map1, map2))
    expected = []
    for k in range(0, SIDE * SIDE + 1, SIDE):
        a, b = x1.clone().reshape(3, -1), x2.clone().reshape(3, -1)
        a[:, o1[:k]] = 0.0
        b[:, o2[:k]] = 0.0
        with torch.no_grad():
            expected.append(float(model.similarity(a.view(1, 3, SIDE, SIDE), b.view(1, 3, SIDE, SIDE))))
    np.testing.assert_allclose(curves["simultaneous"].scores.numpy(), expected, atol=1e-5)
    # the conditional curves come from the same perturbed embeddings, with the other image intact
    np.testing.assert_allclose(
        curves["conditional_2"].scores.numpy(), naive_curve(model, x2, x1, map2, "deletion", SIDE, role=1), atol=1e-5
    )


def test_conditional_embeds_the_intact_image_once(monkeypatch):
    model = patch_model()
    x1, x2 = images(3)
    sizes = []
    original = model.embed
    monkeypatch.setattr(model, "embed", lambda x: (sizes.append(x.shape[0]), original(x))[1])
    perturbation_curves(model, x1, x2, patch_map(), None, "deletion", ("conditional_1",), batch_size=5)
    assert sum(sizes) == SIDE + 1 + 1  # 17 perturbed images + the intact x2, once
    assert max(sizes) <= 5


def test_ranking_the_patch_first_beats_its_reverse():
    model = patch_model()
    x1, x2 = images(4)
    good, bad = patch_map(), patch_map(reverse=True)
    for mode in ("deletion", "insertion"):
        # at 16 px the scaled insertion blur is tiny, so insert into the zero image here
        g = perturbation_curves(model, x1, x2, good, good, mode, insertion_start="zero")
        b = perturbation_curves(model, x1, x2, bad, bad, mode, insertion_start="zero")
        for kind in ("simultaneous", "conditional_1", "conditional_2"):
            if mode == "deletion":
                assert g[kind].auc < b[kind].auc - 0.3, kind
            else:
                assert g[kind].auc > b[kind].auc + 0.3, kind
    # deleting the patch (the first step of the good ranking) leaves no features: cos(0, .) = 0
    assert g_first_deleted(model, x1, x2) == pytest.approx(0.0, abs=1e-6)


def g_first_deleted(model, x1, x2):
    return float(
        perturbation_curves(model, x1, x2, patch_map(), None, "deletion", ("conditional_1",))["conditional_1"].scores[1]
    )


def test_deletion_endpoints_and_substrate_override():
    model = patch_model()
    x1, x2 = images(5)
    curve = perturbation_curves(model, x1, x2, patch_map(), None, "deletion", ("conditional_1",))["conditional_1"]
    assert float(curve.scores[0]) == pytest.approx(model.score(x1, x2), abs=1e-6)
    # substrate = the image itself: nothing changes, the curve is flat at S(x1, x2)
    flat = perturbation_curves(model, x1, x2, patch_map(), None, "deletion", ("conditional_1",), substrate=x1)
    assert flat["conditional_1"].auc == pytest.approx(model.score(x1, x2), abs=1e-6)
    with pytest.raises(ValueError, match="substrate"):
        perturbation_curves(model, x1, x2, patch_map(), None, "deletion", ("conditional_1",), substrate="grey")


def test_foreign_start_gives_each_image_of_a_pair_its_own_unrelated_scene():
    """The default insertion start: x1 begins as validation scene 0, x2 as scene 5 (another class), at the
    image's size, so a simultaneous insertion curve runs from S(scene 0, scene 5) to S(x1, x2)."""
    from cl_explain.data.scenes import render_scene
    from cl_explain.metrics.perturbation import FOREIGN_SCENES

    model = patch_model()
    x1, x2 = images(3)
    first, second = foreign_start(x1, 0), foreign_start(x2, 1)
    assert first.shape == x1.shape and second.shape == x2.shape
    wide = torch.zeros(1, 3, 48, 48)
    for role in (0, 1):
        assert torch.equal(foreign_start(wide, role)[0], render_scene(FOREIGN_SCENES[role], "val", size=48).image)
    labels = [render_scene(index, "val", size=48).label for index in FOREIGN_SCENES]
    assert labels[0] != labels[1]
    assert not torch.equal(first, second) and torch.equal(reference_image(model, x1, "foreign"), first)
    assert foreign_start(torch.zeros(1, 3, 40, 56), 1).shape == (1, 3, 40, 56)
    with pytest.raises(ValueError, match="role must be"):
        foreign_start(x1, 2)
    g = torch.Generator().manual_seed(4)
    curve = perturbation_curves(
        model,
        x1,
        x2,
        torch.rand(SIDE, SIDE, generator=g),
        torch.rand(SIDE, SIDE, generator=g),
        "insertion",
        ("simultaneous",),
    )["simultaneous"]
    assert float(curve.scores[0]) == pytest.approx(model.score(first, second), abs=1e-5)
    assert float(curve.scores[-1]) == pytest.approx(model.score(x1, x2), abs=1e-5)


def test_insertion_start_is_the_paper_blur_scaled_with_the_side():
    from torchvision.transforms.v2.functional import gaussian_blur

    model = patch_model()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(reference_image(model, x, "blur"), gaussian_blur(x, [11, 11], [5.0, 5.0]))
    x = torch.nn.functional.interpolate(x, size=112)
    assert torch.allclose(reference_image(model, x, "blur"), gaussian_blur(x, [7, 7], [2.5, 2.5]))
    assert torch.equal(reference_image(model, x, "zero"), model.zero_pixel)


# ------------------------------------------------------------------------------- drop / increase


def test_average_drop_matches_hand_computation():
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.2, 0.2)
    model = patch_model(normalize=(mean, std))
    x1, x2 = images(6)
    g = torch.Generator().manual_seed(2)
    map1, map2 = torch.randn(SIDE, SIDE, generator=g), torch.randn(SIDE, SIDE, generator=g)
    n1 = (map1 - map1.min()) / (map1.max() - map1.min())
    # "map * x in model input space"
    assert torch.allclose(model.preprocess(masked_image(model, x1, map1)), n1 * model.preprocess(x1), atol=1e-6)
    m1 = torch.tensor(mean).view(1, 3, 1, 1) + n1 * (x1 - torch.tensor(mean).view(1, 3, 1, 1))
    n2 = (map2 - map2.min()) / (map2.max() - map2.min())
    m2 = torch.tensor(mean).view(1, 3, 1, 1) + n2 * (x2 - torch.tensor(mean).view(1, 3, 1, 1))
    base_score = model.score(x1, x2)
    results = drop_increase(model, x1, x2, map1, map2)
    for key, (a, b) in {"simultaneous": (m1, m2), "conditional_1": (m1, x2), "conditional_2": (x1, m2)}.items():
        score = model.score(a, b)
        assert results[key].score == pytest.approx(score, abs=1e-6)
        assert results[key].drop == pytest.approx(max(0.0, base_score - score) / base_score, abs=1e-6)
        assert results[key].increase == float(score > base_score)


def test_constant_map_keeps_the_image_and_nonpositive_base_has_no_drop():
    assert torch.equal(mask_weights(torch.full((3, 3), 2.0)), torch.ones(3, 3))
    model = patch_model()
    x1, x2 = images(7)
    r = drop_increase(model, x1, x2, torch.zeros(4, 4), torch.zeros(4, 4))
    assert r["simultaneous"].drop == 0.0 and r["simultaneous"].increase == 0.0

    class Centred(nn.Module):
        def forward(self, x):
            return x - 0.5

    opposite = SimilarityModel(Centred(), None, name="centred")
    bright, dark = torch.full((1, 3, 8, 8), 0.9), torch.full((1, 3, 8, 8), 0.1)
    r = drop_increase(opposite, bright, dark, torch.rand(8, 8), torch.rand(8, 8))
    assert r["conditional_1"].base == pytest.approx(-1.0, abs=1e-5)
    assert r["conditional_1"].drop is None and r["conditional_1"].increase in (0.0, 1.0)


# ------------------------------------------------------------------------------------- grounding


def test_pointing_games_on_hand_made_maps():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1:3, 2:5] = True
    m = torch.zeros(6, 6)
    m[2, 3] = 5.0
    assert pointing_game(m, mask) == 1.0
    m[5, 5] = 6.0
    assert pointing_game(m, mask) == 0.0
    assert pointing_game(torch.ones(6, 6), mask) == pytest.approx(6 / 36)  # ties: the mask's area share
    e = torch.zeros(6, 6)
    e[1, 2], e[0, 0], e[4, 4] = 3.0, 1.0, -10.0  # negative values carry no energy
    assert energy_pointing_game(e, mask) == pytest.approx(0.75)
    low = torch.zeros(3, 3)
    low[0, 2] = 1.0  # upsampled to 6x6: the hot corner is the top-right
    corner = torch.zeros(6, 6, dtype=torch.bool)
    corner[:2, 4:] = True
    assert pointing_game(low, corner) == 1.0
    with pytest.raises(MetricNotApplicable, match="no positive"):
        energy_pointing_game(-torch.ones(6, 6), mask)
    with pytest.raises(MetricNotApplicable, match="empty"):
        pointing_game(m, torch.zeros(6, 6, dtype=torch.bool))


def test_pointing_game_does_not_depend_on_float_rounding_between_near_equal_peaks():
    """Two peaks 1e-6 of the range apart (what another CPU kernel changes) are tied; 1e-3 apart they are not."""
    from cl_explain.metrics.grounding import PEAK_TOLERANCE

    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 0] = True
    m = torch.zeros(6, 6)
    m[0, 0], m[5, 5] = 1.0, 1.0 + 1e-6  # the outside peak wins an exact argmax by rounding noise
    flipped = m.clone()
    flipped[5, 5] = 1.0 - 1e-6
    assert pointing_game(m, mask) == pointing_game(flipped, mask) == 0.5
    m[5, 5] = 1.0 + 10 * PEAK_TOLERANCE  # a real difference still decides
    assert pointing_game(m, mask) == 0.0
    m[5, 5] = 1.0 - 10 * PEAK_TOLERANCE
    assert pointing_game(m, mask) == 1.0


# ------------------------------------------------------------------------------ max-sensitivity


def test_max_sensitivity_of_a_linear_map_matches_its_closed_form():
    model = patch_model()
    x1, x2 = images(8)
    e = explain(model, x1, x2, "_test_metrics_linear")
    ms = max_sensitivity(model, x1, x2, e, n_draws=4, radius=0.2, seed=11)
    g = torch.Generator().manual_seed(11)
    worst = [0.0, 0.0]
    for _ in range(4):
        u = (torch.rand(x1.shape, generator=g) * 2 - 1) * 0.2
        for i, x in enumerate((x1, x2)):  # e(x + u) - e(x) = mean_c(u), the same for both images
            worst[i] = max(worst[i], float(u.mean(1).norm() / x.mean(1).norm()))
    assert ms["max_sensitivity_1"] == pytest.approx(worst[0], rel=1e-5)
    assert ms["max_sensitivity_2"] == pytest.approx(worst[1], rel=1e-5)
    assert ms["max_sensitivity"] == pytest.approx(sum(worst) / 2, rel=1e-5)
    bound = 0.2 * SIDE / float(x1.mean(1).norm())  # |mean_c u| <= 0.2 per pixel
    assert 0 < ms["max_sensitivity_1"] < bound
    clipped = max_sensitivity(model, x1, x2, e, n_draws=4, radius=0.2, seed=11, clip=True)
    assert clipped["max_sensitivity"] < ms["max_sensitivity"]  # clipping removes part of the noise


def test_max_sensitivity_zero_for_input_independent_maps_and_na_where_undefined():
    model = patch_model()
    x1, x2 = images(9)
    e = explain(model, x1, x2, "_test_metrics_constant")
    assert max_sensitivity(model, x1, x2, e, n_draws=3)["max_sensitivity"] == 0.0
    with pytest.raises(MetricNotApplicable, match="sensitivity=False"):
        max_sensitivity(model, x1, x2, explain(model, x1, x2, "_test_metrics_nosens"))
    with pytest.raises(MetricNotApplicable, match="random"):
        max_sensitivity(model, x1, x2, random_explanation(x1, x2, seed=0))


# --------------------------------------------------------------------------------------- sanity


def test_random_explanation_is_seeded():
    x1, x2 = images(10)
    a, b, c = (random_explanation(x1, x2, seed=s) for s in (1, 1, 2))
    assert a.method == "random" and a.map1.shape == (SIDE, SIDE)
    assert torch.equal(a.map1, b.map1) and torch.equal(a.map2, b.map2)
    assert not torch.equal(a.map1, c.map1) and not torch.equal(a.map1, a.map2)


def test_random_explanation_on_a_grid():
    x1, x2 = images(11)
    # a grid as fine as the image is the pixel-level map itself (same draws, no resizing)
    assert torch.equal(random_explanation(x1, x2, seed=4, cells=SIDE).map1, random_explanation(x1, x2, seed=4).map1)
    coarse = random_explanation(x1, x2, seed=4, cells=2)
    assert coarse.map1.shape == (SIDE, SIDE) and coarse.params == {"seed": 4, "cells": 2}
    assert coarse.map1.unique().numel() > 4  # interpolated, not blocky
    # bilinear upsampling (half-pixel centres): the corner quarter-cells are flat at the corner values
    corner = SIDE // 4
    assert torch.equal(coarse.map1[:corner, :corner], coarse.map1[0, 0].expand(corner, corner))
    assert coarse.map1[0, 0] != coarse.map1[-1, -1]

    # smooth: neighbouring pixels differ far less than in a per-pixel map
    def roughness(m):
        return float((m[1:] - m[:-1]).abs().mean())

    assert roughness(coarse.map1) < 0.25 * roughness(random_explanation(x1, x2, seed=4).map1)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="cells must be a positive integer"):
            random_explanation(x1, x2, cells=bad)


def test_spearman_matches_scipy_and_constant_maps_give_zero():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 5, generator=g), torch.rand(5, 5, generator=g)
    assert spearman(a, b) == pytest.approx(spearmanr(a.flatten(), b.flatten()).statistic)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, torch.ones(5, 5)) == 0.0


def test_randomisation_leaves_model_unchanged_and_decorrelates_maps():
    model = staged_model()
    before = model.fingerprint()
    x1, x2 = images(11)
    table = randomization_test(model, x1, x2, "_test_metrics_cam", seed=3)
    assert model.fingerprint() == before
    assert list(table.columns) == ["step", "randomised", "image", "spearman"]
    assert table.groupby("step")["randomised"].first().tolist() == ["none", "head", "layer1", "stem"]
    assert table.loc[table.step == 0, "spearman"].tolist() == pytest.approx([1.0, 1.0])
    final = table.loc[table.step == table.step.max(), "spearman"]
    assert (final.abs() < 0.8).all(), table


def test_mask_weights_per_map_min_max_and_constant_maps_keep_the_image():
    g = torch.Generator().manual_seed(2)
    maps = torch.stack([torch.rand(5, 6, generator=g) * 3 - 1, torch.full((5, 6), 4.0), torch.rand(5, 6, generator=g)])
    got = mask_weights(maps)
    for m, n in zip(maps, got):
        span = float(m.max() - m.min())
        expected = torch.ones_like(m) if span == 0 else (m - m.min()) / span
        torch.testing.assert_close(n, expected)
    assert float(got[0].min()) == 0.0 and float(got[0].max()) == 1.0


def test_embed_stream_makes_even_batches_in_order():
    from cl_explain.models.similarity import embed_stream

    model = patch_model()
    g = torch.Generator().manual_seed(6)
    images = torch.rand(65, 3, SIDE, SIDE, generator=g)
    calls = []

    def make_batch(start, stop):
        calls.append((start, stop))
        return images[start:stop]

    streamed = embed_stream(model, 65, make_batch, batch_size=64)
    assert calls == [(0, 32), (32, 65)]  # not 64 + 1
    torch.testing.assert_close(streamed, model.embed(images), rtol=1e-5, atol=1e-6)
    calls.clear()
    embed_stream(model, 10, make_batch, batch_size=3)
    assert [b - a for a, b in calls] == [2, 3, 2, 3] and embed_stream(model, 0, make_batch, 4).numel() == 0
