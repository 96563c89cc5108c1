// The depthwise CPU kernels. Included once per instruction set with NASOPS_CPU_NS set
// (dw_conv2d_base.cpp, dw_conv2d_avx2.cpp, dw_conv2d_avx512.cpp); `lanes<T>` (V values) becomes
// the vector registers of that set. Two layouts, chosen per layer in dw_conv2d.cpp: planes on a
// flat grid (most layers) and channel groups (the smallest maps, at the end of this file).
//
// The flat grid, one plane at a time. A stride-s convolution reads, for tap (i, j) of output (y, x), the input pixel
// (s y + i - p, s x + j - p). Split the input into s x s phase planes, zero-padded,
//   P[a][b][r][u] = in[s r + a - p][s u + b - p]      (zero outside the input),
// all Pw = Wo + (k - 1) / s values wide, and that pixel is P[i % s][j % s][y + i / s][x + j / s].
// On the flat index q = y Pw + x of the output grid, every tap is then one contiguous read at a
// fixed offset, whatever the map's width or the stride: a whole plane is one long vectorised
// loop. The grid's columns x >= Wo hold outputs nobody asked for; they are computed and dropped.
//
// The phase planes live in one per-thread scratch buffer that stays in cache: the input plane is
// read from memory once, while they are written (no separate padding or phase-split pass, no
// zero-filled buffer the size of the input). The input
// gradient is the same correlation of the output gradient with the flipped window (stride 1) or,
// for stride s, one correlation per output phase with the taps that reach it; the weight gradient
// is one dot product per tap between the output gradient laid on the grid and a phase plane.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../dw_conv2d.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace nasops {
namespace NASOPS_CPU_NS {
namespace {

// Values per vector: 8 (one AVX2 register of float32) unless the build says otherwise.
#ifndef NASOPS_CPU_LANES
#define NASOPS_CPU_LANES 8
#endif
constexpr int64_t V = NASOPS_CPU_LANES;

// V lanes of T as one GCC/Clang vector value: accumulators of this type live in registers.
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(V * sizeof(T))));
};
template <typename T>
using lanes = typename Lanes<T>::type;
typedef double lanes_double __attribute__((vector_size(V * sizeof(double))));

template <typename T>
inline lanes<T> load(const T* p) {
  lanes<T> r;
  std::memcpy(&r, p, sizeof r);
  return r;
}
template <typename T>
inline void store(T* p, const lanes<T>& v) {
  std::memcpy(p, &v, sizeof v);
}

template <typename T>
T* scratch(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
inline int64_t ceil_div(int64_t n, int64_t m) { return n <= 0 ? 0 : (n + m - 1) / m; }

// The output grid of one plane: outputs at q = y * Pw + x for q < n (a whole number of vectors),
// read from phase planes `plane` values apart: `rows` rows of Pw (enough for the furthest tap
// read), then V values of slack that whole-vector row writes may overhang into.
struct Grid {
  int64_t s, Ho, Wo, Pw, n, rows, plane;
  Grid(int64_t Ho_, int64_t Wo_, int64_t reach, int64_t s_) : s(s_), Ho(Ho_), Wo(Wo_) {
    Pw = Wo + reach;
    n = round_up(Ho * Pw, V);
    rows = ceil_div(n + reach * Pw + reach, Pw);
    plane = rows * Pw + V;
  }
};

// The first `count` lanes (0 < count < 8) of an AVX2 mask.
#if defined(__AVX2__)
inline __m256i tail_mask(int64_t count) {
  alignas(32) static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - count));
}
#endif

// dst[u] = src[u] for u < count, and zeros up to the next whole vector. Reads stay within the
// count (the source is the caller's tensor). Most rows here are a few dozen values, where a
// memcpy call costs more than the copy: whole vectors, then one masked vector for the tail.
template <typename T>
inline void copy_row(const T* __restrict src, int64_t count, T* __restrict dst) {
  int64_t u = 0;
  for (; u + V <= count; u += V) store(dst + u, load(src + u));
  if (u == count) return;
#if defined(__AVX2__)
  if constexpr (sizeof(T) == 4 && V == 8) {
    const __m256 tail = _mm256_maskload_ps(reinterpret_cast<const float*>(src + u), tail_mask(count - u));
    _mm256_storeu_ps(reinterpret_cast<float*>(dst + u), tail);
    return;
  }
#endif
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4 && V == 16) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (count - u)) - 1);
    _mm512_storeu_ps(dst + u, _mm512_maskz_loadu_ps(mask, src + u));
    return;
  }
