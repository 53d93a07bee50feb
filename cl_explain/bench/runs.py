"""Timed runs of one method or metric on a list of pairs, and what the benchmark runs them on.

`run_method` / `run_metric` time a method or metric under the pass counter (`passes.count_passes`);
`compare_precision_runs` checks a bf16 run against an fp32 run of the same rows (Spearman rank
correlation of the maps, absolute AUC differences). The inputs: the paper's architecture at random
weights (`resnet50_similarity_model`), photo pairs of scikit-image's bundled images, held-out scene
pairs of the embedded default, and `reduced_params`, a documented cheaper setting per method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.pairs import Pair
from ..explainers.base import explain, get_method
from ..maps import rank_correlation
from ..metrics import METRICS, MetricNotApplicable, evaluate_pair, evaluate_pairs
from ..models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel
from ..utils import synchronize
from .passes import PassCount, count_passes, per_pair

#: Metrics whose value is an insertion/deletion AUC (compared between precisions to within 0.01).
AUC_METRICS = ("insertion_simultaneous", "deletion_simultaneous", "insertion_conditional", "deletion_conditional")


@dataclass
class Run:
    """A method or metric timed on each pair: seconds, pass counts, and its output per pair
    (maps for a method, metric values for a metric, None where the metric is not applicable)."""

    name: str
    seconds: list[float]
    counts: list[PassCount]
    outputs: list[Any]
    not_applicable: str | None = None
    pairs_per_call: int = 1  # > 1: each timing and count covers that many pairs (one batched call)

    @property
    def passes_per_pair(self) -> PassCount:
        return per_pair(self.counts, self.pairs_per_call)


def run_method(
    model: SimilarityModel,
    pairs: Sequence[Pair],
    method: str,
    params: dict[str, Any] | None = None,
    *,
    batch_size: int = 64,
    precision: str = "fp32",
) -> Run:
    """`explain` each pair with `method`, timed and pass-counted; outputs are the raw map tuples."""
    spec = get_method(method)
    seconds, counts, outputs = [], [], []
    for pair in pairs:
        with count_passes(model) as count:
            synchronize(model.device)
            start = time.perf_counter()
            result = explain(
                model,
                pair.x1,
                pair.x2 if spec.needs_pair else None,
                method,
                batch_size=batch_size,
                precision=precision,
                **(params or {}),
            )
            seconds.append(time.perf_counter() - start)
        counts.append(count)
        outputs.append(result.maps)
    return Run(method, seconds, counts, outputs)


def run_metric(
    model: SimilarityModel,
    pairs: Sequence[Pair],
    explanations: Sequence[Any],
    metric: str,
    options: dict[str, Any] | None = None,
    *,
    batch_size: int = 64,
    precision: str = "fp32",
) -> Run:
    """`evaluate_pairs` with one metric on all (pair, explanation)s in one call, timed and pass-counted,
    as `evaluate` scores them (drop/increase shares its batches across pairs).

    The Run holds one timing and one count for the whole call (`pairs_per_call` = the number of pairs).
    Outputs are the metric values per pair, None for a pair where the metric is not applicable
    (e.g. a relative drop when S <= 0). When it applies to no pair (grounding without masks,
    max-sensitivity of an occlusion method) the Run has `not_applicable` set to the reason.
    """
    if len(explanations) != len(pairs):
        raise ValueError(f"need one explanation per pair, got {len(explanations)} for {len(pairs)} pairs")
    if METRICS[metric].needs_masks and any(not pair.has_masks for pair in pairs):
        return Run(metric, [], [], [], not_applicable=f"{metric} needs object masks; these pairs have none")
    with count_passes(model) as count:
        synchronize(model.device)
        start = time.perf_counter()
        values = evaluate_pairs(
            model,
            pairs,
            explanations,
            [metric],
            on_not_applicable="skip",
            batch_size=batch_size,
            precision=precision,
            **(options or {}),
        )
        seconds = time.perf_counter() - start
    outputs = [v if v else None for v in values]
    if all(v is None for v in outputs):
        try:  # ask the first pair why
            evaluate_pair(
                model,
                pairs[0].x1,
                pairs[0].x2,
                explanations[0],
                metrics=[metric],
                batch_size=batch_size,
                precision=precision,
                **(options or {}),
            )
        except MetricNotApplicable as reason:
            return Run(metric, [], [], [], not_applicable=str(reason))
    return Run(metric, [seconds], [count], outputs, pairs_per_call=len(pairs))


# ---------------------------------------------------------------------------- precision agreement


@dataclass(frozen=True)
class Agreement:
    """How a test-precision run agrees with the reference run; `passed` applies both limits."""

    min_rank_correlation: float | None
    max_auc_difference: float | None
    passed: bool


def compare_precision_runs(
    reference: Run, other: Run, *, min_rank_correlation: float = 0.99, max_auc_difference: float = 0.01
) -> Agreement:
    """Compare a run (e.g. bf16) with the reference run (fp32) of the same method or metric on the same pairs.

    Method runs: the Spearman correlation of every map with its reference map (the minimum is kept).
    Metric runs: the absolute difference of every insertion/deletion AUC (the maximum is kept).
    """
    if len(reference.outputs) != len(other.outputs):
        raise ValueError(f"runs cover different numbers of pairs: {len(reference.outputs)} and {len(other.outputs)}")
    correlations, differences = [], []
    for ref, out in zip(reference.outputs, other.outputs):
        if ref is None or out is None:
            continue
        if isinstance(ref, dict):
            keys = [k for k in ref if k.startswith(AUC_METRICS)]
            differences += [abs(float(ref[k]) - float(out[k])) for k in keys]
        else:
            correlations += [rank_correlation(r, o) for r, o in zip(ref, out) if r is not None]
    rank = min(correlations) if correlations else None
    auc = max(differences) if differences else None
    passed = (rank is None or rank >= min_rank_correlation) and (auc is None or auc <= max_auc_difference)
    return Agreement(rank, auc, passed)


# ------------------------------------------------------------------------------ benchmark inputs


def resnet50_similarity_model(seed: int = 0) -> SimilarityModel:
    """The paper's architecture and cost at random weights: torchvision ResNet-50 + SimCLR-like head
    (Linear 2048-2048, BN, ReLU, Linear 2048-128), ImageNet normalisation, seeded."""
    import torchvision

    from ..models.backbones import StagedBackbone

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = StagedBackbone.from_torchvision_resnet(torchvision.models.resnet50())
        head = nn.Sequential(
            nn.Linear(2048, 2048, bias=False),
            nn.BatchNorm1d(2048),
            nn.ReLU(inplace=True),
            nn.Linear(2048, 128, bias=False),
        )
    return SimilarityModel(
        backbone, head, normalize=(IMAGENET_MEAN, IMAGENET_STD), name=f"resnet50-random-s{seed}"
    ).eval()


# ------------------------------------------------------------------------ what the scripts measure on


def reduced_params(
    stride: int, erasures: int, smoothgrad_samples: int, invariance_samples: int, invariance_epochs: int | None = None
) -> dict[str, dict[str, Any]]:
    """Method parameters for a run cheaper than the paper's (scripts/benchmark.py, bf16_fidelity.py, gpu_check.py).

    One entry per method whose cost a setting scales: the window stride of both occlusion grids, the
    erasures of pairwise occlusion, the SmoothGrad samples and the pixel-invariance augmentations (and,
    if given, its epochs). Methods left out run with the paper's defaults.
    """
    invariance = {"samples": invariance_samples}
    if invariance_epochs is not None:
        invariance["epochs"] = invariance_epochs
    return {
        "occlusion": {"stride": stride},
        "context_agnostic_occlusion": {"stride": stride},
        "pairwise_occlusion": {"erasures": erasures},
        "smoothgrad": {"samples": smoothgrad_samples},
        "pixel_invariance": invariance,
    }


def benchmark_pairs(model_name: str, n: int, size: int | None = None) -> list[Pair]:
    """The pairs a benchmark model is measured on: held-out scene pairs (seed 0, default: the scenes'
    own side) for "embedded", photo pairs (`photo_pairs`, so n <= len(PHOTOS); default 224 px) for the
    random-weight ResNet-50 models."""
    if model_name == "embedded":
        from ..data.pairings import scene_pairs
        from ..data.scenes import DEFAULT_SIZE

        return scene_pairs(n, "test", seed=0, size=size or DEFAULT_SIZE)
    return photo_pairs(n, size=size or 224)


#: scikit-image sample photos (bundled in its wheel) used for the ResNet-50 pairs, in order.
PHOTOS = ("chelsea", "coffee", "astronaut")


def photo_pairs(n: int, size: int = 224, seed: int = 0) -> list[Pair]:
    """`n` (pure, augmented) pairs of scikit-image's bundled photos at `size` px, seeded (no masks)."""
    import skimage.data

    from ..data import make_pair

    if not 1 <= n <= len(PHOTOS):
        raise ValueError(f"n must be between 1 and {len(PHOTOS)} (photos: {', '.join(PHOTOS)}), got {n}")
    pairs = []
    for i, name in enumerate(PHOTOS[:n]):
        image = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())).permute(2, 0, 1).float() / 255
        pair = make_pair(image, seed + i, size=size, pair_id=name)
        pairs.append(pair)
    return pairs


def pair_images(pairs: Sequence[Pair]) -> torch.Tensor:
    """All views of the pairs as one batch (the image pool for throughput measurements)."""
    return torch.cat([x for p in pairs for x in (p.x1, p.x2)])
