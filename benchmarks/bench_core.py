"""Microbenchmarks of the C++ core on one CPU core: FLOPs against pure Python, building the
FLOPs prior and proposal, trials per constrained sample against naive uniform rejection, and
sampling rates. Prints a table and writes JSON.

    python benchmarks/bench_core.py [--space attentive_nas] [--out benchmarks/results/bench_core.json]
"""
import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python_tests"))

import nasops  # noqa: E402
from nasops.utils.files import write_json  # noqa: E402
from reference import reference_cost  # noqa: E402  (the tests' pure-Python implementation)


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_trials(space, sampler, targets, seed, cap=50_000_000, batch=65_536):
    """Uniform draws until one rounds to the target, for each target (the paper's baseline)."""
    rng = np.random.SeedSequence(seed)
    out = []
    for target in targets:
        stream = np.random.default_rng(rng.spawn(1)[0])
        trials = 0
        while trials < cap:
            archs = space.sample(batch, seed=int(stream.integers(2**63)))
            hits = np.flatnonzero(np.floor(space.flops(archs) / sampler.step + 0.5) * sampler.step == target)
            if hits.size:
                trials += int(hits[0]) + 1
                break
            trials += batch
        out.append(trials)
    return np.array(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="attentive_nas")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_core.json"))
    parser.add_argument("--naive-targets", type=int, default=1000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    space = nasops.SearchSpace.load(args.space)
    results = {"space": args.space, "python": platform.python_version(),
               "machine": platform.machine(), "cores_used": 1}
    rows = []

    archs = space.sample(1_000_000, seed=0)
    t_cpp = median_time(lambda: space.flops(archs), 5)
    dicts = [a.to_dict() for a in space.decode_all(archs[:20_000])]
    t_py = median_time(lambda: [reference_cost(space.config, d) for d in dicts], 3)
    cpp_rate, py_rate = len(archs) / t_cpp, len(dicts) / t_py
    results["flops"] = {"cpp_archs_per_s": cpp_rate, "python_archs_per_s": py_rate,
                        "speedup": cpp_rate / py_rate}
    rows += [("FLOPs, C++ batched (1M archs)", f"{cpp_rate / 1e6:.2f} M archs/s", ">= 2 M/s"),
             ("FLOPs, pure Python (20k archs)", f"{py_rate / 1e3:.1f} k archs/s", ""),
             ("  speed-up", f"{cpp_rate / py_rate:.0f}x", ">= 200x")]

    t_build = median_time(lambda: nasops.FlopsSampler(space, n_prior=1_000_000, seed=0), 3)
    results["build_prior_1M_s"] = t_build
    rows.append(("Build prior + proposal (1M samples)", f"{t_build:.3f} s", "< 2 s"))

    sampler = nasops.FlopsSampler(space, n_prior=1_000_000, seed=0)
    for label, uniform in (("prior", False), ("uniform over bins", True)):
        s = nasops.FlopsSampler(space, n_prior=1_000_000, seed=0)
        targets = s.sample_target(10_000, uniform_bins=uniform)
        for t in targets:
            s.sample(t)
        per_sample = s.stats["trials"] / s.stats["samples"]
        naive = naive_trials(space, s, targets[: args.naive_targets], seed=1)
        key = "prior" if not uniform else "uniform_bins"
        results[f"trials_{key}"] = {"proposal_trials_per_sample": per_sample,
                                    "fallbacks": s.stats["fallbacks"],
                                    "naive_trials_mean": float(naive.mean()),
                                    "naive_trials_median": float(np.median(naive)),
                                    "naive_targets": len(naive), "targets": len(targets),
                                    "bins": len(s.targets)}
        rows.append((f"Trials/sample, targets from {label} (10k)", f"{per_sample:.2f}",
                     "<= 15 (paper ~12)" if not uniform else ""))
        rows.append((f"  naive uniform rejection, same targets ({len(naive)})",
                     f"{naive.mean():,.0f} (median {np.median(naive):,.0f})", "paper ~50,878"))

    targets = sampler.sample_target(200)
    n_each = 1000

    def constrained():
        for t in targets:
            sampler.sample(t, n=n_each)
    rate = len(targets) * n_each / median_time(constrained, 3)
    results["constrained_samples_per_s"] = rate
    rows.append(("Constrained samples/s (batches of 1000)", f"{rate / 1e3:.0f} k/s", ">= 200 k/s"))
    rate = 1_000_000 / median_time(lambda: space.sample(1_000_000, seed=1), 3)
    results["uniform_samples_per_s"] = rate
    rows.append(("Uniform samples/s", f"{rate / 1e6:.2f} M/s", ""))
    rate = 100_000 / median_time(lambda: sampler.sample_proportional(100_000, by="params"), 3)
    results["proportional_samples_per_s"] = rate
    rows.append(("Params-proportional samples/s", f"{rate / 1e6:.2f} M/s", ""))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>28}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>28}  {target}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