#endif
  for (int64_t v = 0; v < V; ++v) dst[u + v] = u + v < count ? src[u + v] : T(0);
}

// dst[u] = src[u] for u < count, writing nothing past it (the destination is the caller's tensor).
template <typename T>
inline void store_row(const T* __restrict src, int64_t count, T* __restrict dst) {
  int64_t u = 0;
  for (; u + V <= count; u += V) store(dst + u, load(src + u));
  if (u == count) return;
#if defined(__AVX2__)
  if constexpr (sizeof(T) == 4 && V == 8) {
    _mm256_maskstore_ps(reinterpret_cast<float*>(dst + u), tail_mask(count - u),
                        _mm256_loadu_ps(reinterpret_cast<const float*>(src + u)));
    return;
  }
#endif
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4 && V == 16) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (count - u)) - 1);
    _mm512_mask_storeu_ps(dst + u, mask, _mm512_loadu_ps(src + u));
    return;
  }
#endif
  for (; u < count; ++u) dst[u] = src[u];
}

// dst[u] = src[s u] for u < count, zeros up to the next whole vector (s = 2 vectorises as a
// deinterleave; the AVX-512 build splits stride 2 in split_stride2 instead).
template <typename T>
inline void gather(const T* __restrict src, int64_t s, int64_t count, T* __restrict dst) {
  if (s == 1) return copy_row(src, count, dst);
  int64_t u = 0;
  if (s == 2) {
    for (; u < count; ++u) dst[u] = src[2 * u];
  } else {
    for (; u < count; ++u) dst[u] = src[s * u];
  }
  for (; u % V != 0; ++u) dst[u] = T(0);
}

// Zeros dst[from, to) in whole vectors: may write up to V - 1 values past `to`.
template <typename T>
inline void zero_to(T* dst, int64_t from, int64_t to) {
  const lanes<T> zero = {};
  for (int64_t u = from; u < to; u += V) store(dst + u, zero);
}

// Stride 2 with 16-lane float vectors: each input row is read once, 32 values at a time, and
// split into its two phase rows by two permutes (value c goes to phase (c + pad) % 2, column
// (c + pad) / 2). Masked loads stop at the row's end and fill the rest with zeros.
template <typename T>
bool split_stride2(const T* in, int64_t H, int64_t W, int64_t pad, const Grid& g, T* P) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4 && V == 16) {
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const int64_t be = pad % 2, ue = (pad - be) / 2;  // the even values' phase and first column
    const int64_t bo = 1 - be, uo = (pad + 1 - bo) / 2;  // the odd values'
    const int64_t written = 16 * ceil_div(W, 32);  // values each row's stores cover
    for (int64_t a = 0; a < 2; ++a) {
      T* even = P + (2 * a + be) * g.plane;
      T* odd = P + (2 * a + bo) * g.plane;
      for (int64_t r = 0, h = a - pad; r < g.rows; ++r, h += 2, even += g.Pw, odd += g.Pw) {
        if (h < 0 || h >= H) {
          zero_to(even, 0, g.Pw);
          zero_to(odd, 0, g.Pw);
          continue;
        }
        zero_to(even, 0, ue);
        zero_to(odd, 0, uo);
        const T* src = in + h * W;
        for (int64_t c = 0; c < W; c += 2 * V) {
          const int64_t lo = std::min<int64_t>(V, W - c), hi = std::clamp<int64_t>(W - c - V, 0, V);
          const __m512 x0 = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << lo) - 1), src + c);
          const __m512 x1 = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << hi) - 1), src + c + V);
          _mm512_storeu_ps(even + ue + c / 2, _mm512_permutex2var_ps(x0, evens, x1));
          _mm512_storeu_ps(odd + uo + c / 2, _mm512_permutex2var_ps(x0, odds, x1));
        }
        zero_to(even, ue + written, g.Pw);
        zero_to(odd, uo + written, g.Pw);
      }
    }
    return true;
  }
#endif
  (void)in, (void)H, (void)W, (void)pad, (void)g, (void)P;
  return false;
}

