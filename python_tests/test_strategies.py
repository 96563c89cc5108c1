"""Each training strategy picks what its definition says, checked against brute force."""
import numpy as np
import pytest

import nasops
from nasops.train.strategies import (STRATEGIES, BestUpLoss, Strategy, Uniform, WorstUpAccuracy,
                             WorstUpOffline, build_strategy, needs_predictor, offline_table)


@pytest.fixture(scope="module")
def space():
    return nasops.SearchSpace.load("small")


def test_strategy_names_resolve_through_the_registry(space):
    for name, cls, k in (("uniform", Uniform, None), ("bestup-3-loss", BestUpLoss, 3),
                         ("worstup-50-acc", WorstUpAccuracy, 50),
                         ("worstup-offline", WorstUpOffline, None)):
        found, fields = STRATEGIES.lookup(name)
        assert found is cls and fields == ({} if k is None else {"k": k})
    assert build_strategy("bestup-3-loss", space, n_prior=2000).k == 3
    assert [needs_predictor(n) for n in ("balanced", "worstup-2-loss", "bestup-2-acc",
                                         "bestup-offline")] == [False, False, True, True]
    for bad in ("best-3-loss", "bestup-0-loss", "bestup-x-acc", "worstup-3", "sandwich"):
        with pytest.raises(ValueError, match=f"strategy = '{bad}' is not registered; registered: "
                                             r"\['uniform', 'balanced', .*'bestup-\{k\}-loss'"):
            STRATEGIES.lookup(bad)


@pytest.mark.parametrize("direction", ["best", "worst"])
def test_loss_strategies_pick_the_extreme_candidate(space, direction):
    s = build_strategy(f"{direction}up-4-loss", space, seed=1, n_prior=20000)
    rng = np.random.default_rng(0)
    seen = []

    def loss_fn(candidates):
        losses = rng.normal(size=len(candidates))
        seen.append((candidates.copy(), losses))
        return losses

    picked = s.sample(5, loss_fn)
    assert len(seen) == 5 and picked.shape == (5, space.dim)
    for (candidates, losses), arch in zip(seen, picked):
        assert len(candidates) == 4
        bins = np.rint(space.flops(candidates) / s.sampler.step)
        assert (bins == bins[0]).all()  # K candidates at one FLOPs target
        expected = np.argmin(losses) if direction == "best" else np.argmax(losses)
        np.testing.assert_array_equal(arch, candidates[expected])


@pytest.mark.parametrize("direction", ["best", "worst"])
def test_acc_strategies_pick_by_the_predictor(space, direction):
    calls = []

    def predictor(archs):
        scores = space.params(archs)  # any deterministic score
        calls.append((archs.copy(), scores))
        return scores

    s = build_strategy(f"{direction}up-7-acc", space, seed=2, predictor=predictor, n_prior=20000)
    picked = s.sample(3)
    assert len(calls) == 3
    for (candidates, scores), arch in zip(calls, picked):
        expected = np.argmax(scores) if direction == "best" else np.argmin(scores)
        np.testing.assert_array_equal(arch, candidates[expected])


def test_offline_table_is_the_per_bin_extreme(space):
    pool = space.sample(3000, seed=3)
    scores = np.random.default_rng(1).normal(size=3000)
    for direction in ("best", "worst"):
        bins, archs = offline_table(space, pool, scores, 1.0, direction)
        pool_bins = np.rint(space.flops(pool)).astype(int)
        assert sorted(bins.tolist()) == sorted(set(pool_bins.tolist()))
        for b, a in zip(bins, archs):
            members = np.flatnonzero(pool_bins == b)
            pick = members[np.argmax(scores[members]) if direction == "best" else np.argmin(scores[members])]
            np.testing.assert_array_equal(a, pool[pick])


def test_offline_strategy_samples_from_its_table(space):
    s = build_strategy("bestup-offline", space, seed=4, predictor=lambda a: -space.flops(a),
                 pool_size=5000, n_prior=20000)
    bins, archs = s.table
    table = {tuple(a) for a in archs.tolist()}
    picked = s.sample(50)
    assert all(tuple(a) in table for a in picked.tolist())
    assert len({tuple(a) for a in picked.tolist()}) > 5  # targets vary


def test_balanced_favours_large_networks(space):
    balanced = build_strategy("balanced", space, seed=5, n_prior=20000).sample(2000)
    uniform = build_strategy("uniform", space, seed=5, n_prior=20000).sample(2000)
    p_bal, p_uni = space.params(balanced), space.params(uniform)
    # size-proportional draws: E[size] = E_u[size^2] / E_u[size] > E_u[size]
    expected = (p_uni ** 2).mean() / p_uni.mean()
    assert p_bal.mean() == pytest.approx(expected, rel=0.05)
    assert p_bal.mean() > p_uni.mean() * 1.05


def test_uniform_bins_option_spreads_targets(space):
    prior = build_strategy("bestup-2-acc", space, seed=6, predictor=space.params, n_prior=20000)
    flat = build_strategy("bestup-2-acc", space, seed=6, predictor=space.params, n_prior=20000,
                    uniform_bins=True)
    a, b = space.flops(prior.sample(400)), space.flops(flat.sample(400))
    assert np.std(b) > np.std(a)  # uniform over bins reaches the tails more often


def test_state_round_trip_and_errors(space):
    for name in ("uniform", "balanced", "bestup-3-loss"):
        s = build_strategy(name, space, seed=7, n_prior=20000)
        s.sample(2, lambda c: space.flops(c))
        state = s.state_dict()
        first = s.sample(3, lambda c: space.flops(c))
        t = build_strategy(name, space, seed=99, n_prior=20000)
        t.load_state_dict(state)
        np.testing.assert_array_equal(t.sample(3, lambda c: space.flops(c)), first)
    with pytest.raises(ValueError, match="needs an accuracy predictor"):
        build_strategy("bestup-50-acc", space)
    with pytest.raises(ValueError, match="needs loss_fn"):
        build_strategy("worstup-3-loss", space, n_prior=20000).sample(1)
    with pytest.raises(ValueError, match="strategy state is for 'uniform'"):
        build_strategy("balanced", space, n_prior=20000).load_state_dict(
            build_strategy("uniform", space, n_prior=20000).state_dict())
