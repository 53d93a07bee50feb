"""The interactive pair explorer (pick a pair, a method and its parameters; see the maps).

The logic is in pure functions tested without a kernel: `initial_params` (the parameter values
`explain` would use at an image side, which the explorer starts from), `strength_view` (the
augmented view at a given strength) and `render_pair` (inputs -> matplotlib figure and explanation;
nothing displayed, nothing cached). `PairExplorer` only wires ipywidgets controls to them; an
exception inside a callback is shown in the widget (ipywidgets would otherwise swallow it).
Notebooks follow the widget cell with a static call of `render_pair`.
"""

from __future__ import annotations

import html
import os
import textwrap
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torchvision.transforms.v2 import functional as TF

from .data.transforms import (
    SIMCLR_RECIPE,
    _coin,
    as_batch,
    photometric,
    pure_crop_box,
    pure_view,
    sample_crop,
)
from .explainers import explain, get_method, list_methods
from .explainers.base import resolve_params
from .models.similarity import SimilarityModel
from .utils import cpu_generator

if TYPE_CHECKING:
    import pandas as pd

#: Parameters every method has that the explorer does not expose (they do not change the map's meaning).
HIDDEN_PARAMS = ("batch_size", "precision", "blur")

#: Tooltip of each method parameter the explorer shows (names are those of `explain`).
PARAM_HELP = {
    "window": "side in pixels of the square hidden at each position",
    "stride": "step in pixels between two window positions (smaller: finer map, slower)",
    "weighting": "elementwise: sum over channels of F * ReLU(G) (paper); channel: Grad-CAM's channel weights",
    "reduction": "how each feature map is pooled into the shared channel weights: mean, max or attention",
    "grad_interaction": "use the interaction of the two images' gradients (IntGradMax) instead of each gradient",
    "guided": "guided backpropagation: only positive gradients pass back through ReLUs",
    "samples": "noisy copies (SmoothGrad) or augmented copies (Pixel Invariance) averaged; more is smoother and slower",
    "noise_rule": "noise level: paper = 0.15 / (max - min), canonical = 0.15 * (max - min) of x1's values",
    "seed": "seeds this method's own random draws",
    "transform": "augmentation family T: the map averages gradients along the path from x1 to T(x1)",
    "step": "spacing of that path (0.1: ten images)",
    "noise": "add SmoothGrad noise to the images on the path",
    "nmf": "fit the surrogate to NMF components of the embeddings instead of the similarity",
    "epochs": "training epochs of the linear surrogate",
    "lr": "learning rate of the linear surrogate",
    "l1": "L1 penalty on the surrogate's weights (higher: sparser map)",
    "surrogate_side": "side in pixels of the images the linear surrogate sees (the map's resolution)",
    "nmf_components": "number of NMF components (with nmf on)",
    "erasures": "number of random rectangle pairs erased",
    "variant": "conditional: remove the window's patch tokens; context_agnostic: the window's own contribution",
    "head_fusion": "how each block's attention heads are combined before rolling out: mean, max or min",
}

#: Tooltip of each of the explorer's own controls.
CONTROL_HELP = {
    "image": "the image both views are made from",
    "path": "type a path to an image file and press Enter: it is added to the image list and selected",
    "seed": "seeds the random augmentation of x2 (no effect at strength 0)",
    "strength": "0: x2 is x1's plain view itself; 1: the SimCLR augmentation recipe; in between, x2's crop "
    "moves from x1's region toward a random crop and the colour changes grow",
    "size": "side in pixels of both views; parameters measured in pixels restart at explain's defaults for it",
    "model": "the model whose similarity S(x1, x2) is explained",
    "method": "the explanation method (hover over its parameters for help)",
}


