// The batch norm + activation loops (batch_norm_act.h), included once per instruction set with
// NASOPS_CPU_NS set and NASOPS_CPU_LANES floats per vector (kernels_base.cpp, kernels_avx2.cpp,
// kernels_avx512.cpp). Every loop walks rows of C contiguous channels: whole vectors of channels,
// then one half-width vector (C is usually a multiple of 8), then single channels, each written
// once as a template on the vector type.
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "batch_norm_act.h"

namespace nasops {
namespace NASOPS_CPU_NS {
namespace bn {  // (beside the depthwise kernels of the same translation unit)
namespace {

#ifndef NASOPS_CPU_LANES
#define NASOPS_CPU_LANES 8
#endif
constexpr int64_t kLanes = NASOPS_CPU_LANES;

template <int64_t N>
struct FloatVec {
  typedef float type __attribute__((vector_size(N * sizeof(float))));
  typedef int32_t ints __attribute__((vector_size(N * sizeof(int32_t))));
};

#define NASOPS_INLINE inline __attribute__((always_inline))

// Lanes of a vector type (1 for a plain float).
template <typename F> constexpr int64_t lanes_of() { return sizeof(F) / sizeof(float); }

template <typename F>
NASOPS_INLINE F load_v(const float* p) {
  F v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename F>
NASOPS_INLINE void store_v(float* p, F v) { std::memcpy(p, &v, sizeof v); }

template <typename F>
NASOPS_INLINE F clamp_v(F v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// exp(x) without a library call, so that it runs on whole vectors: 2^n * p(r) with
// x = n ln2 + r, |r| <= ln2 / 2, and p a degree-5 minimax polynomial for exp on that interval
// (relative error 7.5e-8, 2.1e-7 evaluated in float). Inputs are clamped to where float's exp
// is finite and normal (and 2^n too: n <= 127), so 1 + exp never reaches infinity and its
// reciprocal is exact.
template <typename F>
NASOPS_INLINE F exp_v(F x) {
  x = clamp_v(x, -87.3f, 88.3f);
  const float round = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const F n = (x * 1.44269504088896341f + round) - round;
  const F r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 split in two parts
  F p = r * 0.008297655088458217f + 0.04191538199273254f;
  p = p * r + 0.16667574728622736f;
  p = p * r + 0.49998894851204234f;
  p = p * r + 0.9999996919915553f;
  p = p * r + 1.0000000716546849f;
#if defined(__AVX512F__)
  if constexpr (lanes_of<F>() == 16) return (F)_mm512_scalef_ps((__m512)p, (__m512)n);  // p 2^n
#endif
  F scale;
  if constexpr (lanes_of<F>() == 1) {
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    std::memcpy(&scale, &bits, sizeof scale);
  } else {
    typedef typename FloatVec<lanes_of<F>()>::ints I;
    const I bits = (__builtin_convertvector(n, I) + 127) << 23;
    std::memcpy(&scale, &bits, sizeof scale);
  }
  return p * scale;
}

// 1 / d: the processor's reciprocal estimate and one Newton step (about 1 ulp, where a vector
// division takes several times as long as the rest of SiLU).
template <typename F>
NASOPS_INLINE F reciprocal(F d) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  if constexpr (lanes_of<F>() == 16) {
    const F r = (F)_mm512_rcp14_ps((__m512)d);
    return r * (2.0f - d * r);
  }
  if constexpr (lanes_of<F>() == 8) {
    const F r = (F)_mm256_rcp14_ps((__m256)d);
    return r * (2.0f - d * r);
  }
#elif defined(__AVX2__)
  if constexpr (lanes_of<F>() == 8) {
    const F r = (F)_mm256_rcp_ps((__m256)d);
    return r * (2.0f - d * r);
  }
#endif
  return 1.0f / d;
}

template <Act act, typename F>
NASOPS_INLINE F activate(F z) {
  if constexpr (act == Act::relu) return z > 0.0f ? z : 0.0f;
  if constexpr (act == Act::silu) return z * reciprocal(1.0f + exp_v(-z));
  if constexpr (act == Act::hardswish) return z * clamp_v(z + 3.0f, 0.0f, 6.0f) * (1.0f / 6);
  return z;
}

// dy * act'(z), with PyTorch's values at the kinks: relu' = 0 at 0; hardswish' = 0 below -3,
// z / 3 + 1 / 2 on [-3, 3], 1 above.
template <Act act, typename F>
NASOPS_INLINE F activate_grad(F dy, F z) {
  if constexpr (act == Act::relu) return z > 0.0f ? dy : 0.0f;
  if constexpr (act == Act::silu) {
    const F s = reciprocal(1.0f + exp_v(-z));
    return dy * (s * (1.0f + z * (1.0f - s)));
  }
  if constexpr (act == Act::hardswish) {
    const F mid = dy * (z * (1.0f / 3) + 0.5f);
    return z < -3.0f ? 0.0f : (z <= 3.0f ? mid : dy);
  }
  return dy;
}

// body(c, F{}) over the channels of a row: vectors of kLanes, one of kLanes / 2, then single
// floats.
template <typename Body>
NASOPS_INLINE void over_channels(int64_t C, Body&& body) {
  typedef typename FloatVec<kLanes>::type Full;
  typedef typename FloatVec<(kLanes >= 8 ? kLanes / 2 : kLanes)>::type Half;
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) body(c, Full{});
  if constexpr (kLanes >= 8) {
    if (c + kLanes / 2 <= C) {
      body(c, Half{});
      c += kLanes / 2;
    }
  }
  for (; c < C; ++c) body(c, 0.0f);
}

// Rows summed in float before their sums are added in double.
constexpr int64_t kFloatRows = 16;

// acc holds float partial sums of 2 * C values; they are added into a and b in double, then
// cleared.
NASOPS_INLINE void flush(float* acc, int64_t C, double* a, double* b) {
  for (int64_t c = 0; c < C; ++c) {
    a[c] += acc[c];
    b[c] += acc[C + c];
    acc[c] = acc[C + c] = 0.0f;
  }
}

void stats(const float* x, const float* center, int64_t rows, int64_t C, double* sum,
           double* squares) {
  float acc[2 * 4096];
  const bool small = C <= 4096;
  if (small) std::memset(acc, 0, 2 * C * sizeof(float));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * C;
    if (!small) {  // (very wide layers: straight in double)
      for (int64_t c = 0; c < C; ++c) {
        const double d = static_cast<double>(row[c]) - center[c];
        sum[c] += d;
        squares[c] += d * d;
      }
      continue;
    }
    over_channels(C, [&](int64_t c, auto f) {
      using F = decltype(f);
      const F v = load_v<F>(row + c) - load_v<F>(center + c);
      store_v(acc + c, load_v<F>(acc + c) + v);
      store_v(acc + C + c, load_v<F>(acc + C + c) + v * v);
    });
    if ((r + 1) % kFloatRows == 0 || r + 1 == rows) flush(acc, C, sum, squares);
  }
}

template <Act act>
void forward(const float* x, float* y, int64_t rows, int64_t C, const float* center,
             const float* scale, const float* shift) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * C;
    float* out = y + r * C;
    over_channels(C, [&](int64_t c, auto f) {
      using F = decltype(f);
      const F z = (load_v<F>(in + c) - load_v<F>(center + c)) * load_v<F>(scale + c) + load_v<F>(shift + c);
      store_v(out + c, activate<act>(z));
    });
  }
}

template <Act act>
void grad_stats(const float* dy, const float* x, int64_t rows, int64_t C, const float* center,
                const float* scale, const float* shift, double* sum_dz, double* sum_dzx) {
  float acc[2 * 4096];
  const bool small = C <= 4096;
  if (small) std::memset(acc, 0, 2 * C * sizeof(float));
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = dy + r * C;
    const float* in = x + r * C;
    if (!small) {
      for (int64_t c = 0; c < C; ++c) {
        const float d = in[c] - center[c];
        const float dz = activate_grad<act>(g[c], d * scale[c] + shift[c]);
        sum_dz[c] += dz;
        sum_dzx[c] += static_cast<double>(dz) * d;
      }
      continue;
    }
    over_channels(C, [&](int64_t c, auto f) {
      using F = decltype(f);
      const F d = load_v<F>(in + c) - load_v<F>(center + c);
      const F dz = activate_grad<act>(load_v<F>(g + c), d * load_v<F>(scale + c) + load_v<F>(shift + c));
      store_v(acc + c, load_v<F>(acc + c) + dz);
      store_v(acc + C + c, load_v<F>(acc + C + c) + dz * d);
    });
    if ((r + 1) % kFloatRows == 0 || r + 1 == rows) flush(acc, C, sum_dz, sum_dzx);
  }
}

