"""Synthetic objectives with known hard structure, for testing and comparing searches.

Each is a function of the architecture's choice positions (``space.to_index``), scaled per
dimension to [0, 1] (``u``: 0 the smallest choice, 1 the largest), so each applies to any space.
Under a budget they reproduce what makes real searches fail:

* :class:`ResolutionTrap`: a higher resolution is worth more than everything else, but under a
  tight budget it fits only when several other dimensions shrink at the same time: every
  single-dimension step up in resolution from a sub-network that fills the budget is infeasible.
  (Measured with a random-forest accuracy objective on ``attentive_nas`` at 280-360 MFLOPs: the
  paper's evolution stays at its initial resolution.)
* :class:`NarrowOptimum`: a broad slope towards filling the budget, and a narrow, higher peak at one
  architecture elsewhere, visible only from close to it.
* :class:`Interacting`: a stage's depth and expansion ratio pay off only together; either one
  alone costs score, and both cost FLOPs that other dimensions must give up.

:func:`exhaustive` finds the true optimum of a small space (the ``small`` space has 4.5 million
sub-networks: seconds) to measure a search against.
"""
from __future__ import annotations

import numpy as np

from ..space import SearchSpace


def _unit(space: SearchSpace, archs) -> np.ndarray:
    """Choice positions scaled to [0, 1] per dimension (dimensions with one choice: 0)."""
    index = space.to_index(np.atleast_2d(archs))
    return index / np.maximum(space.sizes - 1, 1)


def _searchable(space: SearchSpace) -> np.ndarray:
    return space.sizes > 1


class ResolutionTrap:
    """weight x u(resolution) + the mean u of the other searchable dimensions."""

    def __init__(self, space: SearchSpace, weight: float = 3.0):
        self.space, self.weight = space, float(weight)
        self.others = _searchable(space)
        self.others[0] = False

    def __call__(self, archs) -> np.ndarray:
        u = _unit(self.space, archs)
        return self.weight * u[:, 0] + u[:, self.others].mean(1)


class NarrowOptimum:
    """The mean u of the searchable dimensions (a slope towards the budget's edge), plus a peak
    of height `height` at `peak` that falls linearly to 0 at `radius` differing dimensions
    (default: a third of the searchable dimensions)."""

    def __init__(self, space: SearchSpace, peak, height: float = 2.0, radius: int | None = None):
        self.space, self.height = space, float(height)
        self.peak = space.to_index(np.asarray(peak, dtype=np.int64))
        self.searchable = _searchable(space)
        self.radius = int(radius) if radius is not None else max(int(self.searchable.sum()) // 3, 1)

    def __call__(self, archs) -> np.ndarray:
        index = self.space.to_index(np.atleast_2d(archs))
        differing = (index != self.peak).sum(1)
        slope = _unit(self.space, archs)[:, self.searchable].mean(1)
        return slope + self.height * np.clip(1 - differing / self.radius, 0, None)


class Interacting:
    """One stage's depth and expansion ratio pay off only together: `bonus` x u(depth) x
    u(expand) - `cost` x (u(depth) + u(expand)), plus `rest` x the mean u of the other searchable
    dimensions. Raising either alone lowers the score; raising both raises it, but costs FLOPs
    that the other dimensions must give up under a tight budget."""

    def __init__(self, space: SearchSpace, stage: int = 1, bonus: float = 3.0, cost: float = 1.0,
                 rest: float = 1.0):
        if not isinstance(stage, int) or not 0 <= stage < space.num_stages:
            raise ValueError(f"stage = {stage!r} must be in [0, {space.num_stages}) for space "
                             f"{space.name!r}")
        self.space, self.bonus, self.cost, self.rest = space, float(bonus), float(cost), float(rest)
        self.pair = [space.dim_names.index(f"{f}[{stage}]") for f in ("depth", "expand_ratio")]
        if (space.sizes[self.pair] < 2).any():
            raise ValueError(f"stage {stage} of {space.name!r} needs more than one depth and "
                             f"expansion ratio to interact")
        self.others = _searchable(space)
        self.others[self.pair] = False

    def __call__(self, archs) -> np.ndarray:
        u = _unit(self.space, archs)
        d, e = u[:, self.pair[0]], u[:, self.pair[1]]
        rest = u[:, self.others].mean(1) if self.others.any() else 0.0
        return self.bonus * d * e - self.cost * (d + e) + self.rest * rest


def exhaustive(space: SearchSpace, objective, budget: float, cost=None,
               chunk: int = 1 << 18) -> tuple[np.ndarray, float]:
    """(encoding, score) of the best sub-network of the whole space with ``cost(archs) <=
    budget`` (cost: MFLOPs unless given); among equal scores, the lowest cost. Enumerates every
    sub-network: for small spaces only."""
    cost = space.flops if cost is None else cost
    sizes = space.sizes
    total = int(np.prod(sizes.astype(np.float64)))
    if total > 50_000_000:
        raise ValueError(f"space {space.name!r} has {total:.3g} sub-networks; exhaustive search "
                         f"enumerates at most 5e7")
    strides = np.cumprod(np.r_[sizes[1:], 1][::-1])[::-1]
    best, best_key = None, None
    for start in range(0, total, chunk):
        flat = np.arange(start, min(start + chunk, total), dtype=np.int64)
        index = flat[:, None] // strides % sizes  # mixed radix: the last dimension fastest
        archs = space.from_index(index)
        costs = np.asarray(cost(archs), dtype=np.float64)
        fits = np.flatnonzero(costs <= budget)
        if len(fits) == 0:
            continue
        scores = np.asarray(objective(archs[fits]), dtype=np.float64)
        i = np.lexsort((costs[fits], -scores))[0]
        key = (scores[i], -costs[fits][i])
        if best_key is None or key > best_key:
            best, best_key = archs[fits[i]], key
    if best is None:
        raise ValueError(f"no sub-network of {space.name!r} fits the budget {budget:g}")
    return best, float(best_key[0])
