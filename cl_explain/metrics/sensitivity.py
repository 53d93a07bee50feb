"""Max-sensitivity of a pair explanation (the paper's robustness metric, with the same noise added to both images).

For each of `n_draws` seeded draws u ~ U[-radius, radius] (one value per pixel and channel) the SAME
u is added to both images and the pair is re-explained with the explanation's own parameters
(display blur off); per image, the maximum over draws of ||e - e(u)|| / ||e|| (Frobenius norms of
the raw maps at the method's native resolution); MS = mean over the images that have a map.

Decision on the [0, 1] range: like the paper we do NOT clip by default (`clip=False`): the noisy
images leave [0, 1] slightly and are re-explained by `explain_perturbed` (`explain` without its range
check). `clip=True` clips them to [0, 1] first.
Methods registered with `sensitivity=False` (occlusion methods, pixel invariance: "NA" in the paper)
raise `MetricNotApplicable`, as does an all-zero reference map (the ratio is undefined).

Source: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive
Learning", IEEE TIP 2023 (arXiv 2206.09753), its pair adaptation of max-sensitivity (Yeh et al., "On
the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019).
"""

from __future__ import annotations

import torch

from ..explainers.base import PairExplanation, explain_perturbed, get_method
from ..models.similarity import SimilarityModel
from ..utils import cpu_generator, to_device
from .common import MetricNotApplicable, ScoredPair
from .registry import register_metric


def _explain_raw(
    model: SimilarityModel, x1: torch.Tensor, x2: torch.Tensor | None, explanation: PairExplanation, clip: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Re-explain with the explanation's resolved parameters and the display blur off."""
    if clip:
        x1, x2 = x1.clamp(0, 1), None if x2 is None else x2.clamp(0, 1)
    params = {k: v for k, v in explanation.params.items() if k != "blur"}
    again = explain_perturbed(model, x1, x2, explanation.method, **params)
    return again.map1, again.map2


def max_sensitivity(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    explanation: PairExplanation,
    *,
    n_draws: int = 10,
    radius: float = 0.2,
    seed: int = 0,
    clip: bool = False,
) -> dict[str, float]:
    """Keys "max_sensitivity" (mean of the per-image maxima) and "max_sensitivity_1" / "_2"."""
    if explanation.method == "random":
        raise MetricNotApplicable("max-sensitivity is not defined for the random baseline (its maps ignore the input)")
    try:
        spec = get_method(explanation.method)
    except ValueError as error:
        raise MetricNotApplicable(f"max-sensitivity needs a registered method to re-explain: {error}") from None
    if not spec.sensitivity:
        raise MetricNotApplicable(
            f"max-sensitivity is not defined for method {explanation.method!r} (registered with sensitivity=False; "
            "the paper reports NA for occlusion methods and pixel invariance)"
        )
    if n_draws < 1 or radius < 0:
        raise ValueError(f"need n_draws >= 1 and radius >= 0, got n_draws={n_draws}, radius={radius}")
    pair_input = x2 if spec.needs_pair or spec.partner is not None else None
    if pair_input is not None and pair_input.shape != x1.shape:
        raise ValueError(
            f"the same noise is added to both images: they need one shape, got {tuple(x1.shape)} "
            f"and {tuple(pair_input.shape)}"
        )
    if explanation.params.get("blur", False):
        reference = _explain_raw(model, x1, pair_input, explanation, clip=False)
    else:
        reference = explanation.map1, explanation.map2
    reference = [m for m in reference if m is not None]
    for i, m in enumerate(reference, start=1):
        if float(m.float().norm()) == 0.0:
            raise MetricNotApplicable(f"map {i} is all zeros: ||e(x) - e(x+u)|| / ||e(x)|| is undefined")

    generator = cpu_generator(int(seed))
    worst = [0.0] * len(reference)
    for _ in range(n_draws):
        u = to_device((torch.rand(x1.shape, generator=generator, dtype=x1.dtype) * 2 - 1).mul(radius), x1.device)
        noisy = _explain_raw(model, x1 + u, None if pair_input is None else pair_input + u, explanation, clip)
        for i, (e, e_u) in enumerate(zip(reference, noisy)):
            ratio = float((e.float() - e_u).norm() / e.float().norm())
            worst[i] = max(worst[i], ratio)
    result = {f"max_sensitivity_{i}": w for i, w in enumerate(worst, start=1)}
    result["max_sensitivity"] = sum(worst) / len(worst)
    return result


@register_metric(
    "max_sensitivity",
    higher_is_better=False,
    abbreviation="MS",
    paper_column=9,
    family="sensitivity",
    description="max relative map change under uniform input noise",
    options={"n_draws": 10, "radius": 0.2, "seed": 0, "clip": False},
)
def _sensitivity_family(model: SimilarityModel, items: list[ScoredPair], options: dict) -> list[dict]:
    """Max-sensitivity of each item (re-explained with the explanation's own precision)."""
    out = []
    for item in items:
        try:
            values = max_sensitivity(
                model,
                item.x1,
                item.x2,
                item.explanation,
                **{k: options[k] for k in ("n_draws", "radius", "seed", "clip")},
            )
        except MetricNotApplicable as reason:
            values = reason
        out.append({"max_sensitivity": values})
    return out
