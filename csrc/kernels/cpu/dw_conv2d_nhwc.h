// Channels-last (NHWC) depthwise kernels, included by dw_conv2d_kernel.h inside its per-ISA
// namespace (they use its lanes<T>, V, load and store).
//
// In NHWC a pixel's C channels are contiguous, and depthwise channels never mix: every tap is
// one multiply-add of V channels at once, read straight from the tensors. No transposes,
// padding buffers or phase planes; each input value is read from memory about once, and each
// output value written once. Channels go in chunks of V; the last chunk of a C that is not a
// multiple of V reads and writes its first lanes only (masked), so nothing outside the tensors
// is touched.
//
// Forward and input gradient are both "sequences": outputs t = 0 .. n-1 of one row, `os` values
// apart, each the sum over source rows r and taps q < KQ of
//     weight[r][q] * src_r[col0 + t * S + q]        (zero outside the source row)
// with KQ consecutive source columns per row:
//   forward, output row y:        the input rows y s + i - p in range, col0 = -p, S = s, KQ = k;
//   input gradient, input row h:  per column phase b (columns w = b + s t), the output-gradient
//                                 rows and columns that reach it, (h + p - i) and (b + p - j)
//                                 multiples of s: S = 1 and KQ = about k / s taps per row, so
//                                 k * k / s^2 multiply-adds per value (a dilated correlation
//                                 spends s^2 times as many, mostly on zeros).
// Inside the row (all taps in range) XB outputs are computed at once: each source vector is
// loaded once for all the outputs and taps that use it, the KQ weights stay in registers.

// Every tap's weights are [taps][Cp] with Cp a multiple of V, zero past C: whole-vector loads.
inline int64_t padded_channels(int64_t C) { return round_up(C, V); }

// The first n lanes (0 < n <= V) of p, zero past them; nothing past p[n - 1] is read.
template <typename T>
inline lanes<T> load_first(const T* p, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4 && V == 16)
    return (lanes<T>)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(T) == 4 && V == 8)
    return (lanes<T>)_mm256_maskload_ps(reinterpret_cast<const float*>(p), tail_mask(n));
#endif
  lanes<T> r = {};
  for (int64_t v = 0; v < n; ++v) r[v] = p[v];
  return r;
}

// Writes the first n lanes (0 < n <= V) of x to p, nothing past them.
template <typename T>
inline void store_first(T* p, const lanes<T>& x, int64_t n) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4 && V == 16) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), (__m512)x);
    return;
  }
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(T) == 4 && V == 8) {
    _mm256_maskstore_ps(reinterpret_cast<float*>(p), tail_mask(n), (__m256)x);
    return;
  }
#endif
  for (int64_t v = 0; v < n; ++v) p[v] = x[v];
}

// Whole vectors for full chunks; the first n lanes for the last, partial one.
template <bool Full, typename T>
inline lanes<T> load_chunk(const T* p, int64_t n) {
  if constexpr (Full) return load(p);
  else return load_first(p, n);
}
template <bool Full, typename T>
inline void store_chunk(T* p, const lanes<T>& x, int64_t n) {
  if constexpr (Full) store(p, x);
  else store_first(p, x, n);
}

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// A source row of a sequence: its column 0 at offset src (values, channel 0), tap q's weights
// at taps + weight + q * wstep.
struct SeqRow {
  int64_t src, weight, wstep;
};

// One sequence: rows[0, m), KQ taps per row, source columns col0 + t * S + q of a row W_src
// wide, outputs t < n at out + t * os. Offsets are for channel 0; a chunk adds its c0.
struct Sequence {
  const SeqRow* rows;
  int64_t m, KQ, S, col0, W_src, n, os;
  // outputs whose taps all fall inside the source row: [lo, hi)
  int64_t lo() const { return std::clamp<int64_t>(floor_div(-col0 + S - 1, S), 0, n); }
  int64_t hi() const {
    return std::clamp<int64_t>(floor_div(W_src - KQ - col0, S) + 1, lo(), n);
  }
};

// Output t of a chunk, each tap checked (the border columns, and layers too small for a block).
template <bool Full, typename T>
inline void sequence_output(const T* in, const T* taps, const Sequence& q, int64_t t, T* out,
                            int64_t C, int64_t cnt) {
  lanes<T> acc = {};
  for (int64_t r = 0; r < q.m; ++r) {
    const SeqRow& row = q.rows[r];
    for (int64_t j = 0; j < q.KQ; ++j) {
      const int64_t col = q.col0 + t * q.S + j;
      if (col < 0 || col >= q.W_src) continue;
      acc += load(taps + row.weight + j * row.wstep) * load_chunk<Full>(in + (row.src + col * C), cnt);
    }
  }
  store_chunk<Full>(out + t * q.os, acc, cnt);
}

