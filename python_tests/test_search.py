"""Stage 2: evolution finds known optima within budget, the predictor round-trips, exported
networks reproduce the supernet, and search on a trained supernet reports what its exports do."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import nasops
from nasops.evaluate import Evaluator, binomial_interval, read_evaluations
from nasops.search.export import export_subnet, onnx_unavailable
from nasops.predictor import AccuracyPredictor, kendall_tau
from nasops.search import evolve, pareto


@pytest.fixture(scope="module")
def small():
    return nasops.SearchSpace.load("small")


def choice_index(space, archs):
    return np.stack([np.searchsorted(c, archs[:, i]) for i, c in enumerate(space.choices)], 1)


class Recorder:
    """A distance-to-target objective (optimum: the target, score 0) that records every row."""

    def __init__(self, space, target):
        self.space, self.target, self.rows = space, choice_index(space, target[None])[0], []

    def __call__(self, archs):
        self.rows.append(archs.copy())
        return -((choice_index(self.space, archs) - self.target) ** 2).sum(1).astype(float)


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.9])
def test_evolution_finds_the_known_optimum_within_budget(small, quantile):
    pool = small.sample(2000, seed=1)
    target = pool[np.argsort(small.flops(pool))[int(quantile * 2000)]]
    budget = small.flops(target)
    objective = Recorder(small, target)
    result = evolve(small, objective, budget, seed=0)
    np.testing.assert_array_equal(result.encoding, target)
    assert result.score == 0 and result.flops <= budget
    evaluated = np.concatenate(objective.rows)
    assert (small.flops(evaluated) <= budget).all()  # no member ever exceeds the budget
    assert len(np.unique(evaluated, axis=0)) == len(evaluated) == result.evaluations  # once each
    assert result.evaluations <= 512 + 20 * 256
    assert [h["best"] for h in result.history] == sorted(h["best"] for h in result.history)


def test_seeds_reproduce(small):
    target = small.sample(1, seed=5)[0]
    a = evolve(small, Recorder(small, target), 15.0, generations=5, seed=3)
    b = evolve(small, Recorder(small, target), 15.0, generations=5, seed=3)
    assert a.to_dict() == b.to_dict()


def test_pareto_is_monotone_and_budgets_hold(small):
    params_objective = lambda archs: small.params(archs)  # more weights score higher
    results = pareto(small, params_objective, [20, 5, 10], generations=4, population=64,
                     mutations=16, crossovers=16)
    assert [r.budget for r in results] == [5, 10, 20]
    assert all(r.flops <= r.budget for r in results)
    scores = [r.score for r in results]
    assert scores == sorted(scores) and scores[0] < scores[-1]


def test_bad_arguments_raise(small):
    obj = lambda archs: np.zeros(len(archs))
    smallest = small.flops(small.min_arch())
    with pytest.raises(ValueError, match=f"below the smallest sub-network.*{smallest:g}"):
        evolve(small, obj, smallest - 0.01)
    with pytest.raises(ValueError, match="finite number"):
        evolve(small, obj, float("nan"))
    with pytest.raises(ValueError, match="must exceed mutations"):
        evolve(small, obj, 10, population=100, mutations=64, crossovers=64)
    with pytest.raises(ValueError, match="mutate_prob"):
        evolve(small, obj, 10, mutate_prob=0)
    with pytest.raises(ValueError, match="one per row"):
        evolve(small, lambda a: np.zeros(3), 10, generations=1)
    with pytest.raises(ValueError, match="NaN"):
        evolve(small, lambda a: np.full(len(a), np.nan), 10, generations=1)
    with pytest.raises(TypeError, match="callable"):
        evolve(small, "accuracy", 10)
    with pytest.raises(ValueError, match="non-empty list"):
        pareto(small, obj, [])


def test_budget_at_the_smallest_network(small):
    result = evolve(small, lambda a: small.params(a), small.flops(small.min_arch()), generations=2,
                    population=16, mutations=4, crossovers=4)
    assert result.arch == small.min_arch()


def test_predictor_round_trip_and_errors(small, tmp_path):
    X = small.sample(400, seed=2)
    y = small.flops(X) / 30 + np.random.default_rng(0).normal(0, 0.02, 400)
    p = AccuracyPredictor(small, n_estimators=20, max_depth=8).fit(X[:200], y[:200])
    from sklearn.ensemble import RandomForestRegressor
    ref = RandomForestRegressor(20, max_depth=8, random_state=0).fit(X[:200].astype(float), y[:200])
    np.testing.assert_allclose(p.predict(X[200:]), ref.predict(X[200:].astype(float)), rtol=1e-12)
    assert p.kendall_tau(X[200:], y[200:]) > 0.5
    p.save(tmp_path / "p.npz")
    q = AccuracyPredictor.load(tmp_path / "p.npz", small)
    np.testing.assert_array_equal(q.predict(X), p.predict(X))
    other = nasops.SearchSpace.load("attentive_nas")
    with pytest.raises(ValueError, match="encoding differs"):
        AccuracyPredictor.load(tmp_path / "p.npz", other)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="not a nasops predictor file"):
        AccuracyPredictor.load(tmp_path / "bad.npz", small)
    with pytest.raises(RuntimeError, match="not fitted"):
        AccuracyPredictor(small).predict(X)
    with pytest.raises(ValueError, match="one target per architecture"):
        AccuracyPredictor(small).fit(X, y[:5])


def brute_tau_b(a, b):
    """Kendall's tau-b written out: (concordant - discordant) over the geometric mean of the
    pairs untied in each sequence."""
    c = d = untied_a = untied_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            sa, sb = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            untied_a += sa != 0
            untied_b += sb != 0
            c += sa * sb > 0
            d += sa * sb < 0
    return (c - d) / np.sqrt(untied_a * untied_b)


def test_kendall_tau_is_tau_b_with_ties():
    g = np.random.default_rng(1)
    for _ in range(5):
        a, b = g.integers(0, 5, 60), g.integers(0, 5, 60) + np.arange(60) // 20  # with ties
        assert kendall_tau(a, b) == pytest.approx(brute_tau_b(a, b), rel=1e-12)
    assert np.isnan(kendall_tau([2, 2, 2], [1, 2, 3]))
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2, 3], [1, 2])


def test_kendall_tau_at_10k_points_equals_scipy_in_under_a_second():
    from scipy import stats
    g = np.random.default_rng(2)
    a, b = np.round(g.random(10_000), 2), np.round(g.random(10_000) + 0.1 * np.arange(10_000) / 1e4, 2)
    start = time.perf_counter()
    tau = kendall_tau(a, b)
    assert time.perf_counter() - start < 1.0  # (the all-pairs version held 5e7 pairs in memory)
    assert tau == pytest.approx(stats.kendalltau(a, b).statistic, rel=1e-12)


def test_export_reproduces_the_supernet(tiny, tmp_path):
    torch.manual_seed(0)
    space = nasops.SearchSpace.load(tiny)
    net = nasops.Supernet(space).eval()
    arch = space.sample(1, seed=4)[0]
    net.set_active(arch)
    res = net.active_arch.resolution
    x = torch.randn(3, 1, res, res)
    expected = net(x)
    paths = export_subnet(net, arch, str(tmp_path / "net"), meta={"note": "test"})
    torch.testing.assert_close(torch.jit.load(paths["torchscript"])(x), expected, rtol=1e-5, atol=1e-6)
    meta = json.loads(open(paths["meta"]).read())
    assert (meta["input"]["channels"], meta["input"]["resolution"], meta["note"]) == (1, res, "test")
    assert meta["input"]["resize"]["size"] == [res, res] and "mean" not in meta["input"]  # no splits
    program = torch.export.load(paths["program"]).module()  # any batch size
    for batch in (x[:1], x):
        torch.testing.assert_close(program(batch), net(batch), rtol=1e-5, atol=1e-6)
    assert meta["checks"]["model.pt2"]["max_abs_difference"] <= 1e-5
    if not onnx_written(paths):
        return
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(paths["onnx"])
    for batch in (x[:1], x):
        (got,) = session.run(None, {"x": batch.numpy()})
        np.testing.assert_allclose(got, net(batch).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert meta["checks"]["model.onnx"]["onnxruntime"] == ort.__version__


def test_an_onnx_file_that_onnxruntime_runs_differently_is_not_written(tiny, tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    if onnx_unavailable():
        pytest.skip(onnx_unavailable())
    space = nasops.SearchSpace.load(tiny)
    net = nasops.Supernet(space).eval()
    arch = space.sample(1, seed=0)[0]
    export_subnet(net, arch, str(tmp_path / "net"))
    assert (tmp_path / "net" / "model.onnx").exists()
    run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run",
                        lambda self, *a, **k: [out + 1e-3 for out in run(self, *a, **k)])
    paths = export_subnet(net, arch, str(tmp_path / "net"))  # (over the earlier export)
    assert paths["onnx_skipped"].startswith("model.onnx not written: onnxruntime's outputs differ")
    assert not (tmp_path / "net" / "model.onnx").exists()
    assert "model.onnx" not in json.loads((tmp_path / "net" / "meta.json").read_text())["checks"]
    with pytest.raises(ValueError, match="onnxruntime's outputs differ from the PyTorch module's"):
        export_subnet(net, arch, str(tmp_path / "net"), onnx=True)


def onnx_written(paths) -> bool:
    """Whether export wrote model.onnx. Skipping it is allowed only without the exporter's
    packages, or with a torch older than the one CI runs (torch 2.5's exporter fails on these
    networks, and export then says so)."""
    if "onnx" in paths:
        return True
    old_torch = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 13)
    assert old_torch or onnx_unavailable(), paths["onnx_skipped"]
    return False


def test_export_says_what_it_skipped_without_the_onnx_packages(tiny, tmp_path, monkeypatch):
    space = nasops.SearchSpace.load(tiny)
    net = nasops.Supernet(space).eval()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    paths = export_subnet(net, space.sample(1, seed=0)[0], str(tmp_path / "net"))
    assert "onnx" not in paths and not (tmp_path / "net" / "model.onnx").exists()
    assert "the onnxscript package is not installed (pip install onnx onnxscript" in paths["onnx_skipped"]
    with pytest.raises(RuntimeError, match="ONNX export: the onnxscript package is not installed"):
        export_subnet(net, space.sample(1, seed=0)[0], str(tmp_path / "net2"), onnx=True)
    monkeypatch.setattr(importlib.util, "find_spec", real)

    def failing(*args):
        raise ValueError("the exporter cannot\nhandle this")
    monkeypatch.setattr(nasops.search.export, "_onnx_bytes", failing)
    paths = export_subnet(net, space.sample(1, seed=0)[0], str(tmp_path / "net3"))
    assert paths["onnx_skipped"].endswith("ONNX exporter failed: ValueError: the exporter cannot")
    assert (tmp_path / "net3" / "model.ts").exists() and "onnx" not in paths
    with pytest.raises(ValueError, match="the exporter cannot"):
        export_subnet(net, space.sample(1, seed=0)[0], str(tmp_path / "net4"), onnx=True)


def test_binomial_interval_is_wilsons():
    z = 1.959963984540054
    for p, n in [(0.0, 10), (0.5, 288), (0.9861, 288), (1.0, 50), (0.3, 7)]:
        low, high = binomial_interval(p, n)
        assert 0 <= low <= p <= high <= 1
        for q in (low, high):  # the bounds solve (p - q)^2 = z^2 q (1 - q) / n for q
            assert (p - q) ** 2 == pytest.approx(z * z * q * (1 - q) / n, abs=1e-12)
    with pytest.raises(ValueError, match="n = 0 must be a positive number"):
        binomial_interval(0.5, 0)


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_evaluator_refuses_a_bad_memory_format(trained, bad):
    from nasops.train.rundir import load_trained
    _, splits, net = load_trained(str(trained / "checkpoint.pt"))
    with pytest.raises(ValueError, match=r"channels_last = .* is not allowed; allowed: True, "
                                         r"False or 'auto'"):
        Evaluator(net, splits, 64, 128, channels_last=bad)


def test_evaluator_caches_and_matches_a_direct_count(trained):
    from nasops.train.rundir import load_trained
    cfg, splits, net = load_trained(str(trained / "checkpoint.pt"))
    ev = Evaluator(net, splits, 64, 128)
    archs = net.space.sample(3, seed=0)
    calls = []
    real = ev._measure
    ev._measure = lambda a, d: calls.append(1) or real(a, d)
    first = ev.accuracy(archs, "holdout")
    again = ev.accuracy(np.concatenate([archs, archs[:1]]), "holdout")
    assert len(calls) == 3 and (again[:3] == first).all() and again[3] == first[0]
    ev.calibrate(archs[1])  # independent count with the extracted static network
    static = net.extract(archs[1]).eval()
    x = (splits.holdout.images.float() / 255 - splits.mean.view(1, -1, 1, 1)) / splits.std.view(1, -1, 1, 1)
    x = nasops.resize_batch(x, net.active_arch.resolution)
    correct = (static(x).argmax(1) == splits.holdout.labels).float().mean().item()
    assert first[1] == pytest.approx(correct, abs=1.5 / len(splits.holdout))
    with pytest.raises(ValueError, match="split 'val'"):
        ev.accuracy(archs, "val")


def test_channels_last_evaluation_gives_the_same_accuracies_image_for_image(trained):
    """What the search and evaluate commands run on CPU (channels-last: the fused batch norm +
    activation and the NHWC depthwise kernels; batches kept per resolution) against NCHW: the
    same accuracy for every sub-network, and the same prediction for every image."""
    from nasops.train.rundir import load_trained
    _, splits, net = load_trained(str(trained / "checkpoint.pt"))
    _, _, net_fast = load_trained(str(trained / "checkpoint.pt"))
    archs = net.space.sample(24, seed=5)
    plain = Evaluator(net, splits, 64, 128, channels_last=False)
    fast = Evaluator(net_fast, splits, 64, 128)  # (the default: auto, channels-last on CPU)
    assert fast.channels_last and not plain.channels_last
    assert (fast.accuracy(archs, "holdout") == plain.accuracy(archs, "holdout")).all()
    assert fast._stored  # (batches were kept)
    assert net_fast.stem.weight.is_contiguous(memory_format=torch.channels_last)
    for arch in archs[:4]:  # image for image, on the test split
        preds = []
        for ev in (plain, fast):
            ev.calibrate(arch)
            ev.net.eval()
            with torch.no_grad():
                preds.append(torch.cat([ev.net(x).argmax(1) for x, _ in
                                        ev._batches(splits.test, ev.net.active_arch.resolution)]))
            ev.net.train()
        assert torch.equal(*preds)


USE_WITHOUT_NASOPS = """
import importlib.util, json, os, sys
import numpy as np
import torch
sys.modules["nasops"] = None  # importing nasops from here on fails
net_dir, images = sys.argv[1:]
meta = json.load(open(f"{net_dir}/meta.json"))
spec = meta["input"]
assert spec["pixels"].startswith("uint8 values divided by 255") and spec["resize"]["order"] == "after normalisation"
x = torch.from_numpy(np.load(images)).float() / 255
x = (x - torch.tensor(spec["mean"]).view(1, -1, 1, 1)) / torch.tensor(spec["std"]).view(1, -1, 1, 1)
r = spec["resize"]
x = torch.nn.functional.interpolate(x, size=tuple(r["size"]), mode=r["method"],
                                    align_corners=r["align_corners"], antialias=r["antialias"])
