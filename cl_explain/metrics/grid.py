"""`evaluate`: every pair explained with every method and scored with every metric, as a tidy DataFrame.

Pairs are explained and scored a chunk at a time, so metrics that batch across pairs (average
drop/increase) share their batches; every result may be cached on disk (`cache.ResultCache`).
Non-applicable results are left out, listed in `df.attrs["not_applicable"]` and warned about.
"""

from __future__ import annotations

import inspect
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd

from ..data.pairs import Pair
from ..explainers.base import PairExplanation, explain, get_method
from ..models.similarity import SimilarityModel
from ..utils import source_digest
from .cache import ResultCache, tensor_digest
from .common import MetricNotApplicable
from .registry import check_metrics, check_options, get_metric, paper_metrics, result_options
from .sanity import random_explanation
from .scoring import Results, as_pair, compute_many, prepare, sized_options

if TYPE_CHECKING:
    from dask.distributed import Client

COLUMNS = ["pair_id", "seed", "method", "metric", "value"]

# what a caller may set for the random baseline: its options, not the pair it is drawn for
_RANDOM_OPTIONS = set(inspect.signature(random_explanation).parameters) - {"x1", "x2", "seed", "model"}


def _method_table(
    methods: Sequence[str] | str, method_params: Mapping[str, Mapping] | None
) -> dict[str, tuple[str, dict]]:
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
                raise ValueError(
                    f"the random baseline takes only {sorted(_RANDOM_OPTIONS)} (its seed is the pair seed), "
                    f"got {unknown}"
                )
        else:
            get_method(name)
        table[label] = (name, params)
    return table


def _checked_pairs(pairs: Sequence[Any]) -> list[Pair]:
    pairs = [as_pair(item, i) for i, item in enumerate(pairs)]
    seen = Counter((p.pair_id, p.seed) for p in pairs)
    duplicated = [key for key, count in seen.items() if count > 1]
    if duplicated:
        raise ValueError(f"pairs must have distinct (pair_id, seed); repeated: {duplicated}")
    return pairs


@dataclass
class _Grid:
    """What every cell of the grid shares: the model, metric options, cache and the parts of each key."""

    model: SimilarityModel
    metrics: list[str]
    options: dict[str, Any]
    cache: ResultCache
    code: str
    fingerprint: str

    def keys(self, pair: Pair, digests: tuple[str, str], name: str, explain_kw: dict) -> dict[str, dict]:
        """The cache key of each metric's result for one pair explained by one method."""
        images, masks = digests
        return {
            metric: {
                "code": self.code,
                "model": self.fingerprint,
                "method": name,
                "method_params": {k: v for k, v in explain_kw.items() if k != "batch_size"},
                "metric": metric,
                "metric_params": result_options(metric, self.options),
                "pair": [pair.pair_id, pair.seed, images, masks if get_metric(metric).needs_masks else ""],
            }
            for metric in self.metrics
        }

    def explanation(self, pair: Pair, name: str, explain_kw: dict) -> PairExplanation:
        if name == "random":
            return random_explanation(pair.x1, pair.x2, seed=pair.seed, **explain_kw)
        x2 = pair.x2 if get_method(name).needs_pair else None
        return explain(self.model, pair.x1, x2, name, **explain_kw)

    def score_chunk(
        self, pairs: Sequence[Pair], digests: Sequence[tuple[str, str]], name: str, explain_kw: dict
    ) -> list[Results]:
        """Each pair's results: read from the cache, the missing ones explained and scored together."""
        found, todo = [], []
        for index, pair in enumerate(pairs):
            keys = self.keys(pair, digests[index], name, explain_kw)
            found.append({metric: self.cache.load(key) for metric, key in keys.items()})
            missing = [metric for metric, value in found[index].items() if value is None]
            if missing:
                explanation = self.explanation(pair, name, explain_kw)
                todo.append((index, keys, prepare(pair.x1, pair.x2, explanation, missing, (pair.mask1, pair.mask2))))
        computed = compute_many(self.model, [item for _, _, item in todo], self.options)
        for (index, keys, item), result in zip(todo, computed):
            for metric in item.metrics:
                found[index][metric] = result[metric]
                self.cache.save(keys[metric], result[metric])
        return found


@dataclass(frozen=True)
class Chunk:
    """One unit of work: one method (by its position among the labels) over a run of consecutive pairs."""

    label_index: int
    indices: range
    name: str
    explain_kw: dict

    def inputs(self, pairs: Sequence[Pair], digests: Sequence[tuple[str, str]]) -> tuple[list, list, str, dict]:
        """The arguments of `_Grid.score_chunk` for this chunk."""
        return [pairs[i] for i in self.indices], [digests[i] for i in self.indices], self.name, self.explain_kw


def _cell(pair: Pair, label: str, results: Results) -> tuple[list[dict], list[dict]]:
    """The rows of one (pair, method) cell and its non-applicable records."""
    rows, skipped = [], []
    for metric, values in results.items():
        if isinstance(values, MetricNotApplicable):
            skipped.append(
                {"pair_id": pair.pair_id, "seed": pair.seed, "method": label, "metric": metric, "reason": str(values)}
            )
            continue
        rows += [
            {"pair_id": pair.pair_id, "seed": pair.seed, "method": label, "metric": k, "value": values[k]}
            for k in sorted(values, key=lambda k: (k != metric, k))
        ]  # cache-independent order
    return rows, skipped


