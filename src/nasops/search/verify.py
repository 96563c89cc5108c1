"""Verified picks: a latency-budgeted search trusts the table's prediction, so each pick is then
timed end to end on the table's device, and one measured over its budget is replaced.

The replacement is the best-scoring sub-network the search evaluated whose end-to-end time fits:
the search's evaluations within the predicted budget, best first, are timed in a batch of
`CANDIDATES`; if none of them fits, the search runs again under a budget tightened by how far
the table was off for what was measured (predicted / measured, at most `RESEARCHES` times).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CANDIDATES = 8   # sub-networks timed per round of replacement
RESEARCHES = 3   # searches under a tightened budget before giving up


@dataclass
class Verification:
    """What verifying one pick found: its predicted and measured milliseconds and, if it was
    replaced, the pick it replaced and the tightened budgets searched."""
    predicted_ms: float
    measured_ms: float
    within_budget: bool
    replaced: dict | None = None     # the original pick: encoding, score, predicted/measured ms
    timed: int = 1                   # sub-networks timed end to end for this budget
    tightened_budgets: list = field(default_factory=list)

    def to_dict(self) -> dict:
        doc = {"predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
               "within_budget": self.within_budget, "timed": self.timed}
        if self.replaced is not None:
            doc["replaced"] = self.replaced
        if self.tightened_budgets:
            doc["tightened_budgets"] = self.tightened_budgets
        return doc

    def summary(self, budget: float) -> str:
        """One line for the search's output."""
        line = f"measured {self.measured_ms:.2f} ms end to end (predicted {self.predicted_ms:.2f})"
        if self.replaced is not None:
            r = self.replaced
            line = (f"the search's pick measured {r['measured_ms']:.2f} ms (predicted "
                    f"{r['predicted_ms']:.2f}), over the {budget:g} ms budget: replaced by the "
                    f"best sub-network measured within it, " + line)
            if self.tightened_budgets:
                line += (", found by searching again under "
                         + ", ".join(f"{b:.3g}" for b in self.tightened_budgets) + " ms")
        if not self.within_budget:
            line += (f"; nothing timed fits {budget:g} ms (after {self.timed} sub-networks): "
                     f"this is the fastest measured")
        return line


def verify_picks(results, table, cache: dict, research, measure=None) -> list[Verification]:
    """Times each pick of `results` (SearchResults of a search with ``cost=table``) with
    `measure` (encodings [N, D] -> end-to-end milliseconds [N]; default: on this machine, as
    :func:`~nasops.search.latency.measurer` makes it) and replaces, in place, each one measured
    over its budget (see the module's docstring). `cache` holds the search's objective values by
    encoding bytes (the ``cache=`` of the search); `research(budget)` runs the search again
    under a tighter budget, sharing that cache, and returns its SearchResult."""
    if measure is None:
        from .latency import measurer
        measure = measurer(table)
    return [_verify(r, table, cache, research, measure) for r in results]


def _verify(result, table, cache, research, measure) -> Verification:
    space, budget = table.space, result.budget
    measured = float(measure(result.encoding[None, :])[0])
    check = Verification(float(result.cost), measured, measured <= budget)
    if check.within_budget:
        return check
    timed = {result.encoding.tobytes(): measured}
    tightened = budget
    for attempt in range(RESEARCHES + 1):
        keys = [k for k in cache if k not in timed]
        encs = (np.stack([np.frombuffer(k, dtype=np.int64) for k in keys]) if keys
                else np.zeros((0, space.dim), np.int64))
        predicted = table(encs) if len(encs) else np.zeros(0)
        fits = np.flatnonzero(predicted <= budget)
        values = np.array([cache[keys[i]] for i in fits])
        order = fits[np.lexsort((predicted[fits], -values))][:CANDIDATES]
        if len(order):
            times = np.asarray(measure(encs[order]), dtype=np.float64)
            timed.update({encs[i].tobytes(): float(t) for i, t in zip(order, times)})
        best = _best_fitting(timed, cache, budget)
        if best is not None or attempt == RESEARCHES:
            break
        # the table's bias where it was wrong: tighten the budget by predicted / measured
        keys_t = list(timed)
        t_encs = np.stack([np.frombuffer(k, dtype=np.int64) for k in keys_t])
        ratio = float(np.min(table(t_encs) / np.array([timed[k] for k in keys_t])))
        tightened = min(tightened, budget) * min(ratio, 0.98)
        floor = float(table(space.encode(space.min_arch())[None, :])[0])
        if not math.isfinite(tightened) or tightened < floor:
            break
        check.tightened_budgets.append(float(tightened))
        found = research(tightened)
        key = found.encoding.tobytes()
        if key not in timed:
            timed[key] = float(measure(found.encoding[None, :])[0])
    check.timed = len(timed)
    if best is None:  # nothing fits: the fastest measured, flagged
        best = min(timed, key=timed.get)
    if best == result.encoding.tobytes():
        return check
    check.replaced = {"encoding": result.encoding.tolist(), "score": result.score,
                      "predicted_ms": check.predicted_ms, "measured_ms": measured}
    enc = np.frombuffer(best, dtype=np.int64).copy()
    result.encoding, result.arch, result.score = enc, space.decode(enc), float(cache[best])
    result.flops, result.params = space.flops(enc), space.params(enc)
    result.cost = float(table(enc[None, :])[0])
    check.predicted_ms, check.measured_ms = result.cost, timed[best]
    check.within_budget = timed[best] <= budget
    return check


def _best_fitting(timed: dict, cache: dict, budget: float):
    """The key of the best-scoring timed sub-network measured within the budget (the faster
    among equal scores), or None."""
    fitting = [k for k, t in timed.items() if t <= budget and k in cache]
    if not fitting:
        return None
    return max(fitting, key=lambda k: (cache[k], -timed[k]))
