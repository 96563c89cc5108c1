"""The few collective operations nasops needs, written so that one process is the world-size-1
case of the same code (every helper is a no-op or an identity there).

Training is data parallel: each rank computes the gradients of the same sub-networks on its
slice of the global batch and :func:`average_gradients` averages them in one flat all-reduce per
optimizer step. (torch's DistributedDataParallel wrapper reduces once per backward and wants to
know the unused parameters; a sandwich step runs several backwards over changing sub-sets of the
weights before one optimizer step, which this does with a single collective.)
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def init_from_env() -> torch.device:
    """Joins the process group that torchrun describes (WORLD_SIZE > 1 in the environment):
    NCCL on GPUs, gloo on CPU. Returns the device this rank computes on."""
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def average_gradients(params) -> None:
    """Replaces each gradient by its mean over the ranks. Parameters without a gradient keep
    none (the ranks train the same sub-networks, so they lack the same ones, and an optimizer
    must skip them as one process would)."""
    if world_size() == 1:
        return
    params = [p for p in params if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The elementwise sum over ranks (a copy; the input is left alone)."""
    out = values.clone()
    if world_size() > 1:
        dist.all_reduce(out)
    return out


class _DifferentiableSum(torch.autograd.Function):
    """Sum over ranks whose gradient is again the sum over ranks: the gradient, with respect to
    one rank's input, of the total of every rank's loss."""

    @staticmethod
    def forward(ctx, values, group):
        ctx.group = group
        out = values.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def differentiable_sum(values: torch.Tensor, group=None) -> torch.Tensor:
    """All-reduce (sum) that autograd can go through (synchronised batch norm uses it)."""
    return _DifferentiableSum.apply(values, group)


def equality_terms(value: int) -> list[float]:
    """Numbers whose sums over ranks tell whether every rank had the same 32-bit `value`
    (all_agree), so the check can ride in an all-reduce that is made anyway: its 16-bit halves
    and their squares (sums exact in float64)."""
    hi, lo = (value >> 16) & 0xFFFF, value & 0xFFFF
    return [float(hi), float(lo), float(hi * hi), float(lo * lo)]


def all_agree(sums, world: int) -> bool:
    """Whether the ranks' equality_terms, summed over `world` ranks, come from one value: for
    each half, (sum v)^2 = world * sum v^2 holds only when every v is the same."""
    hi, lo, hi2, lo2 = (float(v) for v in sums)
    return hi * hi == world * hi2 and lo * lo == world * lo2


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s object, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Every rank leaves the process group together at the end of a command. (A rank that exits
    while still in a gloo group can abort in gloo's threads, "terminate called without an active
    exception", which failed a CI run.)"""
    if initialized():
        dist.barrier()
        dist.destroy_process_group()
