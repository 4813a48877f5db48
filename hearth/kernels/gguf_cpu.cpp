// Matrix products that read GGUF's quantized blocks in place (Q4_0, Q4_1, Q8_0), for CPUs with AVX2/FMA/F16C.
//
// Why hand-written: PyTorch's own weight-only kernels (_weight_int8pack_mm, _weight_int4pack_mm_for_cpu) need
// their own repacked layouts and, on AVX2, run a 1-row product 5-20x slower than reading the bytes llama.cpp
// reads. This file does what ggml does for these three types: quantize each activation row to 8 bits in blocks
// of 32 (a scale per block, plus the block sum for Q4_1), then take integer dot products against the weight
// blocks and scale them in fp32. Weights stay exactly as they lie in the (memory-mapped) GGUF file.
//
// Activation rounding follows ggml's quantize_row_q8_0 / q8_1 (scale = amax/127, round to nearest, scale and
// sum stored as fp16), so results match llama.cpp's up to fp32 summation order.
//
// Ops (registered as torch.ops.hearth.*):
//   gguf_mm(x[M,K] f32, ws: list of [N_i,row_bytes] u8, qtype) -> [M,sum N_i] f32     x @ dequant(cat(ws)).T
//   gguf_dequant(w[N,row_bytes] u8, qtype, K) -> [N,K] f32         exact dequantization (for large-M products)
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <vector>

namespace {

constexpr int QK = 32;
// GGML type ids
constexpr int64_t Q4_0 = 2, Q4_1 = 3, Q8_0 = 8;

struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };
// Activation block: fp32 copies of the fp16-rounded scale and (scale * sum of quants), then the quants.
struct BlockQ8A { float d, s; int8_t qs[32]; };
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ8_0) == 34, "GGUF block sizes");

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
inline float round_f16(float f) { return _cvtsh_ss(_cvtss_sh(f, 0)); }

inline float hsum_ps(__m256 v) {
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

// Quantize one row of K floats (K % 32 == 0) into K/32 activation blocks, as ggml's quantize_row_q8_1.
void quantize_row(const float* x, BlockQ8A* y, int64_t nb) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < nb; i++) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; j++) {
      v[j] = _mm256_loadu_ps(x + i * QK + j * 8);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float maxv = _mm_cvtss_f32(m4);
    const float d = maxv / 127.f;
    const __m256 mul = _mm256_set1_ps(maxv != 0.0f ? 127.f / maxv : 0.0f);
    __m256i q[4];
    for (int j = 0; j < 4; j++)
      q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], mul), _MM_ROUND_NEAREST));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_hadd_epi32(s4, s4);
    s4 = _mm_hadd_epi32(s4, s4);
    y[i].d = round_f16(d);
    y[i].s = round_f16(d * (float)_mm_cvtsi128_si32(s4));
    // pack 4x8 int32 -> 32 int8 in order (packs interleave 128-bit lanes; the permute restores order)
    __m256i a = _mm256_packs_epi32(q[0], q[1]);
    __m256i b = _mm256_packs_epi32(q[2], q[3]);
    __m256i p = _mm256_packs_epi16(a, b);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i*)y[i].qs, p);
  }
}

