"""Notebook plumbing: one setup call, atomic tables, pairs from the embedded scenes or a folder, findings text.

Notebooks stay thin: they call `setup(seed, figure_dir)` once, get their pairs from `load_pairs`, show
and save every figure with `show_and_save` and every table with `save_table`, and close with a
`findings` cell whose Markdown is rendered from computed numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import markdown
from .data import Pair, load_image, make_pair
from .explainers import PairExplanation
from .utils import figure_bytes, seed_everything, write_bytes_atomic, write_text_atomic

#: Image file suffixes read from a user's `image_folder`.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def setup(seed: int, figure_dir: str | os.PathLike, dpi: int = 100) -> Path:
    """Seed Python/NumPy/torch, fix matplotlib's figure defaults, create `figure_dir`; return it as a Path.

    Relative folders are taken from the current directory (papermill runs with --cwd notebooks).
    """
    import matplotlib as mpl

    seed_everything(int(seed))
    mpl.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "figure.max_open_warning": 0})
    folder = Path(figure_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (a notebook, papermill, nbval), where output can show images."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def show_and_save(fig, path: str | os.PathLike | None = None, dpi: int = 120) -> None:
    """Show `fig` inline where it is made and save it to `path` (None: show only), then close it.

    The image shown is the PNG written to `path` (deterministic bytes, written atomically), so the
    reader sees exactly what the figure folder holds. It is sent as an image/png output whatever the
    matplotlib backend is; outside a kernel nothing is shown. Returns None, so a cell ending with this
    call prints no `<Figure ...>` text.
    """
    import matplotlib.pyplot as plt

    try:
        png = figure_bytes(fig, "png", dpi)
        if path is not None:
            path = Path(path)
            suffix = path.suffix.lstrip(".").lower() or "png"
            write_bytes_atomic(path, png if suffix == "png" else figure_bytes(fig, suffix, dpi))
        if in_kernel():
            from IPython.display import Image, display

            display(Image(data=png, format="png"))
    finally:
        plt.close(fig)


def _format_cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "NA"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, digits: int = 3, index: bool = False) -> str:
    """A GitHub-flavoured Markdown table of `df` (floats rounded to `digits`, NaN as NA)."""
    frame = df.reset_index() if index else df
    header = [str(c) for c in frame.columns]
    rows = [[_format_cell(v, digits) for v in row] for row in frame.itertuples(index=False, name=None)]
    return markdown.table(header, rows) + "\n"


def save_table(df: pd.DataFrame, path_stem: str | os.PathLike, digits: int = 3, index: bool = False) -> None:
    """Write `df` as `<path_stem>.csv` and `<path_stem>.md`, each atomically; returns None."""
    stem = Path(path_stem)
    if stem.suffix in (".csv", ".md"):
        raise ValueError(f"pass the path without suffix (got {stem.name!r}); .csv and .md are both written")
    write_text_atomic(stem.with_name(stem.name + ".csv"), df.to_csv(index=index, float_format="%.6g"))
    write_text_atomic(stem.with_name(stem.name + ".md"), markdown_table(df, digits, index))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (a clear error when there are none)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"image_folder {str(path)!r} is not a folder; pass a folder of images or '' for the scenes"
        )
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(path)!r}")
    return files


def load_pairs(
    n_pairs: int, image_size: int, seed: int, image_folder: str = "", split: str = "test", mode: str = "pure-augmented"
) -> list[Pair]:
    """`n_pairs` seeded pairs: from the embedded scenes (with masks; `mode` is a pair mode of
    `cl_explain.data.pairings.scene_pairs`) or (pure, augmented) pairs from `image_folder`.

    With a folder, pair i uses image i (cycling when the folder has fewer images) and seed `seed + i`.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be at least 1, got {n_pairs}")
    if not image_folder:
        from .data.pairings import scene_pairs

        return list(scene_pairs(n_pairs, split=split, seed=seed, size=image_size, mode=mode))
    files = list_images(image_folder)
    pairs = []
    for i in range(n_pairs):
        path = files[i % len(files)]
        pair = make_pair(load_image(path), seed=seed + i, size=image_size, pair_id=f"{path.stem}-{seed + i}")
        pairs.append(pair)
    return pairs


