// y = x Wᵀ + b for the few rows of a decoding step, W streamed from memory once (docs/fast.md says why).
//
// x (rows in) float32; W (out in) float32, bfloat16 or int8 in blocks of 32; b (out) float32 or
// empty; y (rows out) float32. Each weight format is one computation, whichever kernel runs it
// (kernels.py; rows.py's format_product writes each in PyTorch): float32 and bfloat16 x·W + b, W
// widened to float32 as it is read; int8 x rounded to 16-bit integers (one scale per row) times
// W's blocks (one float16 scale per 32 weights), plus b. Each thread takes a share of W's rows (the outputs);
// each W row is read from memory once and, while it sits in the L1 cache, multiplied by every row
// of x. Products accumulate over vector lanes, summed once at the end.
//
// One file, built once per instruction-set level (rows.py: -march=x86-64-v2, -v3 for AVX2 + FMA,
// -v4 for AVX-512, and VNNI), each level its own operator namespace MINIGPT_OPS. Every kernel below
// has one body per level, chosen by the preprocessor as llama.cpp's ggml-cpu does, and a generic
// body that is the reference the tests hold the others to (tests/test_rows.py).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t BLOCK = 32;  // the int8 format's block: one scale per 32 weights of a row

// ---- float vectors: LANES floats, and the four things the kernels do with them ------------------

#if defined(__AVX512F__)
constexpr int64_t LANES = 16;
using Floats = __m512;
inline Floats zeros() { return _mm512_setzero_ps(); }
inline Floats load(const float* at) { return _mm512_loadu_ps(at); }
inline Floats load(const uint16_t* at) {  // 16 bfloat16 widened: bfloat16 is float32's top 16 bits
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at))), 16));
}
inline Floats fma(Floats a, Floats b, Floats c) { return _mm512_fmadd_ps(a, b, c); }
inline float sum(Floats v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t LANES = 8;
using Floats = __m256;
inline Floats zeros() { return _mm256_setzero_ps(); }
inline Floats load(const float* at) { return _mm256_loadu_ps(at); }
inline Floats load(const uint16_t* at) {  // 8 bfloat16 widened
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at))), 16));
}
inline Floats fma(Floats a, Floats b, Floats c) { return _mm256_fmadd_ps(a, b, c); }
inline float sum(Floats v) {  // halves added in three steps: 8 -> 4 -> 2 -> 1
  __m128 four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  four = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(four, _mm_movehdup_ps(four)));
}
#else  // any other CPU: the compiler's own vectors, as wide as two SSE (or NEON) registers
constexpr int64_t LANES = 8;
typedef float Floats __attribute__((vector_size(4 * LANES)));
typedef uint16_t Halves __attribute__((vector_size(2 * LANES)));
typedef uint32_t Words __attribute__((vector_size(4 * LANES)));
inline Floats zeros() { return Floats{}; }
inline Floats load(const float* at) { Floats v; std::memcpy(&v, at, sizeof v); return v; }
inline Floats load(const uint16_t* at) {
  Halves h;
  std::memcpy(&h, at, sizeof h);
  return (Floats)(__builtin_convertvector(h, Words) << 16);
}
inline Floats fma(Floats a, Floats b, Floats c) { return a * b + c; }
inline float sum(Floats v) {  // pairwise, as the vector versions add their halves
  for (int64_t width = LANES / 2; width > 0; width /= 2)
    for (int64_t k = 0; k < width; ++k) v[k] += v[k + width];
  return v[0];
}
#endif

// Each thread takes a share of W's rows (the outputs o); each is read from memory once, then from
// the L1 cache by x's rows four at a time and the 3, 2 or 1 left: times.rows<R>(r0, o), R a
// compile-time number so that its accumulators stay in registers.
template <typename Times>
void each_output(int64_t rows, int64_t out, const Times& times) {
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      int64_t r0 = 0;
      for (; r0 + 4 <= rows; r0 += 4) times.template rows<4>(r0, o);
      switch (rows - r0) {
        case 3: times.template rows<3>(r0, o); break;
        case 2: times.template rows<2>(r0, o); break;
        case 1: times.template rows<1>(r0, o); break;
      }
    }
  });
}

// `ahead`: where it is not 0, each weight is asked for that many bytes before it is used (a
// software prefetch). Whether that helps depends on the CPU: on an AVX-512 EPYC it lifted the
// float32 step from 70-87% of a plain read's speed to 87-93%, on an AVX2 EPYC it cut it from
// 102-107% to 78-96%. So both are candidates, timed on the machine (packed.py, kernels.py).
template <typename Weight>  // float32 (float) or bfloat16 (uint16_t) W times float32 x
struct FloatTimes {
  const float* x;
  int64_t in;
  const Weight* w;
  int64_t out;
  const float* bias;
  float* y;
  int64_t ahead;

