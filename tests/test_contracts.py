"""Contracts every registered method and metric meets, parametrised over the registries.

A method or metric added with one decorated function is collected here without editing any list:
finite output of the right shape, the same result under the same seed, results that do not depend
on batch_size, bad input rejected with an error that says what is wrong, and no hook, autograd or
module mode left behind.
"""

from __future__ import annotations

import pytest
import torch

from cl_explain import explain, list_methods, list_metrics, seed_everything
from cl_explain.explainers.base import get_method
from cl_explain.metrics import evaluate_pair, get_metric, register_metric
from cl_explain.models.vit_checkpoints import vit_from_state_dict

from helpers import FAST, patch_mask, tiny_model, tiny_pair, tiny_vit_state

METHODS = sorted(list_methods())
METRICS = list(list_metrics())


def model_and_pair(method: str):
    """The tiny ViT for methods that need one (32 px images), else the tiny CNN (24 px)."""
    if get_method(method).vit_only:
        return vit_from_state_dict(tiny_vit_state(32, 1, 8, 4, 0, False), name="tiny-vit").eval(), tiny_pair(32)
    return tiny_model().eval(), tiny_pair()


def state(model: torch.nn.Module) -> dict:
    """What a method or metric must leave as it found it."""
    modules = list(model.modules())
    return {
        "training": [m.training for m in modules],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [
            len(m._forward_hooks)
            + len(m._forward_pre_hooks)
            + len(m._backward_hooks)
            + len(getattr(m, "_backward_pre_hooks", {}))
            for m in modules
        ],
        "grad_enabled": torch.is_grad_enabled(),
        "grads": [p.grad is None for p in model.parameters()],
    }


def run(model, x1, x2, method: str, **params):
    spec = get_method(method)
    return explain(model, x1, x2 if spec.needs_pair else None, method, **{**FAST.get(method, {}), **params})


# ------------------------------------------------------------------------------------------ methods


@pytest.mark.parametrize("method", METHODS)
def test_method_gives_finite_maps_of_the_right_shape(method):
    model, (x1, x2) = model_and_pair(method)
    e = run(model, x1, x2, method)
    assert e.image_size == tuple(x1.shape[-2:])
    assert e.map1.dim() == 2 and torch.isfinite(e.map1).all()
    assert e.map2 is None or (e.map2.dim() == 2 and torch.isfinite(e.map2).all())
    if get_method(method).needs_pair:
        assert e.map2 is not None, "a method that explains a pair gives a map for each image"
    assert e.resized().map1.shape == x1.shape[-2:]


@pytest.mark.parametrize("method", METHODS)
def test_method_is_deterministic_under_a_seed(method):
    model, (x1, x2) = model_and_pair(method)
    seed_everything(0)
    first = run(model, x1, x2, method)
    seed_everything(0)
    again = run(model, x1, x2, method)
    for a, b in zip(first.maps, again.maps):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_method_does_not_depend_on_batch_size(method):
    model, (x1, x2) = model_and_pair(method)
    one, many = run(model, x1, x2, method, batch_size=1), run(model, x1, x2, method, batch_size=7)
    for a, b in zip(one.maps, many.maps):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_method_rejects_bad_input_with_a_clear_error(method):
    model, (x1, x2) = model_and_pair(method)
    with pytest.raises(ValueError, match=r"x1 must be in \[0, 1\]"):
        run(model, x1 * 3, x2, method)
    with pytest.raises(ValueError, match=f"unknown parameter.*{method}"):
        run(model, x1, x2, method, no_such_parameter=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        run(model, x1, x2, method, batch_size=0)
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        run(model, x1, x2, method, precision="fp16")
    if get_method(method).needs_pair:
        with pytest.raises(ValueError, match="pass x2"):
            explain(model, x1, None, method, **FAST.get(method, {}))


@pytest.mark.parametrize("method", METHODS)
def test_method_leaves_no_hook_or_mode_behind(method):
    model, (x1, x2) = model_and_pair(method)
    before = state(model)
    run(model, x1, x2, method)
    assert state(model) == before


# ------------------------------------------------------------------------------------------ metrics


def scored(metric: str, **options):
    """The metric on the tiny CNN's pair explained by Grad-CAM (masks: a patch in both views)."""
    model, (x1, x2) = tiny_model().eval(), tiny_pair()
    explanation = explain(model, x1, x2, "gradcam")
    mask = patch_mask(x1.shape[-1], (slice(4, 14), slice(6, 18)))
    masks = (mask, mask) if get_metric(metric).needs_masks else None
    return model, evaluate_pair(model, x1, x2, explanation, [metric], masks=masks, **options)


@pytest.mark.parametrize("metric", METRICS)
def test_metric_gives_finite_values_under_its_name(metric):
    _, values = scored(metric)
    assert metric in values
    assert all(key == metric or key in (f"{metric}_1", f"{metric}_2") for key in values)
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())


