"""The benchmark's report: typed records of a run, and the markdown tables made from them.

A `ModelSection` collects what the benchmark measured on one model (throughput, one `Entry` per
method or metric and precision, the occlusion memory rows, the all-methods x all-metrics timing);
`markdown` turns sections into the table `make bench` prints. Targets (fp32): overhead <= 1.25 for the
perturbation methods and metrics; bf16 >= 1.8x faster on them with maps and AUCs unchanged (rank
correlation >= 0.99, AUC difference <= 0.01); conditional occlusion <= 2 GB; all methods x all
metrics on 100 embedded pairs <= 600 s.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..markdown import table
from .jobs import METRIC_EXPLANATION, EvaluateTiming, Failure, Measured, MetricsBlock, NotApplicable, Rates
from .passes import PassCount
from .runs import Run, compare_precision_runs

OVERHEAD_TARGET = 1.25
BF16_SPEEDUP_TARGET = 1.8
OCCLUSION_MEMORY_TARGET_MB = 2048
EVALUATE_TARGET_SECONDS = 600
#: Rows the overhead and bf16 speed targets apply to: the perturbation methods and metrics.
PERTURBATION_METHODS = ("occlusion", "context_agnostic_occlusion", "pairwise_occlusion")
PERTURBATION_FAMILIES = ("insertion", "deletion", "drop")

ROW_HEADER = (
    "settings",
    "precision",
    "s/pair",
    "fwd",
    "bwd",
    "fwd/s",
    "f+b/s",
    "overhead",
    "overhead (own batches)",
    "peak MB",
    "target ≤ 1.25",
)
COLUMNS_NOTE = (
    "Columns: s/pair = seconds per pair (methods: median over the pairs; metrics: all pairs scored in one "
    "`evaluate_pairs` call, as `evaluate` does, divided by the number of pairs); fwd = images through the "
    "backbone without a backward pass, bwd = images with forward+backward, per pair (counted by a hook on the "
    "backbone); fwd/s and f+b/s = throughput of the same model, batch size, precision and images, measured in "
    "the same process right after the row; overhead = s/pair / (fwd / fwd/s + bwd / f+b/s); overhead (own "
    "batches) = the same with each batch timed at its own size (separates small-batch cost from work outside "
    "the backbone); peak MB = max RSS above the loaded model (absolute in brackets), each row in a fresh "
    "process. Targets (fp32): overhead ≤ 1.25 for the perturbation methods (M1-M3) and the perturbation "
    "metrics (insertion, deletion, drop/increase)."
)


@dataclass
class Entry:
    """One row of a section: the settings it ran with, and what came back."""

    settings: Mapping[str, Any]
    result: Measured | NotApplicable | Failure


@dataclass
class ModelSection:
    """Everything measured on one benchmark model; rows keyed by name, then by precision."""

    title: str
    pairs: int
    batch_size: int | str
    description: str = "?"
    throughput: dict[str, dict[str, Rates | Failure]] = field(default_factory=dict)
    methods: dict[str, dict[str, Entry]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Entry]] = field(default_factory=dict)
    blocks: dict[str, MetricsBlock | Failure] = field(default_factory=dict)
    memory: list[Entry] = field(default_factory=list)
    evaluate: EvaluateTiming | Failure | None = None
    evaluate_pairs: int = 0


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "paper defaults"


def _note_row(name: str, settings: str, precision: str, note: str) -> list[str]:
    """A row that carries a note (error, not applicable) instead of measurements."""
    cells = [name, settings, precision, note]
    return cells + [""] * (len(ROW_HEADER) + 1 - len(cells))


def measured_row(name: str, entry: Entry, precision: str, targeted: bool) -> list[str]:
    """The table row of one entry: its measurements, or its note."""
    settings, result = settings_text(entry.settings), entry.result
    if isinstance(result, Failure):
        return _note_row(name, settings, precision, f"error: {result.error}")
    if isinstance(result, NotApplicable):
        return _note_row(name, settings, precision, f"NA ({result.reason[:80]})")
    ratio, count, memory = result.overhead, result.pair_count, result.memory_mb
    target = ""
    if targeted and precision == "fp32":
        target = "n/a" if ratio is None else ("met" if ratio <= OVERHEAD_TARGET else "MISSED")
    return [
        name,
        settings,
        precision,
        f"{result.seconds_per_pair:.3g}",
        str(count.forward_only),
        str(count.backward),
        f"{result.rates.forward:.1f}",
        "" if result.rates.train is None else f"{result.rates.train:.1f}",
        format_ratio(ratio),
        format_ratio(result.overhead_own_batches),
        "see below" if memory is None else f"{memory:.0f} ({result.peak_rss_mb:.0f})",
        target,
    ]


def bf16_rows(
    rows: Mapping[str, Mapping[str, Entry]], targeted: Sequence[str], outputs: Callable[[Measured], list]
) -> list[list[str]]:
    """bf16 against fp32 for every row measured in both: speed-up, agreement, verdict."""
    lines = []
    for name, runs in rows.items():
        fp32, bf16 = (runs[p].result if p in runs else None for p in ("fp32", "bf16"))
        if not isinstance(fp32, Measured) or not isinstance(bf16, Measured):
            continue
        speedup = fp32.seconds_per_pair / bf16.seconds_per_pair
        agreement = compare_precision_runs(Run(name, [], [], outputs(fp32)), Run(name, [], [], outputs(bf16)))
        fast = speedup >= BF16_SPEEDUP_TARGET or name not in targeted
        lines.append(
            [
                name,
                f"{speedup:.2f}",
                "" if agreement.min_rank_correlation is None else f"{agreement.min_rank_correlation:.4f}",
                "" if agreement.max_auc_difference is None else f"{agreement.max_auc_difference:.4f}",
                "met" if agreement.passed and fast else "MISSED",
            ]
        )
    return lines


def perturbation_metrics() -> tuple[str, ...]:
    from ..metrics import METRICS

    return tuple(name for name, spec in METRICS.items() if spec.family in PERTURBATION_FAMILIES)


def section_markdown(section: ModelSection, precisions: Sequence[str], bf16_reason: str | None) -> list[str]:
    """The lines of one model's section. `bf16_reason`: None when bf16 ran, else why it did not."""
    import torch

    lines = [
        "",
        f"### {section.title}",
        "",
        f"Model: {section.description}; {section.pairs} pair(s); batch size {section.batch_size}.",
    ]
    for precision, runs in section.throughput.items():
        cells = ", ".join(
            f"forward {v.forward:.1f}, forward+backward {v.train:.1f} img/s"
            for v in runs.values()
            if isinstance(v, Rates)
        )
        lines.append(f"Throughput {precision} at the start of the section: {cells}.")
    metrics = perturbation_metrics()
    lines += ["", table(["method", *ROW_HEADER], _rows(section.methods, precisions, PERTURBATION_METHODS, bf16_reason))]
    lines += [
        "",
        f"Metrics, scoring the {METRIC_EXPLANATION} explanation of each pair:",
        "",
        table(["metric", *ROW_HEADER], _rows(section.metrics, precisions, metrics, bf16_reason)),
    ]
    for precision, block in section.blocks.items():
        if isinstance(block, MetricsBlock):
            lines += [
                "",
                f"Metrics ({precision}) ran one after the other in one process: peak RSS "
                f"{block.peak_rss_mb - block.baseline_rss_mb:.0f} MB above the loaded model "
                f"({block.peak_rss_mb:.0f} MB); forward throughput {block.before:.1f} img/s before "
                f"and {block.after:.1f} after the metrics (the reference is the mean).",
            ]
    if section.memory:
        lines += ["", "Conditional occlusion memory as the grid grows (fp32):", "", _memory_table(section.memory)]
    if bf16_reason is None and "bf16" in precisions:
        rows = bf16_rows(section.methods, PERTURBATION_METHODS, lambda r: torch.load(r.maps))
        rows += bf16_rows(section.metrics, metrics, lambda r: r.values)
        lines += [
            "",
            "bf16 against fp32 (targets: ≥ 1.8x faster for perturbation rows, rank correlation "
            "≥ 0.99, AUC difference ≤ 0.01):",
            "",
            table(["", "speed-up", "min rank corr.", "max AUC diff.", "target"], rows),
        ]
    if section.evaluate is not None:
        lines += _evaluate_lines(section.evaluate, section.evaluate_pairs)
    return lines