  template <int R>
  void rows(int64_t r0, int64_t o) const {
    Floats even[R], odd[R];  // two per row: consecutive FMAs need not wait for each other
    for (int r = 0; r < R; ++r) even[r] = odd[r] = zeros();
    const Weight* row = w + o * in;
    for (int64_t start = 0; start < in; start += 2 * LANES) {
      const Floats w0 = load(row + start), w1 = load(row + start + LANES);
      if (ahead) {  // a later pass's weights, `ahead` bytes on: 64 bytes, a cache line (two for float32 at 16 lanes)
        const char* later = reinterpret_cast<const char*>(row + start) + ahead;
        __builtin_prefetch(later);
        if (sizeof(Weight) * 2 * LANES > 64) __builtin_prefetch(later + 64);
      }
      for (int r = 0; r < R; ++r) {
        even[r] = fma(w0, load(x + (r0 + r) * in + start), even[r]);
        odd[r] = fma(w1, load(x + (r0 + r) * in + start + LANES), odd[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[(r0 + r) * out + o] = sum(even[r]) + sum(odd[r]) + (bias ? bias[o] : 0.0f);
  }
};

// x's rows as 16-bit integers, one scale per row: x ≈ q · s, s = max |x[row]| / 32767 in float32,
// exactly as quantize_blocks(x, block=in, scales=torch.float32, bits=16) in rows.py. With W in int8
// a block's 32 products are integer products summed exactly, and the block costs one convert and
// one multiply-add by W's scale (x's scale is applied once, at the end): the weights stream from
// memory instead of waiting on arithmetic (docs/fast.md has the figures).
struct QuantizedRows {
  int64_t in;
  std::vector<int16_t> q;  // (rows in)
  std::vector<float> s;    // (rows)

  QuantizedRows(const float* x, int64_t rows, int64_t in) : in(in), q(rows * in), s(rows) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* v = x + r * in;
      float most = 0.0f;
      for (int64_t k = 0; k < in; ++k) most = std::max(most, std::fabs(v[k]));
      // an all-zero row's s is the smallest float, not 0, as in quantize_blocks
      const float scale = s[r] = std::max(most / 32767.0f, std::numeric_limits<float>::denorm_min());
      for (int64_t k = 0; k < in; ++k)
        q[r * in + k] = static_cast<int16_t>(std::clamp(std::nearbyint(v[k] / scale), -32767.0f, 32767.0f));
    }
  }
};

// One int8 block of W (32 weights) times the same block of R rows of x (16-bit integers, rows `in`
// apart), added to total[r] scaled by the block's scale. The block's 32 products are summed exactly
// in integer lanes, then turned into floats: at most 4 products of 127 · 32767 a lane, below 2^24.
#if defined(__AVX512BW__)
using Wide = __m512;  // 16 float lanes
constexpr int64_t SCALES = 16;
inline Wide wide_zeros() { return _mm512_setzero_ps(); }
inline void widen_scales(const at::Half* s, int64_t n, float* out) {
  _mm512_storeu_ps(out, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((1u << n) - 1, s)));
}
inline float wide_sum(Wide a, Wide b) { return _mm512_reduce_add_ps(_mm512_add_ps(a, b)); }
template <int R>
inline void block_times(const int8_t* w8, const int16_t* x16, int64_t in, float s, Wide* total) {
  // 32 weights widened to 16 bits, times 32 of x's, pairs summed into 16 ints: one vpdpwssd with
  // VNNI, one vpmaddwd without (the same sums)
  const __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w8)));
  const __m512 scale = _mm512_set1_ps(s);
  for (int r = 0; r < R; ++r) {
    const __m512i xs = _mm512_loadu_si512(x16 + r * in);
#if defined(__AVX512VNNI__)
    const __m512i sums = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w, xs);
#else
    const __m512i sums = _mm512_madd_epi16(w, xs);
#endif
    total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, total[r]);
  }
}
#elif defined(__AVX2__) && defined(__F16C__)
using Wide = __m256;  // 8 float lanes
constexpr int64_t SCALES = 8;
inline Wide wide_zeros() { return _mm256_setzero_ps(); }
inline void widen_scales(const at::Half* s, int64_t n, float* out) {
  __m128i halves;
  if (n == 8) {
    halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
  } else {  // a row's last few blocks: no reading past its scales
    alignas(16) uint16_t part[8] = {};
    std::memcpy(part, s, n * sizeof(uint16_t));
    halves = _mm_load_si128(reinterpret_cast<const __m128i*>(part));
  }
  _mm256_storeu_ps(out, _mm256_cvtph_ps(halves));
}
inline float wide_sum(Wide a, Wide b) { return sum(_mm256_add_ps(a, b)); }
template <int R>
inline void block_times(const int8_t* w8, const int16_t* x16, int64_t in, float s, Wide* total) {
  // 32 weights widened to 16 bits in two halves of 16, each times 16 of x's by vpmaddwd (pairs
  // summed into 8 ints), the halves added: 8 ints of 4 products each
  const __m256i low = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w8)));  // a load and a widening in one
  const __m256i high = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w8 + 16)));
  const __m256 scale = _mm256_set1_ps(s);
  for (int r = 0; r < R; ++r) {
    const __m256i* xs = reinterpret_cast<const __m256i*>(x16 + r * in);
    const __m256i sums = _mm256_add_epi32(_mm256_madd_epi16(low, _mm256_loadu_si256(xs)),
                                          _mm256_madd_epi16(high, _mm256_loadu_si256(xs + 1)));
    total[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, total[r]);
  }
}
#endif

