"""Latency lookup tables: each entry times the right part, a prediction is the sum of a
sub-network's parts, tables round-trip through their file and refuse to be used where they were
not measured, and the search keeps every member within a latency budget."""
import itertools
import json
import warnings

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
    with pytest.raises(ValueError, match="was measured on 'cpu: another processor'"), \
            pytest.warns(UserWarning, match="measured on 'cpu: another processor'"):
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
    t = latency.measure_networks(space, archs, rounds=2)
    np.testing.assert_allclose(t.ms, space.flops(archs), rtol=1e-12)
    # (the reference network's time never changes here, so the drift correction is the identity)
    np.testing.assert_allclose(t.raw_ms, t.ms, rtol=1e-12)
    assert t.passes.shape == (2, 5) and t.reference_ms == t.reference_now_ms
    assert torch.get_num_threads() >= 1  # (threads restored after timing)


class SyntheticDevice:
    """A stand-in clock with a known latency model: a part takes its MMACs in 'milliseconds'; a
    whole network (a StaticNet: what measure_networks times) takes 1.3 x its MMACs + an offset
    that depends on its resolution, slowed down by a drift that grows with every call (a shared
    machine speeding up and slowing down)."""

    def __init__(self, drift_per_call=0.0):
        self.calls, self.drift_per_call = 0, drift_per_call

    def truth(self, space, archs):
        return 1.3 * space.flops(archs) + 0.01 * np.asarray(archs)[:, 0]

    def __call__(self, fn, x, repeats, warmup):
        self.calls += 1
        ms = mmacs(fn, x, repeats, warmup)
        if type(fn).__name__ == "StaticNet":
            ms = 1.3 * ms + 0.01 * x.shape[-1]
        return ms * (1 + self.drift_per_call * self.calls)


def test_the_fit_predicts_a_synthetic_device_whose_networks_cost_more_than_their_parts(
        space, monkeypatch):
    """End to end = 1.3 x the parts + an offset per resolution: the calibrated table predicts
    other networks exactly, and the parts alone are off by the known 30%+."""
    device = SyntheticDevice()
    monkeypatch.setattr(latency, "time_module", device)
    table = LatencyTable.measure(space, repeats=1, warmup=0, calibrate=12)
    archs = space.sample(40, seed=5)
    np.testing.assert_allclose(table(archs), device.truth(space, archs), rtol=1e-9)
    assert table.scale == pytest.approx(1.3)
    assert (table.parts(archs) < 0.8 * device.truth(space, archs)).all()
    assert table.settings["protocol"]["calibration"]["networks"] == 12
    assert table.settings["environment"]["torch"] == torch.__version__


def test_drift_correction_removes_a_machine_slowing_down_during_the_measurement(space,
                                                                               monkeypatch):
    """The machine slows down by 0.2% per timed call (20% across the measurement): raw times
    drift with it, the reference-corrected ones stay within 1% of the truth at the table's
    reference speed."""
    monkeypatch.setattr(latency, "time_module", SyntheticDevice())
    table = LatencyTable.measure(space, repeats=1, warmup=0, calibrate=12)
    drifting = SyntheticDevice(drift_per_call=0.002)
    monkeypatch.setattr(latency, "time_module", drifting)
    archs = space.sample(60, seed=6)
    t = latency.measure_networks(space, archs, rounds=2, reference_ms=table.reference_ms)
    truth = drifting.truth(space, archs)
    assert np.abs(t.ms / truth - 1).max() < 0.01
    assert np.abs(t.raw_ms / truth - 1).max() > 0.1  # (what the correction removed)
    assert t.reference_now_ms > 1.1 * table.reference_ms
    check = latency.error_summary(table(archs), t.ms)
    assert check["within_10pct"] == 1.0 and check["p90_abs"] < 0.01


def test_check_reports_the_share_within_10_percent_and_the_retest_noise(space, monkeypatch):
    device = SyntheticDevice()
    monkeypatch.setattr(latency, "time_module", device)
    table = LatencyTable.measure(space, repeats=1, warmup=0, calibrate=12)
    result = latency.check(table, n=10, rounds=1)
    assert result["error"]["within_10pct"] == 1.0 and result["error"]["p90_abs"] < 1e-6
    assert result["retest"]["median_abs"] < 1e-6  # (a noiseless device retests exactly)
    assert result["error_parts_only"]["within_10pct"] == 0.0
    report = latency.check_report(table, result)
    assert "100% within +-10%" in report and "measurement noise" in report
    # error_summary by hand: 2 of 4 within 10%
    s = latency.error_summary([1.05, 0.8, 1.2, 1.0], [1, 1, 1, 1])
    assert s["within_10pct"] == 0.5 and s["median_abs"] == pytest.approx(0.125)
    assert s["mean"] == pytest.approx(0.0125)