inline __m256i nibbles_32(const uint8_t* qs) {
  // 16 bytes -> 32 values 0..15: low nibbles are elements 0..15, high nibbles 16..31 (ggml's layout).
  const __m128i t = _mm_loadu_si128((const __m128i*)qs);
  const __m256i both = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

inline __m256 dot_u8_s8(__m256i u, __m256i s) {
  const __m256i p16 = _mm256_maddubs_epi16(u, s);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

// One weight block decoded for an integer dot product: `u` are unsigned quants (Q4_1: 0..15) or the absolute
// values of signed ones (Q4_0: -8..7, Q8_0), `sgn` the signed quants whose signs must be applied to the
// activations (unused for Q4_1). value = d * q (+ m for Q4_1).
template <int64_t T> struct Blk;
template <> struct Blk<Q4_1> {
  using B = BlockQ4_1;
  static constexpr bool kSigned = false;
  static inline __m256i quants(const B& b) { return nibbles_32(b.qs); }
  static inline float m(const B& b) { return h2f(b.m); }
};
template <> struct Blk<Q4_0> {
  using B = BlockQ4_0;
  static constexpr bool kSigned = true;
  static inline __m256i quants(const B& b) { return _mm256_sub_epi8(nibbles_32(b.qs), _mm256_set1_epi8(8)); }
  static inline float m(const B&) { return 0.f; }
};
template <> struct Blk<Q8_0> {
  using B = BlockQ8_0;
  static constexpr bool kSigned = true;
  static inline __m256i quants(const B& b) { return _mm256_loadu_si256((const __m256i*)b.qs); }
  static inline float m(const B&) { return 0.f; }
};

// RW weight rows x RA activation rows of dot products over nb blocks, with independent accumulators so the
// FMA latency chains overlap and each weight block is decoded once for all RA activation rows.
// out[a * ldo + r] = dot(w row r, act row a).
template <int64_t T, int RW, int RA>
inline void tile(const uint8_t* w, int64_t rb, const BlockQ8A* act, int64_t nb, float* out, int64_t ldo) {
  using K = Blk<T>;
  using B = typename K::B;
  __m256 acc[RW][RA];
  float summs[RW][RA];
  for (int r = 0; r < RW; r++)
    for (int a = 0; a < RA; a++) { acc[r][a] = _mm256_setzero_ps(); summs[r][a] = 0.f; }
  for (int64_t i = 0; i < nb; i++) {
    __m256i qx[RA];
    for (int a = 0; a < RA; a++) qx[a] = _mm256_loadu_si256((const __m256i*)act[a * nb + i].qs);
    for (int r = 0; r < RW; r++) {
      const B& b = ((const B*)(w + r * rb))[i];
      const __m256i qw = K::quants(b);
      const float dw = h2f(b.d);
      for (int a = 0; a < RA; a++) {
        const __m256 p = K::kSigned ? dot_u8_s8(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx[a], qw))
                                    : dot_u8_s8(qw, qx[a]);
        acc[r][a] = _mm256_fmadd_ps(_mm256_set1_ps(dw * act[a * nb + i].d), p, acc[r][a]);
        if (!K::kSigned) summs[r][a] += K::m(b) * act[a * nb + i].s;
      }
    }
  }
  for (int r = 0; r < RW; r++)
    for (int a = 0; a < RA; a++) out[a * ldo + r] = hsum_ps(acc[r][a]) + summs[r][a];
}

// Rows [n0, n1) of W against all M activation rows: tiles of 4 weight rows x 2 activation rows, then edges.
template <int64_t T>
void mm_rows(const uint8_t* w, int64_t rb, const BlockQ8A* act, int64_t M, int64_t nb, float* out, int64_t N,
             int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const uint8_t* wr = w + n * rb;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) tile<T, 4, 2>(wr, rb, act + m * nb, nb, out + m * N + n, N);
    for (; m < M; m++) tile<T, 4, 1>(wr, rb, act + m * nb, nb, out + m * N + n, N);
  }
  for (; n < n1; n++)
    for (int64_t m = 0; m < M; m++) tile<T, 1, 1>(w + n * rb, rb, act + m * nb, nb, out + m * N + n, N);
}

int64_t block_bytes(int64_t qtype) {
  switch (qtype) {
    case Q4_0: return sizeof(BlockQ4_0);
    case Q4_1: return sizeof(BlockQ4_1);
    case Q8_0: return sizeof(BlockQ8_0);
  }
  TORCH_CHECK(false, "hearth gguf kernels: unsupported GGML type ", qtype, " (Q4_0=2, Q4_1=3, Q8_0=8)");
}

