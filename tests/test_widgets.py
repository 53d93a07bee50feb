"""The pair explorer: its pure functions (starting parameters, strength view, render) and the widget, no kernel."""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
import pytest
import torch

import cl_explain as cle
from cl_explain.data import make_pair, pure_view
from cl_explain.exercises import tiny_model
from cl_explain.explainers import list_methods
from cl_explain.widgets import (
    CONTROL_HELP,
    PARAM_HELP,
    explain_call,
    explorer,
    initial_params,
    render_pair,
    strength_view,
)

SIZE = 24


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))


def test_full_strength_is_the_simclr_view_of_make_pair(image):
    for seed in range(4):
        assert torch.equal(strength_view(image, SIZE, seed, 1.0), make_pair(image, seed=seed, size=SIZE).x2)


def test_zero_strength_is_x1s_pure_view_whatever_the_seed(image):
    x1, _ = pure_view(image, SIZE)
    for seed in range(3):
        assert torch.equal(strength_view(image, SIZE, seed, 0.0), x1)


def test_small_strength_stays_near_x1_and_full_strength_does_not():
    ramp = torch.linspace(0, 1, 48)
    smooth = torch.stack([ramp[None, :].expand(40, 48), ramp[:40, None].expand(40, 48), 0.5 * torch.ones(40, 48)])[None]
    x1, _ = pure_view(smooth, SIZE)
    near = torch.tensor([float((strength_view(smooth, SIZE, seed, 0.05) - x1).abs().mean()) for seed in range(9)])
    far = torch.tensor([float((strength_view(smooth, SIZE, seed, 1.0) - x1).abs().mean()) for seed in range(9)])
    # the crop moves 5% of the way; a rare flip or grayscale draw (probability scaled by 0.05) may still happen
    assert near.median() < 0.02 < far.median()


def test_strength_view_is_seeded_and_validated(image):
    assert torch.equal(strength_view(image, SIZE, 3, 0.5), strength_view(image, SIZE, 3, 0.5))
    assert not torch.equal(strength_view(image, SIZE, 3, 1.0), strength_view(image, SIZE, 4, 1.0))
    with pytest.raises(ValueError, match="strength"):
        strength_view(image, SIZE, 0, 1.5)


def test_render_pair_is_pure_and_shows_the_similarity(model, image):
    fig, explanation = render_pair(model, image, "gradcam", {"weighting": "channel"}, seed=2, strength=0.7, size=SIZE)
    x1, _ = pure_view(image, SIZE)
    x2 = strength_view(image, SIZE, 2, 0.7)
    direct = cle.explain(model, x1, x2, "gradcam", weighting="channel")
    assert torch.equal(explanation.map1, direct.map1) and torch.equal(explanation.map2, direct.map2)
    assert f"S(x1, x2) = {model.score(x1, x2):.3f}" in fig._suptitle.get_text()
    panels, bars = fig.axes[:4], fig.axes[4:]
    assert all(ax.axison is False for ax in panels) and [len(ax.images) for ax in panels] == [1, 1, 2, 2]
    assert len(bars) == 1 and [t.get_text() for t in bars[0].get_yticklabels()] == ["low", "high"]  # the colour bar
    again, _ = render_pair(model, image, "gradcam", {"weighting": "channel"}, seed=2, strength=0.7, size=SIZE)
    assert again._suptitle.get_text() == fig._suptitle.get_text()
    plt.close("all")


def test_single_image_method_shows_only_its_own_map(model, image):
    fig, explanation = render_pair(model, image, "averaged_transforms", {"transform": "blur"}, size=SIZE)
    assert explanation.map2 is not None  # belongs to the transformed copy, so it is not drawn over x2
    assert "explains x1 alone" in fig._suptitle.get_text()
    assert len(fig.axes[3].images) == 0
    plt.close("all")


def test_render_pair_reports_bad_parameters(model, image):
    with pytest.raises(ValueError, match="unknown parameter"):
        render_pair(model, image, "gradcam", {"nonsense": 1}, size=SIZE)


