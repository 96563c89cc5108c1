"""Stage 2: search for the best sub-networks under budgets, and for the whole front.

:func:`evolve` is the AttentiveNAS evolutionary search (after HAT): an initial population of 512
sub-networks within the budget (drawn with the FLOPs-constrained sampler), then 20 generations; in
each, the best ``population - mutations - crossovers`` members are the parents and 128 mutated and
128 crossed-over children (also within the budget) join them. Every member is evaluated once
(results are cached by architecture), so a search makes at most
population + generations x (mutations + crossovers) = 5,632 evaluations with the defaults, fewer
when children repeat, plus the final local search (``polish``). (The paper quotes 5,248 for the
same settings without saying how it counts.) ``method="paper"`` keeps the protocol exactly;
the default, ``method="repair"``, also makes the moves that a budget otherwise forbids (see
:func:`evolve`). :func:`nao` is Neural Architecture Optimization, Balanced NAO's search
(:mod:`nasops.search.architecture_optimization`). :func:`pareto` runs one search per budget;
:func:`front` searches a FLOPs range at once (NSGA-II) and returns its non-dominated set.

``objective`` is any batched callable from encodings [N, D] to scores [N], higher is better: an
:class:`~nasops.predictor.AccuracyPredictor`, :class:`SupernetAccuracy`, or the user's own. The
budget is in MFLOPs, or with ``cost=`` in that cost's unit: any callable from encodings to costs
[N] that does not grow when a dimension shrinks, with a ``unit`` attribute (a
:class:`~nasops.search.latency.LatencyTable` gives milliseconds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
from tqdm import tqdm

from ..utils.checks import check_count, is_number, seed64
from ..space.sampler import FlopsSampler
from ..space import SearchSpace

from .core import (PART_MOVES, SearchResult, _Flops, _Moves, _Scores, _cost_of, _unique,  # noqa: F401
                   _unit, check_budget, initial_population)
from .architecture_optimization import NAOModel, NAOOptions, nao  # noqa: F401

METHODS = ("repair", "paper")


def _local_search(moves, scores, ranked, arch, value, evaluations):
    """First-improvement local search from `arch`: its neighbours in random order, in batches of
    32, moving to the best of the first batch that improves (a higher score, or the same score
    at a lower cost, which frees room for the next move), until a whole neighbourhood does not
    improve or `evaluations` new objective values are spent."""
    start = scores.calls
    cost = float(moves.cost(arch[None, :])[0])
    moved = True
    while moved and scores.calls - start < evaluations:
        near = moves.neighbours(arch)
        near, moved = near[moves.rng.permutation(len(near))], False
        for lo in range(0, len(near), 32):
            left = evaluations - (scores.calls - start)
            if left <= 0:
                break
            batch = near[lo:lo + 32]
            new = scores.new(batch)
            batch = batch[~new | (np.cumsum(new) <= left)]
            values = scores(batch)
            i = int(ranked(batch, values)[0])
            batch_cost = float(moves.cost(batch[i][None, :])[0])
            if (values[i], -batch_cost) > (value, -cost):
                arch, value, cost, moved = batch[i], float(values[i]), batch_cost, True
                break
    return arch, value


def _check_probability(name, value):
    if not is_number(value) or not 0 < value <= 1:
        raise ValueError(f"{name} = {value!r} must be in (0, 1]")
    return float(value)


@dataclass(frozen=True)
class EvolveOptions:
    """The evolution's knobs (:func:`evolve`); the defaults are AttentiveNAS's search settings.

    ``method="paper"``: the AttentiveNAS protocol exactly; children over the budget are
    discarded. Under a tight budget that traps it: a member that fills the budget cannot take a
    step that needs room (a higher resolution fits only if several other dimensions shrink at
    once), so every such child is discarded. ``method="repair"`` (the default) makes those moves:
    children over the budget are repaired and half the mutations redraw a whole part of the
    network (:class:`_Moves`), and after the generations a local search spends up to `polish`
    more evaluations (default: a quarter of the evolution's at most, population + generations x
    (mutations + crossovers)) moving the best member to a better neighbour (one dimension up or
    down, or a swap of two) while one exists."""
    population: int = 512
    mutations: int = 128
    crossovers: int = 128
    generations: int = 20
    mutate_prob: float = 0.1
    method: str = "repair"
    polish: int | None = None

    def checked(self) -> "EvolveOptions":
        """These options with polish resolved; ValueError naming a value not allowed."""
        if self.method not in METHODS:
            raise ValueError(f"method = {self.method!r} is not allowed; allowed: {list(METHODS)}")
        population = check_count("population", self.population, 2)
        mutations = check_count("mutations", self.mutations, 0)
        crossovers = check_count("crossovers", self.crossovers, 0)
        generations = check_count("generations", self.generations, 0)
        polish = self.polish
        if polish is None:
            polish = (population + generations * (mutations + crossovers)) // 4
        if population - mutations - crossovers < 1:
            raise ValueError(f"population = {population} must exceed mutations + crossovers = "
                             f"{mutations + crossovers} (the rest are the parents)")
        return EvolveOptions(population, mutations, crossovers, generations,
                             _check_probability("mutate_prob", self.mutate_prob), self.method,
                             check_count("polish", polish, 0))


_SHARED = ("cache", "sampler")  # what searches of one space may share: objective values, sampler


def _options(options: EvolveOptions | None, knobs: dict) -> tuple[EvolveOptions, dict]:
    """(options with the knobs given by keyword applied, the shared objects among the knobs)."""
    shared = {k: knobs.pop(k) for k in _SHARED if k in knobs}
    names = {f.name for f in fields(EvolveOptions)}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise TypeError(f"unknown search option(s) {unknown}; allowed: {sorted(names)} and "
                        f"{list(_SHARED)}")
    return replace(options or EvolveOptions(), **knobs), shared


def evolve(space: SearchSpace, objective, budget: float, options: EvolveOptions | None = None, *,
           seed: int | None = 0, cost=None, progress: bool = False, **knobs) -> SearchResult:
    """Evolutionary search for the sub-network with the best objective within `budget` (MFLOPs,
    or the unit of `cost`; among equal scores, the cheaper). Every member, initial or child, is
    within the budget. `options` (:class:`EvolveOptions`) holds the knobs; any of them may also
    be given by keyword (``generations=5``), and ``cache`` (a dict) shares objective values
    between searches, ``sampler`` a FlopsSampler."""
    options, shared = _options(options, knobs)
    cost_fn = _cost_of(space, cost)
    budget = check_budget(space, budget, cost_fn)
    options = options.checked()
    rng = np.random.default_rng(seed64(seed))
    sampler = shared.get("sampler") or FlopsSampler(space, n_prior=50_000,
                                                    seed=int(rng.integers(2**63)))
    scores = _Scores(objective, shared.get("cache"))
    moves = _Moves(space, cost_fn, budget, rng, options.mutate_prob,
                   repair=options.method == "repair")

    def ranked(members, values):  # best first; ties: the cheaper
        return np.lexsort((cost_fn(members), -values))

    members = initial_population(space, sampler, budget, options.population, rng,
                                 cost=None if cost is None else cost_fn)
    enc, value, history = _generations(options, moves, scores, ranked, members, progress)
    if moves.repair and options.polish:
        enc, value = _local_search(moves, scores, ranked, enc, value, options.polish)
    history.append({"generation": options.generations, "best": value, "evaluations": scores.calls})
    return SearchResult(budget, enc, space.decode(enc), value, space.flops(enc),
                        space.params(enc), scores.calls, history,
                        float(cost_fn(enc[None, :])[0]), _unit(cost_fn))


def _generations(options: EvolveOptions, moves: "_Moves", scores: "_Scores", ranked, members,
                 progress: bool):
    """The evolution's generations from the initial members: (best encoding, its value, the
    best value and evaluation count at the start of each generation)."""
    n_parents = options.population - options.mutations - options.crossovers
    values = scores(members)
    history = []
    bar = tqdm(range(options.generations), desc=f"evolve <= {moves.budget:g} "
               f"{_unit(moves.cost)}", disable=not progress)
    for gen in bar:
        order = ranked(members, values)
        parents, parent_values = members[order[:n_parents]], values[order[:n_parents]]
        history.append({"generation": gen, "best": float(parent_values[0]),
                        "evaluations": scores.calls})
        kids = [moves.children(parents, n, make)
                for n, make in ((options.mutations, moves.mutate),
                                (options.crossovers, moves.cross)) if n]
        members = _unique(np.concatenate([parents, *kids]))
        values = scores(members)
        bar.set_postfix(best=f"{values.max():.4g}")
    best = int(ranked(members, values)[0])
    return members[best], float(values[best]), history


def pareto(space: SearchSpace, objective, budgets, options: EvolveOptions | NAOOptions | None = None,
           *, seed: int | None = 0, cost=None, progress: bool = False, **knobs) -> list[SearchResult]:
    """One search per budget (ascending), sharing the objective cache and the sampler: an
    :func:`evolve`, or with :class:`NAOOptions` a :func:`nao` (``evaluations=`` then sets each
    one's). Each budget's result is the best architecture evaluated under it by any of the
    searches (the cheaper among equal scores), so the front's scores never decrease with the
    budget."""
    if not isinstance(budgets, (list, tuple, np.ndarray)) or len(budgets) == 0:
        raise ValueError(f"budgets must be a non-empty list, got {budgets!r}")
    search = nao if isinstance(options, NAOOptions) else evolve
    shared = {k: knobs.pop(k) for k in _SHARED if k in knobs}
    cost_fn = _cost_of(space, cost)
    budgets = sorted(check_budget(space, b, cost_fn) for b in budgets)
    cache = {} if shared.get("cache") is None else shared["cache"]
    sampler = shared.get("sampler") or FlopsSampler(space, n_prior=50_000, seed=seed64(seed) ^ 1)
    results = [search(space, objective, b, options=options,
                      seed=None if seed is None else seed64(seed) + i, cost=cost,
                      progress=progress, sampler=sampler, cache=cache, **knobs)
               for i, b in enumerate(budgets)]
    keys = list(cache)
    encs = np.stack([np.frombuffer(k, dtype=np.int64) for k in keys])
    costs, values = cost_fn(encs), np.array([cache[k] for k in keys])
    for r in results:
        feasible = np.flatnonzero(costs <= r.budget)
        best = feasible[np.lexsort((costs[feasible], -values[feasible]))[0]]
        if (values[best], -costs[best]) > (r.score, -r.cost):  # found by another budget's search
            r.encoding = encs[best].copy()
            r.arch, r.score = space.decode(r.encoding), float(values[best])
            r.flops, r.params = space.flops(r.encoding), space.params(r.encoding)
            r.cost = float(costs[best])
    return results


# -- the whole front at once --------------------------------------------------------------------
def non_dominated(costs, scores) -> np.ndarray:
    """Indices of the points that no other point dominates (lower or equal cost and higher or
    equal score, one of them strictly), by increasing cost. Of identical points, the first."""
    costs, scores = np.asarray(costs, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(costs)), -scores, costs))  # cost up; among equal, best first
    best = -np.inf
    keep = []
    for i in order:
        if scores[i] > best:
            keep.append(i)
            best = scores[i]
    return np.array(keep, dtype=np.int64)


def _fronts(costs, scores) -> np.ndarray:
    """Non-dominated rank of each point (0: the front; 1: the front without rank 0; ...)."""
    rank = np.full(len(costs), -1)
    left = np.arange(len(costs))
    r = 0
    while len(left):
        # a point is in this front if no remaining point dominates it
        c, s = costs[left], scores[left]
        dominated = ((c[None, :] <= c[:, None]) & (s[None, :] >= s[:, None])
                     & ((c[None, :] < c[:, None]) | (s[None, :] > s[:, None]))).any(1)
        rank[left[~dominated]] = r
        left, r = left[dominated], r + 1
    return rank


def _crowding(costs, scores) -> np.ndarray:
    """NSGA-II's crowding distance within one front (the ends: infinite)."""
    n = len(costs)
    distance = np.zeros(n)
    for values in (costs, scores):
        order = np.argsort(values, kind="stable")
        span = values[order[-1]] - values[order[0]]
        distance[order[[0, -1]]] = np.inf
        if n > 2 and span > 0:
            distance[order[1:-1]] += (values[order[2:]] - values[order[:-2]]) / span
    return distance


def hypervolume(costs, scores, cost_range, reference: float) -> float:
    """The area that the points dominate in (cost, score) over cost in `cost_range` = (lo, hi)
    and score above `reference`: the integral over c from lo to hi of (the best score of a point
    costing at most c) - reference, where that exceeds 0. A point below lo counts as costing lo.
    Larger is better; 0 for no point within the range."""
    lo, hi = (float(v) for v in cost_range)
    costs = np.maximum(np.asarray(costs, dtype=np.float64), lo)
    scores = np.asarray(scores, dtype=np.float64)
    inside = costs <= hi
    area, best, at = 0.0, reference, lo
    for i in np.lexsort((-scores[inside], costs[inside])):
        c, s = costs[inside][i], scores[inside][i]
        area += (c - at) * (best - reference)
        at, best = c, max(best, s)
    return area + (hi - at) * (best - reference)


@dataclass
class FrontResult:
    """The non-dominated sub-networks (score vs cost: MFLOPs, or the unit of the search's `cost`)
    found within a cost range, by increasing cost."""
    space: SearchSpace = field(repr=False)
    cost_range: tuple
    encodings: np.ndarray  # int64 [M, D]
    scores: np.ndarray     # [M]
    flops: np.ndarray      # [M], MFLOPs
    params: np.ndarray     # [M], M
    evaluations: int
    history: list = field(default_factory=list)  # per generation: evaluations, front size
    costs: np.ndarray | None = None  # [M], in `unit` (None: the FLOPs)
    unit: str = "MFLOPs"

    def __post_init__(self):
        if self.costs is None:
            self.costs = self.flops

    def best_under(self, budget: float) -> SearchResult:
        """The front's best sub-network within `budget` (in `unit`), as a :class:`SearchResult`."""
        fits = np.flatnonzero(self.costs <= budget)
        if len(fits) == 0:
            raise ValueError(f"no sub-network of the front fits {budget:g} {self.unit}; the "
                             f"front starts at {self.costs.min():g}")
        i = fits[-1]  # (by increasing cost, so also by increasing score)
        enc = self.encodings[i]
        return SearchResult(float(budget), enc, self.space.decode(enc), float(self.scores[i]),
                            float(self.flops[i]), float(self.params[i]), self.evaluations,
                            cost=float(self.costs[i]), unit=self.unit)

    def to_dict(self) -> dict:
        return {"cost_range": list(self.cost_range), "unit": self.unit,
                "encodings": self.encodings.tolist(), "scores": self.scores.tolist(),
                "costs": self.costs.tolist(), "flops": self.flops.tolist(),
                "params": self.params.tolist(), "evaluations": self.evaluations,
                "history": self.history}


FRONT_KNOBS = {"population": 256, "mutate_prob": 0.1, "cache": None}  # front()'s, by keyword


def front(space: SearchSpace, objective, cost_range, evaluations: int = 5000, *,
          seed: int | None = 0, cost=None, progress: bool = False, **knobs) -> FrontResult:
    """The whole accuracy-cost front within `cost_range` = (lo, hi) in one run (MFLOPs, or the
    unit of `cost`, as in :func:`evolve`: a :class:`~nasops.search.latency.LatencyTable` gives
    the accuracy-latency front): NSGA-II (Deb et al., 2002) with the repairing moves of
    :func:`evolve`, stopped after `evaluations` objective evaluations. Members stay within hi;
    costs below lo count as lo, so the search spends nothing on the front below the range. Each
    generation, parents chosen by binary tournament (lower rank, then larger crowding distance)
    make `population` children, half mutated and half crossed over; parents and children are
    ranked into non-dominated fronts and the best `population` kept (the last front by crowding
    distance). Returns the non-dominated set of everything evaluated with costs in the range.
    Keywords (FRONT_KNOBS): `population` (256), `mutate_prob` (0.1) and `cache` (a dict that
    shares objective values with other searches)."""
    unknown = sorted(set(knobs) - set(FRONT_KNOBS))
    if unknown:
        raise TypeError(f"front() got unknown keyword arguments {unknown}; it takes "
                        f"{sorted(FRONT_KNOBS)}")
    knobs = {**FRONT_KNOBS, **knobs}
    cost_fn = _cost_of(space, cost)
    lo, hi = _check_range(space, cost_range, cost_fn)
    evaluations = check_count("evaluations", evaluations, 1)
    population = check_count("population", knobs["population"], 4)
    mutate_prob = _check_probability("mutate_prob", knobs["mutate_prob"])
    rng = np.random.default_rng(seed64(seed))
    sampler = FlopsSampler(space, n_prior=50_000, seed=int(rng.integers(2**63)))
    moves = _Moves(space, cost_fn, hi, rng, mutate_prob, repair=True)
    run = _Nsga(space, _Scores(objective, knobs["cache"]), moves, lo, evaluations, population)
    run.start(initial_population(space, sampler, hi, population, rng,
                                 cost=None if cost is None else cost_fn))
    with tqdm(total=evaluations, desc=f"front {lo:g}-{hi:g} {_unit(cost_fn)}",
              disable=not progress) as bar:
        bar.update(run.scores.calls)
        while run.scores.calls < evaluations:
            before = run.scores.calls
            run.generation(rng)
            bar.update(run.scores.calls - before)
            if run.scores.calls == before:  # nothing new left to try
                break
    return run.result(hi)


def _check_range(space: SearchSpace, cost_range, cost=None) -> tuple[float, float]:
    unit = _unit(_cost_of(space, cost))
    if not isinstance(cost_range, (tuple, list, np.ndarray)) or len(cost_range) != 2:
        raise ValueError(f"cost_range must be (lo, hi) in {unit}, got {cost_range!r}")
    hi = check_budget(space, cost_range[1], cost)
    lo = cost_range[0]
    if not is_number(lo) \
            or not math.isfinite(lo) or not lo < hi:
        raise ValueError(f"cost_range = {tuple(cost_range)!r}: lo must be a number below hi")
    return float(lo), hi


class _Nsga:
    """The state of one :func:`front` search: members, their values, front ranks and crowding."""

    def __init__(self, space, scores, moves, lo, evaluations, population):
        self.space, self.scores, self.moves, self.lo = space, scores, moves, lo
        self.evaluations, self.population = evaluations, population
        self.history = []

    def select(self, members, values):
        """Keeps the `population` best by (front rank, crowding)."""
        costs = np.maximum(self.moves.cost(members), self.lo)
        rank = _fronts(costs, values)
        crowd = np.zeros(len(members))
        for r in np.unique(rank):
            at = np.flatnonzero(rank == r)
            crowd[at] = _crowding(costs[at], values[at])
        keep = np.lexsort((-crowd, rank))[:self.population]
        self.members, self.values, self.rank, self.crowd = (members[keep], values[keep],
                                                            rank[keep], crowd[keep])

    def budgeted(self, children):
        """The children while evaluations last (cached ones are free)."""
        new = self.scores.new(children)
        return children[~new | (np.cumsum(new) <= self.evaluations - self.scores.calls)]

    def start(self, members):
        members = self.budgeted(members)
        self.select(members, self.scores(members))

    def generation(self, rng):
        # binary tournaments: the lower rank wins, then the larger crowding distance
        rank, crowd, n = self.rank, self.crowd, self.population
        a, b = rng.integers(len(self.members), size=(2, n))
        a_wins = (rank[a] < rank[b]) | ((rank[a] == rank[b]) & (crowd[a] >= crowd[b]))
        pool = self.members[np.where(a_wins, a, b)]
        kids = [self.moves.children(pool, n // 2, self.moves.mutate),
                self.moves.children(pool, n - n // 2, self.moves.cross)]
        kids = self.budgeted(_unique(np.concatenate(kids)))
        both = _unique(np.concatenate([self.members, kids]))
        self.select(both, self.scores(both))
        self.history.append({"evaluations": self.scores.calls, "front": int((self.rank == 0).sum())})

    def result(self, hi) -> FrontResult:
        """The non-dominated set of everything evaluated within [lo, hi]."""
        cache, space, cost = self.scores.cache, self.space, self.moves.cost
        encs = np.stack([np.frombuffer(k, dtype=np.int64) for k in cache])
        costs = cost(encs)
        inside = np.flatnonzero((costs >= self.lo) & (costs <= hi))
        values = np.array([cache[encs[i].tobytes()] for i in inside])
        nd = inside[non_dominated(costs[inside], values)]
        return FrontResult(space, (self.lo, hi), encs[nd].copy(),
                           np.array([cache[encs[i].tobytes()] for i in nd]), space.flops(encs[nd]),
                           space.params(encs[nd]), self.scores.calls, self.history, costs[nd],
                           _unit(cost))


class SupernetAccuracy:
    """Objective: BN-calibrated accuracy on a split (default: the held-out one) of sub-networks
    of a trained supernet, through an :class:`~nasops.evaluate.Evaluator`."""

    def __init__(self, evaluator, split: str = "holdout", progress: bool = False):
        self.evaluator, self.split, self.progress = evaluator, split, progress

    def __call__(self, archs: np.ndarray) -> np.ndarray:
        return self.evaluator.accuracy(archs, self.split, progress=self.progress)


from . import synthetic  # noqa: E402,F401  (nasops.search.synthetic without an import of its own)
