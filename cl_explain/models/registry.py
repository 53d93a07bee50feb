"""One place that maps model names to loaders: the paper's checkpoints, the DINO/DINOv2 ViTs, the embedded default."""

from __future__ import annotations

import os

import torch

from .similarity import SimilarityModel


def list_models() -> dict[str, str]:
    """Model names -> one-line descriptions (paper checkpoints and ViTs need a file; embedded ones ship here)."""
    from .embedded import EMBEDDED_MODELS
    from .paper import PAPER_MODELS
    from .vit_checkpoints import VIT_MODELS

    return {
        **{name: entry.description for name, entry in PAPER_MODELS.items()},
        **{name: entry.description for name, entry in VIT_MODELS.items()},
        **{name: entry.description for name, entry in EMBEDDED_MODELS.items()},
    }


def load_model(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    sha256: str | None = None,
    device: str | torch.device | None = None,
    **options,
) -> SimilarityModel:
    """Load a model by name as a SimilarityModel in eval mode; nothing is ever downloaded.

    Paper models (`simclr-v2-r50-1x`, ...) and ViTs (`dino-vits16`, `dinov2-vitb14`, ...) need
    `checkpoint=` the file you downloaded; the embedded models load from data/models by name.
    `sha256` verifies the file first. ViTs take `block=` (the feature map is the patch tokens
    entering that block; default -1, the last) and `pool=` ("cls" or "mean").
    """
    from .embedded import EMBEDDED_MODELS, load_embedded
    from .paper import PAPER_MODELS
    from .vit_checkpoints import VIT_MODELS

    if name in PAPER_MODELS:
        model = PAPER_MODELS[name].load(checkpoint, sha256=sha256, **options)
    elif name in VIT_MODELS:
        model = VIT_MODELS[name].load(checkpoint, sha256=sha256, **options)
    elif name in EMBEDDED_MODELS:
        model = load_embedded(name, checkpoint=checkpoint, sha256=sha256, **options)
    else:
        available = ", ".join(sorted(list_models()))
        raise ValueError(f"unknown model {name!r}; available models: {available}")
    if device is not None:
        model = model.to(device)
    return model.eval()
