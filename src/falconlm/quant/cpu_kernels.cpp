// Weight-only int8 / int4 matmuls for CPU, fp32 activations and fp32 accumulation.
//
// Why these exist: on the Xeon (AVX-512, AMX) we develop on, PyTorch 2.13's own weight-only CPU
// kernels run a batch-1 product slower than the fp32 one they replace: torch._weight_int8pack_mm
// streams 1.8 GB/s of int8 weights and torch._weight_int4pack_mm_for_cpu 0.33 GB/s of int4
// weights, against 22 GB/s of fp32 weights for oneDNN (benchmarks/bench_quant.py --kernels).
// Batch-1 decode is bound by the bytes it reads, so a quantized model is only faster if the
// kernel streams its narrower weights at about the rate fp32 streams.
//
// Layout (the model's in-memory form; the GPTQ on-disk form is converted at load time):
//   q8: uint8 [N, K], the stored integer of each weight.
//   q4: uint8 [N, K/2]; each 32-byte chunk holds 64 consecutive weights of a row, byte j holding
//       weight j in its low nibble and weight j + 32 in its high nibble, so one load and two
//       masks give two runs of 32 consecutive weights.
//   w[n, k] = s[n, g] * q[n, k] - sz[n, g] with g = k / group and sz = s * zero,
// so y[m, n] = sum_g s[n, g] * (x[m, g-block] . q[n, g-block]) - sum_g sz[n, g] * xsum[m, g].

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define FALCONLM_AVX512 1
#endif

namespace {

// Rows of the output each parallel task takes: enough to amortise the task, few enough to balance.
constexpr int64_t kGrain = 16;
// Rows ahead whose weights are prefetched while one row is computed: DRAM latency is the limit at batch 1.
constexpr int64_t kPrefetchRows = 8;

inline float zero_term(const float* sz, const float* xsum, int64_t G) {
  float t = 0.f;
  for (int64_t g = 0; g < G; ++g) t += sz[g] * xsum[g];
  return t;
}

#ifdef FALCONLM_AVX512
inline __m512 load_u8x16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

inline __m512 u8x16(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }

// a[m][u] += x[m][16u .. 16u + 15] * w_u for 64 consecutive weights w0..w3 and MT rows of x.
template <int MT>
inline void fma64(__m512 (&a)[MT][4], const float* x, int64_t ldx, __m512 w0, __m512 w1, __m512 w2, __m512 w3) {
  for (int m = 0; m < MT; ++m) {
    const float* xm = x + m * ldx;
    a[m][0] = _mm512_fmadd_ps(_mm512_loadu_ps(xm), w0, a[m][0]);
    a[m][1] = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 16), w1, a[m][1]);
    a[m][2] = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 32), w2, a[m][2]);
    a[m][3] = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 48), w3, a[m][3]);
  }
}

// tot[m] += scale * (the group's four partial sums), then the partial sums restart at zero.
template <int MT>
inline void fold_group(__m512 (&a)[MT][4], float scale, __m512 (&tot)[MT]) {
  const __m512 sg = _mm512_set1_ps(scale);
  for (int m = 0; m < MT; ++m) {
    tot[m] = _mm512_fmadd_ps(_mm512_add_ps(_mm512_add_ps(a[m][0], a[m][1]), _mm512_add_ps(a[m][2], a[m][3])), sg, tot[m]);
    for (int u = 0; u < 4; ++u) a[m][u] = _mm512_setzero_ps();
  }
}

// MT rows of x against one row of q8; four independent accumulator chains hide the FMA latency.
template <int MT>
void q8_row(const float* x, int64_t ldx, const uint8_t* q, int64_t K, int64_t group, const float* s, const float* sz,
            const float* xsum, int64_t G, float* y, int64_t ldy) {
  __m512 tot[MT];
  for (int m = 0; m < MT; ++m) tot[m] = _mm512_setzero_ps();
  __m512 a[MT][4];  // the current group's partial sums (fold_group resets them)
  for (int m = 0; m < MT; ++m)
    for (int u = 0; u < 4; ++u) a[m][u] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * group, k1 = k0 + group;
    int64_t k = k0;
    for (; k + 64 <= k1; k += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(q + k + kPrefetchRows * K), _MM_HINT_T0);
      const __m512 w0 = load_u8x16(q + k), w1 = load_u8x16(q + k + 16), w2 = load_u8x16(q + k + 32), w3 = load_u8x16(q + k + 48);
      fma64<MT>(a, x + k, ldx, w0, w1, w2, w3);
    }
    for (; k < k1; k += 16) {
      const __m512 w0 = load_u8x16(q + k);
      for (int m = 0; m < MT; ++m) a[m][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * ldx + k), w0, a[m][0]);
    }
    fold_group<MT>(a, s[g], tot);
  }
  for (int m = 0; m < MT; ++m) y[m * ldy] = _mm512_reduce_add_ps(tot[m]) - zero_term(sz, xsum + m * G, G);
}

