"""Scoring: explanations of pairs -> metric values, every registered metric behind one call.

Methods registered with needs_pair=False are called without x2. Averaged transforms then builds its
own pixel-aligned partner T(x1) (`explanation.partner`), and every metric scores the pair it explained,
(x1, T(x1)), with map2 standing for T(x1). Pixel invariance explains x1 alone: metrics registered with
pair=True (both maps scored together) do not apply to it. A metric that is not applicable raises
`MetricNotApplicable` in `evaluate_pair` (or is left out with on_not_applicable="skip"): a result is
never a silent NaN.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..data.pairs import Pair
from ..explainers.base import PairExplanation, get_method, resize_map
from ..models.similarity import SimilarityModel
from ..utils import check_image, resolve_batch_size
from .common import MetricNotApplicable, ScoredPair, Values, single_map
from .registry import COMMON_OPTIONS, check_metrics, check_options, metric_specs, paper_metrics

Results = dict[str, "Values | MetricNotApplicable"]


def sized_options(options: dict[str, Any], model: SimilarityModel, image: torch.Tensor) -> dict[str, Any]:
    """`options` with batch_size="auto" resolved (free GPU memory; the default elsewhere)."""
    return {
        **options,
        "batch_size": resolve_batch_size(options["batch_size"], model, image, COMMON_OPTIONS["batch_size"]),
    }


def _resized_maps(explanation: PairExplanation, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Both maps at the image size, with errors that say which map is broken."""
    if not isinstance(explanation, PairExplanation):
        raise TypeError(
            f"explanation must be a PairExplanation (from cl_explain.explain), got {type(explanation).__name__}"
        )
    if tuple(explanation.image_size) != tuple(size):
        raise ValueError(
            f"the explanation was computed for images of size {tuple(explanation.image_size)} but the pair has size "
            f"{tuple(size)}; explain the same images you evaluate"
        )
    if explanation.map1 is None:
        raise ValueError("explanation.map1 is None: every explanation needs a map for x1")
    second = explanation.map2 if _explains_the_pair(explanation) else None
    maps = []
    for index, saliency in ((1, explanation.map1), (2, second)):
        try:
            maps.append(None if saliency is None else resize_map(saliency, size))
        except ValueError as error:
            raise ValueError(f"explanation.map{index} of method {explanation.method!r} is unusable: {error}") from None
    return maps[0], maps[1]


def _explains_the_pair(explanation: PairExplanation) -> bool:
    """False for registered methods that explain x1 alone (needs_pair=False and no partner image)."""
    if explanation.partner is not None:
        return True
    try:
        return get_method(explanation.method).needs_pair
    except ValueError:  # "random" and hand-made explanations: both maps belong to the pair
        return True


