"""The import paths of modules that moved when the package was laid out by stage: they keep
working (the same module object, a DeprecationWarning naming the new path on first import), and
``python -m`` of a moved command runs the command."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

# old module -> where it lives now
MOVED = {
    **{f"nasops.{name}": f"nasops.utils.{name}"
       for name in ("checks", "cli", "cpu", "distributed", "files", "plots", "registry")},
    "nasops.official": "nasops.nn.official",
    "nasops.checkpoint": "nasops.nn.checkpoint",
    "nasops.folders": "nasops.data.folders",
    "nasops.augment": "nasops.data.augment",
    **{f"nasops.{name}": f"nasops.train.{name}"
       for name in ("convert", "losses", "recipe", "rundir", "step")},
    "nasops.sampling": "nasops.train.strategies",  # (FlopsSampler: nasops.space.sampler)
    "nasops.latency": "nasops.search.latency",
    "nasops.export": "nasops.search.export",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        # stacklevel 2: the import statement (warnings skips the import machinery's frames), so
        # Python's default filters show it when that statement is in a user's script
        warnings.warn(f"{spec.name} has moved to {self.new}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module):
        pass  # the module object is the new one, already executed

    def get_code(self, fullname):  # python -m OLD: run the new module's command
        return compile(f"import sys\nfrom {self.new} import main\nsys.exit(main())\n",
                       f"<{fullname}: {self.new}>", "exec")


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        # (origin: the new file, which python -m shows as sys.argv[0])
        return importlib.machinery.ModuleSpec(fullname, _Alias(new),
                                              origin=importlib.util.find_spec(new).origin)


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
