// y = x Wᵀ + b for the few rows of a decoding step, W streamed from memory once (rows.py says why).
//
// x (rows in) float32; W (out in) float32, bfloat16 (widened to float32 as it is read) or int8 in
// blocks of 32 (x then rounded to 16-bit integers, once a call); b (out) float32 or empty; y (rows
// out) float32. Each thread takes a share of W's rows (the outputs); each W row is read from
// memory once and, while it sits in the L1 cache, multiplied by every row of x. Products
// accumulate over vector lanes, summed once at the end.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t BLOCK = 32;  // the int8 format's block: one scale per 32 weights of a row
constexpr int64_t LANES = 16;  // floats per vector (one AVX-512 register; the compiler splits it on smaller ones)
// Weights are asked for this many elements before they are used: 2 KB of float32, about what one
// core must have in flight to stream at 10-20 GB/s against ~100 ns of memory latency, whatever the
// CPU. With one row of x the hardware prefetcher alone kept the float32 step at 70-87% of a plain
// read's speed on 2 EPYC cores; with this, 87-93%. bfloat16, half the bytes, was at 96% already.
constexpr int64_t AHEAD = 512;
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

// Each float format turns LANES weights starting at w[i] into floats.
struct Float32 {
  const float* w;
  Floats get(int64_t i) const { return load<Floats>(w + i); }
  void prefetch(int64_t i) const { __builtin_prefetch(w + i); }
};

struct BFloat16 {  // bfloat16 is float32's top 16 bits: shifting them back up is the exact conversion
  const uint16_t* w;
  Floats get(int64_t i) const { return (Floats)(__builtin_convertvector(load<Halves>(w + i), Words) << 16); }
  void prefetch(int64_t i) const { __builtin_prefetch(w + i); }
};

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

template <typename Weights>  // float32 or bfloat16 W times float32 x
struct FloatTimes {
  const float* x;
  int64_t in;
  Weights w;
  int64_t out;
  const float* bias;
  float* y;

  template <int R>
  void rows(int64_t r0, int64_t o) const {
    Floats even[R] = {}, odd[R] = {};  // two per row: consecutive FMAs need not wait for each other
    for (int64_t start = 0; start < in; start += 2 * LANES) {
      const Floats w0 = w.get(o * in + start), w1 = w.get(o * in + start + LANES);
      w.prefetch(o * in + start + AHEAD);  // the 2 x 16 weights of a later pass: two lines of float32, one of bfloat16
      w.prefetch(o * in + start + AHEAD + LANES);
      for (int r = 0; r < R; ++r) {
        even[r] += w0 * load<Floats>(x + (r0 + r) * in + start);
        odd[r] += w1 * load<Floats>(x + (r0 + r) * in + start + LANES);
      }
    }
    for (int r = 0; r < R; ++r) y[(r0 + r) * out + o] = sum(even[r] + odd[r]) + (bias ? bias[o] : 0.0f);
  }
};

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define MINIGPT_VNNI 1  // vpdpwssd: 32 products of 16-bit integers summed into 16 ints in one instruction
#endif

// x's rows as 16-bit integers, one scale per row: x ≈ q · s, s = max |x[row]| / 32767 in float32,
// exactly as quantize_blocks(x, block=in, scales=torch.float32, bits=16) in rows.py. With W in int8
// a block's 32 products are then integer products summed by one instruction, and the block costs
// one convert and one multiply-add by W's scale (x's scale is applied once, at the end), where
// widening each weight to float cost eight instructions a block: the weights stream from memory
// instead of waiting on arithmetic. 16 bits, not 8 as llama.cpp's q8_0 activations: x is off by at
// most 1/65534 of its row's largest, which left greedy tokens as float32 activations do, where 8
// bits in blocks of 32 changed them on 11 more of 40 prompts of the model in the box (rows.py).
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

