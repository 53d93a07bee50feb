"""Gradient explanations of S(x1, x2) (the paper's gradient family): Input x Gradient, SmoothGrad, Averaged Transforms.

All three differentiate the explained score S = cos(f(x1), f(x2)) with respect to the input pixels
only (`torch.autograd.grad`; parameter `.grad` fields are never written). Pairs of a batch are
independent (eval-mode BatchNorm), so a batch of B pairs needs one forward and one backward pass:
the gradient of sum_b S_b with respect to pair b's images is the gradient of S_b alone.

With g_k the gradient of S with respect to image k's pixels:

* Input x Gradient: image k's map is the largest of |x_k * g_k| over the colour channels;
* SmoothGrad: the same with g_k averaged over draws that add one Gaussian noise sample to both
  images alike;
* Averaged Transforms (proposed by the paper): x1 is compared with images on the straight path from
  a pixel-aligned transformed copy T(x1) back to x1; the gradients of those similarities, for x1
  and for the path image, are averaged over the path and multiplied by x1 and by the path image
  nearest to T(x1) as above.

Each can use guided backpropagation (every ReLU lets only positive gradients through).

Source: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive
Learning", IEEE TIP 2023 (arXiv 2206.09753), its gradient methods: Averaged Transforms is proposed
there; Input x Gradient (Shrikumar et al., 2016) and SmoothGrad (Smilkov et al., 2017) are applied
to the pair as baselines.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from ..data.transforms import AVERAGED_FAMILIES, averaged_transform
from ..models.similarity import SimilarityModel
from .base import register_method
from ..utils import cpu_generator, to_device

#: SmoothGrad noise level relative to the image's value range.
NOISE_LEVEL = 0.15
NOISE_RULES = ("paper", "canonical")


class _PositiveGradient(torch.autograd.Function):
    """Identity in the forward pass; lets only positive gradients through in the backward pass."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        # A copy, not a view: later in-place operations on the ReLU output stay legal.
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def _gate_relu_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return _PositiveGradient.apply(output)


@contextlib.contextmanager
def guided_backprop(model: nn.Module) -> Iterator[None]:
    """Guided backpropagation inside the block: every `nn.ReLU` module passes only positive gradients.

    A forward hook puts a gate after each ReLU output whose backward clamps the incoming gradient
    at 0; the ReLU's own backward then multiplies by 1[input > 0], which together is the guided
    rule grad_in = 1[input > 0] * max(grad_out, 0). Forward hooks (not full backward hooks) work on
    in-place ReLUs (torchvision ResNets) without touching their `inplace` flag; model mode and
    parameters are never changed, and the hooks are removed on exit, also when an error is raised.

    Limitation: only `nn.ReLU` modules can be hooked. ReLUs called functionally (`F.relu`,
    `torch.relu`, `x.relu()`) inside a module's forward stay ordinary ReLUs. A model without any
    `nn.ReLU` module raises a ValueError rather than silently giving plain gradients.
    """
    relus = [module for module in model.modules() if isinstance(module, nn.ReLU)]
    if not relus:
        raise ValueError(
            f"guided backpropagation needs nn.ReLU modules, but {type(model).__name__} has none "
            "(functional relu calls cannot be hooked); use guided=False or build the network with nn.ReLU"
        )
    handles = []
    try:
        for module in relus:
            handles.append(module.register_forward_hook(_gate_relu_output))
        yield
    finally:
        for handle in handles:
            handle.remove()


