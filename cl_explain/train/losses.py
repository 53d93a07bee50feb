"""The training objectives' losses, and the table from objective name to loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent: each of the 2B embeddings must pick its partner among the other 2B-1 (cosine / T)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    b = len(z1)
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins: cross-correlation of batch-standardised embeddings pushed to the identity."""

    def standardise(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = standardise(z1).T @ standardise(z2) / len(z1)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam: symmetric negative cosine between predictions and stop-gradient projections."""
    return (
        -(F.cosine_similarity(p1, z2.detach(), dim=-1).mean() + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()) / 2
    )


def _simclr(head: nn.Module, pooled: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    return nt_xent(head(pooled[:, 0]), head(pooled[:, 1]), config.temperature)


def _barlow_twins(head: nn.Module, pooled: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    return barlow_twins_loss(head(pooled[:, 0]), head(pooled[:, 1]), config.barlow_lambda)


def _simsiam(head: nn.Module, pooled: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    z1, z2 = head.projector(pooled[:, 0]), head.projector(pooled[:, 1])
    return simsiam_loss(head.predictor(z1), head.predictor(z2), z1, z2)


def _supervised(head: nn.Module, pooled: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    return F.cross_entropy(head(pooled[:, 0]), labels)


#: Objective name -> (number of views per sample, loss of (head, pooled B x V x D features, labels, config)).
OBJECTIVE_LOSSES = {
    "simclr": (2, _simclr),
    "barlow-twins": (2, _barlow_twins),
    "simsiam": (2, _simsiam),
    "supervised": (1, _supervised),
}