// Fills the s x s phase planes of `in` (H x W) for grid g: P[a][b][r][u] = in[s r + a - pad]
// [s u + b - pad], zero outside the input. Each input row is read once per phase, and each phase
// plane is written in row order, so a row's overhanging zero vectors land on values written
// after them or on the plane's slack.
template <typename T>
void split_phases(const T* in, int64_t H, int64_t W, int64_t pad, const Grid& g, T* P) {
  const int64_t s = g.s;
  if (s == 2 && split_stride2(in, H, W, pad, g, P)) return;
  for (int64_t a = 0; a < s; ++a)
    for (int64_t b = 0; b < s; ++b) {
      // Columns [lo, hi) come from the input (computed per phase, not per row: divisions are slow).
      const int64_t lo = std::min(g.Pw, ceil_div(pad - b, s));
      const int64_t hi = W - 1 + pad - b < 0 ? lo : std::max(lo, std::min(g.Pw, (W - 1 + pad - b) / s + 1));
      const T* first = in + s * lo + b - pad;
      T* row = P + (a * s + b) * g.plane;
      for (int64_t r = 0, h = a - pad; r < g.rows; ++r, h += s, row += g.Pw) {
        if (h < 0 || h >= H) {
          zero_to(row, 0, g.Pw);
          continue;
        }
        zero_to(row, 0, lo);
        gather(first + h * W, s, hi - lo, row + lo);
        zero_to(row, lo + round_up(hi - lo, V), g.Pw);
      }
    }
}

// O[q] = sum over t < n_taps of taps[t] * X[off[t] + q], for q < n (a multiple of V). Four
// vectors at a time where they fit: independent accumulator chains (one would wait on the
// multiply-add latency), each tap loaded once for all four.
template <typename T, int64_t N>
void correlate_fixed(const T* X, const int64_t* off, const T* taps, int64_t n_taps, int64_t n,
                     T* O) {
  const int64_t nt = N > 0 ? N : n_taps;  // a compile-time count lets the tap loop unroll
  int64_t q = 0;
  for (; q + 4 * V <= n; q += 4 * V) {
    lanes<T> a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t t = 0; t < nt; ++t) {
      const T* src = X + off[t] + q;
      const T w = taps[t];
      a0 += w * load(src);
      a1 += w * load(src + V);
      a2 += w * load(src + 2 * V);
      a3 += w * load(src + 3 * V);
    }
    store(O + q, a0);
    store(O + q + V, a1);
    store(O + q + 2 * V, a2);
    store(O + q + 3 * V, a3);
  }
  for (; q < n; q += V) {
    lanes<T> acc = {};
    for (int64_t t = 0; t < nt; ++t) acc += taps[t] * load(X + off[t] + q);
    store(O + q, acc);
  }
}

template <typename T>
void correlate(const T* X, const int64_t* off, const T* taps, int64_t n_taps, int64_t n, T* O) {
  switch (n_taps) {
    case 9: return correlate_fixed<T, 9>(X, off, taps, n_taps, n, O);
    case 25: return correlate_fixed<T, 25>(X, off, taps, n_taps, n, O);
    case 49: return correlate_fixed<T, 49>(X, off, taps, n_taps, n, O);
    default: return correlate_fixed<T, 0>(X, off, taps, n_taps, n, O);
  }
}

// Per-thread scratch, reused by every call: the phase planes, the grid's outputs, the tap values
// and their offsets.
template <typename T>
struct Scratch {
  std::vector<T> phases, grid, taps;
  std::vector<int64_t> offsets, counts;
  static Scratch& get() {
    static thread_local Scratch instance;
    return instance;
  }
};

// off[i k + j] = where tap (i, j) reads on grid g, relative to the output: its phase plane, rows
// and columns.
inline void tap_offsets(int64_t k, const Grid& g, int64_t* off) {
  const int64_t s = g.s;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j)
      off[i * k + j] = ((i % s) * s + j % s) * g.plane + (i / s) * g.Pw + j / s;
}

