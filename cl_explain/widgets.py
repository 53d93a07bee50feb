"""The interactive pair explorer (SPEC section 6, item 10).

`render_pair` is a pure function (inputs -> matplotlib figure; nothing displayed, nothing cached) that
builds the pair, explains it and draws both views, both maps and the similarity. `explorer` wires
ipywidgets controls to it; exceptions inside the callback are shown in the output area (ipywidgets
would otherwise swallow them). Notebooks follow the widget cell with a static call of `render_pair`.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Callable, Mapping

import torch
from torchvision.transforms.v2 import functional as TF

from .data.transforms import SIMCLR_RECIPE, _coin, as_batch, photometric, pure_view, sample_crop
from .explainers import explain, get_method, list_methods
from .models.similarity import SimilarityModel
from .utils import cpu_generator

#: Parameters every method has that the explorer does not expose (they do not change the map's meaning).
HIDDEN_PARAMS = ("batch_size", "precision", "blur")


def strength_view(image: torch.Tensor, size: int, seed: int, strength: float = 1.0) -> torch.Tensor:
    """The SimCLR augmented view with every knob scaled by `strength` in [0, 1].

    strength 1 is the recipe of SPEC section 2 (the same draws as `simclr_view` for the same seed);
    strength 0 keeps the whole image (resized to size x size) unflipped and unjittered. In between,
    the smallest crop area is 1 - strength * 0.92, jitter factors and the flip, grayscale and blur
    probabilities are multiplied by `strength`.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    image = as_batch(image)
    recipe = SIMCLR_RECIPE
    generator = cpu_generator(int(seed))
    low = 1 - strength * (1 - recipe["crop_scale"][0])
    crop = sample_crop(image.shape[-2], image.shape[-1], generator, (low, 1.0), recipe["crop_ratio"])
    view = TF.resized_crop(image, *crop, [size, size], antialias=True).clamp(0, 1)
    if _coin(generator, recipe["flip_p"] * strength):
        view = view.flip(-1)
    jitter = tuple(strength * v for v in recipe["jitter"])
    view = photometric(view, generator, size, jitter, recipe["jitter_p"] * strength,
                       recipe["gray_p"] * strength, recipe["blur_p"] * strength)
    return view.clamp(0, 1)


def demo_images(size: int = 64, n_scenes: int = 3, photos: bool = True) -> dict[str, torch.Tensor]:
    """Images the explorer offers: the bundled demo photos and the first `n_scenes` held-out scenes."""
    from .data.photos import list_photos, load_photo
    from .data.scenes import render_scene

    images = {f"photo: {name}": load_photo(name) for name in list_photos()} if photos else {}
    for index in range(n_scenes):
        scene = render_scene(index, "test", size=size)
        images[f"scene {index}: {scene.class_name}"] = scene.image[None]
    return images


def method_controls(method: str) -> dict[str, Any]:
    """The explorer's parameters of `method` with their defaults (common knobs left out)."""
    spec = get_method(method)
    return {k: v for k, v in spec.defaults.items() if k not in HIDDEN_PARAMS}


def render_pair(
    model: SimilarityModel,
    image: torch.Tensor,
    method: str = "interaction_cam",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    strength: float = 1.0,
    size: int = 64,
    title: str | None = None,
):
    """Pure view and `strength_view` of `image`, explained by `method`: a 2 x 2 figure (views, maps).

    The title gives the model, the method and its parameters, and S(x1, x2) (no timings: the figure is
    deterministic; the time is in `explanation.seconds`). Methods that
    explain one image (averaged_transforms, pixel_invariance) show map 1 only. Returns (figure, explanation).
    """
    from .viz import pair_figure

    x1, _ = pure_view(image, size)
    x2 = strength_view(image, size, seed, strength)
    params = dict(params or {})
    pairwise = get_method(method).needs_pair
    explanation = explain(model, x1, x2 if pairwise else None, method, **params)
    similarity = model.score(x1, x2)
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    heading = title or (f"{model.name} | {method}{f' ({shown})' if shown else ''}\n"
                        f"S(x1, x2) = {similarity:.3f}"
                        + ("" if pairwise else " | explains x1 alone"))
    # A single-image method's second map (if any) belongs to its own transformed copy, not to x2.
    shown_explanation = explanation if pairwise else replace(explanation, map2=None)
    return pair_figure(x1, x2, shown_explanation, title=heading), explanation


