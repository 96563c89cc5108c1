"""nasops: two-stage weight-sharing neural architecture search with a fast C++/CUDA core."""
import torch  # noqa: F401  (loads libtorch, which nasops._C links against)

try:
    from . import _C  # noqa: F401  (the compiled core)
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "nasops._C, the compiled core, is missing or does not load: install nasops with "
        "`pip install --no-build-isolation .` (torch installed first); see README.md. "
        f"Cause: {e}") from e

from . import ops
from .nn import Supernet, calibrate_bn, resize_batch
from .predictor import AccuracyPredictor
from .sampling import FlopsSampler
from .space import Arch, SearchSpace, packaged_spaces

__all__ = ["ops", "AccuracyPredictor", "Arch", "FlopsSampler", "SearchSpace", "Supernet", "calibrate_bn", "packaged_spaces",
           "resize_batch"]
__version__ = "0.1.0"
