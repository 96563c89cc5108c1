"""python -m nasops.search --checkpoint RUN/checkpoint.pt --budgets 5 10 20

Evolutionary search (or with --method nao, Neural Architecture Optimization) of a trained
supernet under each FLOPs budget (MFLOPs), or with --constraint
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
import dataclasses
import logging
import os
import sys
import time

import numpy as np

from . import METHODS, EvolveOptions, NAOOptions, SupernetAccuracy, evolve, front, nao, pareto
from ..utils import distributed as dist
from ..utils.cli import STAGES, add_import_option, prog as prog_name
from ..utils.cpu import keep_freed_memory
from ..utils.registry import import_modules
from ..evaluate import Evaluator, binomial_interval
from ..train.rundir import load_trained
from .export import describe, export_static
from .quantize import (add_quantize_options, export_int8_measured, int8_summary,
                       int8_unavailable)
from ..utils.files import write_json
from .latency import LatencyTable, measurer
from .verify import verify_picks
from ..utils.plots import MISSING as PLOTS_MISSING, Points, plot_front
from ..predictor import AccuracyPredictor
from ..space import SearchSpace

def _parser(prog: str | None) -> argparse.ArgumentParser:
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
    parser.add_argument("--no-verify", action="store_true",
                        help="with --constraint latency: do not time the picks end to end here "
                             "(for a table measured on another device)")
    parser.add_argument("--front", action="store_true",
                        help="search the whole front (accuracy vs FLOPs, or vs predicted "
                             "latency) up to the largest budget in one run (NSGA-II) and pick "
                             "each budget's sub-network from it")
    parser.add_argument("--evaluations", type=int,
                        help="objective evaluations: with --front (default 5000), or with "
                             "--method nao per budget (default 1000)")
    parser.add_argument("--method", choices=METHODS + ("nao",), default="repair",
                        help="repair (default): evolution whose children over the budget are "
                             "repaired, and a local search polishes the result; paper: the "
                             "AttentiveNAS protocol; nao: Neural Architecture Optimization "
                             "(Balanced NAO's search: an encoder, predictor and decoder trained "
                             "on the evaluated sub-networks propose new ones)")
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
    add_quantize_options(parser, "each pick")
    parser.add_argument("--no-progress", action="store_true")
    add_import_option(parser)
    return parser


@dataclasses.dataclass
class _Search:
    """What one search command works with and produces."""
    space: SearchSpace
    objective: object
    ylabel: str
    net: object = None        # the trained supernet (with --checkpoint)
    splits: object = None
    evaluator: Evaluator | None = None
    cost: LatencyTable | None = None  # None: FLOPs
    unit: str = "MFLOPs"
    constraint: dict = dataclasses.field(default_factory=lambda: {"kind": "flops",
                                                                  "unit": "MFLOPs"})
    results: list = dataclasses.field(default_factory=list)
    found: object = None      # the FrontResult with --front
    cache: dict = dataclasses.field(default_factory=dict)  # objective values by encoding
    measure: object = None    # end-to-end milliseconds here, to verify latency picks
    verified: list | None = None  # a Verification per pick
    seconds: float = 0.0

    @property
    def suffix(self) -> str:  # of the exported networks' folder names
        return "MF" if self.cost is None else self.unit

    @property
    def measured(self) -> bool:  # the objective is the supernet's measured accuracy
        return self.evaluator is not None and isinstance(self.objective, SupernetAccuracy)


def _objective(args, device) -> _Search:
    """The space and the objective the arguments name: the supernet's accuracy (--checkpoint) or
    the predictor's (--predictor)."""
    if args.checkpoint:
        cfg, splits, net = load_trained(args.checkpoint, device)
        keep_freed_memory()
        evaluator = Evaluator(net, splits, cfg["eval_batch_size"],
                              args.calib_images or cfg["calib_images"], device)
        search = _Search(net.space, SupernetAccuracy(evaluator, "holdout"),
                         "held-out accuracy (BN-calibrated)", net, splits, evaluator)
    elif args.predictor and args.space:
        search = _Search(SearchSpace.load(args.space), None, "")
    else:
        raise ValueError("give --checkpoint (search by supernet accuracy, or with --predictor "
                         "by predicted accuracy), or --predictor with --space")
    if args.predictor:
        search.objective = AccuracyPredictor.load(args.predictor, search.space)
        search.ylabel = "predicted accuracy"
    return search


def _constraint(args, search: _Search) -> None:
    """The latency table that --constraint latency names (FLOPs otherwise)."""
    if args.constraint == "latency":
        if not args.latency_table:
            raise ValueError("--constraint latency needs --latency-table (measure one with "
                             "python -m nasops.search.latency)")
        cost = LatencyTable.load(args.latency_table, search.space, args.latency_device,
                                 args.latency_threads)
        search.cost, search.unit = cost, cost.unit
        search.constraint = {"kind": "latency", "unit": cost.unit, "table": args.latency_table,
                             "device": cost.device, "threads": cost.threads, "batch": cost.batch,
                             "verified": not args.no_verify}
        if not args.no_verify:  # (refuses a table from another device before the search)
            search.measure = measurer(cost, "--no-verify")
    elif args.latency_table:
        raise ValueError("--latency-table is for --constraint latency")
    elif args.no_verify:
        raise ValueError("--no-verify is for --constraint latency (FLOPs need no verifying)")


