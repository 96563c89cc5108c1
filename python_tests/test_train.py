"""Stage-1 training: resume gives the uninterrupted run's weights, 2-process DDP gives one process's
weights on the combined batch, every strategy trains, and bad configs and files raise."""
import errno
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

import nasops
from nasops.train import loop as train_mod
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


@pytest.mark.parametrize("channels_last", ["auto", False])
def test_resume_gives_the_uninterrupted_weights(tiny, tmp_path, channels_last):
    """Also with channels_last: false: the per-epoch evaluation keeps the run's memory format."""
    cfg = config(tiny, strategy="bestup-2-loss", kd="alpha", channels_last=channels_last)
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


def test_checkpoint_every_bounds_what_a_kill_loses(tiny, tmp_path, monkeypatch):
    """checkpoint_every=3, 9 steps an epoch: checkpoints at steps 0, 3, 6, 9 (the epoch's end,
    written once), 12, 15 and 18; what a kill just after step 12's leaves resumes to the
    uninterrupted run, and the checkpoints change neither its weights nor its metrics."""
    from nasops.train.rundir import RunDir
    train_mod.train(config(tiny), str(tmp_path / "plain"), progress=False)
    real, saved = RunDir.save_checkpoint, []

    def save_checkpoint(self, payload):
        real(self, payload)
        saved.append((payload["epoch"], payload["step"], payload["finished"]))
        if saved[-1] == (1, 3, False):  # (a SIGKILL now leaves this directory)
            shutil.copytree(self.path, tmp_path / "killed")
    monkeypatch.setattr(RunDir, "save_checkpoint", save_checkpoint)
    cfg = config(tiny, checkpoint_every=3)
    full = train_mod.train(cfg, str(tmp_path / "full"), progress=False)
    assert saved == [(0, 0, False), (0, 3, False), (0, 6, False), (1, 0, False), (1, 3, False),
                     (1, 6, False), (2, 0, False), (2, 0, True)]
    assert_same_weights(weights(tmp_path / "plain"), weights(tmp_path / "full"))
    assert metrics_lines(tmp_path / "plain") == metrics_lines(tmp_path / "full")
    monkeypatch.undo()
    assert train_mod.train(cfg, str(tmp_path / "killed"), resume=True, progress=False) == full
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "killed"))
    assert metrics_lines(tmp_path / "killed") == metrics_lines(tmp_path / "full")


def metrics_lines(run_dir):
    """metrics.jsonl's entries without their times and interruptions (what differs between an
    interrupted run and an uninterrupted one)."""
    lines = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [{k: v for k, v in l.items() if k not in ("seconds", "eval_seconds")} for l in lines
            if l.get("event") != "interrupted"]


def test_what_a_kill_leaves_is_resumed_to_the_uninterrupted_run(tiny, tmp_path):
    """What SIGKILL leaves, made by hand (benchmarks/kill_anywhere.py kills real processes, and
    test_kill_anywhere runs it): steps logged after the last checkpoint, a torn line and a
    temporary file; a run directory with no checkpoint yet; a finished run. Resume drops what
    follows the checkpoint's metrics and the temporary file, and ends on the uninterrupted
    run's weights and metrics; a finished run is not evaluated again."""
    cfg = config(tiny)
    full = train_mod.train(cfg, str(tmp_path / "full"), progress=False)
    part = tmp_path / "part"
    train_mod.train(cfg, str(part), progress=False, stop_after_steps=13)
    with open(part / "metrics.jsonl", "a") as f:  # (logged after the checkpoint, then killed)
        f.write('{"epoch": 2, "step": 14, "lr": 0.1}\n{"epoch": 2, "st')
    (part / "checkpoint.pt.0123456789ab.tmp").write_bytes(b"half a checkpoint")
    assert train_mod.train(cfg, str(part), resume=True, progress=False) == full
    assert_same_weights(weights(tmp_path / "full"), weights(part))
    assert metrics_lines(part) == metrics_lines(tmp_path / "full")
    assert not [f for f in os.listdir(part) if f.endswith(".tmp")]

    early = tmp_path / "early"  # (killed after config.yaml, before the first checkpoint)
    early.mkdir()
    (early / "config.yaml").write_text(yaml.safe_dump(cfg.as_dict()))
    (early / "metrics.jsonl").write_text('{"epoch": 1, "step": 1, "lr": 0.1}\n')
    assert train_mod.train(cfg, str(early), resume=True, progress=False) == full
    assert metrics_lines(early) == metrics_lines(tmp_path / "full")

    before = (part / "metrics.jsonl").read_text()
    assert train_mod.train(cfg, str(part), resume=True, progress=False) == full
    assert (part / "metrics.jsonl").read_text() == before  # (the final is not logged twice)


