"""Evaluation harness: every pair metric behind one call, a cached evaluation grid, and summaries.

* `evaluate_pair` scores one explanation of one pair with the named metrics (`list_metrics()`).
* `evaluate` explains every pair with every method and scores it: a tidy DataFrame
  (pair_id, seed, method, metric, value), cached on disk one small JSON file per
  (package source digest, model fingerprint, method + params, metric + params, pair) so a re-run
  recomputes nothing, and a code change recomputes everything.
* `summarise` turns it into methods x metrics with means and bootstrap confidence intervals;
  `format_table` renders that as the paper's table in markdown.

Methods registered with needs_pair=False are called without x2. Averaged transforms then builds its
own pixel-aligned partner T(x1) (`explanation.partner`), and every metric scores the pair it explained,
(x1, T(x1)), with map2 (computed on the path image nearest T(x1)) standing for T(x1). Pixel invariance
explains x1 alone: only the conditional metrics in direction 1 (x1 perturbed/masked, x2 intact) and
the grounding metrics of image 1 apply. A metric that is not applicable -- those, a relative drop when S(x1, x2) <= 0,
max-sensitivity for methods registered with sensitivity=False or for the random baseline, an energy
pointing game for a map without positive values, grounding when the object is in no view -- raises
`MetricNotApplicable` in `evaluate_pair` (or is skipped with on_not_applicable="skip"); `evaluate`
leaves such rows out, lists them in `df.attrs["not_applicable"]` and warns. A result is never a silent NaN.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.pairs import Pair
from ..explainers.base import PairExplanation, explain, get_method, resize_map
from ..models.similarity import SimilarityModel
from ..precision import PRECISIONS
from ..utils import check_batch_size, check_image, resolve_batch_size, source_digest, write_text_atomic
from .common import MetricNotApplicable
from .drop import drop_increase_many
from .grounding import check_mask, energy_pointing_game, pointing_game
from .perturbation import perturbation_curves
from .sanity import random_explanation
from .sensitivity import max_sensitivity


@dataclass(frozen=True)
class MetricSpec:
    """A metric: its family (computed together), direction, paper column, description."""

    name: str
    family: str
    higher_is_better: bool
    abbreviation: str
    description: str


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in [
        MetricSpec("insertion_simultaneous", "insertion", True, "SI", "insertion AUC, both images perturbed"),
        MetricSpec("deletion_simultaneous", "deletion", False, "SD", "deletion AUC, both images perturbed"),
        MetricSpec("insertion_conditional", "insertion", True, "CI", "insertion AUC, one image perturbed (mean of directions)"),
        MetricSpec("deletion_conditional", "deletion", False, "CD", "deletion AUC, one image perturbed (mean of directions)"),
        MetricSpec("average_drop_simultaneous", "drop", False, "SAD", "relative score drop, both images masked by their maps"),
        MetricSpec("average_increase_simultaneous", "drop", True, "SIC", "score increase indicator, both images masked"),
        MetricSpec("average_drop_conditional", "drop", False, "CAD", "relative score drop, one image masked (mean of directions)"),
        MetricSpec("average_increase_conditional", "drop", True, "CID", "score increase indicator, one image masked (mean of directions)"),
        MetricSpec("max_sensitivity", "sensitivity", False, "MS", "max relative map change under uniform input noise"),
        MetricSpec("pointing_game", "grounding", True, "PG", "map maximum inside the object mask (mean over the views showing it)"),
        MetricSpec("energy_pointing_game", "grounding", True, "EPG", "share of positive map energy inside the object mask"),
    ]
}

#: The columns of the paper's metric table (Table I), in its order.
PAPER_METRICS = tuple(name for name, spec in METRICS.items() if spec.family != "grounding")

#: Metric options with their defaults; `batch_size` and `precision` also reach `explain` in `evaluate`.
DEFAULT_OPTIONS: dict[str, Any] = {
    "batch_size": 64,
    "precision": "fp32",
    "step": None,
    "substrate": "zero",
    "insertion_start": "blur",
    "n_draws": 10,
    "radius": 0.2,
    "seed": 0,
    "clip": False,
}

#: Options that change a family's results (they enter its cache key; batch_size does not).
FAMILY_OPTIONS: dict[str, tuple[str, ...]] = {
    "insertion": ("step", "insertion_start", "precision"),
    "deletion": ("step", "substrate", "precision"),
    "drop": ("precision",),
    "sensitivity": ("n_draws", "radius", "seed", "clip"),  # re-explains with the explanation's own precision
    "grounding": (),
}

Values = dict[str, float]


def list_metrics() -> dict[str, str]:
    """Metric names -> one-line description with the better direction."""
    return {
        name: f"{spec.description} ({'higher' if spec.higher_is_better else 'lower'} is better; {spec.abbreviation})"
        for name, spec in METRICS.items()
    }


# ----------------------------------------------------------------------------------------- checks


def _check_metrics(metrics: Iterable[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid metrics: {', '.join(METRICS)}")
    return metrics


def _check_options(params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown metric option(s) {unknown}; valid options: {', '.join(DEFAULT_OPTIONS)}")
    options = {**DEFAULT_OPTIONS, **params}
    if options["precision"] not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {options['precision']!r}")
    check_batch_size(options["batch_size"])
    return options


def _sized(options: dict[str, Any], model: SimilarityModel, image: torch.Tensor) -> dict[str, Any]:
    """`options` with batch_size="auto" resolved (free GPU memory; the default elsewhere)."""
    batch = resolve_batch_size(options["batch_size"], model, image, DEFAULT_OPTIONS["batch_size"])
    return {**options, "batch_size": batch}


def _resized_maps(explanation: PairExplanation, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Both maps at the image size, with errors that say which map is broken."""
    if not isinstance(explanation, PairExplanation):
        raise TypeError(f"explanation must be a PairExplanation (from cl_explain.explain), got {type(explanation).__name__}")
    if tuple(explanation.image_size) != tuple(size):
        raise ValueError(
            f"the explanation was computed for images of size {tuple(explanation.image_size)} but the pair has size "
            f"{tuple(size)}; explain the same images you evaluate"
        )
    maps = []
    second = explanation.map2 if _explains_the_pair(explanation) else None
    for index, saliency in enumerate((explanation.map1, second), start=1):
        if saliency is None:
            if index == 1:
                raise ValueError("explanation.map1 is None: every explanation needs a map for x1")
            maps.append(None)
            continue
        try:
            maps.append(resize_map(saliency, size))
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