// MT rows of x against one row of q4 (chunks of 64 weights in 32 bytes).
template <int MT>
void q4_row(const float* x, int64_t ldx, const uint8_t* q, int64_t K, int64_t group, const float* s, const float* sz,
            const float* xsum, int64_t G, float* y, int64_t ldy) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  __m512 tot[MT];
  for (int m = 0; m < MT; ++m) tot[m] = _mm512_setzero_ps();
  if (group == 32) {
    // Each chunk spans two groups: the low nibbles are group 2c, the high nibbles group 2c + 1.
    for (int64_t k = 0; k < K; k += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(q + k / 2 + kPrefetchRows * K / 2), _MM_HINT_T0);
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k / 2));
      const __m256i lo = _mm256_and_si256(b, mask), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
      const __m512 w0 = u8x16(_mm256_castsi256_si128(lo)), w1 = u8x16(_mm256_extracti128_si256(lo, 1));
      const __m512 w2 = u8x16(_mm256_castsi256_si128(hi)), w3 = u8x16(_mm256_extracti128_si256(hi, 1));
      const __m512 s0 = _mm512_set1_ps(s[k / 32]), s1 = _mm512_set1_ps(s[k / 32 + 1]);
      for (int m = 0; m < MT; ++m) {
        const float* xm = x + m * ldx + k;
        const __m512 plo = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 16), w1, _mm512_mul_ps(_mm512_loadu_ps(xm), w0));
        const __m512 phi = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 48), w3, _mm512_mul_ps(_mm512_loadu_ps(xm + 32), w2));
        tot[m] = _mm512_fmadd_ps(phi, s1, _mm512_fmadd_ps(plo, s0, tot[m]));
      }
    }
  } else {
    __m512 a[MT][4];  // the current group's partial sums (fold_group resets them)
    for (int m = 0; m < MT; ++m)
      for (int u = 0; u < 4; ++u) a[m][u] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t k = g * group; k < (g + 1) * group; k += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(q + k / 2 + kPrefetchRows * K / 2), _MM_HINT_T0);
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k / 2));
        const __m256i lo = _mm256_and_si256(b, mask), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
        const __m512 w0 = u8x16(_mm256_castsi256_si128(lo)), w1 = u8x16(_mm256_extracti128_si256(lo, 1));
        const __m512 w2 = u8x16(_mm256_castsi256_si128(hi)), w3 = u8x16(_mm256_extracti128_si256(hi, 1));
        fma64<MT>(a, x + k, ldx, w0, w1, w2, w3);
      }
      fold_group<MT>(a, s[g], tot);
    }
  }
  for (int m = 0; m < MT; ++m) y[m * ldy] = _mm512_reduce_add_ps(tot[m]) - zero_term(sz, xsum + m * G, G);
}
#endif  // FALCONLM_AVX512

// Portable versions: the same arithmetic one weight at a time (the compiler vectorises what it can).
inline uint8_t q4_at(const uint8_t* q, int64_t k) {
  const uint8_t b = q[(k / 64) * 32 + (k % 32)];
  return (k % 64) < 32 ? (b & 0x0F) : (b >> 4);
}

template <int BITS>
void row_portable(const float* x, int64_t ldx, int64_t M, const uint8_t* q, int64_t K, int64_t group, const float* s,
                  const float* sz, const float* xsum, int64_t G, float* y, int64_t ldy) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    float tot = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      float d = 0.f;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) d += xm[k] * static_cast<float>(BITS == 8 ? q[k] : q4_at(q, k));
      tot += s[g] * d;
    }
    y[m * ldy] = tot - zero_term(sz, xsum + m * G, G);
  }
}

void check(const at::Tensor& x, const at::Tensor& q, const at::Tensor& s, const at::Tensor& sz, int64_t group, int64_t bits) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous fp32 (M, K)");
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kByte && q.is_contiguous(), "q must be contiguous uint8");
  const int64_t K = x.size(1), N = q.size(0);
  TORCH_CHECK(q.size(1) * (8 / bits) == K, "q does not match the input width");
  TORCH_CHECK(group > 0 && K % group == 0, "the group size must divide the input width");
  TORCH_CHECK(bits == 8 ? group % 16 == 0 : (K % 64 == 0 && (group == 32 || group % 64 == 0)), "unsupported group size for this layout");
  const int64_t G = K / group;
  TORCH_CHECK(s.scalar_type() == at::kFloat && sz.scalar_type() == at::kFloat && s.is_contiguous() && sz.is_contiguous(), "scales must be contiguous fp32");
  TORCH_CHECK(s.size(0) == N && s.size(1) == G && sz.size(0) == N && sz.size(1) == G, "scales must be (N, K / group)");
}

