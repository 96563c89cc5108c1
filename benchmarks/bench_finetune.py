"""What fine-tuning and int8 do to searched picks.

    python -m nasops.train --run-dir runs/digits    # the default recipe: the README's main job
    python benchmarks/bench_finetune.py --checkpoint runs/digits/checkpoint.pt --budgets 2 3 5 8 --json benchmarks/results/finetune/digits.json
    python benchmarks/bench_finetune.py --checkpoint benchmarks/transfer_runs/fashion-mnist/checkpoint.pt --budgets 3 8 --json benchmarks/results/finetune/fashion-mnist.json

Searches the supernet of --checkpoint under each budget with the README's small evolution
(nasops-search, --quantize int8), then fine-tunes each pick with nasops-finetune for --epochs
epochs, plainly and with --distill. Per pick: the test accuracy as searched, after each
fine-tuning and in int8, with binomial 95% intervals, and the int8 and float32 latency (batch 1,
1 thread, compiled). The searches and fine-tuned networks go to --out (default: the checkpoint's
folder/bench_finetune); the results to --json (default --out/bench_finetune.json), and the
table the docs show (docs/guides/deploy.md) is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from nasops.evaluate import binomial_interval
from nasops.finetune.__main__ import main as finetune_main
from nasops.search.__main__ import main as search_main
from nasops.utils.files import write_json

SEARCH = ["--population", "24", "--mutations", "8", "--crossovers", "8", "--generations", "3",
          "--calib-images", "256", "--cloud", "0", "--no-progress"]


def interval(acc: float, n: int) -> str:
    low, high = binomial_interval(acc, n)
    return f"{100 * acc:.2f} [{100 * low:.1f}, {100 * high:.1f}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--budgets", type=float, nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", help="default: the checkpoint's folder/bench_finetune")
    parser.add_argument("--json", help="default: --out/bench_finetune.json")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(args.checkpoint), "bench_finetune")
    if search_main(["--checkpoint", args.checkpoint, "--budgets", *map(str, args.budgets),
                    "--out", out, "--quantize", "int8", *SEARCH]) != 0:
        return 1
    with open(os.path.join(out, "pareto.json")) as f:
        picks = json.load(f)["results"]
    rows = []
    for pick in picks:
        net_dir = os.path.join(out, f"net_{pick['budget']:g}MF")
        row = {"budget": pick["budget"], "mflops": pick["flops"], "test_images": pick["test_images"],
               "searched": pick["test_acc"],
               "int8": pick.get("int8", {}).get("int8_acc", {}).get("test", float("nan")),
               "latency_ms": pick.get("int8", {}).get("latency_ms",
                                                      {"float32": float("nan"), "int8": float("nan")})}
        for name, extra in (("finetuned", []), ("distilled", ["--distill"])):
            target = f"{net_dir}-{name}"
            if finetune_main([net_dir, "--epochs", str(args.epochs), "--out", target,
                              "--no-progress"] + extra) != 0:
                return 1
            with open(os.path.join(target, "finetune.json")) as f:
                report = json.load(f)
            row[name] = report["after"]["test_acc"]
            row[f"{name}_kept_epoch"] = report["kept_epoch"]
            row[f"{name}_seconds"] = report["seconds"]
        rows.append(row)
    n = rows[0]["test_images"]
    print(f"\n| budget (MFLOPs) | pick (MFLOPs) | test as searched | fine-tuned {args.epochs} epochs "
          f"| with --distill | int8 | latency float32 / int8 (ms) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']:g} | {r['mflops']:.2f} | {interval(r['searched'], n)} | "
              f"{interval(r['finetuned'], n)} (epoch {r['finetuned_kept_epoch']}) | "
              f"{interval(r['distilled'], n)} (epoch {r['distilled_kept_epoch']}) | "
              f"{interval(r['int8'], n)} | {r['latency_ms']['float32']:.2f} / "
              f"{r['latency_ms']['int8']:.2f} |")
    path = args.json or os.path.join(out, "bench_finetune.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path,
               {"checkpoint": args.checkpoint, "epochs": args.epochs, "rows": rows,
                "command": " ".join(["python"] + sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
