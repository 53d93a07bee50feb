"""Figure builders: they return matplotlib figures and never show or save (notebooks use notebook.show_and_save)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from .explainers.base import PairExplanation, resize_map
from ._deprecated import deprecated_alias
from .maps import minmax

#: Perceptually uniform colour map for saliency overlays.
SALIENCY_CMAP = "inferno"


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """1x3xHxW or 3xHxW tensor in [0, 1] -> HxWx3 array for imshow."""
    x = x.detach().float().cpu()
    if x.dim() == 4:
        x = x[0]
    return x.permute(1, 2, 0).clamp(0, 1).numpy()


def normalize_for_display(saliency: torch.Tensor) -> np.ndarray:
    """Min-max scale a map to [0, 1] for display (a constant map shows as zeros)."""
    return minmax(saliency.detach().float().cpu(), constant=0.0).numpy()


normalise_for_display = deprecated_alias("normalise_for_display", "normalize_for_display", normalize_for_display)


def overlay(
    ax,
    image: torch.Tensor,
    saliency: torch.Tensor | None = None,
    alpha: float = 0.55,
    title: str | None = None,
    mask: torch.Tensor | None = None,
) -> None:
    """Draw `image` with `saliency` (resized bilinearly to the image) on top; optional mask contour."""
    ax.imshow(to_numpy_image(image))
    if saliency is not None:
        s = resize_map(saliency, tuple(image.shape[-2:]))
        ax.imshow(normalize_for_display(s), cmap=SALIENCY_CMAP, alpha=alpha, vmin=0, vmax=1)
    if mask is not None:
        ax.contour(mask.cpu().numpy().astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def saliency_colorbar(fig: Figure, axes, shrink: float = 0.8, anchor: tuple[float, float] = (0.0, 0.5)) -> None:
    """One colour bar right of `axes` (an Axes or a list/array of them) for the overlays' saliency colours.

    Every overlay is min-max scaled on its own, so the bar reads "low" to "high" within each map,
    not as values comparable across maps. `shrink` is its length as a share of the axes' height,
    `anchor` where it sits ((0, 0): at the bottom). Needs a figure with layout="constrained".
    """
    bar = fig.colorbar(
        ScalarMappable(Normalize(0, 1), SALIENCY_CMAP),
        ax=np.asarray(axes).ravel().tolist(),
        shrink=shrink,
        anchor=anchor,
        panchor=False,
        aspect=12 / shrink,
        pad=0.02,
    )
    bar.set_ticks([0, 1], labels=["low", "high"], fontsize=7)
    bar.set_label("saliency (each map scaled\nto its own range)", fontsize=7)


def pair_figure(
    x1: torch.Tensor,
    x2: torch.Tensor,
    explanation: PairExplanation,
    title: str | None = None,
    masks: Sequence[torch.Tensor | None] = (None, None),
) -> Figure:
    """The two views and their maps (2 x 2), titled with the similarity."""
    fig, axes = plt.subplots(2, 2, figsize=(5.6, 5), layout="constrained")
    overlay(axes[0, 0], x1, title="x1", mask=masks[0])
    overlay(axes[0, 1], x2, title="x2", mask=masks[1])
    overlay(axes[1, 0], x1, explanation.map1, title=f"{explanation.method}: map 1")
    if explanation.map2 is not None:
        overlay(axes[1, 1], x2, explanation.map2, title=f"{explanation.method}: map 2")
    else:
        axes[1, 1].set_axis_off()
    saliency_colorbar(fig, axes, shrink=0.45, anchor=(0.0, 0.04))  # beside the maps (bottom row)
    fig.suptitle(title or f"S(x1, x2) = {explanation.similarity:.3f}", fontsize=10)
    return fig


def method_grid(
    x1: torch.Tensor, x2: torch.Tensor, explanations: Mapping[str, PairExplanation], title: str | None = None
) -> Figure:
    """Rows = the two images, columns = the images then one column per method."""
    return model_method_grid(x1, x2, {"": explanations}, title)


def model_method_grid(
    x1: torch.Tensor,
    x2: torch.Tensor,
    per_model: Mapping[str, Mapping[str, PairExplanation]],
    title: str | None = None,
) -> Figure:
    """One pair explained by several models: two rows (x1, x2) per model, labelled with the model's name
    (an empty name gets no label); columns = the images then one column per method label (the union over
    models, in first-seen order; a method a model lacks leaves its cells empty)."""
    if not per_model:
        raise ValueError("per_model is empty: pass {model name: {method label: PairExplanation}}")
    labels = list(dict.fromkeys(label for explanations in per_model.values() for label in explanations))
    n = len(labels) + 1
    rows = 2 * len(per_model)
    fig, axes = plt.subplots(rows, n, figsize=(1.7 * n + 0.6, 1.8 * rows), squeeze=False, layout="constrained")
    for block, (name, explanations) in enumerate(per_model.items()):
        top, bottom = axes[2 * block], axes[2 * block + 1]
        overlay(top[0], x1, title="x1" if block == 0 else None)
        overlay(bottom[0], x2, title="x2" if block == 0 else None)
        if name:
            top[0].set_axis_on()
            top[0].set_xticks([])
            top[0].set_yticks([])
            top[0].set_ylabel(name, fontsize=8)
            for spine in top[0].spines.values():
                spine.set_visible(False)
        for col, label in enumerate(labels, start=1):
            exp = explanations.get(label)
            if exp is None:
                top[col].set_axis_off()
                bottom[col].set_axis_off()
                continue
            overlay(top[col], x1, exp.map1, title=label if block == 0 else None)
            if exp.map2 is not None:
                overlay(bottom[col], x2, exp.map2)
            else:
                bottom[col].set_axis_off()
    if n > 1:
        saliency_colorbar(fig, axes[:, 1:])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def image_grid(
    images: Sequence[Sequence[torch.Tensor]],
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    title: str | None = None,
) -> Figure:
    """A grid of images (rows of 1x3xHxW tensors), e.g. feature inversion depth x model."""
    rows, cols = len(images), max(len(r) for r in images)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows), squeeze=False)
    for i, row in enumerate(images):
        for j in range(cols):
            ax = axes[i, j]
            if j < len(row):
                ax.imshow(to_numpy_image(row[j]))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=8)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def curves_figure(
    curves: Mapping[str, np.ndarray | torch.Tensor],
    title: str = "",
    xlabel: str = "fraction of pixels",
    ylabel: str = "similarity",
) -> Figure:
    """Insertion/deletion-style curves on [0, 1], one line per label."""
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    for label, curve in curves.items():
        y = np.asarray(curve.detach().cpu() if isinstance(curve, torch.Tensor) else curve, dtype=float)
        ax.plot(np.linspace(0, 1, len(y)), y, label=label, linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def mean_curves_figure(
    curves: Mapping[str, Mapping[str, Mapping]], title: str, baselines: Sequence[str] = ("random", "random_grid")
) -> Figure:
    """One panel per mode ({mode: `metrics.mean_curves` output}): mean curve and 95% band per label.

    Baseline labels (random maps) are drawn dashed in grey tones; both axes run over [0, 1] (the
    similarity axis extends below 0 only when a curve does), so AUCs can be read as areas.
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.6), squeeze=False)
    for ax, (mode, per_label) in zip(axes[0], curves.items()):
        lowest = 0.0
        for label, c in per_label.items():
            baseline = label in baselines
            (line,) = ax.plot(
                c["fractions"],
                c["mean"],
                linewidth=1.0 if baseline else 1.3,
                linestyle="--" if baseline else "-",
                color="0.45" if label == "random" else "0.7" if baseline else None,
                label=f"{label} (AUC {c['auc']:.3f})",
            )
            ax.fill_between(c["fractions"], c["low"], c["high"], color=line.get_color(), alpha=0.15, linewidth=0)
            lowest = min(lowest, float(np.min(c["low"])))
        ax.set_xlim(0, 1)
        ax.set_ylim(lowest, 1)
        ax.set_xlabel("fraction of pixels " + ("put back" if mode == "insertion" else "removed"))
        ax.set_ylabel("similarity S")
        ax.set_title(f"simultaneous {mode}", fontsize=9)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def rank_heatmap(ranks, title: str) -> Figure:
    """Methods (rows) x metrics (columns) heat map of ranks (1 = best), numbers printed in the cells."""
    values = ranks.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 0.6 * ranks.shape[1], 1.0 + 0.35 * ranks.shape[0]))
    image = ax.imshow(values, cmap="viridis_r")
    ax.set_xticks(range(ranks.shape[1]), list(ranks.columns))
    ax.set_yticks(range(ranks.shape[0]), list(ranks.index))
    for i, j in np.argwhere(np.isfinite(values)):
        ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.7, label="rank (1 = best)")
    fig.tight_layout()
    return fig


