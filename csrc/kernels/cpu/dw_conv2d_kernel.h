// The depthwise CPU kernels. Included once per instruction set with NASOPS_CPU_NS set
// (dw_conv2d_base.cpp, dw_conv2d_avx2.cpp); `lanes<T>` (V = kDwGroup values) becomes the vector
// registers of that set. Two layouts, chosen by map width in dw_conv2d.cpp:
//
// * Channel groups (narrow maps): V channel planes are copied into a zero-padded,
//   channel-interleaved buffer [H + 2p][W + 2p][V]; each output pixel is then one register of V
//   accumulators fed by k * k multiply-adds of full vectors, whatever the map size.
// * Rows (wide maps): one plane, zero-padded (and split into stride phases), vectors along the
//   output rows; see correlate_rows.
//
// Both compute the input gradient as a stride-1 correlation of the output gradient (dilated by
// the stride; the group layout splits stride 2 into phases instead) with the flipped window, and
// accumulate weight gradients per row in T and across rows in double.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../dw_conv2d.h"

namespace nasops {
namespace NASOPS_CPU_NS {
namespace {

constexpr int64_t V = kDwGroup;

// V lanes of T as one GCC/Clang vector value: accumulators of this type live in registers (an
// array with "omp simd" loops was kept on the stack, a store-to-load chain per multiply-add).
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(V * sizeof(T))));
};
template <typename T>
using lanes = typename Lanes<T>::type;

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
void correlate_fixed(const T* X, int64_t Xw, const T* taps, int64_t k_runtime, int64_t s,
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
void correlate(const T* X, int64_t Xw, const T* taps, int64_t k, int64_t s, int64_t r0, int64_t c0,
               int64_t Ho, int64_t Wo, T* O) {
  switch (k) {
    case 3: return correlate_fixed<T, 3>(X, Xw, taps, k, s, r0, c0, Ho, Wo, O);
    case 5: return correlate_fixed<T, 5>(X, Xw, taps, k, s, r0, c0, Ho, Wo, O);
    case 7: return correlate_fixed<T, 7>(X, Xw, taps, k, s, r0, c0, Ho, Wo, O);
    default: return correlate_fixed<T, 0>(X, Xw, taps, k, s, r0, c0, Ho, Wo, O);
  }
}

// The first `channels` lanes of an interleaved [rows * cols][V] buffer back to planes, one pass
// over the buffer (a pass per lane would read it V times).
template <typename T>
void deinterleave(const T* src, int64_t channels, int64_t rows, int64_t cols, T* dst) {
  const int64_t plane = rows * cols;
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
  correlate(X, W + 2 * p, taps, k, s, 0, 0, Ho, Wo, O);
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
    correlate(D, W + 2 * p, flipped, k, 1, 0, 0, H, W, O);
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

// ---- Row kernels: one plane, vectors along the output rows. ----
//
// The zero-padded plane is split into s x s phase planes, P[a][b][r][u] = padded[s r + a][s u + b]
// (one plane when s = 1), Pw values wide; tap (i, j) of output (y, x) is then
// P[i % s][j % s][y + i / s][x + j / s]: contiguous along x for every tap and stride.

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct RowLayout {
  int64_t s, reach, Ho, Wo, WoV, Hp, Pw, plane;
  RowLayout(int64_t Ho_, int64_t Wo_, int64_t k, int64_t s_) : s(s_), Ho(Ho_), Wo(Wo_) {
    reach = (k - 1) / s;          // extra phase rows / columns a window spans
    WoV = round_up(Wo, V);        // outputs computed per row, in whole vectors
    Hp = Ho + reach + 1;          // + 1: vector reads past a row's end stay in the buffer
    Pw = WoV + reach + V;
    plane = Hp * Pw;
  }
};

// Phase planes of `in` (H x W) with `pad` zeros before the first row and column.
template <typename T>
void split_rows(const T* in, int64_t H, int64_t W, int64_t pad, const RowLayout& L, T* P) {
  const int64_t s = L.s;
  if (s == 1) {  // one phase: a padded copy, row by row
    for (int64_t r = 0; r < L.Hp; ++r) {
      T* dst = P + r * L.Pw;
      const int64_t h = r - pad;
      if (h < 0 || h >= H) {
        std::fill(dst, dst + L.Pw, T(0));
        continue;
      }
      const int64_t n = std::min(W, L.Pw - pad);
      std::fill(dst, dst + pad, T(0));
      std::copy(in + h * W, in + h * W + n, dst + pad);
      std::fill(dst + pad + n, dst + L.Pw, T(0));
    }
    return;
  }
  std::fill(P, P + s * s * L.plane, T(0));
  for (int64_t a = 0; a < s; ++a)
    for (int64_t b = 0; b < s; ++b) {
      T* phase = P + (a * s + b) * L.plane;
      const int64_t u_lo = pad > b ? (pad - b + s - 1) / s : 0;  // first u with s u + b - pad >= 0
      for (int64_t r = 0; r < L.Hp; ++r) {
        const int64_t h = s * r + a - pad;
        if (h < 0 || h >= H) continue;
        const T* src = in + h * W;
        T* dst = phase + r * L.Pw;
        for (int64_t u = u_lo; u < L.Pw; ++u) {
          const int64_t c = s * u + b - pad;
          if (c >= W) break;
          dst[u] = src[c];
        }
      }
    }
}

// out[y][x] = sum of taps[i k + j] * P[i % s][j % s][y + i / s][x + j / s] for x < Wo.
template <typename T, int64_t K>
void correlate_rows_fixed(const T* P, const RowLayout& L, const T* taps, int64_t k_runtime, T* out) {
  const int64_t s = L.s;
  const int64_t k = K > 0 ? K : k_runtime;
  int64_t offset[64];  // where each tap starts, computed once (no divisions in the loops)
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j)
      offset[i * k + j] = ((i % s) * s + j % s) * L.plane + (i / s) * L.Pw + j / s;
  T tail[4 * V];
  for (int64_t y = 0; y < L.Ho; ++y) {
    T* orow = out + y * L.Wo;
    const T* base = P + y * L.Pw;
    for (int64_t x = 0; x < L.WoV; x += 4 * V) {
      const int64_t chunks = std::min<int64_t>(4, (L.WoV - x) / V);
      lanes<T> a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t t = 0; t < k * k; ++t) {
        const T* src = base + offset[t] + x;  // reads stay inside the padded buffer
        const T w = taps[t];                  // (broadcast by the vector arithmetic)
        a0 += w * load(src);
        a1 += w * load(src + V);
        a2 += w * load(src + 2 * V);
        a3 += w * load(src + 3 * V);
      }
      store(tail, a0);
      store(tail + V, a1);
      store(tail + 2 * V, a2);
      store(tail + 3 * V, a3);
      std::copy(tail, tail + std::min(chunks * V, L.Wo - x), orow + x);
    }
  }
}

