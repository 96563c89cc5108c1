"""Balanced NAO on real data: NAO against the evolution on a trained supernet, and Alg. 1 end to end.

    python benchmarks/bench_nao.py --parts search   # uniform supernet, 2 seeds of searches (~45 min)
    python benchmarks/bench_nao.py --parts alg1     # balanced-nao and balanced runs + picks (~45 min)
    python benchmarks/bench_nao.py --ci             # the minutes-long version (digits)

Fashion-MNIST, the small_wide space and the study's recipe (benchmarks/study.py: 6 epochs of 128
on 30,000 images, 5,000 held out; the 10,000 test images stay apart).

search: on the study's uniform supernet, at 1/2/4/8 MFLOPs, the repairing evolution (population
32, 8 mutations, 8 crossovers, 5 generations, polish) and NAO at exactly the evaluations the
evolution made, both scored by the supernet's BN-calibrated held-out accuracy: each pick's test
accuracy with its Wilson 95% interval, per seed.

alg1: Balanced NAO's Alg. 1 (strategy balanced-nao, budgets 1/2/4/8, 4 rounds, a pool of 100)
trained with the uniform run's recipe and steps; its picks against the two-stage picks (the
evolution above on the uniform supernet, and the same on a balanced supernet) at the same
budgets, test accuracy with intervals.

Runs are kept in --runs-dir and resumed, and search rows are kept as they finish, so an
interrupted benchmark continues (and a larger --seeds adds only the new seeds). Results:
benchmarks/results/nao/bench_nao.json, and the picks' table in bench_nao.md beside it.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study  # noqa: E402  (the study's recipe)

from nasops.evaluate import Evaluator, binomial_interval  # noqa: E402
from nasops.search import NAOOptions, SupernetAccuracy, evolve, nao  # noqa: E402
from nasops.train import loop as train_mod  # noqa: E402
from nasops.train.rundir import load_trained  # noqa: E402
from nasops.utils.files import write_json, write_text  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVOLUTION = dict(population=32, mutations=8, crossovers=8, generations=5)
NAO_SEARCH = dict(pool=32, seeds=16, new=16)
ALG1 = dict(nao_rounds=4, nao_pool=100, nao_seeds=50, nao_new=50)
CI_BUDGETS = [2.5, 4.0]  # (the small space: 1.9-14 MFLOPs)
CI_EVOLUTION = dict(population=8, mutations=2, crossovers=2, generations=2)
CI_NAO_SEARCH = dict(pool=8, seeds=4, new=4)
CI_ALG1 = dict(nao_rounds=2, nao_pool=12, nao_seeds=4, nao_new=4)


def log(msg):
    print(f"[bench_nao {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_json(path):
    with open(path) as f:
        return json.load(f)


class Bench:
    def __init__(self, args):
        self.ci = args.ci
        base = dict(study.CI if args.ci else study.FULL)
        if args.data_dir:
            base["data_dir"] = args.data_dir
        self.base = base
        self.budgets = CI_BUDGETS if args.ci else study.FULL_STUDY["budgets"]
        self.seeds = args.seeds
        self.runs_dir = args.runs_dir
        os.makedirs(self.runs_dir, exist_ok=True)

    def config(self, strategy: str) -> dict:
        cfg = dict(train_mod.DEFAULTS, **self.base, strategy=strategy)
        if strategy == "balanced-nao":
            cfg.update(CI_ALG1 if self.ci else ALG1, nao_budgets=list(self.budgets))
        return train_mod.check_config(cfg)

    def trained(self, strategy: str) -> str:
        """The run of `strategy` (trained, or resumed, to the end); its checkpoint path."""
        run = os.path.join(self.runs_dir, strategy)
        ckpt = os.path.join(run, "checkpoint.pt")
        if not os.path.exists(os.path.join(run, "final.json")):
            resume = os.path.exists(ckpt)
            log(f"training {strategy}" + (" (resumed)" if resume else ""))
            start = time.time()
            result = train_mod.train(self.config(strategy), run, resume=resume, progress=False)
            if "interrupted" in result:
                raise SystemExit(f"training {strategy} was interrupted; run again to resume")
            times = os.path.join(run, "bench_times.json")
            spent = read_json(times)["train_s"] if os.path.exists(times) else 0.0
            write_json(times, {"train_s": spent + time.time() - start})
        return ckpt

    def search(self, strategy: str, methods=("repair", "nao")) -> dict:
        """Per budget and seed: the evolution's pick and (in methods) NAO's at equal evaluations,
        each with held-out and test accuracy and intervals."""
        path = os.path.join(self.runs_dir, strategy, f"bench_search_{'_'.join(methods)}.json")
        # rows are kept as they finish: an interrupted benchmark, or one with more seeds, goes on
        rows = read_json(path)["rows"] if os.path.exists(path) else []
        todo = [(budget, seed) for budget in self.budgets for seed in range(self.seeds)
                if not any(r["budget"] == budget and r["seed"] == seed for r in rows)]
        ckpt = self.trained(strategy)
        if todo:
            cfg, splits, net = load_trained(ckpt)
            evaluator = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"])
            objective = SupernetAccuracy(evaluator, "holdout")
        for budget, seed in todo:
            cache = {}  # (each search pays for its own evaluations)
            start = time.time()
            r = evolve(net.space, objective, budget, seed=seed, cache=cache,
                       **(CI_EVOLUTION if self.ci else EVOLUTION))
            picks = {"repair": (r, time.time() - start)}
            if "nao" in methods:
                start = time.time()
                n = nao(net.space, objective, budget, evaluations=r.evaluations, seed=seed,
                        cache={}, options=NAOOptions(**(CI_NAO_SEARCH if self.ci else NAO_SEARCH)))
                picks["nao"] = (n, time.time() - start)
            for method, (x, seconds) in picks.items():
                rows.append({"budget": budget, "seed": seed, "method": method,
                             "evaluations": x.evaluations, "seconds": seconds,
                             **measured(evaluator, splits, x.encoding, x.flops)})
            log(f"{strategy} <= {budget:g} MF seed {seed}: " + ", ".join(
                f"{m} {row['holdout_acc']:.4f}/{row['test_acc']:.4f}"
                for m, row in zip(picks, rows[-len(picks):])))
            write_json(path, {"checkpoint": ckpt, "rows": rows})
        return {"checkpoint": os.path.relpath(ckpt, ROOT),
                "rows": sorted(rows, key=lambda r: (r["budget"], r["seed"]))}

    def alg1(self) -> dict:
        """Balanced NAO's own picks (its pareto.json), measured on its final weights."""
        ckpt = self.trained("balanced-nao")
        run = os.path.dirname(ckpt)
        picks = read_json(os.path.join(run, "pareto.json"))["results"]
        rounds = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))
                  if '"event": "nao"' in line]
        return {"picks": [{"budget": p["budget"], "flops": p["flops"],
                           **{k: p[k] for k in ("holdout_acc", "test_acc", "test_ci95",
                                                "holdout_ci95")}} for p in picks],
                "rounds": rounds, "steps": read_json(os.path.join(run, "final.json"))["steps"],
                "train_s": read_json(os.path.join(run, "bench_times.json"))["train_s"]}


