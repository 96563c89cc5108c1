"""The accuracy predictor: a random forest regressor on the flat architecture encoding
(AttentiveNAS: 100 trees, maximum depth 15; Kendall tau 0.89 on held-out sub-networks there).

scikit-learn fits the trees; nasops then keeps them as plain node arrays, evaluated by the C++
core (``nasops._C.Forest``) and saved as a ``.npz`` of those arrays plus JSON metadata. The file
loads without pickle and without scikit-learn, so it does not depend on the version that made it
(a pickled scikit-learn model often fails to load in another version).
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
from scipy.stats import kendalltau

from .. import _C
from ..utils.files import atomic_open
from ..space import SearchSpace
from ..utils.checks import is_int

FORMAT = "nasops-forest-1"
_ARRAYS = ("feature", "threshold", "left", "right", "value", "roots")


def kendall_tau(a, b) -> float:
    """Kendall's tau-b rank correlation of two equal-length sequences (ties handled), in
    O(n log n) (scipy's); NaN when either sequence is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"kendall_tau needs two sequences of the same length >= 2, got "
                         f"{a.size} and {b.size}")
    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")  # one sequence is constant: no ranking to compare
    return float(kendalltau(a, b)[0])  # ([0]: scipy < 1.10 names it correlation)


class AccuracyPredictor:
    """Predicts a sub-network's accuracy from its encoding (``space.encode`` rows).

    ``AccuracyPredictor(space).fit(X, y)``; ``predict(X)``; ``kendall_tau(X, y)``;
    ``save(path)`` and ``AccuracyPredictor.load(path, space)``."""

    def __init__(self, space: SearchSpace, n_estimators: int = 100, max_depth: int = 15,
                 seed: int = 0):
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
        for name, value in (("n_estimators", n_estimators), ("max_depth", max_depth)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} = {value!r} must be a positive integer")
        self.space, self.n_estimators, self.max_depth, self.seed = space, n_estimators, max_depth, seed
        self._forest = None
        self._arrays = None

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, X, y) -> "AccuracyPredictor":
        X = self._rows(X)
        y = np.asarray(y, dtype=np.float64).ravel()
        if y.shape != (X.shape[0],) or X.shape[0] < 2:
            raise ValueError(f"fit needs one target per architecture (at least 2), got "
                             f"{X.shape[0]} architectures and {y.size} targets")
        if not np.all(np.isfinite(y)):
            raise ValueError("fit targets contain NaN or infinity")
        try:
            from sklearn.ensemble import RandomForestRegressor
        except ImportError:  # pragma: no cover - scikit-learn is a dependency
            raise ImportError("fitting a predictor needs scikit-learn (pip install scikit-learn)")
        model = RandomForestRegressor(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                      random_state=self.seed, n_jobs=1)
        model.fit(X.astype(np.float64), y)
        parts = {k: [] for k in _ARRAYS}
        offset = 0
        for est in model.estimators_:
            t = est.tree_
            leaf = t.children_left < 0
            parts["roots"].append(np.array([offset]))
            parts["feature"].append(np.where(leaf, -1, t.feature))
            parts["threshold"].append(np.where(leaf, 0.0, t.threshold))
            parts["left"].append(np.where(leaf, -1, t.children_left + offset))
            parts["right"].append(np.where(leaf, -1, t.children_right + offset))
            parts["value"].append(t.value.reshape(t.node_count, -1)[:, 0])
            offset += t.node_count
        self._set_arrays({k: np.concatenate(v) for k, v in parts.items()})
        return self

    def _set_arrays(self, arrays: dict) -> None:
        ints = {"feature", "left", "right", "roots"}
        arrays = {k: np.ascontiguousarray(arrays[k], dtype=np.int32 if k in ints else np.float64)
                  for k in _ARRAYS}
        try:
            self._forest = _C.Forest(*(arrays[k] for k in _ARRAYS), num_features=self.space.dim)
        except (ValueError, TypeError) as e:
            raise ValueError(f"invalid forest: {e}") from None
        self._arrays = arrays

    # -- prediction -------------------------------------------------------------------------
    def _rows(self, X) -> np.ndarray:
        return self.space.rows(X)

    def predict(self, X) -> np.ndarray:
        """Predicted accuracy of each row of X ([N, D] or one [D] encoding): float64 [N]."""
        if self._forest is None:
            raise RuntimeError("the predictor is not fitted: call fit(X, y) or load a file")
        return self._forest.predict(self._rows(X).astype(np.float64))

    __call__ = predict  # an objective for nasops.search.evolve

    def kendall_tau(self, X, y) -> float:
        """Kendall's tau between predicted and given accuracies."""
        return kendall_tau(self.predict(X), y)

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes the forest as .npz (node arrays + JSON metadata), atomically."""
        if self._arrays is None:
            raise RuntimeError("the predictor is not fitted: nothing to save")
        path = os.fspath(path)
        meta = {"format": FORMAT, "space": self.space.name, "dim_names": self.space.dim_names,
                "choices": [c.tolist() for c in self.space.choices],
                "n_estimators": self.n_estimators, "max_depth": self.max_depth, "seed": self.seed}
        with atomic_open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **self._arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, space: SearchSpace) -> "AccuracyPredictor":
        """A predictor saved by :meth:`save`, for `space` (checked against the file's encoding)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"predictor file {path!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in _ARRAYS}
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a nasops predictor file: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a nasops predictor file (format "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"expected {FORMAT!r})")
        if meta["dim_names"] != space.dim_names or meta["choices"] != [c.tolist() for c in space.choices]:
            raise ValueError(f"{path} was fitted on search space {meta['space']!r}, whose encoding "
                             f"differs from that of space {space.name!r}")
        out = cls(space, meta["n_estimators"], meta["max_depth"], meta["seed"])
        out._set_arrays(arrays)
        return out
