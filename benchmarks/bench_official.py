"""nasops's sandwich step against the official AttentiveNAS code's, side by side.

The official code is not part of nasops: clone https://github.com/facebookresearch/AttentiveNAS
and pass its root with --official (its models/ and utils/ are imported from there). Both
supernets hold the same weights (the official model's random initialisation, converted with
nasops.Supernet.from_official) and train the same four sub-networks on the same batch: the
largest (label-smoothed cross-entropy, dropout and drop-connect 0.2), the smallest and two
sampled ones (KL distillation from the largest's logits), then gradient clipping by value at
1.0 and an SGD step, as train_attentive_nas.py and the imagenet recipe do. Before timing, the
largest sub-network's logits of the two are compared (training-mode batch norm, no dropout).

The two steps alternate after a warm-up and the medians are reported, with their ratio. Both
run in this one process, so they share its allocator: by default glibc keeps freed memory
(nasops.utils.cpu.keep_freed_memory, what nasops's training command does), which speeds up the
official step too; NASOPS_MALLOC=system runs both without it.

    python benchmarks/bench_official.py --official PATH [--batch 8] [--threads 1] [--repeats 5]
"""
import argparse
import os
import statistics
import sys
import time

import torch

import nasops
from nasops.utils import cpu
from nasops.utils.files import write_json
from nasops.train.step import clip_gradients, train_step
from nasops.train import DEFAULTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DROPOUT = DROP_CONNECT = 0.2  # the published recipe's, on the largest sub-network only


class FixedArchs:
    """Stands in for a Strategy: the same sampled sub-networks every step."""

    def __init__(self, archs):
        self.archs = archs

    def sample(self, n, loss_fn=None):
        return self.archs[:n]


def official_model(root: str):
    """The official dynamic supernet built from its training config, and its loss modules."""
    sys.path.insert(0, os.path.abspath(root))
    try:
        from models.attentive_nas_dynamic_model import AttentiveNasDynamicModel
        from utils.config import setup
        from utils.loss_ops import CrossEntropyLossSmooth, KLLossSoft
    except ImportError as e:
        raise SystemExit(f"bench_official: cannot import the official code from {root!r} ({e}); "
                         f"--official must be the root of a clone of "
                         f"https://github.com/facebookresearch/AttentiveNAS") from None
    args = setup(os.path.join(root, "configs", "train_attentive_nas_models.yml"))
    model = AttentiveNasDynamicModel(args.supernet_config, n_classes=1000,
                                     bn_param=(args.bn_momentum, args.bn_eps))
    return model, CrossEntropyLossSmooth(0.1), KLLossSoft()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="root of a clone of the official code")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_official.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = cpu.keep_freed_memory()
    torch.manual_seed(0)
    official, smooth_ce, kl_soft = official_model(args.official)
    official.train()
    net = nasops.Supernet.from_official(official.state_dict())
    space = net.space
    cfg = dict(DEFAULTS, space="attentive_nas", num_sampled=2, kd="kl", label_smoothing=0.1,
               dropout=DROPOUT, drop_connect=DROP_CONNECT, grad_clip=1.0, grad_clip_mode="value")
    if cpu.use_channels_last(cfg["channels_last"], "cpu"):
        net.to(memory_format=torch.channels_last)
    net.train()
    largest, smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
    sampled = space.sample(2, seed=3)
    archs = [largest, smallest, *sampled]
    dicts = [space.decode(a).to_dict() for a in archs]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 288, 288, generator=g)
    y = torch.randint(0, 1000, (args.batch,), generator=g)

    # The same function: the largest's logits, training-mode batch norm, no dropout.
    with torch.no_grad():
        official.set_active_subnet(**dicts[0])
        official.set_dropout_rate(0, 0, True)
        theirs = official(x)
        net.set_active(largest)
        net.dropout = net.drop_connect = 0.0
        ours = net(x.contiguous(memory_format=torch.channels_last))
    difference = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    print(f"largest sub-network, the same weights: max |logit difference| / max |logit| = {difference:.1e}")
    if difference > 1e-4:
        raise SystemExit("bench_official: the two models disagree; is --official the right code?")

    official_opt = torch.optim.SGD(official.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    nasops_opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    strategy = FixedArchs(sampled)

    def official_step():  # as train_attentive_nas.py's train_epoch does it
        official_opt.zero_grad()
        soft_logits = None
        for i, arch in enumerate(dicts):
            official.set_active_subnet(**arch)
            official.set_dropout_rate(DROPOUT if i == 0 else 0, DROP_CONNECT if i == 0 else 0, True)
            out = official(x)
            if i == 0:
                loss = smooth_ce(out, y)
                soft_logits = out.clone().detach()
            else:
                loss = kl_soft(out, soft_logits)
            loss.backward()
        torch.nn.utils.clip_grad_value_(official.parameters(), 1.0)
        official_opt.step()

    def nasops_step():  # as nasops.train's loop does it
        train_step(net, cfg, strategy, largest, smallest, x, y)
        clip_gradients(net, cfg["grad_clip"], cfg["grad_clip_mode"])
        nasops_opt.step()

    steps = {"official": official_step, "nasops": nasops_step}
    times = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    gflop = sum(space.flops(a) for a in archs) * 1e6 * 6 * args.batch / 1e9
    result = {"machine": cpu.describe(), "torch": torch.__version__, "threads": args.threads,
              "batch": args.batch, "repeats": args.repeats, "malloc_kept": malloc,
              "mflops": [space.flops(a) for a in archs], "logit_difference": difference,
              "official_s": med["official"], "nasops_s": med["nasops"],
              "speedup": med["official"] / med["nasops"], "gflop_per_step": gflop,
              "official_all_s": times["official"], "nasops_all_s": times["nasops"]}
    print(f"{cpu.describe()}; glibc keeps freed memory: {malloc}")
    print(f"sandwich step, batch {args.batch}, sub-networks of "
          f"{'/'.join(f'{m:.0f}' for m in result['mflops'])} MFLOPs, median of {args.repeats}:")
    print(f"  official {med['official']:.2f} s ({gflop / med['official']:.1f} GFLOP/s), "
          f"nasops {med['nasops']:.2f} s ({gflop / med['nasops']:.1f} GFLOP/s): "
          f"{result['speedup']:.2f}x")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
