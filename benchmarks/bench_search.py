"""Evolutionary search speed: the paper's full search with a predictor objective, and the rate of
supernet-accuracy evaluations.

1. attentive_nas, one thread: evolve() with the paper's settings (population 512, 128 mutations,
   128 crossovers, 20 generations) under a 600 MFLOPs budget, scored by a 100-tree, depth-15
   AccuracyPredictor fitted on 1,024 synthetic (architecture, accuracy) pairs. Total time, the
   time spent inside the objective, and the rest (the search's own overhead). Median of repeats.
   Then the same with scikit-learn's predict of the same forest settings as the objective.
2. small space on digits: BN-calibrated held-out accuracy of sub-networks of a supernet
   (calibration on 1,024 training images, then the held-out split), evaluations per second.

    python benchmarks/bench_search.py [--repeats 3] [--supernet-archs 8]
"""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

import nasops
from nasops.data import load_splits
from nasops.evaluate import Evaluator
from nasops.predictor import AccuracyPredictor
from nasops.search import evolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Timed:
    """Wraps an objective and adds up the time spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, archs):
        start = time.perf_counter()
        out = self.fn(archs)
        self.seconds += time.perf_counter() - start
        return out


def predictor_search(repeats, library="nasops"):
    """library "nasops": the AccuracyPredictor's C++ forest; "sklearn": the same forest settings
    evaluated by scikit-learn's RandomForestRegressor.predict, for comparison."""
    space = nasops.SearchSpace.load("attentive_nas")
    X = space.sample(1024, seed=0)
    g = np.random.default_rng(0)
    y = 0.6 + 0.15 * np.log(space.flops(X) / 200) + g.normal(0, 0.01, len(X))  # synthetic
    if library == "nasops":
        predictor = AccuracyPredictor(space).fit(X, y)
    else:
        from sklearn.ensemble import RandomForestRegressor
        forest = RandomForestRegressor(100, max_depth=15, random_state=0, n_jobs=1).fit(X.astype(float), y)
        predictor = lambda archs: forest.predict(archs.astype(float))
    rows = []
    for r in range(repeats + 1):  # the first is a warm-up
        objective = Timed(predictor)
        start = time.perf_counter()
        result = evolve(space, objective, 600.0, seed=r)
        total = time.perf_counter() - start
        rows.append({"total_s": total, "objective_s": objective.seconds,
                     "overhead_s": total - objective.seconds, "evaluations": result.evaluations})
    rows = rows[1:]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["overhead_fraction"] = med["overhead_s"] / med["total_s"]
    med["runs"] = rows
    return med


def supernet_evaluations(n_archs):
    space = nasops.SearchSpace.load("small", in_channels=1)
    torch.manual_seed(0)
    net = nasops.Supernet(space)
    splits = load_splits("digits", holdout=0.2)
    evaluator = Evaluator(net, splits, batch_size=256, calib_images=1024)
    archs = space.sample(n_archs + 1, seed=0)
    evaluator.accuracy(archs[:1])  # warm-up
    start = time.perf_counter()
    evaluator.accuracy(archs[1:])
    seconds = time.perf_counter() - start
    return {"archs": n_archs, "seconds": seconds, "evaluations_per_s": n_archs / seconds,
            "calib_images": 1024, "holdout_images": len(splits.holdout),
            "mean_mflops": float(space.flops(archs[1:]).mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--supernet-archs", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_search.json"))
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    search = predictor_search(args.repeats)
    search_sklearn = predictor_search(args.repeats, "sklearn")
    torch.set_num_threads(threads)
    supernet = supernet_evaluations(args.supernet_archs)
    results = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
               "predictor_search_1_thread": search,
               "sklearn_predictor_search_1_thread": search_sklearn, f"supernet_eval_{threads}_threads": supernet}
    print(f"attentive_nas, 1 thread, predictor objective, budget 600 MFLOPs "
          f"(median of {args.repeats}):")
    print(f"  {search['evaluations']:.0f} evaluations in {search['total_s']:.2f} s: objective "
          f"{search['objective_s']:.2f} s, search overhead {search['overhead_s']:.2f} s "
          f"({100 * search['overhead_fraction']:.0f}% of the total)")
    sk = search_sklearn
    print(f"  the same search scored by scikit-learn's predict: {sk['evaluations']:.0f} evaluations "
          f"in {sk['total_s']:.2f} s: objective {sk['objective_s']:.2f} s, search overhead "
          f"{sk['overhead_s']:.2f} s ({100 * sk['overhead_fraction']:.0f}%)")
    print(f"small space on digits, {threads} threads: {supernet['evaluations_per_s']:.2f} "
          f"supernet-accuracy evaluations/s ({supernet['archs']} sub-networks, mean "
          f"{supernet['mean_mflops']:.1f} MFLOPs; calibration on {supernet['calib_images']} images, "
          f"accuracy on {supernet['holdout_images']})")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