// Planes [begin, end) of out (Ho x Wo each) = the stride-s correlation of in (H x W, zero-padded
// by k / 2) with the k x k window of channel plane % C, flipped when `flip` (the input gradient
// of a stride-1 layer). Everything but the planes themselves is set up once per call.
template <typename T>
void correlate_planes(const T* in, const T* w, int64_t wc, int64_t ws, bool flip, T* out,
                      int64_t C, int64_t H, int64_t W, int64_t k, int64_t s, int64_t begin,
                      int64_t end) {
  Scratch<T>& buf = Scratch<T>::get();
  const Grid g(dw_out_size(H, s), dw_out_size(W, s), (k - 1) / s, s);
  T* P = scratch(buf.phases, s * s * g.plane + V);
  T* O = scratch(buf.grid, g.n);
  T* taps = scratch(buf.taps, k * k);
  int64_t* off = scratch(buf.offsets, k * k);
  tap_offsets(k, g, off);
  for (int64_t plane = begin; plane < end; ++plane) {
    const T* window = w + (plane % C) * wc;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j)
        taps[i * k + j] = flip ? window[(k - 1 - i) * ws + (k - 1 - j)] : window[i * ws + j];
    split_phases(in + plane * H * W, H, W, k / 2, g, P);
    correlate(P, off, taps, k * k, g.n, O);
    T* dst = out + plane * g.Ho * g.Wo;
    for (int64_t y = 0; y < g.Ho; ++y) store_row(O + y * g.Pw, g.Wo, dst + y * g.Wo);
  }
}

template <typename T>
void forward(const T* in, const T* w, int64_t wc, int64_t ws, T* out, int64_t C, int64_t H,
             int64_t W, int64_t k, int64_t s, int64_t begin, int64_t end) {
  correlate_planes(in, w, wc, ws, false, out, C, H, W, k, s, begin, end);
}

// row[2 v] = even[v], row[2 v + 1] = odd[v] for the W values of row (even and odd are scratch
// rows that may be read a vector past their end).
template <typename T>
inline void interleave_pair(const T* even, const T* odd, int64_t W, T* row) {
  int64_t x = 0;
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4 && V == 16) {
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (; x < W; x += 2 * V) {
      const __m512 a = _mm512_loadu_ps(even + x / 2), b = _mm512_loadu_ps(odd + x / 2);
      const int64_t lo = std::min<int64_t>(V, W - x), hi = std::clamp<int64_t>(W - x - V, 0, V);
      _mm512_mask_storeu_ps(row + x, static_cast<__mmask16>((1u << lo) - 1), _mm512_permutex2var_ps(a, first, b));
      _mm512_mask_storeu_ps(row + x + V, static_cast<__mmask16>((1u << hi) - 1), _mm512_permutex2var_ps(a, second, b));
    }
    return;
  }
#endif
  for (; x + 1 < W; x += 2) {
    row[x] = even[x / 2];
    row[x + 1] = odd[x / 2];
  }
  if (x < W) row[x] = even[x / 2];
}

template <typename T>
void grad_input(const T* go, const T* w, int64_t wc, int64_t ws, T* gi, int64_t C, int64_t H,
                int64_t W, int64_t k, int64_t s, int64_t begin, int64_t end) {
  if (s == 1) return correlate_planes(go, w, wc, ws, true, gi, C, H, W, k, 1, begin, end);
  // Stride s: input phase (a, b), gi[s u + a][s v + b], receives tap (i, j) from
  // go[u + (a + p - i) / s][v + (b + p - j) / s] when both divisions are exact: one stride-1
  // correlation per phase over the output gradient, zero-padded by E on every side.
  Scratch<T>& buf = Scratch<T>::get();
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s), E = (k - 1) / s + 1;
  const Grid g(Ho, Wo, 2 * E, 1);  // outputs u < Ho, v < Wo: covers every phase
  T* G = scratch(buf.phases, g.plane + V);
  T* O = scratch(buf.grid, s * g.n + 2 * V);  // + 2 V: interleave_pair reads whole vectors
  T* taps = scratch(buf.taps, k * k);
  int64_t* count = scratch(buf.counts, s * s);  // per phase: how many taps reach it,
  int64_t* off = scratch(buf.offsets, 2 * s * s * k * k);  // where each reads, which tap it is
  int64_t* which = off + s * s * k * k;
  for (int64_t ph = 0; ph < s * s; ++ph) {
    const int64_t a = ph / s, b = ph % s;
    count[ph] = 0;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        if ((a + p - i) % s != 0 || (b + p - j) % s != 0) continue;
        which[ph * k * k + count[ph]] = i * ws + j;
        off[ph * k * k + count[ph]++] = ((a + p - i) / s + E) * g.Pw + (b + p - j) / s + E;
      }
  }
  for (int64_t plane = begin; plane < end; ++plane) {
    const T* window = w + (plane % C) * wc;
    T* dst = gi + plane * H * W;
    split_phases(go + plane * Ho * Wo, Ho, Wo, E, g, G);
    for (int64_t a = 0; a < s; ++a) {
      for (int64_t b = 0; b < s; ++b) {
        const int64_t ph = a * s + b, n = count[ph];
        for (int64_t t = 0; t < n; ++t) taps[t] = window[which[ph * k * k + t]];
        T* phase = O + b * g.n;
        if (n == 0) std::fill(phase, phase + g.n, T(0));  // no tap reaches this phase
        else correlate(G, off + ph * k * k, taps, n, g.n, phase);
      }
      // Interleave the s phases of each row a, s u + a < H, into gi.
      for (int64_t u = 0; s * u + a < H; ++u) {
        T* row = dst + (s * u + a) * W;
        const T* o0 = O + u * g.Pw;
        if (s == 2) {
          interleave_pair(o0, o0 + g.n, W, row);
        } else {
          for (int64_t x = 0; x < W; ++x) row[x] = O[(x % s) * g.n + u * g.Pw + x / s];
        }
      }
    }
  }
}

