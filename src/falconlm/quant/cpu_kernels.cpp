// CPU matmuls: int8 / int4 for the quantized linear layers and the LM-head screen, and fp32 for few rows.
//
// qa8_mm, the quantized layers' product (int8 and int4 weights, any number of rows): the input is
// quantized on the fly to int8 in groups of `act_group` consecutive values per row (one fp32 scale
// each, round to nearest, as llama.cpp's Q8_0 does for its dot products), and each group's integer
// dot products run on AVX512-VNNI (vpdpbusd: 64 byte products per instruction) with exact int32
// sums. So it computes y = x_hat W^T where x_hat is the quantized input and W the dequantized
// weight; the only fp32 rounding is in folding the groups' exact sums, in a fixed order per output,
// so a row's result does not depend on the other rows of the batch or on the thread count.
// `uniform_zero` (>= 0) says every output has that one zero point (symmetric weights), which saves
// a multiply per group in the fold; -1 reads them from `zeros`.
// Why: PyTorch 2.13's weight-only CPU kernels stream 1.8 GB/s (int8) and 0.33 GB/s (int4) against
// 22 GB/s for oneDNN's fp32 one, and a weight-only kernel that converts every weight to fp32 is
// compute-bound past a few rows (16 rows of a 3,072 x 768 layer: 1.65 ms, fp32 0.93); integer
// products take 0.13 ms there, and under half the fp32 GEMM's time at 256 rows
// (benchmarks/bench_quant.py --kernels). A register block is 4 rows x 4 tiles of 16 outputs: 16
// int32 accumulators fed by 8 loads per 16 products; the fp32 running sums live in a small buffer
// in L1, touched once per input group. The products are written as inline asm because GCC 12
// copies every accumulator on each step through the intrinsic (vpdpbusd has one destructive form),
// which made the inner loop twice as long (4 rows x 2 tiles then: 16-row decode linears 1.25x slower).
// AMX tiles were tried for many rows: with a scale per 32 inputs each 16 x 16 tile of sums has to
// be stored and folded with AVX-512 after every group, and a standalone 256-row kernel ran at
// 1.2-1.45x this one on one core, not enough to carry a second code path.
// Layout (in memory; the GPTQ on-disk form converts to and from it), N padded to Np = 16 * tiles:
//   int8: uint8 [tiles][K/4][16][4]: a 64-byte vector holds 4 consecutive weights of 16 outputs.
//   int4: uint8 [tiles][K/8][16][4]: the low nibbles are weights k..k+3 and the high nibbles
//         k+4..k+7 of the same 16 outputs (two VNNI vectors from one load and two masks).
//   scales: fp32 [G][Np]; zeros: int16 [G][Np] (integer zero points; GPTQ v1 files can hold 2^bits), and
//   W[n, k] = scales[g, n] * (q[n, k] - zeros[g, n]), g = k / group, G = K / group.
// The zero point is taken out exactly in integers: sum (q - z) * xq = sum q * xq - z * sum xq.
//
// f32_mm, y = x W^T in fp32 for a few rows (decode steps), W the layer's own (N, K) row-major
// weight: no repacking, so no second copy. oneDNN streams a 3,072 x 768 weight at 22 GB/s for one
// row but 15 GB/s for 4 and 12 for 16 rows (2 threads here); this kernel reads each weight once
// from DRAM for all the rows, prefetching the next block of outputs while it computes one, and
// runs at 25 / 24 / 15 GB/s there (benchmarks/bench_quant.py --kernels). Past about 24 rows
// oneDNN's blocked GEMM is faster, and model/linear.py hands those to it. Each output is one
// 16-lane fp32 dot product over K in order and a fixed reduction, so a row's result does not depend
// on the other rows or the thread count; blocks of outputs are handed to threads dynamically, so
// a core taken by another process (the HTTP thread, a client) delays one block, not every op.
//
// decode_attention, the engine's decode rows (one query token each) against their keys and values
// read in place from the paged pool through each row's slot list: no gathered copy of every row's
// context (which cost more than the attention itself, and rereads a shared prefix once per row).
// One task per (row, KV head): the group's query heads score every key (16 keys' dot products at
// once, summed by a fixed transpose-add tree), softmax in fp32 with a vectorised exp, then the
// weighted sum of the values. Rows are independent, so a row's output does not depend on the batch.
//
// row_range and columns_reaching, the head screen's two passes over its (rows, vocab) scores (fp32
// or bf16): each row's minimum and maximum (NaN when a row holds a NaN or an infinity), then which
// vocabulary columns reach any row's threshold. torch's aminmax, ge and any took 4 ms of a 32-row
// decode step for the same answer.
//
// rope, the rotary embedding of one (B, H, T, D) view (any strides but a contiguous last dim) into a
// new contiguous tensor: x * cos + rotate_half(x) * sin in one pass, where torch takes seven ops.
//
// gelu, exact (erf) GELU for fp32 inference: one vector formula for every value (Abramowitz & Stegun's
// erf with the softmax's exp), within 4.7e-7 of float64 GELU where torch's own is within 1.2e-6.
//
// decode_layer, one whole decoder block for the decode rows of a step (one new token each): the
// block's Python forward op for op, with the kernels above, so the same bits without its per-op cost.
//
// q8_mm, the LM-head screen's int8 product: fp32 input against uint8 [N, K] rows with group
// scales, w[n, k] = s[n, g] * q[n, k] - sz[n, g], so y = sum_g s * (x . q) - sum_g sz * xsum.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define FALCONLM_AVX512 1
#endif

#ifdef FALCONLM_AVX512
namespace {
// The lanes of a 16-wide vector that hold one of the `left` remaining values.
inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1); }
}  // namespace
#endif

namespace {

// Rows of the output each parallel task takes in q8_mm: enough to amortise the task, few enough to balance.
constexpr int64_t kGrain = 16;
// Rows ahead whose weights are prefetched while one row is computed: DRAM latency is the limit at batch 1.
constexpr int64_t kPrefetchRows = 8;

inline float zero_term(const float* sz, const float* xsum, int64_t G) {
  float t = 0.f;
  for (int64_t g = 0; g < G; ++g) t += sz[g] * xsum[g];
  return t;
}


// ----------------------------------------------------------------------------- qa8_mm

// One row's input quantized group by group: xq = round(x / sx) with sx = max|x| / 127 (0 for an
// all-zero group), and each group's zero-point offset for the fold: -zero * sum xq when every output
// has that one zero point, -sum xq otherwise (the kernel multiplies it by each output's zero).
void quantize_row(const float* x, int64_t K, int64_t ag, int32_t zero, int8_t* xq, float* sx, int32_t* xoff) {
  int64_t a = 0;
#ifdef FALCONLM_AVX512
  // 16 values at a time, the same arithmetic: an exact division and round-half-even conversion (the
  // default rounding mode, as nearbyint), so it gives the scalar loop's bits at a tenth of its time.
  if (ag % 16 == 0) {
    const __m512 lim = _mm512_set1_ps(127.f);
    for (; a < K / ag; ++a) {
      const float* xa = x + a * ag;
      __m512 mx = _mm512_setzero_ps();
      for (int64_t k = 0; k < ag; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xa + k)));
      const float scale = _mm512_reduce_max_ps(mx) / 127.f;
      __m512i sum = _mm512_setzero_si512();
      for (int64_t k = 0; k < ag; k += 16) {
        __m512i v = _mm512_setzero_si512();
        if (scale > 0.f) {
          const __m512 r = _mm512_div_ps(_mm512_loadu_ps(xa + k), _mm512_set1_ps(scale));
          v = _mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(r, lim), -lim));
        }
        _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + a * ag + k), _mm512_cvtsepi32_epi8(v));
        sum = _mm512_add_epi32(sum, v);
      }
      const int32_t total = _mm512_reduce_add_epi32(sum);
      sx[a] = scale;
      xoff[a] = zero >= 0 ? -total * zero : -total;
    }
  }
