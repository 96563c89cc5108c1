"""Static sub-networks: ordinary Conv2d / BatchNorm2d / Linear modules with weights copied out of
a Supernet (each dynamic part exports itself: ``export`` in nn/layers.py and nn/supernet.py), no
dynamic code, so TorchScript, tracing and ONNX export take them as they are."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StaticMBConv(nn.Module):
    """DynamicMBConv's computation at fixed sizes (built by DynamicMBConv.export)."""

    def __init__(self, expand: nn.Module, depthwise: nn.Module, se: nn.Module, project: nn.Module,
                 shortcut: nn.Module):
        super().__init__()
        self.expand, self.depthwise, self.se, self.project = expand, depthwise, se, project
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.se(self.depthwise(self.expand(x)))) + self.shortcut(x)


class StaticNet(nn.Module):
    """One sub-network as plain modules: stem, blocks, last conv, head conv, classifier (built by
    Supernet.extract)."""

    def __init__(self, resolution: int, stem: nn.Module, blocks: nn.Module, last: nn.Module,
                 head: nn.Module, classifier: nn.Module):
        super().__init__()
        self.resolution = resolution
        self.stem, self.blocks, self.last, self.head = stem, blocks, last, head
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.blocks(self.stem(x)))

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """The head on the last block's output: last conv, pooling, head conv, classifier."""
        h = self.head(F.adaptive_avg_pool2d(self.last(h), 1))
        return self.classifier(torch.flatten(h, 1))
