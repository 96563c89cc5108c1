"""BN re-calibration: re-estimate running statistics of the active sub-network before evaluation,
as a cumulative average over the given batches (AttentiveNAS does this before every evaluation)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def calibrate_bn(net: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimates the BN statistics that the active sub-network uses (the leading channels of
    each BN it runs) and leaves every other buffer, parameter, flag and rate as it was. Works on a
    Supernet and on an extracted network. Returns the number of batches used."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(),
                 m.momentum) for m in norms}
    used = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: used.__setitem__(m, args[0].shape[1]))
             for m in norms]
    modes = {m: m.training for m in net.modules()}
    rates = {name: getattr(net, name) for name in ("dropout", "drop_connect") if hasattr(net, name)}
    count = 0
    try:
        for m in norms:
            m.running_mean.zero_()
            m.running_var.fill_(1)
            m.num_batches_tracked.zero_()
            m.momentum = None  # cumulative average
        for name in rates:
            setattr(net, name, 0.0)
        net.train()
        for x in batches:
            net(x)
            count += 1
        if count == 0:
            raise ValueError("calibrate_bn got no batches")
    finally:
        for h in hooks:
            h.remove()
        for m, (mean, var, tracked, momentum) in saved.items():
            c = used.get(m, 0) if count else 0
            m.running_mean[c:] = mean[c:]
            m.running_var[c:] = var[c:]
            m.num_batches_tracked.copy_(tracked)
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
        for name, value in rates.items():
            setattr(net, name, value)
    return count


@contextlib.contextmanager
def preserved_bn_stats(net: nn.Module):
    """On leaving the block, every BN running statistic is as on entering it, whatever ran
    inside (an evaluation's re-calibration during training, say)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    try:
        yield
    finally:
        for m, (mean, var, tracked) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
