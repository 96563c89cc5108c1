"""Balanced NAO's Alg. 1 as a training strategy (balanced-nao): the pool is drawn in proportion to
size, renewed by NAO between rounds within each budget, the run ends with a pick per budget in
pareto.json, and an interrupted run resumes bit for bit."""
import json

import numpy as np
import pytest
import torch

import nasops
from nasops.train import loop as train_mod
from nasops.train.strategies import build_strategy

from test_train import assert_same_weights, config, weights

NAO = dict(strategy="balanced-nao", nao_budgets=[1.0, 2.0], nao_rounds=2, nao_pool=16,
           nao_seeds=4, nao_new=6, epochs=2, limit=320)


def test_balanced_nao_resumes_bit_for_bit_and_picks_within_each_budget(tiny, tmp_path):
    cfg = config(tiny, **NAO)
    full = train_mod.train(cfg, str(tmp_path / "full"), progress=False)
    # 18 steps; rounds after steps 6 and 12: stop between them, resume, stop again at a round
    assert train_mod.train(cfg, str(tmp_path / "part"), progress=False,
                           stop_after_steps=8) == {"interrupted": 8}
    assert train_mod.train(cfg, str(tmp_path / "part"), resume=True, progress=False,
                           stop_after_steps=4) == {"interrupted": 12}
    resumed = train_mod.train(cfg, str(tmp_path / "part"), resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "part"))
    assert resumed == full
    ckpt = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    ckpt_part = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert_same_weights(ckpt["strategy"]["nao"]["model"], ckpt_part["strategy"]["nao"]["model"])
    rounds = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")
              if '"nao"' in l]
    assert [r["step"] for r in rounds] == [6, 12] and all(sum(r["new"]) == 6 for r in rounds)
    rounds_part = [json.loads(l) for l in open(tmp_path / "part" / "metrics.jsonl")
                   if '"nao"' in l]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rounds_part] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]
    doc = json.loads((tmp_path / "full" / "pareto.json").read_text())
    assert doc["search"] == "balanced-nao" and len(doc["results"]) == 2
    space = nasops.SearchSpace.load(tiny)
    for entry, budget in zip(doc["results"], [1.0, 2.0]):
        assert entry["budget"] == budget and entry["flops"] <= budget
        assert entry["flops"] == pytest.approx(space.flops(np.array(entry["encoding"])))
        assert entry["score"] == entry["holdout_acc"]
        assert entry["test_ci95"][0] <= entry["test_acc"] <= entry["test_ci95"][1]
    assert full["picks"] == doc["results"]


def test_the_pool_is_drawn_in_proportion_to_size_and_stays_within_the_budgets(tiny):
    space = nasops.SearchSpace.load(tiny)
    cfg = config(tiny, **NAO)
    strategy = build_strategy("balanced-nao", space, seed=0, n_prior=5000, recipe=cfg)
    pool = strategy.pool
    for members, budget in zip(strategy.pools, [1.0, 2.0]):
        assert len(members) == 8 and (space.flops(members) <= budget).all()
    draws = np.concatenate([strategy.sample(500) for _ in range(40)])  # 20,000 draws
    keys = [a.tobytes() for a in pool]
    counts = np.bincount([keys.index(a.tobytes()) for a in draws], minlength=len(pool))
    expected = space.params(pool) / space.params(pool).sum()
    assert np.abs(counts / counts.sum() - expected).max() < 0.015  # (Eqn. 3)
    # a round: the accuracies decide which candidates stay
    rng = np.random.default_rng(0)
    event = strategy.after_step(6, 18, lambda archs: rng.random(len(archs)))
    assert event["round"] == 1 and event["new"] == [3, 3]
    for members, budget in zip(strategy.pools, [1.0, 2.0]):
        assert len(members) == 8 and (space.flops(members) <= budget).all()
    assert strategy.after_step(7, 18, None) is None  # (not a round's step)


def test_balanced_nao_needs_budgets_that_fit(tiny):
    space = nasops.SearchSpace.load(tiny)
    with pytest.raises(ValueError, match="needs nao_budgets"):
        build_strategy("balanced-nao", space, recipe=config(tiny, strategy="balanced-nao"))
    with pytest.raises(ValueError, match="below the smallest"):
        build_strategy("balanced-nao", space, n_prior=5000,
                       recipe=config(tiny, strategy="balanced-nao", nao_budgets=[0.001]))
    with pytest.raises(ValueError, match="nao_budgets"):
        config(tiny, nao_budgets=[1, -2])
    with pytest.raises(ValueError, match="nao_new"):
        config(tiny, nao_new=0)
