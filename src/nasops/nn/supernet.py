"""The weight-sharing supernet of a SearchSpace and its static sub-networks (docs/DESIGN.md)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..space import Arch, SearchSpace
from .layers import (DynamicBatchNorm2d, DynamicConv2d, DynamicDepthwiseConv2d, DynamicLinear,
                     DynamicSE, activation, make_divisible)


def _check_rate(name: str, rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"{name} = {rate!r} must be a number in [0, 1)")
    return float(rate)


class DynamicMBConv(nn.Module):
    """MBConv: 1x1 expand (absent at ratio 1), depthwise k x k with the stride, optional SE, 1x1
    project, BN after each conv; residual: identity, or average pooling for the stride and a 1x1
    conv when the width changes."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int, max_expand: int, stride: int,
                 se: bool, act: str, has_expand: bool, has_shortcut_conv: bool):
        super().__init__()
        self.stride = stride
        max_hidden = make_divisible(max_in * max_expand)
        self.expand = DynamicConv2d(max_in, max_hidden) if has_expand else None
        self.expand_bn = DynamicBatchNorm2d(max_hidden) if has_expand else None
        self.depthwise = DynamicDepthwiseConv2d(max_hidden, max_kernel)
        self.depthwise_bn = DynamicBatchNorm2d(max_hidden)
        self.se = DynamicSE(max_hidden) if se else None
        self.project = DynamicConv2d(max_hidden, max_out)
        self.project_bn = DynamicBatchNorm2d(max_out)
        # only a stage's first block can change the width, and only it holds the residual conv
        self.shortcut = DynamicConv2d(max_in, max_out) if has_shortcut_conv else None
        self.act = activation(act)

    def forward(self, x, out_channels: int, kernel_size: int, expand_ratio: int,
                drop_connect: float = 0.0):
        c_in = x.shape[1]
        hidden = make_divisible(c_in * expand_ratio)
        h = x
        if expand_ratio != 1:
            h = self.act(self.expand_bn(self.expand(h, hidden)))
        h = self.act(self.depthwise_bn(self.depthwise(h, kernel_size, self.stride)))
        if self.se is not None:
            h = self.se(h)
        h = self.project_bn(self.project(h, out_channels))
        if self.training and drop_connect > 0:
            keep = torch.rand(h.shape[0], 1, 1, 1, device=h.device) >= drop_connect
            h = h * keep / (1 - drop_connect)
        res = x
        if self.stride > 1:
            res = F.avg_pool2d(res, self.stride, self.stride, ceil_mode=True)
        if c_in != out_channels:
            assert self.shortcut is not None, "width change in a block without a shortcut conv"
            res = self.shortcut(res, out_channels)
        return h + res


class Supernet(nn.Module):
    """All sub-networks of a SearchSpace in one set of shared weights.

    ``net.set_active(arch)`` picks the sub-network that ``forward`` runs; the caller resizes its
    batch to ``arch.resolution`` (see :func:`nasops.resize_batch`)."""

    def __init__(self, space: SearchSpace, num_classes: int | None = None, dropout: float = 0.0,
                 drop_connect: float = 0.0):
        super().__init__()
        if num_classes is not None and num_classes != space.num_classes:
            space = SearchSpace(dict(space.config, num_classes=num_classes), space.name)
        self.space = space
        cfg = space.config
        self.dropout, self.drop_connect = dropout, drop_connect
        stem = cfg["stem"]
        self.stem = DynamicConv2d(cfg["in_channels"], max(stem["width"]), stem["kernel_size"],
                                  stem["stride"])
        self.stem_bn = DynamicBatchNorm2d(max(stem["width"]))
        self.stem_act = activation(stem["act"])
        self.stages = nn.ModuleList()
        prev = stem["width"]
        for stage in cfg["stages"]:
            blocks = nn.ModuleList()
            width = stage["width"]
            for b in range(max(stage["depth"])):
                first = b == 0
                blocks.append(DynamicMBConv(
                    max(prev) if first else max(width), max(width), max(stage["kernel_size"]),
                    max(stage["expand_ratio"]), stage["stride"] if first else 1, stage["se"],
                    stage["act"], has_expand=max(stage["expand_ratio"]) > 1,
                    has_shortcut_conv=first and (len(prev) > 1 or prev != width)))
            self.stages.append(blocks)
            prev = width
        max_in = max(prev)
        head = cfg["head"]
        self.head_expand_ratio = head["expand_ratio"]
        self.last_conv = DynamicConv2d(max_in, head["expand_ratio"] * max_in)
        self.last_bn = DynamicBatchNorm2d(head["expand_ratio"] * max_in)
        self.head_conv = DynamicConv2d(head["expand_ratio"] * max_in, max(head["width"]), bias=True)
        self.head_act = activation(head["act"])
        self.classifier = DynamicLinear(max(head["width"]), cfg["num_classes"])
        self.set_active(space.max_arch())

    @property
    def dropout(self) -> float:
        """Dropout rate before the classifier (training mode only)."""
        return self._dropout

    @dropout.setter
    def dropout(self, rate: float) -> None:
        self._dropout = _check_rate("dropout", rate)

    @property
    def drop_connect(self) -> float:
        """Drop-connect rate of the last block; earlier blocks get linearly less (training only)."""
        return self._drop_connect

    @drop_connect.setter
    def drop_connect(self, rate: float) -> None:
        self._drop_connect = _check_rate("drop_connect", rate)

    def set_active(self, arch) -> None:
        """Arch, dict, or flat int vector; validated against the space."""
        if not isinstance(arch, (Arch, Mapping)):
            arch = self.space.decode(np.asarray(arch))
        self._active = self.space.validate(arch)

    @property
    def active_arch(self) -> Arch:
        return Arch.from_dict(self._active.to_dict())

    def extract(self, arch=None) -> nn.Module:
        """The sub-network (default: the active one) as a plain static module with copied
        weights and BN statistics; same outputs as the supernet in eval mode."""
        from .static import StaticNet
        if arch is not None:
            self.set_active(arch)
        return StaticNet(self, self._active).train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._active
        expected = (self.space.in_channels, a.resolution, a.resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"input of shape {list(x.shape)} does not fit the active "
                             f"sub-network: expected [N, {', '.join(map(str, expected))}] "
                             f"(resize the batch with nasops.resize_batch)")
        h = self.stem_act(self.stem_bn(self.stem(x, a.width[0])))
        n_blocks = sum(a.depth)
        done = 0
        for s, blocks in enumerate(self.stages):
            for b in range(a.depth[s]):
                rate = self.drop_connect * done / n_blocks
                h = blocks[b](h, a.width[s + 1], a.kernel_size[s], a.expand_ratio[s], rate)
                done += 1
        c = h.shape[1]
        h = self.head_act(self.last_bn(self.last_conv(h, self.head_expand_ratio * c)))
        h = F.adaptive_avg_pool2d(h, 1)
        h = self.head_act(self.head_conv(h, a.width[-1])).flatten(1)
        if self.training and self.dropout > 0:
            h = F.dropout(h, self.dropout)
        return self.classifier(h)


def resize_batch(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """A batch resized to resolution x resolution (bicubic, as the paper does)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False)
