"""Insertion and deletion curves for pair explanations (the paper's pair version of insertion/deletion).

Source: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive
Learning", IEEE TIP 2023 (arXiv 2206.09753); insertion/deletion: Petsiuk et al., RISE, BMVC 2018.

A map ranks the pixels of its image (most salient first; ties keep raster order, so a constant map
perturbs row by row). Curve point i perturbs the `counts[i]` top-ranked pixels (all channels):

* deletion starts from the image and replaces them by a substrate (default: zero in model input
  space, `model.zero_pixel`);
* insertion starts from another image and puts the original pixels back. The study starts from a
  blurred copy (`insertion_start="blur"`: GaussianBlur 11, sigma 5 at 224 px, scaled with the image
  side); the default here is `"foreign"`, a fixed unrelated scene for each image (`foreign_start`),
  because a blurred copy holds nothing a background-invariant model can tell apart, so the two blurred
  starts are already as similar as the pair and the curve has nothing to recover.

`step` pixels per point, default = the image side (224 at 224 px -> 225 points including the start);
when `step` does not divide H*W the last interval is shorter and the AUC, a trapezoid over the
perturbed fraction of pixels in [0, 1], weights it accordingly. With equal steps this is the paper's
(sum s_i - s_0/2 - s_N/2) / N.

Perturbed images are made batch by batch from a rank map (pixel rank < count) and embedded with
`embed_stream`, so memory is bounded by `batch_size` images whatever the image size. The embeddings
of one image's perturbation sequence serve both the simultaneous curve and the conditional curve
of that image, so `perturbation_curves` embeds each sequence once.
"""

from __future__ import annotations

from functools import lru_cache

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..explainers.base import PairExplanation, resize_map
from ..models.similarity import SimilarityModel, cosine, embed_stream
from ..precision import precision_context
from .common import ScoredPair, directional
from .registry import register_metric
from ..utils import scale_kernel, scale_sigma

#: Insertion start blur at 224 px (kernel, sigma), scaled with the image side.
INSERTION_BLUR = (11, 5.0)
MODES = ("insertion", "deletion")


@dataclass(frozen=True)
class Curve:
    """One insertion/deletion curve: similarity per point, the perturbed pixel fraction, and its AUC."""

    scores: torch.Tensor
    fractions: torch.Tensor
    auc: float


def default_step(height: int, width: int) -> int:
    """Pixels perturbed per curve point: the image side (224 at 224 px), the shorter side if not square."""
    return min(height, width)


def perturbation_counts(height: int, width: int, step: int | None = None) -> torch.Tensor:
    """Number of perturbed pixels at each curve point: 0, step, 2*step, ..., H*W (last step may be short)."""
    total = height * width
    step = default_step(height, width) if step is None else int(step)
    if step < 1:
        raise ValueError(f"step must be a positive number of pixels, got {step}")
    counts = torch.arange(0, total, step, dtype=torch.long)
    return torch.cat([counts, torch.tensor([total])])


def area_under_curve(scores: torch.Tensor, fractions: torch.Tensor | None = None) -> float:
    """Trapezoid AUC of `scores` over `fractions` in [0, 1] (default: equally spaced points)."""
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if scores.numel() < 2:
        raise ValueError(f"a curve needs at least two points, got {scores.numel()}")
    if fractions is None:
        fractions = torch.linspace(0.0, 1.0, scores.numel(), dtype=torch.float64)
    return float(torch.trapezoid(scores, torch.as_tensor(fractions, dtype=torch.float64)))


#: Saliency values closer than this fraction of the map's range count as tied (see `rank_pixels`).
TIE_TOLERANCE = 1e-5


def rank_pixels(saliency: torch.Tensor, tie_tolerance: float = TIE_TOLERANCE) -> torch.Tensor:
    """HxW map of pixel ranks, 0 = most salient; tied pixels keep raster order.

    Pixels whose sorted values are chained by gaps below `tie_tolerance` x (max - min) form one tie
    group. Upsampled maps (Grad-CAM from an 8 x 8 layer, say) hold many values that are equal on paper
    but differ by float rounding, and which of them comes first would otherwise depend on the CPU's
    kernels; grouping them makes the order, and so the deletion and insertion curves, portable.
    """
    flat = saliency.detach().flatten().double()
    n = flat.numel()
    index = torch.arange(n, device=flat.device)
    span = float(flat.max() - flat.min()) if n else 0.0
    order = torch.argsort(flat, descending=True, stable=True)
    gaps = flat[order][:-1] - flat[order][1:]
    starts = torch.cat([torch.ones(1, dtype=torch.bool, device=flat.device), gaps > tie_tolerance * span])
    group = torch.empty_like(index)
    group[order] = torch.cumsum(starts.long(), 0) - 1
    order = torch.argsort(group * n + index)
    rank = torch.empty_like(order)
    rank[order] = index
    return rank.view_as(saliency)


