"""Benchmark jobs: one measurement in a fresh Python process, with typed results.

Each row of the benchmark runs in its own process so that its peak memory (max RSS) is its own and a
crash or a hang costs one row, not the run. A `Job` says what to measure; `run_job` starts
`python -m cl_explain.bench.jobs`, which builds the model and pairs, runs `measure(job)` and hands
the typed result back (pickled through a temporary file). A job that raises, crashes or times out
comes back as a `Failure` naming why, and the benchmark goes on.

Results: `Rates` (throughput), `Measured` (a method or metric row), `MetricsBlock` (every metric in
one process), `EvaluateTiming` (every method x every metric through `cl_explain.evaluate`), each
wrapped in a `JobResult` with the model's description and the batch size it ran at.
"""

from __future__ import annotations

import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

from ..utils import repo_root
from .passes import PassCount, batch_aware_seconds, mean_count, overhead_ratio, per_pair

KINDS = ("throughput", "method", "metrics", "evaluate")
#: The explanation the metric rows score (cheap, so the row measures the metric).
METRIC_EXPLANATION = "gradcam"


@dataclass(frozen=True)
class Job:
    """One measurement. `params`: the method's parameters (kind "method") or the metric options
    (kind "metrics"); `methods`: the methods of kind "evaluate". `throughput_batches`: (forward,
    forward+backward) batches of a "throughput" job; `row_throughput`: (forward batches, fwd+bwd
    batches, warm-up batches, images per smaller batch size) of the reference timed after a row."""

    kind: str
    model: str
    pairs: int
    batch_size: int | str = 64
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    method: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] = ()
    throughput_batches: tuple[int, int] = (1, 1)
    row_throughput: tuple[int, int, int, int] = (1, 1, 0, 4)
    maps_out: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown job kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "method" and not self.method:
            raise ValueError("a method job needs `method` (the name of the method to time)")
        if self.pairs < 1:
            raise ValueError(f"a job needs at least one pair, got pairs={self.pairs}")


@dataclass(frozen=True)
class Failure:
    """A job that did not finish: the exception, the last lines of a crashed process, or the timeout."""

    error: str


@dataclass(frozen=True)
class NotApplicable:
    """A row that does not apply (a metric without masks, a precision the policy refuses): why."""

    reason: str


@dataclass(frozen=True)
class Rates:
    """Images per second of the model: forward under no_grad, and forward+backward (None if not timed)."""

    forward: float
    train: float | None = None


@dataclass
class Measured:
    """A method or metric row as measured. `seconds` and `counts` hold one entry per call: per pair
    for a method, one call for all pairs for a metric (`pairs_per_call` pairs). `rates` is the
    reference throughput at the row's batch size; `batch_rates` the throughput of each (batch size,
    graph) the row used. `values`: a metric's values per pair; `maps`: the file of a method's maps."""

    seconds: list[float]
    counts: list[PassCount]
    rates: Rates
    batch_rates: list[tuple[int, bool, float]]
    pairs_per_call: int = 1
    baseline_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    values: list[Any] | None = None
    maps: str | None = None

    @property
    def call_seconds(self) -> float:
        return float(statistics.median(self.seconds))

    @property
    def seconds_per_pair(self) -> float:
        return self.call_seconds / self.pairs_per_call

    @property
    def call_count(self) -> PassCount:
        return mean_count(self.counts)

    @property
    def pair_count(self) -> PassCount:
        return per_pair(self.counts, self.pairs_per_call)

    @property
    def overhead(self) -> float | None:
        """Time / (counted passes at the reference throughput)."""
        return overhead_ratio(self.call_seconds, self.call_count, self.rates.forward, self.rates.train)

    @property
    def overhead_own_batches(self) -> float | None:
        """Time / (each counted batch at the throughput of its own size)."""
        own = batch_aware_seconds(self.call_count, {(size, grad): rate for size, grad, rate in self.batch_rates})
        return self.call_seconds / own if own > 0 else None

    @property
    def memory_mb(self) -> float | None:
        """Peak RSS above the loaded model, if measured."""
        if self.peak_rss_mb is None or self.baseline_rss_mb is None:
            return None
        return self.peak_rss_mb - self.baseline_rss_mb


@dataclass
class MetricsBlock:
    """Every metric on the METRIC_EXPLANATION of each pair, one after the other in one process; the
    forward throughput timed before and after (each row's reference is their mean)."""

    rows: dict[str, Measured | NotApplicable]
    baseline_rss_mb: float
    peak_rss_mb: float
    before: float
    after: float


