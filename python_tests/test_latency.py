"""Latency lookup tables: each entry times the right part, a prediction is the sum of a
sub-network's parts, tables round-trip through their file and refuse to be used where they were
not measured, and the search keeps every member within a latency budget."""
import itertools
import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import nasops
from nasops.search import latency
from nasops.search.latency import LatencyTable, device_name
from nasops.search import evolve


def mmacs(fn, x, repeats, warmup):
    """A stand-in clock: the millions of multiply-adds of fn(x) (torch's FLOP counter / 2)."""
    with FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops() / 2 / 1e6


@pytest.fixture(scope="module")
def space(tiny):
    return nasops.SearchSpace.load(tiny)


@pytest.fixture(scope="module")
def measured(space):
    return LatencyTable.measure(space, repeats=2, warmup=1)


def test_every_entry_times_the_part_it_stands_for(space, monkeypatch):
    """With the clock replaced by torch's FLOP counter on the module it is given (multiply-adds
    = FLOPs / 2, 'milliseconds' = MMACs), the table must predict each sub-network's MFLOPs: so
    every entry ran the part of the right shape, and the prediction adds up the right parts."""
    monkeypatch.setattr(latency, "time_module", mmacs)
    table = LatencyTable.measure(space, repeats=1, warmup=0)
    archs = np.array([list(v) for v in itertools.product(*space.choices)])
    np.testing.assert_allclose(table(archs), space.flops(archs), rtol=0, atol=1e-8)
    big = nasops.SearchSpace.load("small")
    archs = big.sample(64, seed=0)
    np.testing.assert_allclose(LatencyTable.measure(big, repeats=1, warmup=0)(archs),
                               big.flops(archs), rtol=0, atol=1e-8)


def test_a_table_round_trips_and_refuses_other_devices_threads_and_spaces(space, measured,
                                                                          tmp_path):
    path = str(tmp_path / "table.json")
    measured.save(path)
    archs = space.sample(50, seed=1)
    assert (measured(archs) > 0).all()
    again = LatencyTable.load(path, space, device="cpu", threads=1, batch=1)
    np.testing.assert_array_equal(again(archs), measured(archs))
    assert again.device == device_name("cpu") and again.unit == "ms"
    with pytest.raises(ValueError, match="measured with threads 1, but threads 4 is expected"):
        LatencyTable.load(path, space, threads=4)
    with pytest.raises(ValueError, match="measured with batch 1, but batch 8"):
        LatencyTable.load(path, space, batch=8)
    doc = json.loads(open(path).read())
    doc["device"] = "cpu: another processor"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="measured with device 'cpu: another processor'"):
        LatencyTable.load(str(other), space, device="cpu")
    with pytest.raises(ValueError, match="was measured on 'cpu: another processor'"):
        latency.check(LatencyTable.load(str(other)), n=2)
    with pytest.raises(ValueError, match="measured for search space 'tiny' with another"):
        LatencyTable.load(path, nasops.SearchSpace.load("small"))
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="is not a nasops latency table"):
        LatencyTable.load(str(tmp_path / "bad.json"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LatencyTable.load(str(tmp_path / "missing.json"))


def test_search_under_a_latency_budget_never_exceeds_it(space, measured):
    smallest = float(measured(space.encode(space.min_arch()))[0])  # (noisy table: stay above it)
    budget = max(float(np.median(measured(space.sample(200, seed=2)))), 1.2 * smallest)
    seen = []

    def objective(archs):
        seen.append(archs.copy())
        return space.params(archs)
    r = evolve(space, objective, budget, cost=measured, population=32, mutations=8, crossovers=8,
               generations=5)
    assert (measured(np.concatenate(seen)) <= budget).all()
    assert r.unit == "ms" and r.cost == pytest.approx(float(measured(r.encoding[None])[0]))
    assert r.cost <= budget
    with pytest.raises(ValueError, match="below the smallest sub-network .* ms"):
        evolve(space, objective, 1e-6, cost=measured)


def test_end_to_end_measurement_times_the_extracted_network(space, monkeypatch):
    """measure_networks gives each sub-network its own time: with the clock replaced by the
    FLOP counter, the 'latency' of each is its MFLOPs."""
    monkeypatch.setattr(latency, "time_module", mmacs)
    archs = space.sample(5, seed=3)
    measured, passes = latency.measure_networks(space, archs, rounds=2)
    np.testing.assert_allclose(measured, space.flops(archs), rtol=1e-12)
    assert passes.shape == (2, 5)
    assert torch.get_num_threads() >= 1  # (threads restored after timing)
