"""NAO (the search of Balanced NAO): the model learns a known objective, a gradient step on the
embedding raises the prediction, decoded sub-networks are valid and within the budget, and the
search is deterministic under a seed."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import nasops
from nasops.search import SearchResult
from nasops.search import NAOModel, NAOOptions, nao
from nasops.search.synthetic import Interacting


@pytest.fixture(scope="module")
def small():
    return nasops.SearchSpace.load("small")


def linear_objective(space):
    """A known objective: a fixed random weight per dimension times its choice position."""
    weights = np.random.default_rng(3).normal(size=space.dim)

    def objective(archs):
        return space.to_index(np.atleast_2d(archs)) @ weights
    return objective


@pytest.fixture(scope="module")
def fitted(small):
    objective = linear_objective(small)
    archs = small.sample(500, seed=1)
    model = NAOModel(small, NAOOptions(train_steps=400), seed=0)
    model.fit(archs, objective(archs), np.random.default_rng(0))
    return model, objective


def test_the_model_learns_a_known_objective_and_reconstructs(small, fitted):
    model, objective = fitted
    held_out = small.sample(300, seed=2)
    rho = spearmanr(model.predicted(held_out), objective(held_out))[0]
    assert rho > 0.9, rho
    decoded = model.decode(model.encode(model.tokens(held_out)).detach())
    assert (decoded == held_out).all(1).mean() > 0.9  # the autoencoder round trip


def test_a_gradient_step_raises_the_predicted_score(small, fitted):
    model, _ = fitted
    seeds = small.sample(40, seed=4)
    states, grad = model.moved(seeds)
    before = model.predict(states)
    after = model.predict(torch.nn.functional.normalize(states + 0.05 * grad, dim=-1))
    assert (after > before).all(), (after - before).min()


def test_decoded_sub_networks_are_valid_and_within_the_budget(small, fitted):
    model, _ = fitted
    states = torch.nn.functional.normalize(torch.randn(64, small.dim, model.options.hidden,
                                                       generator=torch.Generator().manual_seed(0)), dim=-1)
    decoded = model.decode(states)
    index = small.to_index(decoded)  # (raises for a value that is not a choice)
    assert ((index >= 0) & (index < small.sizes)).all()
    budget = 4.0
    result = nao(small, Interacting(small), budget, evaluations=250, seed=0)
    assert isinstance(result, SearchResult) and result.flops <= budget
    assert result.evaluations <= 250 and len(result.history) >= 2
    # every evaluated sub-network was within the budget
    seen = []
    nao(small, lambda a: (seen.append(a.copy()), Interacting(small)(a))[1], budget,
        evaluations=250, seed=0)
    assert (small.flops(np.concatenate(seen)) <= budget + 1e-9).all()


def test_nao_is_deterministic_under_a_seed_and_finds_better_than_its_start(small):
    objective = linear_objective(small)
    a = nao(small, objective, 6.0, evaluations=300, seed=5)
    b = nao(small, objective, 6.0, evaluations=300, seed=5)
    assert (a.encoding == b.encoding).all() and a.history == b.history
    assert a.history[-1]["best"] >= a.history[0]["best"]
    first = a.history[0]["evaluations"] - a.history[0]["new"]  # the initial pool's size
    assert first == 100


def test_bad_nao_arguments_raise(small):
    objective = linear_objective(small)
    with pytest.raises(TypeError, match="unknown NAO option"):
        nao(small, objective, 6.0, generations=3)
    with pytest.raises(ValueError, match="trade_off"):
        nao(small, objective, 6.0, trade_off=1.5)
    with pytest.raises(ValueError, match="evaluations"):
        nao(small, objective, 6.0, evaluations=0)
    with pytest.raises(ValueError, match="below the smallest"):
        nao(small, objective, 0.01)


def test_search_command_with_method_nao(tiny, tmp_path, capsys):
    import json
    from nasops.search.__main__ import main
    from test_search_quality import predictor_search_args
    common = predictor_search_args(tiny, tmp_path, cloud=8) + ["--method", "nao"]
    assert main(common + ["--evaluations", "150", "--budgets", "1", "2",
                          "--out", str(tmp_path / "nao")]) == 0
    doc = json.loads((tmp_path / "nao" / "pareto.json").read_text())
    assert doc["search"] == "nao"
    for entry in doc["results"]:
        assert entry["flops"] <= entry["budget"] and entry["evaluations"] <= 150
        assert "step_size" in entry["history"][0]
    capsys.readouterr()
    assert main(common + ["--front", "--budgets", "1", "--out", str(tmp_path / "x")]) == 1
    assert "--front is its own search" in capsys.readouterr().err