// int8 W in blocks of 32, W[o][k] = q[o][k] · s[o][k / 32] (s float16, 2 bytes a block, as q8_0's),
// times x's rows as above: y[o] = s_x · Σ_b s_W[o][b] Σ_k q_W q_x, each block's inner sum exact.
struct Int8Times {
  const QuantizedRows& x;
  const int8_t* q;
  const at::Half* s;
  int64_t out;
  const float* bias;
  float* y;
  int64_t ahead;  // bytes, as FloatTimes'

  template <int R>
  void rows(int64_t r0, int64_t o) const {
    const int64_t in = x.in, blocks = in / BLOCK;
    const int8_t* wq = q + o * in;
    const at::Half* ws = s + o * blocks;
    const int16_t* xq = x.q.data() + r0 * in;
#if defined(__AVX512BW__) || (defined(__AVX2__) && defined(__F16C__))
    Wide even[R], odd[R];  // two per row, for even and odd blocks: consecutive FMAs need not wait for each other
    for (int r = 0; r < R; ++r) even[r] = odd[r] = wide_zeros();
    float scales[SCALES];  // W's float16 scales, SCALES blocks' at a time in float32
    for (int64_t b0 = 0; b0 < blocks; b0 += SCALES) {
      const int64_t n = std::min<int64_t>(SCALES, blocks - b0);
      widen_scales(ws + b0, n, scales);
      int64_t j = 0;
      for (; j + 2 <= n; j += 2) {
        if (ahead) __builtin_prefetch(reinterpret_cast<const char*>(wq + (b0 + j) * BLOCK) + ahead);  // two blocks: a line
        block_times<R>(wq + (b0 + j) * BLOCK, xq + (b0 + j) * BLOCK, in, scales[j], even);
        block_times<R>(wq + (b0 + j + 1) * BLOCK, xq + (b0 + j + 1) * BLOCK, in, scales[j + 1], odd);
      }
      if (j < n) block_times<R>(wq + (b0 + j) * BLOCK, xq + (b0 + j) * BLOCK, in, scales[j], even);
    }
    for (int r = 0; r < R; ++r) y[(r0 + r) * out + o] = x.s[r0 + r] * wide_sum(even[r], odd[r]) + (bias ? bias[o] : 0.0f);
#else
    for (int r = 0; r < R; ++r) {
      float total = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t dot = 0;
        for (int64_t k = 0; k < BLOCK; ++k) dot += wq[b * BLOCK + k] * xq[r * in + b * BLOCK + k];
        total += dot * static_cast<float>(ws[b]);
      }
      y[(r0 + r) * out + o] = x.s[r0 + r] * total + (bias ? bias[o] : 0.0f);
    }
#endif
  }
};

at::Tensor product(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, const at::Tensor& bias, int64_t ahead) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be (rows in) float32");
  const int64_t rows = x.size(0), in = x.size(1), out = weight.size(0);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == in && weight.is_contiguous(), "W must be (out in)");
  TORCH_CHECK(in % BLOCK == 0, "in must be a multiple of 32");
  auto y = at::empty({rows, out}, x.options());
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  switch (weight.scalar_type()) {
    case at::kFloat:
      each_output(rows, out, FloatTimes<float>{x.data_ptr<float>(), in, weight.data_ptr<float>(), out, b, Y, ahead});
      break;
    case at::kBFloat16:
      each_output(rows, out, FloatTimes<uint16_t>{x.data_ptr<float>(), in, reinterpret_cast<const uint16_t*>(weight.data_ptr()), out, b, Y,
                                                  ahead});
      break;
    case at::kChar: {
      TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.size(0) == out && scales.size(1) == in / BLOCK,
                  "scales must be (out in/32) float16");
      const QuantizedRows quantized(x.data_ptr<float>(), rows, in);
      each_output(rows, out, Int8Times{quantized, weight.data_ptr<int8_t>(), scales.data_ptr<at::Half>(), out, b, Y, ahead});
      break;
    }
    default:
      TORCH_CHECK(false, "W must be float32, bfloat16 or int8");
  }
  return y;
}

