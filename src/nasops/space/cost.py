"""The network's arithmetic: its widths, map sizes and (multiply-accumulates, weights) per part,
without torch. The layers in :mod:`nasops.nn` build themselves from these rules, and the C++ cost
model (:class:`nasops.SearchSpace`) sums the tables built here (docs/DESIGN.md section 5: biases
and batch norm are not counted); the tests check both against ``torch.utils.flop_counter`` on the
real modules.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def make_divisible(v: int, divisor: int = 8) -> int:
    """docs/DESIGN.md's rounding of hidden widths (the C++ cost model uses the same rule)."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def out_size(n: int, stride: int) -> int:
    """Map size after a layer with padding k // 2 (or the shortcut pooling) and this stride."""
    return -(-n // stride)


def hidden_width(c_in: int, expand_ratio: int) -> int:
    """Channels of an MBConv block's depthwise conv: the input's at ratio 1 (no expansion),
    otherwise make_divisible(c_in * ratio)."""
    return c_in if expand_ratio == 1 else make_divisible(c_in * expand_ratio)


def se_width(channels: int) -> int:
    """Channels of squeeze-excitation's reduced layer."""
    return make_divisible(channels // 4)


def conv_cost(c_in: int, c_out: int, kernel: int, out: int, groups: int = 1) -> tuple[int, int]:
    """(multiply-accumulates, weights) of a conv on an out x out output map, one image; a linear
    layer is a 1x1 conv on 1 pixel."""
    weights = c_in // groups * c_out * kernel * kernel
    return weights * out * out, weights


def add_costs(*costs: tuple[int, int]) -> tuple[int, int]:
    return sum(c[0] for c in costs), sum(c[1] for c in costs)


def se_cost(channels: int) -> tuple[int, int]:
    """Squeeze-excitation: both 1x1 convs act on the pooled 1x1 map."""
    r = se_width(channels)
    return add_costs(conv_cost(channels, r, 1, 1), conv_cost(r, channels, 1, 1))


def block_cost(n: int, c_in: int, c_out: int, kernel: int, expand_ratio: int, stride: int,
               se: bool) -> tuple[int, int]:
    """An MBConv block on an n x n input: 1x1 expand (absent at ratio 1), depthwise k x k with the
    stride, optional SE, 1x1 project; the residual 1x1 conv (after the pooling that carries the
    stride) when the width changes."""
    hidden = hidden_width(c_in, expand_ratio)
    n_out = out_size(n, stride)
    terms = [conv_cost(hidden, hidden, kernel, n_out, groups=hidden),  # depthwise
             conv_cost(hidden, c_out, 1, n_out)]                       # project
    if expand_ratio != 1:
        terms.append(conv_cost(c_in, hidden, 1, n))
    if se:
        terms.append(se_cost(hidden))
    if c_in != c_out:
        terms.append(conv_cost(c_in, c_out, 1, n_out))
    return add_costs(*terms)


def stem_cost(cfg: Mapping, resolution: int, width: int) -> tuple[int, int]:
    stem = cfg["stem"]
    return conv_cost(cfg["in_channels"], width, stem["kernel_size"],
                     out_size(resolution, stem["stride"]))


def head_cost(cfg: Mapping, n: int, c: int, head_width: int) -> tuple[int, int]:
    """1x1 conv c -> expand * c on the n x n map; after the pool, the 1x1 head conv and the
    classifier on one pixel."""
    wide = cfg["head"]["expand_ratio"] * c
    return add_costs(conv_cost(c, wide, 1, n), conv_cost(wide, head_width, 1, 1),
                     conv_cost(head_width, cfg["num_classes"], 1, 1))


def macs_and_weights(cfg: Mapping, part: str, **sizes) -> tuple[int, int]:
    """(MACs, weights) of one part of the network: ``part`` "stem" (resolution, width), "block"
    (stage, n, c_in, c_out, kernel, expand, stride; n the input size) or "head" (n, c,
    head_width)."""
    if part == "stem":
        return stem_cost(cfg, sizes["resolution"], sizes["width"])
    if part == "block":
        return block_cost(sizes["n"], sizes["c_in"], sizes["c_out"], sizes["kernel"],
                          sizes["expand"], sizes["stride"], cfg["stages"][sizes["stage"]]["se"])
    return head_cost(cfg, sizes["n"], sizes["c"], sizes["head_width"])


def cost_tables(cfg: Mapping, cost=macs_and_weights) -> dict:
    """The cost of every part of the network at every combination of its choices, for the C++
    cost model (int64 arrays, last axis two numbers that add up over the parts: by default
    (MACs, weights), :func:`macs_and_weights`; ``cost(cfg, part, **sizes)`` with the same
    arguments gives another model, such as measured latencies):

    stem ``[res][stem width]``; per stage ``first[res][prev width][width][kernel][expand]`` (the
    stage's first block: it sees the previous width and carries the stride) and
    ``rest[res][width][kernel][expand]`` (each further block); head ``[res][last width][head width]``.
    """
    stages = cfg["stages"]
    entries = max(len(cfg["resolution"]) * len(p["width"]) * len(s["width"])
                  * len(s["kernel_size"]) * len(s["expand_ratio"])
                  for p, s in zip([cfg["stem"]] + stages[:-1], stages))
    if entries > 2_000_000:
        raise ValueError(f"a stage has {entries} combinations of resolution, widths, kernel size "
                         f"and expand ratio: too many for the cost tables (at most 2,000,000)")
    tables = {"stem": [], "first": [[] for _ in stages], "rest": [[] for _ in stages], "head": []}
    for res in cfg["resolution"]:
        tables["stem"].append([cost(cfg, "stem", resolution=res, width=w)
                               for w in cfg["stem"]["width"]])
        n = out_size(res, cfg["stem"]["stride"])
        prev = cfg["stem"]["width"]
        for s, stage in enumerate(stages):
            n_out = out_size(n, stage["stride"])
            k_e = [(k, e) for k in stage["kernel_size"] for e in stage["expand_ratio"]]
            tables["first"][s].append([[[cost(cfg, "block", stage=s, n=n, c_in=c_in, c_out=c,
                                              kernel=k, expand=e, stride=stage["stride"])
                                         for k, e in k_e] for c in stage["width"]] for c_in in prev])
            tables["rest"][s].append([[cost(cfg, "block", stage=s, n=n_out, c_in=c, c_out=c,
                                            kernel=k, expand=e, stride=1)
                                       for k, e in k_e] for c in stage["width"]])
            n, prev = n_out, stage["width"]
        tables["head"].append([[cost(cfg, "head", n=n, c=c, head_width=h)
                                for h in cfg["head"]["width"]] for c in prev])
    as_array = lambda t: np.ascontiguousarray(np.asarray(t, dtype=np.int64).reshape(-1, 2))  # noqa: E731
    return {"stem": as_array(tables["stem"]), "head": as_array(tables["head"]),
            "first": [as_array(t) for t in tables["first"]],
            "rest": [as_array(t) for t in tables["rest"]]}
