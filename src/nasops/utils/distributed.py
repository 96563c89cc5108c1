"""The few collective operations nasops needs, written so that one process is the world-size-1
case of the same code (every helper is a no-op or an identity there).

Training is data parallel: each rank computes the gradients of the same sub-networks on its
slice of the global batch and :func:`average_gradients` averages them in one flat all-reduce per
optimizer step. (torch's DistributedDataParallel wrapper reduces once per backward and wants to
know the unused parameters; a sandwich step runs several backwards over changing sub-sets of the
weights before one optimizer step, which this does with a single collective.)
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re

import torch
import torch.distributed as dist

# How long a rank waits in a collective for the others before it stops with RankLost (a rank
# that dies is noticed at once; one that is stuck, only after this). Rank 0 alone writes
# checkpoints while the others wait, so it must exceed that.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("NASOPS_COLLECTIVE_TIMEOUT_S", "600"))


class RankLost(RuntimeError):
    """A collective failed or timed out: another rank stopped (killed, crashed) or is stuck."""


@contextlib.contextmanager
def _collective(what: str):
    try:
        yield
    except RankLost:
        raise
    except RuntimeError as e:  # (gloo and NCCL report a lost peer or a timeout as RuntimeError)
        # (the backend's first sentence, without its source location: "Read error ...:
        # Connection reset by peer")
        first = re.sub(r"^\[[^\]]*\]\s*", "", (str(e).strip().splitlines() or [""])[0])
        first = first.split(". ")[0][:200] or type(e).__name__
        raise RankLost(f"rank {rank()}: {what} failed ({first}): another rank has stopped or is "
                       f"stuck, see its log (under torchrun --max-restarts, train with "
                       f"--auto-resume to continue from the last checkpoint)") from None


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
        timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        with _collective("joining the process group"):
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout,
                                    **_attempt_store(timeout))
    return device


def _attempt_store(timeout) -> dict:
    """Under torchrun, the rendezvous store with a prefix of its own for each restart attempt.
    torchrun keeps one store across restarts; without the prefix, the restarted ranks read the
    killed ranks' gloo addresses and fail to connect ("Connection refused") or hang. (Seen
    with torch 2.13.0 on CPU: without the prefix 10 of 15 restarts failed, with it 0 of 13;
    python_tests/test_train.py::test_a_rank_killed_under_torchrun_restarts_and_resumes.)"""
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ or "MASTER_ADDR" not in os.environ:
        return {}
    me = int(os.environ["RANK"])
    hosted_by_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=not hosted_by_agent and me == 0, timeout=timeout)
    prefix = f"nasops/attempt-{os.environ['TORCHELASTIC_RESTART_COUNT']}"
    return {"store": dist.PrefixStore(prefix, store), "rank": me,
            "world_size": int(os.environ["WORLD_SIZE"])}


def average_gradients(params) -> None:
    """Replaces each gradient by its mean over the ranks. Parameters without a gradient keep
    none (the ranks train the same sub-networks, so they lack the same ones, and an optimizer
    must skip them as one process would)."""
    if world_size() == 1:
        return
    params = [p for p in params if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    with _collective("averaging the gradients"):
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
        with _collective("an all-reduce"):
            dist.all_reduce(out)
    return out


class _DifferentiableSum(torch.autograd.Function):
    """Sum over ranks whose gradient is again the sum over ranks: the gradient, with respect to
    one rank's input, of the total of every rank's loss."""

    @staticmethod
    def forward(ctx, values, group):
        ctx.group = group
        out = values.clone()
        with _collective("synchronised batch norm's all-reduce"):
            dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        with _collective("synchronised batch norm's all-reduce"):
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
    with _collective("a broadcast"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        with _collective("a barrier"):
            dist.barrier()


def shutdown() -> None:
    """Every rank leaves the process group together at the end of a command. (A rank that exits
    while still in a gloo group can abort in gloo's threads, "terminate called without an active
    exception", which failed a CI run.)"""
    if initialized():
        barrier()
        dist.destroy_process_group()