// ---- int8 in tiles: the same format, laid out so that a vector's lanes are 16 outputs ------------
//
// Int8Times above gives each output its own vector of partial sums, so every block of 32 weights
// costs a convert and a multiply-add by the block's scale for only 32 products, and each output
// ends in a horizontal sum. In tiles (rows.py's int8_tiles: W's outputs in groups of TILE = 16, each
// pair of weights along a row next to the same pair of the group's other outputs, (out/16 in/2 16 2),
// scales (out/16 in/32 16)) a vector holds one pair of 16 outputs' weights: times one pair of x
// broadcast to every lane, one vpdpwssd (or vpmaddwd) adds two products to each of 16 outputs. A
// block's 16 pairs sum exactly in integer lanes (at most 32 products of 127 · 32767, below 2^31), then
// one convert and one multiply-add by the 16 outputs' scales serve 16 · 32 products, and the
// result is a vector of outputs, with no horizontal sum. Each pair of weights, once widened, serves
// up to ROWS_TOGETHER rows of x.
constexpr int64_t TILE = 16;

inline int32_t pair_at(const int16_t* x) {  // two 16-bit integers of x as one 32-bit word, to broadcast
  int32_t both;
  std::memcpy(&both, x, sizeof both);
  return both;
}

struct TileTimes {
  const QuantizedRows& x;
  const int8_t* tiles;   // (out/16 in/2 16 2)
  const at::Half* s;     // (out/16 in/32 16)
  int64_t out;
  const float* bias;
  float* y;
  int64_t ahead;  // bytes, as FloatTimes'

#if defined(__AVX512BW__)
  static constexpr int ROWS_TOGETHER = 8;
  template <int R>
  void rows(int64_t r0, int64_t tile) const {
    const int64_t in = x.in, blocks = in / BLOCK;
    const int16_t* xq = x.q.data() + r0 * in;
    const int8_t* w = tiles + tile * in * TILE;
    const at::Half* scales = s + tile * blocks * TILE;
    __m512 total[R];
    for (int r = 0; r < R; ++r) total[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      __m512i sums[R];
      for (int r = 0; r < R; ++r) sums[r] = _mm512_setzero_si512();
      for (int64_t p = 0; p < BLOCK / 2; ++p) {  // 16 pairs of weights of 16 outputs: 32 bytes
        const int8_t* at = w + (b * BLOCK / 2 + p) * 2 * TILE;
        if (ahead && p % 2 == 0) __builtin_prefetch(at + ahead);  // two pairs: a cache line
        const __m512i pair = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at)));
        for (int r = 0; r < R; ++r) {
          const __m512i xs = _mm512_set1_epi32(pair_at(xq + r * in + b * BLOCK + 2 * p));
#if defined(__AVX512VNNI__)
          sums[r] = _mm512_dpwssd_epi32(sums[r], pair, xs);
#else
          sums[r] = _mm512_add_epi32(sums[r], _mm512_madd_epi16(pair, xs));
#endif
        }
      }
      const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + b * TILE)));
      for (int r = 0; r < R; ++r)
        total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r]), scale, total[r]);
    }
    store<R>(r0, tile, total);
  }
  template <int R>
  void store(int64_t r0, int64_t tile, const __m512* total) const {
    alignas(64) float lanes[TILE];
    for (int r = 0; r < R; ++r) {
      _mm512_store_ps(lanes, total[r]);
      write(r0 + r, tile, lanes);
    }
  }
#elif defined(__AVX2__) && defined(__F16C__)
  static constexpr int ROWS_TOGETHER = 4;
  template <int R>
  void rows(int64_t r0, int64_t tile) const {  // a tile as two halves of 8 outputs, one after the other
    const int64_t in = x.in, blocks = in / BLOCK;
    const int16_t* xq = x.q.data() + r0 * in;
    const int8_t* w = tiles + tile * in * TILE;
    const at::Half* scales = s + tile * blocks * TILE;
    alignas(32) float lanes[R][TILE];
    for (int half = 0; half < 2; ++half) {
      __m256 total[R];
      for (int r = 0; r < R; ++r) total[r] = _mm256_setzero_ps();
      for (int64_t b = 0; b < blocks; ++b) {
        __m256i sums[R];
        for (int r = 0; r < R; ++r) sums[r] = _mm256_setzero_si256();
        for (int64_t p = 0; p < BLOCK / 2; ++p) {  // this half's 8 outputs' pair: 16 bytes of the 32
          const int8_t* at = w + (b * BLOCK / 2 + p) * 2 * TILE;
          if (ahead && half == 0 && p % 2 == 0) __builtin_prefetch(at + ahead);  // two pairs: a cache line
          const __m256i pair = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at + half * TILE)));
          for (int r = 0; r < R; ++r)
            sums[r] = _mm256_add_epi32(sums[r], _mm256_madd_epi16(pair, _mm256_set1_epi32(pair_at(xq + r * in + b * BLOCK + 2 * p))));
        }
        const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + b * TILE + half * 8)));
        for (int r = 0; r < R; ++r)
          total[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r]), scale, total[r]);
      }
      for (int r = 0; r < R; ++r) _mm256_store_ps(lanes[r] + half * 8, total[r]);
    }
    for (int r = 0; r < R; ++r) write(r0 + r, tile, lanes[r]);
  }
