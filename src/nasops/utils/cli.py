"""What the command-line entry points share: their names and the pipeline they belong to.

Each stage is one module with a ``main(argv=None, prog=None)``, reachable three ways: the
console script (``nasops-train``), the ``nasops`` command (``nasops train``) and
``python -m nasops.train``.
"""
from __future__ import annotations

import os
import sys

# command: (module with main(), console script, one-line purpose)
COMMANDS = {
    "train": ("nasops.train", "nasops-train", "stage 1: train one supernet"),
    "search": ("nasops.search.__main__", "nasops-search",
               "stage 2: evolutionary search under FLOPs or latency budgets, export of the picks"),
    "evaluate": ("nasops.evaluate.__main__", "nasops-evaluate",
                 "measure random sub-networks of a trained supernet (the predictor's data)"),
    "predictor": ("nasops.predictor.__main__", "nasops-predictor",
                  "fit the accuracy predictor on those measurements (search --predictor)"),
    "latency": ("nasops.search.latency", "nasops-latency",
                "measure a latency lookup table (search --constraint latency)"),
    "finetune": ("nasops.finetune.__main__", "nasops-finetune",
                 "fine-tune a picked sub-network alone, then export it again"),
    "convert": ("nasops.train.convert", "nasops-convert",
                "a released AttentiveNAS/AlphaNet supernet as a nasops checkpoint"),
}

STAGES = """\
the stages of two-stage NAS (each command takes --help):
  1. nasops-train        train one supernet: python -m nasops.train
  2. nasops-search       search it under FLOPs budgets, export the picks: python -m nasops.search
     nasops-latency      for latency budgets instead: measure a table: python -m nasops.search.latency
     optional, between the two, for searching by a predictor:
     nasops-evaluate     measure random sub-networks: python -m nasops.evaluate
     nasops-predictor    fit the accuracy predictor on them: python -m nasops.predictor
  or, instead of 1, start from a released AttentiveNAS/AlphaNet supernet:
     nasops-convert      python -m nasops.train.convert --from-official CKPT --out RUN/checkpoint.pt
  then, optionally, fine-tune a pick alone and export it again:
     nasops-finetune     python -m nasops.finetune RUN/search/net_<budget>MF"""


def add_import_option(parser) -> None:
    """--import MODULE (repeatable): modules whose strategies, losses and datasets the command
    should know (nasops.utils.registry); the command imports them with import_modules(args.imports)."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, so that the strategies, distillation losses "
                             "and datasets it registers can be named (repeatable)")


def prog(command: str) -> str:
    """The program name for `command`'s usage: the console script's name when it runs as one,
    otherwise the `python -m` form."""
    module, script, _ = COMMANDS[command]
    if os.path.basename(sys.argv[0]) == script:
        return script
    return "python -m " + module.removesuffix(".__main__")