template <Act act>
void grad_input(const float* dy, const float* x, float* dx, int64_t rows, int64_t C,
                const float* center, const float* scale, const float* shift, const float* a,
                const float* b) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = dy + r * C;
    const float* in = x + r * C;
    float* out = dx + r * C;
    over_channels(C, [&](int64_t c, auto f) {
      using F = decltype(f);
      const F d = load_v<F>(in + c) - load_v<F>(center + c), s = load_v<F>(scale + c);
      const F dz = activate_grad<act>(load_v<F>(g + c), d * s + load_v<F>(shift + c));
      store_v(out + c, dz * s + d * load_v<F>(a + c) + load_v<F>(b + c));
    });
  }
}

}  // namespace
}  // namespace bn

BnKernels bn_kernels() {
  using namespace bn;
  return {&stats,
          {&forward<Act::identity>, &forward<Act::relu>, &forward<Act::silu>,
           &forward<Act::hardswish>},
          {&grad_stats<Act::identity>, &grad_stats<Act::relu>, &grad_stats<Act::silu>,
           &grad_stats<Act::hardswish>},
          {&grad_input<Act::identity>, &grad_input<Act::relu>, &grad_input<Act::silu>,
           &grad_input<Act::hardswish>}};
}

}  // namespace NASOPS_CPU_NS
}  // namespace nasops
