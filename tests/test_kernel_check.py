"""scripts/check_cpu_kernels.py's table comparison: shown differences fail, rounding-boundary flips are listed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cl_explain.notebook import save_table

import helpers


def write(folder: Path, values: list[float], labels: list[str]) -> None:
    (folder / "nb").mkdir(parents=True)
    save_table(pd.DataFrame({"claim": labels, "difference": values}), folder / "nb" / "table")


def test_a_boundary_flip_is_listed_and_a_real_difference_fails(tmp_path):
    script = helpers.load_script("check_cpu_kernels")
    # row a: 0.15559 and 0.15543 show as 0.156 and 0.155 but are 1.6e-4 apart (< half of 0.001);
    # row b: 0.150 and 0.152 are 2e-3 apart; row c: equal; row d: another label
    write(tmp_path / "one", [0.15559, 0.150, 0.3, 0.4], ["a", "b", "c", "d"])
    write(tmp_path / "two", [0.15543, 0.152, 0.3, 0.4], ["a", "b", "c", "e"])
    compared, problems, boundary = script.compare_tables(tmp_path / "one", tmp_path / "two")
    assert compared == 1
    assert len(boundary) == 1 and "'difference': 0.156 vs 0.155" in boundary[0] and "0.15559 vs 0.15543" in boundary[0]
    assert len(problems) == 2
    assert any("'difference': 0.150 vs 0.152" in p for p in problems)
    assert any("'claim': d vs e" in p for p in problems)


def test_without_the_csv_twin_every_shown_difference_fails(tmp_path):
    script = helpers.load_script("check_cpu_kernels")
    write(tmp_path / "one", [0.15559], ["a"])
    write(tmp_path / "two", [0.15543], ["a"])
    (tmp_path / "two" / "nb" / "table.csv").unlink()
    _, problems, boundary = script.compare_tables(tmp_path / "one", tmp_path / "two")
    assert boundary == [] and len(problems) == 1
