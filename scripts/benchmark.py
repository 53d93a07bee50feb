#!/usr/bin/env python
"""`make bench`: how fast is every explanation method and metric, and does it cost only its passes?

For (a) a ResNet-50 similarity model at 224 px with random weights (the paper's architecture and
cost) on pairs of scikit-image's bundled photos and (b) the embedded default model on scene pairs,
the script measures per method and per metric: seconds per pair, forward and backward passes through
the backbone (counted by a hook, not assumed), the forward and forward+backward throughput of the
same model at the same batch size and precision in the same run, the overhead ratio
time / (passes / throughput), and the peak memory (each method in a fresh subprocess: max RSS minus
the RSS of the loaded model). bf16 rows run where the hardware supports bf16 and are reported as
unsupported (with the reason) elsewhere. Finally every method x every metric runs on `--pairs`
embedded pairs through `cl_explain.evaluate`, timed.

Settings: by default the ResNet-50 part uses a documented reduced grid / sample count per method
(REDUCED below; the overhead ratio does not depend on it); `--full` uses the paper's settings,
`--quick` a tiny smoke-test size. The markdown table is printed and written to `--output`; the
raw numbers go next to it as JSON.

    python scripts/benchmark.py --output build/bench.md [--quick | --full] [--models resnet50,embedded]

`--device cuda` runs every job on the GPU (pairs stay on the CPU; methods move them) and reports the
same columns; without a CUDA device the script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cl_explain.bench.jobs import Failure, Job, JobResult, MetricsBlock, NotApplicable, run_job  # noqa: E402
from cl_explain.bench.report import (  # noqa: E402
    COLUMNS_NOTE,
    Entry,
    ModelSection,
    jsonable,
    perturbation_metrics,
    section_markdown,
)
from cl_explain.bench.runs import reduced_params  # noqa: E402
from cl_explain.data.scenes import DEFAULT_SIZE as SCENE_SIZE  # noqa: E402
from cl_explain.explainers.base import get_method, list_methods  # noqa: E402
from cl_explain.metrics import METRICS  # noqa: E402
from cl_explain.utils import cpu_name  # noqa: E402

METHODS = tuple(list_methods())
#: Methods that read tokens or attention and so need a Vision Transformer; both benchmark models are
#: CNNs, so these are listed but not run here.
VIT_METHODS = tuple(method for method in METHODS if get_method(method).vit_only)
CNN_METHODS = tuple(method for method in METHODS if method not in VIT_METHODS)
METRIC_NAMES = tuple(METRICS)
PERTURBATION_METRICS = perturbation_metrics()
#: 16 curve points at 224 px (the paper: 225, step 224): ceil(224*224 / 15) pixels per step.
RESNET_STEP = 3346

#: Per model and size profile: pairs, batch size, method parameters (absent = paper default),
#: metric options, the occlusion strides of the memory check, throughput batches (forward, fwd+bwd),
#: and the throughput measured beside each row (forward batches, fwd+bwd batches, warm-up, images).
#: A profile states what differs from its model's base.
_RESNET50_BASE: dict[str, Any] = {"batch_size": 16, "methods": {}, "metrics": {}, "row_throughput": (1, 1, 0, 4)}
_EMBEDDED_BASE: dict[str, Any] = {
    "batch_size": 64,
    "methods": {},
    "metrics": {},
    "memory_strides": (),
    "throughput_batches": (20, 20),
    "row_throughput": (10, 10, 1, 128),
}
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "resnet50": {
        "reduced": {
            **_RESNET50_BASE,
            "pairs": 2,
            "methods": reduced_params(stride=32, erasures=16, smoothgrad_samples=16, invariance_samples=64),
            "metrics": {"step": RESNET_STEP, "n_draws": 3},
            "memory_strides": (16,),
            "throughput_batches": (2, 1),
        },
        "quick": {
            **_RESNET50_BASE,
            "pairs": 1,
            "methods": reduced_params(
                stride=64, erasures=16, smoothgrad_samples=16, invariance_samples=16, invariance_epochs=100
            ),
            "metrics": {"step": RESNET_STEP, "n_draws": 1},
            "memory_strides": (32,),
            "throughput_batches": (1, 1),
        },
        "full": {
            **_RESNET50_BASE,
            "pairs": 3,
            "memory_strides": (8,),
            "throughput_batches": (3, 2),
            "row_throughput": (2, 1, 0, 4),
        },
    },
    "embedded": {
        "reduced": {**_EMBEDDED_BASE, "pairs": 10},
        "quick": {
            **_EMBEDDED_BASE,
            "pairs": 2,
            "methods": {"pixel_invariance": {"samples": 128}},
            "metrics": {"n_draws": 2},
            "throughput_batches": (5, 5),
            "row_throughput": (5, 5, 1, 64),
        },
        "full": {**_EMBEDDED_BASE, "pairs": 20},
    },
}
MODEL_TITLES = {
    "resnet50": "ResNet-50 similarity model, random weights, 224 px (the paper's architecture and cost)",
    "embedded": f"embedded default model, {SCENE_SIZE} px",
}


class Bench:
    """Plans the jobs of each model section, runs them in fresh processes, and writes the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from cl_explain.precision import bf16_status

        self.args = args
        self.profile = "full" if args.full else "quick" if args.quick else "reduced"
        self.bf16_supported, self.bf16_reason = bf16_status(args.device)
        self.precisions = [p for p in args.precisions.split(",") if p]
        self.date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.machine = {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": args.threads or torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": _device_name(args.device),
        }
        self.sections: dict[str, ModelSection] = {}
        self.maps_dir = Path(tempfile.mkdtemp(prefix="cl-bench-"))

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def job(self, job: Job) -> JobResult | Failure:
        start = time.perf_counter()
        result = run_job(job, self.args.timeout)
        failed = f"  ERROR {result.error}" if isinstance(result, Failure) else ""
        what = job.method or job.kind
        self.log(f"{job.model:8s} {what:30s} {job.precision} {time.perf_counter() - start:6.1f} s{failed}")
        return result

    def run_model(self, model: str) -> None:
        from cl_explain.precision import bf16_refusal

        profile = PROFILES[model][self.profile]
        pairs = self.args.photo_pairs if model == "resnet50" and self.args.photo_pairs else profile["pairs"]
        batch = self.args.batch_size or profile["batch_size"]
        section = self.sections[model] = ModelSection(MODEL_TITLES[model], pairs, batch)
        runnable = [p for p in self.precisions if p == "fp32" or self.bf16_supported]
        base = {
            "model": model,
            "pairs": pairs,
            "batch_size": batch,
            "threads": self.args.threads,
            "device": self.args.device,
            "row_throughput": profile["row_throughput"],
        }

        for precision in runnable:
            job = Job("throughput", precision=precision, throughput_batches=profile["throughput_batches"], **base)
            result = self.job(job)
            section.throughput.setdefault(precision, {})["start"] = _outcome(result)
            if isinstance(result, JobResult):
                section.description = result.description
        for method in CNN_METHODS:
            params = profile["methods"].get(method, {})
            for precision in runnable:
                refusal = bf16_refusal(method) if precision == "bf16" else None
                if refusal:
                    outcome = NotApplicable(f"bf16 refused: {refusal}")
                else:
                    maps = str(self.maps_dir / f"{model}-{method}-{precision}.pt")
                    job = Job("method", method=method, params=params, precision=precision, maps_out=maps, **base)
                    outcome = _outcome(self.job(job))
                section.methods.setdefault(method, {})[precision] = Entry(params, outcome)
        for precision in runnable:
            block = _outcome(self.job(Job("metrics", params=profile["metrics"], precision=precision, **base)))
            section.blocks[precision] = block
            for metric in METRIC_NAMES:
                settings = {k: v for k, v in profile["metrics"].items() if k in METRICS[metric].options}
                row = block.rows.get(metric, Failure("missing")) if isinstance(block, MetricsBlock) else block
                section.metrics.setdefault(metric, {})[precision] = Entry(settings, row)
        if profile["memory_strides"] and "fp32" in section.methods.get("occlusion", {}):
            section.memory.append(section.methods["occlusion"]["fp32"])
        for stride in profile["memory_strides"]:
            params = {**profile["methods"].get("occlusion", {}), "stride": stride}
            maps = str(self.maps_dir / f"{model}-occlusion-memory-{stride}.pt")
            job = Job("method", method="occlusion", params=params, maps_out=maps, **{**base, "pairs": 1})
            section.memory.append(Entry(params, _outcome(self.job(job))))
        if model == "embedded" and self.args.pairs:
            job = Job("evaluate", methods=CNN_METHODS, **{**base, "pairs": self.args.pairs})
            section.evaluate, section.evaluate_pairs = _outcome(self.job(job)), self.args.pairs

    def markdown(self) -> str:
        m = self.machine
        lines = [
            f"Generated by `scripts/benchmark.py` ({self.profile} settings) on {self.date}: {m['cpu']}, "
            f"{m['cores']} cores, {m['threads']} torch threads, CPU capability {m['capability']}, torch {m['torch']}; "
            f"device: {m['device']}.",
            "",
            f"bf16: {'supported' if self.bf16_supported else self.bf16_reason}.",
            "",
            COLUMNS_NOTE,
        ]
        reason = None if self.bf16_supported else self.bf16_reason
        for section in self.sections.values():
            lines += section_markdown(section, self.precisions, reason)
        return "\n".join(lines) + "\n"

    def record(self) -> dict:
        """The raw numbers of the run (written as JSON next to the table)."""
        return jsonable(
            {
                "date": self.date,
                "profile": self.profile,
                "machine": self.machine,
                "bf16": {"supported": self.bf16_supported, "reason": self.bf16_reason},
                "models": self.sections,
            }
        )


