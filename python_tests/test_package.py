"""The package as a user meets it: what a bare `import nasops` offers (and loads), the error of a
source tree without its compiled core, the commands and their help, and metadata that agrees
with the code."""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SOURCE = os.path.join(ROOT, "src", "nasops")
needs_source = pytest.mark.skipif(not os.path.isdir(SOURCE), reason="needs the source tree")


def fresh_python(code: str, cwd=None, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **env}, timeout=120)


def readme_api_names():
    """Every `nasops.a.b` name in the API table of the documentation (docs/api.md)."""
    with open(os.path.join(ROOT, "docs", "api.md")) as f:
        text = f.read()
    table = text[text.index("## The API"):]
    table = table[:table.index("\n\n", table.index("| call |"))]
    return sorted(set(re.findall(r"`(nasops(?:\.\w+)+)", table)))


@needs_source
def test_every_documented_name_resolves_after_a_bare_import(tmp_path):
    documented = readme_api_names()
    assert {"nasops.search.evolve", "nasops.data.load_splits", "nasops.train.losses"} <= set(documented)
    names = sorted({*documented, "nasops.predictor.AccuracyPredictor", "nasops.search.pareto",
                    "nasops.evaluate.Evaluator", "nasops.search.export.export_subnet", "nasops.SearchSpace",
                    "nasops.Arch", "nasops.FlopsSampler", "nasops.Supernet", "nasops.calibrate_bn",
                    "nasops.resize_batch", "nasops.packaged_spaces"})
    # as a user writes it: the module part imported (from nasops.search.export import ...), the
    # rest looked up
    code = ("import functools, importlib, nasops\n"
            f"for name in {names!r}:\n"
            "    parts = name.split('.')\n"
            "    for i in range(len(parts), 0, -1):\n"
            "        try:\n"
            "            module = importlib.import_module('.'.join(parts[:i]))\n"
            "            break\n"
            "        except ImportError:\n"
            "            pass\n"
            "    functools.reduce(getattr, parts[i:], module)\n"
            "print('ok')")
    out = fresh_python(code, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_import_loads_the_core_and_nothing_it_does_not_need(tmp_path):
    code = ("import sys, torch\n"
            "before = set(sys.modules)\n"
            "import nasops\n"
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = fresh_python(code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["nasops", "nasops._C", "nasops._moved", "nasops.ops"]  # beyond torch's
    lazy = fresh_python("import nasops; nasops.Supernet; nasops.search.evolve; print(dir(nasops))",
                        cwd=tmp_path)
    assert lazy.returncode == 0, lazy.stderr[-2000:]
    assert "'search'" in lazy.stdout and "'SearchSpace'" in lazy.stdout
    missing = fresh_python("import nasops; nasops.no_such_thing", cwd=tmp_path)
    assert "module 'nasops' has no attribute 'no_such_thing'" in missing.stderr


@needs_source
def test_a_source_tree_without_its_core_says_what_to_run(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(SOURCE, checkout / "src" / "nasops",
                    ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    (checkout / "setup.py").write_text("# a checkout\n")
    out = fresh_python("import nasops", cwd=tmp_path, PYTHONPATH=str(checkout / "src"))
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "source tree" in last and f"pip install --no-build-isolation -e {checkout}" in last, last
    # the same files installed somewhere without a checkout around them
    shutil.move(str(checkout / "src" / "nasops"), str(tmp_path / "nasops"))
    out = fresh_python("import nasops", cwd=checkout, PYTHONPATH=str(tmp_path))
    last = out.stderr.strip().splitlines()[-1]
    assert "pip install --no-build-isolation --force-reinstall --no-deps ." in last, last


def console_scripts():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    section = text[text.index("[project.scripts]"):].split("\n\n", 1)[0]
    return dict(re.findall(r'^([\w-]+) = "([\w.:]+)"', section, re.M))


@needs_source
def test_every_command_prints_a_usage_that_names_the_stages(tmp_path):
    scripts = console_scripts()
    assert set(scripts) == {"nasops", "nasops-train", "nasops-search", "nasops-evaluate",
                            "nasops-predictor", "nasops-convert", "nasops-latency", "nasops-finetune"}
    bin_dir = os.path.dirname(sys.executable)
    for script in scripts:
        path = shutil.which(script, path=bin_dir) or shutil.which(script)
        assert path, f"{script} is not installed"
        out = subprocess.run([path, "--help"], capture_output=True, text=True, cwd=tmp_path,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.startswith(f"usage: {script}"), out.stdout[:200]
        assert "nasops-train" in out.stdout and "nasops-search" in out.stdout, script
    bare = subprocess.run([sys.executable, "-m", "nasops"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert bare.returncode == 0 and bare.stdout.startswith("usage: python -m nasops COMMAND")
    for command in ("train", "search", "evaluate", "predictor", "latency", "finetune", "convert",
                    "space"):
        assert f"\n  {command} " in bare.stdout
    wrong = subprocess.run([sys.executable, "-m", "nasops", "fly"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert wrong.returncode == 2 and "unknown command 'fly'" in wrong.stderr
    space = subprocess.run([sys.executable, "-m", "nasops", "space", "small"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)
    assert space.returncode == 0 and space.stdout.startswith("small: 4 stages")


@needs_source
def test_the_cxx_standard_is_the_same_everywhere():
    def read(name):
        with open(os.path.join(ROOT, name)) as f:
            return f.read()
    cmake = read("CMakeLists.txt")
    (standard,) = set(re.findall(r"set\(CMAKE_CXX_STANDARD (\d+)\)", cmake))
    assert re.findall(r"set\(CMAKE_CUDA_STANDARD (\d+)\)", cmake) == [standard]
    assert set(re.findall(r"C\+\+(\d+)", read("setup.py"))) == {standard}
    assert set(re.findall(r"-std=c\+\+(\d+)", read(".ci/check_cuda_compiles.sh"))) == {standard}
    assert f"a C++{standard} compiler" in " ".join(read("README.md").split())
