"""Token occlusion: the occlusion family (M1, M2) for Vision Transformers, dropping patch tokens.

Pixel occlusion paints a window with a constant colour, making an image unlike any the model was
trained on: the similarity drop mixes "this content is gone" with "this flat square is strange".
A ViT can instead run on a subset of its patch tokens. Removing the tokens under a window (after
their position embeddings are added, so the others keep their positions) deletes that content
without painting anything in its place: no pixel distribution shift. Windows are squares of
`window` x `window` patches slid by `stride` patches over the patch grid, row-major; the map has one
value per window position, like the pixel occlusion map.

* variant="conditional" (as M1): S(x1, x2) minus the similarity when the window's tokens of one
  image are removed, the other image intact.
* variant="context_agnostic" (as M2): cos(f(window's tokens only) - f(window's tokens removed), f(other)),
  min-max normalised.

The prefix tokens (CLS, registers) are always kept.

Not in the paper: a Vision Transformer counterpart of the conditional and context-agnostic occlusion
of F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Contrastive Learning",
IEEE TIP 2023 (arXiv 2206.09753).
"""

from __future__ import annotations

import torch

from ..models.similarity import SimilarityModel, cosine
from .base import register_method
from ..maps import minmax
from .occlusion import OcclusionGrid, check_window

VARIANTS = ("conditional", "context_agnostic")
#: Default window: the share of the image side that the pixel occlusion's 64 px window covers at 224 px.
WINDOW_SHARE = 64 / 224


def token_grid(rows: int, cols: int, window: int | None, stride: int) -> OcclusionGrid:
    """Windows over a rows x cols patch grid, sizes in patches (window=None: 2/7 of the shorter side)."""
    if window is None:
        window = max(1, round(WINDOW_SHARE * min(rows, cols)))
    check_window(
        window,
        stride,
        (rows, cols),
        "token occlusion",
        "patches",
        f"the {rows} x {cols} patch grid",
        "or window=None for 2/7 of the grid side",
    )
    if window * window == rows * cols:
        raise ValueError(
            f"a {window} x {window} window removes every patch of the {rows} x {cols} grid; pass a smaller window"
        )
    return OcclusionGrid(rows, cols, window, stride)


def kept_patches(grid: OcclusionGrid, start: int, stop: int, inside: bool) -> torch.Tensor:
    """Row-major patch indices kept for windows start..stop-1: (stop-start) x K, the window's or the rest."""
    masks = grid.masks(start, stop)[:, 0].flatten(1)
    chosen = masks if inside else ~masks
    return chosen.nonzero()[:, 1].view(stop - start, -1)


def embed_without_windows(
    model: SimilarityModel, x: torch.Tensor, grid: OcclusionGrid, batch_size: int, *, keep_window: bool = False
) -> torch.Tensor:
    """Embeddings (len(grid) x D) of `x` with each window's patch tokens removed (or only those kept)."""
    chunks = []
    for start in range(0, len(grid), batch_size):
        stop = min(len(grid), start + batch_size)
        chunks.append(model.embed_kept(x, kept_patches(grid, start, stop, keep_window)).float())
    return torch.cat(chunks)


@register_method(
    "token_occlusion",
    {"window": None, "stride": 1, "variant": "conditional"},
    choices={"variant": VARIANTS},
    sensitivity=False,
    vit_only=True,
)
@torch.no_grad()
def token_occlusion(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    *,
    window: int | None,
    stride: int,
    variant: str,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token occlusion (ViT): M1/M2 with the window's patch tokens removed instead of painted (sizes in patches).

    window=None: 2/7 of the shorter side of the patch grid (the pixel window's share at 224 px).
    """
    f1, f2 = model.embed_pair(x1, x2)
    base = cosine(f1, f2)
    maps = []
    for x, other in ((x1, f2), (x2, f1)):
        grid = token_grid(*model.grid(x), window, stride)
        removed = embed_without_windows(model, x, grid, batch_size)
        if variant == "conditional":
            maps.append((base - cosine(removed, other)).view(grid.shape))
        else:
            alone = embed_without_windows(model, x, grid, batch_size, keep_window=True)
            maps.append(minmax(cosine(alone - removed, other).view(grid.shape), constant=0.0))
    return maps[0], maps[1]
