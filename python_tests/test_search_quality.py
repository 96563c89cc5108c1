"""Search quality: the traps that the paper's evolution falls into and the repairing search
escapes (measured against the exhaustive optimum of the small space), the whole front in one run
(NSGA-II), and the helpers they rest on (hypervolume, non-dominated sets, choice positions)."""
import itertools
import json

import numpy as np
import pytest

import nasops
from nasops.search import evolve, front, hypervolume, non_dominated
from nasops.search.synthetic import Interacting, NarrowOptimum, ResolutionTrap, exhaustive

SETTINGS = dict(population=128, mutations=32, crossovers=32)  # a quarter of the paper's


@pytest.fixture(scope="module")
def small():
    return nasops.SearchSpace.load("small")


class Recording:
    """Wraps an objective; keeps every row it was asked to score."""

    def __init__(self, objective):
        self.objective, self.rows = objective, []

    def __call__(self, archs):
        self.rows.append(archs.copy())
        return self.objective(archs)


def peak_near(space, mflops):
    """The sub-network of a fixed random pool whose FLOPs are closest to `mflops`."""
    pool = space.sample(4000, seed=7)
    return pool[np.argmin(np.abs(space.flops(pool) - mflops))]


TRAPS = {  # name: (objective maker, budget in MFLOPs)
    "resolution trap": (lambda s: ResolutionTrap(s), 3.9),
    "narrow optimum": (lambda s: NarrowOptimum(s, peak_near(s, 0.97 * 9.0)), 9.0),
    "interacting dimensions": (lambda s: Interacting(s), 6.0),
}


@pytest.mark.parametrize("trap", list(TRAPS))
def test_the_paper_protocol_falls_into_each_trap_and_the_repairing_search_escapes(small, trap):
    make, budget = TRAPS[trap]
    objective = make(small)
    _, optimum = exhaustive(small, objective, budget)
    solved, evaluations = {}, {}
    for method, generations in (("repair", 20), ("paper", 60)):  # the paper: more evaluations
        solved[method], evaluations[method] = 0, []
        for seed in range(4):
            recorded = Recording(objective)
            r = evolve(small, recorded, budget, generations=generations, seed=seed,
                       method=method, **SETTINGS)
            evaluated = np.concatenate(recorded.rows)
            assert (small.flops(evaluated) <= budget).all()  # no member ever over the budget
            assert len(np.unique(evaluated, axis=0)) == len(evaluated) == r.evaluations
            assert r.score <= optimum + 1e-12 and r.flops <= budget
            solved[method] += r.score >= optimum - 1e-12
            evaluations[method].append(r.evaluations)
    assert min(evaluations["paper"]) > max(evaluations["repair"])
    assert solved["repair"] == 4, solved
    assert solved["paper"] <= 2, solved


def test_exhaustive_is_the_best_of_every_sub_network(tiny):
    space = nasops.SearchSpace.load(tiny)
    every = np.array([list(v) for v in itertools.product(*space.choices)], dtype=np.int64)
    objective = ResolutionTrap(space)
    for budget in (space.flops(space.min_arch()), 3.0, 1e9):
        fits = every[space.flops(every) <= budget]
        scores = objective(fits)
        best = scores.max()
        cheapest = fits[scores == best][np.argmin(space.flops(fits[scores == best]))]
        arch, score = exhaustive(space, objective, budget, chunk=100)
        assert score == best
        np.testing.assert_array_equal(arch, cheapest)
    with pytest.raises(ValueError, match="exhaustive search enumerates at most"):
        exhaustive(nasops.SearchSpace.load("attentive_nas"), objective, 500)