def _outcome(result: JobResult | Failure):
    """A job's outcome, or its Failure."""
    return result if isinstance(result, Failure) else result.outcome


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def update_readme(path: Path, text: str) -> None:
    """Replace the text between the benchmark markers of the README's `## Benchmark` section."""
    from cl_explain.utils import write_text_atomic

    content = path.read_text()
    if content.count(README_START) != 1 or content.count(README_END) != 1:
        raise SystemExit(f"{path} needs exactly one {README_START} ... {README_END} block in its ## Benchmark section")
    before, rest = content.split(README_START)
    after = rest.split(README_END)[1]
    write_text_atomic(path, f"{before}{README_START}\n{text}{README_END}{after}")


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch size must be positive or auto, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="build/bench.md", help="markdown table to write (JSON next to it)")
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="embedded pairs for the all-methods x all-metrics run (default 100; 10 with --quick; 0 skips)",
    )
    parser.add_argument("--photo-pairs", type=int, default=None, help="ResNet-50 photo pairs per row (1-3)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script (minutes)")
    size.add_argument("--full", action="store_true", help="the paper's settings for every method and metric (slow)")
    parser.add_argument("--models", default="resnet50,embedded", help="comma-separated: resnet50, embedded")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        help="override the per-model batch size: a number, or auto (from free GPU memory; 64 on a CPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads in every job (default: torch's default, one per core)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess job")
    parser.add_argument(
        "--update-readme", action="store_true", help="also put the table between the benchmark markers of README.md"
    )
    args = parser.parse_args(argv)
    if args.pairs is None:
        args.pairs = 10 if args.quick else 100
    unknown = set(args.models.split(",")) - set(PROFILES)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(PROFILES)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(
                f"--device {args.device}: torch sees no CUDA device on this machine "
                "(torch.cuda.is_available() is False); run with --device cpu, or on a machine with a GPU"
            )
    elif args.device != "cpu":
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    bad = set(args.precisions.split(",")) - {"fp32", "bf16"}
    if bad or "fp32" not in args.precisions.split(","):
        parser.error("--precisions must include fp32 and may add bf16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    start = time.perf_counter()
    for model in args.models.split(","):
        bench.run_model(model)
    wall = time.perf_counter() - start
    text = bench.markdown() + f"\nBenchmark wall time: {wall:.0f} s.\n"
    output = Path(args.output)
    from cl_explain.utils import write_text_atomic

    write_text_atomic(output, text)
    write_text_atomic(output.with_suffix(".json"), json.dumps({**bench.record(), "wall_seconds": wall}, indent=1))
    if args.update_readme:
        update_readme(ROOT / "README.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
