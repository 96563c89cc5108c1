"""Stage 2: evolutionary search for the best sub-networks under FLOPs budgets.

The AttentiveNAS protocol (after HAT): an initial population of 512 sub-networks within the budget
(drawn with the FLOPs-constrained sampler), then 20 generations; in each, the best
``population - mutations - crossovers`` members are the parents and 128 mutated and 128
crossed-over children (also within the budget) join them. Every member is evaluated once
(results are cached by architecture), so a search makes at most
population + generations x (mutations + crossovers) = 5,632 evaluations with the defaults, fewer
when children repeat. (The paper quotes 5,248 for the same settings without saying how it
counts.)

``objective`` is any batched callable from encodings [N, D] to scores [N], higher is better: an
:class:`~nasops.predictor.AccuracyPredictor`, :class:`SupernetAccuracy`, or the user's own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..sampling import FlopsSampler, _check_count
from ..space import Arch, SearchSpace, _seed64


@dataclass
class SearchResult:
    """The best sub-network found under one budget."""
    budget: float          # MFLOPs
    encoding: np.ndarray   # int64 [D]
    arch: Arch
    score: float
    flops: float           # MFLOPs
    params: float          # M
    evaluations: int       # objective evaluations this search made (cache hits excluded)
    history: list = field(default_factory=list)  # per generation: best score, evaluations so far

    def to_dict(self) -> dict:
        return {"budget": self.budget, "arch": self.arch.to_dict(),
                "encoding": self.encoding.tolist(), "score": self.score, "flops": self.flops,
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


def check_budget(space: SearchSpace, budget) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.number)) \
            or not math.isfinite(budget):
        raise ValueError(f"FLOPs budget {budget!r} must be a finite number of MFLOPs")
    smallest = space.flops(space.min_arch())
    if budget < smallest:
        raise ValueError(f"FLOPs budget {budget:g} MFLOPs is below the smallest sub-network of "
                         f"{space.name!r} ({smallest:g} MFLOPs): nothing fits")
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
                       rng: np.random.Generator, max_rounds: int = 50) -> np.ndarray:
    """Up to `size` distinct sub-networks within the budget: FLOPs targets from the prior
    restricted to the budget, then constrained draws at them (the smallest sub-network is always
    included, so a feasible budget never gives an empty population)."""
    allowed = sampler.targets <= budget
    found = [space.encode(space.min_arch())[None, :]]
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
        found.append(draws[space.flops(draws) <= budget])
    return _unique(np.concatenate(found))[:size]


def _children(space, parents, count, budget, rng, make, max_rounds=50):
    """`count` distinct feasible children of `make(parents, n)`, or fewer if the budget leaves
    too few."""
    out = np.empty((0, space.dim), dtype=np.int64)
    for _ in range(max_rounds):
        if len(out) >= count:
            break
        cand = make(parents, 2 * (count - len(out)) + 8)
        cand = cand[space.flops(cand) <= budget]
        out = _unique(np.concatenate([out, cand]))
    return out[:count]


def evolve(space: SearchSpace, objective, flops_budget: float, population: int = 512,
           mutations: int = 128, crossovers: int = 128, generations: int = 20,
           mutate_prob: float = 0.1, seed: int | None = 0, sampler: FlopsSampler | None = None,
           cache: dict | None = None, progress: bool = False) -> SearchResult:
    """Evolutionary search for the sub-network with the best objective within `flops_budget`
    (MFLOPs; among equal scores, the one with fewer FLOPs). Every member, initial or child, is
    within the budget. `cache` (a dict) shares
    objective values between searches; `sampler` shares a FlopsSampler."""
    budget = check_budget(space, flops_budget)
    population = _check_count("population", population, 2)
    mutations = _check_count("mutations", mutations, 0)
    crossovers = _check_count("crossovers", crossovers, 0)
    generations = _check_count("generations", generations, 0)
    n_parents = population - mutations - crossovers
    if n_parents < 1:
        raise ValueError(f"population = {population} must exceed mutations + crossovers = "
                         f"{mutations + crossovers} (the rest are the parents)")
    if isinstance(mutate_prob, bool) or not isinstance(mutate_prob, (int, float)) \
            or not 0 < mutate_prob <= 1:
        raise ValueError(f"mutate_prob = {mutate_prob!r} must be in (0, 1]")
    rng = np.random.default_rng(_seed64(seed))
    if sampler is None:
        sampler = FlopsSampler(space, n_prior=50_000, seed=int(rng.integers(2**63)))
    scores = _Scores(objective, cache)
    choices = space.choices

    sizes = np.array([len(c) for c in choices])
    table = np.zeros((len(choices), sizes.max()), dtype=np.int64)  # choices, padded
    for i, c in enumerate(choices):
        table[i, :len(c)] = c

    def mutate(parents, n):
        base = parents[rng.integers(len(parents), size=n)]
        redraw = rng.random(base.shape) < mutate_prob
        pick = (rng.random(base.shape) * sizes).astype(np.int64)  # a uniform choice per dim
        fresh = table[np.arange(len(choices)), pick]
        return np.where(redraw, fresh, base)

    def cross(parents, n):
        a = parents[rng.integers(len(parents), size=n)]
        b = parents[rng.integers(len(parents), size=n)]
        return np.where(rng.random(a.shape) < 0.5, a, b)

    members = initial_population(space, sampler, budget, population, rng)
    values = scores(members)
    history = []
    bar = tqdm(range(generations), desc=f"evolve <= {budget:g} MFLOPs", disable=not progress)
    for gen in bar:
        order = np.lexsort((space.flops(members), -values))  # best first; ties: fewer FLOPs
        parents, parent_values = members[order[:n_parents]], values[order[:n_parents]]
        history.append({"generation": gen, "best": float(parent_values[0]),
                        "evaluations": scores.calls})
        kids = [k for k in (
            _children(space, parents, mutations, budget, rng, mutate) if mutations else None,
            _children(space, parents, crossovers, budget, rng, cross) if crossovers else None)
            if k is not None]
        members = _unique(np.concatenate([parents, *kids]))
        values = scores(members)
        bar.set_postfix(best=f"{values.max():.4g}")
    best = int(np.lexsort((space.flops(members), -values))[0])
    history.append({"generation": generations, "best": float(values[best]),
                    "evaluations": scores.calls})
    enc = members[best]
    return SearchResult(budget, enc, space.decode(enc), float(values[best]), space.flops(enc),
                        space.params(enc), scores.calls, history)


def pareto(space: SearchSpace, objective, budgets, seed: int | None = 0, **kwargs) -> list[SearchResult]:
    """One :func:`evolve` per budget (ascending), sharing the objective cache and the sampler.
    Each budget's result is the best architecture evaluated under it by any of the searches (the
    one with fewer FLOPs among equal scores), so the front's scores never decrease with the
    budget."""
    if not isinstance(budgets, (list, tuple, np.ndarray)) or len(budgets) == 0:
        raise ValueError(f"budgets must be a non-empty list of MFLOPs, got {budgets!r}")
    budgets = sorted(check_budget(space, b) for b in budgets)
    cache = kwargs.pop("cache", None)
    cache = {} if cache is None else cache
    sampler = kwargs.pop("sampler", None) or FlopsSampler(space, n_prior=50_000,
                                                          seed=_seed64(seed) ^ 1)
    results = [evolve(space, objective, b, seed=None if seed is None else _seed64(seed) + i,
                      sampler=sampler, cache=cache, **kwargs) for i, b in enumerate(budgets)]
    keys = list(cache)
    encs = np.stack([np.frombuffer(k, dtype=np.int64) for k in keys])
    flops, values = space.flops(encs), np.array([cache[k] for k in keys])
    for r in results:
        feasible = np.flatnonzero(flops <= r.budget)
        best = feasible[np.lexsort((flops[feasible], -values[feasible]))[0]]
        if (values[best], -flops[best]) > (r.score, -r.flops):  # found by another budget's search
            r.encoding = encs[best].copy()
            r.arch, r.score = space.decode(r.encoding), float(values[best])
            r.flops, r.params = float(flops[best]), space.params(r.encoding)
    return results


class SupernetAccuracy:
    """Objective: BN-calibrated accuracy on a split (default: the held-out one) of sub-networks
    of a trained supernet, through an :class:`~nasops.evaluate.Evaluator`."""

    def __init__(self, evaluator, split: str = "holdout", progress: bool = False):
        self.evaluator, self.split, self.progress = evaluator, split, progress

    def __call__(self, archs: np.ndarray) -> np.ndarray:
        return self.evaluator.accuracy(archs, self.split, progress=self.progress)
