"""python -m nasops.finetune RUN/search/net_3MF --epochs 5

Fine-tunes a picked sub-network alone on its run's data: an exported pick (a folder the search
wrote; its meta.json names the architecture and the checkpoint), or --checkpoint with --arch.
The network starts from the pick's exported weights (with --checkpoint and --arch: the
supernet's, with BN re-calibrated on the recipe's calibration images), trains for --epochs (the
recipe's augmentation, label smoothing, SGD and weight decay; cosine learning rate from --lr, a
tenth of the recipe's by default; with --distill, also the recipe's distillation loss from the
supernet's largest sub-network) and keeps the epoch with the best held-out accuracy. Writes to
--out (default: the pick's folder name + "-finetuned") the same files as the search's export
(model.pt2, model.ts, model.onnx, state_dict.pt, meta.json) and finetune.json: held-out and test
accuracy before and after, with 95% intervals, and each epoch's loss and held-out accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import FinetuneOptions, encoding, finetune
from ..evaluate import Evaluator
from ..search.export import describe, export_static
from ..search.quantize import (add_quantize_options, export_int8_measured, int8_summary,
                               int8_unavailable)
from ..train.rundir import load_trained
from ..utils.cli import STAGES, add_import_option, prog as prog_name
from ..utils.registry import import_modules
from ..utils.files import load_tensors, read_json, write_json


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or prog_name("finetune"),
                                     description=__doc__.split("\n\n", 1)[1], epilog=STAGES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pick", nargs="?",
                        help="an exported pick: a net_<budget>MF folder of nasops-search")
    parser.add_argument("--checkpoint", help="RUN/checkpoint.pt (default: the one the pick's "
                                             "meta.json names)")
    parser.add_argument("--arch", help="with --checkpoint and no pick: the architecture as JSON "
                                       "(meta.json's \"arch\" form, or an encoded list)")
    parser.add_argument("--epochs", type=int, default=5, help="default 5")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's / 10)")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--distill", action="store_true",
                        help="add the recipe's distillation loss from the supernet's largest "
                             "sub-network (weighted by --kd-weight, default the recipe's)")
    parser.add_argument("--kd-weight", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: PICK-finetuned, or "
                                      "RUN/finetuned_<MFLOPs>MF with --checkpoint)")
    add_quantize_options(parser, "the fine-tuned network")
    parser.add_argument("--no-progress", action="store_true")
    add_import_option(parser)
    return parser


def _source(args) -> tuple[str, object, str, dict | None]:
    """(checkpoint, architecture, output folder, the pick's exported weights or None) the
    arguments name."""
    if args.pick:
        meta_path = os.path.join(args.pick, "meta.json")
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{args.pick} is not an exported pick: it has no meta.json "
                                    f"(give a net_<budget>MF folder of nasops-search)")
        meta = read_json(meta_path, "exported pick's meta.json")
        if not isinstance(meta, dict) or "arch" not in meta:
            raise ValueError(f"{meta_path} names no architecture (\"arch\"): not a nasops export")
        if args.arch:
            raise ValueError("--arch is for --checkpoint without a pick; the pick names its own")
        checkpoint = args.checkpoint or meta.get("checkpoint")
        if not checkpoint:
            raise ValueError(f"{meta_path} names no checkpoint; give --checkpoint RUN/checkpoint.pt")
        out = args.out or os.path.normpath(args.pick) + "-finetuned"
        weights = load_tensors(os.path.join(args.pick, "state_dict.pt"), "exported state dict")
        return checkpoint, meta["arch"], out, weights
    if not (args.checkpoint and args.arch):
        raise ValueError("give an exported pick (a net_<budget>MF folder), or --checkpoint with "
                         "--arch")
    try:
        arch = json.loads(args.arch)
    except json.JSONDecodeError as e:
        raise ValueError(f"--arch is not JSON ({e}): {args.arch[:80]!r}") from None
    return args.checkpoint, arch, args.out, None


def run(args) -> dict:
    checkpoint, arch, out, weights = _source(args)
    options = FinetuneOptions(args.epochs, args.lr, args.batch_size, args.distill, args.kd_weight,
                              args.seed).check()
    if args.quantize and int8_unavailable():
        raise ImportError(f"--quantize int8: {int8_unavailable()}")
    if not args.max_int8_drop >= 0:
        raise ValueError(f"--max-int8-drop {args.max_int8_drop} must be a number of points >= 0")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    import_modules(args.imports)
    cfg, splits, net = load_trained(checkpoint)
    arch = encoding(net.space, arch)
    if weights is not None:
        try:
            net.extract(arch).load_state_dict(weights)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{args.pick}/state_dict.pt does not fit the architecture in its "
                             f"meta.json: {str(e).strip().splitlines()[0]}") from None
    out = out or os.path.join(os.path.dirname(checkpoint),
                              f"finetuned_{net.space.flops(net.space.decode(arch)):g}MF")
    evaluator = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"])
    static, report = finetune(net, cfg, evaluator, arch, options, not args.no_progress, weights)
    after = report["after"]
    meta = describe(net.space, net.space.decode(arch))
    meta.update({"checkpoint": os.path.abspath(checkpoint), "finetuned_from": args.pick,
                 "holdout_acc": after["holdout_acc"], "test_acc": after["test_acc"]})
    report["export"] = export_static(static, meta, out, splits)
    if args.quantize:
        report["int8"] = export_int8_measured(static, out, evaluator, meta["resolution"],
                                              args.max_int8_drop)
    report.update({"checkpoint": checkpoint, "pick": args.pick, "arch": meta["arch"],
                   "mflops": meta["mflops"]})
    write_json(os.path.join(out, "finetune.json"), report)
    report["out"] = out
    return report


def _print(report: dict) -> None:
    b, a = report["before"], report["after"]
    what = report["pick"] or f"{report['mflops']:.3f} MFLOPs sub-network"
    print(f"fine-tuned {what} for {report['options']['epochs']} epochs ({report['steps']} steps, "
          f"{report['seconds']:.0f} s); kept epoch {report['kept_epoch']} (best held-out)")
    for split in ("holdout", "test"):
        name = "held-out" if split == "holdout" else "test"
        print(f"{name}: {b[f'{split}_acc']:.4f} [{b[f'{split}_ci95'][0]:.3f}, "
              f"{b[f'{split}_ci95'][1]:.3f}] -> {a[f'{split}_acc']:.4f} "
              f"[{a[f'{split}_ci95'][0]:.3f}, {a[f'{split}_ci95'][1]:.3f}] "
              f"({report['gain_points'][split]:+.2f} points)")
    if "int8" in report:
        print("\n".join(int8_summary(report["int8"])))
    files = ["finetune.json", "model.pt2", "model.ts"] + (
        ["model.onnx"] if "onnx" in report["export"] else []) + (
        ["model_int8.pt2"] if "int8" in report else []) + ["state_dict.pt", "meta.json"]
    print(f"wrote {report['out']}/: {', '.join(files)}")
    if "onnx_skipped" in report["export"]:
        print(f"skipped: model.onnx ({report['export']['onnx_skipped']})")


def main(argv=None, prog=None) -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except (ValueError, OSError, TypeError, ImportError, FloatingPointError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
