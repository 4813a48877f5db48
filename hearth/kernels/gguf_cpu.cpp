// Matrix products that read GGUF's weights in place (Q4_0, Q4_1, Q8_0 blocks and F16), for CPUs with AVX2/FMA/F16C.
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
// F16 weights (GGML type 1) are read as fp16 rows, 32 values (64 bytes) counted as one "block" so the shape checks
// are shared. As ggml does (F16's vec_dot_type is F16), each activation row is first rounded to fp16; the product
// is then fp32: per output one 8-wide FMA accumulator over the row in order, summed across lanes at the end
// (llamafile's tinyBLAS order for F16 on AVX2). Each output is one chain whatever the tiling, so results do not
// depend on the batch either. Weights stay fp16 in the memory map: half the bytes of an fp32 copy per token.
//
// Ops (registered as torch.ops.hearth.*):
//   gguf_mm(x[M,K] f32, ws: list of [N_i,row_bytes] u8, qtype) -> [M,sum N_i] f32     x @ dequant(cat(ws)).T
//     (F16: x rounded to fp16 first; from kF16MmRows rows on (block types: kBlockMmRows, x still rounded to 8
//     bits), torch's fp32 mm on converted weight chunks)
//   gguf_dequant(w[N,row_bytes] u8, qtype, K) -> [N,K] f32         exact dequantization (for large-M products)
//   rms_norm, rope_, silu_mul, decode_attention, attend_decode        the fp32 glue of the per-layer fast path
// and a class, torch.classes.hearth.DecodePlan(tensors, meta, eps).step(x, k_cache, v_cache, cos, sin, pos) ->
// logits: a whole one-token step of a Llama model in one call (see "a whole decode step" below), and
// .step_paged(x, positions, k_pool, v_pool, block_tables, block_size, cos, sin), the same for the engine's paged cache.
#include <torch/extension.h>
#include <torch/custom_class.h>
#include <ATen/Parallel.h>
#include <omp.h>
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <vector>

namespace {

constexpr int QK = 32;
// GGML type ids
constexpr int64_t F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8;

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

// sum of a[i] * x[i], i < n: four 8-wide accumulators (a LoRA update's A x)
inline float dot_f32(const float* a, const float* x, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(x + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(x + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(x + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(x + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(x + i), s0);
  __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  float t = 0.f;
  for (; i < n; i++) t += a[i] * x[i];
  return hsum_ps(s) + t;
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
inline void tile(const uint8_t* w, int64_t rb, const BlockQ8A* act, int64_t nb, float* out, int64_t ldo,
                 int64_t pf = 0) {
  using K = Blk<T>;
  using B = typename K::B;
  __m256 acc[RW][RA];
  float summs[RW][RA];
  for (int r = 0; r < RW; r++)
    for (int a = 0; a < RA; a++) { acc[r][a] = _mm256_setzero_ps(); summs[r][a] = 0.f; }
  // pf > 0: prefetch the RW rows lying pf bytes ahead (a later tile), a few cache lines per block
  const int64_t lines = (RW * rb + nb * 64 - 1) / (nb * 64);
  for (int64_t i = 0; i < nb; i++) {
    if (pf)
      for (int64_t j = 0; j < lines; j++) _mm_prefetch((const char*)w + pf + (i * lines + j) * 64, _MM_HINT_T0);
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

// A one-row product (decode) streams each weight byte once, and the hardware prefetcher alone leaves the loads
// waiting on memory (measured: ~47 -> ~72 tok/s for SmolLM2-135M Q4_1 on 2 cores): each tile also prefetches the
// rows of the tile kPrefetchTiles ahead. Its rows are contiguous, so this covers the whole weight in order.
constexpr int64_t kPrefetchTiles = 2;

// Rows [n0, n1) of W against all M activation rows, 4 weight rows at a time: each weight row against 4 activation
// rows (tile<1, 4>), then pairs, then a single row against 4 weight rows (decode). Measured on this project's
// 2-core Zen machine, 1 x 4 beats the 4 x 2 tile it replaced by ~25% (batched decode of 32 sequences 260 -> 211 ms
// a step, a 512-row product 51 -> 41 ms): 4 x 2 needs 8 accumulators and spilled 5 of them to the stack every
// block; 1 x 4 and 2 x 2 keep theirs in registers (1 x 8 was no faster). Q8_0 blocks need no nibble decoding, and
// there 1 x 4 was slower than pairs at 32 rows (2.1 vs 1.4 ms for 1536 x 576), so Q8_0 goes by pairs. Every output
// is the same chain of blocks whatever the tile, so the results do not depend on M.
template <int64_t T>
void mm_rows(const uint8_t* w, int64_t rb, const BlockQ8A* act, int64_t M, int64_t nb, float* out, int64_t N,
             int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const uint8_t* wr = w + n * rb;
    // the first pass over this tile of weight rows brings in the tiles ahead; later passes find it in cache
    const int64_t pf = kPrefetchTiles * 4 * rb;
    int64_t m = 0;
    if (T != Q8_0)
      for (; m + 4 <= M; m += 4)
        for (int r = 0; r < 4; r++) tile<T, 1, 4>(wr + r * rb, rb, act + m * nb, nb, out + m * N + n + r, N, m == 0 ? pf : 0);
    for (; m + 2 <= M; m += 2) {
      tile<T, 2, 2>(wr, rb, act + m * nb, nb, out + m * N + n, N, m == 0 ? pf : 0);
      tile<T, 2, 2>(wr + 2 * rb, rb, act + m * nb, nb, out + m * N + n + 2, N, m == 0 ? pf : 0);
    }
    for (; m < M; m++) tile<T, 4, 1>(wr, rb, act + m * nb, nb, out + m * N + n, N, m == 0 ? pf : 0);
  }
  for (; n < n1; n++)
    for (int64_t m = 0; m < M; m++) tile<T, 1, 1>(w + n * rb, rb, act + m * nb, nb, out + m * N + n, N);
}

// ---- F16 weights ----
// Activation rows rounded to fp16 (kept as fp32 values): y = fp32(fp16(x)), K % 8 == 0.
void round_row_f16(const float* x, float* y, int64_t K) {
  for (int64_t i = 0; i < K; i += 8)
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
}

// RW fp16 weight rows (K halves each, row stride rs halves) x RA activation rows (stride K):
// out[a * ldo + r] = hsum(sum over k-steps of 8 of w * x), one accumulator per output.
template <int RW, int RA>
inline void tile_f16(const uint16_t* w, int64_t rs, const float* act, int64_t K, float* out, int64_t ldo,
                     int64_t pf = 0) {
  __m256 acc[RW][RA];
  for (int r = 0; r < RW; r++)
    for (int a = 0; a < RA; a++) acc[r][a] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    if (pf && k % 32 == 0)
      for (int r = 0; r < RW; r++) _mm_prefetch((const char*)(w + r * rs + k) + pf, _MM_HINT_T0);
    __m256 xv[RA];
    for (int a = 0; a < RA; a++) xv[a] = _mm256_loadu_ps(act + a * K + k);
    for (int r = 0; r < RW; r++) {
      const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w + r * rs + k)));
      for (int a = 0; a < RA; a++) acc[r][a] = _mm256_fmadd_ps(wv, xv[a], acc[r][a]);
    }
  }
  for (int r = 0; r < RW; r++)
    for (int a = 0; a < RA; a++) out[a * ldo + r] = hsum_ps(acc[r][a]);
}

// Rows [n0, n1) of an F16 weight (rb bytes a row) against all M activation rows (fp16-rounded, stride K)
void mm_rows_f16(const uint8_t* wb, int64_t rb, const float* act, int64_t M, int64_t K, float* out, int64_t N,
                 int64_t n0, int64_t n1) {
  const uint16_t* w = (const uint16_t*)wb;
  const int64_t rs = rb / 2;
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const uint16_t* wr = w + n * rs;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) tile_f16<4, 2>(wr, rs, act + m * K, K, out + m * N + n, N);
    for (; m < M; m++) tile_f16<4, 1>(wr, rs, act + m * K, K, out + m * N + n, N, M == 1 ? kPrefetchTiles * 4 * rb : 0);
  }
  for (; n < n1; n++)
    for (int64_t m = 0; m < M; m++) tile_f16<1, 1>(w + n * rs, rs, act + m * K, K, out + m * N + n, N);
}

