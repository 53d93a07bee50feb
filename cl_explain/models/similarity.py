"""The model being explained: normalisation + backbone (spatial map) + pooling + head -> embedding."""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SimilarityModel(nn.Module):
    """Wraps a contrastive model so every explainer sees the same interface.

    `backbone` maps a normalised batch Bx3xHxW to a spatial feature map BxDxhxw; the embedding is
    `head(global_average_pool(map))`. Images always enter in [0, 1] pixel space; `normalize` is
    (mean, std) per channel or None (e.g. SimCLRv2, which takes raw pixels). The model stays in
    eval mode (BatchNorm running statistics): calling `.train()` raises.

    The model lives where its modules are: wrapping a backbone and head that already sit on a GPU
    gives a model on that GPU (`device`), and every method moves its inputs there. Modules on
    different devices are refused with an error that names `.to(device)`.
    """

    #: True for Vision Transformers (cl_explain.models.vit), which ViT-only methods require.
    is_vit: bool = False

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        name: str = "model",
    ) -> None:
        super().__init__()
        # Channels-last convolutions run about 1.1-1.5x faster on CPUs (oneDNN) and on GPUs; the
        # layout changes no result beyond float rounding (scripts/benchmark.py measures the speed).
        self.backbone = backbone.to(memory_format=torch.channels_last)
        self.head = head if head is not None else nn.Identity()
        self.name = name
        device = _single_device(
            itertools.chain(
                self.backbone.parameters(), self.backbone.buffers(), self.head.parameters(), self.head.buffers()
            ),
            name,
        )
        mean, std = normalize if normalize is not None else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.normalized = normalize is not None
        # the normalisation constants go where the modules are (cpu for a model without any tensor)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))
        #: True inside `bf16_backbone()`: the backbone runs under bfloat16 autocast, the rest in float32.
        self._bf16_backbone = False
        super().train(False)

    def train(self, mode: bool = True) -> "SimilarityModel":
        if mode:
            raise RuntimeError(
                "SimilarityModel is always evaluated in eval mode; train its backbone and head "
                "modules directly (see cl_explain.train) and wrap them afterwards"
            )
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """The device of the wrapped modules (parameters and buffers); a clear error if they disagree."""
        device = _single_device(itertools.chain(self.parameters(), self.buffers()), self.name)
        return device if device is not None else torch.device("cpu")

    @contextlib.contextmanager
    def bf16_backbone(self, enabled: bool = True) -> Iterator[None]:
        """Inside the block the backbone runs under bfloat16 autocast; its feature map is cast back to
        float32, so pooling, head, cosines and every gradient taken from the features stay float32.

        Use `cl_explain.precision.precision_context`, which also applies the bf16 policy and the
        hardware check; this is the mechanism only. The previous setting is restored on exit.
        """
        previous, self._bf16_backbone = self._bf16_backbone, bool(enabled)
        try:
            yield
        finally:
            self._bf16_backbone = previous

    @property
    def zero_pixel(self) -> torch.Tensor:
        """The pixel-space colour (1x3x1x1) that is zero in model input space: black or the mean."""
        return self.mean

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel space [0, 1] -> model input space."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage spatial feature map BxDxhxw of images in [0, 1]."""
        x = self.preprocess(x).contiguous(memory_format=torch.channels_last)
        if self._bf16_backbone:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                fmap = self.backbone(x)
            fmap = fmap.float()
        else:
            fmap = self.backbone(x)
        if fmap.dim() != 4:
            raise ValueError(
                f"backbone of {self.name!r} must return a spatial map BxDxhxw, got shape {tuple(fmap.shape)}; "
                "cut the network before its global pooling"
            )
        return fmap.contiguous()

    def embed_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global average pooling + head: the embedding whose cosine is explained."""
        return self.head(fmap.mean(dim=(2, 3)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def similarity(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the embeddings (broadcast over the batch)."""
        return F.cosine_similarity(self.embed(x1), self.embed(x2), dim=-1)

    @torch.no_grad()
    def score(self, x1: torch.Tensor, x2: torch.Tensor) -> float:
        """S(x1, x2) for one validated pair, as a Python float."""
        check_image(x1, "x1")
        check_image(x2, "x2")
        return float(cosine(*self.embed_pair(x1.to(self.device), x2.to(self.device))))

    def embed_pair(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(x1), f(x2) as float32, in one forward pass when the two batches have the same shape."""
        if x1.shape == x2.shape:
            e1, e2 = self.embed(torch.cat([x1, x2])).float().split(len(x1))
            return e1, e2
        return self.embed(x1).float(), self.embed(x2).float()

    def fingerprint(self) -> str:
        """sha256 of all parameters and buffers: a cache key for results computed with this model."""
        import hashlib

        digest = hashlib.sha256(self.name.encode())
        for key, value in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def _single_device(tensors: Iterator[torch.Tensor], name: str) -> torch.device | None:
    """The one device all `tensors` live on (None when there are none); mixed devices raise."""
    devices = {tensor.device for tensor in tensors}
    if len(devices) > 1:
        listed = ", ".join(sorted(str(d) for d in devices))
        raise RuntimeError(
            f"the modules of model {name!r} sit on different devices ({listed}); move the whole model to one "
            "device with model.to(device) (or backbone.to(device) and head.to(device) before wrapping them)"
        )
    return next(iter(devices), None)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension (the one formula every method and metric uses)."""
    return F.cosine_similarity(a, b, dim=-1)


@torch.no_grad()
def embed_stream(model: SimilarityModel, count: int, make_batch, batch_size: int) -> torch.Tensor:
    """Embeddings of `count` images built batch by batch by `make_batch(start, stop)`.

    Only one batch of perturbed images exists at a time, so memory is bounded whatever `count` is.
    The batches are as even as possible (65 images at batch_size 64 run as 32 + 33, not 64 + 1: a
    batch of one runs far below the model's throughput).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    batches = -(-count // batch_size)
    bounds = [count * i // batches for i in range(batches + 1)] if count else [0]
    chunks = [model.embed(make_batch(start, stop)).float() for start, stop in zip(bounds, bounds[1:])]
    return torch.cat(chunks) if chunks else torch.empty(0)