#endif
  for (; a < K / ag; ++a) {
    const float* xa = x + a * ag;
    float amax = 0.f;
    for (int64_t k = 0; k < ag; ++k) amax = std::max(amax, std::fabs(xa[k]));
    const float scale = amax / 127.f;
    int32_t sum = 0;
    for (int64_t k = 0; k < ag; ++k) {
      const int32_t v = scale > 0.f ? static_cast<int32_t>(std::nearbyint(xa[k] / scale)) : 0;
      xq[a * ag + k] = static_cast<int8_t>(std::min(127, std::max(-127, v)));
      sum += xq[a * ag + k];
    }
    sx[a] = scale;
    xoff[a] = zero >= 0 ? -sum * zero : -sum;
  }
}

struct A8Problem {
  const int8_t* xq;     // (M, K) quantized input
  const float* sx;      // (M, Ga) its group scales
  const int32_t* xoff;  // (M, Ga) its groups' zero-point offsets (see quantize_row)
  const uint8_t* q;     // packed weights
  const float* st;      // (G, Np)
  const int16_t* zt;    // (G, Np)
  float* y;             // (M, N)
  int64_t M, K, N, Np, group, ag, bits;
  bool uniform_zero;    // one zero point for every output and group (symmetric weights): xoff holds -z * sum xq
  int64_t tile_bytes() const { return bits == 8 ? K * 16 : K * 8; }
};

// The fold, the same for every path and batch size, per output (m, n):
//   per input group a:   t = fma(float(sum_k q * xq - z * sum_k xq), sx[m, a], t)   (integers exact)
//   per weight group g:  y = fma(t, s[g, n], y), t = 0
// The integer sum starts from the zero-point term, so the products land on the exact difference.
#if defined(FALCONLM_AVX512) && defined(__AVX512VNNI__)
#define FALCONLM_VNNI 1
// acc + the byte products of u (unsigned) and s (signed), in place. Through the intrinsic, GCC 12
// copies every accumulator of a register block on each step (vpdpbusd has one destructive form),
// which doubled the instructions of the inner loop; the tied asm operand keeps each in its register.
inline __m512i dpbusd(__m512i acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
  return acc;
}

// Tiles of 16 outputs per register block, and rows per block: 16 int32 accumulators.
constexpr int kTilesPerBlock = 4;
constexpr int kRowsPerBlock = 4;

// MT rows of the input (from m0) against NT tiles of 16 outputs (from t0), input groups [a0, a1)
// only: a K block. Only the integer accumulators are held in registers; the two running fp32 sums
// of each output (y, t) live in `sums`, rows of 2 * NT vectors, which stays in L1 and is read and
// written once per input group (a fused multiply-add from memory and a store), not per product.
// That leaves the registers for 4 x 4 accumulators: 16 products per 8 loads.
template <int BITS, int MT, int NT, bool UNIFORM, bool ONE_GROUP>
void a8_tile(const A8Problem& p, int64_t m0, int64_t t0, int64_t a0, int64_t a1, float* sums) {
  const int64_t K = p.K, Ga = K / p.ag, per_group = p.group / p.ag;
  const uint8_t* w[NT];
  for (int j = 0; j < NT; ++j) w[j] = p.q + (t0 + j) * p.tile_bytes();
  float* ys = sums + m0 * 2 * NT * 16;  // row m: y of tile j at (m * 2 * NT + j) * 16, t at (m * 2 * NT + NT + j) * 16
  if (a0 == 0)
    for (int m = 0; m < MT; ++m)
      for (int j = 0; j < 2 * NT; ++j) _mm512_storeu_ps(ys + (m * 2 * NT + j) * 16, _mm512_setzero_ps());
  const __m512i nib = _mm512_set1_epi8(0x0F);
  for (int64_t a = a0; a < a1; ++a) {
    const int64_t g = a / per_group;
    __m512i acc[MT][NT];
    if (UNIFORM) {
      for (int m = 0; m < MT; ++m) {
        const __m512i off = _mm512_set1_epi32(p.xoff[(m0 + m) * Ga + a]);
        for (int j = 0; j < NT; ++j) acc[m][j] = off;
      }
    } else {
      __m512i zv[NT];
      for (int j = 0; j < NT; ++j) zv[j] = _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.zt + g * p.Np + (t0 + j) * 16)));
      for (int m = 0; m < MT; ++m) {
        const __m512i off = _mm512_set1_epi32(p.xoff[(m0 + m) * Ga + a]);
        for (int j = 0; j < NT; ++j) acc[m][j] = _mm512_mullo_epi32(zv[j], off);
      }
    }
    if (BITS == 8) {
      for (int64_t c = a * p.ag / 4; c < (a + 1) * p.ag / 4; ++c) {
        __m512i wv[NT];
        for (int j = 0; j < NT; ++j) wv[j] = _mm512_loadu_si512(w[j] + c * 64);
        for (int m = 0; m < MT; ++m) {
          int32_t xi;
          std::memcpy(&xi, p.xq + (m0 + m) * K + 4 * c, 4);
          const __m512i xb = _mm512_set1_epi32(xi);
          for (int j = 0; j < NT; ++j) acc[m][j] = dpbusd(acc[m][j], wv[j], xb);
        }
      }
    } else {
      for (int64_t c = a * p.ag / 8; c < (a + 1) * p.ag / 8; ++c) {
        __m512i lo[NT], hi[NT];
        for (int j = 0; j < NT; ++j) {
          const __m512i b = _mm512_loadu_si512(w[j] + c * 64);
          lo[j] = _mm512_and_si512(b, nib);
          hi[j] = _mm512_and_si512(_mm512_srli_epi16(b, 4), nib);
        }
        for (int m = 0; m < MT; ++m) {
          int32_t x0, x1;
          std::memcpy(&x0, p.xq + (m0 + m) * K + 8 * c, 4);
          std::memcpy(&x1, p.xq + (m0 + m) * K + 8 * c + 4, 4);
          const __m512i b0 = _mm512_set1_epi32(x0), b1 = _mm512_set1_epi32(x1);
          for (int j = 0; j < NT; ++j) acc[m][j] = dpbusd(dpbusd(acc[m][j], lo[j], b0), hi[j], b1);
        }
      }
    }
    for (int m = 0; m < MT; ++m) {
      const __m512 sxm = _mm512_set1_ps(p.sx[(m0 + m) * Ga + a]);
      float* tm = ys + (m * 2 * NT + NT) * 16;
      for (int j = 0; j < NT; ++j) _mm512_storeu_ps(tm + j * 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m][j]), sxm, _mm512_loadu_ps(tm + j * 16)));
    }
    if (!ONE_GROUP && (a + 1) % per_group == 0) {
      for (int j = 0; j < NT; ++j) {
        const __m512 sv = _mm512_loadu_ps(p.st + g * p.Np + (t0 + j) * 16);
        for (int m = 0; m < MT; ++m) {
          float* ym = ys + m * 2 * NT * 16;
          _mm512_storeu_ps(ym + j * 16, _mm512_fmadd_ps(_mm512_loadu_ps(ym + (NT + j) * 16), sv, _mm512_loadu_ps(ym + j * 16)));
          _mm512_storeu_ps(ym + (NT + j) * 16, _mm512_setzero_ps());
        }
      }
    }
  }
  if (a1 < Ga) return;
  for (int j = 0; j < NT; ++j) {
    const int64_t n0 = (t0 + j) * 16, left = std::min<int64_t>(16, p.N - n0);
    const __mmask16 mask = tail_mask(left);
    // One weight group: y = fma(t, s, 0), the general fold's last step, rounds t * s once.
    const __m512 sv = ONE_GROUP ? _mm512_loadu_ps(p.st + (t0 + j) * 16) : _mm512_setzero_ps();
    for (int m = 0; m < MT; ++m) {
      const float* ym = ys + m * 2 * NT * 16;
      const __m512 out = ONE_GROUP ? _mm512_mul_ps(_mm512_loadu_ps(ym + (NT + j) * 16), sv) : _mm512_loadu_ps(ym + j * 16);
      _mm512_mask_storeu_ps(p.y + (m0 + m) * p.N + n0, mask, out);
    }
  }
}