def prepare(
    x1: torch.Tensor, x2: torch.Tensor, explanation: PairExplanation, metrics: Sequence[str], masks: Any
) -> ScoredPair:
    """The pair an explanation is scored on (its own partner image, if it made one), checked."""
    if explanation.partner is not None:
        x2 = explanation.partner.to(x1.device)
    check_image(x1, "x1")
    check_image(x2, "x2")
    maps = _resized_maps(explanation, tuple(x1.shape[-2:]))
    if maps[1] is not None and tuple(x2.shape[-2:]) != tuple(x1.shape[-2:]):
        raise ValueError(f"x1 and x2 must have the same size, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    return ScoredPair(x1, x2, explanation, maps, tuple(metrics), masks)


def compute_many(model: SimilarityModel, items: Sequence[ScoredPair], options: Mapping[str, Any]) -> list[Results]:
    """Every requested metric of every item, in the requested order: each family is called once with all
    items that want it (so it can share forward passes within a pair, or batches across pairs)."""
    specs = metric_specs()
    results: list[Results] = [{} for _ in items]
    families: dict[str, list[tuple[int, ScoredPair]]] = {}
    for index, item in enumerate(items):
        wanted = []
        for name in item.metrics:
            if specs[name].pair and item.maps[1] is None:
                results[index][name] = single_map(name)
            else:
                wanted.append(name)
        for family in dict.fromkeys(specs[name].family for name in wanted):
            names = tuple(name for name in wanted if specs[name].family == family)
            families.setdefault(family, []).append((index, replace(item, metrics=names)))
    for family, members in families.items():
        compute = specs[members[0][1].metrics[0]].compute
        for (index, _), values in zip(members, compute(model, [item for _, item in members], options)):
            results[index].update(values)
    for out in results:
        for name, values in out.items():
            if isinstance(values, dict) and not all(np.isfinite(v) for v in values.values()):
                raise RuntimeError(f"{name} produced a non-finite value {values}; this is a bug, please report it")
    return [{name: out[name] for name in item.metrics} for item, out in zip(items, results)]


def check_policy(on_not_applicable: str) -> None:
    """on_not_applicable must be "raise" or "skip"."""
    if on_not_applicable not in ("raise", "skip"):
        raise ValueError(f"on_not_applicable must be 'raise' or 'skip', got {on_not_applicable!r}")


def default_metrics(masks: Any) -> list[str]:
    """The paper table, plus the metrics that need masks when there are masks."""
    return [
        *paper_metrics(),
        *(name for name, spec in metric_specs().items() if spec.needs_masks and masks is not None),
    ]


def flatten(results: Results, on_not_applicable: str) -> dict[str, float]:
    """Metric results as one name -> value dict; a non-applicable one raises or is left out."""
    flat: dict[str, float] = {}
    for values in results.values():
        if isinstance(values, MetricNotApplicable):
            if on_not_applicable == "raise":
                raise values
            continue
        flat.update(values)
    return flat


def as_pair(item: Any, index: int) -> Pair:
    """A Pair from a Pair-like object or a dict with x1, x2 and optional mask1, mask2, pair_id, seed."""
    get = item.get if isinstance(item, Mapping) else (lambda name, default=None: getattr(item, name, default))
    x1, x2 = get("x1"), get("x2")
    if x1 is None or x2 is None:
        raise ValueError(f"pair {index} must provide x1 and x2 (a Pair, a make_pair result or a dict)")
    return Pair(
        x1=x1,
        x2=x2,
        mask1=get("mask1"),
        mask2=get("mask2"),
        pair_id=str(get("pair_id", None) or f"pair{index}"),
        seed=int(get("seed", 0) or 0),
    )


def evaluate_pair(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    explanation: PairExplanation,
    metrics: Sequence[str] | str | None = None,
    masks: Sequence[torch.Tensor | None] | None = None,
    on_not_applicable: str = "raise",
    **params: Any,
) -> dict[str, float]:
    """Score one pair explanation: metric name -> value (conditional metrics add "<name>_1" / "_2").

    `metrics` default: the paper table (`PAPER_METRICS`), plus the grounding metrics when `masks`
    (mask1, mask2) are given. `params`: batch_size, precision ("fp32" | "bf16"), step (pixels per
    insertion/deletion point, default the image side), substrate ("zero" | "black" | "blur" | tensor),
    insertion_start ("blur" | "zero" | "black" | tensor), n_draws, radius, seed, clip (max-sensitivity).
    A metric that is not defined here raises `MetricNotApplicable`; on_not_applicable="skip" leaves it out.
    """
    check_policy(on_not_applicable)
    item = prepare(x1, x2, explanation, check_metrics(default_metrics(masks) if metrics is None else metrics), masks)
    return flatten(
        compute_many(model, [item], sized_options(check_options(params), model, item.x1))[0], on_not_applicable
    )


def evaluate_pairs(
    model: SimilarityModel,
    pairs: Sequence[Any],
    explanations: Sequence[PairExplanation],
    metrics: Sequence[str] | str | None = None,
    on_not_applicable: str = "raise",
    **params: Any,
) -> list[dict[str, float]]:
    """`evaluate_pair` for many pairs (Pair objects or dicts; masks taken from them) and their explanations.

    The results equal pair-by-pair scoring; average drop/increase, which needs four images a pair,
    embeds the images of all pairs in shared batches of `batch_size`, which is what makes it cheap.
    """
    check_policy(on_not_applicable)
    pairs = [as_pair(item, i) for i, item in enumerate(pairs)]
    if len(explanations) != len(pairs):
        raise ValueError(f"need one explanation per pair, got {len(explanations)} for {len(pairs)} pairs")
    chosen = None if metrics is None else check_metrics(metrics)
    items = []
    for pair, explanation in zip(pairs, explanations):
        masks = (pair.mask1, pair.mask2) if pair.has_masks else None
        items.append(prepare(pair.x1, pair.x2, explanation, chosen or default_metrics(masks), masks))
    options = check_options(params)
    options = sized_options(options, model, items[0].x1) if items else options
    return [flatten(result, on_not_applicable) for result in compute_many(model, items, options)]
