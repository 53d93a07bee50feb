"""Pair Grad-CAM (M4) and Interaction-CAM (M5) against captum, hand-derived gradients and explicit loops."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from cl_explain.explainers import explain
from cl_explain.explainers.base import bf16_supported
from cl_explain.explainers.cam import attention_pool, interaction_gradients
from cl_explain.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel
from cl_explain.precision import measuring_bf16

from helpers import patch_features

SIDE = 16
PATCH = (slice(4, 8), slice(8, 12))
CAM_VARIANTS = [("gradcam", {"weighting": w}) for w in ("elementwise", "channel")] + [
    ("interaction_cam", {"reduction": r, "grad_interaction": g})
    for r, g in itertools.product(("mean", "max", "attn"), (False, True))
]


def backbone(seed: int = 0) -> nn.Module:
    """Tiny CNN ending in a ReLU (non-negative maps like ResNet's layer4): 16 px -> 6 x 4 x 4."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=4, padding=1), nn.ReLU())


def mlp_model(seed: int = 0) -> SimilarityModel:
    net = backbone(seed)
    head = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))
    return SimilarityModel(net, head, (IMAGENET_MEAN, IMAGENET_STD))


def linear_model(seed: int = 0) -> SimilarityModel:
    """Linear head f = W pool(F) + b, so dS/dF has a closed form (see `analytic_gradients`)."""
    net = backbone(seed)
    return SimilarityModel(net, nn.Linear(6, 5), (IMAGENET_MEAN, IMAGENET_STD))


def images(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, 3, 4, 4, generator=g)
    x = F.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear", align_corners=False).clamp(0, 1)
    return x[:1], x[1:]


@torch.no_grad()
def analytic_gradients(model: SimilarityModel, x1, x2):
    """F1, F2 (D x h x w) and dS/dF by hand: dS/df1 = f2/(|f1||f2|) - S f1/|f1|^2, dF = W^T dS/df / (h w)."""
    fmap1, fmap2 = model.features(x1)[0], model.features(x2)[0]
    weight, bias = model.head.weight, model.head.bias
    f1, f2 = weight @ fmap1.mean((1, 2)) + bias, weight @ fmap2.mean((1, 2)) + bias
    n1, n2 = f1.norm(), f2.norm()
    s = f1 @ f2 / (n1 * n2)
    d1, d2 = f2 / (n1 * n2) - s * f1 / n1**2, f1 / (n1 * n2) - s * f2 / n2**2
    hw = fmap1.shape[1] * fmap1.shape[2]
    g1 = (weight.T @ d1 / hw)[:, None, None].expand_as(fmap1)
    g2 = (weight.T @ d2 / hw)[:, None, None].expand_as(fmap2)
    return fmap1, fmap2, g1, g2


def test_gradcam_channel_matches_captum_layer_gradcam():
    model = mlp_model()
    x1, x2 = images()
    result = explain(model, x1, x2, method="gradcam", weighting="channel")
    for x, other, ours in ((x1, x2, result.map1), (x2, x1, result.map2)):
        fixed = model.embed(other).detach()
        oracle = LayerGradCam(lambda z: F.cosine_similarity(model.embed(z), fixed), model.backbone)
        reference = oracle.attribute(x, relu_attributions=True)[0, 0].detach()
        assert ours.shape == reference.shape == (4, 4)
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-4)
    assert result.map1.max() > 0 and result.map2.max() > 0


