"""Dynamic layers: each holds the largest weight of its layer and runs any active sub-network
out of a slice of it (leading channels, centred kernel window). Sizes are passed to forward, so
the layers hold no per-architecture state."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import batch_norm_act, dw_conv2d
from ..space.cost import se_width


def channels_last_cpu(x: torch.Tensor) -> bool:
    """Whether x is a channels-last 4-D CPU tensor: what the CPU fast paths are written for."""
    return (x.device.type == "cpu" and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last))


def activation(name: str) -> nn.Module:
    return {"swish": nn.SiLU, "relu": nn.ReLU, "hswish": nn.Hardswish}[name]()


def shortcut_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The residual's pooling in a stride-2 block, as the published network does it: 2x2 average
    pooling with stride 2, padded by 1 (zeros, counted in the average) on an odd-sized axis, so
    the output is ceil(n / 2) like the convs' (AttentiveNAS's dynamic shortcut layer)."""
    if stride == 1:
        return x
    if stride != 2:
        raise ValueError(f"shortcut pooling supports strides 1 and 2, got {stride}")
    return F.avg_pool2d(x, 2, 2, [x.shape[-2] % 2, x.shape[-1] % 2])


class ShortcutPool(nn.Module):
    """shortcut_pool as a module, for static networks (it scripts and exports)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shortcut_pool(x, self.stride)


def _on_meta(cls, *args, **kwargs) -> nn.Module:
    """A module built on the meta device: no time spent initialising what _filled replaces."""
    with torch.device("meta"):
        return cls(*args, **kwargs)


def _filled(module: nn.Module, **tensors: torch.Tensor) -> nn.Module:
    """module with copies of the given tensors as its parameters / buffers of those names."""
    for name, tensor in tensors.items():
        copy = tensor.detach().clone()
        if name in module._parameters:
            setattr(module, name, nn.Parameter(copy))
        else:
            setattr(module, name, copy)
    return module


class DynamicConv2d(nn.Module):
    """A dense k x k convolution (1x1 by default) over the leading in/out channels."""

    def __init__(self, max_in: int, max_out: int, kernel_size: int = 1, stride: int = 1,
                 bias: bool = False):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.weight = nn.Parameter(torch.empty(max_out, max_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def forward(self, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        bias = None if self.bias is None else self.bias[:out_channels]
        if self.kernel_size == 1 and self.stride == 1 and channels_last_cpu(x):
            # A 1x1 convolution of a channels-last tensor is a matrix product of its pixels
            # [N H W, C] (a view) with the weight: one GEMM forward and two backward, with no
            # layout conversions and no per-shape kernels to build (docs/guides/speed.md).
            n, c, h, w = x.shape
            rows = F.linear(x.permute(0, 2, 3, 1).reshape(n * h * w, c),
                            self.weight[:out_channels, :c, 0, 0], bias)
            return rows.view(n, h, w, out_channels).permute(0, 3, 1, 2)
        weight = self.weight[:out_channels, : x.shape[1]]
        return F.conv2d(x, weight, bias, self.stride, self.kernel_size // 2)

    def export(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        """The active slice as a plain Conv2d (copied weights)."""
        conv = _on_meta(nn.Conv2d, in_channels, out_channels, self.kernel_size, self.stride,
                        self.kernel_size // 2, bias=self.bias is not None)
        _filled(conv, weight=self.weight[:out_channels, :in_channels])
        return conv if self.bias is None else _filled(conv, bias=self.bias[:out_channels])


class DynamicDepthwiseConv2d(nn.Module):
    """A depthwise convolution over the leading channels with the centred k x k window of the
    largest kernel, padding k // 2: torch.ops.nasops.dw_conv2d reads it in place (or slice +
    F.conv2d with nasops.ops.set_dw_backend("torch"))."""

    def __init__(self, max_channels: int, max_kernel: int):
        super().__init__()
        self.max_kernel = max_kernel
        self.weight = nn.Parameter(torch.empty(max_channels, 1, max_kernel, max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def active_weight(self, channels: int, kernel_size: int) -> torch.Tensor:
        start = (self.max_kernel - kernel_size) // 2
        return self.weight[:channels, :, start:start + kernel_size, start:start + kernel_size]

    def forward(self, x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
        return dw_conv2d(x, self.weight, kernel_size, stride)

    def export(self, channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
        conv = _on_meta(nn.Conv2d, channels, channels, kernel_size, stride, kernel_size // 2,
                        groups=channels, bias=False)
        return _filled(conv, weight=self.active_weight(channels, kernel_size))


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the leading channels; running statistics are updated in their slice.

    Two switches, set for a whole network with :func:`sync_batchnorm` and :func:`frozen_bn_stats`:
    ``process_group`` makes training-mode statistics those of the batch across all ranks (the
    gradient flows through the reduction), and ``frozen`` uses batch statistics without updating
    the running ones (for scoring candidates)."""

    process_group = None
    frozen = False

    def _statistics(self, x: torch.Tensor):
        """(running_mean, running_var, momentum) for a forward of x; counts the batch when it
        updates the running statistics."""
        c = x.shape[1]
        track = self.training and not self.frozen
        if track:
            self.num_batches_tracked.add_(1)
        # momentum None: cumulative average over batches, as BN re-calibration wants
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked.clamp(min=1))
        running_mean = self.running_mean[:c] if track or not self.training else None
        running_var = self.running_var[:c] if track or not self.training else None
        return running_mean, running_var, momentum

    def forward(self, x: torch.Tensor, act: nn.Module | None = None,
                overwrite: bool = False) -> torch.Tensor:
        """act(batch norm of x) (act None: no activation), fused where it can be
        (ops.batch_norm_act). overwrite=True says that the caller no longer needs x (a conv's
        output, say): without autograd the result may then be computed over x in place."""
        c = x.shape[1]
        running_mean, running_var, momentum = self._statistics(x)
        if self.training and self.process_group is not None:
            y = self._synced(x, running_mean, running_var, momentum)
            return y if act is None else act(y)
        return batch_norm_act(x, self.weight[:c], self.bias[:c], running_mean, running_var,
                              self.training, momentum, self.eps, act, overwrite)

    def export(self, channels: int) -> nn.BatchNorm2d:
        bn = _on_meta(nn.BatchNorm2d, channels, eps=self.eps, momentum=self.momentum)
        c = channels
        return _filled(bn, weight=self.weight[:c], bias=self.bias[:c],
                       running_mean=self.running_mean[:c], running_var=self.running_var[:c],
                       num_batches_tracked=self.num_batches_tracked)

    def _synced(self, x, running_mean, running_var, momentum):
        from ..utils.distributed import differentiable_sum
        c = x.shape[1]
        local = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)),
                           x.new_full((1,), x.numel() / c)])
        total = differentiable_sum(local, self.process_group)
        count = total[-1]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp(min=0)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean)
                running_var.mul_(1 - momentum).add_(momentum * var * count / (count - 1).clamp(min=1))
        scale = self.weight[:c] * torch.rsqrt(var + self.eps)
        shift = self.bias[:c] - mean * scale
        return x * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)