// The activations of a product: 8-bit blocks (q, M x nb) for the block types, fp16-rounded rows (f, M x K) for F16
struct Act {
  const BlockQ8A* q = nullptr;
  const float* f = nullptr;
};

int64_t block_bytes(int64_t qtype) {
  switch (qtype) {
    case F16: return 2 * QK;
    case Q4_0: return sizeof(BlockQ4_0);
    case Q4_1: return sizeof(BlockQ4_1);
    case Q8_0: return sizeof(BlockQ8_0);
  }
  TORCH_CHECK(false, "hearth gguf kernels: unsupported GGML type ", qtype, " (F16=1, Q4_0=2, Q4_1=3, Q8_0=8)");
}

void check_weight(const at::Tensor& w, int64_t qtype, int64_t K) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kByte && w.dim() == 2 && w.is_contiguous(),
              "weight must be a contiguous CPU uint8 tensor [rows, row_bytes]");
  TORCH_CHECK(K % QK == 0, "row length ", K, " is not a multiple of 32");
  TORCH_CHECK(w.size(1) == K / QK * block_bytes(qtype), "weight rows hold ", w.size(1), " bytes, expected ",
              K / QK * block_bytes(qtype), " for ", K, " columns");
}

// Several weights of one type side by side (q|k|v, gate|up) as one product: output columns are the weights' rows
// in order. The work unit is a tile of 4 rows of one weight; a thread takes a contiguous range of tiles.
struct QLin {
  int64_t qtype = 0, K = 0, nb = 0, rb = 0, N = 0;
  std::vector<const uint8_t*> w;
  std::vector<int64_t> rows, tiles_before{0};

  QLin() = default;
  QLin(at::TensorList ws, int64_t qtype_, int64_t K_) : qtype(qtype_), K(K_), nb(K_ / QK) {
    TORCH_CHECK(!ws.empty(), "hearth gguf kernels: a product needs at least one weight");
    for (const auto& t : ws) {
      check_weight(t, qtype, K);
      w.push_back(t.data_ptr<uint8_t>());
      rows.push_back(t.size(0));
      rb = t.size(1);
      N += t.size(0);
      tiles_before.push_back(tiles_before.back() + (t.size(0) + 3) / 4);
    }
  }
  int64_t tiles() const { return tiles_before.back(); }

  // f(part, first output column of the part, n0, n1) for the rows [n0, n1) of each part that tiles [t0, t1) cover
  template <class F> void parts(int64_t t0, int64_t t1, F f) const {
    int64_t col0 = 0;
    for (size_t i = 0; i < w.size(); i++) {
      const int64_t a = std::max(t0, tiles_before[i]) - tiles_before[i];
      const int64_t b = std::min(t1, tiles_before[i + 1]) - tiles_before[i];
      if (a < b) f(i, col0, a * 4, std::min(rows[i], b * 4));
      col0 += rows[i];
    }
  }

  // out[m * ldo + column] for the columns of tiles [t0, t1) and all M rows of act (M x nb blocks, or for F16
  // M x K fp16-rounded floats)
  void run(Act act, int64_t M, float* out, int64_t ldo, int64_t t0, int64_t t1) const {
    parts(t0, t1, [&](size_t i, int64_t col0, int64_t n0, int64_t n1) {
      if (qtype == F16) mm_rows_f16(w[i], rb, act.f, M, K, out + col0, ldo, n0, n1);
      else if (qtype == Q4_1) mm_rows<Q4_1>(w[i], rb, act.q, M, nb, out + col0, ldo, n0, n1);
      else if (qtype == Q4_0) mm_rows<Q4_0>(w[i], rb, act.q, M, nb, out + col0, ldo, n0, n1);
      else mm_rows<Q8_0>(w[i], rb, act.q, M, nb, out + col0, ldo, n0, n1);
    });
  }
};

void dequant_row(const uint8_t* row, int64_t qtype, int64_t K, float* y);

// Products with many activation rows (prefill) use torch's fp32 mm on converted chunks of kMmChunk weight rows:
// from kF16MmRows rows for F16, from kBlockMmRows for the block types. On this project's 2-core Zen machine (128-bit
// vector units: an 8-bit dot costs as much as fp32 FMAs there) the fp32 mm reaches ~1.4x the integer tiles' rate
// at 512 rows and breaks even near 64 (bench/cpu.py, Q4_1 pp512: 171 -> 211 tok/s).
constexpr int64_t kF16MmRows = 16, kBlockMmRows = 128, kMmChunk = 512;

// x @ cat(ws).T: several weights of one type side by side (q|k|v, gate|up) share one activation quantization
// and one call, without copying the memory-mapped blocks into one tensor.
at::Tensor gguf_mm(const at::Tensor& x_in, at::TensorList ws, int64_t qtype) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() == 2, "x must be a 2-D CPU tensor");
  TORCH_CHECK(!ws.empty(), "gguf_mm: no weights");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t M = x.size(0), K = x.size(1), nb = K / QK;
  const QLin lin(ws, qtype, K);
  at::Tensor out = at::empty({M, lin.N}, x.options());
  const float* xp = x.data_ptr<float>();
  // Scratch kept per thread and reused: a prefill makes ~200 of these calls, each needing a few MB (activations in
  // 8 bits and as fp32, converted weight chunks). Allocated afresh, glibc maps and faults them in every time or, once
  // its mmap threshold has risen, leaves them scattered through the heap, where they stay resident.
  // (Bound to local references: a lambda run by a worker thread would otherwise name that thread's own instance.)
  static thread_local std::vector<BlockQ8A> tl_q;
  static thread_local std::vector<float> tl_f, tl_corr, tl_w, tl_m;
  std::vector<BlockQ8A>& q = tl_q;
  std::vector<float>&f = tl_f, &corr = tl_corr, &wbuf = tl_w, &mbuf = tl_m;
  if (qtype == F16) {
    f.resize(M * K);
    for (int64_t m = 0; m < M; m++) round_row_f16(xp + m * K, f.data() + m * K, K);
  } else {
    q.resize(M * nb);
    for (int64_t m = 0; m < M; m++) quantize_row(xp + m * K, q.data() + m * nb, nb);
  }
  if (M >= (qtype == F16 ? kF16MmRows : kBlockMmRows)) {
    // Many rows (prefill): the activations as the tiles see them (F16: rounded to fp16; block types: quantized to
    // 8 bits per block of 32 and converted back, d * q, exactly) times fp32 copies of kMmChunk weight rows at a time
    // (exact conversions, a few MB, made in parallel) with torch's fp32 matrix product, ~1.4-2x the tiles' speed
    // here. The same products as the tiles (llama.cpp's rounding of the activations is kept), summed in another
    // order: these rows may differ in the last bits from the same rows computed in a smaller batch (as with fp32
    // weights).
    // Q4_1 (w = d q + m): the product's min term is m * (d_x * sum q_x) exactly, where ggml takes m * s_x with s_x
    // rounded to fp16; corr (M x nb) = s_x - d_x * sum q_x (exact in fp32) times the blocks' minima restores that.
    corr.resize(std::max<size_t>(corr.size(), qtype == Q4_1 ? M * nb : 0));
    if (qtype != F16) {
      f.resize(std::max<size_t>(f.size(), M * K));
      at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; m++)
          for (int64_t b = 0; b < nb; b++) {
            const BlockQ8A& blk = q[m * nb + b];
            int32_t sum = 0;
            for (int j = 0; j < QK; j++) {
              f[(m * nb + b) * QK + j] = blk.d * (float)blk.qs[j];
              sum += blk.qs[j];
            }
            if (qtype == Q4_1) corr[m * nb + b] = blk.s - blk.d * (float)sum;
          }
      });
    }
    const at::Tensor xr = at::from_blob(f.data(), {M, K}, at::TensorOptions().dtype(at::kFloat));
    const at::Tensor cr = at::from_blob(corr.data(), {M, nb}, at::TensorOptions().dtype(at::kFloat));
    int64_t col0 = 0;
    for (size_t i = 0; i < lin.w.size(); i++) {
      for (int64_t c = 0; c < lin.rows[i]; c += kMmChunk) {
        const int64_t n = std::min(kMmChunk, lin.rows[i] - c);
        wbuf.resize(std::max<size_t>(wbuf.size(), n * K));
        mbuf.resize(std::max<size_t>(mbuf.size(), qtype == Q4_1 ? n * nb : 0));
        const at::Tensor wf = at::from_blob(wbuf.data(), {n, K}, at::TensorOptions().dtype(at::kFloat));
        const at::Tensor mins = at::from_blob(mbuf.data(), {qtype == Q4_1 ? n : 0, nb}, at::TensorOptions().dtype(at::kFloat));
        const uint8_t* wp = lin.w[i] + c * lin.rb;
        float* fp = wbuf.data();
        float* mp = mbuf.data();
        at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; r++) {
            dequant_row(wp + r * lin.rb, qtype, K, fp + r * K);
            if (qtype == Q4_1)
              for (int64_t b = 0; b < nb; b++) mp[r * nb + b] = h2f(((const BlockQ4_1*)(wp + r * lin.rb))[b].m);
          }
        });
        at::Tensor dst = out.narrow(1, col0 + c, n);
        at::mm_out(dst, xr, wf.t());
        if (qtype == Q4_1) dst.addmm_(cr, mins.t());
      }
      col0 += lin.rows[i];
    }
    return out;
  }
  const Act act{q.data(), f.data()};
  float* op = out.data_ptr<float>();
  // Rows of W are independent; each thread takes a contiguous range of 4-row tiles across all the weights and
  // streams it once for all M rows of x.
  at::parallel_for(0, lin.tiles(), 4, [&](int64_t t0, int64_t t1) { lin.run(act, M, op, lin.N, t0, t1); });
  return out;
}

