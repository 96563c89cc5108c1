"""One training step of the sandwich rule: the forwards, losses and backwards of the largest,
the smallest and the sampled sub-networks on one batch (the caller averages the gradients over
ranks, clips them and steps the optimizer). Mixed precision is decided here (forward_active)."""
from __future__ import annotations

import numpy as np
import torch

from ..utils import cpu, distributed as dist
from ..utils.cpu import use_channels_last
from .losses import distillation_loss, distillation_weight, smoothed_cross_entropy
from .recipe import loss_options
from ..data import resize_batch
from ..nn import Supernet, frozen_bn_stats
from .strategies import Strategy

# amp key -> autocast dtype of the training forwards ("auto": resolve_amp)
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str, device) -> str:
    """The precision a recipe's `amp` trains in on `device`: "auto" is bf16 on a CUDA GPU that
    has it, and float32 ("none") on CPU, where the nasops kernels are float32 and bf16 autocast
    measured slower than float32 even on a CPU with native bf16 (docs/guides/speed.md). Other
    values as given."""
    if amp != "auto":
        return amp
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "none"


def check_amp(amp: str, device) -> None:
    """ValueError for a reduced precision that `device` only emulates: bf16 or fp16 on a CPU
    without native support (nasops.utils.cpu.native_dtypes), where oneDNN emulates it at a fraction of
    float32's speed. Runs before training."""
    amp = resolve_amp(amp, device)
    if torch.device(device).type != "cpu" or amp not in ("bf16", "fp16") or cpu.native_dtypes()[amp]:
        return
    raise ValueError(f"amp = {amp!r} on this CPU ({cpu.describe()}): it has no native {amp}, so "
                     f"oneDNN emulates it, and emulated {amp} runs matrix products "
                     f"{cpu.EMULATED_SLOWDOWN[amp]}; train with amp=none (float32), or amp=auto, "
                     f"which picks what the device runs natively")


def batch_view(x: torch.Tensor, resolution: int, channels_last: bool | str = "auto"
               ) -> torch.Tensor:
    """Batch x resized to `resolution`, in the memory format `channels_last` asks for."""
    x = resize_batch(x, resolution)
    if use_channels_last(channels_last, x.device):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def forward_active(net: Supernet, x: torch.Tensor, views: dict | None = None, *,
                   channels_last: bool | str = "auto", amp: str = "none") -> torch.Tensor:
    """The active sub-network's logits (float32) on batch x resized to its resolution, in the
    memory format `channels_last` asks for and the mixed precision `amp` (a recipe's keys of
    the same names). `views` (resolution -> batch view) keeps the resized batches of one step:
    each resolution is resized once."""
    resolution = net.active_arch.resolution
    if views is None:
        x = batch_view(x, resolution, channels_last)
    else:
        if resolution not in views:
            views[resolution] = batch_view(x, resolution, channels_last)
        x = views[resolution]
    dtype = AMP_DTYPES[resolve_amp(amp, x.device)]
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        return net(x).float()


def train_step(net: Supernet, cfg: dict, strategy: Strategy, largest, smallest, x, y,
               scaler: torch.amp.GradScaler | None = None):
    """Forward and backward of the sandwich on one batch (gradients accumulate in .grad, scaled
    by `scaler` if given; the caller steps); the distillation is weighted by kd_weight. Returns
    the losses [largest, smallest, mean of sampled] (detached, float64, on x's device,
    distillation unweighted) and the encoded sub-networks trained [N, D].

    Nothing here waits for the device, except the loss-scored strategies (bestup-N-loss,
    worstup-N-loss), whose choice needs their candidates' losses on the host; the sampler's other
    host work runs while the device still computes the previous step's work."""
    world = dist.world_size()
    views = {}  # the batch at each resolution the step uses, resized once
    view = {"channels_last": cfg["channels_last"], "amp": cfg["amp"]}

    @torch.no_grad()
    def batch_losses(candidates):  # mini-batch loss of each candidate, over all ranks
        out = []
        with frozen_bn_stats(net):
            saved = net.dropout, net.drop_connect
            net.dropout = net.drop_connect = 0.0
            try:
                for arch in candidates:
                    net.set_active(arch)
                    logits = forward_active(net, x, views, **view)
                    # the largest's loss, as the published code scores candidates
                    out.append(smoothed_cross_entropy(logits, y, cfg["label_smoothing"]))
            finally:
                net.dropout, net.drop_connect = saved
        return (dist.all_reduce_sum(torch.stack(out)) / world).cpu().numpy()

    kd_weight = distillation_weight(cfg["kd"], cfg["kd_weight"])
    kd_options = loss_options(cfg)
    sampled = strategy.sample(cfg["num_sampled"], batch_losses) if cfg["num_sampled"] else []
    archs = np.stack([largest, smallest, *sampled])
    net.zero_grad(set_to_none=True)
    losses, teacher = [], None
    for i, arch in enumerate(archs):
        net.set_active(arch)
        first = i == 0
        net.dropout = cfg["dropout"] if first else 0.0  # regularise only the largest
        net.drop_connect = cfg["drop_connect"] if first else 0.0
        logits = forward_active(net, x, views, **view)
        if first:
            loss = smoothed_cross_entropy(logits, y, cfg["label_smoothing"])
            teacher = logits.detach()
            weighted = loss
        else:
            loss = distillation_loss(cfg["kd"], logits, teacher, kd_options)
            weighted = kd_weight * loss
        (weighted if scaler is None else scaler.scale(weighted)).backward()
        losses.append(loss.detach())  # (stays on the device: no synchronisation per sub-network)
    sampled_mean = torch.stack(losses[2:]).mean() if len(losses) > 2 else torch.zeros_like(losses[0])
    return torch.stack([losses[0], losses[1], sampled_mean]).double(), archs


def clip_gradients(net: torch.nn.Module, grad_clip: float | None, mode: str = "norm") -> None:
    """Clips the gradients at `grad_clip` (None: not at all) by the whole gradient's norm
    (mode "norm") or by each element's value ("value"): a recipe's grad_clip and
    grad_clip_mode."""
    if grad_clip is not None and mode == "value":
        torch.nn.utils.clip_grad_value_(net.parameters(), grad_clip)
    elif grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
