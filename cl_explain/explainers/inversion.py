"""What a backbone keeps of an image: feature inversion (self-supervised vs supervised) and feature visualisation.

Both optimise an image in [0, 1] pixel space through the model's own preprocessing (the original
inversion code fed unnormalised pixels to a normalised network; we do not). Gradients are
taken with respect to the image only; the model is never modified.

* Feature inversion: starting from noise, find an image whose backbone features at a chosen depth
  match those of a given image (relative squared error), with a penalty on large pixel values and a
  total-variation smoothness penalty; done for a self-supervised and a supervised backbone of the
  same architecture, what each inversion recovers shows what that backbone keeps.
* Feature visualisation: gradient ascent on an image, coarse to fine over octaves, either towards
  a high similarity with a target image's features or towards large features; the change from
  the starting image is what the backbone responds to.

Source: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive
Learning", IEEE TIP 2023 (arXiv 2206.09753), its analysis of what contrastive backbones learn by
feature inversion and feature visualisation. Feature inversion: Mahendran and Vedaldi,
"Understanding Deep Image Representations by Inverting Them", CVPR 2015.
"""

from __future__ import annotations

import copy

import math
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F

from ..models.backbones import StagedBackbone
from ..models.similarity import SimilarityModel, cosine
from ..utils import check_image, cpu_generator

#: Depths of the paper's inversion figure (rows).
INVERSION_DEPTHS = ("stem", "layer1", "layer2")
OBJECTIVES = ("score", "feature")
#: Optimisers of the feature inversion: Adam with a cosine schedule (default) or the paper's SGD.
INVERSION_OPTIMIZERS = ("adam", "paper-sgd")
#: Default learning rate of each optimiser (Adam works in pixel units; the paper's SGD needs 1e4).
DEFAULT_INVERSION_LR = {"adam": 0.05, "paper-sgd": 1e4}
#: The paper's total-variation weight (on the sum over pixels).
PAPER_TV_WEIGHT = 1e-8
#: Adam's total-variation weight times the number of pixel values: 0.5 gives the mean TV five times
#: the weight of the relative feature error (feature_weight 0.1); measured on the embedded models,
#: it brings the pixel correlation of stem inversions from about 0.15 to 0.6-0.8.
ADAM_TV_PER_ELEMENT = 0.5


def feature_map(model: SimilarityModel, x: torch.Tensor, depth: str | None = None) -> torch.Tensor:
    """Phi(x): the backbone's spatial map after stage `depth` (None: the last stage) of images in [0, 1]."""
    if depth is None:
        return model.features(x)
    if not isinstance(model.backbone, StagedBackbone):
        raise TypeError(
            f"cutting {model.name!r} at depth {depth!r} needs a StagedBackbone (named stages), got "
            f"{type(model.backbone).__name__}; build it with StagedBackbone.from_torchvision_resnet or pass depth=None"
        )
    return model.backbone(model.preprocess(x), until=depth)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """TV with exponent 2: sum over pixels of (right difference)^2 + (down difference)^2."""
    down = x[..., 1:, :-1] - x[..., :-1, :-1]
    right = x[..., :-1, 1:] - x[..., :-1, :-1]
    return (down.pow(2) + right.pow(2)).sum()


def inversion_loss(
    features: torch.Tensor,
    target: torch.Tensor,
    x: torch.Tensor,
    feature_weight: float = 0.1,
    norm_weight: float = 1e-7,
    norm_power: int = 6,
    tv_weight: float = PAPER_TV_WEIGHT,
) -> torch.Tensor:
    """M10 loss: fw*||Phi(x)-Phi(x0)||^2/||Phi(x0)||^2 + nw*sum(x^p) + tw*TV2(x)."""
    relative = (features - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)
    return feature_weight * relative + norm_weight * x.pow(norm_power).sum() + tv_weight * total_variation(x)


