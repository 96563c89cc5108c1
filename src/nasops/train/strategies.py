"""The training strategies (:class:`Strategy`): which sub-networks each step trains, built on
the FLOPs sampler (:class:`nasops.space.sampler.FlopsSampler`)."""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from ..search.architecture_optimization import Known, NAOModel, NAOOptions, new_candidates
from ..search.core import _Moves, _unique, check_budget, initial_population
from ..space import SearchSpace
from ..space.sampler import FlopsSampler
from ..utils.checks import check_count, seed64
from ..utils.registry import Registry


STRATEGIES = Registry("strategy", "strategy", "nasops.strategies")


def register_strategy(name: str, cls=None):
    """Registers a :class:`Strategy` subclass under `name` (a decorator without `cls`). A name
    with ``{k}`` registers a family whose members pass k to the class (``bestup-{k}-loss``)."""
    return STRATEGIES.register(name, cls)


class Strategy:
    """Draws the sampled sub-networks of each training step (the sandwich rule adds the largest
    and smallest around them). A strategy is a registered subclass that implements
    :meth:`sample`; the built-in ones, by name:

    * ``uniform``: every dimension uniformly at random.
    * ``bestup-K-loss`` / ``worstup-K-loss``: a FLOPs target from the prior, K candidates at it
      from the proposal, the one with the lowest / highest mini-batch loss (``loss_fn``).
    * ``bestup-K-acc`` / ``worstup-K-acc``: the same, scored by the predictor's accuracy.
    * ``bestup-offline`` / ``worstup-offline``: a target from the prior, then the sub-network
      with the best / worst predicted accuracy in that FLOPs bin among ``pool_size`` uniform ones
      (the table is built once, at construction).
    * ``balanced``: drawn with probability proportional to the parameter count.
    * ``balanced-nao``: Balanced NAO (Alg. 1): drawn in proportion to the parameter count from a
      pool of candidates that NAO renews between rounds (:class:`BalancedNAO`).

    Every strategy has ``space``, a FLOPs ``sampler`` and a NumPy generator ``rng``, all seeded
    from ``seed``; ``uniform_bins=True`` tells it to draw FLOPs targets uniformly over the prior's
    bins instead of from it. ``predictor`` is any callable from encodings [N, D] to accuracies
    [N] (an :class:`~nasops.predictor.AccuracyPredictor`); a class that needs one sets
    ``needs_predictor = True``. :meth:`state_dict` holds the random state; a subclass with more
    state extends it. A strategy that acts between steps overrides :meth:`after_step`, one that
    ends with its own picks :meth:`picks`; ``recipe`` holds the run's recipe (its own keys).
    Build one by name with :func:`build_strategy`."""

    needs_predictor = False
    max_trials = 1000  # the FLOPs sampler's proposals per constrained draw

    def __init__(self, name: str, space: SearchSpace, seed: int = 0, predictor=None,
                 uniform_bins: bool = False, pool_size: int = 1_000_000, n_prior: int = 200_000,
                 recipe=None):
        self.name, self.space, self.uniform_bins = name, space, bool(uniform_bins)
        self.recipe = recipe
        if self.needs_predictor and predictor is None:
            raise ValueError(f"strategy {name!r} needs an accuracy predictor (the recipe's "
                             f"'predictor' file)")
        self.predictor, self.pool_size = predictor, pool_size
        self.sampler = FlopsSampler(space, n_prior=n_prior, seed=seed, max_trials=self.max_trials)
        self.rng = np.random.default_rng(seed64(seed) ^ 0x5DEECE66D)

    def sample(self, n: int, loss_fn=None) -> np.ndarray:
        """n encoded architectures [n, D]. ``loss_fn``: encodings [K, D] -> the mini-batch
        losses [K] of those sub-networks (lower is better), for strategies that score by loss."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sample()")

    def after_step(self, step: int, total_steps: int, evaluate) -> dict | None:
        """Called after each optimizer step (`step` from 1 of `total_steps`); `evaluate`
        (encodings [N, D] -> held-out accuracies [N], BN re-calibrated; training statistics
        kept) scores sub-networks of the supernet as it is. A dict returned is recorded in
        metrics.jsonl. Nothing by default."""
        return None

    def picks(self, evaluate) -> list[dict] | None:
        """At the end of training: the strategy's own picks (entries of pareto.json), or None."""
        return None

    def predicted(self, archs: np.ndarray) -> np.ndarray:
        """The predictor's accuracies of encodings [N, D], checked to be N numbers."""
        scores = np.asarray(self.predictor(archs), dtype=np.float64).ravel()
        if scores.shape != (len(archs),):
            raise ValueError(f"the predictor returned {scores.size} scores for {len(archs)} "
                             f"architectures")
        return scores

    def state_dict(self) -> dict:
        return {"name": self.name, "sampler": self.sampler.state_dict(),
                "rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("name") != self.name:
            raise ValueError(f"strategy state is for {state.get('name') if isinstance(state, dict) else None!r}, "
                             f"not {self.name!r}")
        self.sampler.load_state_dict(state["sampler"])
        self.rng.bit_generator.state = json.loads(state["rng"])


def build_strategy(name: str, space: SearchSpace, **options) -> Strategy:
    """The registered strategy `name` (a family's member passes its fields, e.g. k), built over
    `space` with `options` (seed, predictor, uniform_bins, pool_size, n_prior, recipe)."""
    cls, fields = STRATEGIES.lookup(name)
    return cls(name, space, **options, **fields)


def needs_predictor(name: str) -> bool:
    """Whether the registered strategy `name` needs an accuracy predictor."""
    return bool(getattr(STRATEGIES.get(name), "needs_predictor", False))


@register_strategy("uniform")
class Uniform(Strategy):
    def sample(self, n: int, loss_fn=None) -> np.ndarray:
        return self.space.sample(check_count("n", n), seed=int(self.rng.integers(2**63)))


@register_strategy("balanced")
class Balanced(Strategy):
    """Balanced one-shot training: sub-networks in proportion to their parameter count."""

    def sample(self, n: int, loss_fn=None) -> np.ndarray:
        return self.sampler.sample_proportional(check_count("n", n), by="params")


class Attentive(Strategy):
    """AttentiveNAS: per sub-network, a FLOPs target from the prior, k candidates at it from the
    proposal, and the one with the highest (``best``) or lowest score (:meth:`scores`: higher
    is better)."""
    best = True

    def __init__(self, name: str, space: SearchSpace, k: int = 1, **options):
        super().__init__(name, space, **options)
        self.k = check_count("k", k)

    def scores(self, candidates: np.ndarray, loss_fn) -> np.ndarray:
        raise NotImplementedError

    def sample(self, n: int, loss_fn=None) -> np.ndarray:
        n = check_count("n", n)
        out = []
        for target in self.sampler.sample_target(n, uniform_bins=self.uniform_bins):
            candidates = self.sampler.sample(target, self.k)
            scores = self.scores(candidates, loss_fn)
            out.append(candidates[np.argmax(scores) if self.best else np.argmin(scores)])
        return np.stack(out)


class ByLoss(Attentive):
    """Scored by the mini-batch loss (lower loss, higher score)."""

    def sample(self, n: int, loss_fn=None) -> np.ndarray:
        if loss_fn is None:
            raise ValueError(f"strategy {self.name!r} needs loss_fn to score its candidates")
        return super().sample(n, loss_fn)

    def scores(self, candidates, loss_fn):
        losses = np.asarray(loss_fn(candidates), dtype=np.float64).ravel()
        if losses.shape != (self.k,):
            raise ValueError(f"loss_fn returned {losses.size} losses for {self.k} candidates")
        return -losses


class ByAccuracy(Attentive):
    """Scored by the predictor's accuracy."""
    needs_predictor = True

    def scores(self, candidates, loss_fn):
        return self.predicted(candidates)


@register_strategy("bestup-{k}-loss")
class BestUpLoss(ByLoss):
    best = True


@register_strategy("worstup-{k}-loss")
class WorstUpLoss(ByLoss):
    best = False


@register_strategy("bestup-{k}-acc")
class BestUpAccuracy(ByAccuracy):
    best = True


@register_strategy("worstup-{k}-acc")
class WorstUpAccuracy(ByAccuracy):
    best = False


def offline_table(space: SearchSpace, pool: np.ndarray, scores: np.ndarray, step: float,
                  direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(bins, archs): per FLOPs bin (FLOPs / step, rounded) present in `pool`, the member with the
    highest (direction "best") or lowest ("worst") score. Ties go to the first in the pool."""
    if direction not in ("best", "worst"):
        raise ValueError(f"direction {direction!r} is not allowed; allowed: ['best', 'worst']")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(pool),):
        raise ValueError(f"{len(pool)} pool members but {scores.size} scores")
    bins = np.rint(space.flops(pool) / step).astype(np.int64)
    key = -scores if direction == "best" else scores
    order = np.lexsort((np.arange(len(pool)), key, bins))  # by bin, then score, then position
    first = np.ones(len(order), dtype=bool)
    first[1:] = bins[order][1:] != bins[order][:-1]
    chosen = order[first]
    return bins[chosen], pool[chosen]


class Offline(Strategy):
    """The offline AttentiveNAS variant: a target from the prior, then the best / worst
    predicted sub-network of that FLOPs bin in a table built once from pool_size uniform ones."""
    needs_predictor = True
    best = True

    def __init__(self, name: str, space: SearchSpace, **options):
        super().__init__(name, space, **options)
        pool = space.sample(check_count("pool_size", self.pool_size),
                            seed=int(self.rng.integers(2**63)))
        self.table = offline_table(space, pool, self.predicted(pool), self.sampler.step,
                                   "best" if self.best else "worst")

    def sample(self, n: int, loss_fn=None) -> np.ndarray:
        bins, archs = self.table
        targets = self.sampler.sample_target(check_count("n", n), uniform_bins=self.uniform_bins)
        # the pool may miss a rare bin: the nearest one
        return np.stack([archs[np.argmin(np.abs(bins - int(round(t / self.sampler.step))))]
                         for t in targets])

    def state_dict(self) -> dict:
        return {**super().state_dict(), "table": [self.table[0].tolist(), self.table[1].tolist()]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "table" not in state:
            raise ValueError(f"strategy state of {self.name!r} is malformed: it has no offline table")
        self.table = (np.asarray(state["table"][0], dtype=np.int64),
                      np.asarray(state["table"][1], dtype=np.int64))


@register_strategy("bestup-offline")
class BestUpOffline(Offline):
    best = True


@register_strategy("worstup-offline")
class WorstUpOffline(Offline):
    best = False


@register_strategy("balanced-nao")
class BalancedNAO(Strategy):
    """Balanced NAO (Luo, Qin, Chen), Alg. 1: each step's sub-networks are drawn from a pool of
    candidates in proportion to their parameter count (Eqn. 3); at ``nao_rounds`` evenly spaced
    steps the whole pool is evaluated on the held-out split, the NAO model (encoder, predictor,
    decoder; :mod:`nasops.search.architecture_optimization`) trains on the pool and its
    accuracies, and the ``nao_new`` sub-networks it proposes from the ``nao_seeds`` best replace
    the worst. The pool is kept per budget of ``nao_budgets`` (MFLOPs; an equal share of
    ``nao_pool``, seeds and new ones each), and proposals are repaired to their budget. As the
    published NAO-WS code does, the pool keeps its size and each round's model sees the
    pool's current accuracies (those of earlier rounds were measured on other weights). At the
    end, the best of the pool under each budget, measured on the final weights (:meth:`picks`)."""

    def __init__(self, name: str, space: SearchSpace, **options):
        super().__init__(name, space, **options)
        cfg = self.recipe or {}
        if not cfg.get("nao_budgets"):
            raise ValueError(f"strategy {name!r} needs nao_budgets = a list of MFLOPs budgets "
                             f"(the pool is kept, and the run ends with a pick, per budget)")
        self.budgets = sorted(check_budget(space, b) for b in cfg["nao_budgets"])
        share = len(self.budgets)
        self.options = NAOOptions(pool=max(cfg["nao_pool"] // share, 2),
                                  seeds=max(cfg["nao_seeds"] // share, 1),
                                  new=max(cfg["nao_new"] // share, 1),
                                  step_size=cfg["nao_step_size"]).checked()
        self.rounds = cfg["nao_rounds"]
        self.model = NAOModel(space, self.options, seed=int(self.rng.integers(2**63)))
        self.moves = [_Moves(space, space.flops, b, self.rng, 0.1, repair=True)
                      for b in self.budgets]
        self.pools = [initial_population(space, self.sampler, b, self.options.pool, self.rng)
                      for b in self.budgets]
        self.round = 0

    @property
    def pool(self) -> np.ndarray:
        """Every candidate, once."""
        return _unique(np.concatenate(self.pools))

    def sample(self, n: int, loss_fn=None) -> np.ndarray:
        pool = self.pool
        size = self.space.params(pool)
        return pool[self.rng.choice(len(pool), size=check_count("n", n), p=size / size.sum())]

    def round_steps(self, total_steps: int) -> list[int]:
        """The steps after which the rounds run: evenly spaced, the last segment trains the
        last round's pool."""
        return [round(total_steps * r / (self.rounds + 1)) for r in range(1, self.rounds + 1)]

    def after_step(self, step: int, total_steps: int, evaluate) -> dict | None:
        if self.round >= self.rounds or step != self.round_steps(total_steps)[self.round]:
            return None
        start = time.perf_counter()
        pool = self.pool
        scores = dict(zip((a.tobytes() for a in pool), evaluate(pool)))
        losses = self.model.fit(pool, np.array([scores[a.tobytes()] for a in pool]), self.rng)
        made, best = [], []
        for i, members in enumerate(self.pools):
            values = np.array([scores[a.tobytes()] for a in members])
            order = np.lexsort((self.space.flops(members), -values))  # best first
            best.append(float(values[order[0]]))
            seeds = members[order[:self.options.seeds]]
            new, info = new_candidates(self.model, self.moves[i], seeds, self.options.new,
                                       Known(np.concatenate(self.pools)))
            self.pools[i] = np.concatenate([members[order[:len(members) - len(new)]], new])
            made.append(info)
        self.round += 1
        return {"event": "nao", "round": self.round, "step": step, "pool": len(pool),
                "budgets": self.budgets, "best_holdout": best,
                "new": [m["new"] for m in made], "mutated": [m["mutated"] for m in made],
                "step_size": [m["step_size"] for m in made], **losses,
                "seconds": time.perf_counter() - start}

    def picks(self, evaluate) -> list[dict]:
        """The best of the pool under each budget (the cheaper among equal accuracies), on the
        final weights: entries with the budget, architecture, MFLOPs, params and accuracy."""
        pool = self.pool
        values, flops = np.asarray(evaluate(pool), dtype=np.float64), self.space.flops(pool)
        out = []
        for b in self.budgets:
            fits = np.flatnonzero(flops <= b)
            i = fits[np.lexsort((flops[fits], -values[fits]))[0]]
            enc = pool[i]
            out.append({"budget": b, "unit": "MFLOPs", "arch": self.space.decode(enc).to_dict(),
                        "encoding": enc.tolist(), "score": float(values[i]),
                        "flops": float(flops[i]), "cost": float(flops[i]),
                        "params": float(self.space.params(enc)), "evaluations": len(pool)})
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "round": self.round,
                "pools": [torch.as_tensor(p) for p in self.pools],
                "nao": self.model.state_dict_all()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.round = int(state["round"])
        self.pools = [p.numpy().astype(np.int64) for p in state["pools"]]
        self.model.load_state_dict_all(state["nao"])