def _frame(cells: dict[tuple[int, int], tuple[list, list]]) -> pd.DataFrame:
    """The rows pair by pair, methods in the given order; non-applicable records in attrs, with a warning."""
    rows = [row for key in sorted(cells) for row in cells[key][0]]
    skipped = [record for key in sorted(cells) for record in cells[key][1]]
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["not_applicable"] = skipped
    if skipped:
        counts = Counter((s["method"], s["metric"]) for s in skipped)
        listing = "; ".join(f"{m}/{k} x{n}" for (m, k), n in counts.items())
        warnings.warn(
            f"{len(skipped)} result(s) are not applicable and were left out ({listing}); "
            "see df.attrs['not_applicable'] for the reasons",
            stacklevel=3,
        )
    return df


def evaluate(
    model: SimilarityModel,
    pairs: Sequence[Any],
    methods: Sequence[str] | str,
    metrics: Sequence[str] | str | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    client: Client | None = None,
    **params: Any,
) -> pd.DataFrame:
    """Explain every pair with every method and score it: tidy rows (pair_id, seed, method, metric, value).

    `pairs`: Pair objects (or make_pair results, or dicts) with x1, x2, optional mask1/mask2, pair_id,
    seed. `methods`: registered method names or labels; "random" is the seeded random-map baseline
    (seed = the pair seed; per pixel, or on a coarse grid with {"cells": k}). `method_params`: label ->
    explain parameters; {"method": name} lets one method appear under several labels (e.g.
    {"ixg_guided": {"method": "input_x_gradient", "guided": True}}). `metrics` default: `PAPER_METRICS`.
    `params`: metric options as in `evaluate_pair`; batch_size and precision also reach `explain` unless
    the method's params set them (without batch_size, each method uses its own default). With
    `cache_dir`, every result is stored in its own small JSON file and reused, so a re-run recomputes
    (and re-explains) nothing; the key includes a digest of the package's source, so results of older
    code are never served. Non-applicable results are left out, warned about and listed in
    `df.attrs["not_applicable"]`.

    `client`: a `dask.distributed.Client`; the (method, pair chunk) units then run as tasks on its
    workers (see `cl_explain.metrics.cluster`) and the DataFrame equals the one computed here. Give a
    `cache_dir` every worker can write to make such a run resumable; without one, results come back
    through Dask only and an interrupted run starts again from nothing.
    """
    metrics = check_metrics(paper_metrics() if metrics is None else metrics)
    options = check_options(params)
    table = _method_table(methods, method_params)
    pairs = _checked_pairs(pairs)
    options = sized_options(options, model, pairs[0].x1) if pairs else options
    cache = ResultCache(cache_dir)
    grid = _Grid(
        model,
        metrics,
        options,
        cache,
        code=source_digest() if cache.enabled else "",  # new code never reuses old results
        fingerprint=model.fingerprint() if cache.enabled else "",
    )
    # batch_size reaches explain only when given: otherwise each method keeps its own (size-scaled) default
    explain_defaults = {
        "precision": options["precision"],
        **({"batch_size": params["batch_size"]} if "batch_size" in params else {}),
    }
    digests = [(tensor_digest(p.x1, p.x2), tensor_digest(p.mask1, p.mask2)) for p in pairs]
    size = max(1, options["batch_size"] // 4)
    chunks = [
        Chunk(
            label_index,
            range(first, min(first + size, len(pairs))),
            name,
            method_kw if name == "random" else {**explain_defaults, **method_kw},
        )
        for label_index, (name, method_kw) in enumerate(table.values())
        for first in range(0, len(pairs), size)
    ]
    if client is None:
        scored = _score_serially(grid, pairs, digests, chunks, progress)
    else:
        from .cluster import score_on_cluster

        scored = score_on_cluster(client, grid, pairs, digests, chunks, progress)
    labels = list(table)
    cells: dict[tuple[int, int], tuple[list, list]] = {}  # (pair, method) -> (rows, not-applicable records)
    for chunk, results in zip(chunks, scored):
        for index, result in zip(chunk.indices, results):
            cells[(index, chunk.label_index)] = _cell(pairs[index], labels[chunk.label_index], result)
    return _frame(cells)


def _score_serially(
    grid: _Grid, pairs: list[Pair], digests: list[tuple[str, str]], chunks: list[Chunk], progress: bool
) -> list[list[Results]]:
    """Each chunk's results, computed here one chunk after another."""
    from tqdm.auto import tqdm

    scored = []
    with tqdm(total=sum(len(c.indices) for c in chunks), desc="evaluate", disable=not progress) as bar:
        for chunk in chunks:
            scored.append(grid.score_chunk(*chunk.inputs(pairs, digests)))
            bar.update(len(chunk.indices))
    return scored
