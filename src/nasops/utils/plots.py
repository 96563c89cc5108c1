"""The figures nasops writes: a search's front (``pareto.png``) and a training run's curves
(``curves.png``). matplotlib is optional (``pip install matplotlib``): without it these return
False and the caller says what was skipped. Figures are drawn without pyplot, so the caller's
matplotlib backend is left alone, and written atomically."""
from __future__ import annotations

import functools
import gc
from dataclasses import dataclass

from .files import atomic_path

MISSING = "matplotlib is not installed (pip install matplotlib)"


def _figure(**kw):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(**kw)


def _save(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _collected(draw):
    """A plot function that collects its figure once it returns: a Figure (with its canvas and
    rendered image) is cyclic garbage, which Python's collector may leave for many epochs of a
    training run (a curves.png per epoch held its memory growing by 22 MiB per 1,000 steps:
    benchmarks/memory_flat.py)."""
    @functools.wraps(draw)
    def plot(*args, **kwargs):
        try:
            return draw(*args, **kwargs)
        finally:
            gc.collect()
    return plot


@dataclass
class Points:
    """Points of a plot: x (cost), y (score) and, when given, each y's 95% interval as (low,
    high) arrays (held-out accuracy is a binomial measurement)."""
    x: object
    y: object
    intervals: tuple | None = None


@_collected
def plot_front(path: str, cloud: Points, results, pick_intervals=None, front: Points | None = None,
               *, ylabel: str, title: str, unit: str = "MFLOPs") -> bool:
    """The searched picks over a cloud of random sub-networks, a dotted line per budget; x is
    each result's cost in `unit`. Intervals (the cloud's, and `pick_intervals` of the results)
    are drawn as error bars when given. `front`: a whole front (``nasops.search.front``), drawn
    as steps. False when matplotlib is missing."""
    fig = _figure(figsize=(7, 4.5), dpi=120)
    if fig is None:
        return False
    ax = fig.subplots()
    cloud_costs, cloud_scores, front_intervals = cloud.x, cloud.y, pick_intervals
    if len(cloud_costs):
        if cloud.intervals is not None:
            lo, hi = cloud.intervals
            ax.vlines(cloud_costs, lo, hi, colors="0.85", lw=0.6, zorder=1)
        ax.scatter(cloud_costs, cloud_scores, s=6, c="0.55", zorder=2,
                   label=f"{len(cloud_costs)} random sub-networks")
    if front is not None:
        ax.step(front.x, front.y, where="post", c="C2", lw=1, zorder=2,
                label=f"front found in one run ({len(front.x)} sub-networks)")
    short = "MF" if unit == "MFLOPs" else f" {unit}"
    flops, scores = [r.flops if r.cost is None else r.cost for r in results], [r.score for r in results]
    if front_intervals is not None:
        lo, hi = front_intervals
        ax.errorbar(flops, scores, yerr=[[s - l for s, l in zip(scores, lo)],
                                         [h - s for s, h in zip(scores, hi)]],
                    fmt="o-", c="C3", capsize=3, zorder=3, label="picks (95% interval)")
    else:
        ax.plot(flops, scores, "o-", c="C3", zorder=3, label="picks")
    for r in results:
        ax.axvline(r.budget, c="C0", lw=0.8, ls=":", zorder=0)
        ax.annotate(f"<= {r.budget:g}{short}", (r.budget, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-2, -4), textcoords="offset points", rotation=90, ha="right",
                    va="top", fontsize=7, color="C0")
    picks = {}  # one label per picked sub-network, naming every budget that picked it
    for r in results:
        picks.setdefault((r.flops if r.cost is None else r.cost, r.score), []).append(f"{r.budget:g}")
    for (x, score), budgets in picks.items():
        ax.annotate(f"pick for <= {', '.join(budgets)}{short}", (x, score), xytext=(6, -10),
                    textcoords="offset points", fontsize=7, color="C3")
    ax.set_xlabel(unit if unit != "ms" else "predicted latency (ms)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True


@_collected
def plot_training_curves(path: str, metrics: list[dict]) -> bool:
    """Losses and learning rate by step, held-out accuracy of the smallest and largest
    sub-networks by epoch, from a run's metrics.jsonl entries. False when matplotlib is
    missing."""
    fig = _figure(figsize=(10, 3.2), dpi=110)
    if fig is None:
        return False
    steps = [m for m in metrics if "lr" in m]
    epochs = [m for m in metrics if m.get("event") == "epoch" and "holdout_acc_largest" in m]
    loss_ax, lr_ax, acc_ax = fig.subplots(1, 3)
    x = [m["step"] for m in steps]
    for key, label in (("loss_largest", "largest (CE)"), ("loss_smallest", "smallest (KD)"),
                       ("loss_sampled", "sampled (KD)")):
        loss_ax.plot(x, [m[key] for m in steps], lw=0.8, label=label)
    loss_ax.set(xlabel="step", ylabel="loss", title="training losses")
    loss_ax.legend(fontsize=7)
    lr_ax.plot(x, [m["lr"] for m in steps], c="C4", lw=0.8)
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for key, label in (("holdout_acc_smallest", "smallest"), ("holdout_acc_largest", "largest")):
        acc_ax.plot([m["epoch"] for m in epochs], [100 * m[key] for m in epochs], "o-", ms=3,
                    label=label)
    acc_ax.set(xlabel="epoch", ylabel="held-out accuracy (%)",
               title="held-out accuracy (BN re-calibrated)")
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    acc_ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True
