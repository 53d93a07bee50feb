"""Attention rollout (Abnar and Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

A single-image baseline for Vision Transformers; it explains x1 only and ignores the pair. Each
block mixes tokens by its attention matrix A_l (N x N, rows sum to 1; the heads fused by their mean,
or max/min) and keeps the token itself through the residual connection. Rollout models that as
A'_l = (A_l + I) / 2 (rows renormalised) and follows the mixing through all blocks:
R = A'_L ... A'_2 A'_1. Row i of R says how much of each input token flows into token i at the
top. The map is the row of the pooled token -- the CLS token, or the mean of the patch rows for a
mean-pooled model -- at the patch columns, on the patch grid. It uses attention only: values,
MLPs and the other image play no part, which is why it serves as a baseline, not a pair method.

Not in Sammani, Joukovsky, Deligiannis, "Visualizing and Understanding Contrastive Learning", IEEE
TIP 2023 (arXiv 2206.09753): a Vision Transformer baseline added beside its methods.
"""

from __future__ import annotations

import torch

from ..models.similarity import SimilarityModel
from .base import register_method

HEAD_FUSIONS = ("mean", "max", "min")


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """R = A'_L ... A'_1 with A'_l = rownorm((fuse_heads(A_l) + I) / 2); attentions are B x heads x N x N."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not attentions:
        raise ValueError("attention rollout needs the attention of at least one block")
    flow = None
    for attention in attentions:
        attention = attention.double()
        fused = {"mean": attention.mean(dim=1), "max": attention.amax(dim=1), "min": attention.amin(dim=1)}[head_fusion]
        mixed = (fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)) / 2
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        flow = mixed if flow is None else mixed @ flow
    return flow


@register_method(
    "attention_rollout",
    {"head_fusion": "mean"},
    choices={"head_fusion": HEAD_FUSIONS},
    needs_pair=False,
    vit_only=True,
)
@torch.no_grad()
def attention_rollout(
    model: SimilarityModel,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    head_fusion: str = "mean",
    batch_size: int | None = None,
) -> tuple[torch.Tensor, None]:
    """Attention rollout (Abnar and Zuidema 2020), ViT only: attention flow from the patches to the pooled token.

    Explains x1 alone (x2 is ignored); the map is on the patch grid. `batch_size` is unused.
    """
    rows, cols = model.grid(x1)
    flow = rollout(model.attentions(x1), head_fusion)[0]
    prefix = model.num_prefix_tokens
    readout = flow[0, prefix:] if model.pool == "cls" else flow[prefix:, prefix:].mean(dim=0)
    return readout.float().view(rows, cols), None