def test_synthetic_objectives_have_the_structure_they_claim(small):
    u_min, u_max = small.encode(small.min_arch()), small.encode(small.max_arch())
    trap = ResolutionTrap(small, weight=3.0)
    assert trap(u_min[None])[0] == 0 and trap(u_max[None])[0] == 4.0
    peak = peak_near(small, 8.0)
    narrow = NarrowOptimum(small, peak, height=2.0)
    assert narrow.radius == 6  # a third of the 18 searchable dimensions
    index = small.to_index(peak)
    far = index.copy()
    changed = np.flatnonzero(small.sizes > 1)[:6]
    far[changed] = (far[changed] + 1) % small.sizes[changed]  # six dimensions differ
    slope = lambda i: (i / np.maximum(small.sizes - 1, 1))[small.sizes > 1].mean()
    assert narrow(peak[None])[0] == pytest.approx(2.0 + slope(index))
    assert narrow(small.from_index(far)[None])[0] == pytest.approx(slope(far))  # off the peak
    inter = Interacting(small, stage=1)
    d, e = small.dim_names.index("depth[1]"), small.dim_names.index("expand_ratio[1]")
    base = small.to_index(u_min)
    one, both = base.copy(), base.copy()
    one[d] = small.sizes[d] - 1
    both[[d, e]] = small.sizes[[d, e]] - 1
    s = inter(small.from_index(np.stack([base, one, both])))
    assert s[1] < s[0] < s[2]  # alone it costs, together it pays
    with pytest.raises(ValueError, match="stage = 9 must be in"):
        Interacting(small, stage=9)


def test_choice_positions_round_trip(small):
    archs = small.sample(50, seed=3)
    index = small.to_index(archs)
    assert index.min() == 0 and (index < small.sizes).all()
    np.testing.assert_array_equal(small.from_index(index), archs)
    np.testing.assert_array_equal(small.from_index(index[0]), archs[0])
    with pytest.raises(ValueError, match="out of range"):
        small.from_index(small.sizes[None, :])
    groups = small.dim_groups()
    assert groups[0] == 0 and groups[small.dim_names.index("width[0]")] == 1
    for field in ("width[2]", "depth[1]", "kernel_size[1]", "expand_ratio[1]"):
        assert groups[small.dim_names.index(field)] == 3  # all of the second stage
    assert groups[small.dim_names.index("width[5]")] == small.num_stages + 2  # the head


def test_non_dominated_and_hypervolume_against_brute_force():
    g = np.random.default_rng(0)
    costs, scores = g.integers(0, 20, 200).astype(float), g.integers(0, 30, 200).astype(float)
    nd = non_dominated(costs, scores)
    dominated = [any((costs[j] <= costs[i] and scores[j] >= scores[i]) and
                     (costs[j] < costs[i] or scores[j] > scores[i]) for j in range(200))
                 for i in range(200)]
    # every non-dominated (cost, score) pair once, none dominated
    assert {(costs[i], scores[i]) for i in nd} == \
        {(costs[i], scores[i]) for i in range(200) if not dominated[i]}
    assert len(nd) == len({(costs[i], scores[i]) for i in nd})
    # the area, by a fine grid: for each cost c, the best score at cost <= c above the reference
    lo, hi, ref = 3.0, 17.0, 5.0
    grid = np.linspace(lo, hi, 140_001)[:-1] + 0.5 * (hi - lo) / 140_000
    best = np.array([max([ref] + [s for c, s in zip(np.maximum(costs, lo), scores) if c <= x])
                     for x in grid[::100]])
    area = (best - ref).mean() * (hi - lo)
    assert hypervolume(costs, scores, (lo, hi), ref) == pytest.approx(area, rel=2e-3)
    assert hypervolume([], [], (lo, hi), ref) == 0.0