template <int BITS>
at::Tensor qmm(const at::Tensor& x, const at::Tensor& q, const at::Tensor& s, const at::Tensor& sz, int64_t group) {
  check(x, q, s, sz, group, BITS);
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0), G = K / group, row_bytes = q.size(1);
  auto y = at::empty({M, N}, x.options());
  const auto xsum = x.view({M, G, group}).sum(-1).contiguous();
  const float* X = x.data_ptr<float>();
  const uint8_t* Q = q.data_ptr<uint8_t>();
  const float* S = s.data_ptr<float>();
  const float* SZ = sz.data_ptr<float>();
  const float* XS = xsum.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* qn = Q + n * row_bytes;
      const float *sn = S + n * G, *szn = SZ + n * G;
#ifdef FALCONLM_AVX512
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) {
        if (BITS == 8) q8_row<4>(X + m * K, K, qn, K, group, sn, szn, XS + m * G, G, Y + m * N + n, N);
        else q4_row<4>(X + m * K, K, qn, K, group, sn, szn, XS + m * G, G, Y + m * N + n, N);
      }
      for (; m < M; ++m) {
        if (BITS == 8) q8_row<1>(X + m * K, K, qn, K, group, sn, szn, XS + m * G, G, Y + m * N + n, N);
        else q4_row<1>(X + m * K, K, qn, K, group, sn, szn, XS + m * G, G, Y + m * N + n, N);
      }
#else
      row_portable<BITS>(X, K, M, qn, K, group, sn, szn, XS, G, Y + n, N);
#endif
    }
  });
  return y;
}

// fp32 weights of rows [n0, n0 + rows): the prefill path dequantizes a block and hands it to a GEMM.
template <int BITS>
at::Tensor dequantize_rows(const at::Tensor& q, const at::Tensor& s, const at::Tensor& sz, int64_t group, int64_t n0, int64_t rows) {
  const int64_t K = q.size(1) * (8 / BITS), G = K / group, row_bytes = q.size(1);
  TORCH_CHECK(n0 >= 0 && rows >= 0 && n0 + rows <= q.size(0), "row range out of bounds");
  TORCH_CHECK(group > 0 && K % group == 0 && (BITS == 8 || (K % 64 == 0 && group % 32 == 0)), "unsupported group size for this layout");
  auto w = at::empty({rows, K}, s.options());
  const uint8_t* Q = q.data_ptr<uint8_t>();
  const float* S = s.data_ptr<float>();
  const float* SZ = sz.data_ptr<float>();
  float* W = w.data_ptr<float>();
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = n0 + r;
      const uint8_t* qn = Q + n * row_bytes;
      float* wr = W + r * K;
      if (BITS == 8) {
        for (int64_t g = 0; g < G; ++g) {
          const float sg = S[n * G + g], zg = SZ[n * G + g];
          for (int64_t k = g * group; k < (g + 1) * group; ++k) wr[k] = sg * static_cast<float>(qn[k]) - zg;
        }
      } else {
        // Chunk by chunk (64 weights in 32 bytes), so the inner loops are plain and vectorise.
        for (int64_t c = 0; c < K; c += 64) {
          const uint8_t* qc = qn + c / 2;
          const float s0 = S[n * G + c / group], z0 = SZ[n * G + c / group];
          const float s1 = S[n * G + (c + 32) / group], z1 = SZ[n * G + (c + 32) / group];
          for (int64_t j = 0; j < 32; ++j) wr[c + j] = s0 * static_cast<float>(qc[j] & 0x0F) - z0;
          for (int64_t j = 0; j < 32; ++j) wr[c + 32 + j] = s1 * static_cast<float>(qc[j] >> 4) - z1;
        }
      }
    }
  });
  return w;
}

bool has_avx512() {
#ifdef FALCONLM_AVX512
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(falconlm_quant, m) {
  m.def("q8_mm(Tensor x, Tensor q, Tensor s, Tensor sz, int group) -> Tensor", qmm<8>);
  m.def("q4_mm(Tensor x, Tensor q, Tensor s, Tensor sz, int group) -> Tensor", qmm<4>);
  m.def("q8_dequantize(Tensor q, Tensor s, Tensor sz, int group, int n0, int rows) -> Tensor", dequantize_rows<8>);
  m.def("q4_dequantize(Tensor q, Tensor s, Tensor sz, int group, int n0, int rows) -> Tensor", dequantize_rows<4>);
  m.def("vectorized() -> bool", has_avx512);
}
