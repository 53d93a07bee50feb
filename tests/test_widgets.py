"""The pair explorer: the pure render function and the augmentation-strength view, tested without a kernel."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import cl_explain as cle
from cl_explain.data import make_pair, pure_view
from cl_explain.exercises import tiny_model
from cl_explain.widgets import explorer, method_controls, render_pair, strength_view

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


def test_zero_strength_is_the_whole_image_resized(image):
    expected = TF.resize(image, [SIZE, SIZE], antialias=True).clamp(0, 1)
    for seed in range(3):
        assert torch.allclose(strength_view(image, SIZE, seed, 0.0), expected)


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
    assert len(fig.axes) == 4 and all(ax.axison is False for ax in fig.axes)
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


def test_method_controls_hide_common_knobs():
    controls = method_controls("interaction_cam")
    assert controls == {"reduction": "mean", "grad_interaction": False}
    assert "batch_size" not in method_controls("occlusion")


def test_explorer_builds_without_a_kernel_and_never_raises_in_callbacks(model, image, capsys):
    widget = explorer({"noise": image}, {"tiny": lambda: model}, methods=["gradcam", "interaction_cam"], size=SIZE)
    (image_box, path_box), _, (model_box, method_box), params_box, output = (
        widget.children[0].children, widget.children[1], widget.children[2].children, widget.children[3], widget.children[4])
    assert [w.description for w in params_box.children] == ["weighting"]
    method_box.value = "interaction_cam"
    assert [w.description for w in params_box.children] == ["reduction", "grad_interaction"]
    path_box.value = "/no/such/image.png"  # a refresh with a missing file: the error is reported, not raised
    captured = capsys.readouterr().out + "".join(str(o) for o in output.outputs)
    assert "could not render" in captured and "no image file" in captured
    plt.close("all")


def test_explorer_rejects_empty_choices(model):
    with pytest.raises(ValueError, match="at least one image"):
        explorer({}, {"tiny": lambda: model})