// Weight bytes of a tile block's K block: small enough to stay in L1 while every row block reads it
// (a 768-output, 3,072-input int8 layer at 256 rows: 2.1 -> 1.6 ms with 2 threads).
constexpr int64_t kBlockBytes = 16 * 1024;

template <int BITS, int NT, bool UNIFORM, bool ONE_GROUP>
void a8_rows(const A8Problem& p, int64_t t0, std::vector<float>& sums) {
  constexpr int MT = kRowsPerBlock;
  const int64_t Ga = p.K / p.ag;
  // One K block unless the rows are many and the block's weights overflow L1.
  int64_t step = Ga;
  if (p.M > MT && p.tile_bytes() * NT > kBlockBytes) step = std::max<int64_t>(1, kBlockBytes / NT / (p.tile_bytes() / Ga));
  sums.resize(p.M * 2 * NT * 16);
  for (int64_t a0 = 0; a0 < Ga; a0 += step) {
    const int64_t a1 = std::min(Ga, a0 + step);
    int64_t m = 0;
    for (; m + MT <= p.M; m += MT) a8_tile<BITS, MT, NT, UNIFORM, ONE_GROUP>(p, m, t0, a0, a1, sums.data());
    switch (p.M - m) {
      case 3: a8_tile<BITS, 3, NT, UNIFORM, ONE_GROUP>(p, m, t0, a0, a1, sums.data()); break;
      case 2: a8_tile<BITS, 2, NT, UNIFORM, ONE_GROUP>(p, m, t0, a0, a1, sums.data()); break;
      case 1: a8_tile<BITS, 1, NT, UNIFORM, ONE_GROUP>(p, m, t0, a0, a1, sums.data()); break;
      default: break;
    }
  }
}

template <int BITS, bool UNIFORM, bool ONE_GROUP, int NT = kTilesPerBlock>
void a8_block(const A8Problem& p, int64_t t0, int64_t nt, std::vector<float>& sums) {
  if constexpr (NT > 0) {
    if (nt == NT) a8_rows<BITS, NT, UNIFORM, ONE_GROUP>(p, t0, sums);
    else a8_block<BITS, UNIFORM, ONE_GROUP, NT - 1>(p, t0, nt, sums);
  }
}

template <int BITS, bool UNIFORM, bool ONE_GROUP>
void a8_all(const A8Problem& p) {
  const int64_t tiles = p.Np / 16, blocks = (tiles + kTilesPerBlock - 1) / kTilesPerBlock;
  // Blocks of outputs are handed to threads dynamically: a core taken by another process delays one block.
  const bool parallel = p.M * p.N * p.K >= (int64_t{1} << 18) && !at::in_parallel_region();
#pragma omp parallel num_threads(at::get_num_threads()) if (parallel)
  {
    std::vector<float> sums;
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t t0 = b * kTilesPerBlock;
      a8_block<BITS, UNIFORM, ONE_GROUP>(p, t0, std::min<int64_t>(kTilesPerBlock, tiles - t0), sums);
    }
  }
}
#endif

// The same arithmetic one product at a time, for CPUs without AVX512-VNNI: identical results.
inline uint8_t packed_at(const A8Problem& p, int64_t n, int64_t k) {
  const uint8_t* tile = p.q + (n / 16) * p.tile_bytes();
  const int64_t lane = n % 16;
  if (p.bits == 8) return tile[(k / 4) * 64 + lane * 4 + k % 4];
  const uint8_t b = tile[(k / 8) * 64 + lane * 4 + k % 4];
  return (k % 8) < 4 ? (b & 0x0F) : (b >> 4);
}

void a8_portable(const A8Problem& p, int64_t t0) {
  const int64_t Ga = p.K / p.ag, per_group = p.group / p.ag;
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t n = t0 * 16; n < std::min(p.N, (t0 + 1) * 16); ++n) {
      float y = 0.f, t = 0.f;
      for (int64_t a = 0; a < Ga; ++a) {
        const int64_t g = a / per_group;
        const int32_t off = p.xoff[m * Ga + a];
        int32_t acc = p.uniform_zero ? off : static_cast<int32_t>(p.zt[g * p.Np + n]) * off;
        for (int64_t k = a * p.ag; k < (a + 1) * p.ag; ++k) acc += static_cast<int32_t>(packed_at(p, n, k)) * p.xq[m * p.K + k];
        t = std::fma(static_cast<float>(acc), p.sx[m * Ga + a], t);
        if ((a + 1) % per_group == 0) {
          y = std::fma(t, p.st[g * p.Np + n], y);
          t = 0.f;
        }
      }
      p.y[m * p.N + n] = y;
    }
  }
}

at::Tensor qa8_mm(const at::Tensor& x, const at::Tensor& q, const at::Tensor& st, const at::Tensor& zt, int64_t bits, int64_t group, int64_t act_group, int64_t N, int64_t uniform_zero) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous fp32 (M, K)");
  TORCH_CHECK(bits == 8 || bits == 4, "bits must be 8 or 4");
  const int64_t M = x.size(0), K = x.size(1), Np = st.size(1);
  TORCH_CHECK(K % 8 == 0 && act_group % 8 == 0 && group % act_group == 0 && K % group == 0, "unsupported group sizes for this layout");
  TORCH_CHECK(Np % 16 == 0 && N <= Np && N > Np - 16, "scales must be (K / group, N rounded up to 16)");
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.numel() == Np * K * bits / 8, "packed weights do not match the input width");
  TORCH_CHECK(st.scalar_type() == at::kFloat && st.is_contiguous() && st.size(0) == K / group, "scales must be contiguous fp32 (K / group, Np)");
  TORCH_CHECK(zt.scalar_type() == at::kShort && zt.is_contiguous() && zt.sizes() == st.sizes(), "zeros must be contiguous int16 shaped like the scales");
  const int64_t Ga = K / act_group;
  auto y = at::empty({M, N}, x.options());
  auto xq = at::empty({M, K}, x.options().dtype(at::kChar));
  auto sx = at::empty({M, Ga}, x.options());
  auto xoff = at::empty({M, Ga}, x.options().dtype(at::kInt));
  const float* X = x.data_ptr<float>();
  at::parallel_for(0, M, 4, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      quantize_row(X + m * K, K, act_group, static_cast<int32_t>(uniform_zero), xq.data_ptr<int8_t>() + m * K, sx.data_ptr<float>() + m * Ga,
                   xoff.data_ptr<int32_t>() + m * Ga);
  });
  const A8Problem p{xq.data_ptr<int8_t>(), sx.data_ptr<float>(), xoff.data_ptr<int32_t>(), q.data_ptr<uint8_t>(), st.data_ptr<float>(),
                    zt.data_ptr<int16_t>(), y.data_ptr<float>(), M, K, N, Np, group, act_group, bits, uniform_zero >= 0};
