"""Average drop / average increase for pair explanations (as the paper adapts them to pairs).

Each map is min-max normalised to [0, 1] and used as a soft mask, x~ = map * x. Decisions:

* The mask is applied in model input space, i.e. x~ = z + map * (x - z) in pixel space with
  z = `model.zero_pixel` -- the same "zero" the deletion substrate uses (for a model without input
  normalisation, such as SimCLRv2, this is exactly map * x in pixels). The result stays in [0, 1].
* A constant map expresses no preference; its normalised map is all ones (the image is kept), so
  its drop is 0 and it gives no increase. No NaN can arise.
* drop = max(0, base - score) / base with base = S(x1, x2) is a relative drop and is only defined
  for base > 0 (as for the class probabilities of the original Grad-CAM++ metric). For base <= 0 the
  drop is reported as undefined (None here; the harness marks it "not applicable" and leaves it out)
  while the increase 1[score > base] is still defined.

Source: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive
Learning", IEEE TIP 2023 (arXiv 2206.09753), its pair adaptation of average drop / increase in
confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..explainers.base import resize_map
from ..models.similarity import SimilarityModel, cosine, embed_stream
from ..precision import precision_context
from .._deprecated import deprecated_alias
from ..maps import minmax
from ..utils import to_device
from .common import MetricNotApplicable, ScoredPair, directional
from .registry import register_metric


@dataclass(frozen=True)
class DropResult:
    """One masked comparison: the unmasked score, the masked score, drop (None if base <= 0), increase."""

    base: float
    score: float
    drop: float | None
    increase: float


def mask_weights(maps: torch.Tensor) -> torch.Tensor:
    """The soft masks of a map or a B x H x W stack: min-max scaled, a constant map all ones (keep the image)."""
    return minmax(maps.float(), constant=1.0)


normalise_map = deprecated_alias("normalise_map", "cl_explain.metrics.drop.mask_weights", mask_weights)
normalise_maps = deprecated_alias("normalise_maps", "cl_explain.metrics.drop.mask_weights", mask_weights)


def masked_image(model: SimilarityModel, x: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """x~ = map * x in model input space (pixel space: z + map * (x - z), z = model.zero_pixel)."""
    return masked_images(model, x, resize_map(saliency, tuple(x.shape[-2:]))[None])


def masked_images(model: SimilarityModel, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """`masked_image` of a batch: images B x 3 x H x W, maps B x H x W (already at the image size)."""
    weight = mask_weights(maps).to(images.device)[:, None]
    zero = model.zero_pixel.to(device=images.device, dtype=images.dtype)
    return zero + weight * (images - zero)


def drop_and_increase(base: float, score: float) -> DropResult:
    """drop = max(0, base - score) / base (None when base <= 0) and increase = 1[score > base]."""
    drop = max(0.0, base - score) / base if base > 0 else None
    return DropResult(base=base, score=score, drop=drop, increase=float(score > base))


def drop_increase(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    map1: torch.Tensor,
    map2: torch.Tensor | None,
    precision: str = "fp32",
) -> dict[str, DropResult]:
    """Drop/increase of a pair: keys "simultaneous", "conditional_1", "conditional_2" (only the
    defined ones: with map2=None only "conditional_1"). One forward pass over at most four images."""
    return drop_increase_many(model, [(x1, x2, map1, map2)], precision)[0]


@torch.no_grad()
def drop_increase_many(
    model: SimilarityModel,
    items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
    precision: str = "fp32",
    batch_size: int = 64,
) -> list[dict[str, DropResult]]:
    """`drop_increase` of many (x1, x2, map1, map2) pairs, their images embedded in shared batches.

    A pair needs only four images, so scoring pairs one by one runs the model at batch size four;
    here the intact and masked images of all pairs of one size stream through `embed_stream` in
    batches of `batch_size` (masked images are made batch by batch, so memory stays bounded).
    """
    recipes: dict[tuple[int, ...], list[tuple[int, int, torch.Tensor, torch.Tensor | None]]] = {}
    for index, (x1, x2, map1, map2) in enumerate(items):
        parts = [(x1, None), (x2, None), (x1, map1)] + ([(x2, map2)] if map2 is not None else [])
        group = recipes.setdefault(tuple(x1.shape[-2:]), [])
        group += [(index, slot, x, saliency) for slot, (x, saliency) in enumerate(parts)]
    # every distinct image and map goes to the model's device once, so no batch copies from the host
    device, on_device = model.device, {}

    def moved(tensor: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if id(tensor) not in on_device:
            on_device[id(tensor)] = to_device(tensor if size is None else resize_map(tensor, size), device)
        return on_device[id(tensor)]

    embeddings: dict[tuple[int, int], torch.Tensor] = {}
    for size, group in recipes.items():

        def make_batch(lo: int, hi: int, group=group, size=size) -> torch.Tensor:
            rows = group[lo:hi]
            masked = [(moved(x), moved(s, size)) for _, _, x, s in rows if s is not None]
            done = iter(())
            if masked:  # all masked images of the batch at once
                images, maps = torch.cat([m[0] for m in masked]), torch.stack([m[1] for m in masked])
                done = iter(masked_images(model, images, maps).split(1))
            return torch.cat([moved(x) if s is None else next(done) for _, _, x, s in rows])

        with precision_context(precision, model, "drop"):
            stream = embed_stream(model, len(group), make_batch, batch_size)
        embeddings.update({(index, slot): e for (index, slot, _, _), e in zip(group, stream)})
    return [_results(embeddings, index, map2 is not None) for index, (_, _, _, map2) in enumerate(items)]


def _results(embeddings: dict[tuple[int, int], torch.Tensor], index: int, both: bool) -> dict[str, DropResult]:
    """Drop/increase of pair `index` from its embeddings (slots: x1, x2, masked x1, masked x2)."""
    e = [embeddings[(index, slot)] for slot in range(4 if both else 3)]
    pairs = [(0, 1), (2, 1)] + ([(0, 3), (2, 3)] if both else [])
    # one cosine call and one copy to the host for the pair
    base, *scores = cosine(torch.stack([e[a] for a, _ in pairs]), torch.stack([e[b] for _, b in pairs])).tolist()
    result = {"conditional_1": drop_and_increase(base, scores[0])}
    if both:
        result["conditional_2"] = drop_and_increase(base, scores[1])
        result["simultaneous"] = drop_and_increase(base, scores[2])
    return result


@register_metric(
    "average_drop_simultaneous",
    family="drop",
    higher_is_better=False,
    abbreviation="SAD",
    paper_column=5,
    pair=True,
    options={"precision": "fp32"},
    description="relative score drop, both images masked by their maps",
)
@register_metric(
    "average_increase_simultaneous",
    family="drop",
    higher_is_better=True,
    abbreviation="SIC",
    paper_column=6,
    pair=True,
    options={"precision": "fp32"},
    description="score increase indicator, both images masked",
)
@register_metric(
    "average_drop_conditional",
    family="drop",
    higher_is_better=False,
    abbreviation="CAD",
    paper_column=7,
    options={"precision": "fp32"},
    description="relative score drop, one image masked (mean of directions)",
)
@register_metric(
    "average_increase_conditional",
    family="drop",
    higher_is_better=True,
    abbreviation="CID",
    paper_column=8,
    options={"precision": "fp32"},
    description="score increase indicator, one image masked (mean of directions)",
)
def _drop_family(model: SimilarityModel, items: Sequence[ScoredPair], options: dict) -> list[dict]:
    """Drop/increase of every item, the images of all items embedded in shared batches."""
    raw = drop_increase_many(
        model, [(item.x1, item.x2, *item.maps) for item in items], options["precision"], options["batch_size"]
    )
    return [_drop_values(results, item.metrics) for item, results in zip(items, raw)]


def _drop_values(results: dict[str, DropResult], names: Sequence[str]) -> dict:
    """The requested drop/increase metrics from one pair's `drop_increase` results."""
    out: dict = {}
    for name in names:
        stat = "drop" if name.startswith("average_drop") else "increase"
        directions = {0: "simultaneous"} if name.endswith("simultaneous") else {1: "conditional_1", 2: "conditional_2"}
        found = {d: getattr(results[key], stat) for d, key in directions.items() if key in results}
        if any(v is None for v in found.values()):
            base = next(iter(results.values())).base
            out[name] = MetricNotApplicable(
                f"{name}: the relative drop is undefined because S(x1, x2) = {base:.4f} <= 0"
            )
        else:
            out[name] = {name: found[0]} if 0 in found else directional(name, found)
    return out
