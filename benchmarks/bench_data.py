"""Streaming image-folder loader against the training step it feeds: would loading starve it?

Images per second of the training loader (nasops.data.folders.FolderStream: decode, random-resized
crop at 224 px, flip, AutoAugment, normalise) with 0, 1 and 2 DataLoader workers, beside the images
per second of the attentive_nas sandwich step (largest, smallest, 2 sampled; batch 16, float32,
the sub-networks at their own resolutions) on the same machine, and the peak resident memory of
this process and of its workers. The loader needs to deliver at least the step's rate per rank.

The data: --data-dir (an image folder, e.g. ImageNet's train/ parent) or, by default, generated
JPEGs of ImageNet's typical size (500 x 375 px, sides drawn from 300-500), written to a temporary
folder. Each loader rate is the median of --repeats passes of --batches batches after a warm-up
pass (which also starts the workers); the step rate is the median of --repeats steps after one.

    python benchmarks/bench_data.py [--data-dir DIR] [--images 480] [--batches 12] [--repeats 3]
                                    [--workers 0 1 2] [--steps 3] [--device cpu|cuda]
"""
import argparse
import os
import platform
import resource
import statistics
import tempfile
import time

import numpy as np
import torch

import nasops
from nasops.utils.files import write_json
from nasops.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset
from nasops.data.folders import FolderStream
from nasops.train import DEFAULTS, train_step

from bench_train import FixedArchs  # (this folder is on the path of a script run from it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jpegs(root, count, classes=10, seed=0):
    """Photo-like JPEGs (smooth colour fields with noise, quality 90), sides in 300-500 px."""
    from PIL import Image
    g = np.random.default_rng(seed)
    for i in range(count):
        folder = os.path.join(root, f"class{i % classes:03d}")
        os.makedirs(folder, exist_ok=True)
        w, h = (int(v) for v in g.integers(300, 501, 2))
        coarse = g.integers(0, 256, (h // 32 + 2, w // 32 + 2, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + g.integers(-12, 13, (h, w, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def loader_rate(data, workers, batch, batches, repeats):
    """Median images/s of `batches` training batches, after a warm-up pass."""
    data.workers = workers
    stream = FolderStream(data, batch, torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD),
                          224, seed=0, flip=True, autoaugment=True)
    if stream.steps_per_epoch < batches:
        raise SystemExit(f"{len(data)} images make {stream.steps_per_epoch} batches of {batch}; "
                         f"--batches {batches} needs more (--images)")
    rates = []
    for epoch in range(repeats + 1):
        it = stream.epoch(epoch)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - start
        del it  # (stops the workers)
        if epoch:  # the first pass is the warm-up
            rates.append(batch * batches / seconds)
    return statistics.median(rates), rates


def step_rate(device, batch, steps):
    """Median images/s of the attentive_nas sandwich step on a 224 px batch."""
    space = nasops.SearchSpace.load("attentive_nas")
    largest, smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
    torch.manual_seed(0)
    net = nasops.Supernet(space, dropout=0.2, drop_connect=0.2).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    cfg = dict(DEFAULTS, num_sampled=2, kd="kl")
    strategy = FixedArchs(space.sample(2, seed=1))
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, space.num_classes, (batch,), device=device)
    times = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(net, cfg, strategy, largest, smallest, x, y)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times), [batch / t for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="an image folder (default: generated JPEGs)")
    parser.add_argument("--images", type=int, default=480, help="generated images")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=12, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3, help="timed sandwich steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_data.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir
        if root is None:
            root = tmp
            print(f"writing {args.images} JPEGs (300-500 px) to {tmp} ...", flush=True)
            write_jpegs(tmp, args.images)
        data = load_dataset("imagefolder", "train", root)
        name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
        results = {"device": name, "cpus": os.cpu_count(), "torch": torch.__version__,
                   "images": len(data), "batch": args.batch, "rows": []}
        print(f"{os.cpu_count()} CPUs, {name}; loader: crop 224 px, flip, AutoAugment, batch "
              f"{args.batch}; median of {args.repeats} passes of {args.batches} batches")
        print(f"{'':<28} {'images/s':>9}")
        for workers in args.workers:
            rate, all_rates = loader_rate(data, workers, args.batch, args.batches, args.repeats)
            results["rows"].append({"what": f"loader, {workers} workers", "workers": workers,
                                    "images_per_s": rate, "all": all_rates})
            print(f"{f'loader, {workers} workers':<28} {rate:>9.1f}", flush=True)
        rate, all_rates = step_rate(device, args.batch, args.steps)
        results["rows"].append({"what": f"sandwich step ({device.type})", "images_per_s": rate,
                                "all": all_rates})
        print(f"{f'sandwich step ({device.type})':<28} {rate:>9.1f}")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    results.update(peak_rss_mib=own, peak_worker_rss_mib=workers)
    print(f"peak RSS: this process {own:.0f} MiB (the step's supernet included), the largest "
          f"worker {workers:.0f} MiB")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