def measured(evaluator, splits, encoding, flops) -> dict:
    out = {"flops": float(flops)}
    for split in ("holdout", "test"):
        acc = float(evaluator.accuracy(encoding, split)[0])
        low, high = binomial_interval(acc, len(getattr(splits, split)))
        out.update({f"{split}_acc": acc, f"{split}_ci95": [float(low), float(high)]})
    return out


def table(results: dict) -> str:
    """The picks per budget, one column per way of getting them: test accuracy [Wilson 95%]
    (held-out accuracy, the objective; MFLOPs), one entry per seed; then each column's mean test
    accuracy minus the first column's, in points."""
    columns = {}
    for key, name in (("search_uniform", "uniform"), ("search_balanced", "balanced")):
        for row in results.get(key, {}).get("rows", []):
            method = "evolution" if row["method"] == "repair" else "NAO"
            columns.setdefault(f"{name} + {method}", {}).setdefault(row["budget"], []).append(row)
    for pick in results.get("alg1", {}).get("picks", []):
        columns.setdefault("Alg. 1 (balanced-nao)", {}).setdefault(pick["budget"], []).append(pick)
    if not columns:
        return ""
    budgets = sorted({b for col in columns.values() for b in col})
    lines = ["| MFLOPs | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for budget in budgets:
        cells = ["; ".join(f"{r['test_acc']:.4f} [{r['test_ci95'][0]:.4f}, {r['test_ci95'][1]:.4f}]"
                           f" ({r['holdout_acc']:.4f}; {r['flops']:.2f})" for r in col.get(budget, []))
                 for col in columns.values()]
        lines.append(f"| <= {budget:g} | " + " | ".join(cells) + " |")
    names = list(columns)
    for ref, others in ((names[0], names[1:]), ("balanced + evolution", ["Alg. 1 (balanced-nao)"])):
        if ref not in columns or not all(o in columns for o in others):
            continue
        lines += ["", f"Mean test accuracy minus {ref}'s, points, +- the picks' binomial 95% "
                  "half-widths combined in quadrature (no seed-to-seed spread):", "",
                  "| MFLOPs | " + " | ".join(others) + " |", "|---" * (len(others) + 1) + "|"]
        for budget in budgets:
            cells = [difference(columns[o].get(budget, []), columns[ref].get(budget, []))
                     for o in others]
            lines.append(f"| <= {budget:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def difference(rows: list, ref: list) -> str:
    if not rows or not ref:
        return ""
    def mean_and_half(rs):
        half = np.mean([(r["test_ci95"][1] - r["test_ci95"][0]) / 2 for r in rs]) / np.sqrt(len(rs))
        return np.mean([r["test_acc"] for r in rs]), half
    (a, ha), (b, hb) = mean_and_half(rows), mean_and_half(ref)
    return f"{100 * (a - b):+.2f} +- {100 * np.hypot(ha, hb):.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="search,alg1")
    parser.add_argument("--seeds", type=int, default=2, help="search seeds per budget")
    parser.add_argument("--ci", action="store_true")
    parser.add_argument("--data-dir", help="Fashion-MNIST directory (default: the Debian one)")
    parser.add_argument("--runs-dir", default=os.path.join(ROOT, "benchmarks", "nao_runs"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "nao",
                                                      "bench_nao.json"))
    args = parser.parse_args()
    bench = Bench(args)
    results = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "ci": args.ci}
    if os.path.exists(args.out):
        results = {**read_json(args.out), **results}
    parts = args.parts.split(",")
    if "search" in parts:
        results["search_uniform"] = bench.search("uniform")
    if "alg1" in parts:
        results["alg1"] = bench.alg1()
        results["search_balanced"] = bench.search("balanced", methods=("repair",))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, results)
    write_text(os.path.splitext(args.out)[0] + ".md", table(results))
    print(json.dumps({k: v for k, v in results.items() if k not in ("search_uniform",
                                                                 "search_balanced")},
                     indent=1)[:3000])
    print(table(results))
    log(f"wrote {args.out} and its table (.md)")


if __name__ == "__main__":
    main()