#else
  static constexpr int ROWS_TOGETHER = 4;
  template <int R>
  void rows(int64_t r0, int64_t tile) const {
    const int64_t in = x.in, blocks = in / BLOCK;
    const int8_t* w = tiles + tile * in * TILE;
    const at::Half* scales = s + tile * blocks * TILE;
    for (int r = 0; r < R; ++r) {
      const int16_t* xq = x.q.data() + (r0 + r) * in;
      float lanes[TILE] = {};
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t sums[TILE] = {};
        for (int64_t k = 0; k < BLOCK; ++k)
          for (int64_t j = 0; j < TILE; ++j) sums[j] += w[((b * BLOCK + k) / 2 * TILE + j) * 2 + k % 2] * xq[b * BLOCK + k];
        for (int64_t j = 0; j < TILE; ++j) lanes[j] += static_cast<float>(sums[j]) * static_cast<float>(scales[b * TILE + j]);
      }
      write(r0 + r, tile, lanes);
    }
  }
#endif

  void write(int64_t row, int64_t tile, const float* lanes) const {  // the tile's real outputs (the last may be padding)
    const int64_t first = tile * TILE, count = std::min(TILE, out - first);
    for (int64_t j = 0; j < count; ++j) y[row * out + first + j] = x.s[row] * lanes[j] + (bias ? bias[first + j] : 0.0f);
  }
};

// bfloat16 W in the same tiles (out/16 in/2 16 2): each 32-bit word holds one output's pair of
// weights (k, k + 1), k's in the low half. As bfloat16 is float32's top 16 bits, the word shifted
// left by 16 is weight k in float32 and the word with its low half cleared is weight k + 1: two
// integer operations widen 32 weights (16 outputs x 2), no shuffle, where the rows layout takes a
// widening shuffle per 16. Times x[k] and x[k + 1] broadcast to every lane, each FMA adds a
// product to 16 outputs, so that x is read once a tile, not once an output, and no output ends
// in a horizontal sum: a prompt's many rows run at the FMA's speed (docs/fast.md).
struct BFloat16TileTimes {
  const float* x;         // (rows in)
  int64_t in;
  const uint16_t* tiles;  // (out/16 in/2 16 2)
  int64_t out;
  const float* bias;
  float* y;
  int64_t ahead;  // bytes, as FloatTimes'

#if defined(__AVX512F__)
  static constexpr int ROWS_TOGETHER = 8;  // 2 sums a row (even and odd k): 16 of the 32 registers
  template <int R>
  void rows(int64_t r0, int64_t tile) const {
    const uint16_t* w = tiles + tile * in * TILE;
    const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
    __m512 even[R], odd[R];
    for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < in; k += 2) {
      const uint16_t* at = w + k * TILE;  // 16 outputs' pairs: 64 bytes, a cache line
      if (ahead) __builtin_prefetch(reinterpret_cast<const char*>(at) + ahead);
      const __m512i both = _mm512_loadu_si512(at);
      const __m512 first = _mm512_castsi512_ps(_mm512_slli_epi32(both, 16)), second = _mm512_castsi512_ps(_mm512_and_si512(both, high));
      for (int r = 0; r < R; ++r) {
        const float* xr = x + (r0 + r) * in + k;
        even[r] = _mm512_fmadd_ps(first, _mm512_set1_ps(xr[0]), even[r]);
        odd[r] = _mm512_fmadd_ps(second, _mm512_set1_ps(xr[1]), odd[r]);
      }
    }
    alignas(64) float lanes[TILE];
    for (int r = 0; r < R; ++r) {
      _mm512_store_ps(lanes, _mm512_add_ps(even[r], odd[r]));
      write(r0 + r, tile, lanes);
    }
  }