def test_front_is_non_dominated_within_its_range_and_reproducible(small):
    objective = Recording(Interacting(small))
    lo, hi = 3.0, 12.0
    a = front(small, objective, (lo, hi), evaluations=1500, population=64, seed=1)
    assert 1400 <= a.evaluations <= 1500
    evaluated = np.concatenate(objective.rows)
    assert (small.flops(evaluated) <= hi).all() and len(evaluated) == a.evaluations
    assert ((a.flops >= lo) & (a.flops <= hi)).all()
    np.testing.assert_allclose(a.flops, small.flops(a.encodings))
    np.testing.assert_allclose(a.scores, objective.objective(a.encodings))
    assert (np.diff(a.flops) > 0).all() and (np.diff(a.scores) > 0).all()  # no point dominated
    inside = evaluated[(small.flops(evaluated) >= lo)]  # nothing evaluated beats the front
    for f, s in zip(small.flops(inside), objective.objective(inside)):
        assert ((a.flops <= f) & (a.scores >= s)).any()
    b = front(small, Interacting(small), (lo, hi), evaluations=1500, population=64, seed=1)
    np.testing.assert_array_equal(a.encodings, b.encodings)
    pick = a.best_under(8.0)
    assert pick.flops <= 8.0 and pick.score == a.scores[a.flops <= 8.0].max()
    with pytest.raises(ValueError, match="no sub-network of the front fits"):
        a.best_under(a.flops.min() - 0.5)


def test_bad_search_arguments_raise(small):
    obj = lambda archs: np.zeros(len(archs))
    with pytest.raises(ValueError, match="method = 'hat' is not allowed; allowed: \\['repair', 'paper'\\]"):
        evolve(small, obj, 10, method="hat")
    with pytest.raises(ValueError, match="polish = -1 must be an integer >= 0"):
        evolve(small, obj, 10, polish=-1)
    with pytest.raises(ValueError, match="cost_range must be \\(lo, hi\\) in MFLOPs"):
        front(small, obj, 10)
    with pytest.raises(ValueError, match="lo must be a number below hi"):
        front(small, obj, (12, 10))
    with pytest.raises(ValueError, match="below the smallest sub-network"):
        front(small, obj, (0, 1))
    with pytest.raises(ValueError, match="evaluations = 0 must be an integer >= 1"):
        front(small, obj, (3, 10), evaluations=0)


def predictor_search_args(tiny, tmp_path, cloud: int) -> list[str]:
    """Arguments of python -m nasops.search by a small predictor of the tiny space, fitted on a
    synthetic accuracy that grows with log FLOPs."""
    from nasops.predictor import AccuracyPredictor
    space = nasops.SearchSpace.load(tiny)
    X = space.sample(300, seed=0)
    y = 0.5 + 0.1 * np.log(space.flops(X)) + np.random.default_rng(0).normal(0, 0.01, 300)
    AccuracyPredictor(space, n_estimators=10, max_depth=6).fit(X, y).save(tmp_path / "p.npz")
    return ["--predictor", str(tmp_path / "p.npz"), "--space", tiny, "--no-progress",
            "--cloud", str(cloud)]


