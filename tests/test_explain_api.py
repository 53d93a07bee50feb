"""The explain() API: partner images of Averaged Transforms (scored by the metrics) and per-method defaults."""

from dataclasses import replace

import torch
from torch import nn

from cl_explain import evaluate_pair, explain
from cl_explain.data.transforms import averaged_transform
from cl_explain.models.similarity import SimilarityModel


def small_model():
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
    )
    return SimilarityModel(backbone, nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)))


def test_partner_is_the_seeded_family_transform_and_the_similarity_is_of_that_pair():
    model = small_model()
    x1 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    exp = explain(model, x1, None, "averaged_transforms", transform="grayscale", seed=3)
    expected = averaged_transform(x1, "grayscale", torch.Generator().manual_seed(3))
    assert torch.equal(exp.partner, expected)
    assert abs(exp.similarity - model.score(x1, expected)) < 1e-6
    # the same explanation as passing the partner explicitly
    explicit = explain(model, x1, expected, "averaged_transforms", transform="grayscale", seed=3)
    assert explicit.partner is None
    assert torch.allclose(exp.map1, explicit.map1) and torch.allclose(exp.map2, explicit.map2)


def test_pair_metrics_score_the_partner_pair():
    model = small_model()
    x1 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    unrelated = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    exp = explain(model, x1, None, "averaged_transforms", transform="blur")
    metrics = ["insertion_simultaneous", "deletion_simultaneous", "deletion_conditional"]
    via_partner = evaluate_pair(model, x1, unrelated, exp, metrics=metrics, step=16)
    bare = replace(exp, partner=None, method="hand-made")  # the same maps as a plain pair explanation
    explicit = evaluate_pair(model, x1, exp.partner, bare, metrics=metrics, step=16)
    with_unrelated = evaluate_pair(model, x1, unrelated, bare, metrics=metrics, step=16)
    assert set(metrics) <= set(via_partner)
    assert via_partner == explicit  # the unrelated x2 was replaced by the partner
    assert via_partner != with_unrelated


def test_gradient_methods_default_to_small_backward_batches():
    from cl_explain import list_methods

    methods = list_methods()
    assert methods["smoothgrad"]["batch_size"] == 8 and methods["averaged_transforms"]["batch_size"] == 8
    assert methods["occlusion"]["batch_size"] == 64
    model = small_model()
    # 8 pairs per pass at 224 px; smaller images hold proportionally more (area), at most 64
    for side, expected in ((224, 8), (112, 32), (16, 64)):
        x = torch.rand(1, 3, side, side)
        assert explain(model, x, x, "smoothgrad", samples=2).params["batch_size"] == expected
        assert explain(model, x, None, "averaged_transforms", step=0.5).params["batch_size"] == expected
    assert explain(model, x, x, "smoothgrad", samples=2, batch_size=3).params["batch_size"] == 3