def _widget_for(name: str, default: Any, choices: tuple | None):
    import ipywidgets as w

    style = {"description_width": "initial"}
    if choices:
        return w.Dropdown(options=list(choices), value=default, description=name, style=style)
    if isinstance(default, bool):
        return w.Checkbox(value=default, description=name, style=style)
    if isinstance(default, int):
        return w.IntText(value=default, description=name, style=style)
    if isinstance(default, float):
        return w.FloatText(value=default, description=name, style=style)
    return None  # e.g. None defaults ("use the paper value"): not exposed


def explorer(
    images: Mapping[str, torch.Tensor],
    models: Mapping[str, Callable[[], SimilarityModel]],
    methods: list[str] | None = None,
    size: int = 64,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
):
    """An ipywidgets explorer: image (named choices or a file path), seed, strength, model, method, params.

    `models` maps names to zero-argument loaders (called once, then cached). `overrides` sets starting
    values of method parameters (e.g. fewer samples for a fast first render). Every change re-renders
    through `render_pair`; an error is printed in the output area instead of being swallowed.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    from .data import load_image

    if not images or not models:
        raise ValueError("explorer needs at least one image and one model")
    methods = list(methods or list_methods())
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    loaded: dict[str, SimilarityModel] = {}
    style = {"description_width": "initial"}
    image_box = w.Dropdown(options=list(images), description="image", style=style)
    path_box = w.Text(value="", placeholder="or a path to an image file", description="path", style=style,
                      continuous_update=False)
    seed_box = w.IntSlider(value=0, min=0, max=99, description="augmentation seed", style=style)
    strength_box = w.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.05, description="strength", style=style)
    model_box = w.Dropdown(options=list(models), description="model", style=style)
    method_box = w.Dropdown(options=methods, value=methods[0], description="method", style=style)
    params_box = w.HBox()
    output = w.Output()
    param_widgets: dict[str, Any] = {}

    def rebuild_params() -> None:
        spec = get_method(method_box.value)
        param_widgets.clear()
        for name, default in method_controls(method_box.value).items():
            value = overrides.get(method_box.value, {}).get(name, default)
            widget = _widget_for(name, value, spec.choices.get(name))
            if widget is not None:
                widget.observe(refresh, names="value")
                param_widgets[name] = widget
        params_box.children = tuple(param_widgets.values())

    def current_image() -> torch.Tensor:
        path = path_box.value.strip()
        return load_image(os.path.expanduser(path)) if path else images[image_box.value]

    def refresh(_change=None) -> None:
        output.clear_output(wait=True)
        with output:
            try:
                name = model_box.value
                if name not in loaded:
                    loaded[name] = models[name]()
                params = {k: widget.value for k, widget in param_widgets.items()}
                figure, _ = render_pair(loaded[name], current_image(), method_box.value, params,
                                        seed_box.value, strength_box.value, size)
                display(figure)
                plt.close(figure)
            except Exception as error:  # shown to the user; ipywidgets would swallow it
                print(f"could not render: {type(error).__name__}: {error}")

    def method_changed(_change) -> None:
        rebuild_params()
        refresh()

    rebuild_params()
    for control in (image_box, path_box, seed_box, strength_box, model_box):
        control.observe(refresh, names="value")
    method_box.observe(method_changed, names="value")
    refresh()
    return w.VBox([w.HBox([image_box, path_box]), w.HBox([seed_box, strength_box]),
                   w.HBox([model_box, method_box]), params_box, output])