def invert_features(
    backbone_model: SimilarityModel,
    image: torch.Tensor,
    depth: str,
    iterations: int = 201,
    optimizer: str = "adam",
    lr: float | None = None,
    momentum: float = 0.9,
    lr_decay_every: int | None = None,
    seed: int = 0,
    feature_weight: float = 0.1,
    norm_weight: float = 1e-7,
    norm_power: int = 6,
    tv_weight: float | None = None,
) -> torch.Tensor:
    """Feature inversion (M10): an image whose features at `depth` match those of `image`.

    x descends `inversion_loss` from a seeded start and is clipped to [0, 1] after every step.
    iterations=0 returns the start. Returns a 1x3xHxW image.

    optimizer "adam" (default, the same for every model): Adam at `lr` (default 0.05) decayed to 0
    along a cosine, from mid-grey 0.5 + 0.05*randn, with a total-variation weight (default
    `ADAM_TV_PER_ELEMENT` / number of pixel values) that keeps the smoothness term comparable to the
    feature term at any image size. Why not the paper's 1e-8: the ReLUs make the feature loss flat for
    every unit that is off in x but on in the original, so plain descent stalls at a relative feature
    error of 0.15-0.3 whatever the optimiser (L-BFGS too) and fills the image with the high
    frequencies a stride-2 stem cannot see; the smoothness prior picks the natural image among the
    images that match equally well, which is what makes a reconstruction recognisable.

    "paper-sgd": the authors' setting: start 0.1*randn clipped, SGD with momentum at lr 1e4, TV weight
    1e-8, and `lr_decay_every=40` dividing the rate by 10 every 40 iterations (their self-supervised
    setting; None for their supervised one). It often does not converge, and then the result depends
    on float rounding (another CPU kernel gives another image).
    """
    check_image(image, "image")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if optimizer not in INVERSION_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {INVERSION_OPTIMIZERS}, got {optimizer!r}")
    if optimizer == "adam" and lr_decay_every is not None:
        raise ValueError(
            "lr_decay_every is the paper's SGD schedule; pass optimizer='paper-sgd' or drop it "
            "(Adam follows a cosine schedule)"
        )
    lr = DEFAULT_INVERSION_LR[optimizer] if lr is None else float(lr)
    if tv_weight is None:
        tv_weight = ADAM_TV_PER_ELEMENT / image.numel() if optimizer == "adam" else PAPER_TV_WEIGHT
    model = backbone_model
    image = image.to(model.device)
    with torch.no_grad():
        target = feature_map(model, image, depth)
    noise = torch.randn(image.shape, generator=cpu_generator(seed)).to(image)
    x = (0.5 + 0.05 * noise if optimizer == "adam" else 0.1 * noise).clamp(0, 1)

    def gradient(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = inversion_loss(
                feature_map(model, x, depth), target, x, feature_weight, norm_weight, norm_power, tv_weight
            )
            return torch.autograd.grad(loss, x)[0]

    if optimizer == "adam":
        return _adam_inversion(x, gradient, iterations, lr)
    velocity = torch.zeros_like(x)
    for iteration in range(iterations):
        if lr_decay_every and iteration > 0 and iteration % lr_decay_every == 0:
            lr = lr / 10
        velocity = momentum * velocity + gradient(x)
        x = (x - lr * velocity).clamp(0, 1)
    return x


def _adam_inversion(x: torch.Tensor, gradient, iterations: int, lr: float) -> torch.Tensor:
    """Adam (torch.optim.Adam, default betas) on x with a cosine-decayed rate, clipping x to [0, 1] each step."""
    x = x.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(iterations, 1))
    for _ in range(iterations):
        x.grad = gradient(x)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()


def invert_features_grid(
    models: Mapping[str, SimilarityModel],
    image: torch.Tensor,
    depths: Iterable[str] = INVERSION_DEPTHS,
    lr_decay_every: Mapping[str, int | None] | None = None,
    **options,
) -> dict[str, dict[str, torch.Tensor]]:
    """Inversions of `image` for every depth and model: {depth: {model name: image}} (the M10 figure).

    Every model gets the same optimiser and schedule unless `lr_decay_every` maps model names to the
    paper's SGD decay period (with optimizer="paper-sgd"; paper: {ssl_name: 40}, models not named
    get none); other options go to `invert_features`.
    """
    decay = dict(lr_decay_every or {})
    unknown = sorted(set(decay) - set(models))
    if unknown:
        raise ValueError(f"lr_decay_every names unknown models {unknown}; models are {sorted(models)}")
    return {
        depth: {
            name: invert_features(model, image, depth, lr_decay_every=decay.get(name), **options)
            for name, model in models.items()
        }
        for depth in depths
    }


