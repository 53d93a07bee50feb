"""Perturbation explainers (M1-M3) against naive loops, hand-built models and RandomErasing semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import erase

from cl_explain.explainers import explain
from cl_explain.explainers.occlusion import (
    minmax_normalise,
    occlusion_grid,
    rectangle_masks,
    sample_erasing_rectangles,
)
from cl_explain.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel

from helpers import patch_features

SIDE = 16
PATCH = (slice(4, 8), slice(8, 12))  # rows, cols of the only pixels the patch model sees
OCCLUSIONS = ("occlusion", "context_agnostic_occlusion", "pairwise_occlusion")


def tiny_model(seed: int = 0, normalize: bool = True) -> SimilarityModel:
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False)
    )
    head = nn.Sequential(nn.Linear(6, 8, bias=False), nn.Tanh(), nn.Linear(8, 5, bias=False))
    return SimilarityModel(backbone, head, (IMAGENET_MEAN, IMAGENET_STD) if normalize else None)


class Constant(nn.Module):
    """Ignores its input: every image has the same embedding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 4, 2, 2, dtype=x.dtype, device=x.device)


def images(seed: int = 1, side: int = SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth random images (4x4 noise upsampled), so that occluding a window matters."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, 3, 4, 4, generator=g)
    x = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)
    return x[:1], x[1:]


@torch.no_grad()
def naive_embeddings(model, x, window, stride, keep_window=False):
    """One image at a time, explicit loops over window positions, in-place assignment of the zero pixel."""
    zero = model.zero_pixel[0, :, 0, 0]
    rows, cols = (x.shape[-2] - window) // stride + 1, (x.shape[-1] - window) // stride + 1
    out = torch.empty(rows, cols, model.embed(x).shape[-1])
    for i in range(rows):
        for j in range(cols):
            r, c = slice(i * stride, i * stride + window), slice(j * stride, j * stride + window)
            if keep_window:
                y = zero[None, :, None, None].expand_as(x).clone()
                y[..., r, c] = x[..., r, c]
            else:
                y = x.clone()
                y[..., r, c] = zero[None, :, None, None]
            out[i, j] = model.embed(y)[0]
    return out


def cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def test_grid_shape_and_masks():
    grid = occlusion_grid(224, 224, 64, 8)
    assert grid.shape == (21, 21) and len(grid) == 441
    small = occlusion_grid(10, 7, 4, 3)
    assert small.shape == (3, 2)
    masks = small.masks(0, len(small))[:, 0]
    for index in range(len(small)):
        i, j = divmod(index, 2)
        expected = torch.zeros(10, 7, dtype=torch.bool)
        expected[3 * i : 3 * i + 4, 3 * j : 3 * j + 4] = True
        assert torch.equal(masks[index], expected)
    assert torch.equal(small.masks(2, 5), small.masks(0, 6)[2:5])


def test_conditional_occlusion_matches_naive_loop():
    model = tiny_model()
    x1, x2 = images()
    result = explain(model, x1, x2, method="occlusion", window=4, stride=2, batch_size=5)
    f1, f2 = model.embed(x1).detach(), model.embed(x2).detach()
    base = cos(f1, f2)
    ref1 = base - cos(naive_embeddings(model, x1, 4, 2), f2)
    ref2 = base - cos(naive_embeddings(model, x2, 4, 2), f1)
    assert result.map1.shape == (7, 7)
    torch.testing.assert_close(result.map1, ref1, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.map2, ref2, atol=1e-5, rtol=0)
    assert result.map1.abs().max() > 1e-3  # the test is not trivially passing on zeros


def test_context_agnostic_occlusion_matches_naive_loop():
    model = tiny_model(seed=3)
    x1, x2 = images(seed=4)
    result = explain(model, x1, x2, method="context_agnostic_occlusion", window=4, stride=2, batch_size=7)
    f1, f2 = model.embed(x1).detach(), model.embed(x2).detach()
    refs = []
    for x, other in ((x1, f2), (x2, f1)):
        v = naive_embeddings(model, x, 4, 2, keep_window=True) - naive_embeddings(model, x, 4, 2)
        heat = cos(v, other)
        refs.append((heat - heat.min()) / (heat.max() - heat.min()))
    torch.testing.assert_close(result.map1, refs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.map2, refs[1], atol=1e-5, rtol=0)
    for m in result.maps:
        assert m.min() == 0 and m.max() == 1


@pytest.mark.parametrize("method", OCCLUSIONS)
def test_batch_size_does_not_change_maps(method):
    model = tiny_model()
    x1, x2 = images()
    params = {"erasures": 12} if method == "pairwise_occlusion" else {"window": 4, "stride": 3}
    one = explain(model, x1, x2, method=method, batch_size=1, **params)
    many = explain(model, x1, x2, method=method, batch_size=64, **params)
    for a, b in zip(one.maps, many.maps):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_intact_embedding_once_and_batches_bounded():
    model = tiny_model()
    x1, x2 = images()
    sizes = []
    handle = model.backbone.register_forward_hook(lambda module, inputs, output: sizes.append(inputs[0].shape[0]))
    try:
        explain(model, x1, x2, method="occlusion", window=4, stride=2, batch_size=10)
    finally:
        handle.remove()
    # 2 intact images (explain's own score() adds one more forward of the pair), 49 windows per image
    assert sum(sizes) == 2 + 2 * 49 + 2
    assert max(sizes) <= 10


