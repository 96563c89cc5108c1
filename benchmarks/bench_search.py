"""Search: what it finds, how fast, and under which constraint.

1. traps (small space, exhaustive optimum): the paper's evolution (method "paper", 60
   generations) and the repairing search (method "repair", 20 generations; both a quarter of the
   paper's population) on the three synthetic traps, 12 seeds each: how often each reaches the
   optimum, the evaluations it took, and the evaluations each made in all. Then the resolution
   trap on attentive_nas at the paper's settings (no exhaustive optimum there: the resolution
   and score each method ends at).
   nao: NAO (Balanced NAO's search) against the repairing evolution at equal evaluations, on the
   same traps (12 seeds) and on attentive_nas (4 seeds per budget).
2. front vs per-budget: at equal evaluations, the hypervolume of nasops.search.front (one
   NSGA-II run over the range) against that of everything pareto() evaluated for 5 budgets,
   and each budget's pick of the two; and front() with a fifth of those evaluations (the cost
   of one of the five searches).
3. speed: evolve() with the paper's settings under 600 MFLOPs scored by a 100-tree, depth-15
   AccuracyPredictor fitted on 1,024 synthetic pairs (one thread; median of repeats), with both
   methods, and the same scored by scikit-learn's predict; and supernet-accuracy evaluations per
   second on the small space (digits; calibration on 1,024 images, accuracy on the held-out
   split).

    python benchmarks/bench_search.py [--parts traps,nao,front,speed]

Latency tables and latency-budgeted picks: benchmarks/bench_latency.py. [--repeats 3]
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
from nasops.utils.files import write_json
from nasops.data import load_splits
from nasops.utils.cpu import keep_freed_memory
from nasops.evaluate import Evaluator
from nasops.predictor import AccuracyPredictor
from nasops.search import evolve, front, hypervolume, nao, non_dominated, pareto
from nasops.search.synthetic import Interacting, NarrowOptimum, ResolutionTrap, exhaustive

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


class BestSoFar:
    """Wraps an objective: after how many evaluations the best score first reached a value."""

    def __init__(self, fn):
        self.fn, self.best, self.count, self.reached = fn, -np.inf, 0, []

    def __call__(self, archs):
        values = np.asarray(self.fn(archs), dtype=float)
        running = np.maximum.accumulate(np.r_[self.best, values])[1:]
        self.reached += list(zip(self.count + np.arange(1, len(values) + 1), running))
        self.best, self.count = running[-1], self.count + len(values)
        return values

    def evaluations_to(self, value):
        return next((n for n, best in self.reached if best >= value - 1e-12), None)


def peak_near(space, mflops):
    pool = space.sample(4000, seed=7)
    return pool[np.argmin(np.abs(space.flops(pool) - mflops))]


TRAPS = {  # as in python_tests/test_search_quality.py
    "resolution trap": (lambda s: ResolutionTrap(s), 3.9),
    "narrow optimum": (lambda s: NarrowOptimum(s, peak_near(s, 0.97 * 9.0)), 9.0),
    "interacting dimensions": (lambda s: Interacting(s), 6.0),
}
SETTINGS = dict(population=128, mutations=32, crossovers=32)


def traps(seeds):
    space = nasops.SearchSpace.load("small")
    out = {}
    for name, (make, budget) in TRAPS.items():
        objective = make(space)
        _, optimum = exhaustive(space, objective, budget)
        row = {"budget_mflops": budget, "optimum": optimum}
        for method, generations in (("paper", 60), ("repair", 20)):
            solved, to_optimum, total, gaps = 0, [], [], []
            for seed in range(seeds):
                wrapped = BestSoFar(objective)
                r = evolve(space, wrapped, budget, generations=generations, seed=seed,
                           method=method, **SETTINGS)
                hit = wrapped.evaluations_to(optimum)
                solved += hit is not None
                if hit is not None:
                    to_optimum.append(hit)
                total.append(r.evaluations)
                gaps.append(optimum - r.score)
            row[method] = {"generations": generations, "solved": solved, "seeds": seeds,
                           "median_evaluations_to_optimum": statistics.median(to_optimum) if to_optimum else None,
                           "median_evaluations": statistics.median(total),
                           "mean_gap": float(np.mean(gaps))}
        out[name] = row
    # the measured trap: attentive_nas at tight budgets, the paper's settings
    space = nasops.SearchSpace.load("attentive_nas")
    objective = ResolutionTrap(space)
    big = {}
    for budget in (280.0, 320.0, 360.0):
        row = {}
        for method in ("paper", "repair"):
            runs = [evolve(space, objective, budget, seed=seed, method=method) for seed in range(4)]
            row[method] = {"resolutions": [r.arch.resolution for r in runs],
                           "scores": [r.score for r in runs],
                           "evaluations": [r.evaluations for r in runs]}
        big[f"{budget:g}"] = row
    out["attentive_nas resolution trap"] = big
    return out


def nao_vs_evolution(seeds):
    """NAO against the repairing evolution at equal evaluations: per seed, the evolution runs
    first and NAO gets exactly as many evaluations. The small space's traps (exhaustive optimum:
    solved counts, evaluations to it) and attentive_nas's resolution trap at 280-360 MFLOPs
    (NAO with a pool of 200 and 200 new per round, so that ~5,000 evaluations take 25 rounds)."""
    out = {}
    space = nasops.SearchSpace.load("small")
    for name, (make, budget) in TRAPS.items():
        objective = make(space)
        _, optimum = exhaustive(space, objective, budget)
        row = {"budget_mflops": budget, "optimum": optimum, "seeds": seeds}
        runs = {"repair": [], "nao": []}
        for seed in range(seeds):
            for method in ("repair", "nao"):
                wrapped = BestSoFar(objective)
                start = time.perf_counter()
                if method == "repair":
                    r = evolve(space, wrapped, budget, generations=20, seed=seed, **SETTINGS)
                    allowed = r.evaluations
                else:
                    r = nao(space, wrapped, budget, evaluations=allowed, seed=seed)
                runs[method].append({"score": r.score, "evaluations": r.evaluations,
                                     "to_optimum": wrapped.evaluations_to(optimum),
                                     "seconds": time.perf_counter() - start})
        for method, rs in runs.items():
            hits = [r["to_optimum"] for r in rs if r["to_optimum"] is not None]
            row[method] = {"solved": len(hits),
                           "median_evaluations_to_optimum": statistics.median(hits) if hits else None,
                           "median_evaluations": statistics.median(r["evaluations"] for r in rs),
                           "mean_gap": float(np.mean([optimum - r["score"] for r in rs])),
                           "median_seconds": statistics.median(r["seconds"] for r in rs)}
        out[name] = row
    space = nasops.SearchSpace.load("attentive_nas")
    objective = ResolutionTrap(space)
    big = {}
    for budget in (280.0, 320.0, 360.0):
        row = {"repair": [], "nao": []}
        for seed in range(4):
            r = evolve(space, objective, budget, seed=seed)
            n = nao(space, objective, budget, evaluations=r.evaluations, seed=seed, pool=200,
                    new=200, seeds=100)
            for method, x in (("repair", r), ("nao", n)):
                row[method].append({"resolution": x.arch.resolution, "score": x.score,
                                    "evaluations": x.evaluations})
        big[f"{budget:g}"] = row
    out["attentive_nas resolution trap"] = big
    return out


def fronts():
    """At equal evaluations: one front() run against 5 per-budget searches."""
    out = {}
    setups = [("small", (3.0, 14.0), [3.5, 5, 7, 10, 14], dict(generations=20, **SETTINGS)),
              ("attentive_nas", (250.0, 1000.0), [300, 400, 550, 750, 1000], {})]
    for space_name, (lo, hi), budgets, kw in setups:
        space = nasops.SearchSpace.load(space_name)
        objectives = {"resolution trap": ResolutionTrap(space),
                      "interacting dimensions": Interacting(space),
                      "log params": lambda a, s=space: np.log(s.params(a))}
        for name, objective in objectives.items():
            ref = float(objective(space.encode(space.min_arch())[None])[0])
            cache = {}
            start = time.perf_counter()
            picks = pareto(space, objective, budgets, cache=cache, **kw)
            per_budget_s = time.perf_counter() - start
            encs = np.stack([np.frombuffer(k, dtype=np.int64) for k in cache])
            values = np.array(list(cache.values()))
            flops = space.flops(encs)
            nd = non_dominated(flops, values)
            start = time.perf_counter()
            f = front(space, objective, (lo, hi), evaluations=len(cache))
            front_s = time.perf_counter() - start
            fifth = front(space, objective, (lo, hi), evaluations=len(cache) // len(budgets))
            out[f"{space_name}: {name}"] = {
                "evaluations": len(cache), "range_mflops": [lo, hi], "reference": ref,
                "hypervolume_per_budget": hypervolume(flops[nd], values[nd], (lo, hi), ref),
                "hypervolume_front": hypervolume(f.flops, f.scores, (lo, hi), ref),
                "hypervolume_front_fifth_evaluations": hypervolume(fifth.flops, fifth.scores,
                                                                   (lo, hi), ref),
                "picks_per_budget": [r.score for r in picks],
                "picks_front": [f.best_under(b).score for b in budgets], "budgets": budgets,
                "seconds_per_budget": per_budget_s, "seconds_front": front_s}
    return out


def synthetic_pairs(space):
    """1,024 (architecture, accuracy) pairs whose accuracy grows with log FLOPs, plus noise."""
    X = space.sample(1024, seed=0)
    g = np.random.default_rng(0)
    return X, 0.6 + 0.15 * np.log(space.flops(X) / 200) + g.normal(0, 0.01, len(X))


def predictor_search(repeats, library="nasops", method="paper"):
    """library "nasops": the AccuracyPredictor's C++ forest; "sklearn": the same forest settings
    evaluated by scikit-learn's RandomForestRegressor.predict, for comparison."""
    space = nasops.SearchSpace.load("attentive_nas")
    X, y = synthetic_pairs(space)
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
        result = evolve(space, objective, 600.0, seed=r, method=method)
        total = time.perf_counter() - start
        rows.append({"total_s": total, "objective_s": objective.seconds,
                     "overhead_s": total - objective.seconds, "evaluations": result.evaluations})
    rows = rows[1:]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["overhead_fraction"] = med["overhead_s"] / med["total_s"]
    med["runs"] = rows
    return med