@pytest.mark.parametrize("metric", METRICS)
def test_metric_is_deterministic_and_does_not_depend_on_batch_size(metric):
    _, first = scored(metric)
    _, again = scored(metric)
    _, single = scored(metric, batch_size=1)
    assert first == again
    assert single == pytest.approx(first, abs=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_metric_rejects_bad_input_with_a_clear_error(metric):
    model, (x1, x2) = tiny_model().eval(), tiny_pair()
    explanation = explain(model, x1, x2, "gradcam")
    with pytest.raises(ValueError, match="unknown metric option"):
        evaluate_pair(model, x1, x2, explanation, [metric], no_such_option=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        evaluate_pair(model, x1, x2, explanation, [metric], batch_size=0)
    bigger = torch.nn.functional.interpolate(x1, scale_factor=2)
    with pytest.raises(ValueError, match="explain the same images you evaluate"):
        evaluate_pair(model, bigger, bigger, explanation, [metric])


@pytest.mark.parametrize("metric", METRICS)
def test_metric_leaves_no_hook_or_mode_behind(metric):
    model = tiny_model().eval()
    before = state(model)
    x1, x2 = tiny_pair()
    explanation = explain(model, x1, x2, "gradcam")
    mask = patch_mask(x1.shape[-1], (slice(4, 14), slice(6, 18)))
    evaluate_pair(model, x1, x2, explanation, [metric], masks=(mask, mask))
    assert state(model) == before


@pytest.mark.parametrize("metric", METRICS)
def test_metric_metadata_is_complete(metric):
    spec = get_metric(metric)
    assert spec.abbreviation and spec.description and callable(spec.compute)
    assert spec.label.startswith(spec.abbreviation) and spec.direction in list_metrics()[metric]


# ------------------------------------------------------------------------------------- registration


def test_a_metric_is_one_decorated_function_and_lives_for_its_test_only():
    @register_metric("_test_map_mean", higher_is_better=True, abbreviation="MM", description="mean of map1")
    def map_mean(model, items, options):
        return [{"_test_map_mean": {"_test_map_mean": float(item.maps[0].mean())}} for item in items]

    model, (x1, x2) = tiny_model().eval(), tiny_pair()
    explanation = explain(model, x1, x2, "gradcam")
    values = evaluate_pair(model, x1, x2, explanation, ["_test_map_mean"])
    assert values == {"_test_map_mean": pytest.approx(float(explanation.resized().map1.mean()))}
    assert "mean of map1" in list_metrics()["_test_map_mean"]
    with pytest.raises(ValueError, match="registered twice"):
        register_metric("_test_map_mean", higher_is_better=True, abbreviation="MM", description="again")(map_mean)


def test_metrics_registered_by_other_tests_are_gone():
    assert "_test_map_mean" not in list_metrics()
    assert not [name for name in list_methods() if name.startswith("_test")]


def test_a_family_is_computed_by_one_function_and_options_agree():
    def one(model, items, options):
        return [{} for _ in items]

    register_metric("_test_a", higher_is_better=True, abbreviation="A", description="a", family="_test_f")(one)
    with pytest.raises(ValueError, match="computed by another function"):
        register_metric("_test_b", higher_is_better=True, abbreviation="B", description="b", family="_test_f")(
            lambda model, items, options: []
        )
    with pytest.raises(ValueError, match="option 'n_draws' defaults to 3"):
        register_metric("_test_c", higher_is_better=True, abbreviation="C", description="c", options={"n_draws": 3})(
            one
        )
