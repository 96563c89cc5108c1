#!/usr/bin/env bash
# Compile-only check of the CUDA sources (CI has nvcc but no GPU and a CPU-only torch): a syntax
# or type error in a .cu file fails CI. Run inside the venv that has torch installed.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc="$(command -v nvcc || true)"
[ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
if [ -z "$nvcc" ]; then
  echo "check_cuda_compiles: no nvcc here, CUDA sources not compiled"
  exit 0
fi
torch_root="$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
abi="$(python -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
shim="$(mktemp -d)"
# The CPU wheel ships torch's CUDA headers but not this one CMake-generated file.
mkdir -p "$shim/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$shim/c10/cuda/impl/cuda_cmake_macros.h"
# The .cu files, and the host emulator's translation unit as CUDA source too (-x cu), so the
# kernels' bodies are compiled both for the device and through nvcc for the host in every run.
for source in csrc/kernels/cuda/*.cu csrc/kernels/cuda/dw_conv2d_emulated.cpp; do
  echo "check_cuda_compiles: $nvcc -c -x cu $source"
  "$nvcc" -c -x cu -std=c++20 -O3 --expt-relaxed-constexpr -D_GLIBCXX_USE_CXX11_ABI="$abi" \
    -Icsrc -I"$shim" -I"$torch_root/include" -I"$torch_root/include/torch/csrc/api/include" \
    "$source" -o "$shim/$(basename "$source").o"
done
echo "check_cuda_compiles: ok"