// XB consecutive interior outputs from t, with compile-time KQ and S (unrolled: the KQ weights
// and XB sums in registers, each source vector loaded once for every output that reads it).
template <bool Full, int64_t KQ, int64_t S, int64_t XB, typename T>
inline void sequence_block(const T* in, const T* taps, const Sequence& q, int64_t t, T* out,
                           int64_t C, int64_t cnt) {
  constexpr int64_t SPAN = (XB - 1) * S + KQ;  // source columns the block reads per row
  lanes<T> acc[XB] = {};
  for (int64_t r = 0; r < q.m; ++r) {
    const SeqRow& row = q.rows[r];
    const T* src = in + (row.src + (q.col0 + t * S) * C);
    lanes<T> w[KQ];
#pragma GCC unroll 16
    for (int64_t j = 0; j < KQ; ++j) w[j] = load(taps + row.weight + j * row.wstep);
#pragma GCC unroll 32
    for (int64_t u = 0; u < SPAN; ++u) {
      const lanes<T> v = load_chunk<Full>(src + u * C, cnt);
#pragma GCC unroll 16
      for (int64_t b = 0; b < XB; ++b) {
        const int64_t j = u - b * S;
        if (j >= 0 && j < KQ) acc[b] += w[j] * v;
      }
    }
  }
#pragma GCC unroll 16
  for (int64_t b = 0; b < XB; ++b) store_chunk<Full>(out + (t + b) * q.os, acc[b], cnt);
}

// Every chunk of C channels of XB outputs from t: all channels of a block before the next
// block, so that the block's pixels are read whole, in address order (chunk by chunk over
// the row would stride through memory C values at a time, which the prefetchers serve badly).
template <int64_t KQ, int64_t S, int64_t XB, typename T>
inline void sequence_block_chunks(const T* in, const T* taps, const Sequence& q, int64_t t,
                                  T* out, int64_t C) {
  int64_t c0 = 0;
  for (; c0 + V <= C; c0 += V)
    sequence_block<true, KQ, S, XB>(in + c0, taps + c0, q, t, out + c0, C, V);
  if (c0 < C) sequence_block<false, KQ, S, XB>(in + c0, taps + c0, q, t, out + c0, C, C - c0);
}

// Output t, every chunk, each tap checked (the border columns, and shapes without a compiled
// block).
template <typename T>
void sequence_output_chunks(const T* in, const T* taps, const Sequence& q, int64_t t, T* out,
                            int64_t C) {
  int64_t c0 = 0;
  for (; c0 + V <= C; c0 += V) sequence_output<true>(in + c0, taps + c0, q, t, out + c0, C, V);
  if (c0 < C) sequence_output<false>(in + c0, taps + c0, q, t, out + c0, C, C - c0);
}

// Interior outputs [t, t1): blocks of 8 (not with AVX2's 16 registers), then 4, then singles.
template <int64_t KQ, int64_t S, typename T>
void sequence_interior(const T* in, const T* taps, const Sequence& q, int64_t t, int64_t t1,
                       T* out, int64_t C) {
  if constexpr (V >= 16)
    for (; t + 8 <= t1; t += 8) sequence_block_chunks<KQ, S, 8>(in, taps, q, t, out, C);
  for (; t + 4 <= t1; t += 4) sequence_block_chunks<KQ, S, 4>(in, taps, q, t, out, C);
  for (; t < t1; ++t) sequence_block_chunks<KQ, S, 1>(in, taps, q, t, out, C);
}

// The whole sequence over all C channels.
template <typename T>
void run_sequence(const T* in, const T* taps, const Sequence& q, T* out, int64_t C) {
  const int64_t lo = q.lo(), hi = q.hi();
  for (int64_t t = 0; t < lo; ++t) sequence_output_chunks(in, taps, q, t, out, C);
  bool done = false;
#define NASOPS_SEQ(KQ_, S_)                                                                   \
  if (!done && q.KQ == KQ_ && q.S == S_) {                                                    \
    sequence_interior<KQ_, S_>(in, taps, q, lo, hi, out, C);                                  \
    done = true;                                                                              \
  }
  NASOPS_SEQ(3, 1) NASOPS_SEQ(5, 1) NASOPS_SEQ(7, 1) NASOPS_SEQ(3, 2) NASOPS_SEQ(5, 2)
  NASOPS_SEQ(7, 2) NASOPS_SEQ(1, 1) NASOPS_SEQ(2, 1) NASOPS_SEQ(4, 1)
#undef NASOPS_SEQ
  for (int64_t t = done ? hi : lo; t < q.n; ++t) sequence_output_chunks(in, taps, q, t, out, C);
}