def published_figure(side, agreement, model: str, abbreviations: Mapping[str, str]) -> Figure:
    """Our method means (x) against the study's published values (y), one panel per metric.

    `side` is `analysis.side_by_side` output, `agreement` the concatenated `analysis.rank_agreement`
    tables; each panel's title gives the Spearman rank agreement with its bootstrap interval per
    published model.
    """
    ours = side[side["model"] == model]
    metrics = list(dict.fromkeys(ours["metric"]))
    paper_models = [c for c in side.columns if c not in ("model", "method", "metric", "ours")]
    cols = min(3, max(len(metrics), 1))
    rows = max(1, -(-len(metrics) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.3 * rows), squeeze=False)
    markers = ("o", "s", "^", "D")
    for ax, metric in zip(axes.ravel(), metrics):
        frame = ours[ours["metric"] == metric]
        lines = []
        for marker, paper in zip(markers, paper_models):
            ax.scatter(frame["ours"], frame[paper], marker=marker, s=18, label=paper)
            hit = agreement[
                (agreement["model"] == model) & (agreement["metric"] == metric) & (agreement["paper_model"] == paper)
            ]
            if len(hit):
                r = hit.iloc[0]
                lines.append(f"{paper.split('-r50')[0]}: ρ {r.spearman:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]")
        ax.set_title(f"{abbreviations.get(metric, metric)}\n" + "\n".join(lines), fontsize=7)
        ax.set_xlabel("ours", fontsize=7)
        ax.set_ylabel("published", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_axis_off()
    if metrics:
        axes.ravel()[0].legend(fontsize=6)
    fig.suptitle(f"{model} against the study's published table (one point per method)", fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_scatter(means, table, accuracy_kind: str, metric_names: Mapping[str, str]) -> Figure:
    """Mean explanation metric (y) against model accuracy (x), one panel per metric, every point
    labelled with its model; the legend gives each method's correlation and interval.

    `means`: `analysis.per_model_means` with an `accuracy` column; `table`: `analysis.correlation_table`;
    `metric_names`: metric -> short title (e.g. "SD (lower is better)").
    """
    shown = [m for m in metric_names if m in set(means["metric"])]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(3.8 * max(len(shown), 1), 3.3), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        for label, group in means[means["metric"] == metric].groupby("method", sort=False):
            row = table[(table["method"] == label) & (table["metric"] == metric)].iloc[0]
            ax.plot(
                group["accuracy"],
                group["mean"],
                "o",
                label=f"{label} (r={row['r']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}])",
            )
            for _, point in group.iterrows():
                ax.annotate(
                    str(point["model"]).replace("embedded-", ""),
                    (point["accuracy"], point["mean"]),
                    fontsize=5,
                    xytext=(3, 2),
                    textcoords="offset points",
                )
        ax.set_xlabel(f"{accuracy_kind} accuracy", fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.set_title(metric_names[metric], fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def strength_sweep_figure(sweep, title: str) -> Figure:
    """Mean S(x1, x2) against augmentation strength, one line per image (`sweep`: images x strengths)."""
    fig, ax = plt.subplots(figsize=(4.4, 3.1))
    for name, row in sweep.iterrows():
        ax.plot(list(sweep.columns), row.to_numpy(), marker="o", label=name, linewidth=1)
    ax.set_xlabel("augmentation strength")
    ax.set_ylabel("mean S(x1, x2)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def stretch(image: torch.Tensor, clip_percent: float = 0.5) -> torch.Tensor:
    """Contrast stretch of an image-like tensor to [0, 1] for display (e.g. the small change x - base of
    feature visualisation): the `clip_percent` lowest and highest values (over all channels) are
    clipped, so a few extreme pixels do not turn the rest grey; 0 gives a plain min-max stretch."""
    if not 0 <= clip_percent < 50:
        raise ValueError(f"clip_percent must be in [0, 50), got {clip_percent}")
    values = image.detach().float().flatten()
    low, high = torch.quantile(values, torch.tensor([clip_percent, 100 - clip_percent]) / 100)
    return ((image - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)


def scene_grid(scenes: Sequence, columns: int = 6) -> Figure:
    """Scenes (with `image`, `objects`, `class_name`) above their instance maps: target in orange,
    distractors in blue shades, background white."""
    rows = math.ceil(len(scenes) / columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(1.7 * columns, 3.4 * rows), squeeze=False)
    palette = ListedColormap(["white", "tab:orange", "tab:blue", "cornflowerblue", "lightsteelblue"])
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for k, scene in enumerate(scenes):
        top, bottom = axes[2 * (k // columns), k % columns], axes[2 * (k // columns) + 1, k % columns]
        top.imshow(to_numpy_image(scene.image))
        top.set_title(scene.class_name, fontsize=8)
        bottom.imshow(scene.objects.numpy(), cmap=palette, vmin=0, vmax=4, interpolation="nearest")
    fig.tight_layout()
    return fig
