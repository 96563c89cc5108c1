import itertools
import json

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from nasops import FlopsSampler, SearchSpace

P_MIN = 1e-4  # chi-square tests: fail only when the distribution is really off

TINY = {
    "name": "tiny", "num_classes": 5, "flops_step": 1, "resolution": [8, 12],
    "stem": {"width": [8, 16], "kernel_size": 3, "stride": 1},
    "stages": [
        {"width": [8, 16], "depth": [1, 2], "kernel_size": [3, 5], "expand_ratio": [1], "stride": 1},
        {"width": [16, 24], "depth": [1, 2], "kernel_size": [3], "expand_ratio": [2, 3],
         "stride": 2, "se": True},
    ],
    "head": {"width": [32], "expand_ratio": 2},
}


@pytest.fixture(scope="module")
def tiny():
    """The tiny space and every one of its architectures (brute force)."""
    space = SearchSpace(TINY, "tiny")
    every = np.array(list(itertools.product(*space.choices)), dtype=np.int64)
    return space, every


def tiny_sampler(space, every, bins=6, **kw):
    flops = space.flops(every)
    step = (flops.max() - flops.min()) / bins
    return FlopsSampler(space, step=step, **kw), flops


def chi2(observed, expected):
    """Chi-square p-value, cells with expected count under 5 pooled into one."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    expected = expected / expected.sum() * observed.sum()
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return chisquare(observed, expected).pvalue


def counts_of(samples, every):
    index = {tuple(row): i for i, row in enumerate(every.tolist())}
    counts = np.zeros(len(every))
    for row in samples.tolist():
        counts[index[tuple(row)]] += 1
    return counts


def test_uniform_sampling_is_uniform_over_the_whole_space(tiny):
    space, every = tiny
    counts = counts_of(space.sample(100_000, seed=1), every)
    assert chi2(counts, np.ones(len(every))) > P_MIN


@pytest.mark.parametrize("by", ["params", "flops"])
def test_proportional_sampling_follows_model_size(tiny, by):
    space, every = tiny
    sampler, _ = tiny_sampler(space, every, seed=2)
    counts = counts_of(sampler.sample_proportional(100_000, by=by), every)
    size = space.params(every) if by == "params" else space.flops(every)
    assert chi2(counts, size) > P_MIN
    # and it is not uniform: the largest architecture comes up more often than the smallest
    assert counts[np.argmax(size)] > 2 * counts[np.argmin(size)]
    stats = sampler.stats
    assert stats["proportional_samples"] == 100_000
    assert stats["proportional_draws"] >= 100_000


def test_prior_is_the_flops_distribution(tiny):
    space, every = tiny
    sampler, flops = tiny_sampler(space, every, n_prior=100_000, seed=3)
    exact_bins = np.floor(flops / sampler.step + 0.5)
    bins, exact = np.unique(exact_bins, return_counts=True)
    np.testing.assert_allclose(sampler.targets, bins * sampler.step)
    assert chi2(sampler.prior * 100_000, exact) > P_MIN
    drawn = sampler.sample_target(50_000)
    observed = [(drawn == t).sum() for t in sampler.targets]
    assert chi2(observed, sampler.prior) > P_MIN
    uniform = sampler.sample_target(20_000, uniform_bins=True)
    assert chi2([(uniform == t).sum() for t in sampler.targets], np.ones(len(bins))) > P_MIN


def test_constrained_samples_follow_the_proposal_restricted_to_the_target(tiny):
    """Accepted samples are distributed as prod_j q_j(x_j | t), restricted to FLOPs bin t."""
    space, every = tiny
    sampler, flops = tiny_sampler(space, every, n_prior=50_000, seed=4)
    state = sampler.state_dict()["sampler"]
    sizes = [len(c) for c in space.choices]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    index = np.stack([np.searchsorted(c, every[:, j]) for j, c in enumerate(space.choices)], 1)
    for pos, target in enumerate(sampler.targets):
        row = np.asarray(state["proposal"][pos * offsets[-1]:(pos + 1) * offsets[-1]], float)
        q = np.ones(len(every))
        for j in range(space.dim):
            marginal = row[offsets[j]:offsets[j + 1]] / row[offsets[j]:offsets[j + 1]].sum()
            q *= marginal[index[:, j]]
        in_bin = np.floor(flops / sampler.step + 0.5) * sampler.step == target
        expected = q * in_bin
        if expected.sum() == 0 or (expected > 0).sum() < 2:
            continue
        samples = sampler.sample(target, n=20_000)
        counts = counts_of(samples, every)
        assert counts[~in_bin].sum() == 0
        assert chi2(counts[expected > 0], expected[expected > 0]) > P_MIN


def test_attentive_samples_round_to_their_target():
    space = SearchSpace.load("attentive_nas")
    sampler = FlopsSampler(space, n_prior=100_000, seed=0)
    targets = sampler.sample_target(300)
    for target in targets:
        archs = sampler.sample(target, n=5)
        rounded = np.floor(space.flops(archs) / 25 + 0.5) * 25
        assert np.all(rounded == target)
    stats = sampler.stats
    assert stats["samples"] == 1500 and stats["fallbacks"] == 0
    assert 1 <= stats["trials"] / stats["samples"] <= 30
    assert np.all(np.diff(sampler.targets) > 0) and sampler.prior.sum() == pytest.approx(1)
    # a target between bins is rounded to the nearest one
    t = sampler.targets[len(sampler.targets) // 2]
    assert np.all(np.floor(space.flops(sampler.sample(t + 10, n=3)) / 25 + 0.5) * 25 == t)


def test_exhausted_trials_fall_back_to_stored_examples():
    space = SearchSpace.load("attentive_nas")
    sampler = FlopsSampler(space, n_prior=20_000, seed=0, max_trials=1)
    target = sampler.targets[np.argmax(sampler.prior)]  # one draw lands in it ~1 time in 15
    archs = sampler.sample(target, n=200)
    assert np.all(np.floor(space.flops(archs) / 25 + 0.5) * 25 == target)
    stats = sampler.stats
    assert stats["trials"] == 200 and stats["fallbacks"] > 0


def test_seeds_reproduce():
    space = SearchSpace.load("small")

    def run(seed):
        s = FlopsSampler(space, n_prior=20_000, seed=seed)
        return (s.targets, s.sample_target(20), s.sample(s.targets[3], n=20),
                s.sample_proportional(10))

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_state_dict_round_trip(tmp_path):
    space = SearchSpace.load("attentive_nas")
    s = FlopsSampler(space, n_prior=20_000, seed=1)
    s.sample(s.targets[10], n=7)
    state = s.state_dict()
    torch.save(state, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    via_json = json.loads(json.dumps(state))
    expected = (s.sample_target(5), s.sample(s.targets[5], n=20), s.sample_proportional(5), s.stats)
    for restored_state in (loaded, via_json):
        r = FlopsSampler(space, n_prior=100, seed=99)
        r.load_state_dict(restored_state)
        got = (r.sample_target(5), r.sample(r.targets[5], n=20), r.sample_proportional(5), r.stats)
        np.testing.assert_array_equal(r.targets, s.targets)
        for x, y in zip(expected[:3], got[:3]):
            np.testing.assert_array_equal(x, y)
        assert got[3] == expected[3]


def test_state_dict_errors():
    space = SearchSpace.load("attentive_nas")
    s = FlopsSampler(space, n_prior=5_000, seed=1)
    other = FlopsSampler(SearchSpace.load("small"), n_prior=5_000)
    with pytest.raises(ValueError, match="saved for search space 'small'"):
        s.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="not a FlopsSampler state"):
        s.load_state_dict({"model": 1})
    state = s.state_dict()
    state["sampler"]["proposal"][0] += 1
    with pytest.raises(ValueError, match="sampler state is corrupt"):
        s.load_state_dict(state)
    state = s.state_dict()
    del state["sampler"]["bins"]
    with pytest.raises(ValueError, match="sampler state is malformed"):
        s.load_state_dict(state)
    state = s.state_dict()
    state["sampler"]["counts"].pop()
    with pytest.raises(ValueError, match="does not fit this search space"):
        s.load_state_dict(state)
    # the failed loads left the sampler as it was
    assert s.sample(s.targets[0]).shape == (1, space.dim)


def test_bad_arguments():
    space = SearchSpace.load("attentive_nas")
    s = FlopsSampler(space, n_prior=5_000, seed=1)
    with pytest.raises(ValueError, match=r"target 5000 MFLOPs has no proposal.*step 25 MFLOPs\): 2\d\d, "):
        s.sample(5000)
    with pytest.raises(TypeError, match="target must be a number"):
        s.sample("400")
    with pytest.raises(ValueError, match="n = 0 must be an integer >= 1"):
        s.sample(s.targets[0], n=0)
    with pytest.raises(ValueError, match=r"by = 'size' is not allowed; allowed: \['params', 'flops'\]"):
        s.sample_proportional(3, by="size")
    with pytest.raises(ValueError, match="step = -1 must be a positive number"):
        FlopsSampler(space, step=-1)
    with pytest.raises(ValueError, match="n_prior = 0 must be an integer >= 1"):
        FlopsSampler(space, n_prior=0)
    with pytest.raises(ValueError, match="max_trials = 0"):
        FlopsSampler(space, max_trials=0)
    with pytest.raises(ValueError, match="seed = 1.5 must be None"):
        FlopsSampler(space, seed=1.5)
    with pytest.raises(TypeError, match="space must be a SearchSpace"):
        FlopsSampler("attentive_nas")