// One row of K values from its blocks (ggml: Q4_1 is q*d + m, Q4_0 is (q - 8)*d, Q8_0 is q*d; F16 exactly).
__attribute__((noinline)) void dequant_row(const uint8_t* row, int64_t qtype, int64_t K, float* y) {
  if (qtype == F16) {
    const uint16_t* h = (const uint16_t*)row;
    for (int64_t i = 0; i < K; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
    return;
  }
  for (int64_t i = 0; i < K / QK; i++, y += QK) {
    const uint8_t* blk = row + i * block_bytes(qtype);
    if (qtype == Q8_0) {
      const BlockQ8_0* b = (const BlockQ8_0*)blk;
      const float d = h2f(b->d);
      for (int j = 0; j < QK; j++) y[j] = d * b->qs[j];
    } else {
      const uint8_t* qs;
      float d, m;
      if (qtype == Q4_1) { auto b = (const BlockQ4_1*)blk; d = h2f(b->d); m = h2f(b->m); qs = b->qs; }
      else { auto b = (const BlockQ4_0*)blk; d = h2f(b->d); m = 0.f; qs = b->qs; }
      const int off = qtype == Q4_1 ? 0 : 8;
      for (int j = 0; j < 16; j++) {
        y[j] = ((qs[j] & 0x0F) - off) * d + m;
        y[j + 16] = ((qs[j] >> 4) - off) * d + m;
      }
    }
  }
}

at::Tensor gguf_dequant(const at::Tensor& w, int64_t qtype, int64_t K) {
  check_weight(w, qtype, K);
  const int64_t N = w.size(0), rb = w.size(1);
  at::Tensor out = at::empty({N, K}, at::TensorOptions().dtype(at::kFloat));
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) dequant_row(wp + n * rb, qtype, K, op + n * K);
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
// small ops around each product (RMSNorm alone is six). These do each of those in one pass. The row functions
// are shared by the single ops and by DecodePlan (one whole token in one call), and kept out of line so both
// run the very same instructions: the two paths give bit-identical results.

// o = w * x / sqrt(mean(x^2) + eps) for one row of D
__attribute__((noinline)) void rms_row(const float* r, const float* w, float eps, int64_t D, float* o) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= D; i += 8) {
    const __m256 v = _mm256_loadu_ps(r + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  float ss = hsum_ps(acc);
  for (; i < D; i++) ss += r[i] * r[i];
  const float inv = 1.0f / std::sqrt(ss / D + eps);
  for (i = 0; i < D; i++) o[i] = w[i] * (r[i] * inv);
}

// Rotate-half RoPE of one head of D in place
__attribute__((noinline)) void rope_head(float* v, const float* cr, const float* sr, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; i++) {
    const float a = v[i], b = v[i + half];
    v[i] = a * cr[i] - b * sr[i];
    v[i + half] = b * cr[i + half] + a * sr[i + half];
  }
}

// o[i] = silu(g[i]) * u[i] for i in [i0, i1); i0 a multiple of 8
__attribute__((noinline)) void silu_mul_range(const float* g, const float* u, float* o, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 sig = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
    _mm256_storeu_ps(o + i, _mm256_mul_ps(sig, _mm256_loadu_ps(u + i)));
  }
  for (; i < i1; i++) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// Decode attention is split in chunks of KCH cached positions, whatever the thread count: a work unit is one kv
// head's chunk for all its query heads (the chunk's keys and values, 2 x 16 KB at head_dim 64, are read from
// memory once and then from L1 for the other heads of the group), and the chunks of a head are merged in order
// afterwards. So two threads share the work evenly for any head count and the result does not depend on them.
constexpr int64_t KCH = 64;

// KV caches hold fp32 rows or, llama.cpp's default, fp16 rows: half the memory and half the bytes attention reads
// per token. A row is stored rounded to nearest-even (as torch's fp32 -> fp16 copy_, so the per-layer path's writes
// agree) and converted back to fp32, a chunk at a time, before attention reads it.
inline void store_kv(void* dst, bool half, const float* src, int64_t D) {
  if (!half) {
    std::memcpy(dst, src, D * sizeof(float));
    return;
  }
  uint16_t* h = (uint16_t*)dst;
  int64_t i = 0;
  for (; i + 8 <= D; i += 8)
    _mm_storeu_si128((__m128i*)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < D; i++) h[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

// n cached values (fp16 if half, else fp32) to fp32
inline void load_kv(const void* src, bool half, float* dst, int64_t n) {
  if (!half) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  const uint16_t* h = (const uint16_t*)src;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
  for (; i < n; i++) dst[i] = _cvtsh_ss(h[i]);
}

// Whether k, v are fp16 caches (else fp32); anything else is refused
bool kv_half(const at::Tensor& k, const at::Tensor& v, const char* what) {
  TORCH_CHECK((k.scalar_type() == at::kFloat || k.scalar_type() == at::kHalf) && v.scalar_type() == k.scalar_type(),
              what, ": caches must be fp32 or fp16, both the same");
  return k.scalar_type() == at::kHalf;
}

// One query head (q: D) against n cached keys and values (rows of D, contiguous): o = sum_l e^(s_l - m) v_l,
// unnormalized, with s_l = scale q.k_l, m = max s_l; returns m and sum_l e^(s_l - m). p: n floats of scratch.
__attribute__((noinline)) void attend_part(const float* q, const float* k, const float* v, int64_t n, int64_t D,
                                           float scale, float* p, float* o, float* m_out, float* s_out) {
  // scores: eight keys at a time (eight independent FMA chains in flight), their eight sums reduced together
  int64_t l = 0;
  if (D % 8 == 0) {
    const __m256 sc = _mm256_set1_ps(scale);
    for (; l + 8 <= n; l += 8) {
      const float* k0 = k + l * D;
      __m256 a[8];
      for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
      for (int64_t i = 0; i < D; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + j * D + i), a[j]);
      }
      // transpose-and-add: lane j of the result is the sum of a[j]'s eight lanes
      const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
      const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
      const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
      const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
      _mm256_storeu_ps(p + l, _mm256_mul_ps(sum, sc));
    }
    for (; l < n; l++) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t i = 0; i < D; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + l * D + i), a);
      p[l] = hsum_ps(a) * scale;
    }
  } else {
    for (; l < n; l++) {
      float d = 0.f;
      for (int64_t i = 0; i < D; i++) d += q[i] * k[l * D + i];
      p[l] = d * scale;
    }
  }
  float mx = -INFINITY;
  for (l = 0; l < n; l++) mx = std::max(mx, p[l]);
  __m256 acc = _mm256_setzero_ps();
  for (l = 0; l + 8 <= n; l += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + l), _mm256_set1_ps(mx)));
    _mm256_storeu_ps(p + l, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum_ps(acc);
  for (; l < n; l++) { p[l] = std::exp(p[l] - mx); sum += p[l]; }
  *m_out = mx;
  *s_out = sum;
  // weighted values: 64 (or 32) output columns at a time in registers, each value row read once
  if (D % 64 == 0) {
    for (int64_t c = 0; c < D; c += 64) {
      __m256 a[8];
      for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
      for (l = 0; l < n; l++) {
        const float* vl = v + l * D + c;
        const __m256 w = _mm256_set1_ps(p[l]);
        for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vl + 8 * j), a[j]);
      }
      for (int j = 0; j < 8; j++) _mm256_storeu_ps(o + c + 8 * j, a[j]);
    }
  } else if (D % 32 == 0) {
    for (int64_t c = 0; c < D; c += 32) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (l = 0; l < n; l++) {
        const float* vl = v + l * D + c;
        const __m256 w = _mm256_set1_ps(p[l]);
        a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vl), a0);
        a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vl + 8), a1);
        a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vl + 16), a2);
        a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vl + 24), a3);
      }
      _mm256_storeu_ps(o + c, a0);
      _mm256_storeu_ps(o + c + 8, a1);
      _mm256_storeu_ps(o + c + 16, a2);
      _mm256_storeu_ps(o + c + 24, a3);
    }
  } else {
    for (int64_t i = 0; i < D; i++) o[i] = 0.f;
    for (l = 0; l < n; l++)
      for (int64_t i = 0; i < D; i++) o[i] += p[l] * v[l * D + i];
  }
}

