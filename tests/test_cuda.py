"""On a GPU: every method and metric gives the CPU's result (parity), a seed means the same map on both
devices (the seed rule), and a model whose modules already sit on the GPU works (the device rule).

Skipped, with the reason, where torch sees no CUDA device. TF32 is switched off inside these tests:
with it, GPU matmuls and convolutions round to 10 mantissa bits, which is a precision choice, not
a device difference. scripts/gpu_check.py runs this file as part of its one-go check.
"""

from __future__ import annotations

import pytest
import torch

from cl_explain import explain, list_methods
from cl_explain.explainers.base import get_method
from cl_explain.metrics import PAPER_METRICS, evaluate_pair, random_explanation, randomization_test
from cl_explain.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel

from cl_explain.maps import rank_correlation

from helpers import FAST, tiny_pair, tiny_parts

PACKAGE_METHODS = sorted(list_methods())

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU checks need one")


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


#: Maps with a threshold or a strict comparison inside (Pixel Invariance zeroes weights below 0.5,
#: pairwise occlusion credits the image with the smaller norm): rounding may flip single values, so
#: only their ranking is compared.
THRESHOLDED = ("pixel_invariance", "pairwise_occlusion")


def models() -> tuple[SimilarityModel, SimilarityModel]:
    """The same tiny model on the CPU and on the GPU."""
    cpu = SimilarityModel(*tiny_parts(), normalize=(IMAGENET_MEAN, IMAGENET_STD), name="tiny")
    gpu = SimilarityModel(*tiny_parts(), normalize=(IMAGENET_MEAN, IMAGENET_STD), name="tiny").to("cuda")
    return cpu, gpu


def test_modules_already_on_the_gpu_make_a_gpu_model():
    backbone, head = (part.to("cuda") for part in tiny_parts())
    model = SimilarityModel(backbone, head, normalize=(IMAGENET_MEAN, IMAGENET_STD))
    assert model.device.type == "cuda" and model.mean.device.type == "cuda"
    x1, x2 = tiny_pair()  # CPU inputs: explain moves them
    for method in ("gradcam", "occlusion", "smoothgrad"):
        result = explain(model, x1, x2, method, **FAST.get(method, {}))
        assert result.map1.device.type == "cpu" and torch.isfinite(result.map1).all()
    backbone, head = tiny_parts()
    with pytest.raises(RuntimeError, match=r"model\.to\(device\)"):
        SimilarityModel(backbone.to("cuda"), head)


@pytest.mark.parametrize("method", PACKAGE_METHODS)
def test_every_method_matches_the_cpu(method):
    cpu, gpu = models()
    if not get_method(method).applies_to(cpu):
        pytest.skip(f"{method} does not apply to the tiny CNN (a Vision Transformer method)")
    x1, x2 = tiny_pair()
    x2 = x2 if get_method(method).needs_pair else None
    params = FAST.get(method, {})
    on_cpu, on_gpu = explain(cpu, x1, x2, method, **params), explain(gpu, x1, x2, method, **params)
    for a, b in zip(on_cpu.maps, on_gpu.maps):
        assert rank_correlation(a, b) >= 0.99
        if method not in THRESHOLDED:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max()))
    assert on_cpu.similarity == pytest.approx(on_gpu.similarity, abs=1e-5)


def test_every_metric_matches_the_cpu():
    cpu, gpu = models()
    x1, x2 = tiny_pair()
    for method in ("gradcam", "occlusion", "smoothgrad"):
        explanation = explain(cpu, x1, x2, method, **FAST.get(method, {}))
        values = [
            evaluate_pair(m, x1, x2, explanation, metrics=PAPER_METRICS, on_not_applicable="skip", n_draws=2)
            for m in (cpu, gpu)
        ]
        assert values[0].keys() == values[1].keys()
        for key, value in values[0].items():
            if "increase" in key and values[0].get(key.replace("increase", "drop"), 1.0) == 0.0:
                continue  # S did not drop: 1[score > S] may flip on rounding when score equals S
            tolerance = 1e-2 * max(1.0, abs(value)) if key.startswith("max_sensitivity") else 1e-4
            assert values[1][key] == pytest.approx(value, abs=tolerance), key


def test_a_seed_means_the_same_map_on_both_devices():
    """The seed rule: erasures, noise and augmentations are drawn on the CPU, so the maps agree."""
    cpu, gpu = models()
    x1, x2 = tiny_pair()
    for method in ("pairwise_occlusion", "smoothgrad", "averaged_transforms", "pixel_invariance"):
        x = x2 if get_method(method).needs_pair else None
        a = explain(cpu, x1, x, method, seed=7, **FAST.get(method, {}))
        b = explain(gpu, x1, x, method, seed=7, **FAST.get(method, {}))
        assert rank_correlation(a.map1, b.map1) >= 0.99, method
    assert torch.equal(random_explanation(x1, x2, seed=3).map1, random_explanation(x1.cuda(), x2.cuda(), seed=3).map1)
    steps = [randomization_test(m, x1, x2, "gradcam", seed=2)["spearman"] for m in (cpu, gpu)]
    assert (steps[0] - steps[1]).abs().max() < 1e-3  # the re-initialised weights are the same on both


def test_bf16_runs_under_the_policy_on_a_gpu_with_bf16():
    from cl_explain.precision import BF16_ACCEPTED, bf16_supported

    if not bf16_supported("cuda"):
        pytest.skip("this GPU has no native bfloat16")
    _, gpu = models()
    x1, x2 = tiny_pair()
    for method in sorted(set(PACKAGE_METHODS) & set(BF16_ACCEPTED)):
        x = x2 if get_method(method).needs_pair else None
        result = explain(gpu, x1, x, method, precision="bf16", **FAST.get(method, {}))
        assert all(torch.isfinite(m).all() for m in result.maps)
    assert not gpu._bf16_backbone  # the backbone's precision is restored
