"""Registries: how nasops finds sampling strategies, distillation losses and datasets by name.

The built-in ones register exactly as a user's do, with the decorators
``nasops.train.strategies.register_strategy``, ``nasops.train.losses.register_loss`` and
``nasops.data.register_dataset``; the recipe keys ``strategy=``, ``kd=`` and ``dataset=`` accept
any registered name. A user's registrations come from a module imported first (the commands'
``--import MODULE``) or from a package's entry points in the groups ``nasops.strategies``,
``nasops.losses`` and ``nasops.datasets``, read when a name is not found: an entry point may
name a module whose import registers, or the object itself, registered under the entry point's
name.

A name with ``{k}`` in it registers a family: ``bestup-{k}-loss`` matches ``bestup-3-loss`` and
passes ``k=3`` (a positive integer) to what was registered.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import re
import types
from collections.abc import Callable

_FIELD = re.compile(r"\{([a-z_]+)\}")


class Registry:
    """Names -> registered objects of one kind. `key` is the recipe key that names one (for
    messages); `group` the entry-point group; `adopt(name, obj)` registers an entry point's
    object that did not register itself."""

    def __init__(self, kind: str, key: str, group: str, adopt: Callable | None = None):
        self.kind, self.key, self.group = kind, key, group
        self._adopt = adopt or self.register
        self._exact: dict[str, object] = {}
        self._families: list[tuple[str, re.Pattern, object]] = []

    def register(self, name: str, obj=None):
        """Registers `obj` under `name`; without `obj`, a decorator that does. A name already
        registered is refused (ValueError)."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string without surrounding "
                             f"spaces, got {name!r}")

        def add(target):
            if name in self.names():
                if not _same_definition(self._registered(name), target):
                    raise ValueError(f"{self.kind} {name!r} is already registered")
                self.unregister(name)  # the same definition again (a re-run cell, a reload)
            if _FIELD.search(name):
                parts = _FIELD.split(name)  # literal, field, literal, field, ...
                regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[1-9][0-9]*)"
                                for i, p in enumerate(parts))
                self._families.append((name, re.compile(regex), target))
            else:
                self._exact[name] = target
            return target
        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Removes the registration `name` (a family by its pattern); KeyError if absent."""
        if name in self._exact:
            del self._exact[name]
            return
        for i, (pattern, _, _) in enumerate(self._families):
            if pattern == name:
                del self._families[i]
                return
        raise KeyError(f"{self.kind} {name!r} is not registered")

    def _registered(self, name: str):
        return self._exact.get(name) or next(t for p, _, t in self._families if p == name)

    def names(self) -> list[str]:
        """Every registered name (families as their pattern, e.g. bestup-{k}-loss)."""
        return list(self._exact) + [pattern for pattern, _, _ in self._families]

    def lookup(self, name: str) -> tuple[object, dict]:
        """(the object registered for `name`, the values its family's fields took). Entry points
        are read when `name` is not registered yet; ValueError listing what is registered if it
        is still not found."""
        if not isinstance(name, str):
            raise TypeError(f"{self.key} must be a string, got {type(name).__name__} {name!r}")
        found = self._find(name)
        if found is None:
            self.load_entry_points()
            found = self._find(name)
        if found is None:
            raise ValueError(f"{self.key} = {name!r} is not registered; registered: "
                             f"{self.names()} (a {self.kind} of your own: register it in a module "
                             f"and pass --import MODULE, or declare an entry point in the group "
                             f"{self.group!r})")
        return found

    def get(self, name: str):
        """The object registered for `name` (see :meth:`lookup`)."""
        return self.lookup(name)[0]

    def _find(self, name: str):
        if name in self._exact:
            return self._exact[name], {}
        for _, regex, target in self._families:
            match = regex.fullmatch(name)
            if match:
                return target, {k: int(v) for k, v in match.groupdict().items()}
        return None

    def load_entry_points(self) -> None:
        for entry in _entry_points(self.group):
            if entry.name in self.names():
                continue
            obj = entry.load()
            if entry.name not in self.names() and not isinstance(obj, types.ModuleType):
                self._adopt(entry.name, obj)


def _entry_points(group: str):
    found = importlib.metadata.entry_points()
    if hasattr(found, "select"):  # Python 3.10+
        return found.select(group=group)
    return found.get(group, [])  # Python 3.9: a dict of groups


def _same_definition(a, b) -> bool:
    """Whether b redefines a: the same module and qualified name (of it, or of the function a
    registered wrapper holds, such as a loss's fn or a dataset's read)."""
    def origin(obj):
        for inner in (obj, getattr(obj, "fn", None), getattr(obj, "read", None)):
            if hasattr(inner, "__qualname__"):
                return inner.__module__, inner.__qualname__
        return None
    return origin(a) is not None and origin(a) == origin(b)


def import_modules(names) -> None:
    """Imports each named module (the commands' --import): its registrations take effect.
    ModuleNotFoundError names the module that could not be found."""
    for name in names or ():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                raise ModuleNotFoundError(f"--import {name}: no module named {e.name!r} (is it on "
                                          f"PYTHONPATH, or installed?)", name=e.name) from None
            raise
