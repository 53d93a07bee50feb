"""Benchmark helpers (`make bench`): count backbone passes, measure throughput, compute overhead ratios.

The question a benchmark row answers: does a method (or metric) cost what its backbone passes cost,
or does it waste time elsewhere? Three measured quantities give the answer:

* `count_passes` counts the images that actually go through the model's backbone (a forward hook
  adds each batch's size), split into passes that build no autograd graph, passes that do, and
  passes whose backbone output later receives a gradient (a backward through the backbone);
* `measure_throughput` times plain forward (or forward+backward) batches of the same model, batch
  size, precision and image content;
* `overhead_ratio` = time / (the time those passes take at the measured throughput). 1.0 means the
  method is exactly its forward passes; 1.25 means a quarter of its time goes to something else.

`run_method` / `run_metric` time one method or metric on a list of pairs under the pass counter,
`compare_precision_runs` checks a bf16 run against an fp32 run (Spearman rank correlation of the
maps, absolute AUC differences), and `max_rss_mb` reads the process's peak resident memory.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .data.pairs import Pair
from .explainers.base import explain, get_method
from .maps import rank_correlation
from .metrics import METRICS, MetricNotApplicable, evaluate_pair, evaluate_pairs
from .models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel, cosine
from .precision import bf16_status, precision_context  # noqa: F401 (bf16_status re-exported)
from .utils import synchronize

#: Metrics whose value is an insertion/deletion AUC (compared between precisions to within 0.01).
AUC_METRICS = ("insertion_simultaneous", "deletion_simultaneous", "insertion_conditional", "deletion_conditional")


# ------------------------------------------------------------------------------------ pass counting


@dataclass
class PassCount:
    """Images through the backbone: without graph (`forward`), with graph (`forward_grad`), and
    with a gradient flowing back through the backbone afterwards (`backward`); `batches` counts
    the batches seen per (batch size, built a graph)."""

    forward: int = 0
    forward_grad: int = 0
    backward: int = 0
    batches: Counter = field(default_factory=Counter)

    @property
    def total_forward(self) -> int:
        return self.forward + self.forward_grad

    @property
    def forward_only(self) -> int:
        """Images that paid a forward pass and no backward pass."""
        return max(0, self.total_forward - self.backward)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PassCount":
        """Inverse of `as_dict` (e.g. for counts read back from JSON)."""
        count = cls(data["forward"], data["forward_grad"], data["backward"])
        count.batches.update({(int(size), bool(grad)): int(n) for size, grad, n in data.get("batches", [])})
        return count

    def as_dict(self) -> dict[str, Any]:
        return {
            "forward": self.forward,
            "forward_grad": self.forward_grad,
            "backward": self.backward,
            "batches": [[size, grad, n] for (size, grad), n in sorted(self.batches.items())],
        }


def _backbone_of(model: nn.Module) -> nn.Module:
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(
            "count_passes needs a model with a `backbone` module (a cl_explain.SimilarityModel), "
            f"got {type(model).__name__}"
        )
    return backbone


@contextlib.contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count backbone passes inside the block (the hook is removed on exit, also on errors).

    A forward hook on `model.backbone` adds the batch size of every call. When the output is part
    of an autograd graph, a tensor hook on it adds the batch size again when its gradient is
    computed: that is a backward pass through the backbone. Differentiating only the head (as the
    CAM methods do, with the backbone run under no_grad) is correctly not counted as a backward.
    """
    count = PassCount()

    def on_backward(size: int) -> None:
        count.backward += size

    def on_forward(module: nn.Module, inputs: tuple, output: Any) -> None:
        size = int(inputs[0].shape[0])
        grad = isinstance(output, torch.Tensor) and output.requires_grad
        count.batches[(size, grad)] += 1
        if grad:
            count.forward_grad += size
            output.register_hook(lambda grad, size=size: on_backward(size))
        else:
            count.forward += size

    handle = _backbone_of(model).register_forward_hook(on_forward)
    try:
        yield count
    finally:
        handle.remove()


# ------------------------------------------------------------------------------- throughput, ratios


def _cycled_batch(images: torch.Tensor, index: int, batch_size: int) -> torch.Tensor:
    rows = (torch.arange(batch_size) + index * batch_size) % images.shape[0]
    return images[rows]


