"""Neural Architecture Optimization (NAO; Luo et al., 2018), the search of Balanced NAO.

An encoder maps a sub-network (one token per dimension of the space's encoding) to per-token
embeddings; a predictor scores their mean; a decoder maps embeddings back to a sub-network. The
three are trained together on the sub-networks evaluated so far, with the loss
``trade_off x MSE(prediction) + (1 - trade_off) x NLL(reconstruction)`` (NAO: 0.8). New candidates
come from the best evaluated ones (the seeds): their embeddings move along the predictor's
gradient by a step size, and are decoded; the step size grows (eta, 2 eta, ...) until enough
decoded sub-networks are new, as the published NAO-WS code does (step 1, 2, ... up to 50).

The model follows NAO's design at NAO-WS's sizes (an LSTM encoder, token embeddings of 32 and
hidden states of 64 normalised to unit length, the prediction through a sigmoid on min-max
normalised scores, an LSTM decoder started from the mean embedding, with attention over the
encoder's states, and Adam at 1e-3 with gradients clipped at 5; github.com/renqianluo/NAO_pytorch,
NAO_V1). Here each position decodes only among its own dimension's choices, so every decoded
sequence is a valid sub-network; one over the budget is repaired like the evolution's children
(a random dimension the move did not change shrinks until it fits).

:func:`nao` is a search on any objective, like :func:`~nasops.search.evolve`;
:class:`NAOModel` is also what the ``balanced-nao`` training strategy (Balanced NAO's Alg. 1)
uses between its rounds of supernet training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ..utils.checks import check_count, is_number, seed64
from ..space import SearchSpace
from ..space.sampler import FlopsSampler
from .core import (SearchResult, _Moves, _Scores, _cost_of, _unique, _unit, check_budget,
                   initial_population)

MAX_STEPS = 50  # step sizes eta, 2 eta, ..., MAX_STEPS x eta (NAO-WS: 1 to 50)


@dataclass(frozen=True)
class NAOOptions:
    """The knobs of :func:`nao` and of the NAO model's training (NAO-WS's values where they
    carry over: embeddings 32, hidden 64, batch 100, Adam 1e-3, trade-off 0.8)."""
    pool: int = 100          # the first sub-networks, drawn within the budget and evaluated
    seeds: int = 50          # K: the best evaluated, whose embeddings move each round
    new: int = 50            # new sub-networks per round
    train_steps: int = 100   # gradient steps of the NAO model per round (it keeps its weights)
    batch: int = 100
    trade_off: float = 0.8   # weight of the prediction loss against the reconstruction loss
    step_size: float = 1.0   # eta: the first step, and the increment
    embed: int = 32
    hidden: int = 64
    lr: float = 1e-3

    def checked(self) -> "NAOOptions":
        for name in ("pool", "seeds", "new", "train_steps", "batch", "embed", "hidden"):
            check_count(name, getattr(self, name), 1)
        if not is_number(self.trade_off) or not 0 <= self.trade_off <= 1:
            raise ValueError(f"trade_off = {self.trade_off!r} must be in [0, 1]")
        for name in ("step_size", "lr"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} = {value!r} must be a number > 0")
        return self


def nao_options(options: NAOOptions | None, knobs: dict) -> NAOOptions:
    """`options` with the knobs given by keyword applied, checked; TypeError naming an unknown
    knob."""
    names = {f.name for f in fields(NAOOptions)}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise TypeError(f"unknown NAO option(s) {unknown}; allowed: {sorted(names)} and "
                        f"['cache', 'sampler']")
    return replace(options or NAOOptions(), **knobs).checked()


class NAOModel(nn.Module):
    """Encoder, performance predictor and decoder over the encodings of one space."""

    def __init__(self, space: SearchSpace, options: NAOOptions | None = None, seed: int = 0):
        super().__init__()
        self.space, self.options = space, (options or NAOOptions()).checked()
        o = self.options
        sizes = torch.as_tensor(space.sizes, dtype=torch.long)
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes, persistent=False)
        vocab = int(sizes.sum())
        owner = torch.repeat_interleave(torch.arange(space.dim), sizes)
        # position t may only decode its own dimension's tokens
        self.register_buffer("allowed", owner[None, :] == torch.arange(space.dim)[:, None],
                             persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed64(seed) % 2**63)
            self.embedding = nn.Embedding(vocab, o.embed)
            self.encoder = nn.LSTM(o.embed, o.hidden, batch_first=True)
            self.predictor = nn.Sequential(nn.Linear(o.hidden, o.hidden), nn.ReLU(),
                                           nn.Linear(o.hidden, 1))
            self.start = nn.Parameter(torch.zeros(o.embed))  # the decoder's first input
            self.decoder = nn.LSTM(o.embed, o.hidden, batch_first=True)
            self.attend = nn.Linear(2 * o.hidden, o.hidden)
            self.out = nn.Linear(o.hidden, vocab)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=o.lr)

    # -- the three parts ----------------------------------------------------------------------
    def tokens(self, archs: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(self.space.to_index(np.atleast_2d(archs)), dtype=torch.long)
        return index + self.offsets

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token embeddings [B, D, hidden], each of unit length (as NAO)."""
        states, _ = self.encoder(self.embedding(tokens))
        return F.normalize(states, dim=-1)

    def predict(self, states: torch.Tensor) -> torch.Tensor:
        """The predicted (normalised) score [B] of per-token embeddings."""
        mean = F.normalize(states.mean(1), dim=-1)
        return torch.sigmoid(self.predictor(mean)).squeeze(-1)

    def _logits(self, outputs, states):
        """Decoder outputs [B, T, h] with attention over the encoder's states -> logits."""
        context = torch.softmax(outputs @ states.transpose(1, 2), -1) @ states
        return self.out(torch.tanh(self.attend(torch.cat([outputs, context], -1))))

    def _initial(self, states):
        mean = F.normalize(states.mean(1), dim=-1)[None]  # [1, B, h]
        return mean.contiguous(), mean.contiguous()

    def reconstruction_logits(self, tokens, states) -> torch.Tensor:
        """Teacher-forced decoder logits [B, D, V], masked to each position's dimension."""
        previous = torch.cat([self.start.expand(len(tokens), 1, -1),
                              self.embedding(tokens[:, :-1])], 1)
        outputs, _ = self.decoder(previous, self._initial(states))
        return self._logits(outputs, states).masked_fill(~self.allowed, -1e9)

    @torch.no_grad()
    def decode(self, states: torch.Tensor) -> np.ndarray:
        """Greedy decoding of per-token embeddings [B, D, h] -> encodings [B, D]."""
        hidden = self._initial(states)
        step_input = self.start.expand(len(states), 1, -1)
        picked = []
        for t in range(self.space.dim):
            output, hidden = self.decoder(step_input, hidden)
            logits = self._logits(output, states)[:, 0].masked_fill(~self.allowed[t], -1e9)
            token = logits.argmax(-1)
            picked.append(token)
            step_input = self.embedding(token)[:, None]
        index = (torch.stack(picked, 1) - self.offsets).numpy()
        return self.space.from_index(index)

    # -- training and proposing ---------------------------------------------------------------
    def fit(self, archs: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> dict:
        """`train_steps` Adam steps on (archs, scores), scores min-max normalised as NAO does;
        the final mean losses."""
        o = self.options
        scores = np.asarray(scores, dtype=np.float64)
        span = scores.max() - scores.min()
        target = torch.as_tensor((scores - scores.min()) / span if span > 0 else
                                 np.full(len(scores), 0.5), dtype=torch.float32)
        tokens = self.tokens(archs)
        self.train()
        mse_sum = nll_sum = 0.0
        for step in range(o.train_steps):
            batch = torch.as_tensor(rng.choice(len(tokens), size=min(o.batch, len(tokens)),
                                               replace=False))
            states = self.encode(tokens[batch])
            mse = F.mse_loss(self.predict(states), target[batch])
            logits = self.reconstruction_logits(tokens[batch], states)
            nll = F.cross_entropy(logits.flatten(0, 1), tokens[batch].flatten())
            loss = o.trade_off * mse + (1 - o.trade_off) * nll
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters(), 5.0)
            self.optimizer.step()
            if step >= o.train_steps - 10:  # (the last steps' mean)
                mse_sum, nll_sum = mse_sum + mse.item(), nll_sum + nll.item()
        last = min(10, o.train_steps)
        return {"mse": mse_sum / last, "nll": nll_sum / last}

    @torch.no_grad()
    def predicted(self, archs: np.ndarray) -> np.ndarray:
        """The predictor's normalised scores of encodings [N, D]."""
        self.eval()
        return self.predict(self.encode(self.tokens(archs))).numpy().astype(np.float64)

    def moved(self, archs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token embeddings of `archs`, the predictor's gradient with respect to them)."""
        self.eval()
        with torch.enable_grad():
            states = self.encode(self.tokens(archs)).detach().requires_grad_(True)
            grad, = torch.autograd.grad(self.predict(states).sum(), states)
        return states.detach(), grad

    def propose(self, seeds: np.ndarray, count: int, fit, known) -> tuple[np.ndarray, float]:
        """Up to `count` new sub-networks from the seeds: each seed's embeddings moved by eta,
        2 eta, ... along the predictor's gradient and decoded, `fit` (archs, changed) -> the
        rows within the budget applied, until `count` are neither `known` (rows -> bool) nor
        repeated. Returns them and the largest step size used."""
        states, grad = self.moved(seeds)
        found = np.empty((0, self.space.dim), dtype=np.int64)
        eta, chunk = 0.0, 10  # step sizes decoded together, in one batch (then taken in order)
        for first in range(1, MAX_STEPS + 1, chunk):
            ks = range(first, min(first + chunk, MAX_STEPS + 1))
            moved = torch.cat([states + k * self.options.step_size * grad for k in ks])
            decoded_all = self.decode(F.normalize(moved, dim=-1)).reshape(len(ks), len(seeds), -1)
            for k, decoded in zip(ks, decoded_all):
                eta = k * self.options.step_size
                decoded = fit(decoded, decoded != seeds)
                decoded = decoded[~known(decoded)]
                found = _unique(np.concatenate([found, decoded]))
                if len(found) >= count:
                    return found[:count], eta
        return found[:count], eta

    def state_dict_all(self) -> dict:
        """The weights and the optimizer's state (for a checkpoint)."""
        return {"model": self.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict_all(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def nao(space: SearchSpace, objective, budget: float, evaluations: int = 1000,
        options: NAOOptions | None = None, *, seed: int | None = 0, cost=None,
        progress: bool = False, **knobs) -> SearchResult:
    """NAO search for the sub-network with the best objective within `budget` (MFLOPs, or the
    unit of `cost`; among equal scores, the cheaper), spending at most `evaluations` objective
    values: `pool` sub-networks drawn within the budget, then rounds of (train the NAO model on
    everything evaluated; move the best `seeds`; evaluate up to `new` decoded sub-networks)
    until the evaluations are spent. A round whose step sizes up to MAX_STEPS x eta decode
    nothing new fills up with mutations of the seeds (recorded in the history as
    ``mutated``), so the search does not stall. `options` (:class:`NAOOptions`) holds the knobs;
    any may also be given by keyword; ``cache`` (a dict) shares objective values between
    searches, ``sampler`` a FlopsSampler."""
    shared = {k: knobs.pop(k) for k in ("cache", "sampler") if k in knobs}
    options = nao_options(options, knobs)
    evaluations = check_count("evaluations", evaluations, 1)
    cost_fn = _cost_of(space, cost)
    budget = check_budget(space, budget, cost_fn)
    rng = np.random.default_rng(seed64(seed))
    sampler = shared.get("sampler") or FlopsSampler(space, n_prior=50_000,
                                                    seed=int(rng.integers(2**63)))
    scores = _Scores(objective, shared.get("cache"))
    moves = _Moves(space, cost_fn, budget, rng, mutate_prob=0.1, repair=True)
    model = NAOModel(space, options, seed=int(rng.integers(2**63)))
    first = initial_population(space, sampler, budget, min(options.pool, evaluations), rng,
                               cost=None if cost is None else cost_fn)
    bar = tqdm(total=evaluations, desc=f"nao <= {budget:g} {_unit(cost_fn)}", disable=not progress)
    values = []
    for start in range(0, len(first), options.new):  # (in parts, so that the bar moves)
        values.append(scores(first[start:start + options.new]))
        bar.update(scores.calls - bar.n)
    state = _Pool(first, np.concatenate(values))
    history = []
    while len(state.values) < evaluations:  # (values found in a shared cache count too)
        record = _round(model, moves, scores, state,
                        min(options.new, evaluations - len(state.values)), rng, cost_fn)
        history.append({"round": len(history) + 1, **record})
        bar.update(scores.calls - bar.n)
        bar.set_postfix(best=f"{record['best']:.4g}", eta=f"{record['step_size']:g}")
        if record["new"] == 0:
            break  # (nothing new within the budget: the budget admits no more)
    bar.close()
    best = state.best(cost_fn)
    enc, value = state.archs[best], float(state.values[best])
    return SearchResult(budget, enc, space.decode(enc), value, space.flops(enc),
                        space.params(enc), scores.calls, history,
                        float(cost_fn(enc[None, :])[0]), _unit(cost_fn))


class _Pool:
    """Everything one search has evaluated, and the values."""

    def __init__(self, archs, values):
        self.archs, self.values = archs, np.asarray(values, dtype=np.float64)

    def add(self, archs, values):
        self.archs = np.concatenate([self.archs, archs])
        self.values = np.concatenate([self.values, values])

    def ranked(self, cost_fn) -> np.ndarray:  # best first; ties: the cheaper
        return np.lexsort((cost_fn(self.archs), -self.values))

    def best(self, cost_fn) -> int:
        return int(self.ranked(cost_fn)[0])


def new_candidates(model: NAOModel, moves: _Moves, seeds: np.ndarray, count: int,
                   known) -> tuple[np.ndarray, dict]:
    """Up to `count` sub-networks within the moves' budget that `known` (rows -> bool) does not
    know, proposed by the model from the seeds; when its step sizes up to MAX_STEPS x eta find
    too few, mutations of the seeds make up the rest (so a search does not stall). Returns them
    and {"new", "mutated", "step_size"}."""
    new, eta = model.propose(seeds, count, moves.fit, known)
    mutated = 0
    if len(new) < count:
        extra = moves.children(seeds, 4 * count, moves.mutate)
        extra = extra[~known(extra) & ~Known(new)(extra)][:count - len(new)]
        new, mutated = np.concatenate([new, extra]), len(extra)
    return new, {"new": int(len(new)), "mutated": int(mutated), "step_size": float(eta)}


def _round(model: NAOModel, moves: _Moves, scores: _Scores, pool: _Pool, count: int, rng,
           cost_fn) -> dict:
    """One round of the search: fit, propose from the seeds, evaluate; its history entry."""
    losses = model.fit(pool.archs, pool.values, rng)
    seeds = pool.archs[pool.ranked(cost_fn)[:model.options.seeds]]
    new, made = new_candidates(model, moves, seeds, count, Known(pool.archs))
    if len(new):
        pool.add(new, scores(new))
    best = pool.best(cost_fn)
    return {"best": float(pool.values[best]), "evaluations": scores.calls, **made, **losses}


class Known:
    """Membership of rows in a set of encodings."""

    def __init__(self, archs):
        self.keys = {a.tobytes() for a in archs}

    def __call__(self, rows) -> np.ndarray:
        return np.array([r.tobytes() in self.keys for r in rows], dtype=bool)
