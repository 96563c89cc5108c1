// CUDA implementations of the depthwise operators: float32, float64, float16 and bfloat16,
// accumulating in float (double for float64). The kernels' bodies are in dw_conv2d_kernels.cuh,
// where the host-side grid emulator of the tests runs the same source; this file launches them.
// Not yet run on a GPU (docs/guides/kernels.md): verified through the emulator only.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "dw_conv2d_kernels.cuh"

namespace nasops {
namespace {

using dw_cuda::Index;

// Every thread of every block runs the kernel's phases with a barrier after each (see the
// header); one-dimensional blocks and grids.
template <typename Kernel>
__global__ void __launch_bounds__(Kernel::threads()) run_phases(typename Kernel::Args args) {
  extern __shared__ __align__(16) unsigned char shared[];
  typename Kernel::Local local;
  const Index index{static_cast<int64_t>(blockIdx.x), static_cast<int>(threadIdx.x),
                    static_cast<int>(blockDim.x)};
  const int phases = Kernel::phases(args.g);
  for (int p = 0; p < phases; ++p) {
    Kernel::phase(p, args, index, shared, local);
    __syncthreads();
  }
}

struct Launch {
  template <typename Args>
  void operator()(const Args& args) const {
    using Kernel = typename Args::kernel;
    const int64_t blocks = Kernel::blocks(args.g), bytes = Kernel::shared_bytes(args.g);
    TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "dw_conv2d: ", blocks,
                " blocks exceed a CUDA grid");
    if (bytes > 48 * 1024)
      C10_CUDA_CHECK(cudaFuncSetAttribute(run_phases<Kernel>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
    run_phases<Kernel><<<static_cast<unsigned>(blocks), Kernel::threads(),
                         static_cast<size_t>(bytes), c10::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor dw_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, int64_t k,
                          int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d");
  const c10::cuda::CUDAGuard guard(input.device());
  return dw_cuda::forward(input, weight, k, s, Launch{});
}

at::Tensor dw_conv2d_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, int64_t k, int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d_grad_input");
  const c10::cuda::CUDAGuard guard(input.device());
  return dw_cuda::grad_input(grad_output, input, weight, k, s, Launch{});
}

at::Tensor dw_conv2d_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& weight, int64_t k, int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d_grad_weight");
  const c10::cuda::CUDAGuard guard(input.device());
  return dw_cuda::grad_weight(grad_output, input, weight, k, s, Launch{});
}

}  // namespace
}  // namespace nasops

TORCH_LIBRARY_IMPL(nasops, CUDA, m) {
  m.impl("dw_conv2d", &nasops::dw_conv2d_cuda);
  m.impl("dw_conv2d_grad_input", &nasops::dw_conv2d_grad_input_cuda);
  m.impl("dw_conv2d_grad_weight", &nasops::dw_conv2d_grad_weight_cuda);
}