// total[t][v] += G[q] * X[off[t] + q] over q < n in lane v, for NT taps: G is loaded once for
// all of them. Sums run in T over blocks of kBlock vectors, then in double.
template <typename T, int64_t NT>
void dot_taps(const T* G, const T* X, const int64_t* off, int64_t n, double* total) {
  constexpr int64_t kBlock = 32;
  for (int64_t q0 = 0; q0 < n; q0 += kBlock * V) {
    lanes<T> part[NT] = {};
    const int64_t end = std::min(n, q0 + kBlock * V);
    for (int64_t q = q0; q < end; q += V) {
      const lanes<T> g = load(G + q);
      for (int64_t t = 0; t < NT; ++t) part[t] += g * load(X + off[t] + q);
    }
    for (int64_t t = 0; t < NT; ++t) {
      lanes_double sum;
      std::memcpy(&sum, total + t * V, sizeof sum);
      sum += __builtin_convertvector(part[t], lanes_double);
      std::memcpy(total + t * V, &sum, sizeof sum);
    }
  }
}

// acc[i k + j] = the weight gradient of channel c's tap (i, j): the sum over the N images of
// grad_out times the input shifted by the tap.
template <typename T>
void grad_weight(const T* go, const T* in, double* acc, int64_t N, int64_t C, int64_t H, int64_t W,
                 int64_t k, int64_t s, int64_t c) {
  Scratch<T>& buf = Scratch<T>::get();
  const Grid g(dw_out_size(H, s), dw_out_size(W, s), (k - 1) / s, s);
  T* P = scratch(buf.phases, s * s * g.plane + V);
  T* G = scratch(buf.grid, g.n + V);
  int64_t* off = scratch(buf.offsets, k * k);
  tap_offsets(k, g, off);
  std::vector<double> total(k * k * V, 0.0);  // V lane sums per tap, reduced once at the end
  constexpr int64_t kTaps = 8;  // accumulators per pass: with G and a load, within 16 registers
  for (int64_t n = 0; n < N; ++n) {
    const int64_t plane = n * C + c;
    split_phases(in + plane * H * W, H, W, k / 2, g, P);
    // The output gradient on the grid, zero at x >= Wo and past the last row: products vanish.
    const T* grad = go + plane * g.Ho * g.Wo;
    for (int64_t y = 0; y < g.Ho; ++y) {
      copy_row(grad + y * g.Wo, g.Wo, G + y * g.Pw);
      zero_to(G + y * g.Pw, round_up(g.Wo, V), g.Pw);
    }
    zero_to(G, g.Ho * g.Pw, g.n);
    int64_t t = 0;
    for (; t + kTaps <= k * k; t += kTaps) dot_taps<T, kTaps>(G, P, off + t, g.n, &total[t * V]);
    for (; t < k * k; ++t) dot_taps<T, 1>(G, P, off + t, g.n, &total[t * V]);
  }
  for (int64_t t = 0; t < k * k; ++t) {
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += total[t * V + v];
    acc[t] = sum;
  }
}

// ---- Channel groups: narrow maps. ----
//
// V channel planes of one image are interleaved into a zero-padded buffer [H + 2p][W + 2p][V];
// each output pixel is then one register of V accumulators fed by k * k multiply-adds of full
// vectors, with no padding columns computed, whatever the map size.

