#!/usr/bin/env python
"""The GPU checks in one go (about 8 minutes on one recent GPU), for whoever has a GPU at hand.

1. tests/test_cuda.py and tests/test_device.py (device rule, seed rule, CPU/GPU parity, bf16 runs);
2. a parity table: every method's maps and every metric's values on the CPU and on the GPU (TF32 off),
   on the embedded default and on a random-weight ResNet-50;
3. the bf16 fidelity table on the GPU (scripts/bf16_fidelity.py: embedded default, ResNet-50 at 224 px);
4. conditional occlusion 64/8 on the random ResNet-50 at 224 px in fp32 and bf16: seconds per pair next
   to the time of its forward passes at the measured throughput, and the overhead ratio (target <= 1.25).

    python scripts/gpu_check.py [--output build/gpu_check.md] [--skip tests,parity,bf16,occlusion]

Prints everything and writes it to --output; exits 2 where torch sees no CUDA device. To try the script
itself on a machine without a GPU, `--device cpu --quick` runs every part against the CPU, small.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cl_explain.bench import reduced_params  # noqa: E402 (needs the path above)
from cl_explain.markdown import table as _table  # noqa: E402

#: Parity settings: the embedded default at paper settings; the ResNet-50 with the benchmark's reduced grid.
PARITY = {
    "embedded": {"pairs": 2, "methods": {"pixel_invariance": {"samples": 200}}},
    "resnet50": {
        "pairs": 1,
        "methods": reduced_params(stride=32, erasures=32, smoothgrad_samples=8, invariance_samples=64),
    },
}


def _script(name: str):
    """Import scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tests() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py", "tests/test_device.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    tail = "\n".join(done.stdout.strip().splitlines()[-15:])
    return f"pytest tests/test_cuda.py tests/test_device.py: exit {done.returncode}\n\n```\n{tail}\n```"


def parity(device: str, quick: bool) -> str:
    """CPU against GPU for every method (min Spearman, max |difference| relative to the map's range)
    and every metric of the Grad-CAM explanation (max |difference|)."""
    import torch

    from cl_explain import explain
    from cl_explain.maps import rank_correlation
    from cl_explain.explainers.base import get_method
    from cl_explain.metrics import PAPER_METRICS, evaluate_pair

    fidelity = _script("bf16_fidelity")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    out = []
    for name, settings in PARITY.items():
        size = fidelity.SETTINGS[name]["size"] if name == "embedded" else 112 if quick else 224
        cpu, pairs = fidelity.build(name, 1 if quick else settings["pairs"], size, "cpu")
        gpu, _ = fidelity.build(name, 1 if quick else settings["pairs"], size, device)
        rows = []
        for method in fidelity.METHODS:
            params = settings["methods"].get(method, {})
            worst, spread = 1.0, 0.0
            for pair in pairs:
                x2 = pair.x2 if get_method(method).needs_pair else None
                a, b = (explain(m, pair.x1, x2, method, **params) for m in (cpu, gpu))
                for u, v in zip(a.maps, b.maps):
                    worst = min(worst, rank_correlation(u, v))
                    spread = max(spread, float((u - v).abs().max() / (u.max() - u.min()).clamp(min=1e-12)))
            rows.append([method, f"{worst:.5f}", f"{spread:.2e}", "ok" if worst >= 0.99 else "CHECK"])
        for pair in pairs:
            explanation = explain(cpu, pair.x1, pair.x2, "gradcam")
            values = [
                evaluate_pair(
                    m, pair.x1, pair.x2, explanation, metrics=PAPER_METRICS, on_not_applicable="skip", n_draws=2
                )
                for m in (cpu, gpu)
            ]
            for key in values[0]:
                if key in PAPER_METRICS:
                    diff = abs(values[0][key] - values[1][key])
                    rows.append([f"{key} (gradcam map)", "", f"{diff:.2e}", "ok" if diff <= 1e-3 else "CHECK"])
        out.append(
            f"Parity on {name} ({len(pairs)} pairs, TF32 off):\n\n"
            + _table(["method / metric", "min Spearman CPU-GPU", "max |difference| (maps: of their range)", ""], rows)
        )
    return "\n\n".join(out)