def _run(args, search: _Search) -> None:
    """The search itself: one front (--front) or an evolution per budget."""
    space, start = search.space, time.perf_counter()
    knobs = {}
    if args.method == "nao":
        options, search_one = NAOOptions(), nao
        knobs["evaluations"] = 1000 if args.evaluations is None else args.evaluations
    else:
        options = EvolveOptions(population=args.population or 512, mutations=args.mutations,
                                crossovers=args.crossovers, generations=args.generations,
                                mutate_prob=args.mutate_prob, method=args.method,
                                polish=args.polish)
        search_one = evolve
    if args.front:
        smallest = float((search.cost or space.flops)(space.encode(space.min_arch())[None])[0])
        search.found = front(space, search.objective, (smallest, max(args.budgets)),
                             evaluations=args.evaluations or 5000,
                             population=args.population or 256,
                             mutate_prob=args.mutate_prob, seed=args.seed, cost=search.cost,
                             cache=search.cache, progress=not args.no_progress)
        search.results = [search.found.best_under(b) for b in sorted(args.budgets)]
    else:
        search.results = pareto(space, search.objective, args.budgets, seed=args.seed,
                                options=options, cost=search.cost, cache=search.cache,
                                progress=not args.no_progress, **knobs)
    search.seconds = time.perf_counter() - start
    if search.cost is not None and not args.no_verify:
        def research(budget):  # (shares the cache, so earlier evaluations are free)
            return search_one(space, search.objective, budget, options=options, seed=args.seed,
                              cost=search.cost, cache=search.cache,
                              progress=not args.no_progress, **knobs)
        search.verified = verify_picks(search.results, search.cost, search.cache, research,
                                       search.measure)


def _measure_and_export(args, search: _Search, out: str) -> tuple[list[dict], set[str]]:
    """Each pick as a dict, with its held-out and test accuracy (and 95% intervals) and, unless
    --no-export, its exported network; and the outputs skipped, with why."""
    entries, skipped = [], set()
    for i, r in enumerate(search.results):
        entry = r.to_dict()
        if search.verified is not None:
            entry["verification"] = search.verified[i].to_dict()
        if search.evaluator is not None:
            for split in ("holdout", "test"):
                acc = float(search.evaluator.accuracy(r.encoding, split)[0])
                n = len(getattr(search.splits, split))
                low, high = binomial_interval(acc, n)
                entry[f"{split}_acc"], entry[f"{split}_images"] = acc, n
                entry[f"{split}_ci95"] = [float(low), float(high)]
            if not args.no_export and dist.rank() == 0:
                resolution = search.evaluator.calibrate(r.encoding)
                static = search.net.extract(r.encoding).eval()  # (once: exported, then quantized)
                meta = describe(search.space, search.net.active_arch)
                meta.update({"holdout_acc": entry["holdout_acc"], "test_acc": entry["test_acc"],
                             "checkpoint": os.path.abspath(args.checkpoint)})  # (for finetune)
                net_dir = os.path.join(out, f"net_{r.budget:g}{search.suffix}")
                entry["export"] = export_static(static, meta, net_dir, search.splits)
                if "onnx_skipped" in entry["export"]:
                    skipped.add(f"model.onnx ({entry['export']['onnx_skipped']})")
                if args.quantize:
                    threads = search.cost.threads if search.cost is not None else 1
                    try:
                        entry["int8"] = export_int8_measured(static, net_dir, search.evaluator,
                                                             resolution, args.max_int8_drop,
                                                             threads)
                    except Exception as e:  # (the float32 files and the search's results stay)
                        first = (str(e).strip().splitlines() or [""])[0][:300]
                        entry["int8_skipped"] = f"{type(e).__name__}: {first}"
                        skipped.add(f"model_int8.pt2 of net_{r.budget:g}{search.suffix} "
                                    f"({entry['int8_skipped']})")
        entries.append(entry)
    return entries, skipped


def _check_args(args) -> None:
    """Errors of argument combinations, before anything runs."""
    if args.front and args.method == "nao":
        raise ValueError("--front is its own search (NSGA-II); --method nao searches per budget")
    if args.evaluations is not None and args.evaluations < 1:
        raise ValueError(f"--evaluations {args.evaluations} must be >= 1")
    if args.quantize and (args.no_export or not args.checkpoint):
        raise ValueError("--quantize int8 quantizes the exported picks: it needs --checkpoint "
                         "and no --no-export")
    if args.quantize and int8_unavailable():
        raise ImportError(f"--quantize int8: {int8_unavailable()}")
    if args.max_int8_drop < 0 or args.max_int8_drop != args.max_int8_drop:
        raise ValueError(f"--max-int8-drop {args.max_int8_drop} must be a number of points >= 0")


