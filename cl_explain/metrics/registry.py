"""The metric registry: each metric is registered next to its implementation with `@register_metric`.

A registered function computes one *family* of metrics (those sharing forward passes) for a list of
`ScoredPair`s: `fn(model, items, options) -> [{metric: Values or MetricNotApplicable}]`, one dict per
item with the item's `metrics` (only metrics of this family reach it). Stacking several
`@register_metric` decorators on one function makes them one family.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ..models.similarity import SimilarityModel
from ..params import check_common
from .common import MetricNotApplicable, ScoredPair, Values

FamilyResult = list[dict[str, "Values | MetricNotApplicable"]]
FamilyFunction = Callable[[SimilarityModel, Sequence[ScoredPair], Mapping[str, Any]], FamilyResult]

#: Options every metric accepts: batch_size (never changes a result) and precision.
COMMON_OPTIONS: dict[str, Any] = {"batch_size": 64, "precision": "fp32"}


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    `options` are the options (with defaults) that change its results; `pair`: it scores both maps
    together (an explanation of x1 alone does not apply); `paper_column`: its column in the paper's Table I
    (1-based; None for metrics beyond the paper). The registry lists the paper's columns first.
    """

    name: str
    family: str
    higher_is_better: bool
    abbreviation: str
    description: str
    needs_masks: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    pair: bool = False
    paper_column: int | None = None
    compute: FamilyFunction | None = field(default=None, compare=False, repr=False)
    order: int = field(default=0, compare=False, repr=False)

    @property
    def direction(self) -> str:
        """Which values are better: "higher" or "lower"."""
        return "higher" if self.higher_is_better else "lower"

    @property
    def label(self) -> str:
        """The paper's column header: abbreviation and an arrow pointing to the better values (e.g. "SD ↓")."""
        return f"{self.abbreviation} {'↑' if self.higher_is_better else '↓'}"


_REGISTRY: dict[str, MetricSpec] = {}
_ORDER = itertools.count()


def register_metric(
    name: str,
    *,
    higher_is_better: bool,
    abbreviation: str,
    description: str,
    family: str | None = None,
    needs_masks: bool = False,
    options: Mapping[str, Any] | None = None,
    pair: bool = False,
    paper_column: int | None = None,
) -> Callable[[FamilyFunction], FamilyFunction]:
    """Decorator: register the family function below under metric `name` (see the module docstring)."""
    order = next(_ORDER)  # taken when the decorator line is read: stacked decorators keep their written order

    def decorate(fn: FamilyFunction) -> FamilyFunction:
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is registered twice")
        spec = MetricSpec(
            name,
            family or name,
            higher_is_better,
            abbreviation,
            description,
            needs_masks,
            dict(options or {}),
            pair,
            paper_column,
            fn,
            order,
        )
        for other in _REGISTRY.values():
            if other.family == spec.family and other.compute is not fn:
                raise ValueError(
                    f"metric {name!r}: family {spec.family!r} is computed by another function "
                    f"({other.name!r}); stack the decorators on one function"
                )
            for key in set(other.options) & set(spec.options):
                if other.options[key] != spec.options[key]:
                    raise ValueError(
                        f"metric {name!r}: option {key!r} defaults to {spec.options[key]!r}, "
                        f"but {other.name!r} sets {other.options[key]!r}"
                    )
        _REGISTRY[name] = spec
        return fn

    return decorate


def metric_specs() -> dict[str, MetricSpec]:
    """Every registered metric by name: the paper's columns in its order, then the others as registered."""
    _load_all_metrics()
    return dict(sorted(_REGISTRY.items(), key=lambda item: _position(item[1])))


def _position(spec: MetricSpec) -> tuple[float, int]:
    return (float("inf") if spec.paper_column is None else spec.paper_column, spec.order)


def get_metric(name: str) -> MetricSpec:
    """The registered metric `name`, or a ValueError listing the valid names."""
    specs = metric_specs()
    if name not in specs:
        raise ValueError(f"unknown metric {name!r}; valid metrics: {', '.join(specs)}")
    return specs[name]


def list_metrics() -> dict[str, str]:
    """Metric names -> one-line description with the better direction."""
    return {
        name: f"{spec.description} ({spec.direction} is better; {spec.abbreviation})"
        for name, spec in metric_specs().items()
    }


def paper_metrics() -> tuple[str, ...]:
    """The columns of the paper's metric table (Table I), in its order."""
    return tuple(name for name, spec in metric_specs().items() if spec.paper_column is not None)


def default_options() -> dict[str, Any]:
    """Every metric option with its default (common ones first)."""
    options = dict(COMMON_OPTIONS)
    for spec in metric_specs().values():
        options.update(spec.options)
    return options


def check_metrics(metrics: Iterable[str] | str) -> list[str]:
    """Metric names without repeats, or a ValueError naming the unknown ones."""
    metrics = list(dict.fromkeys([metrics] if isinstance(metrics, str) else metrics))
    specs = metric_specs()
    unknown = [m for m in metrics if m not in specs]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid metrics: {', '.join(specs)}")
    return metrics


def check_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` over the defaults, rejecting unknown names and bad common values."""
    defaults = default_options()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown metric option(s) {unknown}; valid options: {', '.join(defaults)}")
    options = {**defaults, **params}
    check_common(options)
    return options


def result_options(metric: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that change `metric`'s results (its cache key); batch_size never does."""
    return {k: options[k] for k in get_metric(metric).options if k != "batch_size"}


class _MetricTable(Mapping):
    """Read-only live view of the registry (name -> MetricSpec), kept as `METRICS` for existing callers."""

    def __getitem__(self, name: str) -> MetricSpec:
        return metric_specs()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(metric_specs())

    def __len__(self) -> int:
        return len(metric_specs())

    def __repr__(self) -> str:
        return f"METRICS({', '.join(self)})"


#: name -> MetricSpec for every registered metric (a live view of the registry).
METRICS: Mapping[str, MetricSpec] = _MetricTable()


def _load_all_metrics() -> None:
    """Import the metric modules so their @register_metric decorators run."""
    from . import drop, grounding, perturbation, sensitivity  # noqa: F401
