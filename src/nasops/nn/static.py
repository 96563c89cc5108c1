"""Static sub-networks: ordinary Conv2d / BatchNorm2d / Linear modules with weights copied out of
a Supernet, no dynamic code, so TorchScript, tracing and ONNX export take them as they are."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DynamicBatchNorm2d, DynamicConv2d, make_divisible


def _new(cls, *args, **kwargs) -> nn.Module:
    """A module built on the meta device: no time spent initialising what _take replaces."""
    with torch.device("meta"):
        return cls(*args, **kwargs)


def _take(module: nn.Module, **tensors: torch.Tensor) -> nn.Module:
    """Gives module copies of the given tensors as its parameters / buffers of those names."""
    for name, tensor in tensors.items():
        copy = tensor.detach().clone()
        if name in module._parameters:
            setattr(module, name, nn.Parameter(copy))
        else:
            setattr(module, name, copy)
    return module


def _conv(dyn: DynamicConv2d, c_in: int, c_out: int) -> nn.Conv2d:
    conv = _new(nn.Conv2d, c_in, c_out, dyn.kernel_size, dyn.stride, dyn.kernel_size // 2,
                bias=dyn.bias is not None)
    _take(conv, weight=dyn.weight[:c_out, :c_in])
    return conv if dyn.bias is None else _take(conv, bias=dyn.bias[:c_out])


def _bn(dyn: DynamicBatchNorm2d, c: int) -> nn.BatchNorm2d:
    bn = _new(nn.BatchNorm2d, c, eps=dyn.eps, momentum=dyn.momentum)
    return _take(bn, weight=dyn.weight[:c], bias=dyn.bias[:c], running_mean=dyn.running_mean[:c],
                 running_var=dyn.running_var[:c], num_batches_tracked=dyn.num_batches_tracked)


class StaticSE(nn.Module):
    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d):
        super().__init__()
        self.reduce, self.expand = reduce, expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))
        return x * F.hardsigmoid(self.expand(s))


class StaticMBConv(nn.Module):
    def __init__(self, block, c_in: int, c_out: int, kernel: int, expand_ratio: int):
        super().__init__()
        hidden = make_divisible(c_in * expand_ratio)
        act = block.act
        if expand_ratio != 1:
            self.expand = nn.Sequential(_conv(block.expand, c_in, hidden),
                                        _bn(block.expand_bn, hidden), activation_like(act))
        else:
            self.expand = nn.Identity()
        dw = _new(nn.Conv2d, hidden, hidden, kernel, block.stride, kernel // 2, groups=hidden,
                  bias=False)
        _take(dw, weight=block.depthwise.active_weight(hidden, kernel))
        self.depthwise = nn.Sequential(dw, _bn(block.depthwise_bn, hidden), activation_like(act))
        if block.se is not None:
            reduced = make_divisible(hidden // 4)
            self.se = StaticSE(_conv(block.se.reduce, hidden, reduced),
                               _conv(block.se.expand, reduced, hidden))
        else:
            self.se = nn.Identity()
        self.project = nn.Sequential(_conv(block.project, hidden, c_out), _bn(block.project_bn, c_out))
        shortcut = []
        if block.stride > 1:
            shortcut.append(nn.AvgPool2d(block.stride, block.stride, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(_conv(block.shortcut, c_in, c_out))
        self.shortcut = nn.Sequential(*shortcut) if shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.se(self.depthwise(self.expand(x)))) + self.shortcut(x)


def activation_like(module: nn.Module) -> nn.Module:
    return type(module)()


class StaticNet(nn.Module):
    """One sub-network as plain modules: stem, blocks, head, classifier."""

    def __init__(self, net, arch):
        super().__init__()
        a = arch
        self.resolution = a.resolution
        self.stem = nn.Sequential(_conv(net.stem, net.space.in_channels, a.width[0]),
                                  _bn(net.stem_bn, a.width[0]), activation_like(net.stem_act))
        blocks = []
        c_in = a.width[0]
        for s, stage_blocks in enumerate(net.stages):
            for b in range(a.depth[s]):
                blocks.append(StaticMBConv(stage_blocks[b], c_in, a.width[s + 1],
                                           a.kernel_size[s], a.expand_ratio[s]))
                c_in = a.width[s + 1]
        self.blocks = nn.Sequential(*blocks)
        wide = net.head_expand_ratio * c_in
        self.last = nn.Sequential(_conv(net.last_conv, c_in, wide), _bn(net.last_bn, wide),
                                  activation_like(net.head_act))
        self.head = nn.Sequential(_conv(net.head_conv, wide, a.width[-1]), activation_like(net.head_act))
        self.classifier = _take(_new(nn.Linear, a.width[-1], net.classifier.weight.shape[0]),
                                weight=net.classifier.weight[:, : a.width[-1]],
                                bias=net.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.last(self.blocks(self.stem(x)))
        h = self.head(F.adaptive_avg_pool2d(h, 1))
        return self.classifier(torch.flatten(h, 1))
