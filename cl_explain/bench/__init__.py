"""The benchmark (`make bench`, scripts/benchmark.py): does each method and metric cost only its
backbone passes, how fast is it, how much memory does it take, and does bf16 keep its results?

- `passes`: pass counting, throughput, overhead ratios, peak memory (the yardstick);
- `runs`: one method or metric timed on a list of pairs, bf16-against-fp32 agreement, the inputs;
- `jobs`: one measurement in a fresh process, with typed results (`Job` -> `JobResult` | `Failure`);
- `report`: the records of a run and the markdown tables made from them.
"""

from ..precision import bf16_status
from .passes import (
    PassCount,
    batch_aware_seconds,
    count_passes,
    ideal_seconds,
    max_rss_mb,
    mean_count,
    measure_throughput,
    overhead_ratio,
)
from .runs import (
    AUC_METRICS,
    PHOTOS,
    Agreement,
    Run,
    benchmark_pairs,
    compare_precision_runs,
    pair_images,
    photo_pairs,
    reduced_params,
    resnet50_similarity_model,
    run_method,
    run_metric,
)

__all__ = [
    "AUC_METRICS",
    "PHOTOS",
    "Agreement",
    "PassCount",
    "Run",
    "batch_aware_seconds",
    "benchmark_pairs",
    "bf16_status",
    "compare_precision_runs",
    "count_passes",
    "ideal_seconds",
    "max_rss_mb",
    "mean_count",
    "measure_throughput",
    "overhead_ratio",
    "pair_images",
    "photo_pairs",
    "reduced_params",
    "resnet50_similarity_model",
    "run_method",
    "run_metric",
]