def _cloud(args, search: _Search) -> tuple[np.ndarray, np.ndarray]:
    """Random sub-networks and their objective values, for the plot."""
    n = args.cloud if args.cloud is not None else (256 if args.predictor else 64)
    if n <= 0:
        return np.zeros((0, search.space.dim), np.int64), np.zeros(0)
    cloud = search.space.sample(n, seed=args.seed + 1)
    if isinstance(search.objective, SupernetAccuracy):
        search.objective.progress = not args.no_progress
    return cloud, np.asarray(search.objective(cloud), dtype=float)


def _write(args, search: _Search, entries: list[dict], cloud, cloud_scores, out: str) -> bool:
    """pareto.json and pareto.png; whether the plot was drawn."""
    space, cost = search.space, search.cost
    os.makedirs(out, exist_ok=True)
    cloud_cost = (space.flops(cloud) if cost is None else cost(cloud)) if len(cloud) else []
    doc = {"space": space.name, "objective": search.ylabel, "constraint": search.constraint,
           "search": "front" if args.front else args.method,
           "source": args.checkpoint or args.predictor, "results": entries,
           "cloud": {"encodings": cloud.tolist(),
                     "mflops": space.flops(cloud).tolist() if len(cloud) else [],
                     "cost": np.asarray(cloud_cost).tolist(), "scores": cloud_scores.tolist()}}
    if search.found is not None:
        doc["front"] = search.found.to_dict()
    title = (f"{space.name}: the best sub-network found under each "
             f"{'FLOPs' if cost is None else 'latency'} budget")
    ylabel, cloud_points, pick_intervals = search.ylabel, Points(cloud_cost, cloud_scores), None
    if search.measured:
        cloud_points.intervals = binomial_interval(cloud_scores, len(search.splits.holdout))
        doc["cloud"]["ci95"] = np.stack(cloud_points.intervals, 1).tolist()
        ylabel = f"held-out accuracy, {len(search.splits.holdout)} images (BN re-calibrated)"
        title += "\nbars: binomial 95% intervals of each measurement"
        pick_intervals = ([e["holdout_ci95"][0] for e in entries],
                          [e["holdout_ci95"][1] for e in entries])
    write_json(os.path.join(out, "pareto.json"), doc)
    found = None if search.found is None else Points(search.found.flops, search.found.scores)
    return plot_front(os.path.join(out, "pareto.png"), cloud_points, search.results,
                      pick_intervals, found, ylabel=ylabel, title=title, unit=search.unit)


def _report(args, search: _Search, entries: list[dict], out: str, plotted: bool,
            skipped: set[str]) -> None:
    found, results = search.found, search.results
    evaluations = found.evaluations if found is not None else sum(r.evaluations for r in results)
    how = f"one front search (NSGA-II, {len(found.flops)} sub-networks on the front)" \
        if found is not None else f"method {args.method}"
    print(f"searched {len(entries)} budget{'s' * (len(entries) > 1)}, {how}: "
          f"{evaluations} sub-networks evaluated in {search.seconds:.0f} s")
    for e in entries:
        extra = ""
        if "test_acc" in e:
            extra = (f", held-out {e['holdout_acc']:.4f} [{e['holdout_ci95'][0]:.3f}, "
                     f"{e['holdout_ci95'][1]:.3f}], test {e['test_acc']:.4f}")
        latency = f", {e['cost']:.2f} ms" if search.cost is not None else ""
        print(f"<= {e['budget']:g} {search.unit}: {e['flops']:.3f} MFLOPs{latency}, "
              f"{e['params']:.3f} M params, objective {e['score']:.4f}{extra}")
        if "verification" in e:
            print("   " + search.verified[entries.index(e)].summary(e["budget"]))
        if "int8" in e:
            print("\n".join("   " + line for line in int8_summary(e["int8"])))
    written = ["pareto.json"] + (["pareto.png"] if plotted else [])
    if search.evaluator is not None and not args.no_export:
        nets = ", ".join(f"net_{e['budget']:g}{search.suffix}" for e in entries)
        onnx = all("onnx" in e["export"] for e in entries)
        formats = ("torch.export program, TorchScript, " + ("ONNX, " if onnx else "")
                   + ("int8 program, " if args.quantize else "") + "state dict, meta.json")
        written.append(f"the exported networks {nets} ({formats})")
    print(f"wrote {out}/: {', '.join(written)}")
    if skipped:
        print("skipped: " + "; ".join(sorted(skipped)))


def main(argv=None, prog=None) -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nasops").setLevel(logging.INFO)  # (not the INFO of every library)
    out = args.out or os.path.join(os.path.dirname(args.checkpoint or ""), "search")
    try:
        _check_args(args)
        import_modules(args.imports)
        device = dist.init_from_env()
        search = _objective(args, device)
        _constraint(args, search)
        _run(args, search)
        cloud, cloud_scores = _cloud(args, search)
        entries, skipped = _measure_and_export(args, search, out)
        plotted = dist.rank() == 0 and _write(args, search, entries, cloud, cloud_scores, out)
    except (ValueError, OSError, TypeError, ImportError, dist.RankLost) as e:  # (OSError: its file)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    if dist.rank() == 0:
        if not plotted:
            skipped.add(f"pareto.png ({PLOTS_MISSING})")
        _report(args, search, entries, out, plotted, skipped)
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