void check_weight(const at::Tensor& w, int64_t qtype, int64_t K) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kByte && w.dim() == 2 && w.is_contiguous(),
              "weight must be a contiguous CPU uint8 tensor [rows, row_bytes]");
  TORCH_CHECK(K % QK == 0, "row length ", K, " is not a multiple of 32");
  TORCH_CHECK(w.size(1) == K / QK * block_bytes(qtype), "weight rows hold ", w.size(1), " bytes, expected ",
              K / QK * block_bytes(qtype), " for ", K, " columns");
}

// x @ cat(ws).T: several weights of one type side by side (q|k|v, gate|up) share one activation quantization
// and one call, without copying the memory-mapped blocks into one tensor.
at::Tensor gguf_mm(const at::Tensor& x_in, at::TensorList ws, int64_t qtype) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() == 2, "x must be a 2-D CPU tensor");
  TORCH_CHECK(!ws.empty(), "gguf_mm: no weights");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t M = x.size(0), K = x.size(1), nb = K / QK;
  int64_t N = 0;
  for (const auto& w : ws) { check_weight(w, qtype, K); N += w.size(0); }
  at::Tensor out = at::empty({M, N}, x.options());
  std::vector<BlockQ8A> act(M * nb);
  const float* xp = x.data_ptr<float>();
  for (int64_t m = 0; m < M; m++) quantize_row(xp + m * K, act.data() + m * nb, nb);
  const BlockQ8A* ap = act.data();
  float* op = out.data_ptr<float>();
  // Rows of W are independent; each thread takes a contiguous range of 4-row tiles across all the weights and
  // streams it once for all M rows of x.
  std::vector<int64_t> tiles_before(ws.size() + 1, 0);
  for (size_t i = 0; i < ws.size(); i++) tiles_before[i + 1] = tiles_before[i] + (ws[i].size(0) + 3) / 4;
  at::parallel_for(0, tiles_before.back(), 4, [&](int64_t t0, int64_t t1) {
    int64_t col0 = 0;
    for (size_t i = 0; i < ws.size(); i++) {
      const int64_t Ni = ws[i].size(0);
      const int64_t a = std::max(t0, tiles_before[i]) - tiles_before[i];
      const int64_t b = std::min(t1, tiles_before[i + 1]) - tiles_before[i];
      if (a < b) {
        const uint8_t* wp = ws[i].data_ptr<uint8_t>();
        const int64_t rb = ws[i].size(1), n0 = a * 4, n1 = std::min(Ni, b * 4);
        float* oc = op + col0;  // column offset of this weight in the output; row stride stays N
        if (qtype == Q4_1) mm_rows<Q4_1>(wp, rb, ap, M, nb, oc, N, n0, n1);
        else if (qtype == Q4_0) mm_rows<Q4_0>(wp, rb, ap, M, nb, oc, N, n0, n1);
        else mm_rows<Q8_0>(wp, rb, ap, M, nb, oc, N, n0, n1);
      }
      col0 += Ni;
    }
  });
  return out;
}

at::Tensor gguf_dequant(const at::Tensor& w, int64_t qtype, int64_t K) {
  check_weight(w, qtype, K);
  const int64_t N = w.size(0), nb = K / QK, rb = w.size(1);
  at::Tensor out = at::empty({N, K}, at::TensorOptions().dtype(at::kFloat));
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
      for (int64_t i = 0; i < nb; i++) {
        const uint8_t* blk = wp + n * rb + i * block_bytes(qtype);
        float* y = op + n * K + i * QK;
        if (qtype == Q8_0) {
          const BlockQ8_0* b = (const BlockQ8_0*)blk;
          const float d = h2f(b->d);
          for (int j = 0; j < QK; j++) y[j] = d * b->qs[j];
        } else {
          const uint8_t* qs;
          float d, m;
          if (qtype == Q4_1) { auto b = (const BlockQ4_1*)blk; d = h2f(b->d); m = h2f(b->m); qs = b->qs; }
          else { auto b = (const BlockQ4_0*)blk; d = h2f(b->d); m = 0.f; qs = b->qs; }
          // ggml: Q4_1 is q*d + m, Q4_0 is (q - 8)*d
          const int off = qtype == Q4_1 ? 0 : 8;
          for (int j = 0; j < 16; j++) {
            y[j] = ((qs[j] & 0x0F) - off) * d + m;
            y[j + 16] = ((qs[j] >> 4) - off) * d + m;
          }
        }
      }
    }
  });
  return out;
}


