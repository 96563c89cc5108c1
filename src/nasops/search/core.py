"""What the searches of nasops.search share: the result (:class:`SearchResult`), objective values
computed once (:class:`_Scores`), the budget's cost and its check, the initial population within a
budget, and the moves within it (:class:`_Moves`: mutation, crossover, repair)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..utils.checks import is_number
from ..space.sampler import FlopsSampler
from ..space import Arch, SearchSpace

PART_MOVES = 0.5  # with method "repair": the fraction of mutations that redraw one whole part


@dataclass
class SearchResult:
    """The best sub-network found under one budget."""
    budget: float          # in `unit`
    encoding: np.ndarray   # int64 [D]
    arch: Arch
    score: float
    flops: float           # MFLOPs
    params: float          # M
    evaluations: int       # objective evaluations this search made (cache hits excluded)
    history: list = field(default_factory=list)  # per generation: best score, evaluations so far
    cost: float | None = None  # in `unit` (= flops for FLOPs budgets)
    unit: str = "MFLOPs"

    def to_dict(self) -> dict:
        return {"budget": self.budget, "unit": self.unit, "arch": self.arch.to_dict(),
                "encoding": self.encoding.tolist(), "score": self.score, "flops": self.flops,
                "cost": self.flops if self.cost is None else self.cost,
                "params": self.params, "evaluations": self.evaluations, "history": self.history}


class _Scores:
    """Objective values by architecture, each computed once, in batches."""

    def __init__(self, objective, cache: dict | None = None):
        if not callable(objective):
            raise TypeError(f"objective must be callable (encodings [N, D] -> scores [N]), got "
                            f"{type(objective).__name__}")
        self.objective, self.cache, self.calls = objective, {} if cache is None else cache, 0

    def __call__(self, archs: np.ndarray) -> np.ndarray:
        keys = [a.tobytes() for a in archs]
        todo, seen = [], set()
        for key, arch in zip(keys, archs):
            if key not in self.cache and key not in seen:
                seen.add(key)
                todo.append(arch)
        if todo:
            values = np.asarray(self.objective(np.stack(todo)), dtype=np.float64).ravel()
            if values.shape != (len(todo),):
                raise ValueError(f"objective returned {values.size} scores for {len(todo)} "
                                 f"architectures; it must return one per row")
            if not np.all(np.isfinite(values)):
                raise ValueError("objective returned NaN or infinite scores")
            self.calls += len(todo)
            for arch, v in zip(todo, values):
                self.cache[arch.tobytes()] = float(v)
        return np.array([self.cache[k] for k in keys])

    def new(self, archs: np.ndarray) -> np.ndarray:
        """Which rows have no value yet."""
        return np.array([a.tobytes() not in self.cache for a in archs], dtype=bool)


class _Flops:
    """The default cost: MFLOPs."""
    unit = "MFLOPs"

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, archs) -> np.ndarray:
        return self.space.flops(archs)


def _cost_of(space: SearchSpace, cost):
    if cost is None:
        return _Flops(space)
    if not callable(cost):
        raise TypeError(f"cost must be callable (encodings [N, D] -> costs [N]), got "
                        f"{type(cost).__name__}")
    return cost


def _unit(cost) -> str:
    return getattr(cost, "unit", "cost units")


def check_budget(space: SearchSpace, budget, cost=None) -> float:
    cost = _cost_of(space, cost)
    unit = _unit(cost)
    if not is_number(budget) \
            or not math.isfinite(budget):
        raise ValueError(f"budget {budget!r} must be a finite number of {unit}")
    smallest = float(np.asarray(cost(space.encode(space.min_arch())[None, :]))[0])
    if budget < smallest:
        raise ValueError(f"budget {budget:g} {unit} is below the smallest sub-network of "
                         f"{space.name!r} ({smallest:g} {unit}): nothing fits")
    return float(budget)


_MIX = np.random.default_rng(0x5EA4C4).integers(1, 2**62, size=256, dtype=np.int64) | 1


def _unique(rows: np.ndarray) -> np.ndarray:
    """The distinct rows, in order of first appearance. Rows are told apart by a random 64-bit
    linear hash (wrapping int64 arithmetic): sorting one int64 per row is far cheaper than
    np.unique(axis=0), and two distinct rows collide with probability about 2**-64 (the cost of
    a collision: one child fewer)."""
    if len(rows) == 0:
        return rows
    keys = rows @ _MIX[:rows.shape[1]]
    _, first = np.unique(keys, return_index=True)
    return rows[np.sort(first)]


def initial_population(space: SearchSpace, sampler: FlopsSampler, budget: float, size: int,
                       rng: np.random.Generator, max_rounds: int = 50, cost=None) -> np.ndarray:
    """Up to `size` distinct sub-networks within the budget: FLOPs targets from the prior
    restricted to the budget, then constrained draws at them (the smallest sub-network is always
    included, so a feasible budget never gives an empty population). With another `cost`, the
    targets are the prior's bins where a probe of 8 draws finds one within the budget, and
    draws over the budget are dropped."""
    found = [space.encode(space.min_arch())[None, :]]
    if cost is None:
        allowed = sampler.targets <= budget
        cost = space.flops
    else:
        allowed = np.array([(cost(sampler.sample(t, 8)) <= budget).any() for t in sampler.targets])
    for _ in range(max_rounds):
        have = _unique(np.concatenate(found))
        if len(have) >= size:
            break
        need = size - len(have)
        if allowed.any():
            p = sampler.prior[allowed] / sampler.prior[allowed].sum()
            targets, counts = np.unique(rng.choice(sampler.targets[allowed], size=need, p=p),
                                        return_counts=True)
            draws = np.concatenate([sampler.sample(t, int(c)) for t, c in zip(targets, counts)])
        else:  # below every prior bin: uniform draws, filtered
            draws = space.sample(need * 20, seed=int(rng.integers(2**63)))
        found.append(draws[cost(draws) <= budget])
    return _unique(np.concatenate(found))[:size]


class _Moves:
    """The variation operators of the searches over one space, under `cost <= budget`.

    Mutation redraws each dimension with probability `mutate_prob` (the paper's move); with
    `repair`, a fraction PART_MOVES of the mutations instead redraw every dimension of one part of
    the network (the resolution, the stem, one stage, the head) at once, so that dimensions which
    only pay off together can change together. Crossover takes each dimension from one of two
    parents. A child over the budget is discarded (the paper) or, with `repair`, shrunk until it
    fits: a random dimension that the move did not change steps one choice down, again and again
    (then any dimension, if those are exhausted). Costs never grow when a dimension shrinks, and
    the smallest sub-network fits, so every repair ends within the budget."""

    def __init__(self, space, cost, budget, rng, mutate_prob, repair):
        self.space, self.cost, self.budget, self.rng = space, cost, budget, rng
        self.mutate_prob, self.repair = mutate_prob, repair
        self.groups = space.dim_groups()

    def mutate(self, parents, n):
        rng = self.rng
        base = parents[rng.integers(len(parents), size=n)]
        redraw = rng.random(base.shape) < self.mutate_prob
        pick = (rng.random(base.shape) * self.space.sizes).astype(np.int64)  # uniform per dim
        if self.repair:
            whole = rng.random(n) < PART_MOVES
            part = rng.integers(self.groups.max() + 1, size=n)
            redraw[whole] = self.groups[None, :] == part[whole, None]
        fresh = self.space.from_index(pick)
        child = np.where(redraw, fresh, base)
        return child, child != base

    def cross(self, parents, n):
        rng = self.rng
        a = parents[rng.integers(len(parents), size=n)]
        b = parents[rng.integers(len(parents), size=n)]
        return np.where(rng.random(a.shape) < 0.5, a, b), np.zeros(a.shape, dtype=bool)

    def fit(self, archs, changed):
        """The rows within the budget: the others discarded, or repaired."""
        if not self.repair:
            return archs[self.cost(archs) <= self.budget]
        index = self.space.to_index(archs)
        over = np.flatnonzero(self.cost(archs) > self.budget)
        while len(over):
            idx = index[over]
            movable = idx > 0
            free = movable & ~changed[over]
            allowed = np.where(free.any(1, keepdims=True), free, movable)
            dim = np.argmax(self.rng.random(idx.shape) * allowed, axis=1)  # a random allowed one
            index[over, dim] -= 1
            archs[over] = self.space.from_index(index[over])
            over = over[self.cost(archs[over]) > self.budget]
        return archs

    def children(self, parents, count, make, max_rounds=50):
        """`count` distinct children of `make` within the budget, or fewer if the budget leaves
        too few."""
        out = np.empty((0, self.space.dim), dtype=np.int64)
        for _ in range(max_rounds):
            if len(out) >= count:
                break
            out = _unique(np.concatenate([out, self.fit(*make(parents, 2 * (count - len(out)) + 8))]))
        return out[:count]

    def neighbours(self, arch):
        """The sub-networks one move from `arch` within the budget: one dimension one choice up
        or down, or one up and another one down (a swap, trading one dimension's cost for
        another's)."""
        index = self.space.to_index(arch)
        eye = np.eye(self.space.dim, dtype=np.int64)
        up, down = eye[index + 1 < self.space.sizes], -eye[index > 0]
        swaps = (up[:, None, :] + down[None, :, :]).reshape(-1, self.space.dim)
        swaps = swaps[(swaps != 0).sum(1) == 2]  # (not one dimension up and down again)
        archs = self.space.from_index(index + np.concatenate([down, up, swaps]))
        return archs[self.cost(archs) <= self.budget]
