"""Markdown tables of the manifest: quality numbers, pointing-game baselines and build times of the embedded models.

`python -m cl_explain.train.report` prints all three; data/README.md and the closing notes of the
embedded-default work quote them, so the documented numbers are those the tests recompute.
"""

from __future__ import annotations

from ..markdown import table
from ..models.embedded import read_manifest

#: (manifest key, column header) of the quality table, in display order.
QUALITY_COLUMNS = (
    ("linear_probe_top1", "linear probe"),
    ("knn_top1", "kNN"),
    ("view_pass_rate", "views pass"),
    ("object_over_background", "object > background"),
    ("background_identifies_scene", "bare background identifies scene"),
    ("insertion_room", "insertion room"),
)


def quality_table(manifest: dict | None = None) -> str:
    """One row per model (trained, then its architecture at random initialisation), test split."""
    manifest = manifest if manifest is not None else read_manifest()
    rows = []
    seen_init: set[str] = set()
    for name, entry in manifest["models"].items():
        rows.append([f"`{name}`"] + [_cell(entry["quality"], key) for key, _ in QUALITY_COLUMNS])
        objective = entry["objective"]
        if objective not in seen_init and "random_init_quality" in entry:
            seen_init.add(objective)
            baseline = entry["random_init_quality"]
            rows.append([f"{objective} at random init"] + [_cell(baseline, key) for key, _ in QUALITY_COLUMNS])
    return table(["model"] + [header for _, header in QUALITY_COLUMNS], rows)


def build_table(manifest: dict | None = None) -> str:
    """Epoch, seconds of optimisation and of waiting for the view banks, and size (MB) of each checkpoint."""
    manifest = manifest if manifest is not None else read_manifest()
    rows = [
        [
            f"`{name}`",
            str(entry["epoch"]),
            f"{entry['train_seconds']:.0f}",
            f"{entry['augment_seconds']:.0f}",
            f"{entry['bytes'] / 1e6:.2f}",
        ]
        for name, entry in manifest["models"].items()
    ]
    total = sum(entry["bytes"] for entry in manifest["models"].values()) / 1e6
    rows.append(["all checkpoints", "", "", "", f"{total:.2f}"])
    return table(["checkpoint", "epoch", "training s (whole run)", "view-bank wait s", "MB"], rows)


def pointing_table(manifest: dict | None = None) -> str:
    """Pointing-game hit rates of maps that know nothing, per pair mode."""
    manifest = manifest if manifest is not None else read_manifest()
    baselines = manifest["dataset"]["pointing_baselines"]
    rows = [
        [mode, f"{rates['random_map']:.3f}", f"{rates['centred_gaussian']:.3f}"] for mode, rates in baselines.items()
    ]
    return table(["pairs", "random map", "centred Gaussian"], rows)


def _cell(quality: dict, key: str) -> str:
    value = quality.get(key)
    return "" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    print(quality_table(), pointing_table(), build_table(), sep="\n\n")