// e^x for 8 floats: Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial), ~1 ulp on
// [-87, 88]; inputs below are clamped (e^-87.3 ~ 1e-38, as good as 0 for softmax and SiLU).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// ---- fused decode-step glue (fp32) -------------------------------------------------------------------------
// A decode step of a 135M model is ~10 ms of weight reading; eager PyTorch spends as long again in the dozen
// small ops around each product (RMSNorm alone is six). These do each of those in one pass.

// out[n] = w * x[n] / sqrt(mean(x[n]^2) + eps)   (x: [N, D])
at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w_in, double eps) {
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "rms_norm: fp32 only");
  const int64_t D = x.size(-1), N = x.numel() / D;
  at::Tensor out = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
      const float* r = xp + n * D;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < D; i++) ss += r[i] * r[i];
      const float inv = 1.0f / std::sqrt(ss / D + (float)eps);
      float* o = op + n * D;
#pragma omp simd
      for (int64_t i = 0; i < D; i++) o[i] = wp[i] * (r[i] * inv);
    }
  });
  return out;
}

// Rotate-half RoPE, in place, on the first n_heads heads of each row of x ([N, >= n_heads*D]); cos/sin: [N, D].
void rope_(at::Tensor& x, const at::Tensor& cos_in, const at::Tensor& sin_in, int64_t n_heads, int64_t D) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.stride(-1) == 1 && x.dim() == 2, "rope_: fp32 [N, C] rows");
  const at::Tensor c = cos_in.contiguous(), s = sin_in.contiguous();
  const int64_t N = x.size(0), ld = x.stride(0), half = D / 2;
  float* xp = x.data_ptr<float>();
  const float *cp = c.data_ptr<float>(), *sp = s.data_ptr<float>();
  at::parallel_for(0, N * n_heads, 16, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j++) {
      const int64_t n = j / n_heads, h = j % n_heads;
      float* v = xp + n * ld + h * D;
      const float *cr = cp + n * D, *sr = sp + n * D;
#pragma omp simd
      for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cr[i] - b * sr[i];
        v[i + half] = b * cr[i + half] + a * sr[i + half];
      }
    }
  });
}

// SwiGLU: gu = [gate | up] per row ([N, 2H]) -> silu(gate) * up ([N, H])
at::Tensor silu_mul(const at::Tensor& gu_in) {
  const at::Tensor gu = gu_in.contiguous();
  TORCH_CHECK(gu.scalar_type() == at::kFloat, "silu_mul: fp32 only");
  const int64_t H = gu.size(-1) / 2, N = gu.numel() / (2 * H);
  std::vector<int64_t> shape(gu.sizes().begin(), gu.sizes().end());
  shape.back() = H;
  at::Tensor out = at::empty(shape, gu.options());
  const float* gp = gu.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
      const float *g = gp + n * 2 * H, *u = g + H;
      float* o = op + n * H;
      int64_t i = 0;
      for (; i + 8 <= H; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 sig = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(sig, _mm256_loadu_ps(u + i)));
      }
      for (; i < H; i++) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
  return out;
}

