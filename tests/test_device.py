"""The device rule (the model lives where its modules are) and the seed rule (random numbers come from
CPU generators, so a seed means the same map on every device), checked without a GPU."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import cl_explain
from cl_explain import explain, list_methods
from cl_explain.explainers.base import get_method
from cl_explain.metrics import PAPER_METRICS, evaluate_pair, random_explanation
from cl_explain.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel
from cl_explain.utils import batch_from_memory, cpu_generator, resolve_batch_size

from helpers import FAST, tiny_model, tiny_pair, tiny_parts

#: The package's own methods.
PACKAGE_METHODS = sorted(list_methods())


# ------------------------------------------------------------------------------------ device rule


def test_device_follows_the_wrapped_modules():
    backbone, head = (part.to("meta") for part in tiny_parts())
    model = SimilarityModel(backbone, head, normalize=(IMAGENET_MEAN, IMAGENET_STD))
    assert model.device == torch.device("meta")
    assert model.mean.device == model.std.device == torch.device("meta")  # the constants went along
    assert tiny_model().to("meta").device == torch.device("meta")
    assert tiny_model().device == torch.device("cpu")


def test_a_model_without_parameters_is_on_the_cpu():
    class Ones(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ones(x.shape[0], 4, 2, 2, dtype=x.dtype, device=x.device)

    assert SimilarityModel(Ones(), None).device == torch.device("cpu")


def test_modules_on_different_devices_get_an_error_naming_the_fix():
    backbone, head = tiny_parts()
    with pytest.raises(RuntimeError, match=r"different devices \(cpu, meta\).*model\.to\(device\)"):
        SimilarityModel(backbone.to("meta"), head)
    model = tiny_model()
    model.head.to("meta")  # moved one module after wrapping
    with pytest.raises(RuntimeError, match=r"model\.to\(device\)"):
        model.device
    with pytest.raises(RuntimeError, match=r"model\.to\(device\)"):
        explain(model, *tiny_pair(), "gradcam")


# -------------------------------------------------------------------------------------- seed rule

#: torch functions and tensor methods that draw random numbers.
DRAWS = {
    "rand",
    "randn",
    "randint",
    "randperm",
    "normal",
    "bernoulli",
    "multinomial",
    "poisson",
    "rand_like",
    "randn_like",
    "randint_like",
    "normal_",
    "uniform_",
    "random_",
    "exponential_",
    "bernoulli_",
    "cauchy_",
    "log_normal_",
    "geometric_",
}
#: The code that methods and metrics run (model training and the exercises build CPU-only models).
SCANNED = ("explainers", "metrics", "data/transforms.py", "models/similarity.py", "precision.py", "fidelity.py")


def _scanned_files() -> list[Path]:
    root = Path(cl_explain.__file__).parent
    files = []
    for entry in SCANNED:
        path = root / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def test_every_random_draw_in_the_source_names_a_cpu_generator():
    """Static half of the seed rule: each draw passes generator=, none picks a device other than the CPU,
    no *_like draw (they follow their input's device), and generators come only from cpu_generator."""
    problems = []
    for path in _scanned_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            where, name = f"{path.name}:{node.lineno}", node.func.attr
            keywords = {k.arg: k.value for k in node.keywords}
            if name == "Generator":
                problems.append(f"{where} makes a torch.Generator; use cl_explain.utils.cpu_generator")
            elif name in DRAWS:
                if name.endswith("_like"):
                    problems.append(f"{where} {name} draws on its input's device")
                if "generator" not in keywords:
                    problems.append(f"{where} {name} draws from a global generator")
                device = keywords.get("device")
                if device is not None and not (isinstance(device, ast.Constant) and device.value == "cpu"):
                    problems.append(f"{where} {name} draws on device {ast.unparse(device)}")
    assert not problems, "\n".join(problems)


class RecordDraws(TorchFunctionMode):
    """Records every random draw made through torch: (name, generator device or None, output device)."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[tuple[str, str | None, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name in DRAWS:
            generator = kwargs.get("generator")
            device = out.device.type if isinstance(out, torch.Tensor) else "?"
            self.draws.append((name, None if generator is None else generator.device.type, device))
        return out


def test_every_method_and_metric_draws_only_from_cpu_generators():
    """Run-time half of the seed rule, over every registered method (so a new one is covered) and every
    metric: each random draw names a generator, and that generator is a CPU one."""
    model, (x1, x2) = tiny_model(), tiny_pair()
    with RecordDraws() as recorder:
        for method in PACKAGE_METHODS:
            spec = get_method(method)
            if not spec.applies_to(model):  # ViT-only methods (token occlusion, rollout) draw nothing at random
                continue
            explanation = explain(model, x1, x2 if spec.needs_pair else None, method, **FAST.get(method, {}))
            evaluate_pair(model, x1, x2, explanation, metrics=PAPER_METRICS, on_not_applicable="skip", n_draws=2)
        random_explanation(x1, x2, seed=1, cells=3)
    named = {name for name, _, _ in recorder.draws}
    assert {"rand", "randn", "randperm"} <= named  # the recorder sees the draws it should check
    wrong = [draw for draw in recorder.draws if draw[1] != "cpu" or draw[2] != "cpu"]
    assert not wrong, f"draws without a CPU generator: {wrong[:5]}"


def test_cpu_generator_matches_the_documented_rule():
    generator = cpu_generator(3)
    assert generator.device == torch.device("cpu")
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------------------- batch_size="auto"


def test_batch_from_memory_fills_the_share_and_stays_in_bounds():
    assert batch_from_memory(8e9, 1e8) == 40  # half of 8 GB at 100 MB an image
    assert batch_from_memory(8e9, 1e8, share=0.25) == 20
    assert batch_from_memory(1e12, 1e6) == 1024 and batch_from_memory(1e6, 1e9) == 1
    assert batch_from_memory(1e9, 0) == 1024


def test_auto_batch_size_is_the_default_off_the_gpu():
    model, (x1, x2) = tiny_model(), tiny_pair()
    for method in ("occlusion", "smoothgrad"):
        auto = explain(model, x1, x2, method, batch_size="auto", **FAST.get(method, {}))
        plain = explain(model, x1, x2, method, **FAST.get(method, {}))
        assert auto.params["batch_size"] == plain.params["batch_size"]
        assert all(torch.equal(a, b) for a, b in zip(auto.maps, plain.maps))
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        explain(model, x1, x2, "occlusion", batch_size="large")


def test_auto_batch_size_on_a_gpu_comes_from_a_probe_pass(monkeypatch):
    """The CUDA branch with its memory queries stubbed: 8 probe images that peak at 8 MB, 1 GB free."""
    import cl_explain.utils as utils

    model, (x1, _) = tiny_model(), tiny_pair()
    monkeypatch.setattr(SimilarityModel, "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(utils, "to_device", lambda tensor, device, dtype=None: tensor)
    probed = []
    stubs = {
        "synchronize": lambda device=None: None,
        "reset_peak_memory_stats": lambda device=None: None,
        "memory_allocated": lambda device=None: 1_000_000,
        "max_memory_allocated": lambda device=None: 9_000_000,
        "mem_get_info": lambda device=None: (1e9, 2e9),
    }
    for name, stub in stubs.items():
        monkeypatch.setattr(torch.cuda, name, stub)
    model.backbone.register_forward_hook(lambda module, inputs, output: probed.append(inputs[0].shape[0]))
    assert resolve_batch_size("auto", model, x1, default=64) == 500  # 0.5 * 1 GB / (8 MB / 8 images)
    assert probed == [8]
    assert resolve_batch_size(12, model, x1, default=64) == 12
