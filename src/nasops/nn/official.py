"""The released AttentiveNAS / AlphaNet supernets: their state dicts in and out of nasops.

Both projects publish ImageNet-trained supernets as checkpoints of the official dynamic model
(AttentiveNAS's ``AttentiveNasDynamicModel``; AlphaNet uses the same model). Its tensors are
nasops's under other names, one to one, plus tensors the official forward never reads: the two
``bn_tracking`` statistics of every dynamic BN, and the residual conv of every block that is not
a stage's first. :func:`load_official` maps a released state dict onto a :class:`Supernet`
(checking every key and shape), :func:`official_state_dict` maps back.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ..utils.files import load_tensors

if TYPE_CHECKING:
    from .supernet import Supernet

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# the official dynamic BN's two spare BatchNorm2d(affine=False): statistics the forward never reads
_TRACKING = ("running_mean", "running_var", "num_batches_tracked")


def _layout(net: Supernet) -> "OrderedDict[str, tuple[str | None, tuple]]":
    """Official key -> (nasops key, or None for a tensor the official forward never reads;
    the tensor's shape), in the official model's order."""
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    out: OrderedDict[str, tuple[str | None, tuple]] = OrderedDict()

    def tensor(official: str, nasops: str) -> None:
        out[official] = (nasops, ours[nasops])

    def conv(official: str, nasops: str) -> None:
        tensor(f"{official}.conv.conv.weight", f"{nasops}.weight")

    def bn(official: str, nasops: str) -> None:
        for name in _BN:
            tensor(f"{official}.bn.bn.{name}", f"{nasops}.{name}")
        channels = ours[f"{nasops}.weight"]
        for i in (0, 1):
            for name in _TRACKING:
                out[f"{official}.bn.bn_tracking.{i}.{name}"] = (
                    None, () if name == "num_batches_tracked" else channels)

    conv("first_conv", "stem")
    bn("first_conv", "stem_bn")
    cfg = net.space.config
    index, prev = 0, cfg["stem"]["width"]
    for s, blocks in enumerate(net.stages):
        width = cfg["stages"][s]["width"]
        for b, block in enumerate(blocks):
            official, nasops = f"blocks.{index}.mobile_inverted_conv", f"stages.{s}.{b}"
            if block.expand is not None:
                conv(f"{official}.inverted_bottleneck", f"{nasops}.expand")
                bn(f"{official}.inverted_bottleneck", f"{nasops}.expand_bn")
            conv(f"{official}.depth_conv", f"{nasops}.depthwise")
            bn(f"{official}.depth_conv", f"{nasops}.depthwise_bn")
            if block.se is not None:
                for part in ("reduce", "expand"):
                    for name in ("weight", "bias"):
                        tensor(f"{official}.depth_conv.se.fc.{part}.{name}", f"{nasops}.se.{part}.{name}")
            conv(f"{official}.point_linear", f"{nasops}.project")
            bn(f"{official}.point_linear", f"{nasops}.project_bn")
            shortcut = f"blocks.{index}.shortcut.conv.conv.weight"
            if block.shortcut is not None:
                tensor(shortcut, f"{nasops}.shortcut.weight")
            else:  # every official block has one; only a width change (never here) uses it
                out[shortcut] = (None, (max(width), max(prev) if b == 0 else max(width), 1, 1))
            index += 1
        prev = width
    conv("last_conv.final_expand_layer", "last_conv")
    bn("last_conv.final_expand_layer", "last_bn")
    conv("last_conv.feature_mix_layer", "head_conv")
    tensor("classifier.linear.linear.weight", "classifier.weight")
    tensor("classifier.linear.linear.bias", "classifier.bias")
    mapped = {v[0] for v in out.values() if v[0] is not None}
    if mapped != set(ours):  # a nasops tensor without an official home: a bug here, not the user's
        raise RuntimeError(f"official layout misses nasops tensors {sorted(set(ours) - mapped)}")
    return out


def _read(source) -> tuple[Mapping, str]:
    """(state dict, description) of a checkpoint path or a state dict."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        loaded, where = load_tensors(path, "PyTorch checkpoint"), path
    elif isinstance(source, Mapping):
        loaded, where = source, "the state dict"
    else:
        raise TypeError(f"source must be a checkpoint path or a state dict, got "
                        f"{type(source).__name__}")
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded or \
            not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{where}: expected a state dict of tensors, or a dict holding one "
                         f"under 'state_dict'")
    if all(k.startswith("module.") for k in loaded):  # saved from DistributedDataParallel
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded, where


def load_official(net: Supernet, source) -> Supernet:
    """Loads the weights and BN statistics of an official AttentiveNAS / AlphaNet supernet into
    ``net`` (a Supernet of the same space) and returns it: ``source`` is a checkpoint path (a dict
    with ``state_dict``, keys possibly prefixed ``module.``) or a state dict. Every official tensor
    is checked: a missing, unexpected or mis-shaped one raises ValueError naming it."""
    space = net.space
    state, where = _read(source)
    layout = _layout(net)
    unexpected = [k for k in state if k not in layout]
    if unexpected:
        raise ValueError(f"{where}: unexpected key(s) for an official {space.name} supernet: "
                         f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    missing = [k for k, (ours, _) in layout.items() if ours is not None and k not in state]
    if missing:
        raise ValueError(f"{where}: missing key(s) of an official {space.name} supernet: "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    ours = {}
    for key, tensor in state.items():
        nasops_key, shape = layout[key]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{where}: {key} has shape {list(tensor.shape)}; an official "
                             f"{space.name} supernet has {list(shape)}")
        if nasops_key is not None:
            ours[nasops_key] = tensor
    net.load_state_dict(ours)
    return net


def official_state_dict(net: Supernet) -> "OrderedDict[str, torch.Tensor]":
    """The supernet's tensors under the official model's names, loadable into it with
    ``load_state_dict``; tensors the official forward never reads are filled fresh (unused
    residual convs with zeros, spare BN statistics at their initial values)."""
    ours = net.state_dict()
    out = OrderedDict()
    for key, (nasops_key, shape) in _layout(net).items():
        if nasops_key is not None:
            out[key] = ours[nasops_key].detach().clone()
        elif key.endswith("running_var"):
            out[key] = torch.ones(shape)
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        else:
            out[key] = torch.zeros(shape)
    return out
