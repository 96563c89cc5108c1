"""The documentation site (docs/, mkdocs.yml): it builds in strict mode (a broken link, anchor or
API reference fails), every Python example in it runs, and it cites no issue numbers."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
DOCS = os.path.join(ROOT, "docs")
needs_docs = pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "mkdocs.yml")),
                                reason="needs the source tree (docs/ and mkdocs.yml)")
STAND_IN = "alphanet_pretrained.pth.tar"  # the released checkpoint an example loads


def pages():
    found = []
    for folder, _, files in os.walk(DOCS):
        found += [os.path.join(folder, f) for f in files if f.endswith(".md")]
    return sorted(found) + [os.path.join(ROOT, "README.md")]


def python_examples():
    """(page:line, code, module file name or None) of every ```python block of the docs and the
    README, except those marked `<!-- example: skip (why) -->`."""
    if not os.path.isdir(DOCS):
        return []
    found = []
    for page in pages():
        text = open(page).read()
        for m in re.finditer(r"(<!-- example: ([^>]*?) -->\s*)?```python\n(.*?)```", text, re.S):
            marker = m.group(2) or ""
            if marker.startswith("skip"):
                continue
            line = text[:m.start(3)].count("\n")
            name = marker if marker.endswith(".py") else None
            found.append((f"{os.path.relpath(page, ROOT)}:{line}", m.group(3), name))
    return found


@needs_docs
def test_the_site_builds_in_strict_mode(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "train" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "search" / "index.html").read_text()
    assert "EvolveOptions" in api  # the reference is generated from the docstrings


@needs_docs
def test_examples_are_found():
    where = [w for w, _, _ in python_examples()]
    assert any(w.startswith("docs/quickstart.md") for w in where)
    assert any(w.startswith("docs/guides/released.md") for w in where)
    assert len(where) >= 6


def _stand_in_checkpoint(path):
    """A file in the released checkpoints' format (official names, random weights)."""
    code = ("import sys, torch, nasops\n"
            "net = nasops.Supernet(nasops.SearchSpace.load('attentive_nas'))\n"
            "torch.save({'state_dict': nasops.official_state_dict(net)}, sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=300)


@needs_docs
@pytest.mark.parametrize("where,code,name", python_examples(), ids=lambda v: str(v)[:40])
def test_every_python_example_runs(where, code, name, tmp_path):
    if STAND_IN in code:
        _stand_in_checkpoint(tmp_path / STAND_IN)
    script = tmp_path / (name or "example.py")
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{where}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"


@needs_docs
def test_no_issue_numbers_or_build_comparisons():
    for page in pages():
        text = open(page).read()
        for pattern in (r"\bissues? #?\d+", r"\(#\d+\)", r"previous build", r"build before"):
            found = re.search(pattern, text, re.I)
            assert found is None, f"{os.path.relpath(page, ROOT)}: {found.group(0)!r}"
