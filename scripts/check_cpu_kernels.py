"""Do the package's numbers hold on another CPU? Compare two kernel settings on this machine.

PyTorch picks its vectorised kernels (ATen) and oneDNN picks its convolution kernels from the
instruction sets of the CPU it runs on, so the same code gives float results that differ by about
1e-6 between an AVX2 and an AVX512 machine. This script runs the same work twice on one machine,
once with the native kernels and once with portable ones (`ATEN_CPU_CAPABILITY=default`,
`ONEDNN_MAX_CPU_ISA=AVX2`, which is what an older x86 CPU would use), each in fresh processes:

1. the quality numbers of every committed embedded model (kNN, linear probe, view pass rates),
   recomputed from the checkpoints as `make test` does; they must agree within the tolerances that
   `cl_explain.train.QUALITY_TOLERANCE` states (and equal the manifest within them);
2. every notebook with the ci parameter profile; every table it writes (`*.md`) must be equal at
   its displayed precision, timing tables excepted. A cell whose unrounded values (the table's .csv)
   are less than half a shown unit apart but straddle a rounding boundary is listed, not failed.

It prints a report (and writes it to build/kernels/report.md) and exits 1 when anything differs.
Usage: `python scripts/check_cpu_kernels.py [--stems 05-evaluate-metrics,07-compare-supervised]`
(`make check-kernels`; about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from cl_explain.utils import KERNEL_ENV

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "native": {},
    "portable": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
#: Tables that report wall time, which differs between any two runs.
TIMING_TABLES = ("timings.md",)


def kernel_environment(setting: str) -> dict[str, str]:
    """This process's environment with the kernel variables of `setting` (and none of the other's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", *KERNEL_ENV)}
    env.update(SETTINGS[setting])
    env.pop("MPLBACKEND", None)  # papermill captures no figures under Agg
    return env


def quality_in_subprocess(setting: str, out: Path) -> dict:
    """The recomputed quality numbers of every committed model, computed under `setting`'s kernels."""
    code = (
        "import json, sys; from cl_explain.train import recompute_quality; from cl_explain.utils import cpu_kernels; "
        "json.dump({'kernels': cpu_kernels(), 'models': recompute_quality()}, open(sys.argv[1], 'w'), indent=1)"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], env=kernel_environment(setting), check=True, cwd=ROOT)
    return json.loads(out.read_text())


def notebooks_in_subprocess(setting: str, stems: list[str], folder: Path) -> None:
    """Run each notebook with the ci profile under `setting`, writing its tables below `folder`/<stem>."""
    for stem in stems:
        parameters = yaml.safe_load((ROOT / "params" / "ci" / f"{stem}.yaml").read_text())
        parameters["figure_dir"] = str(folder / stem)
        params_file = folder / f"{stem}.params.yaml"
        params_file.write_text(yaml.safe_dump(parameters))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "papermill",
                "-k",
                "python3",
                "--cwd",
                "notebooks",
                "--log-level",
                "WARNING",
                "--no-progress-bar",
                "--execution-timeout",
                "900",
                "-f",
                str(params_file),
                f"notebooks/{stem}.ipynb",
                str(folder / f"{stem}.ipynb"),
            ],
            env=kernel_environment(setting),
            check=True,
            cwd=ROOT,
        )


def compare_quality(first: dict, second: dict, manifest: dict) -> list[str]:
    """Lines naming every quality number that moved (between settings, or from the manifest) beyond its tolerance."""
    from cl_explain.train import QUALITY_TOLERANCE

    problems = []
    for name, numbers in first["models"].items():
        for key, value in numbers.items():
            tolerance = QUALITY_TOLERANCE.get(key, 0.0)
            other, stored = second["models"][name][key], manifest["models"][name]["quality"][key]
            for label, reference in (("other kernels", other), ("manifest", stored)):
                if abs(value - reference) > tolerance + 1e-9:
                    problems.append(f"{name} {key}: {value:.5f} vs {label} {reference:.5f} (tolerance {tolerance:.5f})")
    return problems


def table_cells(path: Path) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in path.read_text().splitlines()]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _shown_unit(cell: str) -> float:
    """One unit of the last digit a table cell shows ("0.156" -> 0.001)."""
    return 10.0 ** -len(cell.split(".")[1]) if "." in cell else 1.0