def test_search_command_front_and_latency_modes(tiny, tmp_path, capsys):
    from nasops.search.latency import LatencyTable
    from nasops.search.__main__ import main
    space = nasops.SearchSpace.load(tiny)
    common = predictor_search_args(tiny, tmp_path, cloud=16)
    # the whole front in one run; each budget's pick taken from it
    assert main(common + ["--front", "--evaluations", "400", "--budgets", "1", "2",
                          "--out", str(tmp_path / "front")]) == 0
    doc = json.loads((tmp_path / "front" / "pareto.json").read_text())
    assert doc["search"] == "front" and doc["constraint"]["kind"] == "flops"
    f = doc["front"]
    assert f["evaluations"] <= 400 and np.all(np.diff(f["flops"]) > 0) and np.all(np.diff(f["scores"]) > 0)
    for entry in doc["results"]:
        assert entry["flops"] <= entry["budget"]
        fits = np.array(f["flops"]) <= entry["budget"]
        assert entry["score"] == max(np.array(f["scores"])[fits])
    assert "one front search (NSGA-II" in capsys.readouterr().out
    # latency budgets, with a table measured here
    table = LatencyTable.measure(space, repeats=2, warmup=1)
    table.save(str(tmp_path / "t.json"))
    # (a table timed with 2 calls per part is noisy: keep the budgets above the smallest network)
    smallest = float(table(space.encode(space.min_arch()))[0])
    budgets = np.maximum(np.quantile(table(space.sample(100, seed=1)), [0.3, 0.7]),
                         smallest * np.array([1.1, 1.2])).round(3).tolist()
    assert main(common + ["--constraint", "latency", "--latency-table", str(tmp_path / "t.json"),
                          "--latency-device", "cpu", "--latency-threads", "1", "--generations", "3",
                          "--population", "32", "--mutations", "8", "--crossovers", "8",
                          "--budgets", *map(str, budgets), "--out", str(tmp_path / "lat")]) == 0
    doc = json.loads((tmp_path / "lat" / "pareto.json").read_text())
    assert doc["constraint"]["kind"] == "latency" and doc["constraint"]["unit"] == "ms"
    for entry, budget in zip(doc["results"], budgets):
        assert entry["unit"] == "ms" and entry["budget"] == budget
        assert entry["cost"] <= budget
        assert entry["cost"] == pytest.approx(float(table(np.array(entry["encoding"]))[0]))
    for entry in doc["results"]:  # every pick timed end to end here, and within its budget
        v = entry["verification"]
        assert v["measured_ms"] > 0 and v["predicted_ms"] == pytest.approx(entry["cost"])
        assert v["within_budget"] == (v["measured_ms"] <= entry["budget"])
    out = capsys.readouterr().out
    assert f"<= {budgets[0]:g} ms:" in out and " ms, " in out and "ms end to end (predicted" in out
    # the whole accuracy-latency front in one run, its picks verified too
    assert main(common + ["--constraint", "latency", "--latency-table", str(tmp_path / "t.json"),
                          "--front", "--evaluations", "300", "--budgets", *map(str, budgets),
                          "--out", str(tmp_path / "lat_front")]) == 0
    doc = json.loads((tmp_path / "lat_front" / "pareto.json").read_text())
    f = doc["front"]
    assert f["unit"] == "ms" and np.all(np.diff(f["costs"]) > 0) and np.all(np.diff(f["scores"]) > 0)
    np.testing.assert_allclose(f["costs"], table(np.array(f["encodings"])))
    for entry in doc["results"]:
        assert entry["cost"] <= entry["budget"] and "measured_ms" in entry["verification"]
    # a table from another device: verification refused before the search, unless --no-verify
    other = json.loads((tmp_path / "t.json").read_text())
    other["device"] = "cpu: another processor"
    (tmp_path / "other.json").write_text(json.dumps(other))
    latency_other = common + ["--constraint", "latency", "--latency-table",
                              str(tmp_path / "other.json"), "--generations", "2", "--budgets",
                              str(budgets[1]), "--out", str(tmp_path / "other")]
    capsys.readouterr()
    with pytest.warns(UserWarning, match="measured on 'cpu: another processor'"):
        assert main(latency_other) == 1
    assert "pass --no-verify" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="measured on 'cpu: another processor'"):
        assert main(latency_other + ["--no-verify"]) == 0
    doc = json.loads((tmp_path / "other" / "pareto.json").read_text())
    assert doc["constraint"]["verified"] is False and "verification" not in doc["results"][0]
    # refused: a table measured with other threads; latency without a table; --no-verify alone
    assert main(common + ["--constraint", "latency", "--latency-table", str(tmp_path / "t.json"),
                          "--latency-threads", "2", "--budgets", "1"]) == 1
    assert "measured with threads 1, but threads 2 is expected" in capsys.readouterr().err
    assert main(common + ["--constraint", "latency", "--budgets", "1"]) == 1
    assert "needs --latency-table" in capsys.readouterr().err
    assert main(common + ["--no-verify", "--budgets", "1"]) == 1
    assert "--no-verify is for --constraint latency" in capsys.readouterr().err
