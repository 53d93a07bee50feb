"""Class-activation explainers of a pair: the paper's pair Grad-CAM baseline and its Interaction-CAM.

Both need the last-stage feature maps F1, F2 and the gradients G_k = dS/dF_k of the similarity
S = cos(f(x1), f(x2)). The backbone runs once under no_grad; only the pooling + head part is
differentiated (torch.autograd.grad w.r.t. the feature maps), so parameter .grad is never touched.
Maps are at feature resolution (h x w), raw (not normalised).

* Pair Grad-CAM: image k's map is the channel sum of F_k * ReLU(G_k), position by position (as the
  authors' code computes it), or, the classic way, the ReLU of the channel sum of F_k with each
  channel weighted by the spatial mean of its gradient.
* Interaction-CAM: before the channel sum, each channel is also scaled by a weight shared by both
  images, r(F1) * r(F2), where r pools a feature map to one value per channel (mean, max or
  attention pooling); a channel counts only when it is active in both images. Optionally the
  gradients are replaced by their interaction across the two images (IntGradMax: per channel, the
  largest entry of that channel's row, or column, of G1^T G2).

Source: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive
Learning", IEEE TIP 2023 (arXiv 2206.09753): Interaction-CAM is proposed there, with Grad-CAM
adapted to the pair as its baseline. Grad-CAM: Selvaraju et al., "Grad-CAM: Visual Explanations from
Deep Networks via Gradient-based Localization", ICCV 2017.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.similarity import SimilarityModel, cosine
from .base import register_method

Tensor = torch.Tensor


def pair_features_and_gradients(
    model: SimilarityModel, x1: Tensor, x2: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(F1, F2, G1, G2), each 1xDxhxw float: feature maps and dS/dF of S = cos(f(x1), f(x2))."""
    with torch.no_grad():
        if x1.shape == x2.shape:
            feats = model.features(torch.cat([x1, x2])).split(1)
        else:
            feats = (model.features(x1), model.features(x2))
    with torch.enable_grad():
        f1, f2 = (f.detach().requires_grad_(True) for f in feats)
        score = cosine(model.embed_features(f1), model.embed_features(f2)).sum()
        g1, g2 = torch.autograd.grad(score, (f1, f2))
    return f1.detach().float(), f2.detach().float(), g1.float(), g2.float()


@register_method("gradcam", {"weighting": "elementwise"}, choices={"weighting": ("elementwise", "channel")})
def gradcam(
    model: SimilarityModel, x1: Tensor, x2: Tensor, *, weighting: str, batch_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Pair Grad-CAM (M4): sum_c F * ReLU(G) (elementwise, paper) or ReLU(sum_c mean(G)_c F_c) (channel).

    `batch_size` is accepted for the common call shape and unused (one forward, one backward).
    """
    f1, f2, g1, g2 = pair_features_and_gradients(model, x1, x2)
    maps = []
    for feat, grad in ((f1, g1), (f2, g2)):
        if weighting == "elementwise":
            cam = (feat * grad.clamp(min=0)).sum(dim=1)
        else:
            cam = (feat * grad.mean(dim=(2, 3), keepdim=True)).sum(dim=1).clamp(min=0)
        maps.append(cam[0])
    return maps[0], maps[1]


def attention_pool(feat: Tensor) -> Tensor:
    """Attention pooling BxDxhxw -> BxD: query = spatial mean, softmax over positions of q . F_j (unscaled)."""
    flat = feat.flatten(2)  # B x D x HW
    query = flat.mean(dim=2)  # B x D
    attention = torch.softmax(torch.einsum("bd,bdp->bp", query, flat), dim=1)
    return torch.einsum("bp,bdp->bd", attention, flat)


_REDUCTIONS = {
    "mean": lambda feat: feat.mean(dim=(2, 3)),
    "max": lambda feat: feat.amax(dim=(2, 3)),
    "attn": attention_pool,
}


def channel_pool(feat: Tensor, reduction: str = "mean") -> Tensor:
    """r(F): BxDxhxw -> BxD by global mean, global max or attention pooling."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {tuple(_REDUCTIONS)}")
    return _REDUCTIONS[reduction](feat)


def joint_channel_weight(f1: Tensor, f2: Tensor, reduction: str = "mean") -> Tensor:
    """Interaction-CAM's alpha = r(F1) * r(F2) (BxD): large only for channels active in BOTH images."""
    return channel_pool(f1, reduction) * channel_pool(f2, reduction)


def interaction_gradients(g1: Tensor, g2: Tensor) -> tuple[Tensor, Tensor]:
    """IntGradMax: M = G1^T G2 (D x D, summed over positions); G1'[c] = max_j M[c, j], G2'[c] = max_i M[i, c].

    Returned as 1xDx1x1 (spatially constant) gradients.
    """
    if g1.shape[-2:] != g2.shape[-2:]:
        raise ValueError(
            f"grad_interaction needs feature maps of equal size, got {tuple(g1.shape[-2:])} and "
            f"{tuple(g2.shape[-2:])}; resize both images to the same size"
        )
    interaction = torch.einsum("dp,ep->de", g1[0].flatten(1), g2[0].flatten(1))
    return interaction.amax(dim=1)[None, :, None, None], interaction.amax(dim=0)[None, :, None, None]


@register_method(
    "interaction_cam",
    {"reduction": "mean", "grad_interaction": False},
    choices={"reduction": tuple(_REDUCTIONS), "grad_interaction": (False, True)},
)
def interaction_cam(
    model: SimilarityModel,
    x1: Tensor,
    x2: Tensor,
    *,
    reduction: str,
    grad_interaction: bool,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Interaction-CAM (M5): features weighted by alpha = r(F1) * r(F2), cam = sum_c F * alpha * ReLU(G').

    r is global mean, global max or attention pooling; G' = G, or the IntGradMax interaction of the
    two gradients when `grad_interaction`. `batch_size` is accepted for the common call shape and unused.
    """
    f1, f2, g1, g2 = pair_features_and_gradients(model, x1, x2)
    alpha = joint_channel_weight(f1, f2, reduction)[:, :, None, None]
    if grad_interaction:
        g1, g2 = interaction_gradients(g1, g2)
    cam1 = (f1 * alpha * F.relu(g1)).sum(dim=1)[0]
    cam2 = (f2 * alpha * F.relu(g2)).sum(dim=1)[0]
    return cam1, cam2
