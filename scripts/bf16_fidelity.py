#!/usr/bin/env python
"""Measure how far bf16 (as the precision policy runs it) moves every method's maps and metric's values.

Runs on any machine: where bf16 is not native (e.g. an AVX512 CPU without AVX512-BF16) it is emulated,
slower than fp32 but numerically the same bfloat16, which is all a fidelity measurement needs
(`cl_explain.precision.measuring_bf16` lifts the hardware check and the refusals for this script
only). Prints one markdown table per model and writes the raw rows as JSON.

    python scripts/bf16_fidelity.py --models embedded,resnet50 --output build/bf16_fidelity.json
    python scripts/bf16_fidelity.py --models resnet50-224 --methods gradcam,interaction_cam --no-metrics
    python scripts/bf16_fidelity.py --models embedded --pairs 30 --methods ''
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cl_explain.bench import reduced_params  # noqa: E402 (needs the path above)
from cl_explain.data.scenes import DEFAULT_SIZE as SCENE_SIZE  # noqa: E402

METHODS = (
    "occlusion",
    "context_agnostic_occlusion",
    "pairwise_occlusion",
    "gradcam",
    "interaction_cam",
    "input_x_gradient",
    "smoothgrad",
    "averaged_transforms",
    "pixel_invariance",
)

#: Per model: image side, pairs, method parameters (absent = paper default), metric options.
SETTINGS: dict[str, dict[str, Any]] = {
    "embedded": {"size": SCENE_SIZE, "pairs": 10, "methods": {}, "metrics": {}},
    # the random-weight ResNet-50 at half the paper's side, with smaller grids and sample counts so the
    # emulated bf16 of a 2-core CPU finishes in about half an hour
    "resnet50": {
        "size": 112,
        "pairs": 2,
        "methods": reduced_params(stride=8, erasures=32, smoothgrad_samples=10, invariance_samples=100),
        "metrics": {"step": 784},  # 17 curve points at 112 px
    },
    # the paper's size and method settings, for a GPU (scripts/gpu_check.py); AUCs on 17 curve points
    "resnet50-224": {"size": 224, "pairs": 3, "methods": {}, "metrics": {"step": 3136}},
}
TITLES = {
    "embedded": f"embedded default (embedded-simclr), scene pairs at {SCENE_SIZE} px",
    "resnet50": "random-weight ResNet-50 + SimCLR-like head, photo pairs at 112 px",
    "resnet50-224": "random-weight ResNet-50 + SimCLR-like head, photo pairs at 224 px, paper settings",
}


def build(model_name: str, pairs: int, size: int, device: str):
    """(model, pairs) for a model key (ResNet-50 keys: at most len(bench.PHOTOS) pairs)."""
    from cl_explain import bench, load_model

    if model_name == "embedded":
        model = load_model("embedded-simclr", device=device)
    else:
        model, pairs = bench.resnet50_similarity_model(seed=0).to(device), min(pairs, len(bench.PHOTOS))
    return model, bench.benchmark_pairs(model_name, pairs, size)


def measure(
    model_name: str,
    device: str = "cpu",
    pairs: int | None = None,
    methods: tuple[str, ...] = METHODS,
    metrics: bool = True,
    log=print,
) -> dict[str, Any]:
    """Fidelity rows of one model: {"title", "rows", "markdown", "seconds"}."""
    import torch

    from cl_explain import fidelity

    settings = SETTINGS[model_name]
    torch.manual_seed(0)
    model, pair_list = build(model_name, pairs or settings["pairs"], settings["size"], device)
    start = time.perf_counter()
    rows = []
    for method in methods:
        rows += fidelity.method_rows(
            model, pair_list, {method: settings["methods"].get(method, {})}, **settings["metrics"]
        )
        log(
            f"  {model_name} {method}: Spearman {rows[-1].spearman:.4f}, AUC difference {rows[-1].difference:.4f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    for row in fidelity.metric_rows(model, pair_list, **settings["metrics"]) if metrics else []:
        rows.append(row)
        log(f"  {model_name} {row.name}: max difference {row.difference} ({time.perf_counter() - start:.0f} s)")
    title = f"{TITLES[model_name]}, {len(pair_list)} pairs, {device}"
    return {
        "title": title,
        "rows": fidelity.as_dicts(rows),
        "markdown": fidelity.table(rows),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="embedded,resnet50", help="comma-separated: embedded, resnet50, resnet50-224"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--pairs", type=int, default=None, help="override the number of pairs per model")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method names ('' for none)")
    parser.add_argument("--no-metrics", action="store_true", help="measure the methods only")
    parser.add_argument("--output", default="build/bf16_fidelity.json", help="JSON file for the raw rows")
    args = parser.parse_args(argv)
    import torch

    from cl_explain.utils import write_text_atomic

    results = {"torch": torch.__version__, "device": args.device, "models": {}}
    for name in args.models.split(","):
        methods = tuple(m for m in args.methods.split(",") if m)
        results["models"][name] = measure(
            name,
            args.device,
            args.pairs,
            methods,
            not args.no_metrics,
            log=lambda text: print(text, file=sys.stderr, flush=True),
        )
        print(f"\n{results['models'][name]['title']}\n\n{results['models'][name]['markdown']}\n", flush=True)
    write_text_atomic(Path(args.output), json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