// The chunks (nc of them: parts o [nc, D], maxima m [nc], sums s [nc]) of one head merged, in order, into out [D].
__attribute__((noinline)) void merge_head(const float* o, const float* m, const float* s, int64_t nc, int64_t D,
                                          float* out) {
  float mx = -INFINITY;
  for (int64_t c = 0; c < nc; c++) mx = std::max(mx, m[c]);
  float den = 0.f;
  for (int64_t i = 0; i < D; i++) out[i] = 0.f;
  for (int64_t c = 0; c < nc; c++) {
    const float f = std::exp(m[c] - mx);
    den += f * s[c];
    for (int64_t i = 0; i < D; i++) out[i] += f * o[c * D + i];
  }
  const float inv = 1.0f / den;
  for (int64_t i = 0; i < D; i++) out[i] *= inv;
}

// Work unit j of B * KVH * nc: chunk c of kv head g of sequence b, for the G query heads of the group.
// q rows of the G heads at q (stride D); parts go to o [B, H, nc, D], m and s [B, H, nc]; p: KCH floats.
// Caches of fp32 (half = false) or fp16 elements, strides in elements; fp16 chunks are converted into kvbuf
// (2 * KCH * D floats) first.
inline void attend_unit(int64_t j, int64_t nc, int64_t KVH, int64_t G, int64_t L, int64_t D, float scale,
                        const float* qp, int64_t q_bstride, const void* kp, const void* vp, bool half, int64_t ksb,
                        int64_t ksh, int64_t vsb, int64_t vsh, float* p, float* kvbuf, float* o, float* m, float* s) {
  const int64_t c = j % nc, g = (j / nc) % KVH, b = j / (nc * KVH);
  const int64_t l0 = c * KCH, n = std::min(KCH, L - l0), H = KVH * G;
  const int64_t ko = b * ksb + g * ksh + l0 * D, vo = b * vsb + g * vsh + l0 * D;
  const float *k, *v;
  if (half) {
    load_kv((const uint16_t*)kp + ko, true, kvbuf, n * D);
    load_kv((const uint16_t*)vp + vo, true, kvbuf + KCH * D, n * D);
    k = kvbuf, v = kvbuf + KCH * D;
  } else {
    k = (const float*)kp + ko, v = (const float*)vp + vo;
  }
  for (int64_t h = g * G; h < (g + 1) * G; h++) {
    const int64_t u = (b * H + h) * nc + c;
    attend_part(qp + b * q_bstride + h * D, k, v, n, D, scale, p, o + u * D, m + u, s + u);
  }
}

// out[n] = w * x[n] / sqrt(mean(x[n]^2) + eps)   (x: [N, D])
at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w_in, double eps) {
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "rms_norm: fp32 only");
  const int64_t D = x.size(-1), N = x.numel() / D;
  at::Tensor out = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) rms_row(xp + n * D, wp, (float)eps, D, op + n * D);
  });
  return out;
}

// Rotate-half RoPE, in place, on the first n_heads heads of each row of x ([N, >= n_heads*D]); cos/sin: [N, D].
void rope_(at::Tensor& x, const at::Tensor& cos_in, const at::Tensor& sin_in, int64_t n_heads, int64_t D) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.stride(-1) == 1 && x.dim() == 2, "rope_: fp32 [N, C] rows");
  const at::Tensor c = cos_in.contiguous(), s = sin_in.contiguous();
  const int64_t N = x.size(0), ld = x.stride(0);
  float* xp = x.data_ptr<float>();
  const float *cp = c.data_ptr<float>(), *sp = s.data_ptr<float>();
  at::parallel_for(0, N * n_heads, 16, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j++) {
      const int64_t n = j / n_heads, h = j % n_heads;
      rope_head(xp + n * ld + h * D, cp + n * D, sp + n * D, D);
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
    for (int64_t n = n0; n < n1; n++) silu_mul_range(gp + n * 2 * H, gp + n * 2 * H + H, op + n * H, 0, H);
  });
  return out;
}

// One query row per sequence against its cached keys: q rows at qp + b * q_bstride ([H, D] each); k, v rows of
// D at kp + b * ksb + g * ksh (first L positions used; fp32 or, half, fp16 elements); out [B, H, D]. Grouped-query:
// query head h reads kv head h / (H / KVH).
void attend_core(const float* qp, int64_t q_bstride, const void* kp, const void* vp, bool half, int64_t ksb,
                 int64_t ksh, int64_t vsb, int64_t vsh, int64_t B, int64_t H, int64_t KVH, int64_t D, int64_t L,
                 double scale, float* op) {
  const int64_t G = H / KVH, nc = (L + KCH - 1) / KCH;
  std::vector<float> o(B * H * nc * D), m(B * H * nc), s(B * H * nc);
  at::parallel_for(0, B * KVH * nc, 1, [&](int64_t j0, int64_t j1) {
    float p[KCH];
    std::vector<float> kvbuf(half ? 2 * KCH * D : 0);
    for (int64_t j = j0; j < j1; j++)
      attend_unit(j, nc, KVH, G, L, D, (float)scale, qp, q_bstride, kp, vp, half, ksb, ksh, vsb, vsh, p, kvbuf.data(),
                  o.data(), m.data(), s.data());
  });
  for (int64_t u = 0; u < B * H; u++)
    merge_head(o.data() + u * nc * D, m.data() + u * nc, s.data() + u * nc, nc, D, op + u * D);
}

at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v, int64_t L, double scale) {
  const at::Tensor q = q_in.contiguous();
  TORCH_CHECK(q.scalar_type() == at::kFloat, "decode_attention: fp32 queries");
  const bool half = kv_half(k, v, "decode_attention");
  TORCH_CHECK(k.stride(-1) == 1 && v.stride(-1) == 1 && k.stride(-2) == k.size(-1) && v.stride(-2) == v.size(-1),
              "decode_attention: cache rows must be contiguous");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KVH = k.size(1);
  TORCH_CHECK(L >= 1 && L <= k.size(2) && H % KVH == 0, "decode_attention: bad length or head counts");
  at::Tensor out = at::empty_like(q);
  attend_core(q.data_ptr<float>(), H * D, k.data_ptr(), v.data_ptr(), half, k.stride(0),
              k.stride(1), v.stride(0), v.stride(1), B, H, KVH, D, L, scale, out.data_ptr<float>());
  return out;
}

