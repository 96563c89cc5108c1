"""Memory over long loops: resident memory (RSS) must stay flat after warm-up.

    python benchmarks/memory_flat.py                       # the three parts below (~7 min)
    python benchmarks/memory_flat.py --parts evaluate --evaluations 200   # a shorter look

train:    a training run of at least --steps optimizer steps (`python -m nasops.train` on digits,
          the test suite's tiny space: 8-12 px sub-networks, so that 5,000 steps take minutes),
          its RSS read from /proc every half second and matched to the step it had logged.
evaluate: --evaluations consecutive sub-network evaluations (BN re-calibration on 256 training
          images, then the 288 held-out images), each a different architecture, on the supernet
          the train part made; RSS after each.
loader:   the image-folder training stream with 2 worker processes, over 1,000 JPEGs for
          --batches batches; RSS of the process and its workers together.

Each part reports RSS at the end of warm-up (the first 10%) and at the end, and the least-squares
slope after warm-up in MiB per 1,000 iterations. A leak of a tensor per iteration would show as
MiBs per 1,000; the allocator's noise is well under one. Results:
benchmarks/results/reliability/memory_flat.json.
"""
import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python_tests"))
from conftest import TINY_SPACE  # noqa: E402  (the tests' tiny space)


def rss_mib(pid: int | str = "self", children: bool = False) -> float:
    """Resident memory of a process (with `children`, plus its child processes'), in MiB."""
    def one(p):
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0
    total = one(pid)
    if children:
        me = os.getpid() if pid == "self" else int(pid)
        for task in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{task}/children") as f:
                for child in f.read().split():
                    try:
                        total += one(child)
                    except FileNotFoundError:  # (a worker that just ended)
                        pass
    return total


def summary(xs, rss, per: str) -> dict:
    """RSS at the end of warm-up (the first 10% of the iterations) and at the end, and the
    slope after warm-up, MiB per 1,000 iterations."""
    xs, rss = np.asarray(xs, float), np.asarray(rss, float)
    after = xs >= xs[0] + 0.1 * (xs[-1] - xs[0])
    slope = np.polyfit(xs[after], rss[after], 1)[0] * 1000
    return {"iterations": int(xs[-1]), "per": per, "samples": int(after.sum()),
            "rss_after_warmup_mib": round(float(rss[after][0]), 1),
            "rss_end_mib": round(float(rss[-1]), 1),
            "rss_max_after_warmup_mib": round(float(rss[after].max()), 1),
            "slope_mib_per_1000": round(float(slope), 3)}


def part_train(work: str, steps: int) -> dict:
    space = os.path.join(work, "tiny.yaml")
    with open(space, "w") as f:
        f.write(TINY_SPACE)
    per_epoch = 1152 // 32  # (digits: 1,437 training images less the 20% held out, batches of 32)
    epochs = -(-steps // per_epoch)
    run = os.path.join(work, "run")
    cmd = [sys.executable, "-m", "nasops.train", "--recipe", "digits", f"space={space}",
           f"epochs={epochs}", "log_every=1", "eval_every=0", "--run-dir", run, "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, xs, rss = os.path.join(run, "metrics.jsonl"), [], []
    while proc.poll() is None:
        time.sleep(0.5)
        try:
            memory = rss_mib(proc.pid)
            with open(metrics, "rb") as f:
                step = f.read().count(b"\n")
        except FileNotFoundError:
            continue
        if step and (not xs or step > xs[-1]):
            xs.append(step)
            rss.append(memory)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr.read()[-3000:]}")
    return {"training_command": " ".join(cmd[1:]).replace(work, "WORK"), **summary(xs, rss, "step")}


def part_evaluate(work: str, evaluations: int) -> dict:
    import torch
    from nasops.evaluate import Evaluator
    from nasops.train.rundir import load_trained
    torch.set_num_threads(os.cpu_count())
    _, splits, net = load_trained(os.path.join(work, "run", "checkpoint.pt"))
    evaluator = Evaluator(net, splits, batch_size=64, calib_images=256)
    every = np.array(list(itertools.product(*[range(n) for n in net.space.sizes])))
    archs = net.space.from_index(np.random.default_rng(0).permutation(every)[:evaluations])
    if len(archs) < evaluations:
        raise SystemExit(f"the space holds {len(archs)} distinct sub-networks, fewer than "
                         f"{evaluations}")
    xs, rss = [], []
    for i, arch in enumerate(archs, 1):
        evaluator.accuracy(arch, "holdout")
        xs.append(i)
        rss.append(rss_mib())
    return summary(xs, rss, "evaluation")


def part_loader(work: str, batches: int) -> dict:
    import torch
    from PIL import Image
    from nasops.data import load_dataset
    from nasops.data.folders import FolderStream
    g = np.random.default_rng(0)
    root = os.path.join(work, "images")
    for i in range(1000):
        os.makedirs(os.path.join(root, f"c{i % 10}"), exist_ok=True)
        Image.fromarray(g.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            os.path.join(root, f"c{i % 10}", f"{i:05d}.jpg"), quality=85)
    data = load_dataset("imagefolder", "train", root, workers=2)
    stream = FolderStream(data, 20, torch.zeros(3), torch.ones(3), 32)
    xs, rss, epoch = [], [], 0
    while not xs or xs[-1] < batches:
        for _ in stream.epoch(epoch):
            xs.append(len(xs) + 1)
            rss.append(rss_mib(children=True))
            if xs[-1] >= batches:
                break
        epoch += 1
    return summary(xs, rss, "batch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["train", "evaluate", "loader"],
                        choices=["train", "evaluate", "loader"])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=5000)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "reliability",
                                                      "memory_flat.json"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="memory_flat-")
    result = {"command": "python benchmarks/memory_flat.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    try:
        if "evaluate" in args.parts and "train" not in args.parts:
            part_train(work, 200)  # (a supernet to evaluate)
        for part in args.parts:
            start = time.perf_counter()
            found = {"train": lambda: part_train(work, args.steps),
                     "evaluate": lambda: part_evaluate(work, args.evaluations),
                     "loader": lambda: part_loader(work, args.batches)}[part]()
            result[part] = {**found, "seconds": round(time.perf_counter() - start, 1),
                            "measured_by": result["command"]}
            print(f"{part}: {json.dumps(result[part])}", flush=True)
    finally:
        shutil.rmtree(work)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    from nasops.utils.files import write_json
    if os.path.exists(args.out):  # (the parts not run this time keep their last results)
        with open(args.out) as f:
            result = {**json.load(f), **result}
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