#ifdef FALCONLM_VNNI
  const bool one_group = group == K;
  if (bits == 8) {
    if (p.uniform_zero) one_group ? a8_all<8, true, true>(p) : a8_all<8, true, false>(p);
    else one_group ? a8_all<8, false, true>(p) : a8_all<8, false, false>(p);
  } else {
    if (p.uniform_zero) one_group ? a8_all<4, true, true>(p) : a8_all<4, true, false>(p);
    else one_group ? a8_all<4, false, true>(p) : a8_all<4, false, false>(p);
  }
#else
  const int64_t tiles = Np / 16;
  at::parallel_for(0, tiles, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) a8_portable(p, t);
  });
#endif
  return y;
}

// ----------------------------------------------------------------------------- f32_mm

#ifdef FALCONLM_AVX512
constexpr int kF32Rows = 6;  // rows per register block: 6 x 4 accumulators + 4 weight vectors + 1 input
constexpr int kF32Outs = 4;  // outputs per block (4 weight rows, each streamed once)
constexpr int64_t kF32Task = 8;  // output blocks per dynamically scheduled task

template <int R, int O>
inline void f32_block(const float* x, int64_t K, const float* w, float* y, int64_t N, const float* next) {
  __m512 acc[R][O];
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < O; ++o) acc[r][o] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[O];
    for (int o = 0; o < O; ++o) wv[o] = _mm512_loadu_ps(w + o * K + k);
    if (next != nullptr)  // one line of each of the next block's weight rows per 16 inputs: the whole block by the end
      for (int o = 0; o < kF32Outs; ++o) _mm_prefetch(reinterpret_cast<const char*>(next + o * K + k), _MM_HINT_T0);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + r * K + k);
      for (int o = 0; o < O; ++o) acc[r][o] = _mm512_fmadd_ps(xv, wv[o], acc[r][o]);
    }
  }
  if (k < K) {  // the last K % 16 inputs, masked (zeros add nothing)
    const __mmask16 m = tail_mask(K - k);
    __m512 wv[O];
    for (int o = 0; o < O; ++o) wv[o] = _mm512_maskz_loadu_ps(m, w + o * K + k);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + r * K + k);
      for (int o = 0; o < O; ++o) acc[r][o] = _mm512_fmadd_ps(xv, wv[o], acc[r][o]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < O; ++o) y[r * N + o] = _mm512_reduce_add_ps(acc[r][o]);
}

// The last M % kF32Rows rows and N % kF32Outs outputs: the block shape picked at run time.
template <int O, int R = kF32Rows - 1>
inline void f32_rest(int64_t rows, const float* x, int64_t K, const float* w, float* y, int64_t N, const float* next) {
  if constexpr (R > 0) {
    if (rows == R) f32_block<R, O>(x, K, w, y, N, next);
    else f32_rest<O, R - 1>(rows, x, K, w, y, N, next);
  }
}

template <int O>
inline void f32_rows(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, const float* next) {
  int64_t m = 0;
  // The first row block prefetches the next output block; the later ones find this block's weights in L1.
  for (; m + kF32Rows <= M; m += kF32Rows) f32_block<kF32Rows, O>(x + m * K, K, w, y + m * N, N, m == 0 ? next : nullptr);
  if (m < M) f32_rest<O>(M - m, x + m * K, K, w, y + m * N, N, m == 0 ? next : nullptr);
}

template <int O = kF32Outs>
inline void f32_outs(int64_t outs, const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, const float* next) {
  if constexpr (O > 0) {
    if (outs == O) f32_rows<O>(x, M, K, w, y, N, next);
    else f32_outs<O - 1>(outs, x, M, K, w, y, N, next);
  }
}
#endif

bool has_f32() {
#ifdef FALCONLM_AVX512
  return true;
#else
  return false;
#endif
}

at::Tensor f32_mm(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(has_f32(), "f32_mm needs AVX-512 (check has_f32() first)");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "f32_mm: x (M, K) and w (N, K) expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && x.is_contiguous() && w.is_contiguous(), "f32_mm: contiguous fp32 tensors expected");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = at::empty({M, N}, x.options());
#ifdef FALCONLM_AVX512
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t blocks = (N + kF32Outs - 1) / kF32Outs, tasks = (blocks + kF32Task - 1) / kF32Task;
  const bool parallel = M * N * K >= (int64_t{1} << 18) && !at::in_parallel_region();
#pragma omp parallel for schedule(dynamic, 1) num_threads(at::get_num_threads()) if (parallel)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b1 = std::min(blocks, (t + 1) * kF32Task);
    for (int64_t b = t * kF32Task; b < b1; ++b) {
      const int64_t n = b * kF32Outs, outs = std::min<int64_t>(kF32Outs, N - n);
      const float* next = (b + 1 < b1 && n + 2 * kF32Outs <= N) ? wp + (n + kF32Outs) * K : nullptr;
      f32_outs(outs, xp, M, K, wp + n * K, yp + n, N, next);
    }
  }
#endif
  return y;
}



// ----------------------------------------------------------------------------- decode_attention

#ifdef FALCONLM_AVX512
// Lane j = the sum of v[j]'s 16 lanes: a transpose-add tree (4 levels of shuffles), then the lane order fixed.
inline __m512 sum16(const __m512* v) {
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88), _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44), _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE));
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), z);
}

// exp(x) for x <= 0 (softmax after the max is taken out): 2^n * e^r, |r| <= ln2 / 2, a degree-6
// Taylor polynomial for e^r (relative error under 2e-7); below -87 the result is 0.
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 in two parts: exact n * hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 y = _mm512_set1_ps(1.0f / 720);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 120));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 24));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 6));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~under), _mm512_scalef_ps(y, n));
}

// out[g] = sum_s p[g, s] v_s for NG query heads (NG known at compile time, so every accumulator
// stays in a register: with a run-time count GCC kept them on the stack, 3x slower).
template <int DC, int NG>
void weigh_block(const float* p, int64_t ldp, const float* values, int64_t slot_stride, const int64_t* slots, int64_t S, float* out) {
  __m512 acc[NG][DC];
  for (int g = 0; g < NG; ++g)
    for (int c = 0; c < DC; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int64_t s = 0; s < S; ++s) {
    const float* v = values + slots[s] * slot_stride;
    __m512 vv[DC];
    for (int c = 0; c < DC; ++c) vv[c] = _mm512_loadu_ps(v + c * 16);
    for (int g = 0; g < NG; ++g) {
      const __m512 pw = _mm512_set1_ps(p[g * ldp + s]);
      for (int c = 0; c < DC; ++c) acc[g][c] = _mm512_fmadd_ps(pw, vv[c], acc[g][c]);
    }
  }
  for (int g = 0; g < NG; ++g)
    for (int c = 0; c < DC; ++c) _mm512_storeu_ps(out + g * DC * 16 + c * 16, acc[g][c]);
}

// The first `heads` (1..NG) query heads' weighted sums, by the block shape picked at run time.
template <int DC, int NG>
void weigh_values(int64_t heads, const float* p, int64_t ldp, const float* values, int64_t slot_stride, const int64_t* slots, int64_t S, float* out) {
  if constexpr (NG > 0) {
    if (heads == NG) weigh_block<DC, NG>(p, ldp, values, slot_stride, slots, S, out);
    else weigh_values<DC, NG - 1>(heads, p, ldp, values, slot_stride, slots, S, out);
  }
}

// Query heads per KV head from which the scores are taken against transposed keys: the transpose
// (4 shuffle passes per 16 x 16) is paid once per block of keys, and each head's 16 scores are then
// D plain multiply-adds in lanes of keys, with no reduction across lanes (2.5x fewer operations at
// 12 heads than a dot product per key summed by sum16).
constexpr int64_t kTransposeHeads = 4;
constexpr int kScoreHeads = 12;  // accumulators per pass