// One query per sequence against its cached keys: q [B, H, D]; k, v [B, KVH, Lmax, D] (first L positions used).
// Grouped-query: query head h reads kv head h / (H / KVH). Softmax in fp32 with the max subtracted. The G query
// heads sharing a kv head are done together, so each cached key and value row is read from memory once.
// The attention of one query row per sequence; q rows at qp + b * q_bstride ([H, D] each); out [B, H, D].
void attend_core(const float* qp, int64_t q_bstride, const float* kp, const float* vp, int64_t ksb, int64_t ksh,
                 int64_t vsb, int64_t vsh, int64_t B, int64_t H, int64_t KVH, int64_t D, int64_t L, double scale,
                 float* op) {
  const int64_t G = H / KVH;
  const bool vec = D % 8 == 0;
  at::parallel_for(0, B * KVH, 1, [&](int64_t j0, int64_t j1) {
    std::vector<float> p(G * L);
    for (int64_t j = j0; j < j1; j++) {
      const int64_t b = j / KVH, g = j % KVH;
      const float* kr = kp + b * ksb + g * ksh;
      const float* vr = vp + b * vsb + g * vsh;
      const float* q0 = qp + b * q_bstride + g * G * D;  // the G query heads of this kv head, contiguous
      float* o0 = op + (b * H + g * G) * D;
      // scores: one pass over the keys for all G heads
      for (int64_t l = 0; l < L; l++) {
        const float* kl = kr + l * D;
        for (int64_t h = 0; h < G; h++) {
          const float* qr = q0 + h * D;
          float d = 0.f;
          if (vec) {
            __m256 a = _mm256_setzero_ps();
            for (int64_t i = 0; i < D; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qr + i), _mm256_loadu_ps(kl + i), a);
            d = hsum_ps(a);
          } else {
            for (int64_t i = 0; i < D; i++) d += qr[i] * kl[i];
          }
          p[h * L + l] = d * (float)scale;
        }
      }
      std::vector<float> inv(G);
      for (int64_t h = 0; h < G; h++) {
        float* ph = p.data() + h * L;
        float mx = -INFINITY;
        for (int64_t l = 0; l < L; l++) mx = std::max(mx, ph[l]);
        int64_t l = 0;
        __m256 acc = _mm256_setzero_ps();
        for (; l + 8 <= L; l += 8) {
          const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(ph + l), _mm256_set1_ps(mx)));
          _mm256_storeu_ps(ph + l, e);
          acc = _mm256_add_ps(acc, e);
        }
        float sum = hsum_ps(acc);
        for (; l < L; l++) { ph[l] = std::exp(ph[l] - mx); sum += ph[l]; }
        inv[h] = 1.0f / sum;
      }
      // weighted values: 32 output columns at a time for up to 3 heads in registers, each value row read once
      if (vec && D % 32 == 0 && G <= 3) {
        for (int64_t c = 0; c < D; c += 32) {
          __m256 acc[3][4];
          for (int64_t h = 0; h < G; h++)
            for (int u = 0; u < 4; u++) acc[h][u] = _mm256_setzero_ps();
          for (int64_t l = 0; l < L; l++) {
            const float* vl = vr + l * D + c;
            const __m256 v0 = _mm256_loadu_ps(vl), v1 = _mm256_loadu_ps(vl + 8), v2 = _mm256_loadu_ps(vl + 16),
                         v3 = _mm256_loadu_ps(vl + 24);
            for (int64_t h = 0; h < G; h++) {
              const __m256 w = _mm256_set1_ps(p[h * L + l]);
              acc[h][0] = _mm256_fmadd_ps(w, v0, acc[h][0]);
              acc[h][1] = _mm256_fmadd_ps(w, v1, acc[h][1]);
              acc[h][2] = _mm256_fmadd_ps(w, v2, acc[h][2]);
              acc[h][3] = _mm256_fmadd_ps(w, v3, acc[h][3]);
            }
          }
          for (int64_t h = 0; h < G; h++)
            for (int u = 0; u < 4; u++)
              _mm256_storeu_ps(o0 + h * D + c + 8 * u, _mm256_mul_ps(acc[h][u], _mm256_set1_ps(inv[h])));
        }
      } else {
        for (int64_t h = 0; h < G; h++) {
          float* o = o0 + h * D;
          for (int64_t i = 0; i < D; i++) o[i] = 0.f;
          for (int64_t l = 0; l < L; l++) {
            const float w = p[h * L + l] * inv[h];
            for (int64_t i = 0; i < D; i++) o[i] += w * vr[l * D + i];
          }
        }
      }
    }
  });
}