def strength_view(image: torch.Tensor, size: int, seed: int, strength: float = 1.0) -> torch.Tensor:
    """The augmented view x2 at `strength` in [0, 1], seeded.

    strength 0 is x1's pure view itself (`pure_view`; the seed has no effect); strength 1 is the
    SimCLR recipe the paper uses (the same draws as `simclr_view` for the same seed). In between,
    the crop box moves linearly from the pure view's region to the sampled SimCLR crop, and the
    jitter factors and the flip, jitter, grayscale and blur probabilities are multiplied by `strength`.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    image = as_batch(image)
    if strength == 0:
        return pure_view(image, size)[0]
    recipe = SIMCLR_RECIPE
    generator = cpu_generator(int(seed))
    height, width = image.shape[-2:]
    sampled = sample_crop(height, width, generator, recipe["crop_scale"], recipe["crop_ratio"])
    top, left, box_h, box_w = (
        int(round(p + strength * (s - p))) for p, s in zip(pure_crop_box(height, width, size), sampled)
    )
    box_h, box_w = max(1, min(box_h, height - top)), max(1, min(box_w, width - left))
    view = TF.resized_crop(image, top, left, box_h, box_w, [size, size], antialias=True).clamp(0, 1)
    if _coin(generator, recipe["flip_p"] * strength):
        view = view.flip(-1)
    jitter = tuple(strength * v for v in recipe["jitter"])
    view = photometric(
        view,
        generator,
        size,
        jitter,
        recipe["jitter_p"] * strength,
        recipe["gray_p"] * strength,
        recipe["blur_p"] * strength,
    )
    return view.clamp(0, 1)


def strength_sweep(
    model: SimilarityModel,
    images: Mapping[str, torch.Tensor],
    size: int,
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
    seeds: int = 4,
) -> "pd.DataFrame":
    """S(pure view, strength view) of every image at every strength for seeds 0..seeds-1.

    Tidy rows (image, strength, seed, similarity); the mean per (image, strength) is
    `rows.groupby(["image", "strength"]).similarity.mean()`. At strength 0 the second view is the
    pure view itself, so S = 1 up to rounding.
    """
    import pandas as pd

    rows = []
    for name, image in images.items():
        x1, _ = pure_view(image, size)
        for strength in strengths:
            for seed in range(seeds):
                rows.append(
                    {
                        "image": name,
                        "strength": strength,
                        "seed": seed,
                        "similarity": model.score(x1, strength_view(image, size, seed, strength)),
                    }
                )
    return pd.DataFrame(rows)


def demo_images(size: int = 96, n_scenes: int = 3, photos: bool = True) -> dict[str, torch.Tensor]:
    """Images the explorer offers: the bundled demo photos and the first `n_scenes` held-out scenes."""
    from .data.photos import list_photos, load_photo
    from .data.scenes import render_scene

    images = {f"photo: {name}": load_photo(name) for name in list_photos()} if photos else {}
    for index in range(n_scenes):
        scene = render_scene(index, "test", size=size)
        images[f"scene {index}: {scene.class_name}"] = scene.image[None]
    return images


def initial_params(method: str, side: int, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The explorer's starting parameter values of `method` for views of `side` pixels.

    These are the values `explain` uses for an image of that side when it is given no parameters
    (defaults stated at 224 px are scaled), with `overrides` on top. Left out: the common knobs
    (batch size, precision, display blur) and values no control can hold (None = "the paper's
    value", tuples); `explain` then uses its own default for them.
    """
    spec = get_method(method)
    overrides = dict(overrides or {})
    resolved = resolve_params(spec, side, overrides)
    return {
        name: value
        for name, value in resolved.items()
        if (name in spec.defaults or name in overrides)
        and name not in HIDDEN_PARAMS
        and isinstance(value, (bool, int, float, str))
    }


def explain_call(method: str, params: Mapping[str, Any]) -> str:
    """The `explain` call that computes the same map, as a reader would type it."""
    images = "x1, x2" if get_method(method).needs_pair else "x1"
    shown = "".join(f", {k}={v!r}" for k, v in params.items())
    return f"cle.explain(model, {images}, method={method!r}{shown})"