// Interleaves `channels` planes of rows x cols into dst[(r + pad) * (cols + 2 pad) + c + pad][V],
// zero everywhere else (padding and the lanes past `channels`). Pixel-major: each pixel's V lanes
// are written together, one pass over dst.
template <typename T>
void interleave(const T* src, int64_t channels, int64_t rows, int64_t cols, int64_t pad, T* dst) {
  const int64_t width = cols + 2 * pad, plane = rows * cols;
  std::fill(dst, dst + pad * width * V, T(0));
  std::fill(dst + (rows + pad) * width * V, dst + (rows + 2 * pad) * width * V, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    T* row = dst + (r + pad) * width * V;
    std::fill(row, row + pad * V, T(0));
    std::fill(row + (cols + pad) * V, row + width * V, T(0));
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4 && V == 16) {  // one gather per pixel instead of 16 loads and stores
      if (15 * plane < (int64_t(1) << 31)) {
        const __m512i index = _mm512_mullo_epi32(_mm512_set1_epi32(static_cast<int>(plane)),
                                                 _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
        const __mmask16 mask = static_cast<__mmask16>((1u << channels) - 1);
        for (int64_t c = 0; c < cols; ++c)
          _mm512_storeu_ps(row + (c + pad) * V, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, index,
                                                                          src + r * cols + c, 4));
        continue;
      }
    }
#endif
    for (int64_t c = 0; c < cols; ++c) {
      T* px = row + (c + pad) * V;
      const T* from = src + r * cols + c;
      int64_t v = 0;
      for (; v < channels; ++v) px[v] = from[v * plane];
      for (; v < V; ++v) px[v] = T(0);
    }
  }
}

// Window taps of the group's channels as [k * k][V] (zero lanes past `channels`).
template <typename T>
void gather_taps(const T* w, int64_t wc, int64_t ws, int64_t channels, int64_t k, T* taps) {
  std::fill(taps, taps + k * k * V, T(0));
  for (int64_t v = 0; v < channels; ++v)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) taps[(i * k + j) * V + v] = w[v * wc + i * ws + j];
}

// O[y][x][V] = sum over taps of taps[i][j][V] * X[(y * s + i + r0)][(x * s + j + c0)][V], X an
// interleaved map Xw pixels wide. XB neighbouring outputs are computed together: their XB
// accumulator chains are independent (a single chain would wait on the multiply-add latency)
// and each tap vector is loaded once for all of them.
template <typename T, int64_t K>
void correlate_group_fixed(const T* X, int64_t Xw, const T* taps, int64_t k_runtime, int64_t s,
                     int64_t r0, int64_t c0, int64_t Ho, int64_t Wo, T* O) {
  constexpr int64_t XB = 4;
  const int64_t k = K > 0 ? K : k_runtime;  // a compile-time K lets the tap loops unroll
  const int64_t step = s * V;  // from one output pixel's window to the next one's
  for (int64_t y = 0; y < Ho; ++y) {
    int64_t x = 0;
    for (; x + XB <= Wo; x += XB) {
      lanes<T> a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t i = 0; i < k; ++i) {
        const T* row = X + ((y * s + i + r0) * Xw + x * s + c0) * V;
        for (int64_t j = 0; j < k; ++j) {
          const lanes<T> t = load(taps + (i * k + j) * V);
          const T* src = row + j * V;
          a0 += t * load(src);
          a1 += t * load(src + step);
          a2 += t * load(src + 2 * step);
          a3 += t * load(src + 3 * step);
        }
      }
      T* dst = O + (y * Wo + x) * V;
      store(dst, a0);
      store(dst + V, a1);
      store(dst + 2 * V, a2);
      store(dst + 3 * V, a3);
    }
    for (; x < Wo; ++x) {
      lanes<T> acc = {};
      for (int64_t i = 0; i < k; ++i) {
        const T* row = X + ((y * s + i + r0) * Xw + x * s + c0) * V;
        for (int64_t j = 0; j < k; ++j) acc += load(taps + (i * k + j) * V) * load(row + j * V);
      }
      store(O + (y * Wo + x) * V, acc);
    }
  }
}

template <typename T>
void correlate_group(const T* X, int64_t Xw, const T* taps, int64_t k, int64_t s, int64_t r0, int64_t c0,
               int64_t Ho, int64_t Wo, T* O) {
  switch (k) {
    case 3: return correlate_group_fixed<T, 3>(X, Xw, taps, k, s, r0, c0, Ho, Wo, O);
    case 5: return correlate_group_fixed<T, 5>(X, Xw, taps, k, s, r0, c0, Ho, Wo, O);
    case 7: return correlate_group_fixed<T, 7>(X, Xw, taps, k, s, r0, c0, Ho, Wo, O);
    default: return correlate_group_fixed<T, 0>(X, Xw, taps, k, s, r0, c0, Ho, Wo, O);
  }
}

