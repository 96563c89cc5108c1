"""The weight-sharing supernet of a SearchSpace and its static sub-networks (docs/DESIGN.md)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..space import Arch, SearchSpace
from ..space.cost import hidden_width
from .layers import (DynamicBatchNorm2d, DynamicConv2d, DynamicDepthwiseConv2d, DynamicLinear,
                     DynamicSE, ShortcutPool, activation, shortcut_pool)
from .official import load_official
from .static import StaticMBConv, StaticNet
from ..utils.checks import is_number


def _check_rate(name: str, rate) -> float:
    if not is_number(rate) or not 0 <= rate < 1:
        raise ValueError(f"{name} = {rate!r} must be a number in [0, 1)")
    return float(rate)


class DynamicMBConv(nn.Module):
    """MBConv, the block of every stage: 1x1 expand (absent at ratio 1), depthwise k x k with the
    stride, optional SE, 1x1 project, BN after each conv; residual: identity, or average pooling
    for the stride and a 1x1 conv when the width changes.

    Its widths and cost follow :mod:`nasops.space.cost`; this class is the block's forward pass
    and its static export (:meth:`export`)."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int, max_expand: int, stride: int,
                 se: bool, act: str, has_shortcut_conv: bool):
        super().__init__()
        self.stride = stride
        max_hidden = hidden_width(max_in, max_expand)
        self.expand = DynamicConv2d(max_in, max_hidden) if max_expand > 1 else None
        self.expand_bn = DynamicBatchNorm2d(max_hidden) if max_expand > 1 else None
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
        h = x
        if expand_ratio != 1:
            h = self.expand(h, hidden_width(c_in, expand_ratio))
            h = self.expand_bn(h, self.act, overwrite=True)
        h = self.depthwise_bn(self.depthwise(h, kernel_size, self.stride), self.act, overwrite=True)
        if self.se is not None:
            h = self.se(h)
        h = self.project_bn(self.project(h, out_channels), overwrite=True)
        identity = self.stride == 1 and c_in == out_channels
        # as published: never on a block whose residual pools or projects
        if self.training and drop_connect > 0 and identity:
            keep = torch.rand(h.shape[0], 1, 1, 1, device=h.device) >= drop_connect
            h = h * (keep / (1 - drop_connect)).to(h.dtype)  # (one pass: the scale is per image)
        if identity:
            return h + x
        res = shortcut_pool(x, self.stride)
        if c_in != out_channels:
            assert self.shortcut is not None, "width change in a block without a shortcut conv"
            res = self.shortcut(res, out_channels)
        return h + res

    def export(self, c_in: int, c_out: int, kernel_size: int, expand_ratio: int) -> nn.Module:
        """The block at these sizes as plain modules with copied weights and BN statistics."""
        hidden = hidden_width(c_in, expand_ratio)
        expand = nn.Identity()
        if expand_ratio != 1:
            expand = nn.Sequential(self.expand.export(c_in, hidden), self.expand_bn.export(hidden),
                                   type(self.act)())
        depthwise = nn.Sequential(self.depthwise.export(hidden, kernel_size, self.stride),
                                  self.depthwise_bn.export(hidden), type(self.act)())
        se = self.se.export(hidden) if self.se is not None else nn.Identity()
        project = nn.Sequential(self.project.export(hidden, c_out), self.project_bn.export(c_out))
        shortcut = [ShortcutPool(self.stride)] if self.stride > 1 else []
        if c_in != c_out:
            shortcut.append(self.shortcut.export(c_in, c_out))
        return StaticMBConv(expand, depthwise, se, project,
                            nn.Sequential(*shortcut) if shortcut else nn.Identity())