def reference_image(model: SimilarityModel, x: torch.Tensor, kind: str | torch.Tensor) -> torch.Tensor:
    """The deletion substrate / insertion start for image `x` (1x3xHxW), broadcastable to it.

    `kind`: "zero" (zero in model input space), "black" (pixel value 0), "blur" (GaussianBlur 11,
    sigma 5 at 224 px, scaled with the side: the study's insertion start), "foreign" (an unrelated
    embedded scene, see `foreign_start`), or a tensor broadcastable to 1x3xHxW.
    """
    if isinstance(kind, torch.Tensor):
        try:
            torch.broadcast_shapes(kind.shape, x.shape)
        except RuntimeError:
            raise ValueError(
                f"a substrate tensor must broadcast to the image shape {tuple(x.shape)}, got {tuple(kind.shape)}"
            ) from None
        return kind.to(device=x.device, dtype=x.dtype)
    if kind == "zero":
        return model.zero_pixel.to(device=x.device, dtype=x.dtype)
    if kind == "black":
        return torch.zeros(1, 3, 1, 1, device=x.device, dtype=x.dtype)
    if kind == "blur":
        from torchvision.transforms.v2.functional import gaussian_blur

        side = min(x.shape[-2:])
        k, s = scale_kernel(INSERTION_BLUR[0], side), scale_sigma(INSERTION_BLUR[1], side)
        return gaussian_blur(x, [k, k], [s, s])
    if kind == "foreign":
        return foreign_start(x, 0)
    raise ValueError(f"unknown substrate {kind!r}; use 'zero', 'black', 'blur', 'foreign' or a tensor")


