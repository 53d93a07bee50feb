"""The pair-explanation API: one result type, one registry from names to methods, one entry point."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..models.similarity import SimilarityModel
from ..params import check_common, method_arguments
from ..precision import PRECISIONS, bf16_supported, precision_context  # noqa: F401 (re-exported)
from ..utils import check_image, resolve_batch_size, scale_batch, scale_kernel, scale_length, scale_sigma

#: Parameters every method accepts (where they apply), with their defaults.
COMMON_PARAMS: dict[str, Any] = {"batch_size": 64, "blur": False, "precision": "fp32"}

#: The paper's display blur for gradient maps at 224 px (kernel, sigma); scaled with the image side.
DISPLAY_BLUR = (11, 5.0)


@dataclass(frozen=True)
class PairExplanation:
    """Maps explaining S(x1, x2), one per image, at the method's native resolution (raw, unnormalised)."""

    method: str
    map1: torch.Tensor
    map2: torch.Tensor | None
    similarity: float
    params: dict[str, Any]
    seconds: float
    image_size: tuple[int, int]
    #: The second image when the method built it from x1 itself (averaged transforms: T(x1)), else None.
    partner: torch.Tensor | None = None

    @property
    def maps(self) -> tuple[torch.Tensor, ...]:
        return (self.map1,) if self.map2 is None else (self.map1, self.map2)

    def resized(self, size: tuple[int, int] | None = None) -> "PairExplanation":
        """The same explanation with both maps bilinearly resized to `size` (default: the image size)."""
        size = tuple(size or self.image_size)
        return replace(
            self,
            map1=resize_map(self.map1, size),
            map2=None if self.map2 is None else resize_map(self.map2, size),
        )


