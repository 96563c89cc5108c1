"""Stage-1 training: resume gives the uninterrupted run's weights, 2-process DDP gives one process's
weights on the combined batch, every strategy trains, and bad configs and files raise."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

import nasops
from nasops import train as train_mod
from nasops.predictor import AccuracyPredictor

def config(tiny, **kw):
    cfg = dict(train_mod.DEFAULTS, recipe="test", space=tiny, limit=320, batch_size=32, epochs=2,
               num_sampled=1, n_prior=5000, calib_images=64, eval_batch_size=128, log_every=1,
               lr=0.05, warmup_epochs=0.5)
    cfg.update(kw)
    return train_mod.check_config(cfg)


def weights(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=atol, msg=k)


def test_resume_gives_the_uninterrupted_weights(tiny, tmp_path):
    cfg = config(tiny, strategy="bestup-2-loss", kd="alpha")
    full = train_mod.train(cfg, str(tmp_path / "full"), progress=False)
    assert full["largest_holdout_acc"] > 0.2  # it learned something in 18 steps
    part = train_mod.train(cfg, str(tmp_path / "part"), progress=False, stop_after_steps=13)
    assert part == {"interrupted": 13}  # mid-epoch (9 steps per epoch)
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["finished"]) == (1, 4, False)
    resumed = train_mod.train(cfg, str(tmp_path / "part"), resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "part"))
    assert resumed == full
    lines = [json.loads(l) for l in open(tmp_path / "part" / "metrics.jsonl")]
    assert [l["step"] for l in lines if "lr" in l] == list(range(1, 19))  # no step lost or repeated


def test_sigterm_saves_and_resume_finishes(tiny, tmp_path):
    cfg = config(tiny, epochs=6)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "recipe"}))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "nasops.train", "--recipe", str(recipe), "--no-progress"]
    proc = subprocess.Popen(cmd + ["--run-dir", str(run)], stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with --resume" in err
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert not ckpt["finished"] and 0 < ckpt["epoch"] * 9 + ckpt["step"] < 54
    done = subprocess.run(cmd[:3] + ["--resume", str(run), "--no-progress"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reference = dict(cfg, recipe="recipe")
    train_mod.train(reference, str(tmp_path / "ref"), progress=False)
    assert_same_weights(weights(run), weights(tmp_path / "ref"))


def test_ddp_two_processes_equal_one_on_the_combined_batch(tiny, tmp_path):
    cfg = config(tiny, strategy="bestup-2-loss", dropout=0.0, drop_connect=0.0, epochs=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "recipe"}))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "nasops.train"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(torchrun + ["--recipe", str(recipe), "--run-dir", str(tmp_path / "ddp"),
                                     "--no-progress"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    final = json.loads((tmp_path / "ddp" / "final.json").read_text())
    assert final["world_size"] == 2
    train_mod.train(dict(cfg, recipe="recipe"), str(tmp_path / "one"), progress=False)
    assert_same_weights(weights(tmp_path / "ddp"), weights(tmp_path / "one"), atol=2e-5)
    one = [json.loads(l) for l in open(tmp_path / "one" / "metrics.jsonl") if '"lr"' in l]
    two = [json.loads(l) for l in open(tmp_path / "ddp" / "metrics.jsonl") if '"lr"' in l]
    for key in ("loss_largest", "loss_smallest", "loss_sampled"):  # the same sub-networks
        np.testing.assert_allclose([l[key] for l in two], [l[key] for l in one], rtol=1e-4, atol=1e-6)


def predictor_file(tiny, path):
    space = nasops.SearchSpace.load(tiny)
    X = space.sample(200, seed=0)
    AccuracyPredictor(space, n_estimators=10, max_depth=5).fit(X, space.params(X)).save(path)
    return str(path)


@pytest.mark.parametrize("strategy", ["uniform", "balanced", "worstup-3-loss", "bestup-5-acc",
                                      "worstup-offline"])
def test_every_strategy_trains(tiny, tmp_path, strategy):
    cfg = config(tiny, strategy=strategy, epochs=1, limit=160, pool_size=2000,
                 predictor=predictor_file(tiny, tmp_path / "p.npz"), target_bins="uniform")
    final = train_mod.train(cfg, str(tmp_path / "run"), progress=False)
    assert 0 <= final["smallest_holdout_acc"] <= 1 and final["steps"] == 4
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved == cfg


def test_nan_loss_stops_with_the_last_checkpoint_intact(tiny, tmp_path, monkeypatch):
    real, calls = train_mod.train_step, []

    def poisoned(*args):
        losses, archs = real(*args)
        calls.append(1)
        return (losses * float("nan") if len(calls) == 12 else losses), archs

    monkeypatch.setattr(train_mod, "train_step", poisoned)
    with pytest.raises(FloatingPointError, match="epoch 1 step 2.*last good state"):
        train_mod.train(config(tiny), str(tmp_path / "run"), progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_bad_checkpoints_raise(tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable nasops checkpoint"):
        train_mod.train(config(tiny), str(run), resume=True, progress=False)
    torch.save({"format": "other"}, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a nasops checkpoint"):
        train_mod.train(config(tiny), str(run), resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_mod.train(config(tiny), str(tmp_path / "none"), resume=True, progress=False)


def test_config_errors(tiny, capsys):
    with pytest.raises(ValueError, match=r"unknown recipe key\(s\) \['epoch'\]"):
        train_mod.check_config(dict(train_mod.DEFAULTS, epoch=3))
    with pytest.raises(ValueError, match="kd = 'js' is not allowed"):
        train_mod.apply_overrides(train_mod.DEFAULTS, ["kd=js"])
    with pytest.raises(ValueError, match="batch_size = 0 is not allowed"):
        train_mod.apply_overrides(train_mod.DEFAULTS, ["batch_size=0"])
    with pytest.raises(ValueError, match="needs predictor"):
        train_mod.apply_overrides(train_mod.DEFAULTS, ["strategy=bestup-50-acc"])
    with pytest.raises(ValueError, match="must look like key=value"):
        train_mod.apply_overrides(train_mod.DEFAULTS, ["epochs"])
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        train_mod.load_recipe("nope")
    assert train_mod.main(["--resume", "/nonexistent", "epochs=3"]) == 1
    assert "takes no overrides" in capsys.readouterr().err
    for name in train_mod.packaged_recipes():
        assert train_mod.load_recipe(name)["recipe"] == name


@pytest.mark.slow
def test_default_recipe_on_digits(tmp_path):
    """`python -m nasops.train` as a user runs it: the digits recipe to its accuracy targets."""
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "nasops.train", "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = os.listdir(tmp_path / "runs")
    final = json.loads((tmp_path / "runs" / run / "final.json").read_text())
    print(f"default recipe: {time.time() - start:.0f} s, {final}")
    assert final["largest_holdout_acc"] >= 0.97
    assert final["smallest_holdout_acc"] >= 0.93