// int8 W in blocks of 32, W[o][k] = q[o][k] · s[o][k / 32] (s float16, 2 bytes a block, as q8_0's),
// times x's rows as above: y[o] = s_x · Σ_b s_W[o][b] Σ_k q_W q_x, each block's inner sum exact.
struct Int8Times {
  const QuantizedRows& x;
  const int8_t* q;
  const c10::Half* s;
  int64_t out;
  const float* bias;
  float* y;

  template <int R>
  void rows(int64_t r0, int64_t o) const {
    const int64_t in = x.in, blocks = in / BLOCK;
    const int8_t* wq = q + o * in;
    const c10::Half* ws = s + o * blocks;
    const int16_t* xq = x.q.data() + r0 * in;
#ifdef MINIGPT_VNNI
    __m512 even[R], odd[R];  // two per row: consecutive FMAs need not wait for each other
    for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
    const auto block = [&](__m512* total, int64_t b, __m512 scale) {  // W's block b times each x row's block b
      const __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + b * BLOCK)));
      for (int r = 0; r < R; ++r) {
        const __m512i sums = _mm512_dpwssd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(xq + r * in + b * BLOCK));
        total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, total[r]);
      }
    };
    float scales[16];  // W's float16 scales, 16 blocks' at a time in float32
    for (int64_t b0 = 0; b0 < blocks; b0 += 16) {
      const int64_t n = std::min<int64_t>(16, blocks - b0);
      _mm512_storeu_ps(scales, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((1u << n) - 1, ws + b0)));
      int64_t j = 0;
      for (; j + 2 <= n; j += 2) {
        block(even, b0 + j, _mm512_set1_ps(scales[j]));
        block(odd, b0 + j + 1, _mm512_set1_ps(scales[j + 1]));
      }
      if (j < n) block(even, b0 + j, _mm512_set1_ps(scales[j]));
    }
    for (int r = 0; r < R; ++r)
      y[(r0 + r) * out + o] = x.s[r0 + r] * _mm512_reduce_add_ps(even[r] + odd[r]) + (bias ? bias[o] : 0.0f);
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

torch::Tensor product(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& scales,
                      const torch::Tensor& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(), "x must be (rows in) float32");
  const int64_t rows = x.size(0), in = x.size(1), out = weight.size(0);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == in && weight.is_contiguous(), "W must be (out in)");
  TORCH_CHECK(in % BLOCK == 0, "in must be a multiple of 32");
  auto y = torch::empty({rows, out}, x.options());
  const float *X = x.data_ptr<float>(), *b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  switch (weight.scalar_type()) {
    case torch::kFloat:
      each_output(rows, out, FloatTimes<Float32>{X, in, {weight.data_ptr<float>()}, out, b, Y});
      break;
    case torch::kBFloat16:
      each_output(rows, out, FloatTimes<BFloat16>{X, in, {reinterpret_cast<const uint16_t*>(weight.data_ptr())}, out, b, Y});
      break;
    case torch::kChar: {
      TORCH_CHECK(scales.scalar_type() == torch::kHalf && scales.size(0) == out && scales.size(1) == in / BLOCK,
                  "scales must be (out in/32) float16");
      const QuantizedRows quantized(X, rows, in);
      each_output(rows, out, Int8Times{quantized, weight.data_ptr<int8_t>(), scales.data_ptr<c10::Half>(), out, b, Y});
      break;
    }
    default:
      TORCH_CHECK(false, "W must be float32, bfloat16 or int8");
  }
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
    Floats total = {};
    for (int64_t i = 0; i < n; i += LANES) total += load<Floats>(a + i) * load<Floats>(b + i);
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
// - fbgemm's prepacked int8 weight and bias (an object, `bias` None): fbgemm (Int8Linear's route);
// - None: rows.cpp on W as stored (w: weight, int8 scales, bias).
torch::Tensor linear(const torch::Tensor& x, at::TensorList w, const c10::IValue& kernel, const c10::IValue& bias) {
  if (kernel.isNone()) return product(x, w[0], w[1], w[2]);
  if (kernel.isTensor()) {
    static const auto onednn = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{x.to(kernel.toTensor().scalar_type()), kernel, bias, "none",
                            c10::List<std::optional<at::Scalar>>(), c10::IValue()};
    onednn.callBoxed(&stack);
    return stack[0].toTensor().to(torch::kFloat);
  }
  static const auto fbgemm = c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_dynamic", "");
  torch::jit::Stack stack{x, kernel, false};  // reduce_range false, as Int8Linear calls it
  fbgemm.callBoxed(&stack);
  return stack[0].toTensor();
}