models = {"model.ts": torch.jit.load(f"{net_dir}/model.ts"),
          "model.pt2": torch.export.load(f"{net_dir}/model.pt2").module()}
if os.path.exists(f"{net_dir}/model_int8.pt2"):
    import torch.ao.quantization.fx._decomposed  # (as meta.json's "load" says)
    models["model_int8.pt2"] = torch.export.load(f"{net_dir}/model_int8.pt2").module()
with torch.no_grad():
    logits = {name: model(x) for name, model in models.items()}
if os.path.exists(f"{net_dir}/model.onnx") and importlib.util.find_spec("onnxruntime"):
    import onnxruntime
    session = onnxruntime.InferenceSession(f"{net_dir}/model.onnx", providers=["CPUExecutionProvider"])
    logits["model.onnx"] = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
print(json.dumps({name: {"classes": [meta["classes"][i] for i in out.argmax(1).tolist()],
                         "max_abs_difference": (out - logits["model.ts"]).abs().max().item()}
                  for name, out in logits.items()}))
"""


def run_without_nasops(net_dir, images) -> dict:
    """What each exported file of net_dir predicts on the saved test images, in a process that
    cannot import nasops: {file: {"classes", "max_abs_difference" from model.ts's logits}}."""
    used = subprocess.run([sys.executable, "-c", USE_WITHOUT_NASOPS, str(net_dir), str(images)],
                          capture_output=True, text=True, timeout=300)
    assert used.returncode == 0, used.stderr[-2000:]
    return json.loads(used.stdout)


def accuracy_of(predicted, test) -> float:
    return float(np.mean([p == test.classes[y] for p, y in zip(predicted, test.labels.tolist())]))


def test_end_to_end_search_reports_what_the_exports_do(trained, tmp_path, capsys):
    from nasops.search.__main__ import main as search_main
    from nasops.evaluate.__main__ import main as evaluate_main
    from nasops.predictor.__main__ import main as predictor_main
    ckpt = str(trained / "checkpoint.pt")
    out = tmp_path / "search"
    assert search_main(["--checkpoint", ckpt, "--budgets", "0.1", "0.3", "0.7", "--out", str(out),
                        "--population", "24", "--mutations", "6", "--crossovers", "6",
                        "--generations", "3", "--cloud", "20", "--no-progress"]) == 0
    doc = json.loads((out / "pareto.json").read_text())
    results = doc["results"]
    assert [r["budget"] for r in results] == [0.1, 0.3, 0.7]
    assert all(r["flops"] <= r["budget"] for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores)  # monotone front
    assert (out / "pareto.png").stat().st_size > 1000
    from nasops.data import load_dataset
    test = load_dataset("digits", "test")
    np.save(tmp_path / "images.npy", test.images.numpy())
    for r in results:
        net_dir = out / f"net_{r['budget']:g}MF"
        meta = json.loads((net_dir / "meta.json").read_text())
        assert meta["classes"] == test.classes and meta["input"]["stored_size"] == [8, 8]
        # a program without nasops, reading only meta.json, gets the measured test accuracy from
        # each format, and the same logits
        used = run_without_nasops(net_dir, tmp_path / "images.npy")
        formats = {"model.ts", "model.pt2"} | ({"model.onnx"} if onnx_written(r["export"]) else set())
        assert formats <= set(used)
        for name in formats:
            assert used[name]["max_abs_difference"] < 1e-5, name
            assert accuracy_of(used[name]["classes"], test) == pytest.approx(
                r["test_acc"], abs=1.5 / len(test))
        assert r["holdout_acc"] == pytest.approx(r["score"])
        for split, n in (("holdout", round(480 * 0.1)), ("test", len(test))):  # (limit 480)
            assert r[f"{split}_images"] == n
            assert r[f"{split}_ci95"] == list(binomial_interval(r[f"{split}_acc"], n))
    printed = capsys.readouterr().out
    onnx = "ONNX, " if all(onnx_written(r["export"]) for r in results) else ""
    assert (f"wrote {out}/: pareto.json, pareto.png, the exported networks net_0.1MF, net_0.3MF, "
            f"net_0.7MF (torch.export program, TorchScript, {onnx}state dict, meta.json)") in printed
    # the predictor path: evaluations file -> predictor -> search by prediction
    evals = tmp_path / "evals.json"
    assert evaluate_main(["--checkpoint", ckpt, "-n", "30", "--out", str(evals), "--no-progress"]) == 0
    space, archs, acc = read_evaluations(str(evals))
    assert archs.shape == (30, space.dim) and ((0 <= acc) & (acc <= 1)).all()
    assert predictor_main([str(evals), "--out", str(tmp_path / "p.npz")]) == 0
    assert "kendall_tau" in capsys.readouterr().out
    assert search_main(["--predictor", str(tmp_path / "p.npz"), "--checkpoint", ckpt, "--budgets",
                        "0.5", "--out", str(tmp_path / "s2"), "--no-export", "--population", "16",
                        "--mutations", "4", "--crossovers", "4", "--generations", "2",
                        "--no-progress"]) == 0
    assert json.loads((tmp_path / "s2" / "pareto.json").read_text())["objective"] == "predicted accuracy"
    # errors
    assert search_main(["--checkpoint", ckpt, "--budgets", "0.0001", "--out", str(tmp_path / "x")]) == 1
    assert "below the smallest sub-network" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a nasops evaluation file"):
        read_evaluations(str(tmp_path / "bad.json"))


def test_int8_export_reports_what_the_int8_program_does(trained, tmp_path, capsys):
    pytest.importorskip("torchao")
    from nasops.search.__main__ import main as search_main
    from nasops.data import load_dataset
    out = tmp_path / "search"
    assert search_main(["--checkpoint", str(trained / "checkpoint.pt"), "--budgets", "0.7", "--out",
                        str(out), "--population", "16", "--mutations", "4", "--crossovers", "4",
                        "--generations", "2", "--cloud", "0", "--no-progress", "--quantize", "int8",
                        "--max-int8-drop", "0"]) == 0
    (r,) = json.loads((out / "pareto.json").read_text())["results"]
    net_dir = out / "net_0.7MF"
    q = json.loads((net_dir / "meta.json").read_text())["int8"]
    assert r["int8"] == q and q["calibration_images"] == 128  # (the recipe's calib_images)
    assert q["float32_acc"] == {"holdout": r["holdout_acc"], "test": r["test_acc"]}
    for split in ("holdout", "test"):
        assert q["drop_points"][split] == pytest.approx(100 * (q["float32_acc"][split] - q["int8_acc"][split]))
    assert q["drop_exceeds_max"] == (max(q["drop_points"].values()) > 0)
    if "latency_skipped" in q:  # (torch.compile needs a C++ compiler)
        assert q["latency_skipped"].startswith("torch.compile failed")
    else:
        assert all(ms > 0 for ms in q["latency_ms"].values())
    printed = capsys.readouterr().out
    assert f"int8: held-out {q['int8_acc']['holdout']:.4f}" in printed and "int8 program" in printed
    assert ("warning: int8 loses" in printed) == q["drop_exceeds_max"]
    # the int8 program, loaded without nasops as meta.json says, has the measured accuracy and
    # stays near the float32 network
    test = load_dataset("digits", "test")
    np.save(tmp_path / "images.npy", test.images.numpy())
    used = run_without_nasops(net_dir, tmp_path / "images.npy")
    assert accuracy_of(used["model_int8.pt2"]["classes"], test) == pytest.approx(q["int8_acc"]["test"])
    agree = np.mean([a == b for a, b in zip(used["model_int8.pt2"]["classes"], used["model.ts"]["classes"])])
    assert agree > 0.9
    # bad combinations stop before anything runs
    assert search_main(["--checkpoint", str(trained / "checkpoint.pt"), "--budgets", "0.7",
                        "--no-export", "--quantize", "int8"]) == 1
    assert "--quantize int8 quantizes the exported picks" in capsys.readouterr().err
    assert search_main(["--checkpoint", str(trained / "checkpoint.pt"), "--budgets", "0.7",
                        "--quantize", "int8", "--max-int8-drop", "-1"]) == 1
    assert "--max-int8-drop -1.0 must be a number of points >= 0" in capsys.readouterr().err


def test_evaluation_spread_over_two_ranks_matches_one_process(trained, tmp_path):
    import subprocess
    import sys
    ckpt = str(trained / "checkpoint.pt")
    common = ["-m", "nasops.evaluate", "--checkpoint", ckpt, "-n", "6", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", *common, "--out", str(tmp_path / "two.json")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one.json")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    _, archs_two, acc_two = read_evaluations(str(tmp_path / "two.json"))
    _, archs_one, acc_one = read_evaluations(str(tmp_path / "one.json"))
    np.testing.assert_array_equal(archs_two, archs_one)
    np.testing.assert_array_equal(acc_two, acc_one)  # each rank evaluated its share whole