@dataclass
class EvaluateTiming:
    """Every method x every metric through `cl_explain.evaluate`, one call per method: its seconds and
    result rows, and the passes and peak memory of the whole job."""

    seconds: dict[str, float]
    rows: dict[str, int]
    counts: PassCount
    peak_rss_mb: float

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


Outcome = Union[Rates, Measured, MetricsBlock, EvaluateTiming]


@dataclass
class JobResult:
    """What a finished job measured, the model it measured, and the batch size it ran at."""

    description: str
    batch_size: int
    outcome: Outcome


# ================================================================================ in the subprocess


def build_model(name: str):
    """(model, description) for a benchmark model key: "resnet50" or "embedded"."""
    from . import runs

    if name == "resnet50":
        return runs.resnet50_similarity_model(seed=0), "ResNet-50 + 2048-2048-128 head, random weights (seed 0)"
    if name != "embedded":
        raise ValueError(f"unknown model {name!r}; choose resnet50 or embedded")
    from ..models.embedded import build_backbone, build_head, read_manifest

    if "embedded-simclr" in read_manifest()["models"]:
        from ..models.registry import load_model

        return load_model("embedded-simclr"), "embedded-simclr (trained checkpoint from data/models)"
    import torch

    from ..models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel

    torch.manual_seed(0)
    model = SimilarityModel(
        build_backbone(16), build_head("simclr", 16), normalize=(IMAGENET_MEAN, IMAGENET_STD), name="embedded-random"
    )
    return model.eval(), "embedded architecture at random init (data/models/manifest.json not built yet)"


def measure(job: Job) -> JobResult:
    """Run `job` in this process (what the subprocess does; also callable directly, e.g. on a GPU host)."""
    import torch

    from . import runs
    from .passes import max_rss_mb, measure_throughput

    if job.threads:
        torch.set_num_threads(job.threads)
    torch.manual_seed(0)
    model, description = build_model(job.model)
    model = model.to(job.device)
    pairs = runs.benchmark_pairs(job.model, job.pairs)
    batch_size = job.batch_size
    if batch_size == "auto":  # from the free GPU memory (64 on a CPU), as explain(batch_size="auto")
        from ..explainers.base import get_method
        from ..utils import resolve_batch_size

        backward = job.kind == "method" and get_method(job.method).gradient_batches
        batch_size = resolve_batch_size("auto", model, pairs[0].x1, 64, backward)
    timer = _Timer(model, runs.pair_images(pairs), batch_size, job)
    if job.kind == "throughput":
        forward, train = job.throughput_batches
        outcome: Outcome = Rates(timer.rate(False, forward, 1), timer.rate(True, train, 1))
    elif job.kind == "metrics":
        outcome = _metrics_block(model, pairs, job, batch_size, timer)
    elif job.kind == "evaluate":
        outcome = _evaluate_all(model, pairs, job, batch_size)
    else:
        measure_throughput(model, pairs[0].x1, 1, backward=True, batches=1, warmup=0)  # pools exist before RSS
        baseline = max_rss_mb()
        run = runs.run_method(
            model, pairs, job.method, dict(job.params), batch_size=batch_size, precision=job.precision
        )
        peak = max_rss_mb()
        if job.maps_out:
            torch.save([[None if m is None else m.clone() for m in maps] for maps in run.outputs], job.maps_out)
        forward, train, warmup, _ = job.row_throughput
        backward = any(c.backward for c in run.counts)
        rates = Rates(timer.rate(False, forward, warmup), timer.rate(True, train, warmup) if backward else None)
        outcome = Measured(
            run.seconds, run.counts, rates, timer.batch_rates(run.counts, rates), 1, baseline, peak, maps=job.maps_out
        )
    return JobResult(description, int(batch_size), outcome)