def render_pair(
    model: SimilarityModel,
    image: torch.Tensor,
    method: str = "interaction_cam",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    strength: float = 1.0,
    size: int = 96,
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
    heading = title or (
        textwrap.fill(f"{model.name} | {method}{f' ({shown})' if shown else ''}", 64)
        + f"\nS(x1, x2) = {similarity:.3f}"
        + ("" if pairwise else " | explains x1 alone")
    )
    # A single-image method's second map (if any) belongs to its own transformed copy, not to x2.
    shown_explanation = explanation if pairwise else replace(explanation, map2=None)
    return pair_figure(x1, x2, shown_explanation, title=heading), explanation


def _described(name: str, help_text: str) -> dict[str, Any]:
    """Label and hover text of a control. The text is also put on the label itself, because ipywidgets 8
    shows `tooltip` on a dropdown, checkbox or text box only when it has no description."""
    return {
        "description": f'<span title="{html.escape(help_text)}">{html.escape(name)}</span>',
        "description_allow_html": True,
        "tooltip": help_text,
        "style": {"description_width": "initial"},
    }


def _control(name: str, value: Any, choices: tuple | None):
    """An ipywidgets control for one method parameter, with its hover text; sized to wrap in a row."""
    import ipywidgets as w

    common = _described(name, PARAM_HELP.get(name, name))
    if choices:
        return w.Dropdown(options=list(choices), value=value, layout=w.Layout(width="210px"), **common)
    if isinstance(value, bool):
        return w.Checkbox(value=value, indent=False, layout=w.Layout(width="auto", margin="2px 18px 2px 0"), **common)
    if isinstance(value, int):
        return w.IntText(value=value, layout=w.Layout(width="170px"), **common)
    return w.FloatText(value=value, layout=w.Layout(width="170px"), **common)


def _figure_output(fig, dpi: int = 120) -> dict[str, Any]:
    """`fig` as one display_data output (the PNG `show_and_save` shows), then closed."""
    import base64

    import matplotlib.pyplot as plt

    from .utils import figure_bytes

    try:
        png = figure_bytes(fig, "png", dpi)
    finally:
        plt.close(fig)
    data = {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": "<Figure>"}
    return {"output_type": "display_data", "data": data, "metadata": {}}


def _text_output(text: str) -> dict[str, Any]:
    """`text` as one stdout stream output."""
    return {"output_type": "stream", "name": "stdout", "text": text.rstrip("\n") + "\n"}


class PairExplorer:
    """ipywidgets controls (image or file, seed, strength, side, model, method, its parameters) and the map.

    `models` maps names to zero-argument loaders (each called once, then cached). `overrides`
    (method -> {parameter: value}) changes starting values, e.g. fewer samples for a fast first
    render. Every change re-renders through `render_pair` while a status line says "computing";
    errors are shown in the widget. They are written into the Output widget's `outputs` state, not
    captured with `with self.output:`, which under papermill sends a comm_msg that can hide the cell's
    execute_reply from it (the run then stalls). `widget` is the ipywidgets box (it displays itself),
    `last` the most recent explanation.
    """

    def __init__(
        self,
        images: Mapping[str, torch.Tensor],
        models: Mapping[str, Callable[[], SimilarityModel]],
        methods: list[str] | None = None,
        size: int = 96,
        method: str = "interaction_cam",
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        import ipywidgets as w

        if not images or not models:
            raise ValueError("explorer needs at least one image and one model")
        methods = list(methods or list_methods())
        if method not in methods:
            raise ValueError(f"start method {method!r} is not among the explorer's methods {methods}")
        self.images, self.models = dict(images), dict(models)
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self.loaded: dict[str, SimilarityModel] = {}
        self.last = None
        self.param_widgets: dict[str, Any] = {}

        def tip(name: str) -> dict[str, Any]:
            return _described(name, CONTROL_HELP[name])

        self.image_box = w.Dropdown(options=list(self.images), layout=w.Layout(width="300px"), **tip("image"))
        self.path_box = w.Text(
            value="",
            placeholder="or type a path to an image file + Enter",
            continuous_update=False,
            layout=w.Layout(width="360px"),
            **tip("path"),
        )
        self.seed_box = w.IntSlider(value=0, min=0, max=99, continuous_update=False, **tip("seed"))
        self.strength_box = w.FloatSlider(
            value=1.0, min=0.0, max=1.0, step=0.05, continuous_update=False, **tip("strength")
        )
        self.size_box = w.BoundedIntText(
            value=int(size), min=16, max=512, layout=w.Layout(width="150px"), **tip("size")
        )
        self.model_box = w.Dropdown(options=list(self.models), layout=w.Layout(width="300px"), **tip("model"))
        self.method_box = w.Dropdown(options=methods, value=method, layout=w.Layout(width="300px"), **tip("method"))
        self.status = w.HTML(value="")
        self.params_box = w.HBox(layout=w.Layout(flex_flow="row wrap", align_items="center"))
        self.call = w.HTML(value="")
        self.output = w.Output()
        for control, name in (
            (self.image_box, "image"),
            (self.path_box, "path"),
            (self.method_box, "method"),
            (self.model_box, "model"),
            (self.status, "status"),
            (self.output, "map"),
        ):
            control.add_class(f"cle-{name}")  # stable hooks for the browser test
        self.widget = w.VBox(
            [
                w.HBox([self.image_box, self.path_box]),
                w.HBox([self.seed_box, self.strength_box, self.size_box]),
                w.HBox([self.model_box, self.method_box, self.status], layout=w.Layout(align_items="center")),
                self.params_box,
                self.call,
                self.output,
            ]
        )
        self.widget.add_class("cle-explorer")
        self._rebuild_params()
        for control in (self.image_box, self.seed_box, self.model_box):
            control.observe(self.refresh, names="value")
        self.path_box.observe(self._path_entered, names="value")
        self.strength_box.observe(self._strength_changed, names="value")
        self.size_box.observe(self._params_invalidated, names="value")
        self.method_box.observe(self._params_invalidated, names="value")
        self.refresh()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ state

    def params(self) -> dict[str, Any]:
        """The current values of the method's parameter controls."""
        return {name: control.value for name, control in self.param_widgets.items()}

    def _rebuild_params(self) -> None:
        method, side = self.method_box.value, self.size_box.value
        spec = get_method(method)
        self.param_widgets = {}
        for name, value in initial_params(method, side, self.overrides.get(method)).items():
            control = _control(name, value, spec.choices.get(name))
            control.add_class(f"cle-param-{name}")
            control.observe(self.refresh, names="value")
            self.param_widgets[name] = control
        self.params_box.children = tuple(self.param_widgets.values())

    def _show_call(self) -> None:
        spec = get_method(self.method_box.value)
        self.call.value = (
            f"<small>{html.escape(spec.description)}<br>The same map in code: "
            f"<code>{html.escape(explain_call(spec.name, self.params()))}</code></small>"
        )

    # -------------------------------------------------------------- callbacks

    def refresh(self, _change=None) -> None:
        """Recompute and show the map for the current selection (errors are shown, never raised)."""
        method, name = self.method_box.value, self.model_box.value
        self.status.value = f"<b>computing {html.escape(method)} ...</b>"
        self._show_call()
        start = time.perf_counter()
        try:
            if name not in self.loaded:
                self.loaded[name] = self.models[name]()
            figure, self.last = render_pair(
                self.loaded[name],
                self.images[self.image_box.value],
                method,
                self.params(),
                self.seed_box.value,
                self.strength_box.value,
                self.size_box.value,
            )
            self.output.outputs = (_figure_output(figure),)
            self.status.value = f"done in {time.perf_counter() - start:.1f} s"
        except Exception as error:  # shown to the user; ipywidgets would swallow it
            self.output.outputs = (_text_output(f"could not render: {type(error).__name__}: {error}"),)
            self.status.value = "<b>failed</b> (see below)"

    def _params_invalidated(self, _change) -> None:
        self._rebuild_params()
        self.refresh()

    def _strength_changed(self, change) -> None:
        self.seed_box.disabled = change["new"] == 0
        self.refresh()

    def _path_entered(self, change) -> None:
        from .data import load_image

        path = change["new"].strip()
        if not path:
            return
        label = f"file: {path}"
        try:
            self.images[label] = load_image(os.path.expanduser(path))
        except Exception as error:
            self.output.outputs = (_text_output(f"could not load {path!r}: {type(error).__name__}: {error}"),)
            self.status.value = "<b>image not loaded</b> (see below)"
            return
        self.image_box.unobserve(self.refresh, names="value")
        try:
            self.image_box.options = list(self.images)
            self.image_box.value = label
        finally:
            self.image_box.observe(self.refresh, names="value")
        self.path_box.value = ""  # the list now holds the file: one control says which image is shown
        self.refresh()


def explorer(
    images: Mapping[str, torch.Tensor],
    models: Mapping[str, Callable[[], SimilarityModel]],
    methods: list[str] | None = None,
    size: int = 96,
    method: str = "interaction_cam",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> PairExplorer:
    """Build a `PairExplorer` (it shows itself as the last expression of a cell)."""
    return PairExplorer(images, models, methods, size, method, overrides)
