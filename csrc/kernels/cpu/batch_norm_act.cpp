// nasops::batch_norm_act_: batch norm followed by an activation, in place, on a channels-last
// float32 CPU tensor, without autograd. BN re-calibration and the evaluation after it are
// memory-bound on CPU: PyTorch's training-mode batch norm reads its input twice and writes it
// once, and the activation reads and writes it again. This op reads it once for the statistics
// (training mode only) and once more to write the activated result over it.
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "dw_conv2d_cpu.h"

namespace nasops {
namespace {

enum class Act { identity, relu, silu, hardswish };

Act act_of(const std::string& name) {
  if (name == "identity") return Act::identity;
  if (name == "relu") return Act::relu;
  if (name == "silu") return Act::silu;
  if (name == "hardswish") return Act::hardswish;
  TORCH_CHECK_VALUE(false, "batch_norm_act_: act = '", name,
                    "' is not supported; allowed: identity, relu, silu, hardswish");
}

// The loops below work on W floats at a time as one GCC/Clang vector value (two SSE registers
// in the portable build, one AVX register in its AVX2 clone) and on single floats for the last
// channels of a row: each helper is written once for both.
constexpr int64_t W = 8;
typedef float floats __attribute__((vector_size(W * sizeof(float))));
typedef int32_t ints __attribute__((vector_size(W * sizeof(int32_t))));

#define NASOPS_INLINE inline __attribute__((always_inline))

NASOPS_INLINE int32_t to_int(float v) { return static_cast<int32_t>(v); }
NASOPS_INLINE ints to_int(floats v) { return __builtin_convertvector(v, ints); }
template <typename T> NASOPS_INLINE T clamp(T v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// exp(x) for float without a library call, so that it runs W lanes at a time: 2^n * p(r) with
// x = n ln2 + r, |r| <= ln2 / 2, and a degree-6 Taylor polynomial (relative error about 2e-7,
// near float's own rounding). Inputs are clamped to where float's exp is finite and normal.
template <typename T>
NASOPS_INLINE T exp_lanes(T x) {
  x = clamp(x, -87.3f, 88.7f);
  const float round = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const T n = (x * 1.44269504088896341f + round) - round;
  const T r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 split in two parts
  T p = r * (1.0f / 720) + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const auto bits = (to_int(n) + 127) << 23;
  T scale;
  static_assert(sizeof bits == sizeof scale);
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <Act act, typename T>
NASOPS_INLINE T activate(T y) {
  if constexpr (act == Act::relu) return y > 0.0f ? y : 0.0f;
  if constexpr (act == Act::silu) return y / (1.0f + exp_lanes(-y));
  if constexpr (act == Act::hardswish) return y * clamp(y + 3.0f, 0.0f, 6.0f) * (1.0f / 6);
  return y;
}

template <typename T>
NASOPS_INLINE T load(const float* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
NASOPS_INLINE void store(float* p, T v) { std::memcpy(p, &v, sizeof v); }

// y = act(x * scale + shift) over rows of C channels.
template <Act act>
NASOPS_INLINE void normalize_rows(float* x, int64_t rows, int64_t C, const float* scale,
                                  const float* shift) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * C;
    int64_t c = 0;
    for (; c + W <= C; c += W)
      store(row + c, activate<act>(load<floats>(row + c) * load<floats>(scale + c) +
                                   load<floats>(shift + c)));
    for (; c < C; ++c) row[c] = activate<act>(row[c] * scale[c] + shift[c]);
  }
}

// Per-channel sum and sum of squares of rows of C channels, in double.
NASOPS_INLINE void accumulate_rows(const float* __restrict x, int64_t rows, int64_t C,
                                   double* __restrict sum, double* __restrict squares) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const double v = row[c];
      sum[c] += v;
      squares[c] += v * v;
    }
  }
}

// The loops are built twice, for the baseline instruction set and for AVX2 + FMA, and chosen
// by nasops' CPU instruction-set switch (cpu_isa(); SiLU's exponential makes the normalising
// loop compute-bound on SSE).
struct Loops {
  void (*normalize[4])(float*, int64_t, int64_t, const float*, const float*);
  void (*accumulate)(const float*, int64_t, int64_t, double*, double*);
};