def findings(title: str, items: Iterable[str], notes: Sequence[str] = ()):
    """The closing cell: a Markdown heading, one bullet per computed finding, then optional notes."""
    from IPython.display import Markdown

    lines = [f"### {title}", ""]
    lines += [f"- {item}" for item in items]
    if notes:
        lines += [""] + list(notes)
    return Markdown("\n".join(lines))


def split_variant(spec: Mapping[str, Any], label: str) -> tuple[str, dict[str, Any]]:
    """(method name, explain params) of a variant written as {"method": name, **params} (method defaults to label)."""
    params = dict(spec)
    return params.pop("method", label), params


def explain_variants(model, pair, variants: Mapping[str, Mapping[str, Any]]) -> dict[str, PairExplanation]:
    """Explain one pair with every variant (label -> {"method": name, **params}); single-image methods get x1
    only, and "random" is the random-map baseline drawn with the pair's seed (as `cl_explain.evaluate` does)."""
    from .explainers import explain, get_method
    from .metrics.sanity import random_explanation

    results = {}
    for label, spec in variants.items():
        method, params = split_variant(spec, label)
        if method == "random":
            results[label] = random_explanation(pair.x1, pair.x2, seed=pair.seed, model=model, **params)
            continue
        x2 = pair.x2 if get_method(method).needs_pair else None
        results[label] = explain(model, pair.x1, x2, method, **params)
    return results


def score_variants(
    model,
    pairs: Sequence,
    explanations: Sequence[Mapping[str, PairExplanation]],
    metrics: Sequence[str],
    **options: Any,
) -> pd.DataFrame:
    """Tidy metric rows (pair_id, method, metric, value) for explanations already computed per pair.

    Metrics that do not apply (e.g. simultaneous ones for a single-image method) are left out;
    grounding metrics use the pair's masks when it has them. `options` go to `evaluate_pair`.
    """
    from .metrics import METRICS, evaluate_pair

    rows = []
    for pair, per_label in zip(pairs, explanations, strict=True):
        masks = (pair.mask1, pair.mask2) if getattr(pair, "mask1", None) is not None else None
        wanted = [m for m in metrics if masks is not None or not METRICS[m].needs_masks]
        for label, explanation in per_label.items():
            values = evaluate_pair(
                model, pair.x1, pair.x2, explanation, wanted, masks=masks, on_not_applicable="skip", **options
            )
            rows += [{"pair_id": pair.pair_id, "method": label, "metric": k, "value": v} for k, v in values.items()]
    return pd.DataFrame(rows, columns=["pair_id", "method", "metric", "value"])


def pair_maps_only(explanations: Mapping[str, PairExplanation]) -> dict[str, PairExplanation]:
    """The explanations for display over (x1, x2): a single-image method's second map is dropped,
    because it belongs to an image the method made itself (averaged transforms: x_0.1), not to x2."""
    from dataclasses import replace

    from .explainers import get_method

    return {label: e if get_method(e.method).needs_pair else replace(e, map2=None) for label, e in explanations.items()}


def overall(results: pd.DataFrame) -> pd.DataFrame:
    """Tidy results without the per-direction rows (`<metric>_1`, `<metric>_2`): the plain metric name
    already holds the mean over the directions (for a single-image method, direction 1 alone)."""
    return results[~results["metric"].str.contains(r"_[12]$", regex=True)].reset_index(drop=True)


def score_table(results: pd.DataFrame) -> pd.DataFrame:
    """Methods (rows, first-seen order) x metrics (columns): the mean over pairs of `overall(results)`."""
    table = overall(results).groupby(["method", "metric"], sort=False)["value"].mean().unstack()
    return table.reindex(
        index=list(dict.fromkeys(results["method"])), columns=list(dict.fromkeys(overall(results)["metric"]))
    )
