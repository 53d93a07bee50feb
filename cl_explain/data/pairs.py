"""Pairs of views: the unit every explanation and metric works on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .transforms import ViewParams, as_batch, pure_view, simclr_view
from ..utils import cpu_generator


@dataclass
class Pair:
    """Two views x1, x2 (1x3xHxW in [0, 1]), optional object masks (HxW bool), and how they were made."""

    x1: torch.Tensor
    x2: torch.Tensor
    mask1: torch.Tensor | None = None
    mask2: torch.Tensor | None = None
    pair_id: str = "pair"
    seed: int = 0
    label: int | None = None
    label2: int | None = None
    params1: ViewParams | None = None
    params2: ViewParams | None = None
    info: dict = field(default_factory=dict)

    @property
    def has_masks(self) -> bool:
        return self.mask1 is not None and self.mask2 is not None


def check_same_size(x1: torch.Tensor, x2: torch.Tensor) -> None:
    """Raise a clear error when two views that must share a size do not."""
    if tuple(x1.shape[-2:]) != tuple(x2.shape[-2:]):
        raise ValueError(
            f"the two views must have the same size, got {tuple(x1.shape[-2:])} and {tuple(x2.shape[-2:])}; "
            "make them with make_pair(..., size=N) or resize both"
        )


def make_pair(
    image: torch.Tensor,
    seed: int,
    size: int = 224,
    augment_both: bool = False,
    other: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    other_mask: torch.Tensor | None = None,
    pair_id: str | None = None,
) -> Pair:
    """The paper's default pair: (pure view, SimCLR augmented view) of one image, seeded.

    `augment_both` augments the first view too; `other` takes the second view from a different image.
    Masks (HxW) follow each view's geometry; the crop/flip of each view is kept in params1/params2.
    """
    image = as_batch(image)
    second = as_batch(other, "other") if other is not None else image
    second_mask = other_mask if other is not None else mask
    generator = cpu_generator(int(seed))
    if augment_both:
        x1, m1, p1 = simclr_view(image, size, generator, mask)
    else:
        x1, m1 = pure_view(image, size, mask)
        p1 = None
    x2, m2, p2 = simclr_view(second, size, generator, second_mask)
    return Pair(
        x1=x1,
        x2=x2,
        mask1=None if m1 is None else m1.bool(),
        mask2=None if m2 is None else m2.bool(),
        pair_id=pair_id or f"seed{seed}",
        seed=int(seed),
        params1=p1,
        params2=p2,
    )
