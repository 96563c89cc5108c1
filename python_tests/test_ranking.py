"""The ranking study (Balanced NAO's measurement): its statistics against brute-force counts, the
sub-networks it picks, the one-sub-network space its stand-alone training starts from, and the
CI-sized run end to end (outputs well-formed, resumed without retraining)."""
import itertools
import json
import os
import sys

import numpy as np
import pytest
from scipy import stats

from nasops import SearchSpace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import ranking  # noqa: E402
import study  # noqa: E402


def brute_pairwise_accuracy(truth, predicted):
    agree = total = 0.0
    for i, j in itertools.combinations(range(len(truth)), 2):
        if truth[i] == truth[j]:
            continue
        total += 1
        if predicted[i] == predicted[j]:
            agree += 0.5
        elif (truth[i] > truth[j]) == (predicted[i] > predicted[j]):
            agree += 1
    return agree / total


def test_pairwise_accuracy_equals_a_brute_force_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth, predicted = rng.integers(0, 6, 15), rng.integers(0, 6, 15)  # many ties
        assert ranking.pairwise_accuracy(truth, predicted) == \
            pytest.approx(brute_pairwise_accuracy(truth, predicted))
    x = rng.normal(size=30)
    assert ranking.pairwise_accuracy(x, 2 * x + 1) == 1.0
    assert ranking.pairwise_accuracy(x, -x) == 0.0
    y = rng.normal(size=30)  # without ties: pairwise accuracy = (tau + 1) / 2
    assert ranking.pairwise_accuracy(x, y) == pytest.approx((stats.kendalltau(x, y)[0] + 1) / 2)
    assert np.isnan(ranking.pairwise_accuracy([1, 1, 1], [1, 2, 3]))


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    a = rng.normal(size=24)
    b = a + rng.normal(scale=0.5, size=24)
    lo, hi = ranking.bootstrap_interval(ranking.pairwise_accuracy, a, b, resamples=500)
    assert lo <= ranking.pairwise_accuracy(a, b) <= hi and hi - lo > 0.02
    assert ranking.bootstrap_interval(ranking.pairwise_accuracy, a, b, resamples=500) == [lo, hi]


def test_paired_difference_interval_keeps_the_pairing():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=24)
    worse = truth + rng.normal(scale=1.0, size=24)
    better = worse + (truth - worse) * 0.5  # every sub-network nearer the truth than in `worse`
    diff = ranking.difference(ranking.pairwise_accuracy)
    assert diff(truth, better, worse) == pytest.approx(
        ranking.pairwise_accuracy(truth, better) - ranking.pairwise_accuracy(truth, worse))
    lo, hi = ranking.bootstrap_interval(diff, truth, better, worse, resamples=500)
    assert lo <= diff(truth, better, worse) <= hi
    # resampled by hand: the same indices for all three columns
    k = np.random.default_rng(0).integers(0, 24, 24)
    assert diff(truth[k], better[k], worse[k]) == pytest.approx(
        ranking.pairwise_accuracy(truth[k], better[k]) - ranking.pairwise_accuracy(truth[k], worse[k]))
    assert ranking.bootstrap_interval(diff, truth, truth, truth, resamples=50) == [0.0, 0.0]


def test_picked_sub_networks_are_distinct_and_spread_over_log_flops():
    space = SearchSpace.load("small_wide", in_channels=1)
    x = ranking.spread_over_flops(space, 24, seed=2026)
    assert len({tuple(r) for r in x}) == 24
    flops = space.flops(x)
    pool = space.flops(space.sample(20_000, seed=2026))
    lo, hi = np.quantile(pool, [0.01, 0.99])
    targets = np.geomspace(lo, hi, 24)
    assert np.all(np.abs(np.log(flops / targets)) < 0.05)  # each within 5% of its target


def test_one_arch_space_holds_exactly_that_sub_network():
    space = SearchSpace.load("small_wide", in_channels=1)
    for row in space.sample(5, seed=3):
        one = SearchSpace(ranking.one_arch_space(space, row))
        assert list(one.sizes) == [1] * one.dim
        assert one.max_arch() == space.decode(row) == one.min_arch()
        assert one.flops(one.encode(one.max_arch())) == pytest.approx(space.flops(row))
        assert one.params(one.encode(one.max_arch())) == pytest.approx(space.params(row))


@pytest.mark.slow
def test_ci_sized_ranking(tiny, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = ["--ci", "--space", tiny, "--out", str(out), "--runs-dir", str(runs)]
    assert ranking.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    n = ranking.CI_RANKING["archs"]
    alone = summary["standalone"]
    assert len(alone) == n and all(0 <= a["holdout_acc"] <= 1 and a["seconds"] > 0 for a in alone)
    assert len({tuple(a["encoding"]) for a in alone}) == n
    truth = [a["holdout_acc"] for a in alone]
    assert [(r["supernet"], r["checkpoint"]) for r in summary["rows"]] == \
        [(s, c) for s in ranking.SUPERNETS for c in ranking.CHECKPOINTS]
    for r in summary["rows"]:
        assert len(r["inherited"]) == n
        pa = brute_pairwise_accuracy(truth, r["inherited"])
        assert (np.isnan(pa) and np.isnan(r["pairwise_accuracy"])) or \
            r["pairwise_accuracy"] == pytest.approx(pa)
        tau = stats.kendalltau(truth, r["inherited"])[0]
        assert (np.isnan(tau) and np.isnan(r["kendall_tau"])) or r["kendall_tau"] == pytest.approx(tau)
        for key in ("pairwise_accuracy_ci", "kendall_tau_ci", "tau_params_inherited_ci"):
            lo, hi = r[key]
            assert np.isnan(lo) or lo <= hi
    # the supernets are the study's own runs, with their early checkpoints
    for name in ranking.SUPERNETS:
        assert (runs / name / "final.json").is_file() and (runs / name / "early.pt").is_file()
    rows = {(r["supernet"], r["checkpoint"]): r for r in summary["rows"]}
    assert [(v["supernet"], v["checkpoint"]) for v in summary["versus_uniform"]] == \
        [(s, c) for s in ranking.SUPERNETS[1:] for c in ranking.CHECKPOINTS]
    for v in summary["versus_uniform"]:
        arm, uniform = rows[v["supernet"], v["checkpoint"]], rows["uniform", v["checkpoint"]]
        for key in ("pairwise_accuracy", "kendall_tau"):
            expected = arm[key] - uniform[key]
            assert (np.isnan(expected) and np.isnan(v[key])) or v[key] == pytest.approx(expected)
            lo, hi = v[key + "_ci"]
            assert np.isnan(lo) or lo <= hi
    table = (out / "summary.md").read_text()
    assert all(f"| {s} | {c} |" in table for s in ranking.SUPERNETS for c in ranking.CHECKPOINTS)
    for name in ranking.SUPERNETS:
        assert (out / f"scatter_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resumed: nothing trained or measured again, the same summary
    text = (out / "summary.json").read_text()
    stamps = {p: os.path.getmtime(p) for p in (runs / "ranking").glob("*.json")}
    assert len(stamps) == n + 2 * len(ranking.SUPERNETS)
    assert ranking.main(args) == 0
    assert {p: os.path.getmtime(p) for p in (runs / "ranking").glob("*.json")} == stamps
    assert (out / "summary.json").read_text() == text
    # a study on the same runs directory waits for the ranking (one heavy process at a time)
    with study.exclusive(str(runs)):
        assert ranking.main(args) == 1