// Output rows [begin, end) of the N * Ho rows of out [N, Ho, Wo, C] = the stride-s, zero-padded
// (k / 2) depthwise correlation of in [N, H, W, C] with taps [k * k][Cp].
template <typename T>
void forward_nhwc(const T* in, const T* taps, T* out, int64_t C, int64_t H, int64_t W, int64_t k,
                  int64_t s, int64_t begin, int64_t end) {
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s), Cp = padded_channels(C);
  std::vector<SeqRow> rows(k);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / Ho, y = r % Ho;
    int64_t m = 0;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t h = y * s + i - p;
      if (h >= 0 && h < H) rows[m++] = {(n * H + h) * W * C, i * k * Cp, Cp};
    }
    const Sequence q{rows.data(), m, k, s, -p, W, Wo, C};
    run_sequence(in, taps, q, out + r * Wo * C, C);
  }
}

// Input rows [begin, end) of the N * H rows of grad_in [N, H, W, C] from grad_out
// [N, Ho, Wo, C] and the forward's taps [k * k][Cp].
template <typename T>
void grad_input_nhwc(const T* go, const T* taps, T* gi, int64_t C, int64_t H, int64_t W, int64_t k,
                     int64_t s, int64_t begin, int64_t end) {
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s), Cp = padded_channels(C);
  std::vector<SeqRow> rows(k);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / H, h = r % H;
    for (int64_t b = 0; b < std::min(s, W); ++b) {
      // Output columns x = t + dx reach input column w = b + s t through tap j = b + p - s dx,
      // for dx from ceil((b + p - k + 1) / s) to floor((b + p) / s); KQ of them, in that order
      // (j falling by s each).
      const int64_t dx0 = floor_div(b + p - k + 1 + s - 1, s), dx1 = floor_div(b + p, s);
      const int64_t KQ = dx1 - dx0 + 1, j0 = b + p - s * dx0;
      int64_t m = 0;
      for (int64_t i = 0; i < k && KQ > 0; ++i) {
        if ((h + p - i) % s != 0 || h + p - i < 0) continue;
        const int64_t y = (h + p - i) / s;
        if (y < Ho) rows[m++] = {(n * Ho + y) * Wo * C, (i * k + j0) * Cp, -s * Cp};
      }
      const Sequence q{rows.data(), m, std::max<int64_t>(KQ, 0), 1, dx0, Wo, (W - b + s - 1) / s, s * C};
      run_sequence(go, taps, q, gi + (r * W + b) * C, C);
    }
  }
}

// acc[j] += the products of outputs [x, x + XB) with their input under tap (i, j), for every
// j < K (src: the input under tap (i, 0) of output x; outputs S input columns apart).
template <bool Full, int64_t K, int64_t S, int64_t XB, typename T>
inline void grad_weight_block(const T* g, const T* src, lanes<T>* acc, int64_t C, int64_t cnt) {
  lanes<T> gx[XB];
#pragma GCC unroll 16
  for (int64_t b = 0; b < XB; ++b) gx[b] = load_chunk<Full>(g + b * C, cnt);
#pragma GCC unroll 32
  for (int64_t u = 0; u < S * (XB - 1) + K; ++u) {
    const lanes<T> v = load_chunk<Full>(src + u * C, cnt);
#pragma GCC unroll 16
    for (int64_t b = 0; b < XB; ++b)
      if (u - S * b >= 0 && u - S * b < K) acc[u - S * b] += gx[b] * v;
  }
}

template <bool Full, int64_t K, int64_t S, typename T>
inline int64_t grad_weight_interior(const T* g, const T* in, int64_t row, lanes<T>* acc,
                                    int64_t x, int64_t x1, int64_t C, int64_t cnt) {
  // (the sums of all K taps in registers, each input vector loaded once for every pair that
  // reads it)
  if constexpr (V >= 16)
    for (; x + 8 <= x1; x += 8)
      grad_weight_block<Full, K, S, 8>(g + x * C, in + (row + x * S * C), acc, C, cnt);
  for (; x + 4 <= x1; x += 4)
    grad_weight_block<Full, K, S, 4>(g + x * C, in + (row + x * S * C), acc, C, cnt);
  for (; x < x1; ++x)
    grad_weight_block<Full, K, S, 1>(g + x * C, in + (row + x * S * C), acc, C, cnt);
  return x;
}

