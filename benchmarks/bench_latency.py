"""Latency tables: how well they predict, how noisy the measurement is, and what the search's
picks measure.

1. accuracy: for each space (small, attentive_nas) and thread count (1, 2), `--runs` separate
   runs, each measuring a fresh table (``LatencyTable.measure``) and checking it on 100 random
   sub-networks measured end to end twice (``latency.check``): the share predicted within
   +-10%, the median and 90th percentile of |error|, with and without the drift correction,
   the parts' sum alone, and the test-retest noise of the measurement itself.
2. picks (attentive_nas, 1 thread, the first run's table): an accuracy predictor whose accuracy
   grows with FLOPs (1,024 synthetic pairs); for each FLOPs budget, the FLOPs pick's predicted
   latency becomes a latency budget, the latency search runs under it and its pick is verified
   end to end (``verify_picks``: measured vs predicted, replaced if over the budget), as
   ``python -m nasops.search --constraint latency`` does.

Results go to benchmarks/results/latency/bench_latency.json after every run, and a rerun skips
what is there (delete the file to measure again).

    python benchmarks/bench_latency.py [--runs 3] [--parts accuracy,picks]
"""
import argparse
import json
import os
import time

import numpy as np
import torch

import nasops
from nasops.predictor import AccuracyPredictor
from nasops.search import evolve
from nasops.search.latency import LatencyTable, check, check_report
from nasops.search.verify import verify_picks
from nasops.utils.files import write_json

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "latency", "bench_latency.json")
TABLES = os.path.join(HERE, "latency_tables")  # (gitignored)


def accuracy_run(space_name: str, threads: int, run: int) -> dict:
    space = nasops.SearchSpace.load(space_name)
    start = time.perf_counter()
    table = LatencyTable.measure(space, threads=threads)
    table_s = time.perf_counter() - start
    os.makedirs(TABLES, exist_ok=True)
    table.save(os.path.join(TABLES, f"{space_name}_{threads}t_run{run}.json"))
    start = time.perf_counter()
    result = check(table, n=100)
    check_s = time.perf_counter() - start
    print(check_report(table, result), flush=True)
    keep = ("error", "error_raw", "error_parts_only", "retest", "retest_raw", "reference_ms",
            "reference_now_ms", "scale", "offsets_ms", "device")
    return {"space": space_name, "threads": threads, "run": run, "parts": table.num_parts,
            "table_seconds": table_s, "check_seconds": check_s,
            **{k: result[k] for k in keep}}


def synthetic_pairs(space):
    """1,024 (architecture, accuracy) pairs whose accuracy grows with log FLOPs, plus noise."""
    X = space.sample(1024, seed=0)
    g = np.random.default_rng(0)
    return X, 0.6 + 0.15 * np.log(space.flops(X) / 200) + g.normal(0, 0.01, len(X))


def picks() -> dict:
    space = nasops.SearchSpace.load("attentive_nas")
    table = LatencyTable.load(os.path.join(TABLES, "attentive_nas_1t_run1.json"), space,
                              device="cpu", threads=1)
    X, y = synthetic_pairs(space)
    predictor = AccuracyPredictor(space).fit(X, y)
    rows = []
    for budget in (300.0, 450.0, 600.0):
        by_flops = evolve(space, predictor, budget, seed=0)
        ms = float(table(by_flops.encoding[None])[0])
        cache = {}
        by_latency = evolve(space, predictor, ms, seed=0, cost=table, cache=cache)
        original = by_latency.encoding.copy()
        [v] = verify_picks([by_latency], table, cache,
                           lambda b: evolve(space, predictor, b, seed=0, cost=table, cache=cache))
        print(f"<= {budget:g} MFLOPs picks {by_flops.flops:.0f} MFLOPs at {ms:.1f} ms predicted "
              f"(res {by_flops.arch.resolution}); <= {ms:.1f} ms picks {by_latency.flops:.0f} "
              f"MFLOPs (res {by_latency.arch.resolution}): {v.summary(ms)}", flush=True)
        rows.append({"flops_budget": budget,
                     "flops_pick": {"mflops": by_flops.flops, "ms": ms, "score": by_flops.score,
                                    "resolution": by_flops.arch.resolution},
                     "latency_budget_ms": ms,
                     "latency_pick": {"mflops": by_latency.flops, "ms": by_latency.cost,
                                      "score": by_latency.score,
                                      "resolution": by_latency.arch.resolution,
                                      "replaced": not np.array_equal(original,
                                                                     by_latency.encoding)},
                     "verification": v.to_dict()})
    return {"device": table.device, "picks": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parts", default="accuracy,picks")
    parser.add_argument("--spaces", default="small,attentive_nas")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    doc = json.load(open(OUT)) if os.path.exists(OUT) else {"accuracy": []}
    doc.update({"torch": torch.__version__, "isa": nasops._C.cpu_isa()})
    done = {(r["space"], r["threads"], r["run"]) for r in doc["accuracy"]}
    parts = args.parts.split(",")
    if "accuracy" in parts:
        for run in range(1, args.runs + 1):
            for space_name in args.spaces.split(","):
                for threads in map(int, args.threads.split(",")):
                    if (space_name, threads, run) in done:
                        continue
                    print(f"-- {space_name}, {threads} thread(s), run {run}", flush=True)
                    doc["accuracy"].append(accuracy_run(space_name, threads, run))
                    write_json(OUT, doc)
    if "picks" in parts:
        doc["picks"] = picks()
        write_json(OUT, doc)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
