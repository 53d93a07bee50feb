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
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cl_explain.bench import PassCount, reduced_params  # noqa: E402 (needs the path above)
from cl_explain.data.scenes import DEFAULT_SIZE as SCENE_SIZE  # noqa: E402
from cl_explain.explainers.base import get_method, list_methods  # noqa: E402
from cl_explain.markdown import table as _table  # noqa: E402
from cl_explain.metrics import METRICS  # noqa: E402

METHODS = tuple(list_methods())
#: Methods that read tokens or attention and so need a Vision Transformer; both benchmark models are
#: CNNs, so these are listed but not run here.
VIT_METHODS = tuple(method for method in METHODS if get_method(method).vit_only)
CNN_METHODS = tuple(method for method in METHODS if method not in VIT_METHODS)
METRIC_NAMES = tuple(METRICS)
#: Rows the targets apply to: perturbation methods (M1-M3) and the metrics that perturb the images.
PERTURBATION_METHODS = ("occlusion", "context_agnostic_occlusion", "pairwise_occlusion")
PERTURBATION_METRICS = tuple(name for name, spec in METRICS.items() if spec.family in ("insertion", "deletion", "drop"))
OVERHEAD_TARGET = 1.25
BF16_SPEEDUP_TARGET = 1.8
OCCLUSION_MEMORY_TARGET_MB = 2048
EVALUATE_TARGET_SECONDS = 600
#: The explanation the metric rows score (cheap, so the row measures the metric).
METRIC_EXPLANATION = "gradcam"
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


# =============================================================================================== worker
# Runs in a fresh subprocess: builds the model and pairs, records the baseline RSS, does one job,
# prints one JSON line. Imports of torch and the package happen here only.


def build_model(name: str):
    """(model, description) for a model key of the benchmark."""
    from cl_explain import bench

    if name == "resnet50":
        return bench.resnet50_similarity_model(seed=0), "ResNet-50 + 2048-2048-128 head, random weights (seed 0)"
    if name == "embedded":
        from cl_explain.models.embedded import read_manifest

        if "embedded-simclr" in read_manifest()["models"]:
            from cl_explain import load_model

            return load_model("embedded-simclr"), "embedded-simclr (trained checkpoint from data/models)"
        import torch

        from cl_explain.models.embedded import build_backbone, build_head
        from cl_explain.models.similarity import IMAGENET_MEAN, IMAGENET_STD, SimilarityModel

        torch.manual_seed(0)
        model = SimilarityModel(
            build_backbone(16),
            build_head("simclr", 16),
            normalize=(IMAGENET_MEAN, IMAGENET_STD),
            name="embedded-architecture-random",
        )
        return model.eval(), "embedded architecture at random init (data/models/manifest.json not built yet)"
    raise ValueError(f"unknown model {name!r}; choose resnet50 or embedded")


def build_pairs(model_name: str, n: int):
    from cl_explain import bench

    return bench.benchmark_pairs(model_name, n)