// One block of the step: x (rows e) is updated in place, x += attn(ln_1(x)), x += mlp(ln_2(x)).
// w: the block's 16 tensors (ln_1 weight, bias; c_attn weight, scales, bias; attn c_proj weight,
// scales, bias; ln_2 weight, bias; c_fc weight, scales, bias; mlp c_proj weight, scales, bias).
// kernels: per matrix, in the same order, its kernel and bias as `linear` takes them.
// keys, values (rows h s d): the layer's cache, written at `slot`; real (rows s): which slots the
// query may see (with slot itself, the new token, always).
void block(torch::Tensor& x, at::TensorList w, c10::ArrayRef<c10::IValue> kernels, const torch::Tensor& keys, const torch::Tensor& values,
           const torch::Tensor& real, int64_t slot, int64_t n_head, float eps) {
  const int64_t rows = x.size(0), e = x.size(1), d = e / n_head, slots = keys.size(2);
  auto h = torch::empty_like(x);
  layer_norm(x.data_ptr<float>(), h.data_ptr<float>(), rows, e, w[0].data_ptr<float>(), w[1].data_ptr<float>(), eps);
  auto qkv = linear(h, w.slice(2, 3), kernels[0], kernels[1]);  // (rows (three h d))
  float *K = keys.data_ptr<float>(), *V = values.data_ptr<float>(), *QKV = qkv.data_ptr<float>();
  const bool* seen = real.data_ptr<bool>();
  auto z = torch::empty_like(x);  // (rows (h d)): each head's weighted sum of the values
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
torch::Tensor decode_step(const torch::Tensor& tokens, const torch::Tensor& wte, const torch::Tensor& wpe,
                          at::TensorList weights, const c10::List<c10::IValue>& kernels, at::TensorList keys, at::TensorList values,
                          const torch::Tensor& real, const torch::Tensor& slot_tensor, const torch::Tensor& ln_f_weight,
                          const torch::Tensor& ln_f_bias, int64_t n_head, double eps) {
  const int64_t rows = tokens.size(0), e = wte.size(1), slot = slot_tensor.item<int64_t>(), layers = keys.size();
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 16 * layers, "16 weight tensors a layer");
  TORCH_CHECK(static_cast<int64_t>(kernels.size()) == 8 * layers, "8 kernel entries a layer");
  TORCH_CHECK(real.is_contiguous() && real.size(1) > slot, "real must be (rows s), slot < s");
  const std::vector<c10::IValue> each = kernels.vec();
  auto x = torch::empty({rows, e}, wte.options());
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
  auto out = torch::empty_like(x);
  layer_norm(x.data_ptr<float>(), out.data_ptr<float>(), rows, e, ln_f_weight.data_ptr<float>(),
             ln_f_bias.data_ptr<float>(), static_cast<float>(eps));
  return out;
}

}  // namespace

// Operators of PyTorch's own (torch.ops.minigpt.rows_product, .decode_step), not Python functions: the
// profiler sees it and torch.compile can call it from a graph (rows.py gives its shape rule).
TORCH_LIBRARY(minigpt, m) {
  m.def("rows_product(Tensor x, Tensor weight, Tensor scales, Tensor bias) -> Tensor");
  m.def("decode_step(Tensor tokens, Tensor wte, Tensor wpe, Tensor[] weights, Any[] kernels, Tensor(a!)[] keys, Tensor(b!)[] values, "
        "Tensor real, Tensor slot, Tensor ln_f_weight, Tensor ln_f_bias, int n_head, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(minigpt, CPU, m) {
  m.impl("rows_product", &product);
  m.impl("decode_step", &decode_step);
}