at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v, int64_t L, double scale) {
  const at::Tensor q = q_in.contiguous();
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "decode_attention: fp32 only");
  TORCH_CHECK(k.stride(-1) == 1 && v.stride(-1) == 1 && k.stride(-2) == k.size(-1) && v.stride(-2) == v.size(-1),
              "decode_attention: cache rows must be contiguous");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KVH = k.size(1);
  TORCH_CHECK(L >= 1 && L <= k.size(2) && H % KVH == 0, "decode_attention: bad length or head counts");
  at::Tensor out = at::empty_like(q);
  attend_core(q.data_ptr<float>(), H * D, k.data_ptr<float>(), v.data_ptr<float>(), k.stride(0), k.stride(1),
              v.stride(0), v.stride(1), B, H, KVH, D, L, scale, out.data_ptr<float>());
  return out;
}

// One decode step of one layer's attention in a single call: qkv [B, (H + 2 KVH) * D] (RoPE applied) has its k and
// v written into the caches k, v [n_layers, B, KVH, Lmax, D] at `pos`, then its q attends over positions 0..pos.
at::Tensor attend_decode(const at::Tensor& qkv, at::Tensor& k, at::Tensor& v, int64_t layer, int64_t pos, int64_t H,
                         int64_t KVH, double scale) {
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.dim() == 2 && qkv.stride(1) == 1, "attend_decode: fp32 [B, C] rows");
  TORCH_CHECK(k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && k.dim() == 5 && k.is_contiguous() &&
              v.is_contiguous() && k.sizes() == v.sizes(), "attend_decode: caches must be contiguous fp32 [n_layers, B, KVH, Lmax, D]");
  const int64_t B = qkv.size(0), D = k.size(4), Lmax = k.size(3);
  TORCH_CHECK(qkv.size(1) == (H + 2 * KVH) * D && k.size(1) == B && k.size(2) == KVH && H % KVH == 0,
              "attend_decode: shapes do not match the cache");
  TORCH_CHECK(layer >= 0 && layer < k.size(0) && pos >= 0 && pos < Lmax, "attend_decode: position ", pos,
              " outside the cache of ", Lmax);
  const int64_t ld = qkv.stride(0);
  const float* src = qkv.data_ptr<float>();
  float *kc = k.data_ptr<float>() + layer * k.stride(0), *vc = v.data_ptr<float>() + layer * v.stride(0);
  const int64_t sb = k.stride(1), sh = k.stride(2);
  for (int64_t b = 0; b < B; b++)
    for (int64_t g = 0; g < KVH; g++) {
      std::memcpy(kc + b * sb + g * sh + pos * D, src + b * ld + (H + g) * D, D * sizeof(float));
      std::memcpy(vc + b * sb + g * sh + pos * D, src + b * ld + (H + KVH + g) * D, D * sizeof(float));
    }
  at::Tensor out = at::empty({B, H * D}, qkv.options());
  attend_core(src, ld, kc, vc, sb, sh, sb, sh, B, H, KVH, D, pos + 1, scale, out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY(hearth, m) {
  m.def("gguf_mm(Tensor x, Tensor[] ws, int qtype) -> Tensor");
  m.def("gguf_dequant(Tensor w, int qtype, int cols) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("rope_(Tensor(a!) x, Tensor cos, Tensor sin, int n_heads, int head_dim) -> ()");
  m.def("silu_mul(Tensor gu) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, int length, float scale) -> Tensor");
  m.def("attend_decode(Tensor qkv, Tensor(a!) k, Tensor(b!) v, int layer, int pos, int n_heads, int n_kv_heads, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(hearth, CPU, m) {
  m.impl("gguf_mm", &gguf_mm);
  m.impl("gguf_dequant", &gguf_dequant);
  m.impl("rms_norm", &rms_norm);
  m.impl("rope_", &rope_);
  m.impl("silu_mul", &silu_mul);
  m.impl("decode_attention", &decode_attention);
  m.impl("attend_decode", &attend_decode);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