def _blur(tensor: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with a kernel of about 6 sigma, capped so reflection padding fits the image."""
    from torchvision.transforms.v2.functional import gaussian_blur

    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * min(tensor.shape[-2:]) - 1)
    if kernel < 3:
        return tensor
    return gaussian_blur(tensor, [kernel, kernel], [sigma, sigma])


def _octave_sizes(height: int, width: int, octaves: int, scale: float, min_side: int) -> list[tuple[int, int]]:
    """Octave image sizes from the smallest to the full size; octaves below `min_side` px are skipped."""
    sizes = [(round(height / scale**i), round(width / scale**i)) for i in range(octaves)]
    return [size for size in reversed(sizes) if min(size) >= min_side]


def visualize_features(
    model: SimilarityModel,
    image_or_base: torch.Tensor | int | tuple[int, int],
    objective: str = "score",
    target: torch.Tensor | None = None,
    octaves: int = 10,
    scale: float = 1.4,
    steps: int = 20,
    depth: str | None = None,
    seed: int = 0,
    step_size: float = 0.01,
    l2_weight: float = 1e-3,
    tv_weight: float = 1e-3,
    min_side: int = 8,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature visualisation (M11, DeepDream with octaves); returns (x, x - base) in float32.

    The base is `image_or_base` if it is an image, else 0.01*U[0, 1] (seeded) of that size (int or
    (h, w)). objective "score" maximises cos(phi(x), phi(target)) with phi the embedding f when
    depth is None (the explained score S) and the spatially pooled backbone map after `depth`
    otherwise; "feature" maximises ||phi(x)|| of the spatial map after `depth` (None: last stage).
    Each octave (sizes base / scale^i, smallest first, those below `min_side` px skipped) runs `steps`
    ascent steps on objective - l2*||x||^2 - tv*TV2(x): the gradient is blurred with sigma
    (i+1)/steps*2 + 0.5 at step i, scaled by step_size / mean|grad|, and x is clipped to [0, 1].

    The ascent runs on a copy of the model in `dtype` (float64 by default): a hundred ascent steps
    amplify the 1e-6 rounding differences between CPU kernels (AVX2, AVX512) to 1e-4 of the feature
    norm, visible in a table; in float64 they stay far below it. Pass torch.float32 for speed (on a
    GPU, say).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "score" and target is None:
        raise ValueError("objective='score' maximises the similarity to a target image: pass target=")
    if objective == "feature" and target is not None:
        raise ValueError("objective='feature' maximises the feature norm and takes no target; drop target=")
    base = _make_base(image_or_base, seed).to(device=model.device, dtype=dtype)
    if next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    goal = _objective(model, objective, None if target is None else target.to(dtype), depth)
    sizes = _octave_sizes(*base.shape[-2:], octaves, scale, min_side)
    if not sizes:
        raise ValueError(f"the image {tuple(base.shape[-2:])} is smaller than min_side={min_side}")
    detail = torch.zeros_like(base)
    for size in sizes:
        octave_base = F.interpolate(base, size=size, mode="bilinear", align_corners=False, antialias=True)
        detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
        x = (octave_base + detail).clamp(0, 1)
        for step in range(steps):
            x.requires_grad_(True)
            with torch.enable_grad():
                value = goal(x) - l2_weight * x.pow(2).sum() - tv_weight * total_variation(x)
                (grad,) = torch.autograd.grad(value, x)
            grad = _blur(grad, (step + 1) / steps * 2 + 0.5)
            x = (x.detach() + step_size / grad.abs().mean().clamp_min(1e-12) * grad).clamp(0, 1)
        detail = x.detach() - octave_base
    x = x.detach()
    return x.float(), (x - base).float()


def _make_base(image_or_base: torch.Tensor | int | tuple[int, int], seed: int) -> torch.Tensor:
    if isinstance(image_or_base, torch.Tensor):
        return check_image(image_or_base, "image_or_base").detach()
    size = (image_or_base, image_or_base) if isinstance(image_or_base, int) else tuple(image_or_base)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_or_base must be an image 1x3xHxW or a size (int or (h, w)), got {image_or_base!r}")
    return 0.01 * torch.rand((1, 3, *size), generator=cpu_generator(seed))


def _objective(model: SimilarityModel, objective: str, target: torch.Tensor | None, depth: str | None):
    """The function of x that M11 maximises."""
    if objective == "feature":
        return lambda x: feature_map(model, x, depth).norm()
    check_image(target, "target")
    target = target.to(model.device)
    with torch.no_grad():
        if depth is None:
            reference = model.embed(target)
            return lambda x: cosine(model.embed(x), reference).sum()
        reference = feature_map(model, target, depth).mean(dim=(2, 3))
    return lambda x: cosine(feature_map(model, x, depth).mean(dim=(2, 3)), reference).sum()