def _check_masks(masks, map2: torch.Tensor | None, size: tuple[int, int], metric: str) -> list[torch.Tensor | None]:
    """The masks the maps need, validated; None for a view whose mask is empty (object not visible)."""
    needed = 1 if map2 is None else 2
    masks = list(masks) if masks is not None else []
    if len(masks) < needed or any(m is None for m in masks[:needed]):
        raise ValueError(
            f"{metric} needs ground-truth object masks for {'x1' if needed == 1 else 'both images'}: pass "
            "masks=(mask1, mask2) to evaluate_pair, or pairs with mask1/mask2 to evaluate"
        )
    checked = []
    for i, m in enumerate(masks[:needed], start=1):
        try:
            checked.append(check_mask(m, size, f"mask{i}"))
        except MetricNotApplicable:
            checked.append(None)
    return checked


# ---------------------------------------------------------------------------------------- families


def _single_map(name: str) -> MetricNotApplicable:
    return MetricNotApplicable(
        f"{name} needs a map for both images; this explanation explains x1 only (map2 is None), so only the "
        "conditional metrics in direction 1 apply"
    )


def _directional(name: str, per_direction: dict[int, float]) -> Values:
    """A conditional metric: the mean over the available directions plus one key per direction."""
    values = {name: float(np.mean(list(per_direction.values())))}
    values.update({f"{name}_{d}": v for d, v in per_direction.items()})
    return values