// kt[d * 16 + j] = key j's value d, for the block's 16 keys.
template <int DC>
inline void transpose_keys(const float* const* kptr, float* kt) {
  for (int c = 0; c < DC; ++c) {
    __m512 r[16], t[16];
    for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_ps(kptr[j] + c * 16);
    for (int j = 0; j < 16; j += 2) {
      t[j] = _mm512_unpacklo_ps(r[j], r[j + 1]);
      t[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]);
    }
    for (int j = 0; j < 16; j += 4) {
      r[j] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[j]), _mm512_castps_pd(t[j + 2])));
      r[j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[j]), _mm512_castps_pd(t[j + 2])));
      r[j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[j + 1]), _mm512_castps_pd(t[j + 3])));
      r[j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[j + 1]), _mm512_castps_pd(t[j + 3])));
    }
    for (int j = 0; j < 4; ++j) {
      t[j] = _mm512_shuffle_f32x4(r[j], r[j + 4], 0x88);
      t[j + 4] = _mm512_shuffle_f32x4(r[j], r[j + 4], 0xDD);
      t[j + 8] = _mm512_shuffle_f32x4(r[j + 8], r[j + 12], 0x88);
      t[j + 12] = _mm512_shuffle_f32x4(r[j + 8], r[j + 12], 0xDD);
    }
    for (int j = 0; j < 4; ++j) {
      r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
      r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xDD);
      r[j + 4] = _mm512_shuffle_f32x4(t[j + 4], t[j + 12], 0x88);
      r[j + 12] = _mm512_shuffle_f32x4(t[j + 4], t[j + 12], 0xDD);
    }
    for (int i = 0; i < 16; ++i) _mm512_store_ps(kt + (c * 16 + i) * 16, r[i]);  // r[i]: dim c * 16 + i of keys 0..15
  }
}

// scores[g, 0..15] = q_g . k_j for NG heads against one transposed block, summed over d in order.
template <int DC, int NG>
inline void score_block(const float* q, const float* kt, float* out, int64_t ld) {
  constexpr int D = DC * 16;
  __m512 acc[NG];
  for (int g = 0; g < NG; ++g) acc[g] = _mm512_mul_ps(_mm512_set1_ps(q[g * D]), _mm512_load_ps(kt));
  for (int d = 1; d < D; ++d) {
    const __m512 k = _mm512_load_ps(kt + d * 16);
    for (int g = 0; g < NG; ++g) acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[g * D + d]), k, acc[g]);
  }
  for (int g = 0; g < NG; ++g) _mm512_storeu_ps(out + g * ld, acc[g]);
}

template <int DC, int NG>
inline void score_heads(int64_t heads, const float* q, const float* kt, float* out, int64_t ld) {
  if constexpr (NG > 0) {
    if (heads == NG) score_block<DC, NG>(q, kt, out, ld);
    else score_heads<DC, NG - 1>(heads, q, kt, out, ld);
  }
}

// One row and one KV head: G query heads (already scaled) of DC * 16 dims against S keys.
template <int DC>
void attend_row(const float* q, int64_t G, const float* keys, const float* values, int64_t slot_stride, const int64_t* slots, int64_t S,
                float* out, std::vector<float>& scores) {
  constexpr int64_t D = DC * 16;
  const int64_t Sp = (S + 15) / 16 * 16;
  scores.resize(G * Sp);
  const float* kptr[16];
  alignas(64) float kt[DC * 16 * 16];
  for (int64_t s0 = 0; s0 < S; s0 += 16) {
    // A last block of fewer than 16 keys repeats its last key: the extra scores lie past S, where
    // the softmax and the weighted sum never look, and the loop below needs no branch per key.
    const int64_t n = std::min<int64_t>(16, S - s0);
    for (int64_t j = 0; j < 16; ++j) kptr[j] = keys + slots[s0 + std::min(j, n - 1)] * slot_stride;
    if (G >= kTransposeHeads) {
      transpose_keys<DC>(kptr, kt);
      for (int64_t g0 = 0; g0 < G; g0 += kScoreHeads) score_heads<DC, kScoreHeads>(std::min<int64_t>(kScoreHeads, G - g0), q + g0 * D, kt, scores.data() + g0 * Sp + s0, Sp);
      continue;
    }
    for (int64_t g = 0; g < G; ++g) {  // the block's keys stay in L1 across the group's query heads
      __m512 qv[DC], acc[16];
      for (int c = 0; c < DC; ++c) qv[c] = _mm512_loadu_ps(q + g * D + c * 16);
      for (int j = 0; j < 16; ++j) {
        acc[j] = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kptr[j]));
        for (int c = 1; c < DC; ++c) acc[j] = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kptr[j] + c * 16), acc[j]);
      }
      _mm512_storeu_ps(scores.data() + g * Sp + s0, sum16(acc));
    }
  }
  for (int64_t g = 0; g < G; ++g) {  // softmax over the S real scores of each query head
    float* sc = scores.data() + g * Sp;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t s = 0; s < S; s += 16) {
      const __mmask16 m = tail_mask(S - s);
      mx = _mm512_mask_max_ps(mx, m, mx, _mm512_loadu_ps(sc + s));
    }
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 total = _mm512_setzero_ps();
    for (int64_t s = 0; s < S; s += 16) {
      const __mmask16 m = tail_mask(S - s);
      const __m512 e = _mm512_maskz_mov_ps(m, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sc + s), top)));
      _mm512_storeu_ps(sc + s, e);
      total = _mm512_add_ps(total, e);
    }
    const float inv = 1.0f / _mm512_reduce_add_ps(total);
    for (int64_t s = 0; s < S; s += 16) _mm512_storeu_ps(sc + s, _mm512_mul_ps(_mm512_loadu_ps(sc + s), _mm512_set1_ps(inv)));
  }
  constexpr int QB = DC <= 4 ? 24 / DC : 1;  // query heads whose outputs stay in registers at once
  for (int64_t g0 = 0; g0 < G; g0 += QB) weigh_values<DC, QB>(std::min<int64_t>(QB, G - g0), scores.data() + g0 * Sp, Sp, values, slot_stride, slots, S, out + g0 * D);
}
#endif

// q (R, H, D) fp32; keys and values: one layer's contiguous storage, where the key of slot s and KV
// head h starts at s * slot_stride + h * head_stride (the paged pool (slots, KV, D): KV * D and D; a
// (B, KV, T, D) cache: D and T * D, with slot b * KV * T + t); slots (R, S) int64, row r's first
// lengths[r] entries being its context, or (1, S), one list whose first lengths[r] entries are row
// r's (the tokens of a prefill chunk, each attending its own prefix of the chunk's context).
// Returns (R, H, D). D must be 16, 32, 48, 64, 96 or 128.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& slots, const at::Tensor& lengths, double scale,
                            int64_t kv_heads, int64_t slot_stride, int64_t head_stride) {
  TORCH_CHECK(has_f32(), "decode_attention needs AVX-512 (check has_f32() first)");
  TORCH_CHECK(q.dim() == 3 && keys.sizes() == values.sizes() && slots.dim() == 2 && lengths.dim() == 1, "decode_attention: bad ranks");
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2), KV = kv_heads;
  TORCH_CHECK(KV >= 1 && H % KV == 0 && (slots.size(0) == R || slots.size(0) == 1) && lengths.size(0) == R, "decode_attention: shapes disagree");
  TORCH_CHECK(q.scalar_type() == at::kFloat && keys.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat && slots.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong, "decode_attention: dtypes");
  TORCH_CHECK(q.is_contiguous() && keys.is_contiguous() && values.is_contiguous() && slots.is_contiguous() && lengths.is_contiguous(), "decode_attention: contiguous tensors expected");
  const at::Tensor qs = q * scale;
  auto out = at::empty_like(q);