void check_caches(const at::Tensor& k, const at::Tensor& v) {
  kv_half(k, v, "caches");
  TORCH_CHECK(k.device().is_cpu() && k.dim() == 5 && k.is_contiguous() && v.is_contiguous() && k.sizes() == v.sizes(),
              "caches must be contiguous fp32 or fp16 CPU tensors [n_layers, B, KVH, Lmax, D]");
}

// One decode step of one layer's attention in a single call: qkv [B, (H + 2 KVH) * D] (RoPE applied) has its k and
// v written into the caches k, v [n_layers, B, KVH, Lmax, D] at `pos`, then its q attends over positions 0..pos.
at::Tensor attend_decode(const at::Tensor& qkv, at::Tensor& k, at::Tensor& v, int64_t layer, int64_t pos, int64_t H,
                         int64_t KVH, double scale) {
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.dim() == 2 && qkv.stride(1) == 1, "attend_decode: fp32 [B, C] rows");
  check_caches(k, v);
  const int64_t B = qkv.size(0), D = k.size(4), Lmax = k.size(3);
  TORCH_CHECK(qkv.size(1) == (H + 2 * KVH) * D && k.size(1) == B && k.size(2) == KVH && H % KVH == 0,
              "attend_decode: shapes do not match the cache");
  TORCH_CHECK(layer >= 0 && layer < k.size(0) && pos >= 0 && pos < Lmax, "attend_decode: position ", pos,
              " outside the cache of ", Lmax);
  const int64_t ld = qkv.stride(0);
  const float* src = qkv.data_ptr<float>();
  const bool half = kv_half(k, v, "attend_decode");
  const int64_t es = k.element_size();
  char *kc = (char*)k.data_ptr() + layer * k.stride(0) * es, *vc = (char*)v.data_ptr() + layer * v.stride(0) * es;
  const int64_t sb = k.stride(1), sh = k.stride(2);
  for (int64_t b = 0; b < B; b++)
    for (int64_t g = 0; g < KVH; g++) {
      store_kv(kc + (b * sb + g * sh + pos * D) * es, half, src + b * ld + (H + g) * D, D);
      store_kv(vc + (b * sb + g * sh + pos * D) * es, half, src + b * ld + (H + KVH + g) * D, D);
    }
  at::Tensor out = at::empty({B, H * D}, qkv.options());
  attend_core(src, ld, kc, vc, half, sb, sh, sb, sh, B, H, KVH, D, pos + 1, scale, out.data_ptr<float>());
  return out;
}

// ---- a whole decode step ---------------------------------------------------------------------------------------
// One token per sequence through every layer, the final norm and the output product in ONE OpenMP parallel region,
// as llama.cpp does: the threads split the rows of each product and the heads of attention and meet at a barrier
// between dependent steps (6 per layer); small row work (RMSNorm, activation quantization) is done by every thread
// on its own copy instead of costing a barrier. Same row functions and products as the per-op path above, so the
// logits are bit-identical to it. A plan holds the weights' addresses, built once per model (DecodePlan in Python:
// hearth/model/cpu_decode.py).

struct LayerPlan {
  const float *attn_norm = nullptr, *ffn_norm = nullptr;
  QLin qkv, wo, w13, w2;
};

inline void split(int64_t n, int nt, int tid, int64_t& a, int64_t& b) {
  a = n * tid / nt;
  b = n * (tid + 1) / nt;
}

struct DecodePlan : torch::CustomClassHolder {
  std::vector<at::Tensor> keep;  // the tensors whose memory the plan points into
  std::vector<LayerPlan> layers;
  const float* norm = nullptr;
  QLin out;
  const uint8_t* emb = nullptr;  // the token embedding's blocks, when the plan embeds token ids itself
  int64_t emb_qtype = 0, emb_rows = 0, emb_rb = 0;
  int64_t dim = 0, H = 0, KVH = 0, D = 0, hidden = 0, vocab = 0;
  double eps = 0;

  // LoRA adapters served beside the model (hearth/engine/lora.py), lora[adapter - 1][layer * 4 + slot] with slots
  // qkv, wo, w13, w2: A [k, K] and B transposed [k, N] fp32 (B scaled, zero for parts the adapter does not target);
  // k = 0: the adapter leaves that product alone. A row's update is B (A x) with x the product's fp32 input (the
  // normalized or activated row, before its 8-bit rounding), added to the product's output.
  struct LoraW {
    const float *A = nullptr, *Bt = nullptr;
    int64_t k = 0, N = 0;
  };
  std::vector<std::vector<LoraW>> lora;
  int64_t lora_kmax = 0;

  // One adapter: ks[layer * 4 + slot] ranks, and for each k > 0 its A then B^T, in that order. Returns its index (1...).
  int64_t add_lora(std::vector<at::Tensor> tensors, std::vector<int64_t> ks) {
    TORCH_CHECK(ks.size() == layers.size() * 4, "DecodePlan.add_lora: need a rank for each of 4 products per layer");
    std::vector<LoraW> ws(ks.size());
    size_t ti = 0;
    for (size_t i = 0; i < ks.size(); i++) {
      if (ks[i] == 0) continue;
      const QLin& lin = i % 4 == 0 ? layers[i / 4].qkv : i % 4 == 1 ? layers[i / 4].wo : i % 4 == 2 ? layers[i / 4].w13 : layers[i / 4].w2;
      TORCH_CHECK(ti + 2 <= tensors.size(), "DecodePlan.add_lora: too few tensors");
      const at::Tensor &A = tensors[ti], &Bm = tensors[ti + 1];
      ti += 2;
      TORCH_CHECK(A.device().is_cpu() && A.scalar_type() == at::kFloat && A.is_contiguous() && A.dim() == 2 &&
                  A.size(0) == ks[i] && A.size(1) == lin.K && Bm.device().is_cpu() && Bm.scalar_type() == at::kFloat &&
                  Bm.is_contiguous() && Bm.dim() == 2 && Bm.size(0) == ks[i] && Bm.size(1) == lin.N,
                  "DecodePlan.add_lora: product ", i, " needs A [", ks[i], ", ", lin.K, "] and B^T [", ks[i], ", ", lin.N, "] fp32");
      keep.push_back(A);
      keep.push_back(Bm);
      ws[i] = LoraW{A.data_ptr<float>(), Bm.data_ptr<float>(), ks[i], lin.N};
      lora_kmax = std::max(lora_kmax, ks[i]);
    }
    TORCH_CHECK(ti == tensors.size(), "DecodePlan.add_lora: ", tensors.size() - ti, " tensors left over");
    lora.push_back(std::move(ws));
    return (int64_t)lora.size();
  }