@pytest.mark.slow
def test_kill_anywhere(tiny, tmp_path):
    """benchmarks/kill_anywhere.py, short: 8 SIGKILLs (4 at random times, 4 at the hooks inside
    checkpoint and metrics writes), each leaving a loadable checkpoint and clean metrics, and
    every run resumed to its end equal to the uninterrupted one bit for bit."""
    out = tmp_path / "kill.json"
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "kill_anywhere.py")
    done = subprocess.run([sys.executable, script, "--kills", "8", "--out", str(out), f"space={tiny}",
                           "limit=320", "epochs=2", "n_prior=5000", "calib_images=64",
                           "eval_batch_size=128"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["kills"] == 8 and result["problems"] == [] and result["bit_identical_to_uninterrupted"]
    assert {m.get("hook") for m in result["moments"]} == {None, *kill_hooks()}
    assert sum(c["kills"] for c in result["finished_runs"]) == 8


def kill_hooks():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    import kill_anywhere
    return kill_anywhere.HOOKS


def test_mixed_precision_resumes_and_stays_close_to_float32(tiny, tmp_path):
    """amp: fp16 (autocast + loss scaling) with channels-last weights and batches: a resumed run
    ends on the uninterrupted run's weights (the scaler's state is in the checkpoint); one
    bf16 step's gradient is close to, but not, float32's."""
    # (fp16 where the CPU runs it natively: elsewhere training refuses it,
    # test_emulated_precision_is_refused_before_training)
    if nasops.utils.cpu.native_dtypes()["fp16"]:
        cfg = config(tiny, amp="fp16", channels_last=True, epochs=1)
        train_mod.train(cfg, str(tmp_path / "full"), progress=False)
        assert train_mod.train(cfg, str(tmp_path / "part"), progress=False,
                               stop_after_steps=4) == {"interrupted": 4}
        ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
        assert ckpt["scaler"]["scale"] > 1  # fp16's loss scale, saved
        train_mod.train(cfg, str(tmp_path / "part"), resume=True, progress=False)
        assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "part"))

    space = nasops.SearchSpace.load(tiny, in_channels=3)  # (1 channel: either layout)
    x = torch.randn(8, space.in_channels, 16, 16)
    y = torch.randint(0, space.num_classes, (8,))
    largest, smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
    grads, layouts = {}, []
    for variant in ({"amp": "none", "channels_last": False}, {"amp": "bf16", "channels_last": False},
                    {}):  # (the default, auto: channels-last on CPU)
        torch.manual_seed(0)
        net = nasops.Supernet(space)
        net.stem_bn.register_forward_pre_hook(lambda _, args: layouts.append(
            (args[0].is_contiguous(), args[0].is_contiguous(memory_format=torch.channels_last))))
        step_cfg = config(tiny, num_sampled=0, dropout=0.0, drop_connect=0.0, **variant)
        train_mod.train_step(net, step_cfg, None, largest, smallest, x, y)
        grads[str(variant)] = torch.cat([p.grad.flatten() for p in net.parameters()
                                         if p.grad is not None])
    fp32, bf16, last = grads.values()
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=0)
    assert 0.98 < cosine < 1 - 1e-7, cosine
    torch.testing.assert_close(last, fp32, rtol=1e-4, atol=1e-6)  # the same math, other kernels
    assert layouts[:4] == [(True, False)] * 4 and layouts[4:] == [(False, True)] * 2
    for key, value in (("amp", "fp8"), ("channels_last", "yes")):
        with pytest.raises(ValueError, match=f"{key} = "):
            config(tiny, **{key: value})