#ifdef FALCONLM_AVX512
  const int64_t G = H / KV, S = slots.size(1);
  const float* qp = qs.data_ptr<float>();
  const float* kp = keys.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  TORCH_CHECK(D == 16 || D == 32 || D == 48 || D == 64 || D == 96 || D == 128, "decode_attention: head size must be 16, 32, 48, 64, 96 or 128");
  // Every read must land inside the storage: slot * slot_stride + head * head_stride + D <= numel.
  int64_t top = 0, bottom = 0;
  const int64_t slot_rows = slots.size(0), row_step = slot_rows == 1 ? 0 : S;
  for (int64_t i = 0; i < slot_rows * S; ++i) top = std::max(top, sp[i]), bottom = std::min(bottom, sp[i]);
  TORCH_CHECK(bottom >= 0 && slot_stride >= D && head_stride >= 0 && top * slot_stride + (KV - 1) * head_stride + D <= keys.numel(), "decode_attention: a slot is outside the cache");
  for (int64_t r = 0; r < R; ++r) TORCH_CHECK(lp[r] >= 1 && lp[r] <= S, "decode_attention: a length is outside 1..S");
  const bool parallel = R * KV > 1 && !at::in_parallel_region();
#pragma omp parallel num_threads(at::get_num_threads()) if (parallel)
  {
    std::vector<float> scores;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < R * KV; ++task) {
      const int64_t r = task / KV, h = task % KV;
      const float* qr = qp + (r * H + h * G) * D;
      float* o = op + (r * H + h * G) * D;
      const float* kh = kp + h * head_stride;
      const float* vh = vp + h * head_stride;
      switch (D / 16) {
        case 1: attend_row<1>(qr, G, kh, vh, slot_stride, sp + r * row_step, lp[r], o, scores); break;
        case 2: attend_row<2>(qr, G, kh, vh, slot_stride, sp + r * row_step, lp[r], o, scores); break;
        case 3: attend_row<3>(qr, G, kh, vh, slot_stride, sp + r * row_step, lp[r], o, scores); break;
        case 4: attend_row<4>(qr, G, kh, vh, slot_stride, sp + r * row_step, lp[r], o, scores); break;
        case 6: attend_row<6>(qr, G, kh, vh, slot_stride, sp + r * row_step, lp[r], o, scores); break;
        case 8: attend_row<8>(qr, G, kh, vh, slot_stride, sp + r * row_step, lp[r], o, scores); break;
        default: break;  // checked before the parallel region (an exception must not leave it)
      }
    }
  }
#endif
  return out;
}



// ----------------------------------------------------------------------------- head-screen passes

#ifdef FALCONLM_AVX512
// 16 scores from fp32 or bf16 (bf16 is the top half of an fp32: widen and shift).
inline __m512 load16(const void* base, int64_t i, bool bf16, __mmask16 m) {
  if (!bf16) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + i);
  const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + i);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif

at::Tensor row_range(const at::Tensor& scores) {
  TORCH_CHECK(has_f32(), "row_range needs AVX-512 (check has_f32() first)");
  TORCH_CHECK(scores.dim() == 2 && scores.is_contiguous() && (scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kBFloat16), "row_range: contiguous (rows, vocab) fp32 or bf16 scores expected");
  const int64_t B = scores.size(0), V = scores.size(1);
  auto out = at::empty({B, 2}, scores.options().dtype(at::kFloat));
#ifdef FALCONLM_AVX512
  const bool bf16 = scores.scalar_type() == at::kBFloat16;
  const char* base = static_cast<const char*>(scores.data_ptr());
  const int64_t row_bytes = V * scores.element_size();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      __m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY);
      __mmask16 bad = 0;
      for (int64_t v = 0; v < V; v += 16) {
        const __mmask16 m = tail_mask(V - v);
        const __m512 x = load16(base + b * row_bytes, v, bf16, m);
        bad |= _mm512_mask_fpclass_ps_mask(m, x, 0x99);  // QNaN, SNaN, +inf, -inf
        lo = _mm512_mask_min_ps(lo, m, lo, x);
        hi = _mm512_mask_max_ps(hi, m, hi, x);
      }
      o[2 * b] = bad ? NAN : _mm512_reduce_min_ps(lo);
      o[2 * b + 1] = bad ? NAN : _mm512_reduce_max_ps(hi);
    }
  });
#endif
  return out;
}

// Each row's first index of its largest value, as torch's max(dim=-1) picks it: a NaN counts as the
// largest (the first NaN wins), and among equal maxima (-0 == +0) the lowest index. One pass per
// row; the greedy pick over an int8 head's logits took torch 0.4-0.7 ms for 16 x 65,024.
at::Tensor row_argmax(const at::Tensor& scores) {
  TORCH_CHECK(has_f32(), "row_argmax needs AVX-512 (check has_f32() first)");
  TORCH_CHECK(scores.dim() == 2 && scores.is_contiguous() && scores.scalar_type() == at::kFloat && scores.size(1) >= 1 && scores.size(1) < INT32_MAX, "row_argmax: contiguous (rows, vocab) fp32 scores expected");
  const int64_t B = scores.size(0), V = scores.size(1);
  auto out = at::empty({B}, scores.options().dtype(at::kLong));
#ifdef FALCONLM_AVX512
  const float* base = scores.data_ptr<float>();
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t b = b0; b < b1; ++b) {
      const float* row = base + b * V;
      __m512 best = _mm512_set1_ps(-INFINITY);
      __m512i at = _mm512_set1_epi32(INT32_MAX);
      int64_t nan_at = -1;
      for (int64_t v = 0; v < V; v += 16) {
        const __mmask16 m = tail_mask(V - v);
        const __m512 x = _mm512_maskz_loadu_ps(m, row + v);
        const __mmask16 nan = _mm512_mask_cmp_ps_mask(m, x, x, _CMP_UNORD_Q);
        if (nan) {
          nan_at = v + __builtin_ctz(nan);
          break;
        }
        // A lane takes a later value only if strictly larger, so it keeps its first maximum; the
        // first block seeds every real lane (an all -inf row still has an index).
        const __mmask16 take = v == 0 ? m : _mm512_mask_cmp_ps_mask(m, x, best, _CMP_GT_OQ);
        best = _mm512_mask_mov_ps(best, take, x);
        at = _mm512_mask_mov_epi32(at, take, _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(v))));
      }
      if (nan_at >= 0) {
        o[b] = nan_at;
        continue;
      }
      const float top = _mm512_reduce_max_ps(best);
      o[b] = _mm512_mask_reduce_min_epi32(_mm512_cmp_ps_mask(best, _mm512_set1_ps(top), _CMP_EQ_OQ), at);
    }
  });
#endif
  return out;
}

at::Tensor columns_reaching(const at::Tensor& scores, const at::Tensor& thresholds) {
  TORCH_CHECK(has_f32(), "columns_reaching needs AVX-512 (check has_f32() first)");
  TORCH_CHECK(scores.dim() == 2 && scores.is_contiguous() && (scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kBFloat16), "columns_reaching: contiguous (rows, vocab) fp32 or bf16 scores expected");
  TORCH_CHECK(thresholds.dim() == 1 && thresholds.size(0) == scores.size(0) && thresholds.scalar_type() == at::kFloat && thresholds.is_contiguous(), "columns_reaching: one fp32 threshold per row expected");
  const int64_t B = scores.size(0), V = scores.size(1);
  auto out = at::empty({V}, scores.options().dtype(at::kBool));
#ifdef FALCONLM_AVX512
  const bool bf16 = scores.scalar_type() == at::kBFloat16;
  const char* base = static_cast<const char*>(scores.data_ptr());
  const int64_t row_bytes = V * scores.element_size();
  const float* t = thresholds.data_ptr<float>();
  bool* o = out.data_ptr<bool>();
  at::parallel_for(0, (V + 15) / 16, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t v = c * 16;
      const __mmask16 m = tail_mask(V - v);
      __mmask16 hit = 0;
      for (int64_t b = 0; b < B; ++b)  // a NaN score or threshold compares false, as torch's >= does
        hit |= _mm512_mask_cmp_ps_mask(m, load16(base + b * row_bytes, v, bf16, m), _mm512_set1_ps(t[b]), _CMP_GE_OQ);
      for (int64_t j = 0; j < 16 && v + j < V; ++j) o[v + j] = (hit >> j) & 1;
    }
  });
