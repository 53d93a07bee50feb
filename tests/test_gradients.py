"""Gradient explainers (M6-M8) against independent computations on tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cl_explain.data.transforms import averaged_transform
from cl_explain.explainers import base
from cl_explain.explainers.gradients import (
    averaged_transforms,
    guided_backprop,
    input_x_gradient,
    interpolation_path,
    noise_sigma,
    pair_gradients,
    smoothgrad,
)
from cl_explain.models.similarity import SimilarityModel

from helpers import PatchOnly, patch_mask


def tiny_model(dtype=torch.float64, seed=0, inplace=True, normalize=((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))):
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()
    )
    head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 5))
    return SimilarityModel(backbone, head, normalize=normalize).to(dtype)


def patch_model(side=10, rows=slice(2, 5), cols=slice(4, 8)):
    torch.manual_seed(1)
    backbone = nn.Sequential(
        PatchOnly(patch_mask(side, (rows, cols))),
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
    )
    head = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 4))
    return SimilarityModel(backbone, head).double()


def images(side=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, side, side, generator=g, dtype=dtype), torch.rand(
        1, 3, side, side, generator=g, dtype=dtype
    )


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before):
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def finite_difference_gradients(model, x1, x2, eps=1e-6):
    """Central differences of S w.r.t. every pixel of x1 and of x2 (all perturbations in one batch)."""
    n = x1.numel()
    basis = torch.eye(n, dtype=x1.dtype).view(n, *x1.shape[1:]) * eps
    a, b = x1.expand(n, -1, -1, -1), x2.expand(n, -1, -1, -1)
    with torch.no_grad():
        d1 = (model.similarity(a + basis, b) - model.similarity(a - basis, b)) / (2 * eps)
        d2 = (model.similarity(a, b + basis) - model.similarity(a, b - basis)) / (2 * eps)
    return d1.view_as(x1), d2.view_as(x2)


def test_input_x_gradient_matches_finite_differences():
    model = tiny_model()
    x1, x2 = images()
    before = state(model)
    map1, map2 = input_x_gradient(model, x1, x2)
    fd1, fd2 = finite_difference_gradients(model, x1, x2)
    assert map1.shape == map2.shape == (6, 6)
    torch.testing.assert_close(map1, (x1 * fd1).abs().amax(1)[0], rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(map2, (x2 * fd2).abs().amax(1)[0], rtol=1e-6, atol=1e-10)
    assert map1.max() > 0 and map2.max() > 0
    assert_untouched(model, before)


def test_pairs_in_a_batch_are_independent():
    model = tiny_model()
    x1, x2 = images()
    y1, y2 = images(seed=7)
    g1, g2 = pair_gradients(model, torch.cat([x1, y1]), torch.cat([x2, y2]))
    for k, (a, b) in enumerate([(x1, x2), (y1, y2)]):
        h1, h2 = pair_gradients(model, a, b)
        torch.testing.assert_close(g1[k : k + 1], h1)
        torch.testing.assert_close(g2[k : k + 1], h2)


def test_guided_backprop_hand_computed_two_relu_net():
    # x = (1, 1): h1 = W1 x = (0, 3); h2 = W2 relu(h1) = (3, 3); y = W3 relu(h2) = -3.
    net = nn.Sequential(
        nn.Linear(2, 2, bias=False),
        nn.ReLU(inplace=True),
        nn.Linear(2, 2, bias=False),
        nn.ReLU(),
        nn.Linear(2, 1, bias=False),
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, 1.0]]))
        net[4].weight.copy_(torch.tensor([[1.0, -2.0]]))
    x = torch.ones(1, 2, requires_grad=True)
    # Plain: (1,-2)*1[h2>0] = (1,-2) -> W2^T = (3,-1) -> *1[h1>0] = (0,-1) -> W1^T = (-2,-1).
    (plain,) = torch.autograd.grad(net(x).sum(), x)
    assert plain.tolist() == [[-2.0, -1.0]]
    # Guided: clamp (1,-2) -> (1,0) -> W2^T = (1,1) -> clamp, mask -> (0,1) -> W1^T = (2,1).
    with guided_backprop(net):
        out = net(x)
        (guided,) = torch.autograd.grad(out.sum(), x)
    assert out.item() == -3.0
    assert guided.tolist() == [[2.0, 1.0]]
    assert net[1].inplace is True
    assert all(not m._forward_hooks for m in net.modules())
    (again,) = torch.autograd.grad(net(x).sum(), x)
    assert again.tolist() == [[-2.0, -1.0]]


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_guided_hooks_removed_when_forward_raises():
    model = tiny_model()
    model.head = nn.Sequential(nn.ReLU(), Exploding())
    x1, x2 = images()
    with pytest.raises(RuntimeError, match="boom"):
        input_x_gradient(model, x1, x2, guided=True)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="nn.ReLU"):
        with guided_backprop(nn.Sequential(nn.Linear(2, 2))):
            pass


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_guided_input_x_gradient_matches_captum():
    captum = pytest.importorskip("captum.attr")
    model = tiny_model(inplace=False)
    x1, x2 = images()
    ours1, ours2 = input_x_gradient(model, x1, x2, guided=True)
    plain1, _ = input_x_gradient(model, x1, x2)
    assert not torch.allclose(ours1, plain1)
    gbp = captum.GuidedBackprop(ScorePair(model))
    a1, a2 = gbp.attribute((x1, x2))
    torch.testing.assert_close(ours1, (x1 * a1).abs().amax(1)[0])
    torch.testing.assert_close(ours2, (x2 * a2).abs().amax(1)[0])


class ScorePair(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x1, x2):
        return self.model.similarity(x1, x2)


def test_smoothgrad_with_zero_sigma_is_input_x_gradient():
    model = tiny_model()
    x1 = torch.full((1, 3, 6, 6), 0.5, dtype=torch.float64)  # constant: canonical sigma = 0.15 * 0 = 0
    _, x2 = images()
    assert noise_sigma(x1, "canonical") == 0
    sg = smoothgrad(model, x1, x2, samples=5, noise_rule="canonical")
    ixg = input_x_gradient(model, x1, x2)
    for a, b in zip(sg, ixg):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="canonical"):
        noise_sigma(x1, "paper")


def test_smoothgrad_batching_seed_and_average():
    model = tiny_model()
    x1, x2 = images()
    before = state(model)
    one = smoothgrad(model, x1, x2, samples=10, batch_size=1)
    many = smoothgrad(model, x1, x2, samples=10, batch_size=16)
    again = smoothgrad(model, x1, x2, samples=10, batch_size=16)
    other = smoothgrad(model, x1, x2, samples=10, seed=1)
    for a, b, c, d in zip(one, many, again, other):
        torch.testing.assert_close(a, b)
        assert torch.equal(b, c)
        assert not torch.allclose(a, d)
    # Second implementation: draw the same noise sequence, one pair at a time, average the gradients.
    g = torch.Generator().manual_seed(0)
    sigma = 0.15 / float(x1.max() - x1.min())
    mean1 = torch.zeros_like(x1)
    mean2 = torch.zeros_like(x2)
    for _ in range(10):
        noise = sigma * torch.randn(x1.shape[1:], generator=g, dtype=torch.float32).to(x1.dtype)
        a = (x1 + noise).requires_grad_()
        b = (x2 + noise).requires_grad_()
        ga, gb = torch.autograd.grad(model.similarity(a, b).sum(), (a, b))
        mean1 += ga / 10
        mean2 += gb / 10
    torch.testing.assert_close(one[0], (x1 * mean1).abs().amax(1)[0])
    torch.testing.assert_close(one[1], (x2 * mean2).abs().amax(1)[0])
    assert_untouched(model, before)
    with pytest.raises(ValueError, match="same size"):
        smoothgrad(model, x1, x2[..., :4, :4], samples=2)


def test_interpolation_path():
    x0, xt = images()
    path = interpolation_path(x0, xt, 0.1)
    assert path.shape[0] == 10
    torch.testing.assert_close(path[0], x0[0])
    torch.testing.assert_close(path[-1], (0.1 * x0 + 0.9 * xt)[0])
    torch.testing.assert_close(path[3], (0.7 * x0 + 0.3 * xt)[0])


def test_averaged_transforms_is_mean_of_pairwise_gradients():
    model = tiny_model()
    x0, xt = images()
    before = state(model)
    map1, map2 = averaged_transforms(model, x0, xt, batch_size=4)
    # Independent: nine separate pairs (x0, x_l), l = 0.9 ... 0.1, gradients averaged by hand.
    g1 = torch.zeros_like(x0)
    g2 = torch.zeros_like(x0)
    for k in range(1, 10):
        lam = 1 - k / 10
        a = x0.clone().requires_grad_()
        b = (lam * x0 + (1 - lam) * xt).requires_grad_()
        ga, gb = torch.autograd.grad(model.similarity(a, b).sum(), (a, b))
        g1 += ga / 9
        g2 += gb / 9
    last = 0.1 * x0 + 0.9 * xt
    torch.testing.assert_close(map1, (x0 * g1).abs().amax(1)[0])
    torch.testing.assert_close(map2, (last * g2).abs().amax(1)[0])
    assert_untouched(model, before)


def test_averaged_transforms_identity_transform_gives_zero_maps():
    # cos(a, b) is stationary in a at a = b: d/da cos = b/(|a||b|) - cos(a,b) a/|a|^2 = 0, so every
    # path pair (x0, x0) has zero gradient in both images and both maps vanish.
    model = tiny_model()
    x0, _ = images()
    map1, map2 = averaged_transforms(model, x0, x0.clone())
    ixg1, _ = input_x_gradient(model, x0, x0.clone())
    assert float(map1.abs().max()) < 1e-12 and float(map2.abs().max()) < 1e-12
    assert float(ixg1.abs().max()) < 1e-12
    _, x2 = images(seed=3)
    assert float(input_x_gradient(model, x0, x2)[0].max()) > 1e-4  # the zero is not a property of the model


def test_averaged_transforms_options():
    model = tiny_model()
    x0, xt = images()
    plain = averaged_transforms(model, x0, xt)
    noisy = averaged_transforms(model, x0, xt, noise=True)
    noisy_again = averaged_transforms(model, x0, xt, noise=True)
    guided = averaged_transforms(model, x0, xt, guided=True)
    assert all(torch.equal(a, b) for a, b in zip(noisy, noisy_again))
    assert not torch.allclose(plain[0], noisy[0])
    assert not torch.allclose(plain[0], guided[0])
    # Without x2 the transformed copy is the family transform drawn with the same seed.
    x0f = x0.float()
    own = averaged_transforms(model.float(), x0f, None, transform="color_jitter", seed=4)
    explicit = averaged_transform(x0f, "color_jitter", torch.Generator().manual_seed(4))
    ref = averaged_transforms(model, x0f, explicit, seed=4)
    for a, b in zip(own, ref):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pixel-aligned"):
        averaged_transforms(model, x0, xt[..., :5, :5])
    with pytest.raises(ValueError, match="step"):
        averaged_transforms(model, x0, xt, step=0.9)


@pytest.mark.parametrize("method", ["input_x_gradient", "smoothgrad", "averaged_transforms"])
def test_patch_only_model_lights_up_the_patch(method):
    rows, cols = slice(2, 5), slice(4, 8)
    model = patch_model(rows=rows, cols=cols)
    x1, x2 = images(side=10, seed=5)
    params = {"samples": 4} if method == "smoothgrad" else {}
    map1, map2 = base.get_method(method).function(model, x1, x2, **params)
    inside = torch.zeros(10, 10, dtype=torch.bool)
    inside[rows, cols] = True
    for m in (map1, map2):
        assert float(m[~inside].abs().max()) == 0.0
        assert float(m[inside].min()) > 0.0


def test_registered_with_defaults_and_explain_entry_point():
    methods = base.list_methods()
    assert methods["input_x_gradient"]["guided"] is False
    assert methods["smoothgrad"]["samples"] == 50 and methods["smoothgrad"]["noise_rule"] == "paper"
    assert methods["averaged_transforms"]["transform"] == "combine" and methods["averaged_transforms"]["step"] == 0.1
    model = tiny_model(dtype=torch.float32)
    x1, x2 = (x.float() for x in images(side=8))
    result = base.explain(model, x1, x2, method="smoothgrad", samples=3, batch_size=2)
    assert result.map1.shape == (8, 8) and result.params["samples"] == 3
    single = base.explain(model, x1, method="averaged_transforms", transform="grayscale")
    assert single.map2.shape == (8, 8)
    with pytest.raises(ValueError, match="noise_rule"):
        base.explain(model, x1, x2, method="smoothgrad", noise_rule="wrong")