def resize_map(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an h x w map to `size`; a clear error for anything that is not a 2-D map."""
    if not isinstance(saliency, torch.Tensor):
        saliency = torch.as_tensor(saliency)
    if saliency.dim() == 4 and saliency.shape[:2] == (1, 1):
        saliency = saliency[0, 0]
    if saliency.dim() != 2 or min(saliency.shape) < 1:
        raise ValueError(f"a saliency map must be a 2-D tensor h x w (or 1x1xhxw), got shape {tuple(saliency.shape)}")
    if not torch.isfinite(saliency).all():
        raise ValueError("saliency map contains NaN or infinite values; recompute the explanation")
    saliency = saliency.float()
    if tuple(saliency.shape) == tuple(size):
        return saliency
    return F.interpolate(saliency[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


@dataclass(frozen=True)
class MethodSpec:
    """A registered explanation method.

    `defaults` are the paper's values at 224 px; names in `scaled` are rescaled with the image side
    when the caller does not set them ("length": pixels, "kernel": odd blur kernel, "sigma": blur sigma).
    """

    name: str
    function: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    defaults: dict[str, Any]
    scaled: dict[str, str] = field(default_factory=dict)
    needs_pair: bool = True
    sensitivity: bool = True
    description: str = ""
    choices: dict[str, tuple] = field(default_factory=dict)
    partner: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor] | None = None
    #: The method reads tokens or attention: it needs a Vision Transformer (model.is_vit).
    vit_only: bool = False
    #: Its batches run forward and backward through the backbone (sizes batch_size="auto" for that).
    gradient_batches: bool = False

    def applies_to(self, model: SimilarityModel) -> bool:
        """Whether the method can explain `model` (ViT-only methods need a ViT)."""
        return not self.vit_only or bool(getattr(model, "is_vit", False))

    @property
    def scored_pair(self) -> str:
        """Which pair the metrics score for this method: the given pair, (x1, T(x1)) or x1 alone."""
        if self.partner is not None:
            return "x1, T(x1)"
        return "x1, x2" if self.needs_pair else "x1 only"


_REGISTRY: dict[str, MethodSpec] = {}
_SCALERS = {"length": scale_length, "kernel": scale_kernel, "sigma": scale_sigma, "batch": scale_batch}


def register_method(
    name: str,
    defaults: dict[str, Any],
    *,
    scaled: dict[str, str] | None = None,
    needs_pair: bool = True,
    sensitivity: bool = True,
    choices: dict[str, tuple] | None = None,
    partner: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor] | None = None,
    vit_only: bool = False,
    gradient_batches: bool = False,
) -> Callable:
    """Decorator: register `fn(model, x1, x2, **params) -> (map1, map2 or None)` under `name`.

    `partner(x1, params)` builds the second image when the caller gives none (the method then explains
    the pair (x1, partner), and the metrics score that pair). `vit_only` methods need a ViT model.
    """

    def decorate(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodSpec(
            name=name,
            function=fn,
            defaults=dict(defaults),
            scaled=dict(scaled or {}),
            needs_pair=needs_pair,
            sensitivity=sensitivity,
            description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
            choices=dict(choices or {}),
            partner=partner,
            vit_only=vit_only,
            gradient_batches=gradient_batches,
        )
        return fn

    return decorate


def get_method(name: str) -> MethodSpec:
    _load_all_methods()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_methods() -> dict[str, dict[str, Any]]:
    """Method names -> their parameters with defaults (paper values at 224 px, common ones included)."""
    _load_all_methods()
    return {name: {**COMMON_PARAMS, **spec.defaults} for name, spec in sorted(_REGISTRY.items())}


def resolve_params(spec: MethodSpec, side: int, params: dict[str, Any]) -> dict[str, Any]:
    """Merge user parameters over the (size-scaled) defaults, rejecting unknown names and bad choices."""
    allowed = {**COMMON_PARAMS, **spec.defaults}  # a method may set its own batch_size default
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for method {spec.name!r}; valid parameters: {', '.join(sorted(allowed))}"
        )
    resolved = dict(allowed)
    for key, kind in spec.scaled.items():
        if key not in params and resolved[key] is not None:
            resolved[key] = _SCALERS[kind](resolved[key], side)
    resolved.update(params)
    for key, options in spec.choices.items():
        if resolved[key] not in options:
            raise ValueError(f"{spec.name}: {key}={resolved[key]!r} is not one of {options}")
    check_common(resolved, spec.name)
    return resolved


def display_blur(saliency: torch.Tensor, side: int) -> torch.Tensor:
    """The optional Gaussian display blur the paper applies to gradient maps (11, sigma 5 at 224 px)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    k, s = scale_kernel(DISPLAY_BLUR[0], side), scale_sigma(DISPLAY_BLUR[1], side)
    return gaussian_blur(saliency[None, None].float(), [k, k], [s, s])[0, 0]


def explain(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    method: str = "interaction_cam",
    **params: Any,
) -> PairExplanation:
    """Explain S(x1, x2) = cos(f(x1), f(x2)) with a registered method; see `list_methods()`."""
    return _explain(model, x1, x2, method, params, in_range=True)


def explain_perturbed(
    model: SimilarityModel, x1: torch.Tensor, x2: torch.Tensor | None, method: str, **params: Any
) -> PairExplanation:
    """`explain` for images that added noise may have pushed slightly outside [0, 1] (max-sensitivity).

    Every other check of `explain` applies; the similarity is not computed (it is NaN).
    """
    return _explain(model, x1, x2, method, params, in_range=False)


def _explain(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    method: str,
    params: dict[str, Any],
    in_range: bool,
) -> PairExplanation:
    spec = get_method(method)
    if not isinstance(model, SimilarityModel):
        raise TypeError(
            f"model must be a cl_explain.SimilarityModel, got {type(model).__name__}; "
            "wrap your network with SimilarityModel(backbone, head, normalize)"
        )
    if not spec.applies_to(model):
        raise ValueError(
            f"method {method!r} reads patch tokens or attention, so it needs a Vision Transformer, but "
            f"{model.name!r} is not one; load a ViT (e.g. load_model('dino-vits16', checkpoint=...)) or pick "
            "a method that works on any model (occlusion, gradcam, interaction_cam, ...)"
        )
    check_image(x1, "x1", in_range)
    if x2 is not None:
        check_image(x2, "x2", in_range)
    elif spec.needs_pair:
        raise ValueError(f"method {method!r} explains a pair: pass x2")
    side = min(x1.shape[-2:])
    resolved = resolve_params(spec, side, params)
    device = model.device
    x1 = x1.to(device)
    x2 = x2.to(device) if x2 is not None else None
    partner = None
    if x2 is None and spec.partner is not None:
        x2 = partner = spec.partner(x1, resolved)
    start = time.perf_counter()
    with precision_context(resolved["precision"], model, method):
        if resolved["batch_size"] == "auto":  # from free memory on a GPU, the method's default elsewhere
            default = resolve_params(spec, side, {k: v for k, v in params.items() if k != "batch_size"})["batch_size"]
            resolved["batch_size"] = resolve_batch_size("auto", model, x1, default, spec.gradient_batches)
        map1, map2 = spec.function(model, x1, x2, **method_arguments(spec.defaults, resolved))
    maps = [None if m is None else _finished_map(m, method, resolved["blur"], side) for m in (map1, map2)]
    seconds = time.perf_counter() - start
    similarity = model.score(x1, x2) if x2 is not None and in_range else float("nan")
    return PairExplanation(
        method=method,
        map1=maps[0],
        map2=maps[1],
        similarity=similarity,
        params=resolved,
        seconds=seconds,
        image_size=tuple(x1.shape[-2:]),
        partner=None if partner is None else partner.detach().cpu(),
    )


def _finished_map(saliency: torch.Tensor, method: str, blur: bool, side: int) -> torch.Tensor:
    """A method's raw map as a finite float CPU tensor, display-blurred if asked."""
    saliency = saliency.detach().float().cpu()
    if not torch.isfinite(saliency).all():
        raise RuntimeError(f"method {method!r} produced a non-finite map; this is a bug, please report it")
    return display_blur(saliency, side) if blur else saliency


def _load_all_methods() -> None:
    """Import the method modules so their @register_method decorators run."""
    from . import cam, gradients, invariance, occlusion, rollout, token_occlusion  # noqa: F401
