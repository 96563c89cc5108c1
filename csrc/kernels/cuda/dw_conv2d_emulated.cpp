// The CUDA depthwise kernels run on the host by a grid emulator, for the tests (no GPU is
// needed): torch.ops.nasops.emulated_dw_conv2d{,_grad_input,_grad_weight}(..., reverse) take
// CPU tensors of any of the CUDA dtypes and return what the GPU kernels would.
//
// Every block runs in turn; within a block, phase p of every thread (in thread order, or in
// reverse with reverse=True) runs before any thread's phase p + 1, as the barriers guarantee on
// the GPU and nothing more: shared memory starts each block as NaN, so a read that no earlier
// phase wrote poisons the result, and one of the two orders exposes a missing barrier. The same
// source is compiled by the host compiler here and by nvcc in CI (.ci/check_cuda_compiles.sh).
#include <torch/library.h>

#include <limits>
#include <vector>

#include "dw_conv2d_kernels.cuh"

namespace nasops {
namespace {

struct Emulate {
  bool reverse;

  template <typename Args>
  void operator()(const Args& args) const {
    using Kernel = typename Args::kernel;
    using acc_t = typename Kernel::acc_t;
    const int threads = Kernel::threads();
    const int64_t blocks = Kernel::blocks(args.g);
    const int phases = Kernel::phases(args.g);
    const size_t values = (Kernel::shared_bytes(args.g) + sizeof(acc_t) - 1) / sizeof(acc_t);
    std::vector<acc_t> shared(values);
    std::vector<typename Kernel::Local> locals(threads);
    for (int64_t b = 0; b < blocks; ++b) {
      std::fill(shared.begin(), shared.end(), std::numeric_limits<acc_t>::quiet_NaN());
      for (int p = 0; p < phases; ++p)
        for (int i = 0; i < threads; ++i) {
          const int t = reverse ? threads - 1 - i : i;
          Kernel::phase(p, args, dw_cuda::Index{b, t, threads},
                        reinterpret_cast<unsigned char*>(shared.data()), locals[t]);
        }
    }
  }
};

// The shape checks of the real operators; the dtypes are the CUDA kernels' (float32, float64,
// float16, bfloat16), which the CPU check would refuse, so it sees float32 stand-ins.
void check(const at::Tensor& input, const at::Tensor& weight, int64_t k, int64_t s,
           const char* op) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                       dtype == at::kBFloat16,
                   op, ": dtype ", dtype, " is not one of the CUDA kernels' (float32, float64, "
                   "float16, bfloat16)");
  TORCH_CHECK_TYPE(weight.scalar_type() == dtype, op, ": input dtype ", dtype,
                   " differs from weight dtype ", weight.scalar_type());
  const bool low = dtype == at::kHalf || dtype == at::kBFloat16;
  check_dw_conv2d(low ? input.to(at::kFloat) : input, low ? weight.to(at::kFloat) : weight, k,
                  s, op);
}

at::Tensor emulated_forward(const at::Tensor& input, const at::Tensor& weight, int64_t k,
                            int64_t s, bool reverse) {
  check(input, weight, k, s, "emulated_dw_conv2d");
  return dw_cuda::forward(input, weight, k, s, Emulate{reverse});
}

at::Tensor emulated_grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& weight, int64_t k, int64_t s, bool reverse) {
  check(input, weight, k, s, "emulated_dw_conv2d_grad_input");
  return dw_cuda::grad_input(grad_output, input, weight, k, s, Emulate{reverse});
}

at::Tensor emulated_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                const at::Tensor& weight, int64_t k, int64_t s, bool reverse) {
  check(input, weight, k, s, "emulated_dw_conv2d_grad_weight");
  return dw_cuda::grad_weight(grad_output, input, weight, k, s, Emulate{reverse});
}

}  // namespace
}  // namespace nasops

TORCH_LIBRARY_FRAGMENT(nasops, m) {
  m.def("emulated_dw_conv2d(Tensor input, Tensor weight, int kernel_size, int stride, "
        "bool reverse=False) -> Tensor");
  m.def("emulated_dw_conv2d_grad_input(Tensor grad_output, Tensor input, Tensor weight, "
        "int kernel_size, int stride, bool reverse=False) -> Tensor");
  m.def("emulated_dw_conv2d_grad_weight(Tensor grad_output, Tensor input, Tensor weight, "
        "int kernel_size, int stride, bool reverse=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(nasops, CPU, m) {
  m.impl("emulated_dw_conv2d", &nasops::emulated_forward);
  m.impl("emulated_dw_conv2d_grad_input", &nasops::emulated_grad_input);
  m.impl("emulated_dw_conv2d_grad_weight", &nasops::emulated_grad_weight);
}