def _perturbation_family(mode: str) -> Callable:
    def compute(model, x1, x2, explanation, maps, masks, names, options) -> dict[str, Values | MetricNotApplicable]:
        map1, map2 = maps
        sim, cond = f"{mode}_simultaneous", f"{mode}_conditional"
        which = []
        if sim in names and map2 is not None:
            which.append("simultaneous")
        if cond in names:
            which += ["conditional_1"] + (["conditional_2"] if map2 is not None else [])
        keys = ("step", "substrate", "insertion_start", "batch_size", "precision")
        curves = perturbation_curves(
            model, x1, x2, map1, map2, mode, tuple(which), **{k: options[k] for k in keys}
        ) if which else {}
        out: dict[str, Values | MetricNotApplicable] = {}
        if sim in names:
            out[sim] = _single_map(sim) if map2 is None else {sim: curves["simultaneous"].auc}
        if cond in names:
            out[cond] = _directional(cond, {d: curves[f"conditional_{d}"].auc for d in (1, 2) if f"conditional_{d}" in curves})
        return out

    return compute


def _drop_values(results: dict, names: Sequence[str]) -> dict[str, Values | MetricNotApplicable]:
    """The requested drop/increase metrics from one pair's `drop_increase` results."""
    out: dict[str, Values | MetricNotApplicable] = {}
    for name in names:
        stat = "drop" if name.startswith("average_drop") else "increase"
        directions = {0: "simultaneous"} if name.endswith("simultaneous") else {1: "conditional_1", 2: "conditional_2"}
        found = {d: getattr(results[key], stat) for d, key in directions.items() if key in results}
        if not found:
            out[name] = _single_map(name)
        elif any(v is None for v in found.values()):
            base = next(iter(results.values())).base
            out[name] = MetricNotApplicable(
                f"{name}: the relative drop is undefined because S(x1, x2) = {base:.4f} <= 0"
            )
        else:
            out[name] = {name: found[0]} if 0 in found else _directional(name, found)
    return out


def _sensitivity_family(model, x1, x2, explanation, maps, masks, names, options) -> dict[str, Values | MetricNotApplicable]:
    try:
        values = max_sensitivity(
            model, x1, x2, explanation, **{k: options[k] for k in ("n_draws", "radius", "seed", "clip")}
        )
    except MetricNotApplicable as reason:
        return {"max_sensitivity": reason}
    return {"max_sensitivity": values}


def _grounding_family(model, x1, x2, explanation, maps, masks, names, options) -> dict[str, Values | MetricNotApplicable]:
    checked = _check_masks(masks, maps[1], tuple(x1.shape[-2:]), names[0])
    visible = {i: (m, k) for i, (m, k) in enumerate(zip(maps, checked), start=1) if m is not None and k is not None}
    games = {"pointing_game": pointing_game, "energy_pointing_game": energy_pointing_game}
    out: dict[str, Values | MetricNotApplicable] = {}
    for name in names:
        if not visible:
            out[name] = MetricNotApplicable(f"{name}: the object mask is empty in every view, so grounding is undefined")
            continue
        try:
            out[name] = _directional(name, {i: games[name](m, k) for i, (m, k) in visible.items()})
        except MetricNotApplicable as reason:
            out[name] = reason
    return out


#: Families computed pair by pair; "drop" is batched across pairs in `_compute_many`.
PAIR_FAMILIES: dict[str, Callable] = {
    "insertion": _perturbation_family("insertion"),
    "deletion": _perturbation_family("deletion"),
    "sensitivity": _sensitivity_family,
    "grounding": _grounding_family,
}


@dataclass
class _Scoring:
    """One explanation to score: the pair it explains (its partner, if it chose one), maps at image size."""

    x1: torch.Tensor
    x2: torch.Tensor
    explanation: PairExplanation
    maps: tuple[torch.Tensor, torch.Tensor | None]
    metrics: list[str]
    masks: Any