def test_a_table_made_elsewhere_warns_and_records_how_it_was_made(space, measured, tmp_path):
    path = str(tmp_path / "table.json")
    measured.save(path)
    doc = json.loads(open(path).read())
    assert doc["settings"]["protocol"]["networks"]["rounds"] == latency.NETWORK_ROUNDS
    assert doc["settings"]["environment"]["torch"] == torch.__version__
    assert doc["reference"]["ms"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatencyTable.load(path)  # (made here: no warning)
    doc["settings"]["environment"]["torch"] = "1.0.0"
    doc["device"] = "cpu: another processor"
    (tmp_path / "other.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="measured on 'cpu: another processor'.*measured with "
                                         "torch 1.0.0"):
        LatencyTable.load(str(tmp_path / "other.json"))
    with pytest.raises(ValueError, match="this machine is .*pass --no-verify"), \
            pytest.warns(UserWarning):
        latency.measurer(LatencyTable.load(str(tmp_path / "other.json")), "--no-verify")


def test_a_format_1_table_still_loads(space, measured, tmp_path):
    doc = json.loads(json.dumps({"format": "nasops-latency-1", "space": space.config,
                                 "device": measured.device, "threads": 1, "batch": 1,
                                 "settings": {"torch": torch.__version__}, "scale": 1.5,
                                 "offset_ms": 0.25,
                                 "tables": json.loads(_saved(measured, tmp_path))["tables"]}))
    (tmp_path / "old.json").write_text(json.dumps(doc))
    old = LatencyTable.load(str(tmp_path / "old.json"))
    archs = space.sample(5, seed=0)
    np.testing.assert_allclose(old(archs), 1.5 * measured.parts(archs) + 0.25)


def _saved(table, tmp_path):
    table.save(str(tmp_path / "t.json"))
    return (tmp_path / "t.json").read_text()


def test_the_reference_smoothing_keeps_a_drift_and_drops_a_hiccup():
    ramp = 1.0 + 0.02 * np.arange(10)  # the machine slowing down steadily
    np.testing.assert_allclose(latency._running_median(ramp, 5), ramp)
    hiccup = ramp.copy()
    hiccup[4] *= 1.3  # one timing of the reference caught a slow spell
    smoothed = latency._running_median(hiccup, 5)
    assert np.abs(smoothed / ramp - 1).max() <= 0.02 + 1e-12  # (off by at most one step of drift)


def test_the_command_measures_a_run_s_own_space(trained, tiny, tmp_path, monkeypatch, capsys):
    """--checkpoint measures for the run's own space (a run's input channels and classes are its
    data's), which the search over the run then accepts; a table of another configuration is
    refused, naming what differs."""
    from nasops.nn.checkpoint import load_checkpoint
    monkeypatch.setattr(latency, "time_module", mmacs)  # (the logic, not the clock)
    ckpt = str(trained / "checkpoint.pt")
    run_space = nasops.SearchSpace(load_checkpoint(ckpt)["space"])
    assert run_space.in_channels == 1
    out = str(tmp_path / "run.json")
    assert latency.main(["--checkpoint", ckpt, "--out", out, "--repeats", "1",
                         "--no-progress"]) == 0
    assert "calibrated on 60 whole networks" in capsys.readouterr().out
    table = LatencyTable.load(out, run_space)
    np.testing.assert_allclose(table(run_space.sample(8, seed=0)),
                               run_space.flops(run_space.sample(8, seed=0)), rtol=1e-6)
    rgb = tmp_path / "rgb.yaml"  # (the same space for 3-channel images)
    rgb.write_text(open(tiny).read().replace("in_channels: 1", "in_channels: 3"))
    assert latency.main(["--space", str(rgb), "--out", str(tmp_path / "yaml.json"), "--repeats",
                         "1", "--no-progress"]) == 0
    with pytest.raises(ValueError, match=r"another configuration \(in_channels 3 there, 1 here"):
        LatencyTable.load(str(tmp_path / "yaml.json"), run_space)
    capsys.readouterr()
    assert latency.main(["--space", tiny, "--checkpoint", ckpt, "--out", out]) == 1
    assert "give --space or --checkpoint (one of them)" in capsys.readouterr().err
