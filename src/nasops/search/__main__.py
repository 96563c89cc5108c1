"""python -m nasops.search --checkpoint RUN/checkpoint.pt --budgets 5 10 20

Evolutionary search of a trained supernet under each FLOPs budget (MFLOPs), or with --constraint
latency --latency-table TABLE under each latency budget (milliseconds, predicted by the table of
python -m nasops.search.latency), or with --front for the whole accuracy-FLOPs front up to the largest
budget in one run (NSGA-II), from which each budget's pick is taken. The objective is the
BN-calibrated held-out accuracy of the supernet, or with --predictor FILE the predictor's
accuracy. Writes to --out (default RUN/search): pareto.json (per budget: the architecture, FLOPs,
params, cost, objective, and with a checkpoint the measured held-out and test accuracy with their
95% intervals; with --front, the whole front), pareto.png (the front over a cloud of random
sub-networks) and, with a checkpoint, each chosen sub-network exported as a static network
(net_<budget>MF/ or net_<budget>ms/: TorchScript, ONNX when onnx and onnxscript are installed,
state_dict, meta.json).
"""
import argparse
import logging
import os
import sys
import time

import numpy as np

from . import METHODS, SupernetAccuracy, front, pareto
from ..utils import distributed as dist
from ..utils.cli import STAGES, add_import_option, prog as prog_name
from ..utils.cpu import keep_freed_memory
from ..utils.registry import import_modules
from ..evaluate import Evaluator, binomial_interval
from ..train.rundir import load_trained
from .export import export_subnet
from ..utils.files import write_json
from .latency import LatencyTable
from ..utils.plots import MISSING as PLOTS_MISSING, plot_front
from ..predictor import AccuracyPredictor
from ..space import SearchSpace

