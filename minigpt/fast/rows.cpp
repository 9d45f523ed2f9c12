// y = x Wᵀ + b for the few rows of a decoding step, W streamed from memory once (rows.py says why).
//
// x (rows in) float32; W (out in) in one of three formats, each decoded to float32 as it is read;
// b (out) float32 or empty; y (rows out) float32. Each thread takes a share of W's rows (the
// outputs); each W row is read from memory once and, while it sits in the L1 cache, multiplied
// by every row of x. Products accumulate in float32 over lanes of 32, summed once at the end.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cstring>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t BLOCK = 32;  // the int8 format's block: one scale per 32 weights of a row
constexpr int64_t LANES = 16;  // floats per vector (one AVX-512 register; the compiler splits it on smaller ones)
typedef float Floats __attribute__((vector_size(4 * LANES)));
typedef uint16_t Halves __attribute__((vector_size(2 * LANES)));
typedef uint32_t Words __attribute__((vector_size(4 * LANES)));

template <typename V, typename T>
V load(const T* at) {  // LANES consecutive values, wherever they lie (no alignment asked)
  V v;
  std::memcpy(&v, at, sizeof v);
  return v;
}

float sum(Floats v) {  // the LANES lanes added up
#ifdef __AVX512F__
  return _mm512_reduce_add_ps((__m512)v);  // a tree of shuffles, not 15 dependent additions
#else
  float total = 0.0f;
  for (int64_t k = 0; k < LANES; ++k) total += v[k];
  return total;
#endif
}

// Each format turns LANES weights starting at w[i] into floats; scale(row, block) is 1 but for int8.
struct Float32 {
  const float* w;
  Floats get(int64_t i) const { return load<Floats>(w + i); }
  float scale(int64_t, int64_t) const { return 1.0f; }
};

struct BFloat16 {  // bfloat16 is float32's top 16 bits: shifting them back up is the exact conversion
  const uint16_t* w;
  Floats get(int64_t i) const { return (Floats)(__builtin_convertvector(load<Halves>(w + i), Words) << 16); }
  float scale(int64_t, int64_t) const { return 1.0f; }
};

struct Int8Blocks {  // W[o][k] = q[o][k] * s[o][k / 32], s in float16 (2 bytes a block, as q8_0's)
  const int8_t* q;
  const c10::Half* s;
  int64_t blocks;  // per row: in / 32
  Floats get(int64_t i) const {
#ifdef __AVX512F__  // sign-extend 16 bytes to 16 ints, then to floats: two instructions (GCC's generic
                    // conversion of a byte vector goes through the scalar registers, 6x slower)
    return (Floats)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i))));
#else
    Floats f;
    for (int64_t k = 0; k < LANES; ++k) f[k] = q[i + k];
    return f;
#endif
  }
  float scale(int64_t row, int64_t block) const { return static_cast<float>(s[row * blocks + block]); }
};

// R rows of x (r0 to r0 + R) times W's row o: each block of W decoded once, used R times. R is a
// compile-time number so that the 2 R accumulators stay in registers.
template <int R, typename Weights>
void block_of_rows(const float* x, int64_t r0, int64_t in, const Weights& w, int64_t o, int64_t out, const float* bias,
                   float* y) {
  Floats even[R] = {}, odd[R] = {};  // two per row: consecutive FMAs need not wait for each other
  for (int64_t start = 0; start < in; start += BLOCK) {
    const float s = w.scale(o, start / BLOCK);
    const Floats w0 = w.get(o * in + start) * s, w1 = w.get(o * in + start + LANES) * s;
    for (int r = 0; r < R; ++r) {
      even[r] += w0 * load<Floats>(x + (r0 + r) * in + start);
      odd[r] += w1 * load<Floats>(x + (r0 + r) * in + start + LANES);
    }
  }
  for (int r = 0; r < R; ++r) y[(r0 + r) * out + o] = sum(even[r] + odd[r]) + (bias ? bias[o] : 0.0f);
}

template <typename Weights>
void rows_times(const float* x, int64_t rows, int64_t in, const Weights& w, int64_t out, const float* bias, float* y) {
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {  // W's row o is read from memory once, then from the L1 cache
      int64_t r0 = 0;
      for (; r0 + 4 <= rows; r0 += 4) block_of_rows<4>(x, r0, in, w, o, out, bias, y);
      switch (rows - r0) {
        case 3: block_of_rows<3>(x, r0, in, w, o, out, bias, y); break;
        case 2: block_of_rows<2>(x, r0, in, w, o, out, bias, y); break;
        case 1: block_of_rows<1>(x, r0, in, w, o, out, bias, y); break;
      }
    }
  });
}

torch::Tensor product(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& scales,
                      const torch::Tensor& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(), "x must be (rows in) float32");
  const int64_t rows = x.size(0), in = x.size(1), out = weight.size(0);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == in && weight.is_contiguous(), "W must be (out in)");
  TORCH_CHECK(in % BLOCK == 0, "in must be a multiple of 32");
  auto y = torch::empty({rows, out}, x.options());
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  switch (weight.scalar_type()) {
    case torch::kFloat:
      rows_times(x.data_ptr<float>(), rows, in, Float32{weight.data_ptr<float>()}, out, b, y.data_ptr<float>());
      break;
    case torch::kBFloat16:
      rows_times(x.data_ptr<float>(), rows, in, BFloat16{reinterpret_cast<const uint16_t*>(weight.data_ptr())}, out, b,
                 y.data_ptr<float>());
      break;
    case torch::kChar:
      TORCH_CHECK(scales.scalar_type() == torch::kHalf && scales.size(0) == out && scales.size(1) == in / BLOCK,
                  "scales must be (out in/32) float16");
      rows_times(x.data_ptr<float>(), rows, in, Int8Blocks{weight.data_ptr<int8_t>(), scales.data_ptr<c10::Half>(), in / BLOCK},
                 out, b, y.data_ptr<float>());
      break;
    default:
      TORCH_CHECK(false, "W must be float32, bfloat16 or int8");
  }
  return y;
}

}  // namespace

// An operator of PyTorch's own (torch.ops.minigpt.rows_product), not a Python function: the
// profiler sees it and torch.compile can call it from a graph (rows.py gives its shape rule).
TORCH_LIBRARY(minigpt, m) { m.def("rows_product(Tensor x, Tensor weight, Tensor scales, Tensor bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(minigpt, CPU, m) { m.impl("rows_product", &product); }