def supernet_evaluations(n_archs, profile=False):
    """Evaluations per second of the Evaluator as the search and evaluate commands run it
    (channels-last, fused batch norm + activation, batches kept per resolution, glibc keeping
    freed memory) and as it ran before (NCHW, nasops' depthwise kernels, PyTorch's batch norm,
    batches resized for each sub-network), on the same sub-networks, one after the other, each
    after a warm-up; with the accuracies of both. With `profile`, the seconds per evaluation of
    the operators that take the most."""
    space = nasops.SearchSpace.load("small", in_channels=1)
    splits = load_splits("digits", holdout=0.2)
    archs = space.sample(n_archs + 1, seed=0)
    out = {"archs": n_archs, "calib_images": 1024, "holdout_images": len(splits.holdout),
           "mean_mflops": float(space.flops(archs[1:]).mean())}
    for name, fast in (("before", False), ("after", True)):
        if fast:  # (process-wide, so after "before" has run; what the CLIs do)
            out["allocator_tuned"] = keep_freed_memory()
        torch.manual_seed(0)
        evaluator = Evaluator(nasops.Supernet(space), splits, batch_size=256, calib_images=1024,
                              channels_last=fast, cache_bytes=(1 << 30) if fast else 0)
        evaluator.accuracy(archs[:1])  # warm-up
        start = time.perf_counter()
        acc = evaluator.accuracy(archs[1:])
        seconds = time.perf_counter() - start
        if profile and fast:  # where the time goes, by operator (self time)
            import cProfile
            import pstats
            evaluator.cache.clear()
            profiler = cProfile.Profile()
            profiler.runcall(evaluator.accuracy, archs[1:])
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(6)
            top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:4]  # (by own time)
            out["profile_s_per_evaluation"] = {key[2]: row[2] / n_archs for key, row in top}
        out[name] = {"seconds": seconds, "evaluations_per_s": n_archs / seconds,
                     "accuracy": acc.tolist()}
    out["speedup"] = out["after"]["evaluations_per_s"] / out["before"]["evaluations_per_s"]
    out["same_accuracies"] = out["after"]["accuracy"] == out["before"]["accuracy"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="traps,nao,front,speed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=12, help="seeds per trap and method")
    parser.add_argument("--supernet-archs", type=int, default=8)
    parser.add_argument("--profile", action="store_true",
                        help="with speed: print where the channels-last evaluation spends its time")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_search.json"))
    args = parser.parse_args()
    parts = args.parts.split(",")
    results = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    if os.path.exists(args.out):  # parts not run this time keep their last results
        with open(args.out) as f:
            results = {**json.load(f), **results}
    threads = torch.get_num_threads()
    if "traps" in parts:
        results["traps"] = t = traps(args.seeds)
        print(f"traps, small space, {args.seeds} seeds each (paper: 60 generations; repair: 20):")
        for name, row in t.items():
            if name.startswith("attentive_nas"):
                continue
            cells = []
            for m in ("paper", "repair"):
                r = row[m]
                hit = r["median_evaluations_to_optimum"]
                cells.append(f"{m} {r['solved']}/{r['seeds']} solved"
                             f"{f' (median {hit:.0f} evaluations to the optimum)' if hit else ''}, "
                             f"{r['median_evaluations']:.0f} evaluations")
            print(f"  {name} <= {row['budget_mflops']:g} MFLOPs: " + "; ".join(cells))
        print("attentive_nas, resolution trap, paper settings, 4 seeds (resolution reached):")
        for budget, row in t["attentive_nas resolution trap"].items():
            print(f"  <= {budget} MFLOPs: " + "; ".join(
                f"{m} {row[m]['resolutions']} score {np.mean(row[m]['scores']):.3f} "
                f"({np.median(row[m]['evaluations']):.0f} evaluations)" for m in ("paper", "repair")))
    if "nao" in parts:
        torch.set_num_threads(1)
        results["nao_vs_repair"] = nv = nao_vs_evolution(args.seeds)
        torch.set_num_threads(threads)
        print(f"NAO vs the repairing evolution at equal evaluations, small space, {args.seeds} seeds:")
        for name, row in nv.items():
            if name.startswith("attentive_nas"):
                continue
            print(f"  {name} <= {row['budget_mflops']:g} MFLOPs: " + "; ".join(
                f"{m} {row[m]['solved']}/{args.seeds} solved"
                + (f" (median {row[m]['median_evaluations_to_optimum']:.0f} evaluations to it)"
                   if row[m]['median_evaluations_to_optimum'] else "")
                + f", mean gap {row[m]['mean_gap']:.3f}"
                for m in ("repair", "nao")))
        print("attentive_nas, resolution trap, 4 seeds (resolution reached, mean score):")
        for budget, row in nv["attentive_nas resolution trap"].items():
            print(f"  <= {budget} MFLOPs: " + "; ".join(
                f"{m} {[x['resolution'] for x in row[m]]} {np.mean([x['score'] for x in row[m]]):.3f}"
                for m in ("repair", "nao")))
    if "front" in parts:
        results["front_vs_per_budget"] = fr = fronts()
        print("hypervolume at equal evaluations: front() vs pareto() over 5 budgets (all it evaluated):")
        for name, r in fr.items():
            picks = sum(a > b + 1e-12 for a, b in zip(r["picks_front"], r["picks_per_budget"]))
            worse = sum(a < b - 1e-12 for a, b in zip(r["picks_front"], r["picks_per_budget"]))
            print(f"  {name}: {r['evaluations']} evaluations; hypervolume front "
                  f"{r['hypervolume_front']:.4g} vs per-budget {r['hypervolume_per_budget']:.4g} "
                  f"({100 * (r['hypervolume_front'] / r['hypervolume_per_budget'] - 1):+.2f}%); "
                  f"budget picks: front better at {picks}, worse at {worse} of 5; front with a "
                  f"fifth of the evaluations: "
                  f"{100 * (r['hypervolume_front_fifth_evaluations'] / r['hypervolume_per_budget'] - 1):+.2f}%")
    if "speed" in parts:
        torch.set_num_threads(1)
        search = {m: predictor_search(args.repeats, method=m) for m in ("paper", "repair")}
        search_sklearn = predictor_search(args.repeats, "sklearn")
        torch.set_num_threads(threads)
        supernet = supernet_evaluations(args.supernet_archs, args.profile)
        results.update({"predictor_search_1_thread": search,
                        "sklearn_predictor_search_1_thread": search_sklearn,
                        f"supernet_eval_{threads}_threads": supernet})
        print(f"attentive_nas, 1 thread, predictor objective, budget 600 MFLOPs "
              f"(median of {args.repeats}):")
        for m, r in search.items():
            print(f"  method {m}: {r['evaluations']:.0f} evaluations in {r['total_s']:.2f} s: "
                  f"objective {r['objective_s']:.2f} s, search overhead {r['overhead_s']:.2f} s "
                  f"({100 * r['overhead_fraction']:.0f}% of the total)")
        sk = search_sklearn
        print(f"  method paper scored by scikit-learn's predict: {sk['evaluations']:.0f} "
              f"evaluations in {sk['total_s']:.2f} s: objective {sk['objective_s']:.2f} s, search "
              f"overhead {sk['overhead_s']:.2f} s ({100 * sk['overhead_fraction']:.0f}%)")
        print(f"small space on digits, {threads} threads, supernet-accuracy evaluations/s "
              f"({supernet['archs']} sub-networks, mean {supernet['mean_mflops']:.1f} MFLOPs; "
              f"calibration on {supernet['calib_images']} images, accuracy on "
              f"{supernet['holdout_images']}): before {supernet['before']['evaluations_per_s']:.2f}, "
              f"after {supernet['after']['evaluations_per_s']:.2f} ({supernet['speedup']:.2f}x); "
              f"the same accuracies: {supernet['same_accuracies']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
