"""The shared map helpers: one min-max scaling and one rank correlation, with their constant-map rules."""

from __future__ import annotations

import pytest
import torch

from cl_explain.maps import minmax, rank_correlation


def test_minmax_scales_each_map_of_a_stack_on_its_own():
    g = torch.Generator().manual_seed(2)
    maps = torch.stack([torch.rand(4, 5, generator=g) * 3 - 1, torch.rand(4, 5, generator=g) + 10])
    scaled = minmax(maps, constant=0.0)
    for m, s in zip(maps, scaled):
        torch.testing.assert_close(s, (m - m.min()) / (m.max() - m.min()))
    torch.testing.assert_close(minmax(maps[0], constant=0.0), scaled[0])  # one map = a stack of one


@pytest.mark.parametrize("constant", [0.0, 1.0])
def test_minmax_constant_map_takes_the_callers_value(constant):
    assert torch.equal(minmax(torch.full((3, 3), 7.0), constant=constant), torch.full((3, 3), constant))


def test_rank_correlation_cases():
    a = torch.rand(5, 5, generator=torch.Generator().manual_seed(0))
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, a.exp() * 3) == pytest.approx(1.0)  # monotone transform keeps ranks
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(torch.ones(3, 3), torch.ones(3, 3)) == 1.0
    assert rank_correlation(torch.ones(3, 3), a[:3, :3]) == 0.0
    assert rank_correlation(a[:3, :3], torch.full((3, 3), 2.0)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        rank_correlation(a, a[:2])


def test_rank_correlation_matches_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(6, 6, generator=g), torch.rand(6, 6, generator=g).round(decimals=1)  # ties in b
    assert rank_correlation(a, b) == pytest.approx(spearmanr(a.flatten(), b.flatten()).statistic)


def test_old_names_warn_and_forward():
    import importlib
    import sys

    from cl_explain.metrics import drop, evaluate

    ramp = torch.arange(6.0).view(2, 3)
    with pytest.warns(DeprecationWarning, match="normalise_map is deprecated"):
        assert torch.equal(drop.normalise_map(ramp), drop.mask_weights(ramp))
    sys.modules.pop("cl_explain.metrics.harness", None)
    with pytest.warns(DeprecationWarning, match="harness is deprecated"):
        harness = importlib.import_module("cl_explain.metrics.harness")
    assert harness.evaluate is evaluate


def test_british_spellings_are_deprecated_aliases_of_the_american_names():
    import pandas as pd

    import cl_explain
    from cl_explain import viz
    from cl_explain.metrics import randomisation_test, randomization_test

    df = pd.DataFrame({"method": ["m", "m"], "metric": ["deletion_simultaneous"] * 2, "value": [0.2, 0.4]})
    with pytest.warns(DeprecationWarning, match="summarise is deprecated; use summarize"):
        old = cl_explain.summarise(df, n_boot=10)
    pd.testing.assert_frame_equal(old, cl_explain.summarize(df, n_boot=10))
    with pytest.warns(DeprecationWarning, match="normalise_for_display is deprecated"):
        assert (viz.normalise_for_display(torch.ones(2, 2)) == 0).all()
    assert randomisation_test.__wrapped__ is randomization_test


def test_display_stretch_clips_outliers_instead_of_greying_the_image():
    from cl_explain.viz import stretch

    image = torch.linspace(0, 0.01, 3 * 20 * 20).view(1, 3, 20, 20).clone()
    image[0, 0, 0, 0] = 5.0  # one extreme value
    robust, plain = stretch(image), stretch(image, clip_percent=0)
    assert float(robust.min()) == 0.0 and float(robust.max()) == 1.0
    # Min-max squeezes every other pixel into the bottom 0.2% of the range; the robust stretch spreads them.
    assert float(plain.view(-1)[1:].max()) < 0.003
    assert float(robust.view(-1)[1:].std()) > 0.25
    torch.testing.assert_close(plain, (image - image.min()) / (image.max() - image.min()))
    with pytest.raises(ValueError, match="clip_percent"):
        stretch(image, clip_percent=50)


def test_model_method_grid_stacks_two_rows_per_model_and_leaves_missing_methods_empty():
    import matplotlib.pyplot as plt

    from cl_explain.explainers.base import PairExplanation
    from cl_explain.viz import method_grid, model_method_grid

    x = torch.rand(1, 3, 16, 16)
    ramp = torch.arange(16.0).repeat(16, 1)

    def explanation(with_map2: bool = True) -> PairExplanation:
        return PairExplanation("m", ramp, ramp.T if with_map2 else None, 0.5, {}, 0.0, (16, 16))

    per_model = {"resnet": {"A": explanation(), "B": explanation()}, "vit": {"B": explanation(with_map2=False)}}
    fig = model_method_grid(x, x, per_model, title="t")
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(grid) == 4 * 3  # 2 models x (x1, x2) rows; columns: images, A, B
    by_row = [grid[i * 3 : (i + 1) * 3] for i in range(4)]
    assert [row[0].get_ylabel() for row in by_row] == ["resnet", "", "vit", ""]
    assert [ax.get_title() for ax in by_row[0]] == ["x1", "A", "B"]
    assert all(ax.get_title() == "" for row in by_row[2:] for ax in row)  # titles only on the first block
    images = [len(ax.get_images()) for row in by_row for ax in row]
    # image + overlay where a map exists; the ViT lacks A, and its B has no second map.
    assert images == [1, 2, 2, 1, 2, 2, 1, 0, 2, 1, 0, 0]
    plt.close(fig)
    single = method_grid(x, x, per_model["resnet"])
    assert all(ax.get_ylabel() == "" for ax in single.axes if ax.get_label() != "<colorbar>")
    plt.close(single)
    with pytest.raises(ValueError, match="per_model is empty"):
        model_method_grid(x, x, {})