#elif defined(__AVX2__) && defined(__FMA__)
  static constexpr int ROWS_TOGETHER = 4;  // 2 sums a row (even and odd k): 8 of the 16 registers
  template <int R>
  void rows(int64_t r0, int64_t tile) const {  // a tile as two halves of 8 outputs, one after the other: both
    // at once leave room for one sum a row and half, two FMAs chained into it a pair (half the speed)
    const uint16_t* w = tiles + tile * in * TILE;
    const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
    alignas(32) float lanes[R][TILE];
    for (int half = 0; half < 2; ++half) {
      __m256 even[R], odd[R];
      for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm256_setzero_ps();
      for (int64_t k = 0; k < in; k += 2) {
        const uint16_t* at = w + k * TILE;
        if (ahead && half == 0) __builtin_prefetch(reinterpret_cast<const char*>(at) + ahead);
        const __m256i both = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + half * 8 * 2));
        const __m256 first = _mm256_castsi256_ps(_mm256_slli_epi32(both, 16)), second = _mm256_castsi256_ps(_mm256_and_si256(both, high));
        for (int r = 0; r < R; ++r) {
          const float* xr = x + (r0 + r) * in + k;
          even[r] = _mm256_fmadd_ps(first, _mm256_set1_ps(xr[0]), even[r]);
          odd[r] = _mm256_fmadd_ps(second, _mm256_set1_ps(xr[1]), odd[r]);
        }
      }
      for (int r = 0; r < R; ++r) _mm256_store_ps(lanes[r] + half * 8, _mm256_add_ps(even[r], odd[r]));
    }
    for (int r = 0; r < R; ++r) write(r0 + r, tile, lanes[r]);
  }
#else
  static constexpr int ROWS_TOGETHER = 4;
  template <int R>
  void rows(int64_t r0, int64_t tile) const {
    const uint16_t* w = tiles + tile * in * TILE;
    for (int r = 0; r < R; ++r) {
      const float* xr = x + (r0 + r) * in;
      float lanes[TILE] = {};
      for (int64_t k = 0; k < in; ++k)
        for (int64_t j = 0; j < TILE; ++j) {
          const uint32_t bits = static_cast<uint32_t>(w[(k / 2 * TILE + j) * 2 + k % 2]) << 16;
          float weight;
          std::memcpy(&weight, &bits, sizeof weight);
          lanes[j] += weight * xr[k];
        }
      write(r0 + r, tile, lanes);
    }
  }
#endif

  void write(int64_t row, int64_t tile, const float* lanes) const {  // the tile's real outputs (the last may be padding)
    const int64_t first = tile * TILE, count = std::min(TILE, out - first);
    for (int64_t j = 0; j < count; ++j) y[row * out + first + j] = lanes[j] + (bias ? bias[first + j] : 0.0f);
  }
};

// Each thread takes a share of the tiles; each tile is read from memory once and multiplied by x's
// rows ROWS_TOGETHER at a time, then the few left: times.rows<left>, left known only at run time.
template <int R, typename Times>
void leftover(const Times& times, int64_t r0, int64_t tile, int64_t left) {
  if constexpr (R > 0) {
    if (left == R)
      times.template rows<R>(r0, tile);
    else
      leftover<R - 1>(times, r0, tile, left);
  }
}

template <typename Times>
void each_tile(int64_t rows, int64_t count, const Times& times) {
  constexpr int together = Times::ROWS_TOGETHER;
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      int64_t r0 = 0;
      for (; r0 + together <= rows; r0 += together) times.template rows<together>(r0, tile);
      leftover<together - 1>(times, r0, tile, rows - r0);
    }
  });
}

at::Tensor tiles_product(const at::Tensor& x, const at::Tensor& tiles, const at::Tensor& scales, const at::Tensor& bias, int64_t out,
                         int64_t ahead) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be (rows in) float32");
  const int64_t rows = x.size(0), in = x.size(1), count = (out + TILE - 1) / TILE;
  TORCH_CHECK(in % BLOCK == 0, "in must be a multiple of 32");
  TORCH_CHECK((tiles.scalar_type() == at::kChar || tiles.scalar_type() == at::kBFloat16) && tiles.is_contiguous() &&
                  tiles.numel() == count * TILE * in,
              "tiles must be (out/16 in/2 16 2) int8 or bfloat16");
  auto y = at::empty({rows, out}, x.options());
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  if (tiles.scalar_type() == at::kBFloat16) {
    each_tile(rows, count, BFloat16TileTimes{x.data_ptr<float>(), in, reinterpret_cast<const uint16_t*>(tiles.data_ptr()), out, b,
                                             y.data_ptr<float>(), ahead});
    return y;
  }
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() && scales.numel() == count * TILE * (in / BLOCK),
              "tile scales must be (out/16 in/32 16) float16");
  const QuantizedRows quantized(x.data_ptr<float>(), rows, in);
  each_tile(rows, count, TileTimes{quantized, tiles.data_ptr<int8_t>(), scales.data_ptr<at::Half>(), out, b, y.data_ptr<float>(), ahead});
  return y;
}