def measure_throughput(
    model: SimilarityModel,
    images: torch.Tensor,
    batch_size: int,
    *,
    precision: str = "fp32",
    backward: bool = False,
    batches: int = 3,
    warmup: int = 1,
) -> float:
    """Images per second of `model.embed` on batches of `batch_size` cycled from `images` (Nx3xHxW).

    backward=False: forward under no_grad. backward=True: forward with the input requiring grad and
    one backward of a cosine score to the input (what the gradient methods do). `warmup` untimed
    batches come first. Real image content matters on CPUs (zeros and denormals change the speed),
    so pass the images the benchmark explains.
    """
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty batch Nx3xHxW, got shape {tuple(images.shape)}")
    if batch_size < 1 or batches < 1 or warmup < 0:
        raise ValueError(f"need batch_size >= 1, batches >= 1, warmup >= 0; got {batch_size}, {batches}, {warmup}")
    images = images.to(model.device)

    def one(index: int) -> None:
        x = _cycled_batch(images, index, batch_size)
        with precision_context(precision, model):
            if not backward:
                with torch.no_grad():
                    model.embed(x)
                return
            x = x.clone().requires_grad_(True)
            with torch.enable_grad():
                e = model.embed(x).float()
                score = cosine(e, e.detach().flip(0)).sum()
                torch.autograd.grad(score, x)

    for i in range(warmup):
        one(i)
    synchronize(model.device)  # on a GPU, time the queued work, not its launch
    start = time.perf_counter()
    for i in range(batches):
        one(warmup + i)
    synchronize(model.device)
    return batches * batch_size / (time.perf_counter() - start)


def ideal_seconds(count: PassCount, forward_throughput: float, train_throughput: float | None = None) -> float:
    """Time the counted passes take at the measured throughputs (images/s): forward-only images at
    the forward throughput, images with a backward pass at the forward+backward throughput."""
    if forward_throughput <= 0:
        raise ValueError(f"forward_throughput must be positive, got {forward_throughput}")
    seconds = count.forward_only / forward_throughput
    if count.backward:
        if train_throughput is None or train_throughput <= 0:
            raise ValueError("passes include backward passes: give the forward+backward throughput too")
        seconds += count.backward / train_throughput
    return seconds


def batch_aware_seconds(count: PassCount, throughputs: dict[tuple[int, bool], float]) -> float:
    """Time the counted batches take at the throughput measured at each batch's own size:
    sum over (size, graph) of batches * size / throughputs[(size, graph)] (graph batches at the
    forward+backward throughput). Against `ideal_seconds` (one reference batch size) this separates
    the cost of small batches from overhead outside the backbone."""
    missing = sorted(set(count.batches) - set(throughputs))
    if missing:
        raise ValueError(f"no throughput measured for (batch size, graph) {missing}")
    return sum(n * size / throughputs[key] for key, n in count.batches.items() for size in [key[0]])


def overhead_ratio(
    seconds: float, count: PassCount, forward_throughput: float, train_throughput: float | None = None
) -> float | None:
    """time / (passes / throughput); None when nothing went through the backbone (ratio undefined)."""
    ideal = ideal_seconds(count, forward_throughput, train_throughput)
    return None if ideal == 0 else seconds / ideal


def max_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# ---------------------------------------------------------------------------------- timed runs


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
        count = mean_count(self.counts)
        if self.pairs_per_call == 1:
            return count
        return PassCount(
            *(round(getattr(count, key) / self.pairs_per_call) for key in ("forward", "forward_grad", "backward"))
        )


def mean_count(counts: Sequence[PassCount]) -> PassCount:
    """The pass count of one pair: the mean over pairs (rounded) and the batches of the first pair."""
    if not counts:
        raise ValueError("no pass counts to average")
    n = len(counts)
    mean = PassCount(
        *(round(sum(getattr(c, key) for c in counts) / n) for key in ("forward", "forward_grad", "backward"))
    )
    mean.batches.update(counts[0].batches)
    return mean


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

    from .models.backbones import StagedBackbone

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
        from .data.pairings import scene_pairs
        from .data.scenes import DEFAULT_SIZE

        return scene_pairs(n, "test", seed=0, size=size or DEFAULT_SIZE)
    return photo_pairs(n, size=size or 224)


#: scikit-image sample photos (bundled in its wheel) used for the ResNet-50 pairs, in order.
PHOTOS = ("chelsea", "coffee", "astronaut")


def photo_pairs(n: int, size: int = 224, seed: int = 0) -> list[Pair]:
    """`n` (pure, augmented) pairs of scikit-image's bundled photos at `size` px, seeded (no masks)."""
    import skimage.data

    from .data import make_pair

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


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"