  // tensors: per layer attention_norm, the q|k|v parts, the wo parts, ffn_norm, the gate|up parts, the down parts;
  // then the final norm, the output parts and, optionally, the token embedding's blocks. meta: n_layers, dim,
  // n_heads, n_kv_heads, head_dim, hidden, then per layer (qtype, number of parts) for qkv, wo, w13, w2, then for
  // the output, then (qtype, 1) for the embedding or (0, 0) for none.
  DecodePlan(std::vector<at::Tensor> tensors, std::vector<int64_t> meta, double eps_) : keep(std::move(tensors)), eps(eps_) {
    TORCH_CHECK(meta.size() >= 6, "DecodePlan: short meta");
    const int64_t n_layers = meta[0];
    dim = meta[1], H = meta[2], KVH = meta[3], D = meta[4], hidden = meta[5];
    TORCH_CHECK(n_layers >= 1 && H % KVH == 0 && (int64_t)meta.size() == 6 + 8 * n_layers + 4, "DecodePlan: bad meta");
    size_t ti = 0, mi = 6;
    auto next = [&]() -> const at::Tensor& {
      TORCH_CHECK(ti < keep.size(), "DecodePlan: too few tensors");
      return keep[ti++];
    };
    auto vec = [&](int64_t n) {
      const at::Tensor& t = next();
      TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n,
                  "DecodePlan: norm weights must be contiguous fp32 CPU vectors of ", n);
      return t.data_ptr<float>();
    };
    auto lin = [&](int64_t K, int64_t N) {
      const int64_t qtype = meta[mi], parts = meta[mi + 1];
      mi += 2;
      TORCH_CHECK(parts >= 1 && ti + parts <= keep.size(), "DecodePlan: too few tensors");
      QLin q(at::TensorList(keep.data() + ti, parts), qtype, K);
      ti += parts;
      TORCH_CHECK(N < 0 || q.N == N, "DecodePlan: a product has ", q.N, " outputs, expected ", N);
      return q;
    };
    for (int64_t i = 0; i < n_layers; i++) {
      LayerPlan L;
      L.attn_norm = vec(dim);
      L.qkv = lin(dim, (H + 2 * KVH) * D);
      L.wo = lin(H * D, dim);
      L.ffn_norm = vec(dim);
      L.w13 = lin(dim, 2 * hidden);
      L.w2 = lin(hidden, dim);
      layers.push_back(std::move(L));
    }
    norm = vec(dim);
    out = lin(dim, -1);
    vocab = out.N;
    if (meta[mi + 1] == 1) {
      const at::Tensor& e = next();
      emb_qtype = meta[mi];
      check_weight(e, emb_qtype, dim);
      emb = e.data_ptr<uint8_t>(), emb_rows = e.size(0), emb_rb = e.size(1);
    }
    TORCH_CHECK(ti == keep.size(), "DecodePlan: ", keep.size() - ti, " tensors left over");
  }

  // Where a step's k and v rows lie. Contiguous: caches [n_layers, B, KVH, Lmax, D], row (b, g, l) at
  // b * sb + g * sh + l * D of a layer. Paged (the serving engine's pools [n_layers, slots, KVH, D]): position l of
  // sequence b is in slot tab[b * W + l / bs] * bs + l % bs, its (slot, g) row at slot * KVH * D + g * D; a chunk of
  // attention is gathered from those rows into a contiguous buffer first, so attend_part does the same arithmetic.
  struct CacheView {
    char *k = nullptr, *v = nullptr;
    bool half = false;    // fp16 elements (else fp32)
    int64_t es = 4;       // bytes per element
    int64_t sl = 0;       // layer stride
    int64_t sb = 0, sh = 0;  // contiguous
    const int64_t* tab = nullptr;  // paged: block tables [B, W]
    int64_t W = 0, bs = 0;

    CacheView(const at::Tensor& k_, const at::Tensor& v_, const char* what)
        : k((char*)k_.data_ptr()), v((char*)v_.data_ptr()), half(kv_half(k_, v_, what)), es(k_.element_size()),
          sl(k_.stride(0)) {}
  };

  // the checks shared by both steps: x0 are ids [B] or fp32 rows [B, dim]; cos/sin hold rows up to max_pos
  bool check_x(const at::Tensor& x0, const char* what) const {
    TORCH_CHECK(x0.device().is_cpu(), what, ": x must be on the CPU");
    const bool ids = x0.scalar_type() == at::kLong;
    TORCH_CHECK(ids ? (emb != nullptr && x0.dim() == 1) : (x0.scalar_type() == at::kFloat && x0.dim() == 2 && x0.size(1) == dim),
                what, ": x must be fp32 [B, ", dim, "] or, with an embedding in the plan, int64 token ids [B]");
    return ids;
  }
  void check_tables(const at::Tensor& cos, const at::Tensor& sin, int64_t max_pos, const char* what) const {
    TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
                sin.is_contiguous() && cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(1) == D && max_pos < cos.size(0),
                what, ": cos/sin must be contiguous fp32 [> pos, head_dim] tables");
  }

  // x: the embedded tokens at position pos, [B, dim] fp32, or (a plan with the embedding) their ids, [B] int64;
  // caches [n_layers, B, KVH, Lmax, D]; cos/sin [>pos, D] tables by position. Writes each layer's k, v at pos and
  // returns the logits [B, vocab].
  at::Tensor step(at::Tensor x_in, at::Tensor k, at::Tensor v, at::Tensor cos, at::Tensor sin, int64_t pos) {
    return contiguous(x_in, k, v, cos, sin, pos, nullptr);
  }

  // step with one served LoRA adapter for every row (add_lora's index): `hearth run --adapter` on the native path
  at::Tensor step_lora(at::Tensor x_in, at::Tensor k, at::Tensor v, at::Tensor cos, at::Tensor sin, int64_t pos,
                       int64_t adapter) {
    TORCH_CHECK(adapter >= 0 && adapter <= (int64_t)lora.size(), "DecodePlan.step_lora: no adapter ", adapter);
    std::vector<int64_t> ad(x_in.size(0), adapter);
    return contiguous(x_in, k, v, cos, sin, pos, ad.data());
  }

  at::Tensor contiguous(at::Tensor x_in, at::Tensor k, at::Tensor v, at::Tensor cos, at::Tensor sin, int64_t pos,
                        const int64_t* ad) {
    const at::Tensor x0 = x_in.contiguous();
    const bool ids = check_x(x0, "DecodePlan.step");
    check_caches(k, v);
    const int64_t B = x0.size(0), Lmax = k.size(3);
    TORCH_CHECK(k.size(0) == (int64_t)layers.size() && k.size(1) == B && k.size(2) == KVH && k.size(4) == D,
                "DecodePlan.step: the cache does not fit the model or the batch");
    TORCH_CHECK(pos >= 0 && pos < Lmax, "DecodePlan.step: position ", pos, " outside the cache of ", Lmax);
    check_tables(cos, sin, pos, "DecodePlan.step");
    CacheView c(k, v, "DecodePlan.step");
    c.sb = k.stride(1), c.sh = k.stride(2);
    std::vector<int64_t> positions(B, pos);
    return run<false>(x0, ids, positions, c, cos, sin, ad);
  }

  // The same step for the serving engine's paged cache: tokens x as for step, one position per sequence
  // (positions [B] int64), pools k, v [n_layers, slots, KVH, D] and block tables [B, W] int64 of block_size slots
  // each. Writes each layer's k, v into the slot of positions[b] and attends over positions 0..positions[b].
  at::Tensor step_paged(at::Tensor x_in, at::Tensor positions_in, at::Tensor k, at::Tensor v, at::Tensor tables_in,
                        int64_t block_size, at::Tensor cos, at::Tensor sin) {
    return paged(x_in, positions_in, k, v, tables_in, block_size, cos, sin, nullptr);
  }

  // step_paged with each sequence's served LoRA adapter (adapters [B] int64: 0 none, else add_lora's index)
  at::Tensor step_paged_lora(at::Tensor x_in, at::Tensor positions_in, at::Tensor k, at::Tensor v, at::Tensor tables_in,
                             int64_t block_size, at::Tensor cos, at::Tensor sin, at::Tensor adapters_in) {
    const at::Tensor ad = adapters_in.contiguous();
    TORCH_CHECK(ad.device().is_cpu() && ad.scalar_type() == at::kLong && ad.dim() == 1 && ad.size(0) == x_in.size(0),
                "DecodePlan.step_paged_lora: adapters must be int64 [B]");
    const int64_t* ap = ad.data_ptr<int64_t>();
    for (int64_t b = 0; b < ad.size(0); b++)
      TORCH_CHECK(ap[b] >= 0 && ap[b] <= (int64_t)lora.size(), "DecodePlan.step_paged_lora: no adapter ", ap[b]);
    return paged(x_in, positions_in, k, v, tables_in, block_size, cos, sin, ap);
  }

  at::Tensor paged(at::Tensor x_in, at::Tensor positions_in, at::Tensor k, at::Tensor v, at::Tensor tables_in,
                   int64_t block_size, at::Tensor cos, at::Tensor sin, const int64_t* ad) {
    const at::Tensor x0 = x_in.contiguous();
    const bool ids = check_x(x0, "DecodePlan.step_paged");
    const int64_t B = x0.size(0);
    kv_half(k, v, "DecodePlan.step_paged");
    TORCH_CHECK(k.device().is_cpu() && k.dim() == 4 && k.is_contiguous() && v.is_contiguous() && k.sizes() == v.sizes(),
                "DecodePlan.step_paged: pools must be contiguous fp32 or fp16 CPU tensors [n_layers, slots, KVH, D]");
    TORCH_CHECK(k.size(0) == (int64_t)layers.size() && k.size(2) == KVH && k.size(3) == D,
                "DecodePlan.step_paged: the pools do not fit the model");
    const at::Tensor pos_t = positions_in.contiguous(), tab = tables_in.contiguous();
    TORCH_CHECK(pos_t.device().is_cpu() && pos_t.scalar_type() == at::kLong && pos_t.dim() == 1 && pos_t.size(0) == B,
                "DecodePlan.step_paged: positions must be int64 [B]");
    TORCH_CHECK(tab.device().is_cpu() && tab.scalar_type() == at::kLong && tab.dim() == 2 && tab.size(0) == B,
                "DecodePlan.step_paged: block tables must be int64 [B, W]");
    TORCH_CHECK(block_size >= 1 && k.size(1) % block_size == 0, "DecodePlan.step_paged: bad block size ", block_size);
    const int64_t W = tab.size(1), nblocks = k.size(1) / block_size;
    const int64_t* pp = pos_t.data_ptr<int64_t>();
    const int64_t* tp = tab.data_ptr<int64_t>();
    std::vector<int64_t> positions(pp, pp + B);
    int64_t max_pos = 0;
    for (int64_t b = 0; b < B; b++) {
      TORCH_CHECK(pp[b] >= 0 && pp[b] < W * block_size, "DecodePlan.step_paged: position ", pp[b],
                  " outside the block table of ", W * block_size);
      for (int64_t i = 0; i <= pp[b] / block_size; i++)
        TORCH_CHECK(tp[b * W + i] >= 0 && tp[b * W + i] < nblocks, "DecodePlan.step_paged: block ", tp[b * W + i],
                    " outside the pool of ", nblocks);
      max_pos = std::max(max_pos, pp[b]);
    }
    check_tables(cos, sin, max_pos, "DecodePlan.step_paged");
    CacheView c(k, v, "DecodePlan.step_paged");
    c.tab = tp, c.W = W, c.bs = block_size;
    return run<true>(x0, ids, positions, c, cos, sin, ad);
  }

  template <bool Paged>
  at::Tensor run(const at::Tensor& x0, bool ids, const std::vector<int64_t>& positions, const CacheView& c,
                 const at::Tensor& cos, const at::Tensor& sin, const int64_t* ad = nullptr) {
    const int64_t B = x0.size(0);
    const float* cosp = cos.data_ptr<float>();
    const float* sinp = sin.data_ptr<float>();
    const int64_t Nqkv = (H + 2 * KVH) * D, HD = H * D, G = H / KVH;
    const int64_t nbh = hidden / QK, nba = std::max(dim, HD) / QK;
    const float scale = 1.0f / std::sqrt((float)D);
    at::Tensor logits = at::empty({B, vocab}, at::TensorOptions().dtype(at::kFloat));
    float* lp = logits.data_ptr<float>();
    const int64_t rs = KVH * D;  // paged: a slot's row stride

    // attention work units (sequence, kv head, chunk of KCH positions) and each sequence's chunk count; the
    // chunk parts are stored with a stride of the longest sequence's count
    std::vector<int64_t> ncs(B);
    int64_t nc = 1;
    for (int64_t b = 0; b < B; b++) {
      ncs[b] = (positions[b] + 1 + KCH - 1) / KCH;
      nc = std::max(nc, ncs[b]);
    }
    std::vector<int64_t> units;  // b * KVH * nc + g * nc + c, in the order of the contiguous step
    units.reserve(B * KVH * nc);
    for (int64_t b = 0; b < B; b++)
      for (int64_t g = 0; g < KVH; g++)
        for (int64_t ci = 0; ci < ncs[b]; ci++) units.push_back((b * KVH + g) * nc + ci);
    const int64_t n_units = units.size();

    const int nth = std::max(1, at::get_num_threads());
    std::vector<float> xw(B * dim);  // the residual stream
    if (ids) {
      const int64_t* tp = x0.data_ptr<int64_t>();
      for (int64_t r = 0; r < B; r++) {
        TORCH_CHECK(tp[r] >= 0 && tp[r] < emb_rows, "DecodePlan.step: token id ", tp[r], " outside the embedding of ", emb_rows);
        dequant_row(emb + tp[r] * emb_rb, emb_qtype, dim, xw.data() + r * dim);
      }
    } else {
      std::memcpy(xw.data(), x0.data_ptr<float>(), B * dim * sizeof(float));
    }
    std::vector<float> qkv(B * Nqkv), y(B * dim), gu(B * 2 * hidden), hb(B * hidden);
    std::vector<float> xn((size_t)nth * B * dim), p((size_t)nth * KCH), att_own((size_t)nth * B * HD);
    std::vector<float> ao(B * H * nc * D), am(B * H * nc), as(B * H * nc);
    // paged or fp16: each thread's chunk of k and v, gathered and converted to fp32
    const bool gather = Paged || c.half;
    std::vector<float> kvbuf(gather ? (size_t)nth * 2 * KCH * D : 0);
    std::vector<BlockQ8A> act_own((size_t)nth * B * nba), act_h(B * nbh);
    // F16 products take fp16-rounded fp32 rows instead of 8-bit blocks
    std::vector<float> actf_own((size_t)nth * B * nba * QK), actf_h(B * hidden);
    float* xs = xw.data();
    // served LoRA adapters: each thread's A x of every row (B x lora_kmax)
    const int64_t KM = ad != nullptr ? lora_kmax : 0;
    std::vector<float> lu((size_t)nth * B * KM);

#pragma omp parallel num_threads(nth)
    {
      const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
      BlockQ8A* my = act_own.data() + (size_t)tid * B * nba;
      float* myf = actf_own.data() + (size_t)tid * B * nba * QK;
      const Act mine{my, myf}, hid{act_h.data(), actf_h.data()};
      // this thread's activations of `lin` from its rows xr (B x K, as lin.K)
      auto prepare = [&](const QLin& lin, const float* xr) {
        const int64_t K = lin.K;
        for (int64_t r = 0; r < B; r++) {
          if (lin.qtype == F16) round_row_f16(xr + r * K, myf + r * K, K);
          else quantize_row(xr + r * K, my + r * lin.nb, lin.nb);
        }
      };
      float* xt = xn.data() + (size_t)tid * B * dim;
      float* pt = p.data() + (size_t)tid * KCH;
      float* at_own = att_own.data() + (size_t)tid * B * HD;
      float* kbuf = gather ? kvbuf.data() + (size_t)tid * 2 * KCH * D : nullptr;
      float* vbuf = gather ? kbuf + KCH * D : nullptr;
      int64_t a, b;
      float* mu = lu.data() + (size_t)tid * B * KM;
      // the LoRA update of product `slot` of layer li: A x of each row with an adapter (x: B rows of K), then
      // B (A x) added to out[r * ldo + n] for the columns [n0, n1) this thread produced
      auto lora_of = [&](int64_t r, size_t li, int slot) -> const LoraW* {
        if (KM == 0 || ad[r] == 0) return nullptr;
        const LoraW& w = lora[ad[r] - 1][li * 4 + slot];
        return w.k > 0 ? &w : nullptr;
      };
      auto lora_in = [&](size_t li, int slot, const float* x, int64_t K) {
        for (int64_t r = 0; r < B; r++) {
          const LoraW* w = lora_of(r, li, slot);
          if (w == nullptr) continue;
          for (int64_t j = 0; j < w->k; j++) mu[r * KM + j] = dot_f32(w->A + j * K, x + r * K, K);
        }
      };
      auto lora_out = [&](size_t li, int slot, float* out, int64_t ldo, int64_t n0, int64_t n1) {
        for (int64_t r = 0; r < B; r++) {
          const LoraW* w = lora_of(r, li, slot);
          if (w == nullptr) continue;
          const float* u = mu + r * KM;
          float* o = out + r * ldo;
          int64_t n = n0;
          for (; n + 8 <= n1; n += 8) {  // 8 columns at a time: their updates summed over j, then added once
            __m256 acc = _mm256_setzero_ps();
            for (int64_t j = 0; j < w->k; j++)
              acc = _mm256_fmadd_ps(_mm256_loadu_ps(w->Bt + j * w->N + n), _mm256_set1_ps(u[j]), acc);
            _mm256_storeu_ps(o + n, _mm256_add_ps(_mm256_loadu_ps(o + n), acc));
          }
          for (; n < n1; n++) {
            float s = 0.f;
            for (int64_t j = 0; j < w->k; j++) s += w->Bt[j * w->N + n] * u[j];
            o[n] += s;
          }
        }
      };
      // every thread: normalize the residual rows and quantize them into its own activation blocks
      auto norm_quant = [&](const float* w, const QLin& lin) {
        for (int64_t r = 0; r < B; r++) rms_row(xs + r * dim, w, (float)eps, dim, xt + r * dim);
        prepare(lin, xt);
      };
      // this thread's tiles of a product whose dim outputs are added to the residual stream
      auto product_add = [&](const QLin& lin, Act act, size_t li, int slot) {
        split(lin.tiles(), nt, tid, a, b);
        lin.run(act, B, y.data(), dim, a, b);
        lin.parts(a, b, [&](size_t, int64_t col0, int64_t n0, int64_t n1) {
          if (KM) lora_out(li, slot, y.data(), dim, col0 + n0, col0 + n1);
          for (int64_t r = 0; r < B; r++)
            for (int64_t n = col0 + n0; n < col0 + n1; n++) xs[r * dim + n] += y[r * dim + n];
        });
      };
      // paged: the slot of position l of sequence r
      auto slot = [&](int64_t r, int64_t l) { return c.tab[r * c.W + l / c.bs] * c.bs + l % c.bs; };
      for (size_t li = 0; li < layers.size(); li++) {
        const LayerPlan& Lp = layers[li];
        char *kl = c.k + li * c.sl * c.es, *vl = c.v + li * c.sl * c.es;
        norm_quant(Lp.attn_norm, Lp.qkv);
        split(Lp.qkv.tiles(), nt, tid, a, b);
        Lp.qkv.run(mine, B, qkv.data(), Nqkv, a, b);
        if (KM) {
          lora_in(li, 0, xt, dim);
          Lp.qkv.parts(a, b, [&](size_t, int64_t col0, int64_t n0, int64_t n1) {
            lora_out(li, 0, qkv.data(), Nqkv, col0 + n0, col0 + n1);
          });
        }
#pragma omp barrier
        // RoPE on q and k, then k and v into the caches at each sequence's position
        split(B * (H + KVH), nt, tid, a, b);
        for (int64_t j = a; j < b; j++) {
          const int64_t r = j / (H + KVH), h = j % (H + KVH), pos = positions[r];
          float* hp = qkv.data() + r * Nqkv + h * D;
          rope_head(hp, cosp + pos * D, sinp + pos * D, D);
          if (h >= H) {
            const int64_t g = h - H;
            const int64_t off = Paged ? slot(r, pos) * rs + g * D : r * c.sb + g * c.sh + pos * D;
            store_kv(kl + off * c.es, c.half, hp, D);
            store_kv(vl + off * c.es, c.half, hp + KVH * D, D);
          }
        }
#pragma omp barrier
        // attention by (sequence, kv head, chunk of positions)
        split(n_units, nt, tid, a, b);
        for (int64_t j = a; j < b; j++) {
          const int64_t u = units[j];
          const int64_t ci = u % nc, g = (u / nc) % KVH, r = u / (nc * KVH);
          const int64_t l0 = ci * KCH, n = std::min(KCH, positions[r] + 1 - l0);
          const float *kp, *vp;
          if (Paged) {
            for (int64_t l = 0; l < n; l++) {
              const int64_t off = (slot(r, l0 + l) * rs + g * D) * c.es;
              load_kv(kl + off, c.half, kbuf + l * D, D);
              load_kv(vl + off, c.half, vbuf + l * D, D);
            }
            kp = kbuf, vp = vbuf;
          } else if (c.half) {  // a contiguous chunk of n rows
            const int64_t off = (r * c.sb + g * c.sh + l0 * D) * c.es;
            load_kv(kl + off, true, kbuf, n * D);
            load_kv(vl + off, true, vbuf, n * D);
            kp = kbuf, vp = vbuf;
          } else {
            kp = (const float*)kl + r * c.sb + g * c.sh + l0 * D;
            vp = (const float*)vl + r * c.sb + g * c.sh + l0 * D;
          }
          for (int64_t h = g * G; h < (g + 1) * G; h++) {
            const int64_t w = (r * H + h) * nc + ci;
            attend_part(qkv.data() + r * Nqkv + h * D, kp, vp, n, D, scale, pt, ao.data() + w * D, am.data() + w,
                        as.data() + w);
          }
        }
#pragma omp barrier
        // every thread merges the chunks into its own copy of the attention output
        for (int64_t u = 0; u < B * H; u++) {
          const int64_t nr = ncs[u / H];
          merge_head(ao.data() + u * nc * D, am.data() + u * nc, as.data() + u * nc, nr, D, at_own + u * D);
        }
        prepare(Lp.wo, at_own);
        if (KM) lora_in(li, 1, at_own, HD);
        product_add(Lp.wo, mine, li, 1);
#pragma omp barrier
        norm_quant(Lp.ffn_norm, Lp.w13);
        split(Lp.w13.tiles(), nt, tid, a, b);
        Lp.w13.run(mine, B, gu.data(), 2 * hidden, a, b);
        if (KM) {
          lora_in(li, 2, xt, dim);
          Lp.w13.parts(a, b, [&](size_t, int64_t col0, int64_t n0, int64_t n1) {
            lora_out(li, 2, gu.data(), 2 * hidden, col0 + n0, col0 + n1);
          });
        }
#pragma omp barrier
        // silu(gate) * up and its quantization, by blocks of 32
        split(B * nbh, nt, tid, a, b);
        for (int64_t j = a; j < b; j++) {
          const int64_t r = j / nbh, cc = (j % nbh) * QK;
          const float* g = gu.data() + r * 2 * hidden;
          silu_mul_range(g, g + hidden, hb.data() + r * hidden, cc, cc + QK);
          if (Lp.w2.qtype == F16) round_row_f16(hb.data() + r * hidden + cc, actf_h.data() + r * hidden + cc, QK);
          else quantize_row(hb.data() + r * hidden + cc, act_h.data() + j, 1);
        }
#pragma omp barrier
        if (KM) lora_in(li, 3, hb.data(), hidden);
        product_add(Lp.w2, hid, li, 3);
#pragma omp barrier
      }
      norm_quant(norm, out);
      split(out.tiles(), nt, tid, a, b);
      out.run(mine, B, lp, vocab, a, b);
    }
    return logits;
  }
};

}  // namespace

TORCH_LIBRARY(hearth, m) {
  m.def("gguf_mm(Tensor x, Tensor[] ws, int qtype) -> Tensor");
  m.def("gguf_dequant(Tensor w, int qtype, int cols) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("rope_(Tensor(a!) x, Tensor cos, Tensor sin, int n_heads, int head_dim) -> ()");
  m.def("silu_mul(Tensor gu) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, int length, float scale) -> Tensor");
  m.def("attend_decode(Tensor qkv, Tensor(a!) k, Tensor(b!) v, int layer, int pos, int n_heads, int n_kv_heads, float scale) -> Tensor");
  m.class_<DecodePlan>("DecodePlan")
      .def(torch::init<std::vector<at::Tensor>, std::vector<int64_t>, double>())
      .def("step", &DecodePlan::step)
      .def("step_paged", &DecodePlan::step_paged)
      .def("step_paged_lora", &DecodePlan::step_paged_lora)
      .def("step_lora", &DecodePlan::step_lora)
      .def("add_lora", &DecodePlan::add_lora);
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