def test_initial_params_are_explains_scaled_defaults():
    # at 64 px (the embedded models) the defaults stated at 224 px scale down; at 224 px they are the paper's
    assert initial_params("occlusion", 64) == {"window": 18, "stride": 2}
    assert initial_params("context_agnostic_occlusion", 64) == {"window": 18, "stride": 2}
    assert initial_params("pixel_invariance", 64)["surrogate_side"] == 18
    assert initial_params("occlusion", 224) == {"window": 64, "stride": 8}
    for method in list_methods():
        for side in (24, 64, 224):
            resolved = cle.explainers.base.resolve_params(cle.explainers.get_method(method), side, {})
            shown = initial_params(method, side)
            assert shown.items() <= resolved.items(), method
            assert not {"batch_size", "precision", "blur"} & set(shown)
            assert set(shown) <= set(PARAM_HELP), f"{method}: a parameter without help text"


def test_initial_params_take_overrides_and_reject_unknown_names():
    assert initial_params("pixel_invariance", 64, {"samples": 200, "epochs": 50})["epochs"] == 50
    assert "epochs" not in initial_params("pixel_invariance", 64)  # None ("the paper's value") has no control
    with pytest.raises(ValueError, match="unknown parameter"):
        initial_params("occlusion", 64, {"windw": 3})


def test_explain_call_is_the_code_for_the_same_map():
    assert (
        explain_call("occlusion", {"window": 18, "stride": 2})
        == "cle.explain(model, x1, x2, method='occlusion', window=18, stride=2)"
    )
    assert explain_call("pixel_invariance", {}) == "cle.explain(model, x1, method='pixel_invariance')"


def _explorer(model, image, **options):
    return explorer(
        {"noise": image, "flat": torch.full((1, 3, 40, 40), 0.5)},
        {"tiny": lambda: model},
        methods=["gradcam", "interaction_cam", "occlusion"],
        size=SIZE,
        **options,
    )


def test_explorer_opens_on_the_given_method_with_explains_parameters(model, image):
    app = _explorer(model, image, method="occlusion")
    assert app.method_box.value == "occlusion" and app.params() == initial_params("occlusion", SIZE)
    direct = cle.explain(model, pure_view(image, SIZE)[0], strength_view(image, SIZE, 0, 1.0), "occlusion")
    assert torch.equal(app.last.map1, direct.map1) and torch.equal(app.last.map2, direct.map2)
    assert app.status.value.startswith("done") and "window=" in app.call.value
    with pytest.raises(ValueError, match="start method"):
        _explorer(model, image, method="pixel_invariance")
    plt.close("all")


def test_explorer_parameters_follow_the_method_and_the_size(model, image):
    app = _explorer(model, image, method="gradcam")
    assert list(app.param_widgets) == ["weighting"] and app.params_box.children == (app.param_widgets["weighting"],)
    app.method_box.value = "occlusion"
    assert app.params() == initial_params("occlusion", SIZE)
    app.param_widgets["window"].value = 3
    app.size_box.value = 48  # every length restarts at explain's value for the new size
    assert app.params() == initial_params("occlusion", 48) and app.last.map1.shape[-1] > 1
    assert torch.equal(
        app.last.map1, cle.explain(model, pure_view(image, 48)[0], strength_view(image, 48, 0, 1.0), "occlusion").map1
    )
    plt.close("all")


def test_every_explorer_control_has_help(model, image):
    app = _explorer(model, image, method="interaction_cam")
    controls = [
        app.image_box,
        app.path_box,
        app.seed_box,
        app.strength_box,
        app.size_box,
        app.model_box,
        app.method_box,
        *app.params_box.children,
    ]
    assert all(c.tooltip and f'title="{html.escape(c.tooltip)}"' in c.description for c in controls)
    assert set(CONTROL_HELP) == {"image", "path", "seed", "strength", "size", "model", "method"}
    assert all(c.layout.width for c in app.params_box.children) and app.params_box.layout.flex_flow == "row wrap"
    plt.close("all")


