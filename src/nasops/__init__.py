"""nasops: two-stage weight-sharing neural architecture search with a fast C++/CUDA core.

``import nasops`` loads torch and the compiled core only; the top-level names below and the
submodules (``nasops.search``, ``nasops.data``, ...) are imported on first use (PEP 562).
"""
import importlib
import os

import torch  # noqa: F401  (loads libtorch, which nasops._C links against)


def _missing_core(error: ImportError) -> ImportError:
    """The ImportError for a nasops without a loadable _C, saying exactly what to run."""
    package = os.path.dirname(os.path.abspath(__file__))
    src = os.path.dirname(package)
    checkout = os.path.dirname(src)
    if os.path.basename(src) == "src" and os.path.isfile(os.path.join(checkout, "setup.py")):
        return ImportError(
            f"nasops was imported from the source tree {package}, which holds no loadable "
            f"compiled core (nasops._C). Build it there with `pip install --no-build-isolation "
            f"-e {checkout}` (torch installed first), or take {src} off sys.path / PYTHONPATH "
            f"to use an installed nasops. Cause: {error}")
    return ImportError(
        f"nasops._C, the compiled core, is missing or does not load in {package}. Reinstall "
        f"nasops: in its checkout run `pip install --no-build-isolation --force-reinstall "
        f"--no-deps .` (the core must be built against the torch you run, {torch.__version__}). "
        f"Cause: {error}")


try:
    from . import _C  # noqa: F401  (the compiled core)
except ImportError as e:
    raise _missing_core(e) from e

from . import _moved, ops  # noqa: E402,F401  (ops registers the operators' autograd and fake tensors)

_moved.install()  # the import paths from before the layout by stage keep working

# Imported on first use: name -> submodule that defines it.
_LAZY_NAMES = {"AccuracyPredictor": "predictor", "Arch": "space", "FlopsSampler": "space.sampler",
               "SearchSpace": "space", "Supernet": "nn", "calibrate_bn": "nn",
               "official_state_dict": "nn.official", "packaged_spaces": "space",
               "register_dataset": "data", "register_loss": "train.losses",
               "register_strategy": "train.strategies", "resize_batch": "data"}
_SUBMODULES = ("data", "evaluate", "nn", "predictor", "search", "space", "train", "utils")

__all__ = ["ops", *sorted(_LAZY_NAMES)]
__version__ = "0.2.0"


def __getattr__(name: str):
    if name in _SUBMODULES or f"{__name__}.{name}" in _moved.MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'nasops' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_SUBMODULES))