// total[(i k + j) * V + v] += the weight gradient of tap (i, j) of channel c0 + v (v < cnt),
// summed over output rows [begin, end) of the N * Ho. Each tap is summed in T over at most
// about 256 products (rows of a narrow map together), then added in double.
template <bool Full, int64_t K, typename T>
void grad_weight_rows(const T* go, const T* in, double* total, int64_t C, int64_t H, int64_t W,
                      int64_t k_runtime, int64_t s, int64_t cnt, int64_t begin, int64_t end) {
  const int64_t k = K > 0 ? K : k_runtime;  // a compile-time K keeps the sums in registers
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  constexpr int64_t kMax = K > 0 ? K : 63;
  int64_t lo[kMax], hi[kMax];
  int64_t x_lo = 0, x_hi = Wo;
  for (int64_t j = 0; j < k; ++j) {
    lo[j] = std::clamp<int64_t>(floor_div(p - j + s - 1, s), 0, Wo);
    hi[j] = std::clamp<int64_t>(floor_div(W - 1 + p - j, s) + 1, lo[j], Wo);
    x_lo = std::max(x_lo, lo[j]);
    x_hi = std::min(x_hi, hi[j]);
  }
  x_hi = std::max(x_hi, x_lo);
  std::vector<lanes<T>> part(k * k, lanes<T>{});  // the taps' sums in T since the last flush
  const int64_t rows_per_flush = std::max<int64_t>(1, 256 / std::max<int64_t>(1, Wo));
  int64_t pending = 0;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / Ho, y = r % Ho;
    const T* g = go + r * Wo * C;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t h = y * s + i - p;
      if (h < 0 || h >= H) continue;
      const int64_t row = ((n * H + h) * W - p) * C;  // + (x s + j) C: input column x s + j - p
      lanes<T> acc[kMax];
      for (int64_t j = 0; j < k; ++j) acc[j] = part[i * k + j];
      auto edge = [&](int64_t x) {
        const lanes<T> gx = load_chunk<Full>(g + x * C, cnt);
        for (int64_t j = 0; j < k; ++j)
          if (x >= lo[j] && x < hi[j]) acc[j] += gx * load_chunk<Full>(in + (row + (x * s + j) * C), cnt);
      };
      for (int64_t x = 0; x < x_lo; ++x) edge(x);
      int64_t x = x_lo;
      if constexpr (K > 0) {
        if (s == 1) x = grad_weight_interior<Full, K, 1>(g, in, row, acc, x, x_hi, C, cnt);
        else if (s == 2) x = grad_weight_interior<Full, K, 2>(g, in, row, acc, x, x_hi, C, cnt);
      }
      for (; x < x_hi; ++x) {
        const lanes<T> gx = load_chunk<Full>(g + x * C, cnt);
        const T* src = in + (row + x * s * C);
        for (int64_t j = 0; j < k; ++j) acc[j] += gx * load_chunk<Full>(src + j * C, cnt);
      }
      for (; x < Wo; ++x) edge(x);
      for (int64_t j = 0; j < k; ++j) part[i * k + j] = acc[j];
    }
    if (++pending == rows_per_flush || r + 1 == end) {
      for (int64_t t = 0; t < k * k; ++t) {
        for (int64_t v = 0; v < V; ++v) total[t * V + v] += static_cast<double>(part[t][v]);
        part[t] = lanes<T>{};
      }
      pending = 0;
    }
  }
}

// The weight gradient of channels [c0, c0 + cnt) (cnt <= V) over output rows [begin, end),
// added to total [k * k][V] (pointers are to channel 0).
template <typename T>
void grad_weight_nhwc(const T* go, const T* in, double* total, int64_t C, int64_t H, int64_t W,
                      int64_t k, int64_t s, int64_t c0, int64_t cnt, int64_t begin, int64_t end) {
  go += c0;
  in += c0;
  auto run = [&](auto full) {
    constexpr bool F = decltype(full)::value;
    switch (k) {
      case 1: return grad_weight_rows<F, 1>(go, in, total, C, H, W, k, s, cnt, begin, end);
      case 3: return grad_weight_rows<F, 3>(go, in, total, C, H, W, k, s, cnt, begin, end);
      case 5: return grad_weight_rows<F, 5>(go, in, total, C, H, W, k, s, cnt, begin, end);
      case 7: return grad_weight_rows<F, 7>(go, in, total, C, H, W, k, s, cnt, begin, end);
      default: return grad_weight_rows<F, 0>(go, in, total, C, H, W, k, s, cnt, begin, end);
    }
  };
  if (cnt == V) run(std::true_type{});
  else run(std::false_type{});
}