def test_strength_zero_disables_the_seed_and_makes_x2_equal_x1(model, image):
    app = _explorer(model, image)
    app.strength_box.value = 0.0
    assert app.seed_box.disabled and app.last.similarity == pytest.approx(1.0, abs=1e-5)
    app.strength_box.value = 0.5
    assert not app.seed_box.disabled
    plt.close("all")


def test_a_typed_path_becomes_the_selected_image(model, image, tmp_path):
    from PIL import Image

    Image.fromarray((torch.rand(30, 30, 3) * 255).to(torch.uint8).numpy()).save(tmp_path / "mine.png")
    app = _explorer(model, image)
    app.path_box.value = str(tmp_path / "mine.png")
    label = f"file: {tmp_path / 'mine.png'}"
    assert app.image_box.value == label and app.path_box.value == "" and label in app.image_box.options
    shown = app.last
    app.image_box.value = "flat"  # the dropdown alone decides the image: no path box left to override it
    assert app.last is not shown and app.image_box.value == "flat"
    plt.close("all")


def test_explorer_reports_errors_instead_of_raising(model, image, capsys):
    app = _explorer(model, image)
    app.path_box.value = "/no/such/image.png"
    captured = capsys.readouterr().out + "".join(str(o) for o in app.output.outputs)
    assert "could not load" in captured and "no image file" in captured
    assert app.image_box.value == "noise" and "not loaded" in app.status.value
    app.method_box.value = "occlusion"
    app.param_widgets["window"].value = 999  # larger than the image: explain's error is shown, not raised
    captured = capsys.readouterr().out + "".join(str(o) for o in app.output.outputs)
    assert "could not render" in captured and "failed" in app.status.value
    plt.close("all")


def test_explorer_rejects_empty_choices(model):
    with pytest.raises(ValueError, match="at least one image"):
        explorer({}, {"tiny": lambda: model})


EMBEDDED = ["embedded-simclr", "embedded-barlow-twins", "embedded-simsiam", "embedded-supervised"]


@pytest.mark.slow
@pytest.mark.parametrize("name", EMBEDDED)
def test_explorer_first_map_is_explain_at_default_parameters(name):
    """At 64 px the explorer's first occlusion, context-agnostic occlusion and Pixel Invariance maps are
    `explain`'s at its defaults (window 18, stride 2, surrogate side 18), and they are not flat."""
    from cl_explain.widgets import demo_images

    model = cle.load_model(name)
    images = demo_images(64)
    first = next(iter(images))
    x1, x2 = pure_view(images[first], 64)[0], strength_view(images[first], 64, 0, 1.0)
    for method in ("occlusion", "context_agnostic_occlusion", "pixel_invariance"):
        app = explorer(images, {name: lambda: model}, size=64, method=method)
        direct = cle.explain(model, x1, x2 if method != "pixel_invariance" else None, method)
        assert torch.equal(app.last.map1, direct.map1), f"{name} {method}: the explorer's map is not explain's"
        assert float(direct.map1.std()) > 1e-3 * float(direct.map1.abs().max()), f"{name} {method}: flat map"
        plt.close("all")


def test_strength_sweep_is_one_at_strength_zero_and_falls_with_strength():
    import cl_explain as cle
    from cl_explain.widgets import demo_images, strength_sweep

    model = cle.load_model("embedded-simclr")
    images = demo_images(32, n_scenes=2, photos=False)
    rows = strength_sweep(model, images, 32, strengths=(0.0, 1.0), seeds=3)
    assert len(rows) == 2 * 2 * 3
    assert rows[rows.strength == 0.0].similarity.between(1 - 1e-5, 1 + 1e-5).all()
    mean = rows.groupby("strength").similarity.mean()
    assert mean[1.0] < mean[0.0]
