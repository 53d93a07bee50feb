"""Backbones as named stages, so methods can cut a network at a given depth (feature inversion, M10/M11)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class StagedBackbone(nn.Module):
    """A CNN run as ordered named stages ("stem", "layer1", ..., "layer4"); returns the last spatial map.

    Stages share their modules with the network they came from, so weights loaded into a torchvision
    ResNet are the weights used here.
    """

    def __init__(self, stages: "OrderedDict[str, nn.Module] | dict[str, nn.Module]") -> None:
        super().__init__()
        self.stages = nn.ModuleDict(stages)

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def forward(self, x: torch.Tensor, until: str | None = None) -> torch.Tensor:
        if until is not None and until not in self.stages:
            raise ValueError(f"unknown stage {until!r}; stages are {self.stage_names}")
        for name, stage in self.stages.items():
            x = stage(x)
            if name == until:
                break
        return x

    def truncated(self, until: str) -> nn.Module:
        """A module computing the backbone up to and including stage `until`."""
        if until not in self.stages:
            raise ValueError(f"unknown stage {until!r}; stages are {self.stage_names}")
        keep = OrderedDict()
        for name, stage in self.stages.items():
            keep[name] = stage
            if name == until:
                break
        return nn.Sequential(keep)

    @classmethod
    def from_torchvision_resnet(cls, resnet: nn.Module) -> "StagedBackbone":
        """Stages of a torchvision-style ResNet (conv1, bn1, relu, maxpool, layer1..layer4); fc/avgpool dropped."""
        stem = nn.Sequential(OrderedDict(conv1=resnet.conv1, bn1=resnet.bn1, relu=resnet.relu, maxpool=resnet.maxpool))
        return cls(OrderedDict(stem=stem, **{f"layer{i}": getattr(resnet, f"layer{i}") for i in range(1, 5)}))