def _prepare(x1: torch.Tensor, x2: torch.Tensor, explanation: PairExplanation, metrics: list[str], masks) -> _Scoring:
    if explanation.partner is not None:  # the method chose its own second image: score that pair
        x2 = explanation.partner.to(x1.device)
    check_image(x1, "x1")
    check_image(x2, "x2")
    maps = _resized_maps(explanation, tuple(x1.shape[-2:]))
    if maps[1] is not None and tuple(x2.shape[-2:]) != tuple(x1.shape[-2:]):
        raise ValueError(f"x1 and x2 must have the same size, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    return _Scoring(x1, x2, explanation, maps, metrics, masks)


def _compute_many(model: SimilarityModel, items: Sequence[_Scoring], options: dict[str, Any]) -> list[dict[str, Values | MetricNotApplicable]]:
    """Every requested metric of every item, in the requested order. A family shares its forward
    passes within a pair; drop/increase (four images a pair) embeds the images of all items together."""
    results: list[dict[str, Values | MetricNotApplicable]] = [{} for _ in items]
    wanted = [[m for m in item.metrics if METRICS[m].family == "drop"] for item in items]
    dropped = [i for i, names in enumerate(wanted) if names]
    if dropped:
        raw = drop_increase_many(model, [(items[i].x1, items[i].x2, *items[i].maps) for i in dropped],
                                 options["precision"], options["batch_size"])
        for i, result in zip(dropped, raw):
            results[i].update(_drop_values(result, wanted[i]))
    for item, out in zip(items, results):
        for family, compute in PAIR_FAMILIES.items():
            names = [m for m in item.metrics if METRICS[m].family == family]
            if names:
                out.update(compute(model, item.x1, item.x2, item.explanation, item.maps, item.masks, names, options))
        for name, values in out.items():
            if isinstance(values, dict) and not all(np.isfinite(v) for v in values.values()):
                raise RuntimeError(f"{name} produced a non-finite value {values}; this is a bug, please report it")
    return [{name: out[name] for name in item.metrics} for item, out in zip(items, results)]


def _check_policy(on_not_applicable: str) -> None:
    if on_not_applicable not in ("raise", "skip"):
        raise ValueError(f"on_not_applicable must be 'raise' or 'skip', got {on_not_applicable!r}")


def _default_metrics(masks) -> list[str]:
    """The paper table, plus the grounding metrics when there are masks."""
    return [*PAPER_METRICS, *(("pointing_game", "energy_pointing_game") if masks is not None else ())]


def _flatten(results: dict[str, Values | MetricNotApplicable], on_not_applicable: str) -> dict[str, float]:
    flat: dict[str, float] = {}
    for values in results.values():
        if isinstance(values, MetricNotApplicable):
            if on_not_applicable == "raise":
                raise values
            continue
        flat.update(values)
    return flat


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
    _check_policy(on_not_applicable)
    item = _prepare(x1, x2, explanation, _check_metrics(_default_metrics(masks) if metrics is None else metrics), masks)
    return _flatten(_compute_many(model, [item], _sized(_check_options(params), model, item.x1))[0], on_not_applicable)


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
    _check_policy(on_not_applicable)
    pairs = [_as_pair(item, i) for i, item in enumerate(pairs)]
    if len(explanations) != len(pairs):
        raise ValueError(f"need one explanation per pair, got {len(explanations)} for {len(pairs)} pairs")
    chosen = None if metrics is None else _check_metrics(metrics)
    items = []
    for pair, explanation in zip(pairs, explanations):
        masks = (pair.mask1, pair.mask2) if pair.has_masks else None
        names = chosen or _default_metrics(masks)
        items.append(_prepare(pair.x1, pair.x2, explanation, names, masks))
    options = _sized(_check_options(params), model, items[0].x1) if items else _check_options(params)
    return [_flatten(result, on_not_applicable) for result in _compute_many(model, items, options)]


# ---------------------------------------------------------------------------------------- evaluate


def _digest(*tensors: torch.Tensor | None) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        if t is None:
            digest.update(b"none")
        else:
            t = t.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return f"tensor:{_digest(value)}"
    return repr(value)


class _Cache:
    """One JSON file per result key under `folder` (None: no caching)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)

    def path(self, key: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        name = hashlib.sha256(json.dumps(key, sort_keys=True, default=_jsonable).encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.json"

    def load(self, key: dict[str, Any]) -> Values | MetricNotApplicable | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        record = json.loads(path.read_text())
        if "not_applicable" in record:
            return MetricNotApplicable(record["not_applicable"])
        return {k: float(v) for k, v in record["values"].items()}

    def save(self, key: dict[str, Any], result: Values | MetricNotApplicable) -> None:
        path = self.path(key)
        if path is None:
            return
        record = {"key": json.loads(json.dumps(key, default=_jsonable))}
        if isinstance(result, MetricNotApplicable):
            record["not_applicable"] = str(result)
        else:
            record["values"] = result
        write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True))


def _as_pair(item: Any, index: int) -> Pair:
    """A Pair from a Pair-like object or a dict with x1, x2 and optional mask1, mask2, pair_id, seed."""
    get = item.get if isinstance(item, Mapping) else (lambda name, default=None: getattr(item, name, default))
    x1, x2 = get("x1"), get("x2")
    if x1 is None or x2 is None:
        raise ValueError(f"pair {index} must provide x1 and x2 (a Pair, a make_pair result or a dict)")
    return Pair(
        x1=x1, x2=x2, mask1=get("mask1"), mask2=get("mask2"),
        pair_id=str(get("pair_id", None) or f"pair{index}"), seed=int(get("seed", 0) or 0),
    )


# what a caller may set for the random baseline: its options, not the pair it is drawn for
_RANDOM_OPTIONS = set(inspect.signature(random_explanation).parameters) - {"x1", "x2", "seed", "model"}


def _method_table(methods: Sequence[str] | str, method_params: Mapping[str, Mapping] | None) -> dict[str, tuple[str, dict]]:
    """Labels -> (registered method name, params). A label's params may name the method: {"method": ...}."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    method_params = dict(method_params or {})
    stray = sorted(set(method_params) - set(methods))
    if stray:
        raise ValueError(f"method_params given for {stray}, which are not in methods {methods}")
    table = {}
    for label in methods:
        params = dict(method_params.get(label, {}))
        name = params.pop("method", label)
        if name == "random":
            unknown = sorted(set(params) - _RANDOM_OPTIONS)
            if unknown:
                raise ValueError(f"the random baseline takes only {sorted(_RANDOM_OPTIONS)} (its seed is the pair seed), "
                                 f"got {unknown}")
        else:
            get_method(name)
        table[label] = (name, params)
    return table


def evaluate(
    model: SimilarityModel,
    pairs: Sequence[Any],
    methods: Sequence[str] | str,
    metrics: Sequence[str] | str | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    **params: Any,
) -> pd.DataFrame:
    """Explain every pair with every method and score it: tidy rows (pair_id, seed, method, metric, value).

    `pairs`: Pair objects (or make_pair results, or dicts) with x1, x2, optional mask1/mask2, pair_id,
    seed. `methods`: registered method names or labels; "random" is the seeded random-map baseline
    (seed = the pair seed; per pixel, or on a coarse grid with {"cells": k}). `method_params`: label -> explain parameters; {"method": name} lets one
    method appear under several labels (e.g. {"ixg_guided": {"method": "input_x_gradient", "guided": True}}).
    `metrics` default: `PAPER_METRICS`. `params`: metric options as in `evaluate_pair`; batch_size and
    precision also reach `explain` unless the method's params set them (without batch_size, each method
    uses its own default). With `cache_dir`, every result is stored in its own small JSON file and
    reused, so a re-run recomputes (and re-explains) nothing; the key includes a digest of the
    package's source, so results of older code are never served.
    Non-applicable results are left out, warned about and listed in `df.attrs["not_applicable"]`.
    """
    from tqdm.auto import tqdm

    metrics = _check_metrics(PAPER_METRICS if metrics is None else metrics)
    options = _check_options(params)
    table = _method_table(methods, method_params)
    pairs = [_as_pair(item, i) for i, item in enumerate(pairs)]
    options = _sized(options, model, pairs[0].x1) if pairs else options
    seen = Counter((p.pair_id, p.seed) for p in pairs)
    duplicated = [key for key, count in seen.items() if count > 1]
    if duplicated:
        raise ValueError(f"pairs must have distinct (pair_id, seed); repeated: {duplicated}")
    cache = _Cache(cache_dir)
    fingerprint = model.fingerprint() if cache_dir is not None else ""
    code = source_digest() if cache_dir is not None else ""  # new code never reuses old results
    # batch_size reaches explain only when given: otherwise each method keeps its own (size-scaled) default
    explain_defaults = {"precision": options["precision"], **({"batch_size": params["batch_size"]} if "batch_size" in params else {})}
    digests = [(_digest(p.x1, p.x2), _digest(p.mask1, p.mask2)) for p in pairs]
    cells: dict[tuple[int, int], tuple[list, list]] = {}  # (pair, method) -> (rows, not-applicable records)
    # Pairs are explained and scored a chunk at a time so drop/increase can share batches across pairs.
    chunk = max(1, options["batch_size"] // 4)
    with tqdm(total=len(pairs) * len(table), desc="evaluate", disable=not progress) as bar:
        for label_index, (label, (name, method_kw)) in enumerate(table.items()):
            explain_kw = method_kw if name == "random" else {**explain_defaults, **method_kw}
            for first in range(0, len(pairs), chunk):
                found, todo = {}, []
                for index in range(first, min(first + chunk, len(pairs))):
                    pair, (images, masks) = pairs[index], digests[index]
                    keys = {
                        metric: {
                            "code": code, "model": fingerprint, "method": name,
                            "method_params": {k: v for k, v in explain_kw.items() if k != "batch_size"},
                            "metric": metric,
                            "metric_params": {k: options[k] for k in FAMILY_OPTIONS[METRICS[metric].family]},
                            "pair": [pair.pair_id, pair.seed, images, masks if METRICS[metric].family == "grounding" else ""],
                        }
                        for metric in metrics
                    }
                    found[index] = {metric: cache.load(key) for metric, key in keys.items()}
                    missing = [metric for metric, value in found[index].items() if value is None]
                    if missing:
                        if name == "random":
                            explanation = random_explanation(pair.x1, pair.x2, seed=pair.seed, **explain_kw)
                        else:
                            x2 = pair.x2 if get_method(name).needs_pair else None
                            explanation = explain(model, pair.x1, x2, name, **explain_kw)
                        todo.append((index, keys, _prepare(pair.x1, pair.x2, explanation, missing, (pair.mask1, pair.mask2))))
                computed = _compute_many(model, [item for _, _, item in todo], options)
                for (index, keys, item), result in zip(todo, computed):
                    for metric in item.metrics:
                        found[index][metric] = result[metric]
                        cache.save(keys[metric], result[metric])
                for index, results in found.items():
                    pair = pairs[index]
                    rows, skipped = cells[(index, label_index)] = ([], [])
                    for metric, values in results.items():
                        if isinstance(values, MetricNotApplicable):
                            skipped.append({"pair_id": pair.pair_id, "seed": pair.seed, "method": label,
                                            "metric": metric, "reason": str(values)})
                            continue
                        rows += [{"pair_id": pair.pair_id, "seed": pair.seed, "method": label, "metric": k, "value": values[k]}
                                 for k in sorted(values, key=lambda k: (k != metric, k))]  # cache-independent order
                bar.update(len(found))
    rows = [row for key in sorted(cells) for row in cells[key][0]]  # pair by pair, methods in the given order
    skipped = [record for key in sorted(cells) for record in cells[key][1]]
    df = pd.DataFrame(rows, columns=["pair_id", "seed", "method", "metric", "value"])
    df.attrs["not_applicable"] = skipped
    if skipped:
        counts = Counter((s["method"], s["metric"]) for s in skipped)
        listing = "; ".join(f"{m}/{k} x{n}" for (m, k), n in counts.items())
        warnings.warn(
            f"{len(skipped)} result(s) are not applicable and were left out ({listing}); "
            "see df.attrs['not_applicable'] for the reasons", stacklevel=2,
        )
    return df


# --------------------------------------------------------------------------------------- summarise


def bootstrap_ci(values: np.ndarray, ci: float = 0.95, n_boot: int = 1000, rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (a single value gives [value, value])."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = rng or np.random.default_rng(0)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(low), float(high)


def summarise(df: pd.DataFrame, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Methods (rows, in order of appearance) x metrics (columns): mean, ci_low, ci_high, n over pairs.

    Columns are a MultiIndex (metric, statistic); e.g. `summary["deletion_simultaneous"]["mean"]`.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    missing = {"method", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"df needs the columns method, metric, value (from evaluate); missing {sorted(missing)}")
    rng = np.random.default_rng(seed)
    order = {name: i for i, name in enumerate(METRICS)}
    metric_names = sorted(df["metric"].unique(), key=lambda m: (order.get(re.sub(r"_[12]$", "", m), len(order)), m))
    methods = list(dict.fromkeys(df["method"]))
    records = {}
    for (method, metric), group in df.groupby(["method", "metric"], sort=False):
        values = group["value"].to_numpy(dtype=float)
        low, high = bootstrap_ci(values, ci, n_boot, rng)
        records[(method, metric)] = {"mean": float(values.mean()), "ci_low": low, "ci_high": high, "n": len(values)}
    columns = pd.MultiIndex.from_product([metric_names, ["mean", "ci_low", "ci_high", "n"]], names=["metric", "statistic"])
    summary = pd.DataFrame(index=pd.Index(methods, name="method"), columns=columns, dtype=float)
    for (method, metric), stats in records.items():
        for stat, value in stats.items():
            summary.loc[method, (metric, stat)] = value
    return summary


def format_table(
    summary: pd.DataFrame, metrics: Sequence[str] | None = None, digits: int = 3, ci: bool = True, abbreviate: bool = True
) -> str:
    """A markdown table of a `summarise` result, paper style: "mean [low, high]", NA where undefined.

    `metrics` picks and orders the columns (e.g. `PAPER_METRICS`); metrics absent from `summary` show NA.
    """
    available = list(dict.fromkeys(summary.columns.get_level_values("metric")))
    metrics = available if metrics is None else list(metrics)

    def cell(method: str, metric: str) -> str:
        mean = summary.loc[method, (metric, "mean")] if metric in available else float("nan")
        if pd.isna(mean):
            return "NA"
        text = f"{mean:.{digits}f}"
        if ci:
            text += f" [{summary.loc[method, (metric, 'ci_low')]:.{digits}f}, {summary.loc[method, (metric, 'ci_high')]:.{digits}f}]"
        return text

    def header(metric: str) -> str:
        spec = METRICS.get(metric)
        if not abbreviate or spec is None:
            return metric
        return f"{spec.abbreviation} {'↑' if spec.higher_is_better else '↓'}"

    lines = ["| method | " + " | ".join(header(m) for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    lines += [f"| {method} | " + " | ".join(cell(method, m) for m in metrics) + " |" for method in summary.index]
    return "\n".join(lines)
