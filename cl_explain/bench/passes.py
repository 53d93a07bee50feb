"""Backbone passes and their cost: the yardstick of the benchmark (`make bench`).

The question a benchmark row answers: does a method (or metric) cost what its backbone passes cost,
or does it waste time elsewhere? Three measured quantities give the answer:

* `count_passes` counts the images that actually go through the model's backbone (a forward hook
  adds each batch's size), split into passes that build no autograd graph, passes that do, and
  passes whose backbone output later receives a gradient (a backward through the backbone);
* `measure_throughput` times plain forward (or forward+backward) batches of the same model, batch
  size, precision and image content;
* `overhead_ratio` = time / (the time those passes take at the measured throughput). 1.0 means the
  method is exactly its forward passes; 1.25 means a quarter of its time goes to something else.

`max_rss_mb` reads the process's peak resident memory.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..models.similarity import SimilarityModel, cosine
from ..precision import precision_context
from ..utils import synchronize

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


def per_pair(counts: Sequence[PassCount], pairs_per_call: int = 1) -> PassCount:
    """The pass count of one pair when each count covers `pairs_per_call` pairs (one batched call)."""
    count = mean_count(counts)
    if pairs_per_call == 1:
        return count
    return PassCount(*(round(getattr(count, key) / pairs_per_call) for key in ("forward", "forward_grad", "backward")))
