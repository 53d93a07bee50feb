"""SimCLRv2's ResNet (the TF release's architecture, sk0) in the layout of the public PyTorch conversion."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .backbones import StagedBackbone

SIMCLR_EPS = 1e-5


def _bn_relu(channels: int, relu: bool = True) -> nn.Sequential:
    """BatchNorm2d (+ ReLU); the conversion stores the norm at index 0 of this pair."""
    return nn.Sequential(nn.BatchNorm2d(channels, eps=SIMCLR_EPS), nn.ReLU() if relu else nn.Identity())


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)


class _Projection(nn.Module):
    """Shortcut of a stage's first block: strided 1x1 conv + BN (selective kernel 0)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.shortcut = _conv(c_in, c_out, 1, stride)
        self.bn = _bn_relu(c_out, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.shortcut(x))


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (x4 channels) residual block with a post-addition ReLU."""

    def __init__(self, c_in: int, width: int, stride: int, project: bool) -> None:
        super().__init__()
        self.projection = _Projection(c_in, 4 * width, stride) if project else nn.Identity()
        self.net = nn.Sequential(
            _conv(c_in, width, 1),
            _bn_relu(width),
            _conv(width, width, 3, stride),
            _bn_relu(width),
            _conv(width, 4 * width, 1),
            _bn_relu(4 * width, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.projection(x) + self.net(x))


class _Stage(nn.Module):
    def __init__(self, n_blocks: int, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                _Bottleneck(c_in if i == 0 else 4 * width, width, stride if i == 0 else 1, project=i == 0)
                for i in range(n_blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class SimCLRv2ResNet(nn.Module):
    """SimCLRv2's ResNet-50 (selective kernel 0, width multiplier 1 or 2, BN eps 1e-5).

    `net` = [stem, stage1..stage4]; `fc` is the release's supervised linear head (kept so the file
    matches strictly; not part of the explained embedding).
    """

    def __init__(self, width: int = 1, depths: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        stem = nn.Sequential(_conv(3, 64 * width, 7, 2), _bn_relu(64 * width), nn.MaxPool2d(3, stride=2, padding=1))
        stages, c_in = [], 64 * width
        for index, n_blocks in enumerate(depths):
            stage_width = 64 * width * 2**index
            stages.append(_Stage(n_blocks, c_in, stage_width, 1 if index == 0 else 2))
            c_in = 4 * stage_width
        self.net = nn.Sequential(stem, *stages)
        self.fc = nn.Linear(c_in, 1000)
        self.out_channels = c_in

    def staged(self) -> StagedBackbone:
        """The convolutional part as named stages (shares modules with this network)."""
        names = ["stem", "layer1", "layer2", "layer3", "layer4"]
        return StagedBackbone(OrderedDict(zip(names, self.net)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))


class WrappedHead(nn.Module):
    """A Sequential stored under the attribute name `layers` (the head's key prefix in the file)."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
