"""The manifest's markdown tables (`python -m cl_explain.train.report`) on a hand-made manifest."""

from __future__ import annotations

from cl_explain.train.report import QUALITY_COLUMNS, build_table, pointing_table, quality_table


def _entry(objective: str, epoch: int, probe: float, size: int) -> dict:
    quality = {key: 0.5 for key, _ in QUALITY_COLUMNS} | {"linear_probe_top1": probe}
    return {
        "objective": objective,
        "epoch": epoch,
        "quality": quality,
        "random_init_quality": {key: 0.25 for key, _ in QUALITY_COLUMNS},
        "train_seconds": 100.4,
        "augment_seconds": 20.6,
        "bytes": size,
    }


MANIFEST = {
    "models": {
        "embedded-simclr": _entry("simclr", 70, 0.9271, 1_000_000),
        "embedded-simclr-e00": _entry("simclr", 0, 0.24, 1_000_000),
        "embedded-supervised": _entry("supervised", 70, 0.98, 500_000),
    },
    "dataset": {"pointing_baselines": {"shared-object": {"random_map": 0.125, "centred_gaussian": 0.1669}}},
}


def test_quality_table_has_one_random_init_row_per_objective():
    lines = quality_table(MANIFEST).splitlines()
    assert len(lines) == 2 + 3 + 2  # header, rule, three models, one baseline each for simclr and supervised
    assert lines[2].startswith("| `embedded-simclr` | 0.927 |")
    assert lines[3] == "| simclr at random init | " + " | ".join(["0.250"] * len(QUALITY_COLUMNS)) + " |"
    assert sum("at random init" in line for line in lines) == 2


def test_build_and_pointing_tables_sum_sizes_and_round():
    build = build_table(MANIFEST).splitlines()
    assert build[2] == "| `embedded-simclr` | 70 | 100 | 21 | 1.00 |"
    assert build[-1] == "| all checkpoints |  |  |  | 2.50 |"
    assert pointing_table(MANIFEST).splitlines()[2] == "| shared-object | 0.125 | 0.167 |"