// The first `channels` lanes of an interleaved [rows * cols][V] buffer back to planes, one pass
// over the buffer (a pass per lane would read it V times).
template <typename T>
void deinterleave(const T* src, int64_t channels, int64_t rows, int64_t cols, T* dst) {
  const int64_t plane = rows * cols;
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4 && V == 16) {  // per channel, 16 pixels by one gather (scatters are slower)
    const __m512i index = _mm512_mullo_epi32(_mm512_set1_epi32(V),
                                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    for (int64_t v = 0; v < channels; ++v) {
      T* to = dst + v * plane;
      int64_t q = 0;
      for (; q + V <= plane; q += V)
        _mm512_storeu_ps(to + q, _mm512_i32gather_ps(index, src + q * V + v, 4));
      if (q < plane) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (plane - q)) - 1);
        _mm512_mask_storeu_ps(to + q, mask,
                              _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, index, src + q * V + v, 4));
      }
    }
    return;
  }
#endif
  for (int64_t q = 0; q < plane; ++q) {
    const lanes<T> px = load(src + q * V);
    for (int64_t v = 0; v < channels; ++v) dst[v * plane + q] = px[v];
  }
}

template <typename T>
void forward_group(const T* in, const T* w, int64_t wc, int64_t ws, T* out, int64_t channels,
                   int64_t H, int64_t W, int64_t k, int64_t s) {
  static thread_local std::vector<T> pad_buf, tap_buf, out_buf;
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  T* X = scratch(pad_buf, (H + 2 * p) * (W + 2 * p) * V);
  T* taps = scratch(tap_buf, k * k * V);
  T* O = scratch(out_buf, Ho * Wo * V);
  interleave(in, channels, H, W, p, X);
  gather_taps(w, wc, ws, channels, k, taps);
  correlate_group(X, W + 2 * p, taps, k, s, 0, 0, Ho, Wo, O);
  deinterleave(O, channels, Ho, Wo, out);
}

// O[(u * Or + v * Oc) * V] = sum over t < n of taps[t][V] * X[((u * Xw + v) + off[t]) * V] for
// u < rows, v < cols: an interleaved correlation with an explicit tap list, XB outputs at a time.
template <typename T>
void correlate_tap_list(const T* X, int64_t Xw, const int64_t* off, const T* taps, int64_t n,
                        int64_t rows, int64_t cols, T* O, int64_t Or, int64_t Oc) {
  for (int64_t u = 0; u < rows; ++u) {
    int64_t v = 0;
    for (; v + 4 <= cols; v += 4) {
      lanes<T> a0 = {}, a1 = {}, a2 = {}, a3 = {};
      const T* base = X + (u * Xw + v) * V;
      for (int64_t t = 0; t < n; ++t) {
        const lanes<T> w = load(taps + t * V);
        const T* src = base + off[t] * V;
        a0 += w * load(src);
        a1 += w * load(src + V);
        a2 += w * load(src + 2 * V);
        a3 += w * load(src + 3 * V);
      }
      T* dst = O + (u * Or + v * Oc) * V;
      store(dst, a0);
      store(dst + Oc * V, a1);
      store(dst + 2 * Oc * V, a2);
      store(dst + 3 * Oc * V, a3);
    }
    for (; v < cols; ++v) {
      lanes<T> acc = {};
      const T* base = X + (u * Xw + v) * V;
      for (int64_t t = 0; t < n; ++t) acc += load(taps + t * V) * load(base + off[t] * V);
      store(O + (u * Or + v * Oc) * V, acc);
    }
  }
}