class _Timer:
    """Throughput of the job's model on its pair images at the job's precision (the row references)."""

    def __init__(self, model, images, batch_size: int, job: Job) -> None:
        self.model, self.images, self.batch_size, self.job = model, images, batch_size, job

    def rate(self, backward: bool, batches: int, warmup: int, size: int | None = None) -> float:
        from .passes import measure_throughput

        return measure_throughput(
            self.model,
            self.images,
            size or self.batch_size,
            precision=self.job.precision,
            backward=backward,
            batches=batches,
            warmup=warmup,
        )

    def batch_rates(self, counts: list[PassCount], reference: Rates) -> list[tuple[int, bool, float]]:
        """(size, graph, images/s) for every batch shape the row used: the reference batch size reuses
        the reference rates, smaller batches are timed on about `row_throughput[3]` images each."""
        images = self.job.row_throughput[3]
        rows = []
        for size, grad in sorted({key for count in counts for key in count.batches}):
            known = reference.train if grad else reference.forward
            if size == self.batch_size and known is not None:
                rows.append((size, grad, known))
            else:
                rows.append((size, grad, self.rate(grad, max(1, -(-images // size)), 1, size=size)))
        return rows


def _metrics_block(model, pairs, job: Job, batch_size: int, timer: _Timer) -> MetricsBlock:
    from ..explainers.base import explain
    from ..metrics import METRICS
    from .passes import max_rss_mb
    from .runs import run_metric

    explanations = [explain(model, p.x1, p.x2, METRIC_EXPLANATION, batch_size=batch_size) for p in pairs]
    forward, _, warmup, _ = job.row_throughput
    before = timer.rate(False, forward, max(warmup, 1))
    baseline = max_rss_mb()
    runs_by_metric = {}
    for metric in METRICS:
        refusal = metric_refusal(metric) if job.precision == "bf16" else None
        if refusal:
            runs_by_metric[metric] = NotApplicable(f"bf16 refused: {refusal}")
            continue
        run = run_metric(
            model, pairs, explanations, metric, dict(job.params), batch_size=batch_size, precision=job.precision
        )
        runs_by_metric[metric] = NotApplicable(run.not_applicable) if run.not_applicable else run
    peak = max_rss_mb()
    after = timer.rate(False, forward, 0)
    reference = Rates((before + after) / 2)
    counts = [c for run in runs_by_metric.values() if not isinstance(run, NotApplicable) for c in run.counts]
    batch_rates = timer.batch_rates(counts, reference)
    rows: dict[str, Measured | NotApplicable] = {
        metric: run
        if isinstance(run, NotApplicable)
        else Measured(run.seconds, run.counts, reference, batch_rates, run.pairs_per_call, values=run.outputs)
        for metric, run in runs_by_metric.items()
    }
    return MetricsBlock(rows, baseline, peak, before, after)


def metric_refusal(metric: str) -> str | None:
    """Why the bf16 policy refuses `metric` (its family's rule; max-sensitivity follows the explained method)."""
    from ..metrics import METRICS
    from ..precision import bf16_refusal

    family = METRICS[metric].family
    if family == "grounding":
        return None
    return bf16_refusal(METRIC_EXPLANATION if family == "sensitivity" else family)


def _evaluate_all(model, pairs, job: Job, batch_size: int) -> EvaluateTiming:
    from ..metrics import METRICS, evaluate
    from .passes import count_passes, max_rss_mb

    seconds, rows, total = {}, {}, PassCount()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not-applicable cells (e.g. MS of occlusion) are expected
        for method in job.methods:
            with count_passes(model) as count:
                start = time.perf_counter()
                frame = evaluate(
                    model,
                    pairs,
                    [method],
                    metrics=list(METRICS),
                    progress=False,
                    batch_size=batch_size,
                    precision=job.precision,
                )
                seconds[method] = time.perf_counter() - start
            rows[method] = len(frame)
            total.forward += count.forward
            total.forward_grad += count.forward_grad
            total.backward += count.backward
    return EvaluateTiming(seconds, rows, total, max_rss_mb())


# ======================================================================================= the parent


def run_job(job: Job, timeout: float) -> JobResult | Failure:
    """Run `job` in a fresh Python process; whatever goes wrong comes back as a `Failure`."""
    with tempfile.TemporaryDirectory(prefix="cl-bench-job-") as folder:
        request, answer = Path(folder) / "job.pkl", Path(folder) / "result.pkl"
        request.write_bytes(pickle.dumps(job))
        command = [sys.executable, "-m", "cl_explain.bench.jobs", str(request), str(answer)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=repo_root())
        except subprocess.TimeoutExpired:
            return Failure(f"timed out after {timeout:.0f} s")
        if done.returncode != 0 or not answer.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return Failure(" | ".join(tail) or f"exit code {done.returncode}")
        return pickle.loads(answer.read_bytes())


def _main(argv: list[str]) -> int:
    """`python -m cl_explain.bench.jobs JOB.pkl RESULT.pkl`: measure one pickled Job, pickle the result."""
    if len(argv) != 2:
        print("usage: python -m cl_explain.bench.jobs JOB.pkl RESULT.pkl", file=sys.stderr)
        return 2
    job = pickle.loads(Path(argv[0]).read_bytes())
    result = measure(job)
    partial = Path(argv[1] + ".partial")
    partial.write_bytes(pickle.dumps(result))
    partial.replace(argv[1])
    return 0


if __name__ == "__main__":
    # Run the imported module's copy so that pickled records name cl_explain.bench.jobs, not __main__.
    from cl_explain.bench import jobs

    sys.exit(jobs._main(sys.argv[1:]))