#endif
  return out;
}


// ----------------------------------------------------------------------------- rope

// One head of D values rotated: the same operations as torch's x * cos + cat(-x2, x1) * sin, in the
// same order, two products and a sum (-ffp-contract=off keeps them two roundings).
inline void rope_head(const float* x, const float* c, const float* s, int64_t D, float* o) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < half; ++d) {
    const float p1 = x[d] * c[d], p2 = -x[d + half] * s[d];
    o[d] = p1 + p2;
  }
  for (int64_t d = half; d < D; ++d) {
    const float p1 = x[d] * c[d], p2 = x[d - half] * s[d];
    o[d] = p1 + p2;
  }
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.stride(3) == 1 && x.size(3) % 2 == 0, "rope: x must be fp32 (B, H, T, D) with a contiguous, even last dimension");
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  TORCH_CHECK(cos.dim() == 4 && cos.sizes() == sin.sizes() && cos.size(0) == B && cos.size(1) == 1 && cos.size(2) == T && cos.size(3) == D, "rope: cos and sin must be (B, 1, T, D)");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous(), "rope: contiguous fp32 cos and sin expected");
  auto out = at::empty({B, H, T, D}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t sb = x.stride(0), sh = x.stride(1), st = x.stride(2);
  at::parallel_for(0, B * H * T, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (H * T), h = (i / T) % H, t = i % T;
      const float* xr = xp + b * sb + h * sh + t * st;
      const float* c = cp + (b * T + t) * D;
      const float* s = sp + (b * T + t) * D;
      rope_head(xr, c, s, D, op + i * D);
    }
  });
  return out;
}


// ----------------------------------------------------------------------------- q8_mm
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

#endif  // FALCONLM_AVX512

// Portable q8_mm: the same arithmetic one weight at a time (the compiler vectorises what it can).
void q8_row_portable(const float* x, int64_t ldx, int64_t M, const uint8_t* q, int64_t group, const float* s,
                     const float* sz, const float* xsum, int64_t G, float* y, int64_t ldy) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    float tot = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      float d = 0.f;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) d += xm[k] * static_cast<float>(q[k]);
      tot += s[g] * d;
    }
    y[m * ldy] = tot - zero_term(sz, xsum + m * G, G);
  }
}

at::Tensor q8_mm(const at::Tensor& x, const at::Tensor& q, const at::Tensor& s, const at::Tensor& sz, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous fp32 (M, K)");
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kByte && q.is_contiguous(), "q must be contiguous uint8");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  TORCH_CHECK(q.size(1) == K, "q does not match the input width");
  TORCH_CHECK(group > 0 && K % group == 0 && group % 16 == 0, "unsupported group size");
  const int64_t G = K / group;
  TORCH_CHECK(s.scalar_type() == at::kFloat && sz.scalar_type() == at::kFloat && s.is_contiguous() && sz.is_contiguous(), "scales must be contiguous fp32");
  TORCH_CHECK(s.size(0) == N && s.size(1) == G && sz.size(0) == N && sz.size(1) == G, "scales must be (N, K / group)");
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
      const uint8_t* qn = Q + n * K;
      const float *sn = S + n * G, *szn = SZ + n * G;
#ifdef FALCONLM_AVX512
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) q8_row<4>(X + m * K, K, qn, K, group, sn, szn, XS + m * G, G, Y + m * N + n, N);
      for (; m < M; ++m) q8_row<1>(X + m * K, K, qn, K, group, sn, szn, XS + m * G, G, Y + m * N + n, N);
#else
      q8_row_portable(X, K, M, qn, group, sn, szn, XS, G, Y + n, N);
#endif
    }
  });
  return y;
}

// ----------------------------------------------------------------------------- gelu

#ifdef FALCONLM_AVX512
// x * 0.5 * (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (as torch's Vectorized<float>::erf)
// with the softmax's exp: within 1.5e-7 of erf, so within 5e-7 of float64 GELU where torch's own
// kernel is within 1.2e-6 (test_decode_attention.py); a 3,072-value row takes 2.6 us (torch 10-14 us).
inline __m512 gelu16(__m512 x) {
  const __m512 neg_zero = _mm512_set1_ps(-0.f), one = _mm512_set1_ps(1.0f);
  const __m512 v = _mm512_mul_ps(x, _mm512_set1_ps(static_cast<float>(M_SQRT1_2)));
  // t = 1 / (1 + p |v|): a 14-bit reciprocal and one Newton step (a division is 4x the time of the rest)
  const __m512 den = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), _mm512_abs_ps(v), one);
  const __m512 r0 = _mm512_rcp14_ps(den);
  const __m512 t = _mm512_mul_ps(r0, _mm512_fnmadd_ps(den, r0, _mm512_set1_ps(2.0f)));
  __m512 r = _mm512_fmadd_ps(_mm512_set1_ps(1.061405429f), t, _mm512_set1_ps(-1.453152027f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(1.421413741f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-0.284496736f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(0.254829592f));
  // erfc(|v|) = t r exp(-v^2); erf(v) = sign(v) (1 - erfc(|v|))
  const __m512 erfc = _mm512_mul_ps(_mm512_mul_ps(t, r), exp_nonpositive(_mm512_xor_ps(neg_zero, _mm512_mul_ps(v, v))));
  const __m512 erf = _mm512_xor_ps(_mm512_and_ps(neg_zero, v), _mm512_sub_ps(one, erfc));
  return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), _mm512_add_ps(one, erf));
}
#endif

// GELU of n values (y may be x), every value by the vector formula, so a value's result never depends on
// the tensor's size or the threads (torch's kernel takes a scalar erf for what is left after its
// vector steps, which depends on how it split the tensor). Why a kernel: in a decode step, between two
// weight-streaming matmuls, torch's gelu of one 3,072-value row took 40-55 us (9.6 us alone).
void gelu_values(const float* x, float* y, int64_t n) {
#ifdef FALCONLM_AVX512
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
  }
#endif
}

// The same over the threads, in blocks of 1,024 values (y may be x).
void gelu_parallel(const float* x, float* y, int64_t n) {
  at::parallel_for(0, (n + 1023) / 1024, 16, [&](int64_t b0, int64_t b1) { gelu_values(x + b0 * 1024, y + b0 * 1024, std::min(n, b1 * 1024) - b0 * 1024); });
}

at::Tensor gelu(const at::Tensor& x) {
  TORCH_CHECK(has_f32(), "gelu needs AVX-512 (check has_f32() first)");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "gelu: fp32 input expected");
  const at::Tensor in = x.contiguous();
  auto out = at::empty_like(in);
  gelu_parallel(in.data_ptr<float>(), out.data_ptr<float>(), in.numel());
  return out;
}

// ----------------------------------------------------------------------------- decode_layer