// ---- a whole decoding step of a GPT-2, for the same few rows (fused.py says why) ----------------

// y = LayerNorm(x) over each row of width e (biased variance, as torch.nn.LayerNorm).
void layer_norm(const float* x, float* y, int64_t rows, int64_t e, const float* w, const float* b, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * e;
    float* yr = y + r * e;
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < e; ++i) mean += xr[i];
    mean /= e;
    for (int64_t i = 0; i < e; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    const float inv = 1.0f / std::sqrt(static_cast<float>(var / e) + eps), m = static_cast<float>(mean);
    for (int64_t i = 0; i < e; ++i) yr[i] = (xr[i] - m) * inv * w[i] + b[i];
  }
}

float dot(const float* a, const float* b, int64_t n) {  // n a multiple of LANES, or any n the slow way
  if (n % LANES == 0) {
    Floats total = zeros();
    for (int64_t i = 0; i < n; i += LANES) total = fma(load(a + i), load(b + i), total);
    return sum(total);
  }
  float total = 0.0f;
  for (int64_t i = 0; i < n; ++i) total += a[i] * b[i];
  return total;
}

// y = x Wᵀ + b by the kernel the matrix's routes chose for this many rows (kernels.py), called
// through PyTorch's dispatcher as from Python. `kernel` names it, with what it reads:
// - a tensor, W in oneDNN's layout, and `bias` in W's dtype (or None): oneDNN, on x rounded to W's
//   dtype, the result widened back (as PackedLinear's oneDNN route does);
// - None: rows.cpp on W as stored (w: weight, int8 scales, bias); an integer: the same, with
//   weights asked for that many bytes ahead (`ahead` above);
// - a list of three tensors: int8 W's tiles, their scales and `ahead` (tiles_product), with w's bias.
at::Tensor linear(const at::Tensor& x, at::TensorList w, const c10::IValue& kernel, const c10::IValue& bias) {
  if (kernel.isNone() || kernel.isInt()) return product(x, w[0], w[1], w[2], kernel.isInt() ? kernel.toInt() : 0);
  if (kernel.isTensorList()) {  // int8 in tiles: [tiles, their scales, the prefetch distance (a one-element tensor)]
    const auto tiled = kernel.toTensorList();
    return tiles_product(x, tiled[0], tiled[1], w[2], w[0].size(0), tiled.get(2).item<int64_t>());
  }
  static const auto onednn = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  std::vector<c10::IValue> stack{x.to(kernel.toTensor().scalar_type()), kernel, bias, "none",
                                 c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  onednn.callBoxed(&stack);
  return stack[0].toTensor().to(at::kFloat);
}

// One block of the step: x (rows e) is updated in place, x += attn(ln_1(x)), x += mlp(ln_2(x)).
// w: the block's 16 tensors (ln_1 weight, bias; c_attn weight, scales, bias; attn c_proj weight,
// scales, bias; ln_2 weight, bias; c_fc weight, scales, bias; mlp c_proj weight, scales, bias).
// kernels: per matrix, in the same order, its kernel and bias as `linear` takes them.
// keys, values (rows h s d): the layer's cache, written at `slot`; real (rows s): which slots the
// query may see (with slot itself, the new token, always).
void block(at::Tensor& x, at::TensorList w, c10::ArrayRef<c10::IValue> kernels, const at::Tensor& keys, const at::Tensor& values,
           const at::Tensor& real, int64_t slot, int64_t n_head, float eps) {
  const int64_t rows = x.size(0), e = x.size(1), d = e / n_head, slots = keys.size(2);
  auto h = at::empty_like(x);
  layer_norm(x.data_ptr<float>(), h.data_ptr<float>(), rows, e, w[0].data_ptr<float>(), w[1].data_ptr<float>(), eps);
  auto qkv = linear(h, w.slice(2, 3), kernels[0], kernels[1]);  // (rows (three h d))
  float *K = keys.data_ptr<float>(), *V = values.data_ptr<float>(), *QKV = qkv.data_ptr<float>();
  const bool* seen = real.data_ptr<bool>();
  auto z = at::empty_like(x);  // (rows (h d)): each head's weighted sum of the values
  float* Z = z.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  at::parallel_for(0, rows * n_head, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(slot + 1);
    for (int64_t rh = begin; rh < end; ++rh) {
      const int64_t r = rh / n_head, head = rh % n_head;
      const float* q = QKV + r * 3 * e + head * d;
      float* k_cache = K + (rh * slots) * d;  // (s d) of this row and head
      float* v_cache = V + (rh * slots) * d;
      std::memcpy(k_cache + slot * d, q + e, d * sizeof(float));  // this step's key and value
      std::memcpy(v_cache + slot * d, q + 2 * e, d * sizeof(float));
      float top = -INFINITY;
      for (int64_t j = 0; j <= slot; ++j) {
        p[j] = (j == slot || seen[r * slots + j]) ? dot(q, k_cache + j * d, d) * scale : -INFINITY;
        top = std::max(top, p[j]);
      }
      float total = 0.0f;
      for (int64_t j = 0; j <= slot; ++j) total += (p[j] = std::exp(p[j] - top));
      float* out = Z + r * e + head * d;
      std::fill(out, out + d, 0.0f);
      for (int64_t j = 0; j <= slot; ++j) {
        if (p[j] == 0.0f) continue;
        const float weight = p[j] / total;
        const float* v = v_cache + j * d;
        for (int64_t i = 0; i < d; ++i) out[i] += weight * v[i];
      }
    }
  });
  x += linear(z, w.slice(5, 3), kernels[2], kernels[3]);
  layer_norm(x.data_ptr<float>(), h.data_ptr<float>(), rows, e, w[8].data_ptr<float>(), w[9].data_ptr<float>(), eps);
  auto hidden = linear(h, w.slice(10, 3), kernels[4], kernels[5]);  // (rows m)
  at::gelu_(hidden, "tanh");
  x += linear(hidden, w.slice(13, 3), kernels[6], kernels[7]);
}

