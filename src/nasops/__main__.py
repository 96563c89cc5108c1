"""`nasops` (or `python -m nasops`): the stages as sub-commands, and a search-space tool.

    nasops train [key=value ...]          the same as nasops-train and python -m nasops.train
    nasops search --checkpoint ... --budgets ...
    nasops space attentive_nas            summary and FLOPs prior of a search space
    nasops space attentive_nas --target 400 -n 3     3 sub-networks at ~400 MFLOPs (JSON)
    nasops space small --proportional params -n 2    drawn in proportion to model size
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys

from .utils.cli import COMMANDS, STAGES


def usage(prog: str) -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} COMMAND [ARGS ...]", "",
             "Two-stage weight-sharing NAS: train one supernet, then search it for the best "
             "sub-networks under each FLOPs budget.", "", "commands:"]
    lines += [f"  {name:<{width}}  {purpose}" for name, (_, _, purpose) in COMMANDS.items()]
    lines += [f"  {'space':<{width}}  describe a search space, draw sub-networks from it", "",
              STAGES]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = "nasops" if os.path.basename(sys.argv[0]) == "nasops" else "python -m nasops"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog))
        return 0
    command, rest = argv[0], argv[1:]
    if command == "space":
        return space_main(rest, f"{prog} space")
    if command not in COMMANDS:
        print(f"{prog}: error: unknown command {command!r}; commands: "
              f"{', '.join([*COMMANDS, 'space'])}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest, prog=f"{prog} {command}")


def space_main(argv=None, prog: str = "nasops space") -> int:
    from . import FlopsSampler, SearchSpace
    parser = argparse.ArgumentParser(
        prog=prog, description="Describe a search space (summary and FLOPs prior), or draw "
                               "sub-networks from it as JSON lines.")
    parser.add_argument("space", help="packaged space name (attentive_nas, small) or path to a "
                                      "YAML file")
    parser.add_argument("--target", type=float, help="FLOPs target in MFLOPs")
    parser.add_argument("--proportional", choices=["params", "flops"],
                        help="draw in proportion to model size instead")
    parser.add_argument("-n", type=int, default=1, help="number of sub-networks to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-prior", type=int, default=200_000,
                        help="uniform samples the FLOPs prior is built from")
    args = parser.parse_args(argv)
    try:
        space = SearchSpace.load(args.space)
        sampler = FlopsSampler(space, n_prior=args.n_prior, seed=args.seed)
        if args.target is None and args.proportional is None:
            describe(space, sampler)
            return 0
        if args.proportional:
            archs = sampler.sample_proportional(args.n, by=args.proportional)
        else:
            archs = sampler.sample(args.target, n=args.n)
    except (ValueError, TypeError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    flops, params = space.flops(archs), space.params(archs)
    for arch, f, p in zip(space.decode_all(archs), flops, params):
        print(json.dumps({**arch.to_dict(), "mflops": round(f, 3), "mparams": round(p, 4)}))
    return 0


def describe(space, sampler):
    smallest, largest = space.min_arch(), space.max_arch()
    count = math.prod(len(c) for c in space.choices)
    print(f"{space.name}: {space.num_stages} stages, {space.dim} dimensions, "
          f"{count:.3g} sub-networks, {space.num_classes} classes")
    for arch, label in ((smallest, "smallest"), (largest, "largest")):
        print(f"  {label}: {space.flops(arch):.1f} MFLOPs, {space.params(arch):.2f} M params  "
              f"{json.dumps(arch.to_dict())}")
    print(f"  FLOPs prior ({sampler.step:g} MFLOPs bins, {len(sampler.targets)} targets):")
    peak = sampler.prior.max()
    for t, p in zip(sampler.targets, sampler.prior):
        print(f"  {t:8g}  {p:6.2%}  {'#' * max(1, round(40 * p / peak))}")


if __name__ == "__main__":
    sys.exit(main())
