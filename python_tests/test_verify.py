"""Verified picks (nasops.search.verify): a pick measured over its latency budget is replaced by
the best measured sub-network that fits, searching again under a tightened budget if none of the
search's own evaluations does. The 'device' here is a function of the table's prediction, so
what must be replaced, and what may replace it, is known."""
import numpy as np
import pytest

import nasops
from nasops.search import evolve
from nasops.search.verify import verify_picks


class PredictedMs:
    """A latency table stand-in: predicts each sub-network's MFLOPs as its milliseconds."""
    unit = "ms"

    def __init__(self, space):
        self.space = space

    def __call__(self, archs):
        return self.space.flops(np.atleast_2d(archs))


class Device:
    """Measures predicted x `slowdown(encoding)`; records every sub-network it timed."""

    def __init__(self, table, slowdown):
        self.table, self.slowdown, self.timed = table, slowdown, {}

    def __call__(self, encs):
        encs = np.atleast_2d(encs)
        ms = self.table(encs) * np.array([self.slowdown(e) for e in encs])
        self.timed.update({e.tobytes(): float(t) for e, t in zip(encs, ms)})
        return ms


@pytest.fixture(scope="module")
def small():
    return nasops.SearchSpace.load("small")


def _search(space, table, budget, cache):
    objective = space.flops  # (bigger is better: the pick presses against the budget)
    return evolve(space, objective, budget, cost=table, population=32, mutations=8,
                  crossovers=8, generations=4, seed=0, cache=cache)


def test_an_over_budget_pick_is_replaced_by_the_best_measured_that_fits(small):
    table = PredictedMs(small)
    budget = float(np.median(table(small.sample(200, seed=1))))
    cache = {}
    pick = _search(small, table, budget, cache)
    top_res = pick.arch.resolution  # the table is 25% optimistic at the pick's resolution
    device = Device(table, lambda e: 1.25 if small.decode(e).resolution == top_res else 1.0)
    original = pick.encoding.copy()
    assert device(original[None])[0] > budget  # (the setting this test is about)
    [check] = verify_picks([pick], table, cache, lambda b: _search(small, table, b, cache),
                           device)
    assert check.replaced is not None and check.replaced["encoding"] == original.tolist()
    assert check.replaced["measured_ms"] > budget
    assert check.within_budget and check.measured_ms <= budget
    assert check.measured_ms == pytest.approx(device.timed[pick.encoding.tobytes()])
    assert check.predicted_ms == pytest.approx(pick.cost) == pytest.approx(table(pick.encoding)[0])
    assert pick.score == cache[pick.encoding.tobytes()] == small.flops(pick.encoding[None])[0]
    assert pick.flops == pytest.approx(small.flops(pick.encoding[None])[0])
    # the best of everything timed that fits (ties: the faster)
    fitting = [(cache[k], -t) for k, t in device.timed.items() if t <= budget]
    assert (pick.score, -check.measured_ms) == max(fitting)
    assert check.timed == len(device.timed)


def test_with_no_evaluated_fit_it_searches_again_under_a_tightened_budget(small):
    table = PredictedMs(small)
    budget = float(np.quantile(table(small.sample(200, seed=1)), 0.7))
    cache = {}
    pick = _search(small, table, budget, cache)
    # 50% slower than predicted everywhere: only what is predicted under budget / 1.5 fits
    device = Device(table, lambda e: 1.5)
    [check] = verify_picks([pick], table, cache, lambda b: _search(small, table, b, cache),
                           device)
    assert check.replaced is not None and check.within_budget
    assert check.measured_ms <= budget
    # tightened by the table's error where it was measured: predicted / measured = 1 / 1.5
    assert check.tightened_budgets[0] == pytest.approx(budget / 1.5)
    assert table(pick.encoding)[0] <= check.tightened_budgets[-1]


def test_a_pick_within_budget_is_kept_and_nothing_fitting_is_flagged(small):
    table = PredictedMs(small)
    budget = float(np.median(table(small.sample(200, seed=1))))
    cache = {}
    pick = _search(small, table, budget, cache)
    kept = pick.encoding.copy()
    [check] = verify_picks([pick], table, cache, None, Device(table, lambda e: 0.9))
    assert check.replaced is None and check.within_budget and check.timed == 1
    assert np.array_equal(pick.encoding, kept)
    assert check.measured_ms == pytest.approx(0.9 * check.predicted_ms)
    # a device 100x slower than the table: nothing fits, not even re-searched picks; the
    # fastest measured is kept and flagged
    device = Device(table, lambda e: 100.0)
    [check] = verify_picks([pick], table, cache, lambda b: _search(small, table, b, cache),
                           device)
    assert not check.within_budget and check.measured_ms > budget
    assert check.measured_ms == min(device.timed.values())
    assert "nothing timed fits" in check.summary(budget)