def _csv_rows(md_path: Path) -> list[list[str]]:
    """The rows of a `save_table` .md's .csv twin (unrounded values; [] when there is none)."""
    twin = md_path.with_suffix(".csv")
    return list(csv.reader(twin.read_text().splitlines())) if twin.is_file() else []


def _csv_value(rows: list[list[str]], line: int, column: int) -> float | None:
    """The unrounded value behind the .md cell at `line`, `column` (line 0 is the header, 1 the rule)."""
    if line < 2 or line - 1 >= len(rows) or column >= len(rows[line - 1]):
        return None
    return _number(rows[line - 1][column])


def compare_tables(first: Path, second: Path) -> tuple[int, list[str], list[str]]:
    """(number of tables compared, cells that differ, cells on a rounding boundary) between two folders.

    A cell on a rounding boundary shows different digits although its unrounded values (the .csv twin)
    differ by less than half a unit of the shown precision: 0.1555 and 0.1554 show as 0.156 and 0.155.
    Those are listed apart and are not failures; every other shown difference is."""
    problems, boundary, compared = [], [], 0
    for path in sorted(first.rglob("*.md")):
        if path.name in TIMING_TABLES:
            continue
        relative = path.relative_to(first)
        other = second / relative
        if not other.is_file():
            problems.append(f"{relative}: missing under {second}")
            continue
        compared += 1
        rows, other_rows = table_cells(path), table_cells(other)
        if len(rows) != len(other_rows):
            problems.append(f"{relative}: {len(rows)} lines vs {len(other_rows)}")
            continue
        header, raw_rows = rows[0], None
        for line, (row, other_row) in enumerate(zip(rows, other_rows)):
            for column, (cell, other_cell) in enumerate(zip(row, other_row)):
                if cell == other_cell:
                    continue
                name = header[column] if column < len(header) else str(column)
                message = f"{relative} row {row[:2]} column {name!r}: {cell} vs {other_cell}"
                if raw_rows is None:  # read once per table, only when a cell differs
                    raw_rows = (_csv_rows(path), _csv_rows(other))
                raw = (_csv_value(raw_rows[0], line, column), _csv_value(raw_rows[1], line, column))
                shown = (_number(cell), _number(other_cell))
                if None not in raw and None not in shown and abs(raw[0] - raw[1]) < _shown_unit(cell) / 2:
                    boundary.append(f"{message} (unrounded {raw[0]:.6g} vs {raw[1]:.6g})")
                else:
                    problems.append(message)
    return compared, problems, boundary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stems = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
    parser.add_argument("--stems", default=",".join(stems), help="notebooks to run (comma-separated stems)")
    parser.add_argument("--skip-quality", action="store_true", help="only the notebook tables")
    parser.add_argument("--out", default=str(ROOT / "build" / "kernels"), help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    chosen = [s for s in args.stems.split(",") if s]
    quality, lines = {}, []
    for setting in SETTINGS:
        folder = out / setting
        folder.mkdir(parents=True, exist_ok=True)
        print(f"[{setting}] {SETTINGS[setting] or 'native kernels'}", flush=True)
        if not args.skip_quality:
            quality[setting] = quality_in_subprocess(setting, folder / "quality.json")
            print(f"[{setting}] kernels {quality[setting]['kernels']}", flush=True)
        notebooks_in_subprocess(setting, chosen, folder)
    problems = []
    if quality:
        manifest = json.loads((ROOT / "data" / "models" / "manifest.json").read_text())
        problems += compare_quality(quality["native"], quality["portable"], manifest)
        lines.append(
            f"Quality numbers: {len(quality['native']['models'])} models, CPU capability "
            f"{quality['native']['kernels']['aten_cpu_capability']} vs "
            f"{quality['portable']['kernels']['aten_cpu_capability']}."
        )
    compared, table_problems, boundary = compare_tables(out / "native", out / "portable")
    problems += table_problems
    lines.append(f"Tables: {compared} compared at their displayed precision ({', '.join(TIMING_TABLES)} excepted).")
    lines += [f"- {p}" for p in problems] or ["No difference."]
    if boundary:
        lines.append(f"On a rounding boundary (less than half a shown unit apart unrounded): {len(boundary)}")
        lines += [f"  - {b}" for b in boundary]
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    print(report)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
