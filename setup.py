"""Builds nasops._C with CMake against the installed torch.

Install with `pip install --no-build-isolation .` (or `-e .`) after installing torch, so that the
build sees the torch you run with instead of downloading another one into an isolated build env.
"""
import os
import shutil
import subprocess
import sys

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def fail(message):
    # One line that says what is missing and what to do, instead of a CMake or compiler dump.
    sys.stderr.write(f"\nnasops build error: {message}\n\n")
    raise SystemExit(1)


# Without build isolation pip uses the environment's setuptools, which pyproject.toml's
# build-system.requires cannot raise: bdist_wheel is built in from 70.1 (older ones need the
# wheel package), and Python 3.9's venvs come with 58.
if tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit()) < (70, 1):
    fail(f"setuptools {setuptools.__version__} is too old to build nasops without build "
         f"isolation; run `pip install -U \"setuptools>=70.1\"` first")


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        try:
            import torch
        except ImportError:
            fail("torch is not installed in this environment; run `pip install torch==2.13.0` "
                 "first, then `pip install --no-build-isolation .`")
        cmake = shutil.which("cmake")
        if cmake is None:
            fail("cmake (>= 3.18) was not found on PATH; install it (apt-get install cmake, or "
                 "pip install cmake)")
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            fail(f"no C++20 compiler: `{compiler}` was not found on PATH (set CXX, or install g++ >= 10)")

        output = os.path.abspath(os.path.dirname(self.get_ext_fullpath(ext.name)))
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        # CUDA kernels when this torch has CUDA and nvcc is at hand; NASOPS_CUDA=0 turns them off.
        with_cuda = (torch.version.cuda is not None and os.environ.get("NASOPS_CUDA", "1") != "0"
                     and (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")))
        configure = [
            cmake, ext.sourcedir,
            f"-DTORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DNASOPS_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DNASOPS_OUTPUT_DIR={output}",
            f"-DTORCH_ROOT={os.path.dirname(torch.__file__)}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DCMAKE_CXX_COMPILER={shutil.which(compiler)}",
            "-DCMAKE_BUILD_TYPE=" + os.environ.get("NASOPS_BUILD_TYPE", "Release"),
        ]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        jobs = str(os.cpu_count() or 1)
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


class CMakeExtension(Extension):
    def __init__(self, name, sourcedir="."):
        super().__init__(name, sources=[])
        self.sourcedir = os.path.abspath(sourcedir)


setup(ext_modules=[CMakeExtension("nasops._C")], cmdclass={"build_ext": CMakeBuild})
