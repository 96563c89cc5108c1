"""Sandwich training step: the nasops depthwise kernels against the pure-PyTorch path, in float32,
bf16 mixed precision and channels-last memory format.

One step is what `python -m nasops.train` runs per batch (nasops.train.train_step, then the SGD
step): forward and backward of the largest, smallest and two sampled sub-networks, with
label-smoothed cross-entropy and KL distillation. The sub-networks are fixed (seeded) so every
configuration times the same work; all of them (variant x backend) are interleaved on the same
batch after warm-up, and the median of each is reported, with the nasops / torch ratio within a
variant and each variant's ratio to float32 with the nasops kernels. Variants: float32 (the
default), bf16 (recipe key amp: bf16) and channels_last (channels_last: true). Prints a table,
writes JSON.

    python benchmarks/bench_train.py [--device cpu|cuda] [--batch 16] [--repeats 5]
                                     [--spaces attentive_nas small]
                                     [--variants float32 bf16 channels_last]
"""
import argparse
import os
import platform
import statistics
import time

import torch

import nasops
from nasops.files import write_json
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


VARIANTS = {"float32": {}, "bf16": {"amp": "bf16"}, "channels_last": {"channels_last": True}}
BACKENDS = ("nasops", "torch")


def bench_space(name, device, batch, repeats, variants):
    space = nasops.SearchSpace.load(name, num_classes=NUM_CLASSES.get(name))
    sampled = space.sample(2, seed=1)
    strategy = FixedArchs(sampled)
    largest, smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
    x = torch.randn(batch, space.in_channels, max(space.choices[0]), max(space.choices[0]),
                    device=device)
    y = torch.randint(0, space.num_classes, (batch,), device=device)
    setups = {}
    for variant in variants:  # one supernet and optimizer per variant, the same initial weights
        torch.manual_seed(0)
        net = nasops.Supernet(space, dropout=0.1, drop_connect=0.1).to(device)
        cfg = dict(DEFAULTS, num_sampled=2, kd="kl", **VARIANTS[variant])
        if cfg["channels_last"]:
            net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
        setups[variant] = (net, cfg, opt)

    def timed(variant, backend):
        net, cfg, opt = setups[variant]
        previous = ops.set_dw_backend(backend)
        try:
            sync(device)
            start = time.perf_counter()
            train_step(net, cfg, strategy, largest, smallest, x, y)
            opt.step()
            sync(device)
            return time.perf_counter() - start
        finally:
            ops.set_dw_backend(previous)

    runs = [(v, b) for v in variants for b in BACKENDS]
    times = {run: [] for run in runs}
    for run in runs:  # warm-up
        timed(*run)
    for _ in range(repeats):
        for run in runs:
            times[run].append(timed(*run))
    med = {run: statistics.median(t) for run, t in times.items()}
    base = med.get(("float32", "nasops"))
    return [{"space": name, "batch": batch, "variant": v,
             "mflops": [space.flops(a) for a in (largest, smallest, *sampled)],
             "nasops_s": med[(v, "nasops")], "torch_s": med[(v, "torch")],
             "speedup": med[(v, "torch")] / med[(v, "nasops")],
             "vs_float32": None if base is None else base / med[(v, "nasops")],
             "nasops_all_s": times[(v, "nasops")], "torch_all_s": times[(v, "torch")]}
            for v in variants]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spaces", nargs="+", default=["attentive_nas", "small"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    out_path = args.out or os.path.join(ROOT, "benchmarks", "results", f"bench_train_{device.type}.json")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    results = {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "repeats": args.repeats, "rows": []}
    print(f"{device.type} {name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} sandwich steps (largest, smallest, 2 sampled)")
    print(f"{'space':<14} {'batch':>5} {'variant':<14} {'MFLOPs (max/min/s1/s2)':>24} | "
          f"{'nasops s':>9} {'torch s':>9} {'ratio':>6} | {'vs float32':>10}")
    for space in args.spaces:
        for batch in args.batch:
            for row in bench_space(space, device, batch, args.repeats, args.variants):
                results["rows"].append(row)
                mf = "/".join(f"{m:.0f}" if m >= 10 else f"{m:.1f}" for m in row["mflops"])
                vs = "" if row["vs_float32"] is None else f"{row['vs_float32']:.2f}x"
                print(f"{space:<14} {batch:>5} {row['variant']:<14} {mf:>24} | "
                      f"{row['nasops_s']:>9.3f} {row['torch_s']:>9.3f} {row['speedup']:>5.2f}x | "
                      f"{vs:>10}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_json(out_path, results)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