def main(argv=None, prog=None) -> int:
    doc = __doc__.split("\n\n", 1)[1]
    parser = argparse.ArgumentParser(prog=prog or prog_name("search"), description=doc,
                                     epilog=STAGES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="RUN/checkpoint.pt of nasops-train")
    parser.add_argument("--predictor", help="predictor file: search by predicted accuracy")
    parser.add_argument("--space", help="search space, when searching with --predictor and no "
                                        "--checkpoint")
    parser.add_argument("--budgets", type=float, nargs="+", required=True,
                        help="MFLOPs, or milliseconds with --constraint latency")
    parser.add_argument("--constraint", choices=["flops", "latency"], default="flops")
    parser.add_argument("--latency-table", help="with --constraint latency: the table "
                                                "(python -m nasops.search.latency)")
    parser.add_argument("--latency-device",
                        help="refuse a latency table not measured on this device (cpu, cuda, or "
                             "the table's full device name)")
    parser.add_argument("--latency-threads", type=int,
                        help="refuse a latency table not measured with this many threads")
    parser.add_argument("--front", action="store_true",
                        help="search the whole front up to the largest budget in one run "
                             "(NSGA-II) and pick each budget's sub-network from it")
    parser.add_argument("--evaluations", type=int, default=5000,
                        help="with --front: objective evaluations (default 5000)")
    parser.add_argument("--method", choices=METHODS, default="repair",
                        help="repair (default): children over the budget are repaired, and a "
                             "local search polishes the result; paper: the AttentiveNAS protocol")
    parser.add_argument("--polish", type=int,
                        help="at most this many evaluations in the final local search (method "
                             "repair; default: a quarter of the evolution's)")
    parser.add_argument("--out", help="output directory (default: RUN/search, or ./search)")
    parser.add_argument("--population", type=int,
                        help="default 512 (256 with --front)")
    parser.add_argument("--mutations", type=int, default=128)
    parser.add_argument("--crossovers", type=int, default=128)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--mutate-prob", type=float, default=0.1)
    parser.add_argument("--cloud", type=int,
                        help="random sub-networks in the plot (default: 256 with --predictor, "
                             "64 when each costs a supernet evaluation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-images", type=int,
                        help="training images for BN re-calibration (default: the run's recipe)")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    add_import_option(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nasops").setLevel(logging.INFO)  # (not the INFO of every library)
    prog = parser.prog
    try:
        import_modules(args.imports)
        device = dist.init_from_env()
        evaluator = splits = None
        if args.checkpoint:
            cfg, splits, net = load_trained(args.checkpoint, device)
            space = net.space
            keep_freed_memory()
            evaluator = Evaluator(net, splits, cfg["eval_batch_size"],
                                  args.calib_images or cfg["calib_images"], device)
        elif args.predictor and args.space:
            space = SearchSpace.load(args.space)
        else:
            raise ValueError("give --checkpoint (search by supernet accuracy, or with --predictor "
                             "by predicted accuracy), or --predictor with --space")
        if args.predictor:
            objective, ylabel = AccuracyPredictor.load(args.predictor, space), "predicted accuracy"
        else:
            objective = SupernetAccuracy(evaluator, "holdout")  # (evolve shows the progress)
            ylabel = "held-out accuracy (BN-calibrated)"
        if args.cloud is None:
            args.cloud = 256 if args.predictor else 64
        cost, unit, constraint = None, "MFLOPs", {"kind": "flops", "unit": "MFLOPs"}
        if args.constraint == "latency":
            if not args.latency_table:
                raise ValueError("--constraint latency needs --latency-table (measure one with "
                                 "python -m nasops.search.latency)")
            if args.front:
                raise ValueError("--front searches the accuracy-FLOPs front; with --constraint "
                                 "latency, search per budget (leave out --front)")
            cost = LatencyTable.load(args.latency_table, space, args.latency_device,
                                     args.latency_threads)
            unit = cost.unit
            constraint = {"kind": "latency", "unit": unit, "table": args.latency_table,
                          "device": cost.device, "threads": cost.threads, "batch": cost.batch}
        elif args.latency_table:
            raise ValueError("--latency-table is for --constraint latency")
        suffix = "MF" if cost is None else unit
        out = args.out or os.path.join(os.path.dirname(args.checkpoint or ""), "search")
        start = time.perf_counter()
        found = None
        if args.front:
            smallest = space.flops(space.min_arch())
            found = front(space, objective, (smallest, max(args.budgets)),
                          evaluations=args.evaluations, population=args.population or 256,
                          mutate_prob=args.mutate_prob, seed=args.seed,
                          progress=not args.no_progress)
            results = [found.best_under(b) for b in sorted(args.budgets)]
        else:
            results = pareto(space, objective, args.budgets, seed=args.seed,
                             population=args.population or 512, mutations=args.mutations,
                             crossovers=args.crossovers, generations=args.generations,
                             mutate_prob=args.mutate_prob, method=args.method,
                             polish=args.polish, cost=cost, progress=not args.no_progress)
        searched = time.perf_counter() - start
        cloud = space.sample(args.cloud, seed=args.seed + 1) if args.cloud > 0 else np.zeros((0, space.dim), np.int64)
        if isinstance(objective, SupernetAccuracy):
            objective.progress = not args.no_progress
        cloud_scores = np.asarray(objective(cloud), dtype=float) if len(cloud) else np.zeros(0)
        entries, skipped = [], set()
        for r in results:
            entry = r.to_dict()
            if evaluator is not None:
                for split in ("holdout", "test"):
                    acc = float(evaluator.accuracy(r.encoding, split)[0])
                    n = len(getattr(splits, split))
                    low, high = binomial_interval(acc, n)
                    entry[f"{split}_acc"], entry[f"{split}_images"] = acc, n
                    entry[f"{split}_ci95"] = [float(low), float(high)]
                if not args.no_export and dist.rank() == 0:
                    evaluator.calibrate(r.encoding)
                    extra = {"holdout_acc": entry["holdout_acc"], "test_acc": entry["test_acc"],
                             "checkpoint": args.checkpoint}
                    entry["export"] = export_subnet(net, r.encoding,
                                                    os.path.join(out, f"net_{r.budget:g}{suffix}"),
                                                    splits, extra)
                    if "onnx_skipped" in entry["export"]:
                        skipped.add(f"model.onnx ({entry['export']['onnx_skipped']})")
            entries.append(entry)
    except (ValueError, FileNotFoundError, TypeError, ImportError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    if dist.rank() == 0:
        os.makedirs(out, exist_ok=True)
        measured = evaluator is not None and not args.predictor
        cloud_cost = (space.flops(cloud) if cost is None else cost(cloud)) if len(cloud) else []
        doc = {"space": space.name, "objective": ylabel, "constraint": constraint,
               "search": "front" if args.front else args.method,
               "source": args.checkpoint or args.predictor, "results": entries,
               "cloud": {"encodings": cloud.tolist(), "mflops": space.flops(cloud).tolist() if len(cloud) else [],
                         "cost": np.asarray(cloud_cost).tolist(), "scores": cloud_scores.tolist()}}
        if found is not None:
            doc["front"] = found.to_dict()
        if measured:
            cloud_ci = binomial_interval(cloud_scores, len(splits.holdout))
            doc["cloud"]["ci95"] = np.stack(cloud_ci, 1).tolist()
        path = os.path.join(out, "pareto.json")
        write_json(path, doc)
        title = (f"{space.name}: the best sub-network found under each "
                 f"{'FLOPs' if cost is None else 'latency'} budget")
        intervals = {}
        if measured:
            ylabel = f"held-out accuracy, {len(splits.holdout)} images (BN re-calibrated)"
            title += "\nbars: binomial 95% intervals of each measurement"
            intervals = {"cloud_intervals": cloud_ci,
                         "front_intervals": ([e["holdout_ci95"][0] for e in entries],
                                             [e["holdout_ci95"][1] for e in entries])}
        if found is not None:
            intervals["front"] = (found.flops, found.scores)
        plotted = plot_front(os.path.join(out, "pareto.png"), cloud_cost, cloud_scores, results,
                             ylabel, title, unit=unit, **intervals)
        if not plotted:
            skipped.add(f"pareto.png ({PLOTS_MISSING})")
        evaluations = found.evaluations if found is not None else sum(r.evaluations for r in results)
        how = f"one front search (NSGA-II, {len(found.flops)} sub-networks on the front)" \
            if found is not None else f"method {args.method}"
        print(f"searched {len(entries)} budget{'s' * (len(entries) > 1)}, {how}: "
              f"{evaluations} sub-networks evaluated in {searched:.0f} s")
        for e in entries:
            extra = ""
            if "test_acc" in e:
                extra = (f", held-out {e['holdout_acc']:.4f} [{e['holdout_ci95'][0]:.3f}, "
                         f"{e['holdout_ci95'][1]:.3f}], test {e['test_acc']:.4f}")
            latency = f", {e['cost']:.2f} ms" if cost is not None else ""
            print(f"<= {e['budget']:g} {unit}: {e['flops']:.3f} MFLOPs{latency}, "
                  f"{e['params']:.3f} M params, objective {e['score']:.4f}{extra}")
        written = ["pareto.json"] + (["pareto.png"] if plotted else [])
        if evaluator is not None and not args.no_export:
            nets = ", ".join(f"net_{e['budget']:g}{suffix}" for e in entries)
            onnx = all("onnx" in e["export"] for e in entries)
            formats = "TorchScript, " + ("ONNX, " if onnx else "") + "state dict, meta.json"
            written.append(f"the exported networks {nets} ({formats})")
        print(f"wrote {out}/: {', '.join(written)}")
        if skipped:
            print("skipped: " + "; ".join(sorted(skipped)))
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