def test_gradcam_elementwise_matches_hand_computation():
    model = linear_model()
    x1, x2 = images()
    result = explain(model, x1, x2, method="gradcam")  # default weighting: elementwise (paper)
    fmap1, fmap2, g1, g2 = analytic_gradients(model, x1, x2)
    torch.testing.assert_close(result.map1, (fmap1 * g1.clamp(min=0)).sum(0), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(result.map2, (fmap2 * g2.clamp(min=0)).sum(0), atol=1e-6, rtol=1e-4)
    assert result.map1.max() > 0


def test_interaction_cam_mean_matches_direct_formula():
    model = linear_model(seed=2)
    x1, x2 = images(seed=3)
    result = explain(model, x1, x2, method="interaction_cam", reduction="mean")
    fmap1, fmap2, g1, g2 = analytic_gradients(model, x1, x2)
    alpha = fmap1.mean((1, 2)) * fmap2.mean((1, 2))
    expected1 = (fmap1 * alpha[:, None, None] * g1.clamp(min=0)).sum(0)
    expected2 = (fmap2 * alpha[:, None, None] * g2.clamp(min=0)).sum(0)
    torch.testing.assert_close(result.map1, expected1, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(result.map2, expected2, atol=1e-7, rtol=1e-4)
    assert result.map1.max() > 0


def test_attention_pool_matches_loop():
    feat = torch.randn(2, 3, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pooled = attention_pool(feat)
    for b in range(2):
        positions = [feat[b, :, i, j] for i in range(2) for j in range(3)]
        query = sum(positions) / len(positions)
        scores = [float(query @ p) for p in positions]  # unscaled dot products
        top = max(scores)
        exps = [torch.exp(torch.tensor(s - top, dtype=torch.float64)) for s in scores]
        expected = sum(e * p for e, p in zip(exps, positions)) / sum(exps)
        torch.testing.assert_close(pooled[b], expected)


def loop_interaction(g1, g2):
    """IntGradMax by explicit loops: M[c, j] = sum_p G1[c, p] G2[j, p]; row / column maxima."""
    depth = g1.shape[0]
    g1, g2 = g1.reshape(depth, -1), g2.reshape(depth, -1)
    m = torch.zeros(depth, depth, dtype=g1.dtype)
    for c in range(depth):
        for j in range(depth):
            for p in range(g1.shape[1]):
                m[c, j] += g1[c, p] * g2[j, p]
    rows = torch.stack([max(m[c, j] for j in range(depth)) for c in range(depth)])
    cols = torch.stack([max(m[i, c] for i in range(depth)) for c in range(depth)])
    return rows, cols


def test_interaction_gradients_match_loops():
    g = torch.Generator().manual_seed(1)
    g1, g2 = torch.randn(1, 4, 3, 2, generator=g), torch.randn(1, 4, 3, 2, generator=g)
    ours1, ours2 = interaction_gradients(g1, g2)
    rows, cols = loop_interaction(g1[0], g2[0])
    assert ours1.shape == ours2.shape == (1, 4, 1, 1)
    torch.testing.assert_close(ours1.flatten(), rows, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours2.flatten(), cols, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(rows, cols)  # the two directions differ, so a transposition bug shows


def test_interaction_cam_max_with_intgradmax_matches_formula():
    model = linear_model(seed=4)
    x1, x2 = images(seed=5)
    result = explain(model, x1, x2, method="interaction_cam", reduction="max", grad_interaction=True)
    fmap1, fmap2, g1, g2 = analytic_gradients(model, x1, x2)
    alpha = fmap1.amax((1, 2)) * fmap2.amax((1, 2))
    rows, cols = loop_interaction(g1, g2)
    expected1 = (fmap1 * (alpha * rows.clamp(min=0))[:, None, None]).sum(0)
    expected2 = (fmap2 * (alpha * cols.clamp(min=0))[:, None, None]).sum(0)
    torch.testing.assert_close(result.map1, expected1, atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(result.map2, expected2, atol=1e-8, rtol=1e-4)
    assert result.map1.max() > 0


@pytest.mark.parametrize("method,params", CAM_VARIANTS)
def test_swapping_images_swaps_maps(method, params):
    model = mlp_model()
    x1, x2 = images()
    a = explain(model, x1, x2, method=method, **params)
    b = explain(model, x2, x1, method=method, **params)
    torch.testing.assert_close(a.map1, b.map2)
    torch.testing.assert_close(a.map2, b.map1)
    assert a.map1.shape == (4, 4) and a.map1.dtype == torch.float32


@pytest.mark.parametrize("method,params", CAM_VARIANTS)
def test_patch_model_lights_up_the_patch(method, params):
    torch.manual_seed(0)
    model = SimilarityModel(patch_features(SIDE, PATCH), nn.Linear(8, 6, bias=False))
    x1, x2 = images(seed=2)
    inside = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    inside[PATCH] = True
    for m in explain(model, x1, x2, method=method, **params).maps:
        assert m.shape == (SIDE, SIDE)
        assert (m[~inside] == 0).all() and m[inside].max() > 0


class Constant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 4, 2, 2, dtype=x.dtype, device=x.device)


@pytest.mark.parametrize("method,params", CAM_VARIANTS)
def test_degenerate_inputs_give_finite_maps(method, params):
    blind = SimilarityModel(Constant(), None)  # S is constant: zero gradients, zero maps
    x = torch.full((1, 3, SIDE, SIDE), 0.5)
    for m in explain(blind, x, x, method=method, **params).maps:
        assert torch.equal(m, torch.zeros(2, 2))
    for m in explain(mlp_model(), x, x, method=method, **params).maps:  # constant image, real model
        assert torch.isfinite(m).all()


@pytest.mark.parametrize("method,params", CAM_VARIANTS)
def test_no_state_leaks_and_works_under_no_grad(method, params):
    model = mlp_model()
    x1, x2 = images()
    free = explain(model, x1, x2, method=method, **params)
    with torch.no_grad():
        inside_no_grad = explain(model, x1, x2, method=method, **params)
    torch.testing.assert_close(free.map1, inside_no_grad.map1)
    assert not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bfloat16")
def test_bf16_precision_is_close_to_fp32():
    model = mlp_model()
    x1, x2 = images()
    full = explain(model, x1, x2, method="interaction_cam", reduction="mean")
    with measuring_bf16():  # the machinery, whatever the policy says about this method
        half = explain(model, x1, x2, method="interaction_cam", reduction="mean", precision="bf16")
    assert half.map1.dtype == torch.float32
    assert torch.corrcoef(torch.stack([full.map1.flatten(), half.map1.flatten()]))[0, 1] > 0.9


def test_bad_parameters_are_rejected():
    model = mlp_model()
    x1, x2 = images()
    with pytest.raises(ValueError, match="weighting"):
        explain(model, x1, x2, method="gradcam", weighting="classic")
    with pytest.raises(ValueError, match="reduction"):
        explain(model, x1, x2, method="interaction_cam", reduction="sum")
    with pytest.raises(ValueError, match="unknown parameter"):
        explain(model, x1, x2, method="interaction_cam", window=3)
    small = F.interpolate(x2, size=(8, 8), mode="bilinear", align_corners=False)
    with pytest.raises(ValueError, match="equal size"):
        explain(model, x1, small, method="interaction_cam", grad_interaction=True)