template <typename T>
void grad_input_group(const T* go, const T* w, int64_t wc, int64_t ws, T* gi, int64_t channels,
                      int64_t H, int64_t W, int64_t k, int64_t s) {
  static thread_local std::vector<T> pad_buf, tap_buf, list_buf, out_buf;
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  T* taps = scratch(tap_buf, k * k * V);
  T* O = scratch(out_buf, H * W * V);
  gather_taps(w, wc, ws, channels, k, taps);
  if (s == 1) {
    // A stride-1 correlation of the output gradient, zero-padded by p, with the flipped window.
    static thread_local std::vector<T> flip_buf;
    T* D = scratch(pad_buf, (H + 2 * p) * (W + 2 * p) * V);
    T* flipped = scratch(flip_buf, k * k * V);
    interleave(go, channels, H, W, p, D);
    for (int64_t t = 0; t < k * k; ++t)
      std::copy(taps + t * V, taps + (t + 1) * V, flipped + (k * k - 1 - t) * V);
    correlate_group(D, W + 2 * p, flipped, k, 1, 0, 0, H, W, O);
  } else {
    // Stride s: the s x s phases gi[s u + a][s v + b], each correlating the output gradient with
    // only the taps that reach it, (a + p - i) and (b + p - j) multiples of s: k * k multiply-adds
    // per gradient value, where correlating the dilated gradient spends s * s times as many on
    // zeros. Each phase writes its own pixels of O.
    const int64_t P = (k - 1) / s + 1, Gw = Wo + 2 * P;
    T* G = scratch(pad_buf, (Ho + 2 * P) * Gw * V);
    T* list = scratch(list_buf, k * k * V);
    interleave(go, channels, Ho, Wo, P, G);
    for (int64_t a = 0; a < s; ++a)
      for (int64_t b = 0; b < s; ++b) {
        int64_t off[64], n = 0;
        for (int64_t i = 0; i < k; ++i)
          for (int64_t j = 0; j < k; ++j) {
            if ((a + p - i) % s != 0 || (b + p - j) % s != 0) continue;
            off[n] = ((a + p - i) / s + P) * Gw + (b + p - j) / s + P;
            std::copy(taps + (i * k + j) * V, taps + (i * k + j + 1) * V, list + n * V);
            ++n;
          }
        const int64_t rows = (H - a + s - 1) / s, cols = (W - b + s - 1) / s;
        T* first = O + (a * W + b) * V;
        if (n == 0) {  // no tap reaches this phase
          for (int64_t u = 0; u < rows; ++u)
            for (int64_t v = 0; v < cols; ++v)
              std::fill(first + (u * s * W + v * s) * V, first + (u * s * W + v * s + 1) * V, T(0));
          continue;
        }
        correlate_tap_list(G, Gw, off, list, n, rows, cols, first, s * W, s);
      }
  }
  deinterleave(O, channels, H, W, gi);
}

template <typename T>
void grad_weight_group(const T* go, const T* in, double* acc, int64_t channels, int64_t H,
                       int64_t W, int64_t k, int64_t s) {
  static thread_local std::vector<T> pad_buf, grad_buf;
  const int64_t p = k / 2, Wp = W + 2 * p, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  const int64_t step = s * V;
  T* X = scratch(pad_buf, (H + 2 * p) * Wp * V);
  T* G = scratch(grad_buf, Ho * Wo * V);
  interleave(in, channels, H, W, p, X);
  interleave(go, channels, Ho, Wo, 0, G);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      double total[V] = {};
      for (int64_t y = 0; y < Ho; ++y) {  // a row in T, rows summed in double: accurate
        lanes<T> p0 = {}, p1 = {}, p2 = {}, p3 = {};  // independent partial sums
        const T* g = G + y * Wo * V;
        const T* src = X + ((y * s + i) * Wp + j) * V;
        int64_t x = 0;
        for (; x + 4 <= Wo; x += 4) {
          p0 += load(g + x * V) * load(src + x * step);
          p1 += load(g + (x + 1) * V) * load(src + (x + 1) * step);
          p2 += load(g + (x + 2) * V) * load(src + (x + 2) * step);
          p3 += load(g + (x + 3) * V) * load(src + (x + 3) * step);
        }
        for (; x < Wo; ++x) p0 += load(g + x * V) * load(src + x * step);
        const lanes<T> row = (p0 + p1) + (p2 + p3);
        for (int64_t v = 0; v < V; ++v) total[v] += row[v];
      }
      for (int64_t v = 0; v < channels; ++v) acc[v * k * k + i * k + j] += total[v];
    }
}

#include "dw_conv2d_nhwc.h"

}  // namespace

template <typename T>
DwKernels<T> dw_kernels() {
  return {V, &forward<T>, &grad_input<T>, &grad_weight<T>,
          &forward_group<T>, &grad_input_group<T>, &grad_weight_group<T>,
          &forward_nhwc<T>, &grad_input_nhwc<T>, &grad_weight_nhwc<T>};
}
template DwKernels<float> dw_kernels<float>();
template DwKernels<double> dw_kernels<double>();

}  // namespace NASOPS_CPU_NS
}  // namespace nasops