def _warm_up(model, pairs, backward: bool) -> None:
    """One batch-1 pass (and backward) so thread pools and kernels exist before the baseline RSS."""
    from cl_explain import bench

    bench.measure_throughput(model, pairs[0].x1, 1, backward=backward, batches=1, warmup=0)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one job described by `spec` (kind: throughput | method | metric | evaluate)."""
    import torch

    from cl_explain import bench

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model, description = build_model(spec["model"])
    model = model.to(spec.get("device", "cpu"))
    pairs = build_pairs(spec["model"], spec["pairs"])
    kind = spec["kind"]
    out: dict[str, Any] = {"model_description": description}
    if spec["batch_size"] == "auto":  # from the free GPU memory (64 on a CPU), as explain(batch_size="auto")
        from cl_explain.explainers.base import get_method
        from cl_explain.utils import resolve_batch_size

        backward = kind == "method" and get_method(spec["name"]).gradient_batches
        spec = {**spec, "batch_size": resolve_batch_size("auto", model, pairs[0].x1, 64, backward)}
        out["batch_size"] = spec["batch_size"]
    if kind == "throughput":
        images = bench.pair_images(pairs)
        forward_batches, train_batches = spec["batches"]
        out["forward"] = bench.measure_throughput(
            model, images, spec["batch_size"], precision=spec["precision"], batches=forward_batches
        )
        out["train"] = bench.measure_throughput(
            model, images, spec["batch_size"], precision=spec["precision"], backward=True, batches=train_batches
        )
        return out
    if kind == "metrics":
        return {**out, **_metrics_block(model, pairs, spec)}
    if kind == "evaluate":
        return {**out, **_evaluate_all(model, pairs, spec)}
    if kind != "method":
        raise ValueError(f"unknown job kind {kind!r}")
    _warm_up(model, pairs, backward=True)
    out["baseline_rss_mb"] = bench.max_rss_mb()
    run = bench.run_method(
        model, pairs, spec["name"], spec["params"], batch_size=spec["batch_size"], precision=spec["precision"]
    )
    out["peak_rss_mb"] = bench.max_rss_mb()
    torch.save([[None if m is None else m.clone() for m in maps] for maps in run.outputs], spec["maps_out"])
    out["seconds"] = run.seconds
    out["counts"] = [c.as_dict() for c in run.counts]
    # the reference throughput: same model, batch size, precision and images, right after the row
    forward_batches, train_batches, warmup, _ = spec["row_throughput"]
    out["throughput"] = {"forward": _throughput(model, pairs, spec, False, forward_batches, warmup)}
    if any(c.backward for c in run.counts):
        out["throughput"]["train"] = _throughput(model, pairs, spec, True, train_batches, warmup)
    out["batch_throughput"] = _batch_throughputs(model, pairs, spec, run.counts, out["throughput"])
    return out


def _throughput(model, pairs, spec, backward: bool, batches: int, warmup: int, size: int | None = None) -> float:
    from cl_explain import bench

    return bench.measure_throughput(
        model,
        bench.pair_images(pairs),
        size or spec["batch_size"],
        precision=spec["precision"],
        backward=backward,
        batches=batches,
        warmup=warmup,
    )


def _batch_throughputs(model, pairs, spec, counts, reference: dict[str, float]) -> list[list]:
    """[size, graph, images/s] for every (batch size, graph) the row used; the reference batch size
    reuses the reference throughput, smaller batches are timed on about `images` images each."""
    images = spec["row_throughput"][3]
    keys = sorted({key for count in counts for key in count.batches})
    rows = []
    for size, grad in keys:
        if size == spec["batch_size"] and (not grad or "train" in reference):
            rate = reference["train" if grad else "forward"]
        else:
            rate = _throughput(model, pairs, spec, grad, max(1, -(-images // size)), 1, size=size)
        rows.append([size, grad, rate])
    return rows


def _metrics_block(model, pairs, spec) -> dict[str, Any]:
    """Every metric on the METRIC_EXPLANATION of each pair, one after the other in this process.

    The forward throughput is measured before and after the block (the reference is their mean).
    """
    from cl_explain import bench, explain

    explanations = [explain(model, p.x1, p.x2, METRIC_EXPLANATION, batch_size=spec["batch_size"]) for p in pairs]
    forward_batches, _, warmup, _ = spec["row_throughput"]
    before = _throughput(model, pairs, spec, False, forward_batches, max(warmup, 1))
    baseline = bench.max_rss_mb()
    rows = {}
    for metric in METRIC_NAMES:
        refusal = _metric_refusal(metric) if spec["precision"] == "bf16" else None
        if refusal:
            rows[metric] = {"not_applicable": f"bf16 refused: {refusal}", "seconds": [], "counts": [], "values": []}
            continue
        run = bench.run_metric(
            model,
            pairs,
            explanations,
            metric,
            spec["options"],
            batch_size=spec["batch_size"],
            precision=spec["precision"],
        )
        rows[metric] = {
            "not_applicable": run.not_applicable,
            "seconds": run.seconds,
            "pairs_per_call": run.pairs_per_call,
            "counts": [c.as_dict() for c in run.counts],
            "values": run.outputs,
        }
    peak = bench.max_rss_mb()
    after = _throughput(model, pairs, spec, False, forward_batches, 0)
    reference = {"forward": (before + after) / 2, "before": before, "after": after}
    counts = [bench.PassCount.from_dict(c) for row in rows.values() for c in row["counts"]]
    return {
        "rows": rows,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
        "throughput": reference,
        "batch_throughput": _batch_throughputs(model, pairs, spec, counts, reference),
    }


def _metric_refusal(metric: str) -> str | None:
    """Why the bf16 policy refuses `metric` (its family's rule; max-sensitivity follows the explained method)."""
    from cl_explain.precision import bf16_refusal

    family = METRICS[metric].family
    if family == "grounding":
        return None
    return bf16_refusal(METRIC_EXPLANATION if family == "sensitivity" else family)


def _evaluate_all(model, pairs, spec) -> dict[str, Any]:
    """Every method x every metric on the pairs through cl_explain.evaluate (one call per method, timed)."""
    from cl_explain import bench, evaluate

    per_method, total = {}, bench.PassCount()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not-applicable cells (e.g. MS of occlusion) are expected
        for method in spec["methods"]:
            with bench.count_passes(model) as count:
                start = time.perf_counter()
                frame = evaluate(
                    model,
                    pairs,
                    [method],
                    metrics=list(METRIC_NAMES),
                    progress=False,
                    batch_size=spec["batch_size"],
                    precision=spec["precision"],
                )
                seconds = time.perf_counter() - start
            per_method[method] = {"seconds": seconds, "rows": len(frame), "counts": count.as_dict()}
            for key in ("forward", "forward_grad", "backward"):
                setattr(total, key, getattr(total, key) + getattr(count, key))
    return {
        "per_method": per_method,
        "seconds": sum(v["seconds"] for v in per_method.values()),
        "counts": total.as_dict(),
        "peak_rss_mb": bench.max_rss_mb(),
    }


# =============================================================================================== parent


def run_job(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run a worker in a fresh Python process; an error becomes {"error": ...} (the benchmark goes on)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit code {done.returncode}"}
    return json.loads(lines[-1])


def pass_count(counts: list[dict]) -> PassCount:
    """The per-pair pass count of a row from its JSON counts."""
    from cl_explain.bench import mean_count

    return mean_count([PassCount.from_dict(c) for c in counts])


def _settings(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "paper defaults"


class Bench:
    """Plans the jobs, runs them in subprocesses, and assembles the tables."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from cl_explain.bench import bf16_status

        self.args = args
        self.profile = "full" if args.full else "quick" if args.quick else "reduced"
        supported, reason = bf16_status(args.device)
        self.bf16 = {"supported": supported, "reason": reason}
        self.precisions = [p for p in args.precisions.split(",") if p]
        self.results: dict[str, Any] = {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "profile": self.profile,
            "machine": {
                "cpu": _cpu_name(),
                "cores": os.cpu_count(),
                "threads": args.threads or torch.get_num_threads(),
                "capability": torch.backends.cpu.get_cpu_capability(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "device": _device_name(args.device),
            },
            "bf16": self.bf16,
            "models": {},
        }
        self.maps_dir = Path(tempfile.mkdtemp(prefix="cl-bench-"))

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def job(self, **spec: Any) -> dict[str, Any]:
        start = time.perf_counter()
        result = run_job(spec, self.args.timeout)
        what = spec.get("name") or spec["kind"]
        self.log(
            f"{spec['model']:8s} {what:30s} {spec.get('precision', '')} {time.perf_counter() - start:6.1f} s"
            + (f"  ERROR {result['error']}" if "error" in result else "")
        )
        return result

    def run_model(self, model: str) -> None:
        from cl_explain.precision import bf16_refusal

        profile = PROFILES[model][self.profile]
        pairs = self.args.photo_pairs if model == "resnet50" and self.args.photo_pairs else profile["pairs"]
        batch = self.args.batch_size or profile["batch_size"]
        record: dict[str, Any] = {
            "title": MODEL_TITLES[model],
            "pairs": pairs,
            "batch_size": batch,
            "throughput": {},
            "methods": {},
            "metrics": {},
            "memory": [],
            "settings": profile,
        }
        self.results["models"][model] = record
        runnable = [p for p in self.precisions if p == "fp32" or self.bf16["supported"]]
        base = {
            "model": model,
            "pairs": pairs,
            "batch_size": batch,
            "threads": self.args.threads,
            "device": self.args.device,
            "row_throughput": profile["row_throughput"],
        }

        def throughput(when: str) -> None:
            for precision in runnable:
                result = self.job(kind="throughput", precision=precision, batches=profile["throughput_batches"], **base)
                record["throughput"].setdefault(precision, {})[when] = result
                record["description"] = result.get("model_description", record.get("description"))

        throughput("start")
        for method in CNN_METHODS:
            params = profile["methods"].get(method, {})
            for precision in runnable:
                refusal = bf16_refusal(method) if precision == "bf16" else None
                if refusal:
                    record["methods"].setdefault(method, {})[precision] = {
                        "not_applicable": f"bf16 refused: {refusal}",
                        "settings": params,
                    }
                    continue
                maps = self.maps_dir / f"{model}-{method}-{precision}.pt"
                result = self.job(
                    kind="method", name=method, params=params, precision=precision, maps_out=str(maps), **base
                )
                result["settings"] = params
                result["maps"] = str(maps)
                record["methods"].setdefault(method, {})[precision] = result
        for precision in runnable:
            block = self.job(kind="metrics", name="metrics", options=profile["metrics"], precision=precision, **base)
            record.setdefault("metric_blocks", {})[precision] = block
            for metric in METRIC_NAMES:
                row = block.get("rows", {}).get(metric, {"error": block.get("error", "missing")})
                if "error" not in row:
                    row["throughput"], row["batch_throughput"] = block["throughput"], block["batch_throughput"]
                row["settings"] = {k: v for k, v in profile["metrics"].items() if k in METRICS[metric].options}
                record["metrics"].setdefault(metric, {})[precision] = row
        memory = record["methods"].get("occlusion", {}).get("fp32")
        if memory is not None and profile["memory_strides"]:
            record["memory"].append(memory)
        for stride in profile["memory_strides"]:
            params = {**profile["methods"].get("occlusion", {}), "stride": stride}
            result = self.job(
                kind="method",
                name="occlusion",
                params=params,
                precision="fp32",
                maps_out=str(self.maps_dir / f"{model}-occlusion-memory-{stride}.pt"),
                **{**base, "pairs": 1},
            )
            result["settings"] = params
            record["memory"].append(result)
        if model == "embedded" and self.args.pairs:
            record["evaluate"] = self.job(
                kind="evaluate",
                model=model,
                pairs=self.args.pairs,
                batch_size=batch,
                precision="fp32",
                methods=list(CNN_METHODS),
                threads=self.args.threads,
            )

    # ------------------------------------------------------------------------------------ tables

    def row(self, model: str, name: str, precision: str, result: dict, targeted: bool) -> list[str]:
        from cl_explain.bench import PassCount, batch_aware_seconds, format_ratio, overhead_ratio

        settings = _settings(result.get("settings", {}))
        if "error" in result:
            return [name, settings, precision, f"error: {result['error']}"] + [""] * 8
        if result.get("not_applicable"):
            return [name, settings, precision, f"NA ({result['not_applicable'][:80]})"] + [""] * 8
        tp = result["throughput"]
        reference = (tp["forward"], tp.get("train"))
        count = pass_count(result["counts"])  # per call: one pair (methods) or all pairs at once (metrics)
        per_call = result.get("pairs_per_call", 1)
        call_seconds = float(statistics.median(result["seconds"]))
        ratio = overhead_ratio(call_seconds, count, *reference)
        own = batch_aware_seconds(count, {(size, grad): rate for size, grad, rate in result["batch_throughput"]})
        own_ratio = call_seconds / own if own > 0 else None
        seconds = call_seconds / per_call
        count = PassCount(*(round(getattr(count, key) / per_call) for key in ("forward", "forward_grad", "backward")))
        result["overhead"], result["overhead_own_batches"], result["seconds_per_pair"] = ratio, own_ratio, seconds
        target = ""
        if targeted and precision == "fp32":
            target = "n/a" if ratio is None else ("met" if ratio <= OVERHEAD_TARGET else "MISSED")
        memory = (
            f"{result['peak_rss_mb'] - result['baseline_rss_mb']:.0f} ({result['peak_rss_mb']:.0f})"
            if "peak_rss_mb" in result
            else "see below"
        )
        return [
            name,
            settings,
            precision,
            f"{seconds:.3g}",
            str(count.forward_only),
            str(count.backward),
            f"{reference[0]:.1f}",
            "" if reference[1] is None else f"{reference[1]:.1f}",
            format_ratio(ratio),
            format_ratio(own_ratio),
            memory,
            target,
        ]

    def bf16_rows(self, model: str, kind: str) -> list[list[str]]:
        """bf16 against fp32: speed-up, map rank correlation / AUC difference, targets."""
        import torch

        from cl_explain.bench import Run, compare_precision_runs

        rows = []
        for name, runs in self.results["models"][model][kind].items():
            if "fp32" not in runs or "bf16" not in runs or "error" in runs["fp32"] or "error" in runs["bf16"]:
                continue
            fp32, bf16 = runs["fp32"], runs["bf16"]
            if fp32.get("not_applicable") or bf16.get("not_applicable"):
                continue
            speedup = fp32["seconds_per_pair"] / bf16["seconds_per_pair"]
            outputs = (lambda r: torch.load(r["maps"])) if kind == "methods" else (lambda r: r["values"])
            agreement = compare_precision_runs(Run(name, [], [], outputs(fp32)), Run(name, [], [], outputs(bf16)))
            targeted = name in (PERTURBATION_METHODS if kind == "methods" else PERTURBATION_METRICS)
            fast = speedup >= BF16_SPEEDUP_TARGET or not targeted
            rows.append(
                [
                    name,
                    f"{speedup:.2f}",
                    "" if agreement.min_rank_correlation is None else f"{agreement.min_rank_correlation:.4f}",
                    "" if agreement.max_auc_difference is None else f"{agreement.max_auc_difference:.4f}",
                    "met" if agreement.passed and fast else "MISSED",
                ]
            )
        return rows

    def markdown(self) -> str:
        r = self.results
        m = r["machine"]
        lines = [
            f"Generated by `scripts/benchmark.py` ({r['profile']} settings) on {r['date']}: {m['cpu']}, "
            f"{m['cores']} cores, {m['threads']} torch threads, CPU capability {m['capability']}, torch {m['torch']}; "
            f"device: {m.get('device', 'cpu')}.",
            "",
            f"bf16: {'supported' if self.bf16['supported'] else self.bf16['reason']}.",
            "",
            "Columns: s/pair = seconds per pair (methods: median over the pairs; metrics: all pairs scored in one "
            "`evaluate_pairs` call, as `evaluate` does, divided by the number of pairs); "
            "fwd = images through the backbone without "
            "a backward pass, bwd = images with forward+backward, per pair (counted by a hook on the backbone); "
            "fwd/s and f+b/s = throughput of the same model, batch size, precision and images, measured in the same "
            "process right after the row; overhead = s/pair / (fwd / fwd/s + bwd / f+b/s); "
            "overhead (own batches) = the "
            "same with each batch timed at its own size (separates small-batch cost from work outside the "
            "backbone); peak MB = max RSS above "
            "the loaded model (absolute in brackets), each row in a fresh process. Targets (fp32): overhead ≤ 1.25 "
            "for the perturbation methods (M1-M3) and the perturbation metrics (insertion, deletion, drop/increase).",
        ]
        header = [
            "",
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
        ]
        for model, record in r["models"].items():
            lines += [
                "",
                f"### {record['title']}",
                "",
                f"Model: {record.get('description', '?')}; {record['pairs']} pair(s); "
                f"batch size {record['batch_size']}.",
            ]
            tp = record["throughput"]
            for precision, runs in tp.items():
                cells = ", ".join(
                    f"forward {v['forward']:.1f}, forward+backward {v['train']:.1f} img/s"
                    for when, v in runs.items()
                    if "error" not in v
                )
                lines.append(f"Throughput {precision} at the start of the section: {cells}.")
            lines += ["", _table(["method", *header[1:]], self._rows(model, "methods", PERTURBATION_METHODS))]
            lines += [
                "",
                f"Metrics, scoring the {METRIC_EXPLANATION} explanation of each pair:",
                "",
                _table(["metric", *header[1:]], self._rows(model, "metrics", PERTURBATION_METRICS)),
            ]
            for precision, block in record.get("metric_blocks", {}).items():
                if "error" not in block:
                    tp = block["throughput"]
                    lines += [
                        "",
                        f"Metrics ({precision}) ran one after the other in one process: peak RSS "
                        f"{block['peak_rss_mb'] - block['baseline_rss_mb']:.0f} MB above the loaded model "
                        f"({block['peak_rss_mb']:.0f} MB); forward throughput {tp['before']:.1f} img/s before "
                        f"and {tp['after']:.1f} after the metrics (the reference is the mean).",
                    ]
            if record["memory"]:
                mem_rows = []
                for result in record["memory"]:
                    if "error" in result:
                        mem_rows.append([_settings(result["settings"]), "", "", f"error: {result['error']}", ""])
                        continue
                    delta = result["peak_rss_mb"] - result["baseline_rss_mb"]
                    mem_rows.append(
                        [
                            _settings(result["settings"]),
                            str(len(result["seconds"])),
                            str(pass_count(result["counts"]).forward_only),
                            f"{statistics.median(result['seconds']):.1f}",
                            f"{delta:.0f} ({result['peak_rss_mb']:.0f})",
                            "met" if delta <= OCCLUSION_MEMORY_TARGET_MB else "MISSED",
                        ]
                    )
                lines += [
                    "",
                    "Conditional occlusion memory as the grid grows (fp32):",
                    "",
                    _table(
                        [
                            "occlusion settings",
                            "pairs",
                            "forward passes per pair",
                            "s/pair",
                            "peak MB above model (abs.)",
                            "target ≤ 2 GB",
                        ],
                        mem_rows,
                    ),
                ]
            if self.bf16["supported"] and "bf16" in self.precisions:
                rows = self.bf16_rows(model, "methods") + self.bf16_rows(model, "metrics")
                lines += [
                    "",
                    "bf16 against fp32 (targets: ≥ 1.8x faster for perturbation rows, rank correlation "
                    "≥ 0.99, AUC difference ≤ 0.01):",
                    "",
                    _table(["", "speed-up", "min rank corr.", "max AUC diff.", "target"], rows),
                ]
            if "evaluate" in record:
                ev = record["evaluate"]
                if "error" in ev:
                    lines += ["", f"All methods x all metrics: error {ev['error']}"]
                else:
                    count = pass_count([ev["counts"]])
                    per_100 = ev["seconds"] * 100 / self.args.pairs
                    scaled = (
                        "" if self.args.pairs == 100 else f", i.e. {per_100:.0f} s for 100 pairs (linear extrapolation)"
                    )
                    lines += [
                        "",
                        f"All {len(ev['per_method'])} methods x all {len(METRIC_NAMES)} metrics on "
                        f"{self.args.pairs} embedded pairs (`cl_explain.evaluate`, paper settings, fp32): "
                        f"**{ev['seconds']:.0f} s**{scaled} (target ≤ {EVALUATE_TARGET_SECONDS} s for 100 pairs: "
                        f"{'met' if per_100 <= EVALUATE_TARGET_SECONDS else 'MISSED'}); "
                        f"{count.forward_only} forward + {count.backward} forward+backward passes; "
                        f"peak RSS {ev['peak_rss_mb']:.0f} MB.",
                        "",
                        _table(
                            ["method", "seconds (all metrics, all pairs)", "result rows"],
                            [[k, f"{v['seconds']:.1f}", str(v["rows"])] for k, v in ev["per_method"].items()],
                        ),
                    ]
        return "\n".join(lines) + "\n"

    def _rows(self, model: str, kind: str, targeted: tuple[str, ...]) -> list[list[str]]:
        rows = []
        for name, runs in self.results["models"][model][kind].items():
            for precision in self.precisions:
                if precision in runs:
                    rows.append(self.row(model, name, precision, runs[precision], name in targeted))
                else:
                    rows.append([name, "", precision, self.bf16["reason"]] + [""] * 8)
        return rows


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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
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
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    bench = Bench(args)
    start = time.perf_counter()
    for model in args.models.split(","):
        bench.run_model(model)
    bench.results["wall_seconds"] = time.perf_counter() - start
    text = bench.markdown() + f"\nBenchmark wall time: {bench.results['wall_seconds']:.0f} s.\n"
    output = Path(args.output)
    from cl_explain.utils import write_text_atomic

    write_text_atomic(output, text)
    write_text_atomic(output.with_suffix(".json"), json.dumps(bench.results, indent=1, default=str))
    if args.update_readme:
        update_readme(ROOT / "README.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