def sync_batchnorm(net: nn.Module, process_group) -> None:
    """Training-mode BN statistics over all ranks of `process_group` (None: local ones)."""
    for m in net.modules():
        if isinstance(m, DynamicBatchNorm2d):
            m.process_group = process_group


@contextlib.contextmanager
def frozen_bn_stats(net: nn.Module):
    """Within the block, training-mode forwards leave the BN running statistics unchanged."""
    norms = [m for m in net.modules() if isinstance(m, DynamicBatchNorm2d)]
    for m in norms:
        m.frozen = True
    try:
        yield
    finally:
        for m in norms:
            m.frozen = False


class DynamicSE(nn.Module):
    """Squeeze-excitation: pool, 1x1 reduce to make_divisible(c // 4), ReLU, 1x1 expand, hard
    sigmoid, scale."""

    def __init__(self, max_channels: int):
        super().__init__()
        max_reduced = se_width(max_channels)
        self.reduce = DynamicConv2d(max_channels, max_reduced, bias=True)
        self.expand = DynamicConv2d(max_reduced, max_channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        s = F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1), se_width(c)))
        return x * F.hardsigmoid(self.expand(s, c))

    def export(self, channels: int) -> nn.Module:
        r = se_width(channels)
        return StaticSE(self.reduce.export(channels, r), self.expand.export(r, channels))


class StaticSE(nn.Module):
    """DynamicSE's computation with plain convs."""

    def __init__(self, reduce: nn.Conv2d, expand: nn.Conv2d):
        super().__init__()
        self.reduce, self.expand = reduce, expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class DynamicLinear(nn.Module):
    def __init__(self, max_in: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, max_in))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)

    def export(self, in_features: int) -> nn.Linear:
        linear = _on_meta(nn.Linear, in_features, self.weight.shape[0])
        return _filled(linear, weight=self.weight[:, :in_features], bias=self.bias)
