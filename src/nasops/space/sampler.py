"""The AttentiveNAS FLOPs-constrained sampler and size-proportional draws over a search space.

The work happens in the C++ core (``nasops._C.Sampler``); this module checks arguments and
converts units. Paper facts (AttentiveNAS, Sec. 4.2):

* FLOPs prior p(t): FLOPs of ``n_prior`` uniform sub-networks rounded to ``step`` MFLOPs.
* Proposal q(x | t): per dimension, the empirical distribution of each choice among the prior
  samples of bin t; dimensions are drawn independently and a draw is accepted when its rounded
  FLOPs equal t (rejection sampling, ~12 trials per accepted sample in the paper).
* When ``max_trials`` draws are all rejected, the sample is one of the up to
  ``examples_per_bin`` prior sub-networks kept for that bin (always at the target): counted in
  ``stats["fallbacks"]``, so a run can tell it happened. Sampling never loops forever.
"""
from __future__ import annotations


import numpy as np

from .. import _C
from ..utils.checks import check_count, is_number, seed64
from . import SearchSpace

_SIZE_MEASURES = ("params", "flops")


class FlopsSampler:
    """FLOPs prior, per-dimension proposal and rejection sampling over a :class:`SearchSpace`.

    ``step`` is the FLOPs bin width in MFLOPs (default: the space's ``flops_step``, 25 for
    ``attentive_nas`` as in the paper). One ``seed`` makes the tables and every later draw
    reproducible; :meth:`state_dict` holds all of it, tables and random state included.
    """

    def __init__(self, space: SearchSpace, n_prior: int = 200_000, step: float | None = None,
                 seed: int | None = 0, max_trials: int = 1000, examples_per_bin: int = 16):
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
        step = space.flops_step if step is None else step
        if not is_number(step) or not step > 0:
            raise ValueError(f"step = {step!r} must be a positive number of MFLOPs")
        self.space = space
        self.step = float(step)
        self._core = _C.Sampler(space.core, n_prior=check_count("n_prior", n_prior),
                                step=self.step, seed=seed64(seed),
                                max_trials=check_count("max_trials", max_trials),
                                examples_per_bin=check_count("examples_per_bin", examples_per_bin))
        self._refresh()

    def _refresh(self):
        bins = np.asarray(self._core.bins(), dtype=np.int64)
        counts = np.asarray(self._core.counts(), dtype=np.float64)
        self.targets = bins * self.step
        self.prior = counts / counts.sum()

    # -- targets --------------------------------------------------------------------------
    def sample_target(self, n: int | None = None, *, uniform_bins: bool = False):
        """A FLOPs target (MFLOPs) drawn from the prior, or an array of n of them.
        ``uniform_bins=True`` draws uniformly over the prior's bins instead."""
        count = 1 if n is None else check_count("n", n)
        bins = np.asarray(self._core.sample_bins(count, bool(uniform_bins)))
        targets = bins * self.step
        return float(targets[0]) if n is None else targets

    def _bin_position(self, target) -> int:
        if not is_number(target):
            raise TypeError(f"target must be a number of MFLOPs, got {type(target).__name__}")
        pos = self._core.find_bin(self._core.bin_of(float(target)))
        if pos < 0:
            listed = ", ".join(f"{t:g}" for t in self.targets)
            raise ValueError(f"target {target!r} MFLOPs has no proposal: it is outside the FLOPs "
                             f"prior's support. Targets (step {self.step:g} MFLOPs): {listed}")
        return pos

    # -- architectures --------------------------------------------------------------------
    def sample(self, target: float, n: int = 1) -> np.ndarray:
        """n encoded architectures whose FLOPs, rounded to the step, equal the target (itself
        rounded to the step). Array [n, D]."""
        return self._core.sample(self._bin_position(target), check_count("n", n))

    def sample_proportional(self, n: int, by: str = "params") -> np.ndarray:
        """n encoded architectures drawn with probability proportional to their size (``by``:
        "params" or "flops") over the whole space, as balanced one-shot training does. Exact:
        rejection from uniform draws against a bound on the largest size."""
        if by not in _SIZE_MEASURES:
            raise ValueError(f"by = {by!r} is not allowed; allowed: {list(_SIZE_MEASURES)}")
        return self._core.sample_proportional(check_count("n", n), by == "flops")

    @property
    def stats(self) -> dict:
        """Counters: ``samples`` returned by :meth:`sample`, the ``trials`` they took (so
        trials / samples is the paper's trials per accepted sample), ``fallbacks``, and
        ``proportional_samples`` / ``proportional_draws`` of :meth:`sample_proportional`."""
        return dict(self._core.stats())

    # -- checkpointing --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tables, random state and counters as plain lists, ints, floats and strings (safe
        for ``torch.save``/``torch.load(weights_only=True)`` and JSON)."""
        return {"space": self.space.config, "sampler": self._core.state()}

    def load_state_dict(self, state: dict) -> None:
        """Restores a sampler saved by :meth:`state_dict` for the same search space."""
        if not isinstance(state, dict) or set(state) != {"space", "sampler"}:
            raise ValueError("not a FlopsSampler state: expected a dict with keys "
                             "'space' and 'sampler'")
        if state["space"] != self.space.config:
            saved = state["space"].get("name") if isinstance(state["space"], dict) else None
            raise ValueError(f"sampler state was saved for search space {saved!r} with another "
                             f"configuration; this sampler's space is {self.space.name!r}")
        try:
            core = _C.Sampler.from_state(self.space.core, state["sampler"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"sampler state is malformed: {e}") from None
        self._core = core
        self.step = float(state["sampler"]["step"])
        self._refresh()