template <typename T>
void correlate_rows(const T* P, const RowLayout& L, const T* taps, int64_t k, T* out) {
  switch (k) {
    case 3: return correlate_rows_fixed<T, 3>(P, L, taps, k, out);
    case 5: return correlate_rows_fixed<T, 5>(P, L, taps, k, out);
    case 7: return correlate_rows_fixed<T, 7>(P, L, taps, k, out);
    default: return correlate_rows_fixed<T, 0>(P, L, taps, k, out);
  }
}

template <typename T>
void forward_rows(const T* in, const T* w, int64_t ws, T* out, int64_t H, int64_t W, int64_t k,
                  int64_t s) {
  static thread_local std::vector<T> phase_buf;
  const RowLayout L(dw_out_size(H, s), dw_out_size(W, s), k, s);
  T* P = scratch(phase_buf, s * s * L.plane + 4 * V);
  split_rows(in, H, W, k / 2, L, P);
  T taps[64];  // k <= 7 in practice; larger kernels use the group path (see dw_conv2d.cpp)
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) taps[i * k + j] = w[i * ws + j];
  correlate_rows(P, L, taps, k, out);
}

template <typename T>
void grad_input_rows(const T* go, const T* w, int64_t ws, T* gi, int64_t H, int64_t W, int64_t k,
                     int64_t s) {
  // gi[h][x] = sum of flipped taps * D[h + i][x + j], D the output gradient dilated by the stride
  // with p zeros before: D[y s + p][x s + p] = grad_out[y][x]. (Splitting stride 2 into phases, as
  // the group layout does, measured no faster here: on wide maps the time goes to memory, and the
  // phases' results need a strided scatter into the rows.)
  static thread_local std::vector<T> pad_buf;
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  const RowLayout L(H, W, k, 1);
  T* D = scratch(pad_buf, L.plane + 4 * V);
  if (s == 1) {
    split_rows(go, Ho, Wo, p, L, D);  // the gradient zero-padded by p
  } else {
    std::fill(D, D + L.plane + 4 * V, T(0));
    for (int64_t y = 0; y < Ho; ++y)
      for (int64_t x = 0; x < Wo; ++x) D[(y * s + p) * L.Pw + x * s + p] = go[y * Wo + x];
  }
  T flipped[64];
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) flipped[(k - 1 - i) * k + (k - 1 - j)] = w[i * ws + j];
  correlate_rows(D, L, flipped, k, gi);
}

template <typename T>
void grad_weight_rows(const T* go, const T* in, double* acc, int64_t H, int64_t W, int64_t k,
                      int64_t s) {
  static thread_local std::vector<T> phase_buf, grad_buf;
  const RowLayout L(dw_out_size(H, s), dw_out_size(W, s), k, s);
  T* P = scratch(phase_buf, s * s * L.plane + 4 * V);
  T* G = scratch(grad_buf, L.Ho * L.WoV);
  split_rows(in, H, W, k / 2, L, P);
  std::fill(G, G + L.Ho * L.WoV, T(0));  // zero past Wo: those products vanish
  for (int64_t y = 0; y < L.Ho; ++y) std::copy(go + y * L.Wo, go + (y + 1) * L.Wo, G + y * L.WoV);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      double total = 0;
      for (int64_t y = 0; y < L.Ho; ++y) {  // a row in T lanes, rows summed in double
        const T* g = G + y * L.WoV;
        const T* src = P + ((i % s) * s + j % s) * L.plane + (y + i / s) * L.Pw + j / s;
        lanes<T> p0 = {}, p1 = {};
        int64_t x = 0;
        for (; x + 2 * V <= L.WoV; x += 2 * V) {
          p0 += load(g + x) * load(src + x);
          p1 += load(g + x + V) * load(src + x + V);
        }
        if (x < L.WoV) p0 += load(g + x) * load(src + x);
        const lanes<T> row = p0 + p1;
        T sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += row[v];
        total += sum;
      }
      acc[i * k + j] += total;
    }
}

}  // namespace

template <typename T>
DwKernels<T> dw_kernels() {
  return {&forward_group<T>, &grad_input_group<T>, &grad_weight_group<T>,
          &forward_rows<T>,  &grad_input_rows<T>,  &grad_weight_rows<T>};
}
template DwKernels<float> dw_kernels<float>();
template DwKernels<double> dw_kernels<double>();

}  // namespace NASOPS_CPU_NS
}  // namespace nasops