def bf16_fidelity(device: str, quick: bool) -> str:
    import torch

    from cl_explain.precision import bf16_status

    supported, reason = bf16_status(device)
    if not supported:
        return f"bf16 fidelity: skipped, bf16 is {reason}"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    fidelity = _script("bf16_fidelity")
    parts = []
    for name in ("embedded", "resnet50-224"):
        result = fidelity.measure(
            name, device, pairs=1 if quick else None, log=lambda text: print(text, file=sys.stderr, flush=True)
        )
        parts.append(f"bf16 fidelity on the GPU: {result['title']}\n\n{result['markdown']}")
    return "\n\n".join(parts)


def occlusion_rows(device: str, quick: bool) -> str:
    """Conditional occlusion 64/8 (paper settings) on the random ResNet-50 at 224 px, 3 photo pairs."""
    import torch

    from cl_explain.bench.jobs import Job, measure
    from cl_explain.bench.report import format_ratio
    from cl_explain.precision import bf16_status, measuring_bf16

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # the speed users get
    rows = []
    precisions = ["fp32"] + (["bf16"] if bf16_status(device)[0] else [])
    for precision in precisions:
        for batch in (16,) if quick else ("auto", 64):
            job = Job(
                "method",
                "resnet50",
                pairs=1 if quick else 3,
                batch_size=batch,
                precision=precision,
                device=device,
                method="occlusion",
                params={"stride": 64} if quick else {},
                row_throughput=(1, 1, 0, 4) if quick else (5, 1, 2, 256),
            )
            with measuring_bf16():  # timing only: whether occlusion accepts bf16 is the policy's (table above)
                result = measure(job)
            row = result.outcome
            forward = row.call_count.forward_only / row.rates.forward
            rows.append(
                [
                    precision,
                    str(result.batch_size),
                    f"{row.call_seconds:.4f}",
                    str(row.call_count.forward_only),
                    f"{row.rates.forward:.0f}",
                    f"{forward:.4f}",
                    f"{row.call_seconds / forward:.2f}",
                    format_ratio(row.overhead_own_batches),
                ]
            )
    setting = "window 64, stride 64, 1 photo pair (--quick)" if quick else "64/8 (paper), 3 photo pairs"
    return f"Conditional occlusion {setting}, random ResNet-50 at 224 px (TF32 on):\n\n" + _table(
        [
            "precision",
            "batch",
            "s/pair",
            "forward passes",
            "fwd img/s",
            "forward-pass time (s)",
            "overhead",
            "overhead (own batches)",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="build/gpu_check.md")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: tests, parity, bf16, occlusion")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: torch sees no CUDA device here (torch.cuda.is_available() is False); "
            "run it on a machine with a GPU",
            file=sys.stderr,
        )
        return 2
    from cl_explain.precision import bf16_status
    from cl_explain.utils import write_text_atomic

    skip = set(filter(None, args.skip.split(",")))
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"{args.device} (dry run)"
    sections = [f"GPU check: {where}, torch {torch.__version__}, bf16: {bf16_status(args.device)[1]}."]
    for name, part in (
        ("tests", run_tests),
        ("parity", parity),
        ("bf16", bf16_fidelity),
        ("occlusion", occlusion_rows),
    ):
        if name in skip:
            continue
        start = time.perf_counter()
        try:
            text = part() if name == "tests" else part(args.device, args.quick)
        except Exception as error:  # report and go on: one broken part must not hide the others
            text = f"{name}: FAILED with {type(error).__name__}: {error}"
        sections.append(f"{text}\n\n({name}: {time.perf_counter() - start:.0f} s)")
        print(sections[-1] + "\n", flush=True)
    write_text_atomic(Path(args.output), "\n\n".join(sections) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
