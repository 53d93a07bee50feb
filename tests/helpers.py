"""Models, images and test-only methods that several test modules share (one definition each)."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from cl_explain.explainers.base import register_method
from cl_explain.models.backbones import StagedBackbone
from cl_explain.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel
from cl_explain.utils import cpu_generator

# ------------------------------------------------------------------------------------ patch models


def patch_mask(side: int, patch: tuple[slice, slice]) -> torch.Tensor:
    """A side x side bool mask, True inside `patch` (rows, cols)."""
    inside = torch.zeros(side, side, dtype=torch.bool)
    inside[patch] = True
    return inside


class PatchOnly(nn.Module):
    """Zeroes everything outside a fixed H x W mask, so what follows it depends on the patch only."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float()[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def patch_features(side: int, patch: tuple[slice, slice], dim: int = 8, seed: int | None = None) -> nn.Sequential:
    """Non-negative features ReLU(W x) inside `patch`, zero elsewhere (W from `seed`, or torch's global RNG)."""
    conv = nn.Conv2d(3, dim, 1, bias=False)
    if seed is not None:
        with torch.no_grad():
            conv.weight.copy_(torch.randn(dim, 3, 1, 1, generator=torch.Generator().manual_seed(seed)))
    return nn.Sequential(conv, nn.ReLU(), PatchOnly(patch_mask(side, patch)))


# ------------------------------------------------------------------------ the metric tests' toys

SIDE = 16
PATCH = (slice(4, 8), slice(8, 12))  # the only pixels the patch model looks at (16 pixels = one step)


def patch_model(normalize=None) -> SimilarityModel:
    return SimilarityModel(patch_features(SIDE, PATCH, seed=0), None, normalize=normalize, name="patch-toy")


def images(seed: int = 0, n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, SIDE, SIDE, generator=g) for _ in range(n)]


def patch_map(reverse: bool = False) -> torch.Tensor:
    m = torch.zeros(SIDE, SIDE)
    m[PATCH] = 1.0
    return -m if reverse else m


def staged_model(seed: int = 0) -> SimilarityModel:
    torch.manual_seed(seed)
    stages = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
        layer1=nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()),
    )
    return SimilarityModel(StagedBackbone(stages), nn.Linear(6, 5), normalize=None, name="staged-toy")


CALLS = {"linear": 0}


def linear_method(model, x1, x2, batch_size=64):
    """Test: the channel mean of each image (a map linear in the input)."""
    CALLS["linear"] += 1
    return x1.mean(1)[0], x2.mean(1)[0]


def constant_method(model, x1, x2, batch_size=64):
    """Test: a fixed map that ignores the input."""
    ramp = torch.arange(float(SIDE * SIDE)).view(SIDE, SIDE) + 1
    return ramp, ramp.flip(0)


def nosens_method(model, x1, x2, batch_size=64):
    """Test: an occlusion-like method without max-sensitivity."""
    return x1.mean(1)[0], x2.mean(1)[0]


def cam_method(model, x1, x2, batch_size=64):
    """Test: CAM-like maps, features weighted by the summed head weights (depends on every block)."""
    with torch.no_grad():
        weights = model.head.weight.sum(0)[:, None, None]
        return tuple((model.features(x)[0] * weights).sum(0) for x in (x1, x2))


def register_test_methods() -> None:
    """Register the "_test_metrics_*" methods (inside a test: the registry fixture removes them afterwards)."""
    register_method("_test_metrics_linear", {})(linear_method)
    register_method("_test_metrics_constant", {})(constant_method)
    register_method("_test_metrics_nosens", {}, sensitivity=False)(nosens_method)
    register_method("_test_metrics_cam", {})(cam_method)


# ------------------------------------------------------------------------ tiny CNN and tiny ViT

TINY_SIDE = 24
#: Small settings that keep every registered method to well under a second on the tiny models.
FAST = {
    "occlusion": {"window": 8, "stride": 4},
    "context_agnostic_occlusion": {"window": 8, "stride": 4},
    "pairwise_occlusion": {"erasures": 8},
    "smoothgrad": {"samples": 3},
    "averaged_transforms": {"noise": True},
    "pixel_invariance": {"samples": 8, "epochs": 5},
}


def tiny_parts(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=4, padding=1), nn.ReLU()
    )
    return backbone, nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))


def tiny_model() -> SimilarityModel:
    return SimilarityModel(*tiny_parts(), normalize=(IMAGENET_MEAN, IMAGENET_STD), name="tiny")


def tiny_pair(side: int = TINY_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    generator = cpu_generator(5)
    return torch.rand(1, 3, side, side, generator=generator), torch.rand(1, 3, side, side, generator=generator)


def tiny_vit_state(width: int, depth: int, patch: int, grid: int, seed: int, dinov2: bool) -> dict[str, torch.Tensor]:
    """A small random state dict in the official DINO / DINOv2 (with 2 registers) key layout."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    state = {
        "cls_token": rand(1, 1, width),
        "pos_embed": rand(1, 1 + grid * grid, width),
        "patch_embed.proj.weight": rand(width, 3, patch, patch),
        "patch_embed.proj.bias": rand(width),
    }
    if dinov2:
        state.update(mask_token=torch.zeros(1, width), register_tokens=rand(1, 2, width))
    for i in range(depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            state.update({f"{b}{norm}.weight": 1 + rand(width), f"{b}{norm}.bias": rand(width)})
        for layer, (rows, cols) in {
            "attn.qkv": (3 * width, width),
            "attn.proj": (width, width),
            "mlp.fc1": (4 * width, width),
            "mlp.fc2": (width, 4 * width),
        }.items():
            state.update({f"{b}{layer}.weight": rand(rows, cols, scale=cols**-0.5), f"{b}{layer}.bias": rand(rows)})
        if dinov2:
            state.update({f"{b}ls1.gamma": 0.5 + rand(width), f"{b}ls2.gamma": 0.5 + rand(width)})
    state.update({"norm.weight": 1 + rand(width), "norm.bias": rand(width)})
    return state


# ------------------------------------------------------------- seeded weights of the checkpoint tests


class Weights:
    """Seeded pseudo-random weights that are cheap to make, save and load.

    Real-size files would take minutes to write here (SimCLRv2 2x and Barlow Twins hold ~130M and
    ~175M numbers). So, unless `compact=False`, every weight is a strided view into one pool of
    normal samples: output unit i reads the pool window starting STEP * i after the tensor's random
    offset. Units and layers all differ (a permuted, transposed or swapped weight changes the
    output), yet torch.save stores the pool once and torch.load restores the same views.
    References compute with contiguous copies (`dense`), which are much faster in convolutions.
    """

    STEP = 7

    def __init__(self, seed: int, compact: bool = True) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(1 << 21, generator=self.gen)
        self.compact = compact

    def matrix(self, shape) -> torch.Tensor:
        shape = tuple(shape)
        inner = torch.Size(shape[1:]).numel()
        strides = [self.STEP] + [torch.Size(shape[i + 1 :]).numel() for i in range(1, len(shape))]
        span = (shape[0] - 1) * self.STEP + inner
        offset = int(torch.randint(len(self.pool) - span, (1,), generator=self.gen))
        view = self.pool.as_strided(shape, strides, offset)
        return view if self.compact else view.clone(memory_format=torch.contiguous_format)

    def around(self, n: int, centre: float, spread: float) -> torch.Tensor:
        return centre + spread * (2 * torch.rand(n, generator=self.gen) - 1)


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py imported as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