def insertion_starts(
    model: SimilarityModel, x1: torch.Tensor, x2: torch.Tensor, kind: str | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The insertion starts of the two images of a pair (for "foreign", each image its own unrelated scene)."""
    if isinstance(kind, str) and kind == "foreign":
        return foreign_start(x1, 0), foreign_start(x2, 1)
    return reference_image(model, x1, kind), reference_image(model, x2, kind)


#: Where insertion starts unless told otherwise (the study's start is "blur").
DEFAULT_INSERTION_START = "foreign"
#: Validation scenes (of classes 0 and 5) that the "foreign" insertion start begins x1 and x2 from.
FOREIGN_SCENES = (0, 5)


def foreign_start(x: torch.Tensor, role: int) -> torch.Tensor:
    """The "foreign" insertion start of x1 (`role` 0) or x2 (`role` 1): a fixed unrelated embedded scene
    (validation split) at x's size. Insertion then grows each image's ranked pixels inside another
    image, so the curve starts from the similarity of two unrelated images. Starts that hold nothing
    (blur, a constant) all look alike to a model that has learnt to ignore backgrounds, which leaves
    insertion no similarity to recover; see `cl_explain.train.quality.insertion_room`."""
    if role not in (0, 1):
        raise ValueError(f"role must be 0 (x1) or 1 (x2), got {role!r}")
    return _foreign_scene(FOREIGN_SCENES[role], tuple(x.shape[-2:])).to(device=x.device, dtype=x.dtype)


@lru_cache(maxsize=8)
def _foreign_scene(index: int, shape: tuple[int, int]) -> torch.Tensor:
    from torchvision.transforms.v2.functional import resize

    from ..data.scenes import render_scene

    scene = render_scene(index, "val", size=max(32, min(shape))).image[None]
    return resize(scene, list(shape), antialias=True).clamp(0, 1) if tuple(scene.shape[-2:]) != shape else scene


def perturbation_embeddings(
    model: SimilarityModel,
    x: torch.Tensor,
    saliency: torch.Tensor,
    mode: str,
    *,
    step: int | None = None,
    substrate: str | torch.Tensor = "zero",
    insertion_start: str | torch.Tensor = DEFAULT_INSERTION_START,
    batch_size: int = 64,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ((N+1) x D) of the insertion/deletion sequence of `x` ranked by `saliency`, and the fractions."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    x = x.to(model.device)
    height, width = x.shape[-2:]
    rank = rank_pixels(resize_map(saliency, (height, width))).to(model.device)
    counts = perturbation_counts(height, width, step).to(model.device)
    if mode == "deletion":
        start, fill = x, reference_image(model, x, substrate)
    else:
        start, fill = reference_image(model, x, insertion_start), x

    def make_batch(lo: int, hi: int) -> torch.Tensor:
        taken = (rank[None] < counts[lo:hi, None, None])[:, None]  # B x 1 x H x W
        return torch.where(taken, fill, start)

    with precision_context(precision, model, mode):
        embeddings = embed_stream(model, counts.numel(), make_batch, batch_size)
    return embeddings, counts.double().cpu() / (height * width)


def _curve(scores: torch.Tensor, fractions: torch.Tensor) -> Curve:
    scores = scores.detach().double().cpu()
    return Curve(scores=scores, fractions=fractions, auc=area_under_curve(scores, fractions))


@torch.no_grad()
def perturbation_curves(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    map1: torch.Tensor,
    map2: torch.Tensor | None,
    mode: str,
    which: tuple[str, ...] = ("simultaneous", "conditional_1", "conditional_2"),
    **options,
) -> dict[str, Curve]:
    """Insertion or deletion curves of a pair; each image's perturbation sequence is embedded once.

    `which` selects "simultaneous" (both perturbed at the same step, each by its own map),
    "conditional_1" (x1 perturbed by map1, x2 intact) and "conditional_2" (x2 perturbed, x1 intact).
    `options` go to `perturbation_embeddings` (step, substrate, insertion_start, batch_size, precision).
    """
    unknown = set(which) - {"simultaneous", "conditional_1", "conditional_2"}
    if unknown:
        raise ValueError(f"unknown curve kind(s) {sorted(unknown)}; use simultaneous, conditional_1, conditional_2")
    if map2 is None and ({"simultaneous", "conditional_2"} & set(which)):
        raise ValueError("this explanation has no map for x2: only the 'conditional_1' curve is defined")
    precision = options.get("precision", "fp32")
    need1 = {"simultaneous", "conditional_1"} & set(which)
    need2 = {"simultaneous", "conditional_2"} & set(which)
    options1, options2 = dict(options), dict(options)
    if mode == "insertion":
        options1["insertion_start"], options2["insertion_start"] = insertion_starts(
            model, x1, x2, options.get("insertion_start", DEFAULT_INSERTION_START)
        )
    seq1 = perturbation_embeddings(model, x1, map1, mode, **options1) if need1 else None
    seq2 = perturbation_embeddings(model, x2, map2, mode, **options2) if need2 else None

    # the intact partner of each conditional curve: x2 for curve 1, x1 for curve 2 (one pass for both)
    partners = {}
    with precision_context(precision, model, mode):
        if "conditional_1" in which and "conditional_2" in which:
            partners["conditional_1"], partners["conditional_2"] = model.embed_pair(
                x2.to(model.device), x1.to(model.device)
            )
        elif "conditional_1" in which:
            partners["conditional_1"] = model.embed(x2.to(model.device)).float()
        elif "conditional_2" in which:
            partners["conditional_2"] = model.embed(x1.to(model.device)).float()

    curves = {}
    if "simultaneous" in which:
        curves["simultaneous"] = _curve(cosine(seq1[0], seq2[0]), seq1[1])
    if "conditional_1" in which:
        curves["conditional_1"] = _curve(cosine(seq1[0], partners["conditional_1"]), seq1[1])
    if "conditional_2" in which:
        curves["conditional_2"] = _curve(cosine(partners["conditional_2"], seq2[0]), seq2[1])
    return curves


def simultaneous_curve(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    map1: torch.Tensor,
    map2: torch.Tensor,
    mode: str,
    **options,
) -> Curve:
    """SI / SD: both images perturbed at the same step, each by its own map; s_i = cos(f(x1_i), f(x2_i))."""
    return perturbation_curves(model, x1, x2, map1, map2, mode, ("simultaneous",), **options)["simultaneous"]


def conditional_curve(
    model: SimilarityModel,
    x: torch.Tensor,
    other: torch.Tensor,
    saliency: torch.Tensor,
    mode: str,
    **options,
) -> Curve:
    """CI / CD in one direction: `x` perturbed by `saliency`, `other` intact (embedded once)."""
    return perturbation_curves(model, x, other, saliency, None, mode, ("conditional_1",), **options)["conditional_1"]


def mean_curves(
    model: SimilarityModel,
    pairs: Sequence,
    explanations: Sequence[Mapping[str, PairExplanation]],
    mode: str,
    **options,
) -> dict[str, dict[str, np.ndarray | float | int]]:
    """The simultaneous `mode` curve of every label averaged over pairs, with a pointwise 95% band.

    `pairs[i]` has x1 and x2; `explanations[i]` maps labels to that pair's explanation. A method that
    built its own partner (averaged transforms: T(x1)) is scored on (x1, partner), as the metrics do;
    labels without a second map (pixel invariance) have no simultaneous curve and are left out.
    Returns {label: {"fractions", "mean", "low", "high" (mean -/+ 1.96 standard errors), "auc" (mean
    AUC over pairs), "n" (pairs)}}.
    """
    if len(pairs) != len(explanations) or not pairs:
        raise ValueError(f"need one mapping of explanations per pair, got {len(explanations)} for {len(pairs)} pairs")
    scores: dict[str, list[np.ndarray]] = {}
    fractions: dict[str, np.ndarray] = {}
    aucs: dict[str, list[float]] = {}
    for pair, per_label in zip(pairs, explanations):
        for label, explanation in per_label.items():
            if explanation.map2 is None:
                continue
            partner = explanation.partner if explanation.partner is not None else pair.x2
            curve = simultaneous_curve(model, pair.x1, partner, explanation.map1, explanation.map2, mode, **options)
            scores.setdefault(label, []).append(curve.scores.numpy())
            fractions[label] = curve.fractions.numpy()
            aucs.setdefault(label, []).append(curve.auc)
    out = {}
    for label, rows in scores.items():
        stacked = np.stack(rows)
        mean = stacked.mean(axis=0)
        half = 1.96 * stacked.std(axis=0, ddof=1) / np.sqrt(len(rows)) if len(rows) > 1 else np.zeros_like(mean)
        out[label] = {
            "fractions": fractions[label],
            "mean": mean,
            "low": mean - half,
            "high": mean + half,
            "auc": float(np.mean(aucs[label])),
            "n": len(rows),
        }
    return out


def _curve_family(mode: str):
    """The registered family function of `mode`: its simultaneous and conditional AUCs, one call per pair."""

    def compute(model: SimilarityModel, items: Sequence[ScoredPair], options: Mapping) -> list[dict]:
        sim, cond = f"{mode}_simultaneous", f"{mode}_conditional"
        out = []
        for item in items:
            map1, map2 = item.maps
            which = (["simultaneous"] if sim in item.metrics else []) + (
                ["conditional_1"] + (["conditional_2"] if map2 is not None else []) if cond in item.metrics else []
            )
            keys = ("step", "substrate", "insertion_start", "batch_size", "precision")
            curves = perturbation_curves(
                model, item.x1, item.x2, map1, map2, mode, tuple(which), **{k: options[k] for k in keys}
            )
            values = {}
            if sim in item.metrics:
                values[sim] = {sim: curves["simultaneous"].auc}
            if cond in item.metrics:
                values[cond] = directional(
                    cond, {d: curves[f"conditional_{d}"].auc for d in (1, 2) if f"conditional_{d}" in curves}
                )
            out.append(values)
        return out

    return compute


_CURVE_OPTIONS = {"step": None, "precision": "fp32"}
_insertion, _deletion = _curve_family("insertion"), _curve_family("deletion")
register_metric(
    "insertion_simultaneous",
    family="insertion",
    higher_is_better=True,
    abbreviation="SI",
    paper_column=1,
    pair=True,
    options={**_CURVE_OPTIONS, "insertion_start": DEFAULT_INSERTION_START},
    description="insertion AUC, both images perturbed",
)(_insertion)
register_metric(
    "insertion_conditional",
    family="insertion",
    higher_is_better=True,
    abbreviation="CI",
    paper_column=3,
    options={**_CURVE_OPTIONS, "insertion_start": DEFAULT_INSERTION_START},
    description="insertion AUC, one image perturbed (mean of directions)",
)(_insertion)
register_metric(
    "deletion_simultaneous",
    family="deletion",
    higher_is_better=False,
    abbreviation="SD",
    paper_column=2,
    pair=True,
    options={**_CURVE_OPTIONS, "substrate": "zero"},
    description="deletion AUC, both images perturbed",
)(_deletion)
register_metric(
    "deletion_conditional",
    family="deletion",
    higher_is_better=False,
    abbreviation="CD",
    paper_column=4,
    options={**_CURVE_OPTIONS, "substrate": "zero"},
    description="deletion AUC, one image perturbed (mean of directions)",
)(_deletion)
