"""Sanity checks beyond the paper: cascading model-parameter randomization and a random-map baseline.

Explanations must change when the weights do.

Randomisation test (after Adebayo et al., "Sanity checks for saliency maps", 2018): on a deep copy of
the model (the model passed in is never modified), re-initialise blocks one at a time from the top
-- the head, then the backbone stages from the last to the first, cumulatively -- re-explain the
pair after each step and compare each new map with the original by Spearman rank correlation. A
method whose maps do not change when the weights are destroyed does not explain the model.
Re-initialisation calls each submodule's `reset_parameters()` (BatchNorm also resets its running
statistics) under a seeded RNG that does not disturb the global one. If either map is constant the
rank correlation is undefined; we report 0 (no shared ranking) rather than NaN.

Not in Sammani, Joukovsky, Deligiannis, "Visualizing and Understanding Contrastive Learning", IEEE
TIP 2023 (arXiv 2206.09753): added to test its explanations' dependence on the weights.
"""

from __future__ import annotations

import copy
import itertools

import pandas as pd
import torch
from torch import nn

from ..explainers.base import PairExplanation, explain, resize_map
from ..models.backbones import StagedBackbone
from ..models.similarity import SimilarityModel
from .._deprecated import deprecated_alias
from ..maps import rank_correlation
from ..utils import check_image, cpu_generator


def random_explanation(
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    seed: int = 0,
    model: SimilarityModel | None = None,
    cells: int | None = None,
) -> PairExplanation:
    """Baseline: seeded i.i.d. U[0, 1) maps (method name "random").

    `cells=None`: one value per pixel. `cells=k`: a k x k grid of values, bilinearly upsampled to the
    image like a CAM map. Pixel-level random maps delete and insert scattered single pixels, a
    perturbation unlike the blobs that CAM and occlusion maps produce; a grid at the explainer's
    resolution (the backbone's feature grid for CAMs) gives a baseline that differs from the
    explanations only in where it puts saliency. `similarity` is S(x1, x2) when `model` is given,
    else NaN (the metrics do not use it).
    """
    check_image(x1, "x1")
    if cells is not None and (isinstance(cells, bool) or not isinstance(cells, int) or cells < 1):
        raise ValueError(f"cells must be a positive integer (the random grid is cells x cells) or None, got {cells!r}")
    generator = cpu_generator(int(seed))

    def draw(image: torch.Tensor) -> torch.Tensor:
        size = tuple(image.shape[-2:])
        if cells is None:
            return torch.rand(size, generator=generator)
        return resize_map(torch.rand((cells, cells), generator=generator), size)

    map1 = draw(x1)
    map2 = None
    if x2 is not None:
        check_image(x2, "x2")
        map2 = draw(x2)
    similarity = model.score(x1, x2) if (model is not None and x2 is not None) else float("nan")
    params = {"seed": int(seed)} if cells is None else {"seed": int(seed), "cells": cells}
    return PairExplanation(
        method="random",
        map1=map1,
        map2=map2,
        similarity=similarity,
        params=params,
        seconds=0.0,
        image_size=tuple(x1.shape[-2:]),
    )


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """`rank_correlation` of two maps, `b` resized bilinearly to the size of `a` first."""
    return rank_correlation(a, b if a.shape == b.shape else resize_map(b, tuple(a.shape)))


def cascade_blocks(model: SimilarityModel) -> list[tuple[str, nn.Module]]:
    """(name, module) blocks from the top of the model down: head, then backbone stages last to first."""
    if isinstance(model.backbone, StagedBackbone):
        stages = [(name, model.backbone.stages[name]) for name in model.backbone.stage_names]
    else:
        stages = list(model.backbone.named_children()) or [("backbone", model.backbone)]
    blocks = [("head", model.head), *reversed(stages)]
    return [(name, module) for name, module in blocks if any(True for _ in module.parameters())]


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Reset every submodule's parameters from the CPU generator seeded with `seed` (the seed rule):
    a block on another device is reset on the CPU and moved back, so the new weights match the CPU's."""
    device = next((t.device for t in itertools.chain(module.parameters(), module.buffers())), torch.device("cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module.cpu()
        try:
            for sub in module.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
        finally:
            module.to(device)


def randomization_test(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    method: str,
    *,
    seed: int = 0,
    **method_params,
) -> pd.DataFrame:
    """Cascading randomisation: rows (step, randomised, image, spearman); step 0 = the intact copy
    re-explained (1.0 for a deterministic method).

    `randomised` names the block re-initialised at that step (blocks before it stay randomised).
    """
    original = explain(model, x1, x2, method, **method_params)
    work = copy.deepcopy(model)
    rows = []
    steps = [("none", None), *cascade_blocks(work)]
    for step, (name, block) in enumerate(steps):
        if block is not None:
            _reinitialise(block, seed + step)
        again = explain(work, x1, x2, method, **method_params)
        for image, (before, after) in enumerate(zip(original.maps, again.maps), start=1):
            rows.append({"step": step, "randomised": name, "image": image, "spearman": spearman(before, after)})
    return pd.DataFrame(rows)


randomisation_test = deprecated_alias("randomisation_test", "randomization_test", randomization_test)

__all__ = ["random_explanation", "randomization_test", "randomisation_test", "spearman", "cascade_blocks"]