def test_emulated_precision_is_refused_before_training(tiny, tmp_path, monkeypatch):
    """amp: bf16 or fp16 on a CPU that would only emulate it stops before anything is written,
    naming what was detected and the way out; amp: auto trains in float32 on CPU."""
    assert train_mod.resolve_amp("auto", "cpu") == "none"
    assert train_mod.resolve_amp("bf16", "cpu") == "bf16"
    assert config(tiny)["amp"] == "auto"  # (the default)
    monkeypatch.setattr(nasops.utils.cpu, "native_dtypes", lambda: {"bf16": False, "fp16": False})
    for amp in ("bf16", "fp16"):
        run = tmp_path / amp
        with pytest.raises(ValueError, match=rf"amp = '{amp}' on this CPU .* no native {amp}, "
                                             rf"so oneDNN emulates it.*270x slower.*amp=none"):
            train_mod.train(config(tiny, amp=amp), str(run), progress=False)
        assert not run.exists()
    train_mod.check_amp("auto", "cpu")  # (no error: float32)
    monkeypatch.setattr(nasops.utils.cpu, "native_dtypes", lambda: {"bf16": True, "fp16": True})
    train_mod.check_amp("bf16", "cpu")


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
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert not ckpt["finished"] and 0 < ckpt["epoch"] * 9 + ckpt["step"] < 54
    # one numbering: the global step the progress bar shows, epochs from 1
    step = ckpt["epoch"] * 9 + ckpt["step"]
    assert (f"interrupted after step {step}/54 (epoch {(step - 1) // 9 + 1}/6); checkpoint saved, "
            f"resume with --resume {run}") in err, err
    done = subprocess.run(cmd[:3] + ["--resume", str(run), "--no-progress"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed {run} at step {step}/54" in done.stderr
    final = json.loads((run / "final.json").read_text())
    assert done.stdout.startswith(f"smallest ({final['smallest_mflops']:.1f} MFLOPs): held-out "
                                  f"{final['smallest_holdout_acc']:.2%}, test "
                                  f"{final['smallest_test_acc']:.2%}\nlargest ("), done.stdout
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


def test_auto_resume_starts_continues_or_refuses_another_recipe(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    args = [f"space={tiny}", "limit=320", "epochs=1", "n_prior=5000", "calib_images=64",
            "eval_batch_size=128", "--no-progress", "--auto-resume"]
    assert train_mod.main([*args, "--run-dir", str(run)]) == 0  # (nothing there: it starts)
    first = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train_mod.main([*args, "--run-dir", str(run)]) == 0  # (finished: nothing to redo)
    assert (run / "metrics.jsonl").read_text() == first
    assert "smallest (" in capsys.readouterr().out
    assert train_mod.main([*args, "seed=3", "--run-dir", str(run)]) == 1
    assert f"{run} holds a run of another recipe (['seed'] differ" in capsys.readouterr().err
    assert train_mod.main(args) == 1
    assert "--auto-resume needs --run-dir" in capsys.readouterr().err


DIE = """
import os, signal, sys
from nasops.train import loop
step = loop._Loop.step
def dying_step(self, x, y, epoch, global_step):  # rank 1 dies at step 13 of the first attempt
    if (global_step == 13 and os.environ["RANK"] == "1"
            and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"):
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, x, y, epoch, global_step)
loop._Loop.step = dying_step
sys.exit(loop.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_rank_killed_under_torchrun_restarts_and_resumes(tiny, tmp_path):
    """2 gloo ranks under torchrun --max-restarts=1; rank 1 is SIGKILLed mid-epoch 2. Rank 0
    stops at once with one line naming the lost rank (no hang), torchrun restarts both, and
    --auto-resume continues from the epoch-1 checkpoint to the uninterrupted 2-rank run's
    weights, bit for bit."""
    cfg = config(tiny, epochs=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "recipe"}))
    (tmp_path / "die.py").write_text(DIE)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "--max-restarts=1"]
    args = ["--recipe", str(recipe), "--no-progress", "--auto-resume"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = subprocess.run(torchrun + ["-m", "nasops.train", *args, "--run-dir", str(tmp_path / "full")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = subprocess.run(torchrun + [str(tmp_path / "die.py"), *args, "--run-dir",
                                        str(tmp_path / "killed")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == 0, killed.stderr[-5000:]
    # (gloo says "Read error [ADDR]: Connection reset by peer" or "Connection closed by peer [ADDR]")
    assert re.search(r"error: rank 0: [^\n]* failed \([^\n]*Connection (reset|closed) by peer"
                     r"[^\n)]*\): another rank has stopped or is stuck", killed.stderr), \
        killed.stderr[-3000:]
    assert f"resumed {tmp_path / 'killed'} at step 9/18" in killed.stderr
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "killed"))
    assert metrics_lines(tmp_path / "killed") == metrics_lines(tmp_path / "full")


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
    with pytest.raises(FloatingPointError, match=r"step 12/18 \(epoch 2/2\).*last good state"):
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


def test_per_epoch_evaluation_is_recorded_and_changes_no_weight(tiny, tmp_path):
    quiet = train_mod.train(config(tiny, eval_every=0), str(tmp_path / "quiet"), progress=False)
    loud = train_mod.train(config(tiny, eval_every=1), str(tmp_path / "loud"), progress=False)
    assert_same_weights(weights(tmp_path / "quiet"), weights(tmp_path / "loud"))
    assert loud == quiet
    epochs = {}
    for run in ("quiet", "loud"):
        lines = [json.loads(l) for l in open(tmp_path / run / "metrics.jsonl")]
        epochs[run] = [l for l in lines if l.get("event") == "epoch"]
        assert [(l["epoch"], l["step"]) for l in epochs[run]] == [(1, 9), (2, 18)]
    assert not any("holdout_acc_largest" in l for l in epochs["quiet"])
    for l in epochs["loud"]:
        assert 0 <= l["holdout_acc_smallest"] <= 1 and 0 <= l["holdout_acc_largest"] <= 1
    last = epochs["loud"][-1]  # the final evaluation of the held-out split is the last epoch's
    assert (last["holdout_acc_smallest"], last["holdout_acc_largest"]) == (
        loud["smallest_holdout_acc"], loud["largest_holdout_acc"])
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "loud" / "curves.png").stat().st_size > 1000
    if importlib.util.find_spec("tensorboard"):
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "loud" / "tensorboard"))


def test_a_run_that_cannot_start_leaves_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    code = train_mod.main(["--recipe", "fashion-mnist", f"data_dir={tmp_path / 'none'}",
                           "--run-dir", str(run), "--no-progress"])
    assert code == 1 and not run.exists()
    err = capsys.readouterr().err
    assert "does not exist" in err and "data_dir=DIR" in err and "dataset-fashion-mnist" in err


def test_help_shows_the_values_that_will_be_used(capsys):
    def help_text(*args):
        with pytest.raises(SystemExit) as stop:
            train_mod.main([*args, "--help"])
        assert stop.value.code == 0
        return capsys.readouterr().out
    text = help_text()  # the digits recipe, the default
    assert "the recipe 'digits'" in text
    for key, value in (("holdout", "0.2"), ("epochs", "10"), ("batch_size", "32"), ("kd", "kl"),
                       ("data_dir", "null")):
        assert re.search(rf"^  {key}={re.escape(value)} +\S", text, re.M), key
    for key, (_, description) in train_mod.KEYS.items():
        assert re.search(rf"^  {key}=\S* +{re.escape(description)}$", text, re.M), key
    assert re.search(r"^  epochs=30 ", help_text("--recipe", "fashion-mnist"), re.M)
    assert re.search(r"^  epochs=3 ", help_text("epochs=3"), re.M)


def test_config_errors(tiny, capsys):
    with pytest.raises(ValueError, match=r"unknown recipe key\(s\) \['epoch'\]"):
        train_mod.check_config(dict(train_mod.DEFAULTS, epoch=3))
    with pytest.raises(ValueError, match="kd = 'js' is not registered"):
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


def test_overrides_go_before_and_after_the_options(tmp_path, capsys):
    """`nasops-train epochs=1 --run-dir D seed=2` reads both overrides (argparse alone refused
    the second as an unrecognized argument): each bad value is reported as the recipe's error."""
    run = tmp_path / "run"
    for argv in (["batch_size=0", "--run-dir", str(run), "epochs=1"],
                 ["epochs=1", "--run-dir", str(run), "--no-progress", "batch_size=0"]):
        assert train_mod.main(argv) == 1 and not run.exists()
        err = capsys.readouterr().err
        assert "batch_size = 0 is not allowed" in err and "unrecognized" not in err


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tiny, tmp_path, monkeypatch,
                                                                capsys):
    """ENOSPC while the second epoch's checkpoint is written (injected where every file nasops
    writes is synced to disk): one line naming the file and the cause, the first epoch's
    checkpoint still whole, no temporary file left, and the run resumes from it to the end."""
    from nasops.utils import files
    real_sync, checkpoints = files._sync, []

    def sync(path):
        if os.path.basename(path).startswith("checkpoint.pt."):
            checkpoints.append(path)
            if len(checkpoints) == 3:  # (the first is the step-0 one)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_sync(path)
    monkeypatch.setattr(files, "_sync", sync)
    run = tmp_path / "run"
    args = [f"space={tiny}", "limit=480", "batch_size=32", "epochs=2", "n_prior=5000",
            "calib_images=128", "eval_batch_size=128", "--no-progress"]
    assert train_mod.main([*args, "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"could not write {run / 'checkpoint.pt'}: No space left on device")
    assert not any("Traceback" in line for line in err)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 0)
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]
    monkeypatch.setattr(files, "_sync", real_sync)
    assert train_mod.main(["--resume", str(run), "--no-progress"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["finished"]


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


def test_the_published_training_details(tiny):
    """Warm-up from 0.001 x lr, the distillation weight (the step's gradient is linear in it),
    and the keys' checks."""
    cfg = config(tiny, warmup_epochs=1.0, epochs=2)
    factor = train_mod._lr_factor(cfg, steps_per_epoch=10)
    assert factor(0) == pytest.approx(0.001) and factor(5) == pytest.approx(0.001 + 0.999 * 0.5)
    assert factor(10) == pytest.approx(1.0)

    space = nasops.SearchSpace.load(tiny)
    torch.manual_seed(0)
    net = nasops.Supernet(space)
    x = torch.randn(8, space.in_channels, 16, 16)
    y = torch.randint(0, space.num_classes, (8,))
    largest, smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
    grads, reported = [], []
    for weight in (0.0, 1.0, 2.0):
        step_cfg = config(tiny, num_sampled=0, dropout=0.0, drop_connect=0.0, kd="alpha",
                          kd_weight=weight)
        losses, _ = train_mod.train_step(net, step_cfg, None, largest, smallest, x, y)
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
        reported.append(losses)
    torch.testing.assert_close(grads[2] - grads[1], grads[1] - grads[0], rtol=1e-4, atol=1e-6)
    assert (grads[1] - grads[0]).abs().max() > 1e-4
    # the distillation loss is reported unweighted
    torch.testing.assert_close(reported[0], reported[2], rtol=1e-5, atol=1e-7)
    # kd_weight null: the loss's own default, alpha 0.5 (the gradient halfway between 0 and 1)
    default_cfg = config(tiny, num_sampled=0, dropout=0.0, drop_connect=0.0, kd="alpha")
    assert default_cfg["kd_weight"] is None
    train_mod.train_step(net, default_cfg, None, largest, smallest, x, y)
    torch.testing.assert_close(
        torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]),
        (grads[0] + grads[1]) / 2, rtol=1e-4, atol=1e-6)
    for key, value in (("grad_clip_mode", "sign"), ("warmup_start", 1.5), ("kd_weight", -1)):
        with pytest.raises(ValueError, match=f"{key} = "):
            config(tiny, **{key: value})


def test_the_imagenet_recipe_is_the_published_one():
    """--recipe imagenet against the values the AttentiveNAS paper (Appendix A) and its
    official training config state, written out here."""
    cfg = train_mod.load_recipe("imagenet")
    published = {"dataset": "imagenet", "space": "attentive_nas", "num_sampled": 2,  # sandwich of 4
                 "strategy": "bestup-3-loss", "kd": "kl", "momentum": 0.9, "nesterov": True,
                 "weight_decay": 1e-5, "label_smoothing": 0.1, "dropout": 0.2,
                 "drop_connect": 0.2, "grad_clip": 1.0, "grad_clip_mode": "value",
                 "warmup_epochs": 5, "epochs": 360, "lr_min": 0.0, "autoaugment": True,
                 "flip": True, "sync_bn": False, "eval_crop": 0.875, "batch_size": 2048,
                 "calib_images": 64 * 32, "eval_batch_size": 32}
    assert {k: cfg[k] for k in published} == published
    # 0.1 per 256 images, scaled linearly with the global batch
    assert train_mod.peak_lr(cfg) == pytest.approx(0.1 * 2048 / 256)
    assert train_mod.peak_lr(dict(cfg, batch_size=64)) == pytest.approx(0.025)
    assert train_mod.peak_lr(dict(cfg, lr_batch=None)) == 0.1
    with pytest.raises(ValueError, match="lr_batch = 0"):
        train_mod.apply_overrides(cfg, ["lr_batch=0"])
