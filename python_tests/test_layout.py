"""The package's layout: imports point one way (no cycles, imports inside functions included), and
the import paths from before the layout by stage keep working."""
import ast
import importlib
import os
import subprocess
import sys
import warnings

import pytest

import nasops
from nasops import _moved

PACKAGE = os.path.dirname(os.path.abspath(nasops.__file__))


def _modules() -> dict[str, str]:
    """Module name -> source file, for every .py file of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = path
    return found


def _runtime_imports(tree: ast.AST):
    """Import statements that run: everywhere, functions included, but not under
    ``if TYPE_CHECKING:``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]  # (not the root: nasops itself)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules that importing it runs: each imported module and the
    packages above it that are not already above the importer (Python has run those)."""
    modules = _modules()

    def known(name):  # the longest prefix of name that is a module of the package
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name if name and name != "nasops" else None

    graph = {}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        here = module if is_package else module.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = here.split(".")[:len(here.split(".")) - node.level + 1] if node.level else []
                stem = ".".join(base + ([node.module] if node.module else []))
                names = [stem] + [f"{stem}.{a.name}" for a in node.names]
            for name in names:
                target = known(name)
                if target and target != module:
                    targets.add(target)
                    targets.update(a for a in _ancestors(target)
                                   if a != module and a not in _ancestors(module) + [module])
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "nasops.train.loop" in graph["nasops.train"]
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(
        " <-> ".join(c) + " (" + ", ".join(f"{a} -> {sorted(graph[a] & set(c))}" for a in c) + ")"
        for c in found)


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_lower_layers_do_not_import_higher_ones():
    """space knows no torch.nn and no other stage; nn and data know neither training nor search."""
    graph = import_graph()
    allowed = {"nasops.space": ("nasops.space", "nasops.utils"),
               "nasops.nn": ("nasops.nn", "nasops.space", "nasops.utils", "nasops.ops"),
               "nasops.data": ("nasops.data", "nasops.utils")}
    for module, targets in graph.items():
        for layer, ok in allowed.items():
            if module == layer or module.startswith(layer + "."):
                bad = [t for t in targets if not any(t == o or t.startswith(o + ".") for o in ok)]
                assert not bad, f"{module} imports {bad}"
    for module, path in _modules().items():
        if module.startswith("nasops.space"):
            for node in _runtime_imports(ast.parse(open(path).read())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert not any((n or "").split(".")[0] == "torch" for n in names), module


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_a_moved_module_keeps_its_old_import_path(old):
    new = _moved.MOVED[old]
    code = ("import importlib, warnings\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            f"    old = importlib.import_module({old!r})\n"
            f"    again = importlib.import_module({old!r})\n"
            f"new = importlib.import_module({new!r})\n"
            "assert old is new and again is new, (old, new)\n"
            "print(sum(issubclass(x.category, DeprecationWarning) for x in w), str(w[0].message))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, message = out.stdout.split(" ", 1)
    assert count == "1" and new in message  # warns once, naming the new home
    # and Python's default filters show it, attributed to the user's import statement
    plain = subprocess.run([sys.executable, "-c", f"import {old}"], capture_output=True,
                           text=True, timeout=120)
    assert plain.returncode == 0 and plain.stderr.startswith("<string>:1: DeprecationWarning: "
                                                             f"{old} has moved to {new}"), plain.stderr


def test_old_attribute_paths_and_python_m_of_a_moved_command():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert nasops.cpu.keep_freed_memory is importlib.import_module(
            "nasops.utils.cpu").keep_freed_memory
        from nasops.sampling import FlopsSampler, Strategy  # the two halves of the old module
    assert FlopsSampler is nasops.FlopsSampler and Strategy.__module__ == "nasops.train.strategies"
    for old, new in (("nasops.latency", "nasops.search.latency"),
                     ("nasops.convert", "nasops.train.convert")):
        got = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True,
                             timeout=120)
        want = subprocess.run([sys.executable, "-m", new, "--help"], capture_output=True,
                              text=True, timeout=120)
        assert got.returncode == 0 and want.returncode == 0, got.stderr + want.stderr
        assert got.stdout.split("\n", 1)[1] == want.stdout.split("\n", 1)[1]  # (usage: prog)


# The custom operators' Python faces mirror their C++ schemas (csrc/kernels), argument for
# argument: the limit on parameters does not apply to them.
OP_SCHEMAS = {"nasops.ops": {"batch_norm_act", "_bn_act_fake", "_bn_act_backward_fake",
                             "_batch_norm_act_fake"}}


def test_functions_are_small():
    """No function over 60 lines, none with more than 8 named parameters (self and cls, *args and
    **kwargs not counted; the operator schemas excepted)."""
    too_long, too_wide = [], []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{module}.{node.name} (line {node.lineno})"
            lines = node.end_lineno - node.lineno + 1
            if lines > 60:
                too_long.append(f"{where}: {lines} lines")
            a = node.args
            named = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs
                     if p.arg not in ("self", "cls")]
            if len(named) > 8 and node.name not in OP_SCHEMAS.get(module, ()):
                too_wide.append(f"{where}: {len(named)} parameters")
    assert not too_long and not too_wide, "\n".join(too_long + too_wide)
