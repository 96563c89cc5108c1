"""Fine-tuning a pick alone (nasops.finetune): it starts from exactly what the search measured,
keeps the best held-out epoch, is deterministic, exports what it reports, and refuses bad input."""
import importlib.util
import json

import numpy as np
import pytest
import torch

from nasops.evaluate import Evaluator
from nasops.finetune import FinetuneOptions, finetune
from nasops.finetune.__main__ import main as finetune_main
from nasops.search.__main__ import main as search_main
from nasops.train.rundir import load_trained


@pytest.fixture(scope="module")
def pick(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    assert search_main(["--checkpoint", str(trained / "checkpoint.pt"), "--budgets", "0.5",
                        "--out", str(out), "--population", "16", "--mutations", "4",
                        "--crossovers", "4", "--generations", "2", "--cloud", "0",
                        "--no-progress", "--calib-images", "40"]) == 0  # (not the recipe's 128)
    (result,) = json.loads((out / "pareto.json").read_text())["results"]
    return out / "net_0.5MF", result


def test_finetune_command_starts_from_the_pick_and_exports_what_it_reports(pick, capsys):
    net_dir, result = pick
    int8 = ["--quantize", "int8"] if importlib.util.find_spec("torchao") else []
    assert finetune_main([str(net_dir), "--epochs", "3", "--lr", "0.01", "--no-progress", *int8]) == 0
    out = net_dir.parent / "net_0.5MF-finetuned"
    report = json.loads((out / "finetune.json").read_text())
    before, after = report["before"], report["after"]
    # before: the pick as the search measured and exported it (its BN calibrated on 40 images)
    assert (before["holdout_acc"], before["test_acc"]) == (result["holdout_acc"], result["test_acc"])
    assert before["test_ci95"] == result["test_ci95"]
    # the kept epoch is the best held-out one, the inherited weights included
    curve = [before["holdout_acc"]] + [h["holdout_acc"] for h in report["history"]]
    assert after["holdout_acc"] == max(curve) and report["kept_epoch"] == int(np.argmax(curve))
    assert report["gain_points"]["test"] == pytest.approx(100 * (after["test_acc"] - before["test_acc"]))
    # the exported program computes the reported accuracy
    cfg, splits, net = load_trained(report["checkpoint"])
    assert report["steps"] == 3 * (len(splits.train) // cfg["batch_size"])
    ev = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"])
    program = torch.export.load(str(out / "model.pt2")).module()
    meta = json.loads((out / "meta.json").read_text())
    assert ev.module_accuracy(program, "test", meta["resolution"]) == after["test_acc"]
    assert meta["arch"] == report["arch"] == json.loads((net_dir / "meta.json").read_text())["arch"]
    if int8:  # the int8 program of the fine-tuned network, measured against it
        assert report["int8"]["float32_acc"] == {"holdout": after["holdout_acc"], "test": after["test_acc"]}
        assert meta["int8"] == report["int8"] and (out / "model_int8.pt2").exists()
    printed = capsys.readouterr().out
    assert ("int8: held-out" in printed) == bool(int8)
    assert f"test: {before['test_acc']:.4f}" in printed and f"-> {after['test_acc']:.4f}" in printed
    assert f"wrote {out}/: finetune.json, model.pt2" in printed


def test_finetune_is_deterministic_and_distillation_with_weight_zero_changes_nothing(trained):
    cfg, splits, net = load_trained(str(trained / "checkpoint.pt"))
    ev = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"])
    arch = net.space.sample(1, seed=3)[0]
    runs = [finetune(net, cfg, ev, arch, FinetuneOptions(epochs=1, lr=0.02, **kw), progress=False)
            for kw in ({}, {}, {"distill": True, "kd_weight": 0.0}, {"distill": True})]
    states = [r[0].state_dict() for r in runs]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
        assert torch.equal(states[0][key], states[2][key]), key
    # (the kept weights may be the starting ones; the epoch's loss and held-out accuracy follow
    # every step's weights)
    histories = [r[1]["history"] for r in runs]
    assert histories[0] == histories[1] == histories[2]
    assert histories[0][0]["loss"] != histories[3][0]["loss"]  # (the teacher's term adds to it)


@pytest.mark.parametrize("argv, message", [
    (["{tmp}"], "is not an exported pick: it has no meta.json"),
    ([], "give an exported pick"),
    (["--checkpoint", "{ckpt}", "--arch", "{{not json"], "--arch is not JSON"),
    (["--checkpoint", "{ckpt}", "--arch", '{{"resolution": 3}}'], "architecture dict has missing keys"),
    (["--checkpoint", "{ckpt}", "--arch", "[1, 2]"], "encoded architectures must have shape"),
    (["{pick}", "--epochs", "0"], "epochs = 0 must be a positive integer"),
    (["{pick}", "--lr", "-1"], "lr = -1.0 must be a positive number"),
    (["{pick}", "--arch", "[1]"], "--arch is for --checkpoint without a pick"),
    (["{pick}", "--checkpoint", "{tmp}/missing.pt"], "missing.pt does not exist"),
    (["{pick}", "--kd-weight", "2"], "only distill = True adds"),
])
def test_finetune_refuses_bad_input(pick, trained, tmp_path, capsys, argv, message):
    names = {"tmp": tmp_path, "ckpt": trained / "checkpoint.pt", "pick": pick[0]}
    before = sorted(p.name for p in pick[0].parent.iterdir())
    out = tmp_path / "out"
    assert finetune_main([a.format(**names) for a in argv] + ["--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in pick[0].parent.iterdir()) == before