class Supernet(nn.Module):
    """All sub-networks of a SearchSpace in one set of shared weights.

    ``net.set_active(arch)`` picks the sub-network that ``forward`` runs; the caller resizes its
    batch to ``arch.resolution`` (see :func:`nasops.resize_batch`). The stem and the head are
    defined here (forward, :meth:`extract`), the blocks in :class:`DynamicMBConv`; the cost of
    each part in :mod:`nasops.space.cost`."""

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
                    stage["act"], has_shortcut_conv=first and (len(prev) > 1 or prev != width)))
            self.stages.append(blocks)
            prev = width
        # each block's index among all blocks of the supernet at maximum depth (drop-connect)
        depths = [len(blocks) for blocks in self.stages]
        self._first_index = np.cumsum([0] + depths[:-1]).tolist()
        self._total_blocks = sum(depths)
        max_in = max(prev)
        head = cfg["head"]
        self.head_expand_ratio = head["expand_ratio"]
        self.last_conv = DynamicConv2d(max_in, head["expand_ratio"] * max_in)
        self.last_bn = DynamicBatchNorm2d(head["expand_ratio"] * max_in)
        self.head_conv = DynamicConv2d(head["expand_ratio"] * max_in, max(head["width"]))
        self.head_act = activation(head["act"])
        self.classifier = DynamicLinear(max(head["width"]), cfg["num_classes"])
        self.set_active(space.max_arch())

    @classmethod
    def from_official(cls, source, space: SearchSpace | str = "attentive_nas") -> "Supernet":
        """A released AttentiveNAS / AlphaNet supernet (checkpoint path or state dict of the
        official dynamic model) as a Supernet: see :func:`nasops.nn.official.load_official`."""
        if not isinstance(space, SearchSpace):
            space = SearchSpace.load(space)
        return load_official(cls(space), source)

    @property
    def dropout(self) -> float:
        """Dropout rate before the classifier (training mode only)."""
        return self._dropout

    @dropout.setter
    def dropout(self, rate: float) -> None:
        self._dropout = _check_rate("dropout", rate)

    @property
    def drop_connect(self) -> float:
        """Drop-connect rate (training mode only), as AttentiveNAS publishes it: in the last two
        stages only, block i of the supernet's n blocks (counted at maximum depth) gets
        ``drop_connect * i / n``; blocks whose residual pools or projects get none."""
        return self._drop_connect

    @drop_connect.setter
    def drop_connect(self, rate: float) -> None:
        self._drop_connect = _check_rate("drop_connect", rate)

    def drop_connect_rate(self, stage: int, block: int) -> float:
        """The rate of block `block` of stage `stage` (before the residual check)."""
        if stage < len(self.stages) - 2:
            return 0.0
        return self.drop_connect * (self._first_index[stage] + block) / self._total_blocks

    @torch.no_grad()
    def zero_init_residual_(self) -> "Supernet":
        """Zeroes the scale (gamma) of every block's last BN, so that each block starts as its
        residual path: the published models' initialisation for training from scratch."""
        for blocks in self.stages:
            for block in blocks:
                block.project_bn.weight.zero_()
        return self

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
        if arch is not None:
            self.set_active(arch)
        a = self._active
        act = lambda module: type(module)()  # noqa: E731  (a fresh activation of that kind)
        stem = nn.Sequential(self.stem.export(self.space.in_channels, a.width[0]),
                             self.stem_bn.export(a.width[0]), act(self.stem_act))
        blocks, c_in = [], a.width[0]
        for s, stage_blocks in enumerate(self.stages):
            for b in range(a.depth[s]):
                blocks.append(stage_blocks[b].export(c_in, a.width[s + 1], a.kernel_size[s],
                                                     a.expand_ratio[s]))
                c_in = a.width[s + 1]
        wide = self.head_expand_ratio * c_in
        last = nn.Sequential(self.last_conv.export(c_in, wide), self.last_bn.export(wide),
                             act(self.head_act))
        head = nn.Sequential(self.head_conv.export(wide, a.width[-1]), act(self.head_act))
        return StaticNet(a.resolution, stem, nn.Sequential(*blocks), last, head,
                         self.classifier.export(a.width[-1])).train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._active
        expected = (self.space.in_channels, a.resolution, a.resolution)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"input of shape {list(x.shape)} does not fit the active "
                             f"sub-network: expected [N, {', '.join(map(str, expected))}] "
                             f"(resize the batch with nasops.resize_batch)")
        h = self.stem_bn(self.stem(x, a.width[0]), self.stem_act, overwrite=True)
        for s, blocks in enumerate(self.stages):
            for b in range(a.depth[s]):
                h = blocks[b](h, a.width[s + 1], a.kernel_size[s], a.expand_ratio[s],
                              self.drop_connect_rate(s, b))
        c = h.shape[1]
        h = self.last_conv(h, self.head_expand_ratio * c)
        h = self.last_bn(h, self.head_act, overwrite=True)
        h = F.adaptive_avg_pool2d(h, 1)
        h = self.head_act(self.head_conv(h, a.width[-1])).flatten(1)
        if self.training and self.dropout > 0:
            h = F.dropout(h, self.dropout)
        return self.classifier(h)
