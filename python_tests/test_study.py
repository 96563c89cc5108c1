"""The strategy study at CI size: every output is produced and well-formed, and a second
invocation resumes from what is on disk instead of redoing it."""
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import study  # noqa: E402


@pytest.mark.slow
def test_ci_sized_study(tiny, tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = ["--ci", "--space", tiny, "--out", str(out), "--runs-dir", str(runs)]
    assert study.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == set(study.RUNS)
    for name, run in summary["runs"].items():
        strategy, kd, seed = study.RUNS[name]
        assert (run["strategy"], run["kd"], run["seed"]) == (strategy, kd, seed)
        assert 0 <= run["mean_acc"] <= 1 and len(run["per_bin"]) == 4
        for b in run["per_bin"]:
            assert b["min"] <= b["q1"] <= b["median"] <= b["q3"] <= b["max"] and b["n"] > 0
        budgets = [f["budget"] for f in run["front"]]
        assert budgets == sorted(study.CI_STUDY["budgets"])
        assert all(f["flops"] <= f["budget"] and 0 <= f["test_acc"] <= 1 for f in run["front"])
        assert 0 <= run["final"]["largest_holdout_acc"] <= 1
    tau = summary["kendall_tau"]
    for key in ("early_checkpoint", "final_checkpoint", "second_seed"):
        assert isinstance(tau[key], float) and (math.isnan(tau[key]) or -1 <= tau[key] <= 1)
        assert len(tau["measured"][key]) == len(tau["predicted"]) == study.CI_STUDY["archs"] // 2
    table = (out / "summary.md").read_text()
    assert all(f"| {name} |" in table for name in study.RUNS) and "spread" in table
    for png in ("fig5_accuracy_by_flops.png", "fig6_best_vs_uniform.png", "kendall_tau.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # same runs, different seeds: the strategies' supernets differ from uniform's
    assert summary["runs"]["uniform"]["final"] != summary["runs"]["uniform-seed1"]["final"] or \
        summary["runs"]["uniform"]["mean_acc"] != summary["runs"]["uniform-seed1"]["mean_acc"]
    # resumed: nothing is trained or measured again, the results are the same
    stamps = {p: os.path.getmtime(p) for p in runs.glob("*/checkpoint.pt")}
    assert study.main(args) == 0
    assert {p: os.path.getmtime(p) for p in runs.glob("*/checkpoint.pt")} == stamps
    again = json.loads((out / "summary.json").read_text())
    assert again["runs"] == summary["runs"]
    # --only: the rows of some runs, from what is on disk, as the summary has them
    capsys.readouterr()
    assert study.main(args + ["--only", "uniform", "balanced"]) == 0
    rows = capsys.readouterr().out
    for name in ("uniform", "balanced"):
        run = summary["runs"][name]
        assert (f"| {name} | {run['train_s'] / 60:.1f} | "
                f"{100 * run['final']['largest_holdout_acc']:.1f} | "
                f"{100 * run['final']['smallest_holdout_acc']:.1f} | "
                f"{100 * run['mean_acc']:.1f} |") in rows, rows
    assert {p: os.path.getmtime(p) for p in runs.glob("*/checkpoint.pt")} == stamps