// The linears of one decoder layer as the model hands them over: 4 tensors and 7 integers each.
//   ints:    kind (0: fp32 f32_mm, 1: int8/int4 qa8_mm), bits, group, act_group, N, uniform_zero, has_bias
//   tensors: fp32: weight, -, -, bias;   quantized: q, scales, zeros, bias   (unused slots: empty tensors)
constexpr int kLinearInts = 7, kLinearTensors = 4, kLayerInts = 4, kLayerTensors = 4;

at::Tensor layer_linear(const at::Tensor& x, at::TensorList params, const int64_t* ints) {
  at::Tensor y = ints[0] == 0 ? f32_mm(x, params[0]) : qa8_mm(x, params[0], params[1], params[2], ints[1], ints[2], ints[3], ints[4], ints[5]);
  if (ints[6]) y.add_(params[3]);  // after the product, as the model's linears add it
  return y;
}

// One Falcon decoder layer for R decode rows (one new token each), the same operations in the same
// order as the model's Python forward (FalconDecoderLayer with in-place attention), so the same
// bits: a decode step's per-op Python and dispatch cost (about 2.5 ms of a 7 ms batch-1 int4 token
// on 2 cores) is gone, and the step is the kernels and ATen's layer_norm and adds.
//   x (R, hidden) fp32; spec: style (0 parallel, 1 parallel with two LayerNorms, 2 sequential),
//   heads, KV heads, head size, then kLinearInts per linear (query_key_value, dense, dense_h_to_4h,
//   dense_4h_to_h); params: LayerNorm weight, bias (the attention's), the second LayerNorm's (or
//   empty), then kLinearTensors per linear. cos, sin (R, D): each row's rotary tables. The row's new
//   key and value go to slot write_slots[r] of keys / values (one layer's storage, addressed as in
//   decode_attention), and the row attends read_slots / lengths as decode_attention does.
at::Tensor decode_layer(const at::Tensor& x, at::TensorList params, at::IntArrayRef spec, const at::Tensor& cos, const at::Tensor& sin,
                        const at::Tensor& keys, const at::Tensor& values, const at::Tensor& write_slots, const at::Tensor& read_slots,
                        const at::Tensor& lengths, int64_t slot_stride, int64_t head_stride, double eps) {
  TORCH_CHECK(spec.size() == kLayerInts + 4 * kLinearInts && params.size() == kLayerTensors + 4 * kLinearTensors, "decode_layer: spec or params of the wrong length");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "decode_layer: x must be contiguous fp32 (rows, hidden)");
  const int64_t style = spec[0], H = spec[1], KV = spec[2], D = spec[3], R = x.size(0), hidden = x.size(1);
  TORCH_CHECK(style >= 0 && style <= 2 && KV >= 1 && H % KV == 0 && D % 2 == 0, "decode_layer: bad layer spec");
  const int64_t G = H / KV, qkv_width = KV * (G + 2) * D;
  TORCH_CHECK(spec[kLayerInts + 4] == qkv_width && spec[kLayerInts + kLinearInts + 4] == hidden && spec[kLayerInts + 3 * kLinearInts + 4] == hidden,
              "decode_layer: the linears' widths do not match the heads");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(0) == R && cos.size(1) == D && cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
              cos.is_contiguous() && sin.is_contiguous(), "decode_layer: cos and sin must be contiguous fp32 (rows, head size)");
  TORCH_CHECK(write_slots.dim() == 1 && write_slots.size(0) == R && write_slots.scalar_type() == at::kLong && write_slots.is_contiguous(), "decode_layer: one write slot per row");
  TORCH_CHECK(keys.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat && keys.sizes() == values.sizes() && keys.is_contiguous() && values.is_contiguous(),
              "decode_layer: contiguous fp32 keys and values expected");
  const int64_t* ws = write_slots.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r)
    TORCH_CHECK(ws[r] >= 0 && ws[r] * slot_stride + (KV - 1) * head_stride + D <= keys.numel(), "decode_layer: a write slot is outside the cache");
  const int64_t* lin = spec.data() + kLayerInts;
  auto linear = [&](const at::Tensor& in, int i) { return layer_linear(in, params.slice(kLayerTensors + i * kLinearTensors, kLinearTensors), lin + i * kLinearInts); };
  auto norm = [&](const at::Tensor& in, int i) { return at::layer_norm(in, {hidden}, params[2 * i], params[2 * i + 1], eps, false); };

  const at::Tensor h = norm(x, 0);
  const at::Tensor qkv = linear(h, 0);
  // Rotary on the query heads (into q, (R, H, D)) and the key head of each KV group; keys and values into the cache.
  auto q = at::empty({R, H, D}, x.options());
  auto k = at::empty({D}, x.options());
  const float* qkv_p = qkv.data_ptr<float>();
  float* q_p = q.data_ptr<float>();
  float* k_p = k.data_ptr<float>();
  float* keys_p = keys.data_ptr<float>();
  float* values_p = values.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    const float* c = cos.data_ptr<float>() + r * D;
    const float* s = sin.data_ptr<float>() + r * D;
    for (int64_t g = 0; g < KV; ++g) {
      const float* row = qkv_p + r * qkv_width + g * (G + 2) * D;
      for (int64_t j = 0; j < G; ++j) rope_head(row + j * D, c, s, D, q_p + (r * H + g * G + j) * D);
      rope_head(row + G * D, c, s, D, k_p);
      const int64_t slot = ws[r] * slot_stride + g * head_stride;
      std::memcpy(keys_p + slot, k_p, D * sizeof(float));
      std::memcpy(values_p + slot, row + (G + 1) * D, D * sizeof(float));
    }
  }
  const at::Tensor att = decode_attention(q, keys, values, read_slots, lengths, std::pow(static_cast<double>(D), -0.5), KV, slot_stride, head_stride);
  const at::Tensor attn = linear(att.view({R, H * D}), 1);
  auto mlp = [&](const at::Tensor& in) {
    at::Tensor up = linear(in, 2);
    gelu_parallel(up.data_ptr<float>(), up.data_ptr<float>(), up.numel());
    return linear(up, 3);
  };
  if (style == 2) {  // sequential: x + attn, then the MLP off the second LayerNorm of that
    const at::Tensor x1 = at::add(x, attn);
    return at::add(x1, mlp(norm(x1, 1)));
  }
  // x + (mlp + attn), in that order, as the Python forward adds them.
  return at::add(x, at::add(mlp(style == 1 ? norm(x, 1) : h), attn));
}

bool has_vnni() {
#ifdef FALCONLM_VNNI
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(falconlm_quant, m) {
  m.def("qa8_mm(Tensor x, Tensor q, Tensor scales, Tensor zeros, int bits, int group, int act_group, int N, int uniform_zero) -> Tensor", qa8_mm);
  m.def("q8_mm(Tensor x, Tensor q, Tensor s, Tensor sz, int group) -> Tensor", q8_mm);
  m.def("vectorized() -> bool", has_vnni);
  m.def("f32_mm(Tensor x, Tensor w) -> Tensor", f32_mm);
  m.def("has_f32() -> bool", has_f32);
  m.def("row_range(Tensor scores) -> Tensor", row_range);
  m.def("row_argmax(Tensor scores) -> Tensor", row_argmax);
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor", rope);
  m.def("gelu(Tensor x) -> Tensor", gelu);
  m.def("columns_reaching(Tensor scores, Tensor thresholds) -> Tensor", columns_reaching);
  m.def("decode_layer(Tensor x, Tensor[] params, int[] spec, Tensor cos, Tensor sin, Tensor keys, Tensor values, Tensor write_slots, Tensor read_slots, Tensor lengths, int slot_stride, int head_stride, float eps) -> Tensor", decode_layer);
  m.def("decode_attention(Tensor q, Tensor keys, Tensor values, Tensor slots, Tensor lengths, float scale, int kv_heads, int slot_stride, int head_stride) -> Tensor", decode_attention);
}
