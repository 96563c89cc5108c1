"""setup.py says in one line what is missing instead of failing deep inside CMake."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def run_setup(tmp_path, **env):
    cmd = [sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "temp"),
           "--build-lib", str(tmp_path / "lib")]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("nasops build error")]
    return result.returncode, errors


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "setup.py")), reason="needs the source tree")
def test_missing_torch_cmake_or_compiler_give_one_clear_line(tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no torch here')\n")
    code, errors = run_setup(tmp_path, PYTHONPATH=str(tmp_path / "fake"))
    assert code != 0 and len(errors) == 1 and "torch is not installed" in errors[0]

    code, errors = run_setup(tmp_path, PATH=str(tmp_path))
    assert code != 0 and len(errors) == 1 and "cmake (>= 3.18) was not found" in errors[0]

    code, errors = run_setup(tmp_path, CXX="no-such-compiler")
    assert code != 0 and len(errors) == 1 and "`no-such-compiler` was not found" in errors[0]
