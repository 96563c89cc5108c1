"""The strategy study at CI size: every output is produced and well-formed, its statistics agree
with formulas written out here, the pilot's gate stops the study, two studies on one runs
directory refuse to run at once, and a second invocation resumes from what is on disk instead of
redoing it."""
import json
import math
import os
import sys

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import study  # noqa: E402


def test_arm_of_strips_the_seed_suffix_only():
    assert study.arm_of("uniform-seed2") == "uniform"
    assert study.arm_of("bestup-3-loss-seed1") == "bestup-3-loss"
    assert study.arm_of("bestup-3-loss-alpha") == "bestup-3-loss-alpha"
    arms = {study.arm_of(n) for n in study.RUNS}
    assert arms == {"uniform", "bestup-3-loss", "worstup-3-loss", "balanced", "bestup-50-acc",
                    "bestup-3-loss-alpha"}
    for arm in study.SEEDED:
        assert sorted(study.RUNS[n][2] for n in study.RUNS if study.arm_of(n) == arm) == [0, 1, 2]


def _run(mean, best):
    return {"mean_acc": mean, "per_bin": [{"max": best + b / 100, "median": mean, "min": 0.6}
                                          for b in range(4)]}


def test_compare_intervals_follow_the_pooled_seed_variance_with_a_binomial_floor():
    runs = {"uniform": _run(0.80, 0.90), "uniform-seed1": _run(0.82, 0.92),
            "uniform-seed2": _run(0.81, 0.88), "other": _run(0.85, 0.95),
            "other-seed1": _run(0.87, 0.97), "single": _run(0.70, 0.80)}
    out = study.compare(runs, images=5000)
    assert set(out) == {"other", "single"}
    # pooled seed variance of "mean": uniform's three and other's two, 2 + 1 degrees of freedom
    u, o = np.array([0.80, 0.82, 0.81]), np.array([0.85, 0.87])
    var = (((u - u.mean()) ** 2).sum() + ((o - o.mean()) ** 2).sum()) / 3
    q = stats.t.ppf(0.975, 3)
    row = out["other"]["mean"][0]
    assert row["diff"] == pytest.approx(o.mean() - u.mean())
    assert row["half_width"] == pytest.approx(q * math.sqrt(var * (1 / 2 + 1 / 3)))
    row = out["single"]["max"][2]
    ub = np.array([0.92, 0.94, 0.90])
    assert row["diff"] == pytest.approx(0.82 - ub.mean()) and row["seeds"] == 1
    ob = np.array([0.97, 0.99])
    var = (((ub - ub.mean()) ** 2).sum() + ((ob - ob.mean()) ** 2).sum()) / 3
    assert row["half_width"] == pytest.approx(q * math.sqrt(var * (1 + 1 / 3)))
    # identical seeds: the binomial variance of one measurement is the floor
    row = out["single"]["min"][0]
    assert row["diff"] == 0
    assert row["half_width"] == pytest.approx(q * math.sqrt(0.6 * 0.4 / 5000 * (1 + 1 / 3)))
    # the median and the mean average many measurements: no binomial floor, the seeds alone
    agree = study.compare({"uniform": _run(0.80, 0.90), "uniform-seed1": _run(0.80, 0.92),
                           "single": _run(0.70, 0.80)}, images=5000)["single"]
    assert agree["median"][0]["half_width"] == 0 and agree["mean"][0]["half_width"] == 0
    assert agree["max"][0]["half_width"] > 0
    # no arm run with several seeds: the best and worst get the floor and the normal quantile,
    # the mean has no interval
    alone = study.compare({"uniform": _run(0.80, 0.90), "single": _run(0.70, 0.80)}, images=5000)
    p = (0.90 + 0.80) / 2
    assert alone["single"]["max"][0]["half_width"] == \
        pytest.approx(stats.norm.ppf(0.975) * math.sqrt(p * (1 - p) / 5000 * 2))
    assert math.isnan(alone["single"]["mean"][0]["half_width"])