#define NASOPS_LOOPS(attributes, name)                                                         \
  template <Act act>                                                                           \
  attributes void name##_normalize(float* x, int64_t rows, int64_t C, const float* scale,     \
                                   const float* shift) {                                      \
    normalize_rows<act>(x, rows, C, scale, shift);                                             \
  }                                                                                            \
  attributes void name##_accumulate(const float* x, int64_t rows, int64_t C, double* sum,      \
                                    double* squares) {                                         \
    accumulate_rows(x, rows, C, sum, squares);                                                 \
  }                                                                                            \
  const Loops name = {{name##_normalize<Act::identity>, name##_normalize<Act::relu>,           \
                       name##_normalize<Act::silu>, name##_normalize<Act::hardswish>},         \
                      name##_accumulate};

NASOPS_LOOPS(, base_loops)
#if defined(NASOPS_HAVE_AVX2)
NASOPS_LOOPS(__attribute__((target("avx2,fma"))), avx2_loops)
#endif

const Loops& loops() {
#if defined(NASOPS_HAVE_AVX2)
  if (cpu_isa() != "base") return avx2_loops;  // the AVX-512 build's processors have AVX2
#endif
  return base_loops;
}

void normalize(float* x, int64_t rows, int64_t C, const float* scale, const float* shift,
               Act act) {
  const auto run = loops().normalize[static_cast<int>(act)];
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / C), [&](int64_t begin, int64_t end) {
    run(x + begin * C, end - begin, C, scale, shift);
  });
}

// The statistics are summed over a fixed number of row blocks, then the blocks in order: the
// result does not depend on how many threads ran.
constexpr int64_t kBlocks = 64;

void check(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(1) && t.is_contiguous(),
                    "batch_norm_act_: ", name, " must be contiguous with C = ", x.size(1),
                    " values, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat && t.is_cpu(), "batch_norm_act_: ", name,
                   " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

void batch_norm_act_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& running_mean, const at::Tensor& running_var,
                        bool training, double momentum, double eps, const std::string& act_name) {
  const Act act = act_of(act_name);
  const Loops& run = loops();
  TORCH_CHECK_VALUE(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
                    "batch_norm_act_: x must be a channels-last [N, C, H, W] tensor, got shape ",
                    x.sizes(), " with strides ", x.strides());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "batch_norm_act_: x has dtype ",
                   x.scalar_type(), "; allowed: float32");
  TORCH_CHECK(!(at::GradMode::is_enabled() && x.requires_grad()),
              "batch_norm_act_ has no gradient; call it under torch.no_grad()");
  for (auto [t, name] : {std::pair{&weight, "weight"}, {&bias, "bias"},
                         {&running_mean, "running_mean"}, {&running_var, "running_var"}})
    check(x, *t, name);
  const int64_t C = x.size(1), rows = x.numel() / std::max<int64_t>(C, 1);
  if (rows == 0 || C == 0) return;
  TORCH_CHECK_VALUE(!training || rows > 1, "batch_norm_act_: training mode needs more than one ",
                    "value per channel, got shape ", x.sizes());
  float* data = x.data_ptr<float>();
  float* rmean = running_mean.data_ptr<float>();
  float* rvar = running_var.data_ptr<float>();
  std::vector<double> mean(C), var(C);
  if (training) {
    std::vector<double> partial(kBlocks * 2 * C, 0.0);
    const int64_t per_block = (rows + kBlocks - 1) / kBlocks;
    at::parallel_for(0, kBlocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t lo = std::min(rows, b * per_block), hi = std::min(rows, lo + per_block);
        double* s = partial.data() + b * 2 * C;
        run.accumulate(data + lo * C, hi - lo, C, s, s + C);
      }
    });
    std::vector<double> sum(C, 0.0), squares(C, 0.0);
    for (int64_t b = 0; b < kBlocks; ++b)
      for (int64_t c = 0; c < C; ++c) {
        sum[c] += partial[b * 2 * C + c];
        squares[c] += partial[b * 2 * C + C + c];
      }
    const double n = static_cast<double>(rows);
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = sum[c] / n;
      var[c] = std::max(squares[c] / n - mean[c] * mean[c], 0.0);  // biased: what normalises
      rmean[c] = static_cast<float>((1 - momentum) * rmean[c] + momentum * mean[c]);
      rvar[c] = static_cast<float>((1 - momentum) * rvar[c] + momentum * var[c] * n / (n - 1));
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = rmean[c];
      var[c] = rvar[c];
    }
  }
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  std::vector<float> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    const double s = w[c] / std::sqrt(var[c] + eps);
    scale[c] = static_cast<float>(s);
    shift[c] = static_cast<float>(b[c] - mean[c] * s);
  }
  normalize(data, rows, C, scale.data(), shift.data(), act);
}

}  // namespace
}  // namespace nasops

TORCH_LIBRARY_FRAGMENT(nasops, m) {
  m.def("batch_norm_act_(Tensor(a!) x, Tensor weight, Tensor bias, Tensor(b!) running_mean, "
        "Tensor(c!) running_var, bool training, float momentum, float eps, str act) -> ()");
}

TORCH_LIBRARY_IMPL(nasops, CPU, m) { m.impl("batch_norm_act_", &nasops::batch_norm_act_cpu); }