def test_occluded_pixels_are_zero_in_model_input_space():
    model = tiny_model()
    x1, _ = images()
    seen = []
    handle = model.backbone.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    try:
        explain(model, x1, x1, method="occlusion", window=4, stride=4, batch_size=64)
    finally:
        handle.remove()
    batch = seen[1]  # after the intact pair: the 16 occluded copies of x1
    assert batch.shape[0] == 16
    assert batch[5, :, 4:8, 4:8].abs().max() < 1e-6  # window (1, 1) is exactly zero after normalisation
    assert batch[5, :, :4].abs().min() > 0


@pytest.mark.parametrize("method", OCCLUSIONS)
def test_patch_model_lights_up_the_patch(method):
    torch.manual_seed(0)
    model = SimilarityModel(patch_features(SIDE, PATCH), nn.Linear(8, 6, bias=False))
    x1, x2 = images(seed=2)
    params = {"erasures": 100} if method == "pairwise_occlusion" else {"window": 4, "stride": 2}
    result = explain(model, x1, x2, method=method, **params).resized()
    inside = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    inside[PATCH] = True
    for m in result.maps:
        assert m[inside].mean() > 3 * m[~inside].abs().mean()
        assert inside.flatten()[m.flatten().argmax()]


def test_conditional_occlusion_is_zero_away_from_the_patch():
    torch.manual_seed(0)
    model = SimilarityModel(patch_features(SIDE, PATCH), nn.Linear(8, 6, bias=False))
    x1, x2 = images(seed=2)
    result = explain(model, x1, x2, method="occlusion", window=4, stride=2)
    grid = occlusion_grid(SIDE, SIDE, 4, 2)
    masks = grid.masks(0, len(grid))[:, 0]
    overlaps = masks[:, PATCH[0], PATCH[1]].flatten(1).any(1).view(grid.shape)
    for m in result.maps:
        assert m[~overlaps].abs().max() < 1e-5
        assert m[overlaps].abs().max() > 1e-3


@pytest.mark.parametrize("method", ["occlusion", "context_agnostic_occlusion"])
def test_swapping_images_swaps_maps(method):
    """(Pairwise occlusion draws x1's rectangles first, so it is not symmetric by design.)"""
    model = tiny_model()
    x1, x2 = images()
    a = explain(model, x1, x2, method=method, window=4, stride=2)
    b = explain(model, x2, x1, method=method, window=4, stride=2)
    torch.testing.assert_close(a.map1, b.map2, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.map2, b.map1, atol=1e-6, rtol=0)


def test_window_larger_than_image_is_an_error():
    model = tiny_model()
    x1, x2 = images()
    with pytest.raises(ValueError, match="larger than the image"):
        explain(model, x1, x2, method="occlusion", window=20, stride=2)
    with pytest.raises(ValueError, match="positive integer"):
        explain(model, x1, x2, method="context_agnostic_occlusion", window=4, stride=0)


def test_defaults_scale_with_image_side():
    model = tiny_model()
    x1, x2 = images()
    result = explain(model, x1, x2, method="occlusion")
    assert (result.params["window"], result.params["stride"]) == (5, 1)  # 64 and 8 px at 224 -> 16 px
    assert result.map1.shape == (12, 12)


@pytest.mark.parametrize("method", OCCLUSIONS)
def test_input_blind_model_gives_zero_maps_not_nan(method):
    model = SimilarityModel(Constant(), None)
    x = torch.full((1, 3, SIDE, SIDE), 0.5)
    params = {"erasures": 8} if method == "pairwise_occlusion" else {"window": 4, "stride": 4}
    result = explain(model, x, x, method=method, **params)
    for m in result.maps:
        assert torch.isfinite(m).all() and m.abs().max() < 1e-6


@pytest.mark.parametrize("method", OCCLUSIONS)
def test_constant_image_gives_finite_maps(method):
    model = tiny_model()
    x = torch.full((1, 3, SIDE, SIDE), 0.3)
    params = {"erasures": 8} if method == "pairwise_occlusion" else {"window": 4, "stride": 4}
    for m in explain(model, x, x, method=method, **params).maps:
        assert torch.isfinite(m).all()


def test_minmax_normalise_is_a_deprecated_alias_with_zero_for_a_constant_map():
    with pytest.warns(DeprecationWarning, match="minmax_normalise is deprecated"):
        assert torch.equal(minmax_normalise(torch.full((3, 3), 7.0)), torch.zeros(3, 3))


