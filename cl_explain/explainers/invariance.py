"""Pixel Invariance (proposed by the paper): which pixels keep the embedding stable under pixel-aligned augmentations.

One image is explained. T no-shift augmentations a_t (colour jitter, grayscale, random erasing; pixels
stay aligned) are labelled with y_t = cos(f(pure), f(a_t)). A linear surrogate on the images resized
to s x s, pred_t = (w.pure + b + w.a_t + b) / 2, is fitted to the labels with binary cross-entropy on
logits (summed) + l1 * (|w|_1 + |b|) by full-batch SGD. Its weights, as an image, are the map.

With the paper's settings (loss summed over 1000 views, learning rate 0.1, 1000 steps) the fit never
settles and is chaotic: a change of rounding alone, such as another order of the views or another
CPU's kernels, moves the weights by whole units and the map by several percent of its peak (tested in
tests/test_invariance.py). Maps are bit-identical on the same kernels, not across CPUs.

Source: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive
Learning", IEEE TIP 2023 (arXiv 2206.09753), its Pixel Invariance method.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import no_shift_view
from ..models.similarity import SimilarityModel, cosine, embed_stream
from ..utils import PAPER_SIDE, cpu_generator, scale_kernel, scale_sigma, to_device
from .base import register_method

#: The paper's surrogate side, and the map blur (kernel, sigma) it applies at that side.
PAPER_SURROGATE_SIDE = 64
SURROGATE_BLUR = (11, 5.0)
#: Epochs of the paper for the plain and the NMF variant.
PAPER_EPOCHS = {False: 1000, True: 100}


def invariance_views(image: torch.Tensor, seed: int, start: int, stop: int) -> torch.Tensor:
    """Views start..stop-1 of the seeded sequence of no-shift augmentations (with RandomErasing), Bx3xHxW.

    View t is drawn from a generator seeded with (seed, t), so any slice is reproducible on its own
    and results do not depend on how the sequence is batched.
    """
    side = image.shape[-1]
    views = [no_shift_view(image, side, cpu_generator(_view_seed(seed, t)), erase=True) for t in range(start, stop)]
    return torch.cat(views)


def _view_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % 2**63


def fit_surrogate(
    pure: torch.Tensor,
    views: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float = 0.1,
    l1: float = 0.2,
    nmf_targets: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch gradient descent on the M9 surrogate (plain SGD, no momentum).

    Returns (w, b), w flattened like one image.

    pure: D, views: T x D (flattened surrogate images), labels: T. With `nmf_targets` (T) the loss also
    has MSE(sigmoid(pred), nmf_targets). Parameters start from nn.Linear's default uniform
    initialisation, drawn from a generator seeded with `seed`.
    """
    dim = pure.numel()
    generator = cpu_generator(seed)
    bound = 1 / dim**0.5
    w = ((torch.rand(dim, generator=generator, dtype=torch.float64) * 2 - 1) * bound).float()
    b = ((torch.rand(1, generator=generator, dtype=torch.float64) * 2 - 1) * bound).float()
    pair_mean = (pure + views) / 2  # (w.pure + b + w.a_t + b) / 2 = w.((pure + a_t) / 2) + b
    labels = labels.float()
    # The loss gradient written out (no autograd graph per epoch): d/dpred of the summed BCE-with-logits
    # is sigmoid(pred) - y; of the mean MSE on sigmoid(pred), 2 (s - t) s (1 - s) / T; of l1 * |p|, l1 * sign(p).
    for _ in range(epochs):
        probability = torch.sigmoid(torch.addmv(b.expand(len(labels)), pair_mean, w))
        residual = probability - labels
        if nmf_targets is not None:
            residual = residual + 2 * (probability - nmf_targets) * probability * (1 - probability) / len(labels)
        w = w - lr * (pair_mean.T @ residual + l1 * torch.sign(w))
        b = b - lr * (residual.sum() + l1 * torch.sign(b))
    return w, b