@pytest.mark.slow
def test_ci_sized_study(tiny, tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = ["--ci", "--space", tiny, "--out", str(out), "--runs-dir", str(runs)]
    assert study.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == set(study.RUNS) and summary["missing"] == []
    for name, run in summary["runs"].items():
        strategy, kd, seed = study.RUNS[name]
        assert (run["strategy"], run["kd"], run["seed"]) == (strategy, kd, seed)
        assert 0 <= run["mean_acc"] <= 1 and len(run["per_bin"]) == 4
        assert run["train_s"] > 0 and run["measure_s"] > 0 and run["search_s"] > 0
        for b in run["per_bin"]:
            assert b["min"] <= b["q1"] <= b["median"] <= b["q3"] <= b["max"] and b["n"] > 0
        budgets = [f["budget"] for f in run["front"]]
        assert budgets == sorted(study.CI_STUDY["budgets"])
        assert all(f["flops"] <= f["budget"] and 0 <= f["test_acc"] <= 1 for f in run["front"])
        assert 0 <= run["final"]["largest_holdout_acc"] <= 1

    # the pilot, recomputed from the uniform run's measurements
    evals = json.loads((runs / "uniform" / "study_evals.json").read_text())
    acc, mflops = np.asarray(evals["accuracy"]), np.asarray(evals["mflops"])
    pilot = summary["pilot"]
    ranks = np.corrcoef(stats.rankdata(mflops), stats.rankdata(acc))[0, 1]
    assert pilot["spearman_mflops_acc"] == pytest.approx(ranks)
    images = pilot["holdout_images"]
    assert images == round(study.CI["limit"] * study.CI["holdout"])
    assert pilot["binomial_sd"] == pytest.approx(math.sqrt(acc.mean() * (1 - acc.mean()) / images))
    assert pilot["sd"] == pytest.approx(acc.std(ddof=1)) and pilot["passed"] is True
    assert pilot["reliability"] == pytest.approx(1 - (pilot["binomial_sd"] / pilot["sd"]) ** 2)

    # differences from uniform: every arm, every statistic; one recomputed
    arms = {study.arm_of(n) for n in study.RUNS} - {"uniform"}
    assert set(summary["vs_uniform"]) == arms
    for arm, rows in summary["vs_uniform"].items():
        assert [len(rows[s]) for s in ("max", "median", "min", "mean")] == [4, 4, 4, 1]
        assert all(r["half_width"] > 0 for s in rows.values() for r in s)
    r = summary["runs"]
    uniform_best = np.mean([r[n]["per_bin"][1]["max"] for n in r if study.arm_of(n) == "uniform"])
    assert summary["vs_uniform"]["balanced"]["max"][1]["diff"] == \
        pytest.approx(r["balanced"]["per_bin"][1]["max"] - uniform_best)

    kl = np.mean([r[n]["mean_acc"] for n in r if study.arm_of(n) == "bestup-3-loss"])
    assert summary["alpha_vs_kl"]["mean"][0]["diff"] == \
        pytest.approx(r["bestup-3-loss-alpha"]["mean_acc"] - kl)

    # the predictor study: every forest on every checkpoint and seed, tau as scipy has it
    tau = summary["kendall_tau"]
    pairs = {(p["fitted_on"], p["measured"]): p["tau"] for p in tau["pairs"]}
    assert {("early", m) for m in ("early", "final", "seed 1", "seed 2")} <= set(pairs)
    assert {("final", m) for m in ("final", "seed 1", "seed 2")} <= set(pairs)
    assert ("final (measured)", "seed 1") in pairs
    for (fitted, measured), value in pairs.items():
        if not fitted.endswith("(measured)"):
            assert len(tau["predicted"][fitted]) == len(tau["measured"][measured]) \
                == study.CI_STUDY["archs"] // 2
            expected = stats.kendalltau(tau["predicted"][fitted], tau["measured"][measured])[0]
            assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)

    table = (out / "summary.md").read_text()
    assert all(f"| {name} |" in table for name in study.RUNS) and "Pilot" in table
    assert "Partial" not in table and "`kd: alpha` against `kd: kl`" in table
    for png in ("fig5_accuracy_by_flops.png", "fig6_best_vs_uniform.png", "kendall_tau.png",
                "pilot.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # same runs, different seeds: the strategies' supernets differ from uniform's
    assert r["uniform"]["final"] != r["uniform-seed1"]["final"] or \
        r["uniform"]["mean_acc"] != r["uniform-seed1"]["mean_acc"]

    # every run kept its early checkpoint (the predictor and ranking studies' early supernets)
    assert all((runs / name / "early.pt").is_file() for name in study.RUNS)

    # resumed: nothing is trained or measured again, the results are the same
    stamps = {p: os.path.getmtime(p) for p in runs.glob("*/*.json")}
    assert study.main(args) == 0
    assert {p: os.path.getmtime(p) for p in runs.glob("*/*.json")} == stamps
    assert json.loads((out / "summary.json").read_text())["runs"] == summary["runs"]
    # --summary alone writes the same summary from what is on disk
    (out / "summary.json").unlink()
    assert study.main(args + ["--summary"]) == 0
    assert json.loads((out / "summary.json").read_text())["vs_uniform"] == summary["vs_uniform"]
    # --only: the rows of some runs, from what is on disk, as the summary has them
    capsys.readouterr()
    assert study.main(args + ["--only", "uniform", "balanced"]) == 0
    rows = capsys.readouterr().out
    for name in ("uniform", "balanced"):
        run = r[name]
        assert (f"| {name} | {run['train_s'] / 60:.1f} | "
                f"{100 * run['final']['largest_holdout_acc']:.1f} | "
                f"{100 * run['final']['smallest_holdout_acc']:.1f} | "
                f"{100 * run['mean_acc']:.1f} |") in rows, rows
    assert {p: os.path.getmtime(p) for p in runs.glob("*/*.json")} == stamps

    # a second study on the same runs directory refuses to start
    capsys.readouterr()
    with study.exclusive(str(runs)):
        assert study.main(args) == 1
    assert "another study is running" in capsys.readouterr().err

    # a gate the pilot misses stops the study before any other run (here: a fresh runs dir
    # holding only the finished uniform run and its pilot)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("pilot.json", "uniform"):
        os.symlink(runs / name, fresh / name)
    strict = dict(study.CI_STUDY, gate={"spearman": 1.01, "largest": 0.0, "spread": 0.0})
    with pytest.raises(study.GateFailed, match="Spearman"):
        study.Study(study.CI | {"space": tiny}, strict, str(fresh), str(tmp_path / "o2")).run()
    assert sorted(os.listdir(fresh)) == ["pilot.json", "uniform"]
