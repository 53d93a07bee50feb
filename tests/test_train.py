"""Objectives against explicit hand computations, and bit-identical tiny training runs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cl_explain.data.scenes import load_split
from cl_explain.train import (
    TrainConfig, barlow_twins_loss, knn_accuracy, nt_xent, simsiam_loss, train,
)


def test_nt_xent_matches_explicit_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t = 0.5
    z = torch.cat([z1, z2])
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        partner = (i + b) % n
        cos = [float(F.cosine_similarity(z[i], z[j], dim=0)) / t for j in range(n)]
        denominator = sum(math.exp(cos[j]) for j in range(n) if j != i)
        total += -math.log(math.exp(cos[partner]) / denominator)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(total / n, rel=1e-5)


def test_nt_xent_is_low_for_matching_views_and_high_for_shuffled():
    z = torch.eye(6)
    assert float(nt_xent(z, z, 0.1)) < 0.01
    assert float(nt_xent(z, z.roll(1, 0), 0.1)) > 5


def test_barlow_twins_matches_explicit_cross_correlation():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    lambd, n, d = 0.1, 5, 3

    def standardise(z):
        rows = []
        for j in range(d):
            column = [float(z[i, j]) for i in range(n)]
            mean = sum(column) / n
            var = sum((v - mean) ** 2 for v in column) / n
            rows.append([(v - mean) / math.sqrt(var + 1e-5) for v in column])
        return rows  # d x n

    a, b = standardise(z1), standardise(z2)
    expected = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            expected += (1 - c) ** 2 if i == j else lambd * c**2
    assert float(barlow_twins_loss(z1, z2, lambd)) == pytest.approx(expected, rel=1e-5)
    # identical standardised inputs with decorrelated features give ~zero loss
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(barlow_twins_loss(x, x, 1.0)) < 1e-4


def test_simsiam_value_and_stop_gradient():
    p1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    p2 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    z1 = torch.tensor([[1.0, 1.0]], requires_grad=True)
    z2 = torch.tensor([[2.0, 0.0]], requires_grad=True)
    loss = simsiam_loss(p1, p2, z1, z2)
    # cos(p1, z2) = 1, cos(p2, z1) = 1/sqrt(2)
    assert float(loss.detach()) == pytest.approx(-(1 + 1 / math.sqrt(2)) / 2)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # projections are stop-gradient targets
    assert p2.grad is not None and float(p2.grad.abs().sum()) > 0


def test_knn_accuracy_on_separable_toy_data():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = torch.tensor([0, 0, 1, 1])
    test_x = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    assert knn_accuracy(train_x, train_y, test_x, torch.tensor([0, 1]), k=2) == 1.0
    assert knn_accuracy(train_x, train_y, test_x, torch.tensor([1, 0]), k=2) == 0.0


@pytest.fixture(scope="module")
def tiny_scenes():
    return load_split("train", n=16, seed=3, size=32, cache=False)


@pytest.mark.parametrize("objective", ["simclr", "barlow-twins", "simsiam", "supervised"])
def test_tiny_training_is_bit_identical(objective, tiny_scenes):
    config = TrainConfig(objective, epochs=1, batch_size=8, width=4, size=32, n_train=16, threads=1, max_steps=2)
    model_a, info_a = train(config, tiny_scenes, log=lambda message: None)
    model_b, _ = train(config, tiny_scenes, log=lambda message: None)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    assert info_a["steps"] == 2 and math.isfinite(info_a["losses"][-1])
    # and training actually changed the weights from their initialisation
    torch.manual_seed(config.seed)
    from cl_explain.models.embedded import build_backbone

    init = build_backbone(config.width).state_dict()
    assert not torch.equal(init["stages.layer4.conv2.weight"], model_a.backbone.state_dict()["stages.layer4.conv2.weight"])


def test_different_seed_gives_different_weights(tiny_scenes):
    base = dict(epochs=1, batch_size=8, width=4, size=32, n_train=16, threads=1, max_steps=1)
    a, _ = train(TrainConfig("simclr", seed=0, **base), tiny_scenes, log=lambda message: None)
    b, _ = train(TrainConfig("simclr", seed=1, **base), tiny_scenes, log=lambda message: None)
    assert not torch.equal(a.backbone.state_dict()["stages.stem.conv1.weight"], b.backbone.state_dict()["stages.stem.conv1.weight"])


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig("moco")
