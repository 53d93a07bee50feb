"""The bf16 policy: native hardware only, the backbone alone in bfloat16, a verdict for every method and
metric family, refusals that say why, and the accepted ones keeping the fp32 ranking."""

from __future__ import annotations

import platform
import re

import pytest
import torch

from cl_explain import explain, list_methods, load_model
from cl_explain import precision as policy
from cl_explain.maps import rank_correlation
from cl_explain.data.pairings import scene_pairs
from cl_explain.explainers.base import get_method
from cl_explain.metrics import evaluate_pair
from cl_explain.precision import BF16_ACCEPTED, BF16_REFUSED, BF16_UNMEASURED, bf16_supported

from helpers import FAST, tiny_model, tiny_pair

PACKAGE_METHODS = sorted(list_methods())

FAMILIES = ("insertion", "deletion", "drop")
FAMILY_METRIC = {
    "insertion": "insertion_conditional",
    "deletion": "deletion_conditional",
    "drop": "average_drop_conditional",
}


@pytest.fixture
def native(monkeypatch):
    """Pretend the CPU computes bf16 natively (here it is emulated: slow, but the same numbers)."""
    monkeypatch.setattr(policy, "bf16_supported", lambda device: True)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 instruction-set rule")
def test_native_bf16_means_the_bf16_instructions(monkeypatch):
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert bf16_supported("cpu") == expected
    # oneDNN's own check is also True on plain AVX512, where bf16 is converted: that must not count
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not bf16_supported("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert bf16_supported("cpu")
    assert not bf16_supported("meta")


def test_every_method_and_metric_family_has_a_verdict():
    names = [*PACKAGE_METHODS, *FAMILIES]
    assert sorted(set(BF16_ACCEPTED) | set(BF16_REFUSED) | set(BF16_UNMEASURED)) == sorted(names)
    assert not set(BF16_UNMEASURED) & (set(BF16_ACCEPTED) | set(BF16_REFUSED))
    assert not set(BF16_ACCEPTED) & set(BF16_REFUSED)
    for name, reason in BF16_REFUSED.items():
        assert re.search(r"\d\.\d{2}", reason), f"{name}: a refusal states the measured fidelity"


@pytest.mark.parametrize("method", sorted(set(BF16_REFUSED) & set(PACKAGE_METHODS)))
def test_a_refused_method_says_why_even_where_bf16_is_native(native, method):
    model, (x1, x2) = tiny_model(), tiny_pair()
    x2 = x2 if get_method(method).needs_pair else None
    with pytest.raises(ValueError, match=rf"{method} refuses precision='bf16': .*Use precision='fp32'"):
        explain(model, x1, x2, method, precision="bf16", **FAST.get(method, {}))


def test_refused_metric_families_say_why(native):
    model, (x1, x2) = tiny_model(), tiny_pair()
    explanation = explain(model, x1, x2, "gradcam")
    for family in sorted(set(BF16_REFUSED) & set(FAMILIES)):
        with pytest.raises(ValueError, match=f"{family} refuses precision='bf16'"):
            evaluate_pair(model, x1, x2, explanation, metrics=[FAMILY_METRIC[family]], precision="bf16")


def test_bf16_without_native_hardware_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(policy, "bf16_supported", lambda device: False)
    model, (x1, x2) = tiny_model(), tiny_pair()
    accepted = sorted(set(BF16_ACCEPTED) & set(PACKAGE_METHODS))[0]
    with pytest.raises(RuntimeError, match="needs native bfloat16.*Use precision='fp32'"):
        explain(model, x1, x2, accepted, precision="bf16", **FAST.get(accepted, {}))
    with pytest.raises(ValueError, match=r"precision='fp16' is not one of"):
        explain(model, x1, x2, accepted, precision="fp16")


def test_only_the_backbone_runs_in_bf16_and_the_setting_is_restored(native):
    model, (x1, x2) = tiny_model(), tiny_pair()
    seen = {}

    def record(name):
        def hook(module, inputs, output) -> None:  # returns None: the output is left as it is
            seen.setdefault(name, (inputs[0].dtype, output.dtype))

        return hook

    hooks = [model.backbone.register_forward_hook(record("backbone")), model.head.register_forward_hook(record("head"))]
    try:
        accepted = sorted(set(BF16_ACCEPTED) & set(PACKAGE_METHODS))[0]
        explain(model, x1, x2, accepted, precision="bf16", **FAST.get(accepted, {}))
    finally:
        for hook in hooks:
            hook.remove()
    # the backbone takes float32 pixels and returns bf16 features; the head sees them cast back to float32
    assert seen == {"backbone": (torch.float32, torch.bfloat16), "head": (torch.float32, torch.float32)}
    assert not model._bf16_backbone
    with pytest.raises(KeyError):
        with model.bf16_backbone():
            raise KeyError("inside the block")
    assert not model._bf16_backbone


def test_accepted_methods_keep_the_fp32_ranking_on_the_embedded_model(native):
    """The measured property behind the policy, on one scene pair (Spearman >= 0.99 to fp32)."""
    model, pair = load_model("embedded-simclr"), scene_pairs(1, "test", seed=0)[0]
    for method in sorted(set(BF16_ACCEPTED) & set(PACKAGE_METHODS)):
        x2 = pair.x2 if get_method(method).needs_pair else None
        params = {"stride": 4} if "occlusion" in method and method != "pairwise_occlusion" else {}
        fp32 = explain(model, pair.x1, x2, method, **params)
        bf16 = explain(model, pair.x1, x2, method, precision="bf16", **params)
        for a, b in zip(fp32.maps, bf16.maps):
            assert rank_correlation(a, b) >= 0.99, method
