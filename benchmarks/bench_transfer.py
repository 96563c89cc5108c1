"""Transfer: does a supernet trained on Fashion-MNIST help a supernet for the 8x8 digits?

    python benchmarks/bench_transfer.py                 # about 25 minutes on 2 idle cores
    python benchmarks/bench_transfer.py --ci --out DIR --runs-dir DIR2  # minutes: tiny pretraining

1. Pretrains a supernet on Fashion-MNIST: the packaged fashion-mnist recipe (the digits recipe's
   space, `small`), shortened to --pretrain-epochs epochs on the first --pretrain-images images
   with the uniform strategy (the whole recipe takes hours on 2 cores).
2. Trains the digits recipe for 1, 2 and 5 epochs in four arms, each with the same seed, data
   order and number of steps:
   - scratch: the digits recipe as it is;
   - init: the same recipe started from the Fashion-MNIST supernet (recipe key init; the
     classifier re-initialised, as init_classifier: auto does for other data);
   - init+finetune: started from it with the usual fine-tuning advice (FINETUNE: a quarter of
     the learning rate, no warm-up), to test it;
   - init, classifier kept: as init, but the Fashion-MNIST classifier's rows kept for the digits
     (init_classifier: keep), to show what the re-initialisation does.
3. Measures each run's smallest, largest and 64 random sub-networks (one fixed draw) on the
   digits' held-out split after BN re-calibration (nasops.evaluate.Evaluator).

The runs go to --runs-dir; each is skipped when its final.json exists, so an interrupted
benchmark continues. Writes --out/bench_transfer.json and prints the table the docs show (docs/guides/deploy.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from nasops.evaluate import Evaluator, binomial_interval
from nasops.train import loop as train_mod
from nasops.train.recipe import apply_overrides, load_recipe
from nasops.train.rundir import load_trained
from nasops.utils.files import write_json

# the usual advice for adapting a trained network: a lower learning rate, no warm-up
FINETUNE = {"lr": 0.025, "warmup_epochs": 0}
ARMS = {"scratch": {}, "init": {"init": None}, "init+finetune": {"init": None, **FINETUNE},
        "init, classifier kept": {"init": None, "init_classifier": "keep"}}


def train_once(cfg: dict, run_dir: str) -> float:
    """Trains unless run_dir already holds a finished run; the seconds it took (0 if skipped)."""
    if os.path.exists(os.path.join(run_dir, "final.json")):
        return 0.0
    start = time.perf_counter()
    result = train_mod.train(cfg, run_dir, progress=False,
                             resume=os.path.exists(os.path.join(run_dir, "checkpoint.pt")))
    if "interrupted" in result:  # (SIGINT/SIGTERM: the checkpoint is saved; stop here)
        raise SystemExit(f"interrupted in {run_dir}; run the same command again to continue")
    return time.perf_counter() - start


def measure(run_dir: str, archs: np.ndarray) -> dict:
    cfg, splits, net = load_trained(os.path.join(run_dir, "checkpoint.pt"))
    ev = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"])
    space = net.space
    acc = ev.accuracy(np.stack([space.encode(space.min_arch()), space.encode(space.max_arch()),
                                *archs]), "holdout")
    n = len(splits.holdout)
    return {"smallest": float(acc[0]), "largest": float(acc[1]),
            "random_mean": float(acc[2:].mean()), "random": acc[2:].tolist(),
            "holdout_images": n,
            "smallest_ci95": list(binomial_interval(float(acc[0]), n)),
            "largest_ci95": list(binomial_interval(float(acc[1]), n))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="default: benchmarks/results/transfer (with --ci: "
                                      "benchmarks/transfer_runs_ci)")
    parser.add_argument("--runs-dir", help="default: benchmarks/transfer_runs (with --ci: "
                                           "benchmarks/transfer_runs_ci)")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--pretrain-images", type=int, default=15000)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--random", type=int, default=64, help="random sub-networks measured")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ci", action="store_true",
                        help="a quick check: 1 pretraining epoch on 2,000 images, 8 random networks")
    args = parser.parse_args(argv)
    if args.ci:  # (in folders of their own: never mixed with, or written over, the full runs)
        args.pretrain_epochs, args.pretrain_images, args.random, args.epochs = 1, 2000, 8, [1]
    args.runs_dir = args.runs_dir or ("benchmarks/transfer_runs_ci" if args.ci
                                      else "benchmarks/transfer_runs")
    args.out = args.out or ("benchmarks/transfer_runs_ci" if args.ci
                            else "benchmarks/results/transfer")
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.runs_dir, exist_ok=True)
    times = {}
    source = os.path.join(args.runs_dir, "fashion-mnist")
    pre = apply_overrides(load_recipe("fashion-mnist"),
                          [f"epochs={args.pretrain_epochs}", "strategy=uniform",
                           f"seed={args.seed}", f"limit={args.pretrain_images}"])
    times["pretrain"] = train_once(pre, source)
    init = os.path.join(source, "checkpoint.pt")
    digits = load_recipe("digits")
    space_archs = None
    rows = []
    for epochs in args.epochs:
        for arm, overrides in ARMS.items():
            cfg = dict(digits, epochs=epochs, seed=args.seed,
                       warmup_epochs=min(digits["warmup_epochs"], 0.2 * epochs))
            cfg.update({k: (init if k == "init" else v) for k, v in overrides.items()})
            run_dir = os.path.join(args.runs_dir, f"digits_{arm.replace(', ', '_').replace(' ', '-')}_{epochs}ep")
            times[f"{arm}_{epochs}"] = train_once(apply_overrides(cfg, []), run_dir)
            if space_archs is None:
                _, _, net = load_trained(os.path.join(run_dir, "checkpoint.pt"))
                space_archs = net.space.sample(args.random, seed=args.seed + 1)
            result = measure(run_dir, space_archs)
            rows.append({"arm": arm, "epochs": epochs, **result})
            print(f"{epochs} epoch(s) {arm:>21}: smallest {result['smallest']:.4f}, largest "
                  f"{result['largest']:.4f}, mean of {args.random} random "
                  f"{result['random_mean']:.4f}", flush=True)
    fm = json.load(open(os.path.join(source, "final.json")))
    write_json(os.path.join(args.out, "bench_transfer.json"),
               {"pretrain": {"recipe": "fashion-mnist", "epochs": args.pretrain_epochs,
                             "images": args.pretrain_images, "final": fm}, "finetune_overrides": FINETUNE, "rows": rows,
                "seconds": times, "command": " ".join(["python"] + sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