// tokens (rows) -> the final hidden state (rows e), after ln_f: embeddings, every block, ln_f, with
// each layer's key and value written at `slot`. real (rows s) already marks slot as real.
at::Tensor decode_step(const at::Tensor& tokens, const at::Tensor& wte, const at::Tensor& wpe, at::TensorList weights,
                       const c10::List<c10::IValue>& kernels, at::TensorList keys, at::TensorList values, const at::Tensor& real,
                       const at::Tensor& slot_tensor, const at::Tensor& ln_f_weight, const at::Tensor& ln_f_bias, int64_t n_head,
                       double eps) {
  const int64_t rows = tokens.size(0), e = wte.size(1), slot = slot_tensor.item<int64_t>(), layers = keys.size();
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 16 * layers, "16 weight tensors a layer");
  TORCH_CHECK(static_cast<int64_t>(kernels.size()) == 8 * layers, "8 kernel entries a layer");
  TORCH_CHECK(real.is_contiguous() && real.size(1) > slot, "real must be (rows s), slot < s");
  const std::vector<c10::IValue> each = kernels.vec();
  auto x = at::empty({rows, e}, wte.options());
  const int64_t* ids = tokens.data_ptr<int64_t>();
  const bool* seen = real.data_ptr<bool>();
  for (int64_t r = 0; r < rows; ++r) {  // position: the real tokens before this one in its row
    int64_t position = 0;
    for (int64_t j = 0; j < slot; ++j) position += seen[r * real.size(1) + j];
    const float *token = wte.data_ptr<float>() + ids[r] * e, *place = wpe.data_ptr<float>() + position * e;
    float* xr = x.data_ptr<float>() + r * e;
    for (int64_t i = 0; i < e; ++i) xr[i] = token[i] + place[i];
  }
  for (int64_t l = 0; l < layers; ++l)
    block(x, weights.slice(16 * l, 16), c10::ArrayRef<c10::IValue>(each).slice(8 * l, 8), keys[l], values[l], real, slot, n_head,
          static_cast<float>(eps));
  auto out = at::empty_like(x);
  layer_norm(x.data_ptr<float>(), out.data_ptr<float>(), rows, e, ln_f_weight.data_ptr<float>(),
             ln_f_bias.data_ptr<float>(), static_cast<float>(eps));
  return out;
}

}  // namespace

// Operators of PyTorch's own (torch.ops.minigpt_<level>.rows_product, .decode_step), not Python
// functions: the profiler sees them and torch.compile can call them from a graph (rows.py gives their
// shape rules). The namespace is the build's level, so that every level can be loaded at once.
#define MINIGPT_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define MINIGPT_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

MINIGPT_LIBRARY(MINIGPT_OPS, m) {
  m.def("rows_product(Tensor x, Tensor weight, Tensor scales, Tensor bias, int ahead) -> Tensor");
  m.def("tiles_product(Tensor x, Tensor tiles, Tensor scales, Tensor bias, int out, int ahead) -> Tensor");
  m.def("decode_step(Tensor tokens, Tensor wte, Tensor wpe, Tensor[] weights, Any[] kernels, Tensor(a!)[] keys, Tensor(b!)[] values, "
        "Tensor real, Tensor slot, Tensor ln_f_weight, Tensor ln_f_bias, int n_head, float eps) -> Tensor");
}

MINIGPT_LIBRARY_IMPL(MINIGPT_OPS, CPU, m) {
  m.impl("rows_product", &product);
  m.impl("tiles_product", &tiles_product);
  m.impl("decode_step", &decode_step);
}