def _rows(
    rows: Mapping[str, Mapping[str, Entry]], precisions: Sequence[str], targeted: Sequence[str], reason: str | None
) -> list[list[str]]:
    out = []
    for name, runs in rows.items():
        for precision in precisions:
            if precision in runs:
                out.append(measured_row(name, runs[precision], precision, name in targeted))
            else:
                out.append(_note_row(name, "", precision, reason or "not run"))
    return out


def _memory_table(entries: Sequence[Entry]) -> str:
    rows = []
    for entry in entries:
        result = entry.result
        if not isinstance(result, Measured):
            note = result.error if isinstance(result, Failure) else result.reason
            rows.append([settings_text(entry.settings), "", "", f"error: {note}", "", ""])
            continue
        rows.append(
            [
                settings_text(entry.settings),
                str(len(result.seconds)),
                str(result.call_count.forward_only),
                f"{result.call_seconds:.1f}",
                f"{result.memory_mb:.0f} ({result.peak_rss_mb:.0f})",
                "met" if result.memory_mb <= OCCLUSION_MEMORY_TARGET_MB else "MISSED",
            ]
        )
    header = ["occlusion settings", "pairs", "forward passes per pair", "s/pair", "peak MB above model (abs.)"]
    return table([*header, "target ≤ 2 GB"], rows)


def _evaluate_lines(timing: EvaluateTiming | Failure, pairs: int) -> list[str]:
    from ..metrics import METRICS

    if isinstance(timing, Failure):
        return ["", f"All methods x all metrics: error {timing.error}"]
    per_100 = timing.total_seconds * 100 / pairs
    scaled = "" if pairs == 100 else f", i.e. {per_100:.0f} s for 100 pairs (linear extrapolation)"
    met = "met" if per_100 <= EVALUATE_TARGET_SECONDS else "MISSED"
    return [
        "",
        f"All {len(timing.seconds)} methods x all {len(METRICS)} metrics on {pairs} embedded pairs "
        f"(`cl_explain.evaluate`, paper settings, fp32): **{timing.total_seconds:.0f} s**{scaled} "
        f"(target ≤ {EVALUATE_TARGET_SECONDS} s for 100 pairs: {met}); {timing.counts.forward_only} forward + "
        f"{timing.counts.backward} forward+backward passes; peak RSS {timing.peak_rss_mb:.0f} MB.",
        "",
        table(
            ["method", "seconds (all metrics, all pairs)", "result rows"],
            [[method, f"{seconds:.1f}", str(timing.rows[method])] for method, seconds in timing.seconds.items()],
        ),
    ]


def jsonable(value: Any) -> Any:
    """Records as plain JSON data (dataclasses as dicts, pass counts by `as_dict`, tuple keys as strings)."""
    if isinstance(value, PassCount):
        return value.as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **data}
    if isinstance(value, (dict, Counter)):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
