"""Sandwich training step with the nasops depthwise kernels against the pure-PyTorch path.

One step is what `python -m nasops.train` runs per batch (nasops.train.train_step, then the SGD
step): forward and backward of the largest, smallest and two sampled sub-networks, with
label-smoothed cross-entropy and KL distillation. The sub-networks are fixed (seeded) so both
backends time the same work; the two are interleaved on the same batch after warm-up, and the
median of each is reported with their ratio. Prints a table, writes JSON.

    python benchmarks/bench_train.py [--device cpu|cuda] [--batch 16] [--repeats 5]
                                     [--spaces attentive_nas small] [--amp]
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch

import nasops
from nasops import ops
from nasops.train import DEFAULTS, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = {"attentive_nas": 1000, "small": 10}


class FixedArchs:
    """Stands in for a Strategy: the same sampled sub-networks every step."""

    def __init__(self, archs):
        self.archs = archs

    def sample(self, n, loss_fn=None):
        return self.archs[:n]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_space(name, device, batch, repeats, amp):
    space = nasops.SearchSpace.load(name, num_classes=NUM_CLASSES.get(name))
    torch.manual_seed(0)
    net = nasops.Supernet(space, dropout=0.1, drop_connect=0.1).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    cfg = dict(DEFAULTS, num_sampled=2, kd="kl")
    sampled = space.sample(2, seed=1)
    strategy = FixedArchs(sampled)
    largest, smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
    x = torch.randn(batch, space.in_channels, max(space.choices[0]), max(space.choices[0]),
                    device=device)
    y = torch.randint(0, space.num_classes, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            train_step(net, cfg, strategy, largest, smallest, x, y)
        opt.step()

    def timed(backend):
        previous = ops.set_dw_backend(backend)
        try:
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            return time.perf_counter() - start
        finally:
            ops.set_dw_backend(previous)

    times = {"nasops": [], "torch": []}
    for backend in times:  # warm-up
        timed(backend)
    for _ in range(repeats):
        for backend in times:
            times[backend].append(timed(backend))
    med = {b: statistics.median(t) for b, t in times.items()}
    return {"space": name, "batch": batch, "amp_bf16": amp,
            "mflops": [space.flops(a) for a in (largest, smallest, *sampled)],
            "nasops_s": med["nasops"], "torch_s": med["torch"],
            "speedup": med["torch"] / med["nasops"],
            "nasops_all_s": times["nasops"], "torch_all_s": times["torch"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spaces", nargs="+", default=["attentive_nas", "small"])
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    out_path = args.out or os.path.join(ROOT, "benchmarks", "results", f"bench_train_{device.type}.json")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    results = {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "repeats": args.repeats, "rows": []}
    print(f"{device.type} {name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} sandwich steps (largest, smallest, 2 sampled)")
    print(f"{'space':<14} {'batch':>5} {'MFLOPs (max/min/s1/s2)':>28} | {'nasops s':>9} {'torch s':>9} {'ratio':>6}")
    for space in args.spaces:
        for batch in args.batch:
            row = bench_space(space, device, batch, args.repeats, args.amp)
            results["rows"].append(row)
            mf = "/".join(f"{m:.0f}" if m >= 10 else f"{m:.1f}" for m in row["mflops"])
            print(f"{space:<14} {batch:>5} {mf:>28} | {row['nasops_s']:>9.3f} "
                  f"{row['torch_s']:>9.3f} {row['speedup']:>5.2f}x")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