def pair_gradients(
    model: SimilarityModel, x1: torch.Tensor, x2: torch.Tensor, guided: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """dS_b/dx1_b and dS_b/dx2_b for a batch of B independent pairs (Bx3xHxW each), one backward pass."""
    x1 = x1.detach().requires_grad_(True)
    x2 = x2.detach().requires_grad_(True)
    context = guided_backprop(model) if guided else contextlib.nullcontext()
    with torch.enable_grad(), context:
        scores = model.similarity(x1, x2)
        g1, g2 = torch.autograd.grad(scores.sum(), (x1, x2))
    return g1, g2


def _input_times_gradient(image: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """The M6 map: max over RGB of |x * g| (HxW)."""
    return (image * gradient).abs().amax(dim=1)[0]


def _batched_mean_gradients(
    model: SimilarityModel,
    count: int,
    make_pairs: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    guided: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over `count` pairs of (dS/dx1, dS/dx2); pairs built `batch_size` at a time by make_pairs(start, stop)."""
    total1 = total2 = None
    for start in range(0, count, batch_size):
        a, b = make_pairs(start, min(count, start + batch_size))
        g1, g2 = pair_gradients(model, a, b, guided)
        s1, s2 = g1.sum(0, keepdim=True), g2.sum(0, keepdim=True)
        total1 = s1 if total1 is None else total1 + s1
        total2 = s2 if total2 is None else total2 + s2
    return total1 / count, total2 / count


def noise_sigma(image: torch.Tensor, rule: str = "paper") -> float:
    """SmoothGrad noise sigma: paper 0.15 / (max - min) (sic), canonical 0.15 * (max - min)."""
    spread = float(image.max() - image.min())
    if rule == "canonical":
        return NOISE_LEVEL * spread
    if rule == "paper":
        if spread == 0:
            raise ValueError(
                "the paper's noise rule 0.15 / (max - min) is undefined for a constant image; "
                "use noise_rule='canonical'"
            )
        return NOISE_LEVEL / spread
    raise ValueError(f"unknown noise_rule {rule!r}; choose one of {NOISE_RULES}")


def _require_same_shape(x1: torch.Tensor, x2: torch.Tensor, method: str, why: str) -> None:
    if x1.shape != x2.shape:
        raise ValueError(
            f"{method} needs two images of the same size ({why}); got {tuple(x1.shape)} and {tuple(x2.shape)}. "
            "Resize both views to the same side (e.g. cl_explain.data.make_pair does)"
        )


@register_method("input_x_gradient", {"guided": False})
def input_x_gradient(
    model: SimilarityModel, x1: torch.Tensor, x2: torch.Tensor, *, guided: bool = False, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input x Gradient (M6): max over RGB of |x_k * dS/dx_k| for both images, one backward pass."""
    g1, g2 = pair_gradients(model, x1, x2, guided)
    return _input_times_gradient(x1, g1), _input_times_gradient(x2, g2)


@register_method(
    "smoothgrad",
    # batch_size counts pairs per backward pass; 8 keeps a ResNet-50 at 224 px near 1.5 GB (64 would need
    # ~11 GB); smaller images take proportionally more (scaled by area, at most 64)
    {"samples": 50, "guided": False, "noise_rule": "paper", "seed": 0, "batch_size": 8},
    scaled={"batch_size": "batch"},
    choices={"noise_rule": NOISE_RULES},
    gradient_batches=True,
)
def smoothgrad(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    *,
    samples: int = 50,
    guided: bool = False,
    noise_rule: str = "paper",
    seed: int = 0,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SmoothGrad (M7): the same Gaussian noise on both images, gradients averaged over `samples` draws.

    Sigma follows `noise_rule` on x1's value range. Noise sample i is the i-th draw of a generator
    seeded with `seed`, so the maps do not depend on `batch_size`.
    """
    _require_same_shape(x1, x2, "smoothgrad", "the same noise is added to both")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    sigma = noise_sigma(x1, noise_rule)
    generator = cpu_generator(seed)

    def noisy_pairs(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        # One draw per sample (not one per batch) keeps sample i's noise independent of batch_size.
        noise = torch.stack([torch.randn(x1.shape[1:], generator=generator) for _ in range(stop - start)])
        noise = sigma * to_device(noise, x1.device, x1.dtype)
        return x1 + noise, x2 + noise

    g1, g2 = _batched_mean_gradients(model, samples, noisy_pairs, batch_size, guided)
    return _input_times_gradient(x1, g1), _input_times_gradient(x2, g2)


def interpolation_path(x0: torch.Tensor, xt: torch.Tensor, step: float = 0.1) -> torch.Tensor:
    """Images l*x0 + (1-l)*xt for l = 1, 1-step, 1-2*step, ... while l > 0 (round(1/step) images, Lx3xHxW)."""
    if not 0 < step < 1:
        raise ValueError(f"step must be in (0, 1), got {step}")
    lambdas = 1 - step * torch.arange(int(round(1 / step)), device=x0.device, dtype=x0.dtype)
    weights = lambdas.view(-1, 1, 1, 1)
    return weights * x0 + (1 - weights) * xt


def transformed_copy(x0: torch.Tensor, transform: str, seed: int) -> torch.Tensor:
    """The pixel-aligned copy T(x0) that Averaged Transforms pairs x0 with (family `transform`, seeded)."""
    generator = cpu_generator(seed)
    return to_device(averaged_transform(x0.cpu(), transform, generator), x0.device, x0.dtype)


@register_method(
    "averaged_transforms",
    {"transform": "combine", "step": 0.1, "noise": False, "guided": False, "seed": 0, "batch_size": 8},
    scaled={"batch_size": "batch"},
    needs_pair=False,
    choices={"transform": AVERAGED_FAMILIES},
    partner=lambda x1, params: transformed_copy(x1, params["transform"], params["seed"]),
    gradient_batches=True,
)
def averaged_transforms(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    transform: str = "combine",
    step: float = 0.1,
    noise: bool = False,
    guided: bool = False,
    seed: int = 0,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Averaged Transforms (M8): gradients of S(x0, x_l) averaged along the path from x0 to T(x0).

    x0 = x1 (the pure view). x2, when given, is the pixel-aligned transformed copy xT (same size;
    alignment itself cannot be checked, so never pass a cropped/flipped view); otherwise xT is the
    `transform` family applied to x0 with a generator seeded by `seed`. The path images x_l,
    l = 1-step, ..., step, are explained against x0; map1 = max_c |x0 * g1|, map2 = max_c |x_step * g2|.
    `noise` adds N(0, sigma^2) (paper sigma rule of M7, same seed) to the path images strictly
    between the first (x0) and the last (x_step).
    """
    if x2 is None:
        x2 = transformed_copy(x1, transform, seed)
    _require_same_shape(x1, x2, "averaged_transforms", "x2 must be the pixel-aligned transformed copy of x1")
    path = interpolation_path(x1, x2, step)
    if noise and len(path) > 2:
        sigma = noise_sigma(x1, "paper")
        inner = torch.randn((len(path) - 2, *x1.shape[1:]), generator=cpu_generator(seed))
        path[1:-1] += sigma * to_device(inner, x1.device, x1.dtype)
    compared = path[1:]
    if len(compared) == 0:
        raise ValueError(f"step={step} leaves no path image below l = 1; use a step of at most 0.5 (paper: 0.1)")

    def path_pairs(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x1.expand(stop - start, -1, -1, -1), compared[start:stop]

    g1, g2 = _batched_mean_gradients(model, len(compared), path_pairs, batch_size, guided)
    return _input_times_gradient(x1, g1), _input_times_gradient(compared[-1:], g2)