def test_rectangles_follow_random_erasing_semantics():
    rects = sample_erasing_rectangles(500, (40, 50), (0.1, 0.3), (1.0, 1.5), torch.Generator().manual_seed(0))
    top, left, h, w = rects.T
    assert (h > 0).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 40).all() and (left + w <= 50).all()
    area = (h * w).double() / 2000
    assert area.min() > 0.08 and area.max() < 0.33  # scale (0.1, 0.3) up to rounding of h and w
    aspect = h.double() / w.double()
    assert aspect.min() > 0.85 and aspect.max() < 1.7  # ratio (1, 1.5) = h / w, up to rounding
    # our masks erase exactly what torchvision's erase does with the same (i, j, h, w)
    x = torch.rand(3, 40, 50)
    for i, j, hh, ww in rects[:5].tolist():
        mask = rectangle_masks(torch.tensor([i]), torch.tensor([j]), hh, ww, (40, 50))[0]
        torch.testing.assert_close(torch.where(mask, 0.0, x), erase(x, i, j, hh, ww, torch.zeros(3, 1, 1)))


def test_no_rectangle_fits_means_no_erasure():
    rects = sample_erasing_rectangles(20, (3, 3), (0.9, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert (rects[:, 2:] == 0).all()


@torch.no_grad()
def naive_pairwise(model, x1, x2, erasures, seed):
    """Draw-by-draw reference with explicit slicing, reusing only the (tested) rectangle sampler."""
    g = torch.Generator().manual_seed(seed)
    rects1 = sample_erasing_rectangles(erasures, (SIDE, SIDE), (0.1, 0.3), (1.0, 1.5), g)
    rects2 = sample_erasing_rectangles(erasures, (SIDE, SIDE), (0.1, 0.3), (1.0, 1.5), g)
    base = float(model.similarity(x1, x2))
    drops, winners = [], []
    for (i1, j1, h1, w1), (i2, j2, h2, w2) in zip(rects1.tolist(), rects2.tolist()):
        y1, y2 = x1.clone(), x2.clone()
        y1[..., i1 : i1 + h1, j1 : j1 + w1] = 0.0  # un-normalised model: zero pixel = black
        y2[..., i2 : i2 + h2, j2 : j2 + w2] = 0.0
        e1, e2 = model.embed(y1)[0], model.embed(y2)[0]
        drops.append(base - float(cos(e1, e2)))
        winners.append(1 if e1.norm() < e2.norm() else 2 if e2.norm() < e1.norm() else 0)
    weights = torch.softmax(torch.tensor(drops, dtype=torch.float64), 0)
    maps = [torch.zeros(SIDE, SIDE, dtype=torch.float64) for _ in range(2)]
    for n, winner in enumerate(winners):
        if winner:
            i, j, h, w = (rects1 if winner == 1 else rects2)[n].tolist()
            maps[winner - 1][i : i + h, j : j + w] += weights[n]
    return [(m / m.max() if m.max() > 0 else m).float() for m in maps], rects1, rects2


def test_pairwise_occlusion_matches_naive_loop_and_credits_only_erased_pixels():
    model = tiny_model(normalize=False)
    x1, x2 = images(seed=7)  # a pair where both images win some draws
    # naturally black pixels must not be mistaken for erased ones (the authors' code found erased pixels
    # by a zero channel sum)
    x1[..., :6, :] = 0.0
    result = explain(model, x1, x2, method="pairwise_occlusion", erasures=30, seed=7, batch_size=8)
    (ref1, ref2), rects1, rects2 = naive_pairwise(model, x1, x2, 30, 7)
    torch.testing.assert_close(result.map1, ref1, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.map2, ref2, atol=1e-5, rtol=0)
    for m, rects in ((result.map1, rects1), (result.map2, rects2)):
        assert m.shape == (SIDE, SIDE) and float(m.max()) == pytest.approx(1.0)
        erased = rectangle_masks(*rects.unbind(1), size=(SIDE, SIDE))[:, 0].any(0)
        assert (m[~erased] == 0).all() and (m >= 0).all() and (~erased).any()


def test_pairwise_occlusion_seeding():
    model = tiny_model()
    x1, x2 = images()
    a = explain(model, x1, x2, method="pairwise_occlusion", erasures=10, seed=1)
    b = explain(model, x1, x2, method="pairwise_occlusion", erasures=10, seed=1)
    c = explain(model, x1, x2, method="pairwise_occlusion", erasures=10, seed=2)
    assert torch.equal(a.map1, b.map1) and torch.equal(a.map2, b.map2)
    assert not torch.equal(a.map1, c.map1)


def test_bad_parameters_are_rejected():
    model = tiny_model()
    x1, x2 = images()
    with pytest.raises(ValueError, match="unknown parameter"):
        explain(model, x1, x2, method="occlusion", windw=4)
    with pytest.raises(ValueError, match="erasures"):
        explain(model, x1, x2, method="pairwise_occlusion", erasures=0)
    with pytest.raises(ValueError, match="scale"):
        explain(model, x1, x2, method="pairwise_occlusion", scale=(0.5, 0.1))


@pytest.mark.parametrize("method", OCCLUSIONS)
def test_no_state_leaks(method):
    model = tiny_model()
    x1, x2 = images()
    params = {"erasures": 4} if method == "pairwise_occlusion" else {"window": 8, "stride": 4}
    explain(model, x1, x2, method=method, **params)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