def nmf_targets(embeddings: torch.Tensor, components: int, seed: int) -> torch.Tensor:
    """Per-sample mean of the T x k NMF factor of ReLU(embeddings) (sklearn NMF, random init, seeded)."""
    from sklearn.decomposition import NMF

    data = embeddings.relu().double().cpu().numpy()
    factor = NMF(n_components=components, init="random", random_state=seed).fit_transform(data)
    return torch.from_numpy(np.asarray(factor.mean(axis=1), dtype=np.float32))


def weights_to_map(weights: torch.Tensor, surrogate_side: int, size: tuple[int, int]) -> torch.Tensor:
    """Surrogate weights -> 3 x s x s -> max over RGB -> min-max -> zero below 0.5 -> blur -> resize to `size`."""
    from torchvision.transforms.v2.functional import gaussian_blur

    heat = weights.view(3, surrogate_side, surrogate_side).amax(dim=0)
    spread = heat.max() - heat.min()
    heat = (heat - heat.min()) / spread if spread > 0 else torch.zeros_like(heat)
    heat = torch.where(heat < 0.5, torch.zeros_like(heat), heat)
    # The paper blurs with (11, sigma 5) at its 64-px surrogate; scale both with the surrogate side.
    equivalent_side = round(surrogate_side * PAPER_SIDE / PAPER_SURROGATE_SIDE)
    kernel = scale_kernel(SURROGATE_BLUR[0], equivalent_side)
    sigma = scale_sigma(SURROGATE_BLUR[1], equivalent_side)
    heat = gaussian_blur(heat[None, None], [kernel, kernel], [sigma, sigma])
    return F.interpolate(heat, size=size, mode="bilinear", align_corners=False)[0, 0]


def _shrink(images: torch.Tensor, side: int) -> torch.Tensor:
    """Images resized to side x side and flattened (B x 3*side*side), float32 on the CPU."""
    small = F.interpolate(images.float(), size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return small.flatten(1).cpu()


@register_method(
    "pixel_invariance",
    {
        "samples": 1000,
        "nmf": False,
        "epochs": None,
        "lr": 0.1,
        "l1": 0.2,
        "surrogate_side": PAPER_SURROGATE_SIDE,
        "nmf_components": 10,
        "seed": 0,
    },
    scaled={"surrogate_side": "length"},
    needs_pair=False,
    sensitivity=False,
)
def pixel_invariance(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    samples: int = 1000,
    nmf: bool = False,
    epochs: int | None = None,
    lr: float = 0.1,
    l1: float = 0.2,
    surrogate_side: int = PAPER_SURROGATE_SIDE,
    nmf_components: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[torch.Tensor, None]:
    """Pixel Invariance (M9): a linear surrogate of cos(f(pure), f(augmented)); explains x1 only.

    epochs=None means the paper's value for the variant (1000 plain, 100 with NMF). The surrogate
    side (64 at 224 px) scales with the image. x2 is not used. Returns (map at image size, None).
    """
    if x1.shape[-1] != x1.shape[-2]:
        raise ValueError(
            f"pixel_invariance needs a square image (the pure view), got {tuple(x1.shape[-2:])}; "
            "make one with cl_explain.data.pure_view"
        )
    if samples < 2:
        raise ValueError(f"samples must be at least 2 to fit the surrogate, got {samples}")
    epochs = PAPER_EPOCHS[bool(nmf)] if epochs is None else epochs
    image = x1.detach()
    shrunk = []

    def augmented(start: int, stop: int) -> torch.Tensor:
        # views are drawn and shrunk on the CPU (no copy back from the model's device per batch)
        views = invariance_views(image.cpu(), seed, start, stop).to(dtype=image.dtype)
        shrunk.append(_shrink(views, surrogate_side))
        return to_device(views, image.device)

    with torch.no_grad():
        reference = model.embed(image).float()
        embeddings = embed_stream(model, samples, augmented, batch_size)
    labels = cosine(reference, embeddings).cpu()
    targets = nmf_targets(embeddings, nmf_components, seed) if nmf else None
    with torch.autocast(device_type=image.device.type, enabled=False):
        weights, _ = fit_surrogate(
            _shrink(image, surrogate_side)[0], torch.cat(shrunk), labels, epochs, lr, l1, targets, seed
        )
    return weights_to_map(weights, surrogate_side, tuple(x1.shape[-2:])), None
