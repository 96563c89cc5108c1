"""Supernet step time against the extracted static network of the same sub-network.

For the smallest, a middle and the largest sub-network of each space: forward + backward of the
supernet (set_active included) and of the static network with the same weights, on the same
batch, interleaved, after warm-up; the median of the repeats and their ratio. Both networks and
the batch are in the training default's memory format (channels-last on CPU), and the process
keeps freed memory as training does (nasops.utils.cpu.keep_freed_memory). Prints a table and writes
JSON.

    python benchmarks/bench_supernet.py [--repeats 5] [--batch 16]
"""
import argparse
import os
import statistics
import time

import torch

import nasops
from nasops.utils import cpu
from nasops.utils.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def middle_arch(space):
    return space.decode([int(c[len(c) // 2]) for c in space.choices])


def step_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_arch(net, arch, batch, repeats, memory_format):
    space = net.space
    x = torch.randn(batch, space.in_channels, arch.resolution, arch.resolution)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(space.num_classes, (batch,))
    net.set_active(arch)
    static = net.extract().train().to(memory_format=memory_format)

    def supernet_step():
        net.set_active(arch)
        torch.nn.functional.cross_entropy(net(x), y).backward()

    def static_step():
        torch.nn.functional.cross_entropy(static(x), y).backward()

    supernet_step(), static_step()  # warm-up
    dynamic, plain = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine state
        dynamic += step_time(supernet_step, 1)
        plain += step_time(static_step, 1)
    return statistics.median(dynamic), statistics.median(plain)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_supernet.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    malloc = cpu.keep_freed_memory()
    channels_last = cpu.use_channels_last("auto", "cpu")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    results = {"batch": args.batch, "repeats": args.repeats, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "machine": cpu.describe(),
               "channels_last": channels_last, "malloc_kept": malloc, "rows": []}
    print(f"{cpu.describe()}; channels-last: {channels_last}")
    print(f"{'space':<14} {'sub-network':<8} {'MFLOPs':>8} {'supernet ms':>12} {'static ms':>10} {'ratio':>6}")
    for name in ("attentive_nas", "small"):
        space = nasops.SearchSpace.load(name)
        net = nasops.Supernet(space).train().to(memory_format=memory_format)
        for label, arch in (("min", space.min_arch()), ("mid", middle_arch(space)),
                            ("max", space.max_arch())):
            dynamic, plain = bench_arch(net, arch, args.batch, args.repeats, memory_format)
            row = {"space": name, "arch": label, "mflops": space.flops(arch),
                   "supernet_s": dynamic, "static_s": plain, "ratio": dynamic / plain}
            results["rows"].append(row)
            print(f"{name:<14} {label:<8} {row['mflops']:>8.1f} {1e3 * dynamic:>12.1f} "
                  f"{1e3 * plain:>10.1f} {row['ratio']:>6.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
