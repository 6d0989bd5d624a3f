// Fused CPU kernels for the dense block's BN1-ReLU on rows of the shared buffer [BN] (docs/MATH.md).
//
// A dense layer reads the first C_l channels of the block's channels-last buffer as an (M, C_l) matrix whose rows
// have the buffer's stride. ATen needs several passes over it per layer (affine, clamp; threshold, a contiguous copy
// for the sums, the sums, the in-place update); each kernel here makes one.
//
//   densenet::affine_relu_rows(x, a, b, out):  out = σ(a·x + b) per channel                    (forward, recompute)
//   densenet::bn_relu_backward_rows(grad, grad_relu, x, a, b, mean, invstd) -> (Σδx̂, Σδ):
//       δ = ∂L/∂r ⊙ 1[σ(a·x + b) > 0],  ∂L/∂x += a·δ in place,  Σδx̂ = invstd·Σδ(x − μ),  Σδ
//   densenet::bn_relu_backward_full_rows(grad_relu, x, a, b, mean, invstd, training, out) -> (Σδx̂, Σδ):
//       out = ∂L/∂x = a·(δ − (Σδ + x̂·Σδx̂)/M) in two passes (the sums, then the gradient); a·δ with running statistics
//       (training false: the sums are still returned, γ and β being parameters)
//   densenet::copy_rows_with_stats(src, dst, eps, mean, invstd): dst = src, and each channel's batch μ, 1/√(σ² + ε)
//                                                                                   (a new map or a bottleneck output)
//   densenet::affine_add_rows(y, x, a, b, out):  out = y + (a·x + b) per channel      (the deferred BN terms, F2b)
//
// All compute σ(a·x + b) with one explicit fma, rounded to the tensor's dtype (affine_relu); the backward's ReLU mask
// (relu_active) asks whether that rounded value is > 0 without storing it, so it is exactly the forward's.
// Arithmetic is in float for float and bfloat16 tensors and in double for double ones (float16 is not taken: the
// caller keeps ATen's operations for it); the per-channel vectors a, b, μ, invstd come in that type. Sums are
// accumulated per thread over contiguous row ranges and combined in double.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

namespace {

// How each dtype is stored and computed: float and double as themselves, bfloat16 as its 16 bits, computed in float.
// The bfloat16 conversions are written as bit operations without branches (round to nearest even, NaN kept) so
// that the compiler vectorises the loops below; c10::BFloat16's own conversion branches on NaN, which stops it.
template <typename scalar_t> struct Storage {
  using raw_t = scalar_t;
  using opmath_t = scalar_t;
  static opmath_t load(raw_t v) { return v; }
  static raw_t store(opmath_t v) { return v; }
  // load(store(v)) > 0
  static bool positive_once_stored(opmath_t v) { return v > opmath_t(0); }
};

template <> struct Storage<at::BFloat16> {
  using raw_t = uint16_t;
  using opmath_t = float;
  static float load(uint16_t v) { return std::bit_cast<float>(static_cast<uint32_t>(v) << 16); }
  // A non-NaN float's bits rounded to nearest even at bit 16: its bfloat16 bits in the low half.
  static uint32_t rounded_bits(float v) {
    const uint32_t bits = std::bit_cast<uint32_t>(v);
    return (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  }
  static uint16_t store(float v) { return v != v ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded_bits(v)); }
  // load(store(v)) > 0 without the round trip, whose NaN select keeps GCC from vectorising the backward loops on
  // AVX2 (it does on AVX-512): a positive float stays positive unless it rounds to zero (a tiny subnormal); NaN is
  // not positive.
  static bool positive_once_stored(float v) { return (v > 0.0f) & (rounded_bits(v) != 0u); }
};

// A tensor's values as the dtype's stored type (raw bits for bfloat16).
template <typename S>
const typename S::raw_t* values(const at::Tensor& t) {
  return static_cast<const typename S::raw_t*>(t.const_data_ptr());
}

template <typename S>
typename S::raw_t* mutable_values(const at::Tensor& t) {
  return static_cast<typename S::raw_t*>(t.mutable_data_ptr());
}

// σ(a·x + b), computed in opmath and rounded to the stored dtype (NaN propagates, as clamp_min does).
template <typename S>
inline typename S::raw_t affine_relu(typename S::opmath_t x, typename S::opmath_t a, typename S::opmath_t b) {
  using opmath_t = typename S::opmath_t;
  const opmath_t v = std::fma(a, x, b);
  return S::store(v < opmath_t(0) ? opmath_t(0) : v);
}

// Whether affine_relu's stored output is > 0: the backward's ReLU mask, exactly the forward's (the same fma).
template <typename S>
inline bool relu_active(typename S::opmath_t x, typename S::opmath_t a, typename S::opmath_t b) {
  return S::positive_once_stored(std::fma(a, x, b));
}

// One row of affine_relu_rows.
template <typename S>
void affine_relu_row(const typename S::raw_t* __restrict__ x, typename S::raw_t* __restrict__ out,
                     const typename S::opmath_t* __restrict__ a, const typename S::opmath_t* __restrict__ b,
                     int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    out[c] = affine_relu<S>(S::load(x[c]), a[c], b[c]);
  }
}

// One row of bn_relu_backward_rows: δ, its share of Σδ(x − μ) and Σδ, and (AddInto) ∂L/∂x += a·δ.
template <typename S, bool AddInto>
void bn_relu_backward_row(typename S::raw_t* __restrict__ grad, const typename S::raw_t* __restrict__ grad_relu,
                          const typename S::raw_t* __restrict__ x, const typename S::opmath_t* __restrict__ a,
                          const typename S::opmath_t* __restrict__ b, const typename S::opmath_t* __restrict__ mean,
                          typename S::opmath_t* __restrict__ centred, typename S::opmath_t* __restrict__ plain,
                          int64_t channels) {
  using opmath_t = typename S::opmath_t;
  for (int64_t c = 0; c < channels; ++c) {
    const opmath_t xv = S::load(x[c]);
    const bool active = relu_active<S>(xv, a[c], b[c]);
    const opmath_t incoming = S::load(grad_relu[c]);  // read unconditionally: a conditional load is not vectorised
    const opmath_t delta = active ? incoming : opmath_t(0);
    centred[c] += delta * (xv - mean[c]);
    plain[c] += delta;
    if constexpr (AddInto) {
      grad[c] = S::store(S::load(grad[c]) + a[c] * delta);
    }
  }
}

// One row of affine_add_rows.
template <typename S>
void affine_add_row(typename S::raw_t* __restrict__ out, const typename S::raw_t* __restrict__ y,
                    const typename S::raw_t* __restrict__ x, const typename S::opmath_t* __restrict__ a,
                    const typename S::opmath_t* __restrict__ b, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    out[c] = S::store(S::load(y[c]) + (a[c] * S::load(x[c]) + b[c]));
  }
}

// One row of copy_rows_with_stats: dst = src, and the row's share of Σd and Σd² with d = src − origin, in opmath
// (a block of rows at a time; the blocks' sums are added in double).
template <typename S>
void copy_stats_row(typename S::raw_t* __restrict__ dst, const typename S::raw_t* __restrict__ src,
                    const typename S::opmath_t* __restrict__ origin, typename S::opmath_t* __restrict__ sum,
                    typename S::opmath_t* __restrict__ squares, int64_t channels) {
  using opmath_t = typename S::opmath_t;
  for (int64_t c = 0; c < channels; ++c) {
    const typename S::raw_t v = src[c];
    dst[c] = v;
    const opmath_t d = S::load(v) - origin[c];
    sum[c] += d;
    squares[c] += d * d;
  }
}

// One row of bn_relu_backward_full_rows' second pass: ∂L/∂x = a·δ + (c + d·x).
template <typename S>
void bn_relu_input_grad_row(typename S::raw_t* __restrict__ out, const typename S::raw_t* __restrict__ grad_relu,
                            const typename S::raw_t* __restrict__ x, const typename S::opmath_t* __restrict__ a,
                            const typename S::opmath_t* __restrict__ b, const typename S::opmath_t* __restrict__ offset,
                            const typename S::opmath_t* __restrict__ slope, int64_t channels) {
  using opmath_t = typename S::opmath_t;
  for (int64_t c = 0; c < channels; ++c) {
    const opmath_t xv = S::load(x[c]);
    const bool active = relu_active<S>(xv, a[c], b[c]);
    const opmath_t incoming = S::load(grad_relu[c]);
    const opmath_t delta = active ? incoming : opmath_t(0);
    out[c] = S::store(a[c] * delta + (offset[c] + slope[c] * xv));
  }
}

void check_rows(const at::Tensor& t, const char* name, int64_t rows, int64_t channels, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == channels, name, " must be (", rows, ", ",
              channels, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.stride(1) == 1 || channels == 1, name, " must have channel stride 1");
}

void check_vector(const at::Tensor& t, const char* name, int64_t channels, at::ScalarType dtype) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels && t.is_contiguous(), name, " must be a contiguous (",
              channels, ",) vector, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

at::ScalarType opmath_of(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Channel c's two sums over the threads' parts, in double: parts × (first sums, second sums) of C channels each.
template <typename T>
std::pair<double, double> channel_totals(const T* sums, int64_t parts, int64_t channels, int64_t c) {
  double first = 0, second = 0;
  for (int64_t part = 0; part < parts; ++part) {
    first += static_cast<double>(sums[part * 2 * channels + c]);
    second += static_cast<double>(sums[part * 2 * channels + channels + c]);
  }
  return {first, second};
}

// Rows whose sums copy_rows_with_stats takes in opmath before adding them in double.
constexpr int64_t kStatRows = 32;

// Rows per task: enough work per thread to pay for the task.
int64_t grain_rows(int64_t channels) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(channels, 1));
}

void affine_relu_rows(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& out) {
  const int64_t rows = x.size(0), channels = x.size(1);
  const auto dtype = x.scalar_type(), opmath = opmath_of(dtype);
  check_rows(x, "x", rows, channels, dtype);
  check_rows(out, "out", rows, channels, dtype);
  check_vector(scale, "scale", channels, opmath);
  check_vector(shift, "shift", channels, opmath);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "affine_relu_rows", [&] {
    using S = Storage<scalar_t>;
    using opmath_t = typename S::opmath_t;
    const auto* xp = values<S>(x);
    auto* op = mutable_values<S>(out);
    const opmath_t* a = scale.const_data_ptr<opmath_t>();
    const opmath_t* b = shift.const_data_ptr<opmath_t>();
    const int64_t ldx = x.stride(0), ldo = out.stride(0);
    at::parallel_for(0, rows, grain_rows(channels), [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        affine_relu_row<S>(xp + m * ldx, op + m * ldo, a, b, channels);
      }
    });
  });
}

void check_bn_relu_backward(const at::Tensor& grad_relu, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& shift, const at::Tensor& mean, const at::Tensor& invstd) {
  const int64_t rows = x.size(0), channels = x.size(1);
  const auto dtype = x.scalar_type(), opmath = opmath_of(dtype);
  check_rows(x, "x", rows, channels, dtype);
  check_rows(grad_relu, "grad_relu", rows, channels, dtype);
  for (const auto& [t, name] : {std::pair{&scale, "scale"}, {&shift, "shift"}, {&mean, "mean"}, {&invstd, "invstd"}}) {
    check_vector(*t, name, channels, opmath);
  }
}

// Σδx̂ = invstd·Σδ(x − μ) and Σδ over all rows (and, AddInto, grad += a·δ): per-thread sums over contiguous row
// ranges, combined in double.
template <typename scalar_t, bool AddInto>
std::tuple<at::Tensor, at::Tensor> sums_over_rows(const at::Tensor& grad, const at::Tensor& grad_relu,
                                                  const at::Tensor& x, const at::Tensor& scale,
                                                  const at::Tensor& shift, const at::Tensor& mean,
                                                  const at::Tensor& invstd) {
  using S = Storage<scalar_t>;
  using opmath_t = typename S::opmath_t;
  const int64_t rows = x.size(0), channels = x.size(1);
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  auto partial = at::empty({parts, 2, channels}, scale.options());  // per part: Σδ(x − μ) then Σδ
  auto grad_weight = at::empty({channels}, scale.options());
  auto grad_bias = at::empty({channels}, scale.options());
  auto* gp = AddInto ? mutable_values<S>(grad) : nullptr;
  const auto* rp = values<S>(grad_relu);
  const auto* xp = values<S>(x);
  const opmath_t* a = scale.const_data_ptr<opmath_t>();
  const opmath_t* b = shift.const_data_ptr<opmath_t>();
  const opmath_t* mu = mean.const_data_ptr<opmath_t>();
  opmath_t* sums = partial.mutable_data_ptr<opmath_t>();
  const int64_t ldg = AddInto ? grad.stride(0) : 0, ldr = grad_relu.stride(0), ldx = x.stride(0);
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    for (int64_t part = first; part < last; ++part) {
      opmath_t* centred = sums + part * 2 * channels;  // Σδ(x − μ)
      opmath_t* plain = centred + channels;            // Σδ
      std::fill(centred, centred + 2 * channels, opmath_t(0));
      for (int64_t m = rows * part / parts; m < rows * (part + 1) / parts; ++m) {
        bn_relu_backward_row<S, AddInto>(gp + m * ldg, rp + m * ldr, xp + m * ldx, a, b, mu, centred, plain,
                                         channels);
      }
    }
  });
  const opmath_t* s = invstd.const_data_ptr<opmath_t>();
  opmath_t* gw = grad_weight.mutable_data_ptr<opmath_t>();
  opmath_t* gb = grad_bias.mutable_data_ptr<opmath_t>();
  for (int64_t c = 0; c < channels; ++c) {
    const auto [centred, plain] = channel_totals(sums, parts, channels, c);
    gw[c] = static_cast<opmath_t>(centred * static_cast<double>(s[c]));
    gb[c] = static_cast<opmath_t>(plain);
  }
  return {grad_weight, grad_bias};
}

// dst = src for (M, C) rows, and the batch statistics of each channel into mean and invstd: μ and 1/√(σ² + ε)
// (σ² biased, as batch norm normalises with). Sums of d = x − x_0 (the channel's first value): shifted by a value of
// the data, the variance Σd²/M − (Σd/M)² does not cancel catastrophically. Each thread sums blocks of kStatRows rows
// in opmath (vectorised at full width) and adds the blocks' sums in double.
void copy_rows_with_stats(const at::Tensor& src, const at::Tensor& dst, double eps, const at::Tensor& mean,
                          const at::Tensor& invstd) {
  const int64_t rows = src.size(0), channels = src.size(1);
  const auto dtype = src.scalar_type();
  check_rows(src, "src", rows, channels, dtype);
  check_rows(dst, "dst", rows, channels, dtype);
  TORCH_CHECK(rows > 0, "src must have rows");
  check_vector(mean, "mean", channels, opmath_of(dtype));
  check_vector(invstd, "invstd", channels, opmath_of(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "copy_rows_with_stats", [&] {
    using S = Storage<scalar_t>;
    using opmath_t = typename S::opmath_t;
    const auto* sp = values<S>(src);
    auto* dp = mutable_values<S>(dst);
    const int64_t lds = src.stride(0), ldd = dst.stride(0);
    std::vector<opmath_t> origin(channels);
    for (int64_t c = 0; c < channels; ++c) {
      origin[c] = S::load(sp[c]);
    }
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
    std::vector<double> sums(parts * 2 * channels, 0.0);  // per part: Σd then Σd²
    at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
      std::vector<opmath_t> block(2 * channels);  // one block's Σd then Σd²
      for (int64_t part = first; part < last; ++part) {
        double* sum = sums.data() + part * 2 * channels;
        const int64_t stop = rows * (part + 1) / parts;
        for (int64_t start = rows * part / parts; start < stop; start += kStatRows) {
          std::fill(block.begin(), block.end(), opmath_t(0));
          for (int64_t m = start; m < std::min(start + kStatRows, stop); ++m) {
            copy_stats_row<S>(dp + m * ldd, sp + m * lds, origin.data(), block.data(), block.data() + channels,
                              channels);
          }
          for (int64_t c = 0; c < 2 * channels; ++c) {
            sum[c] += static_cast<double>(block[c]);
          }
        }
      }
    });
    opmath_t* mp = mean.mutable_data_ptr<opmath_t>();
    opmath_t* ip = invstd.mutable_data_ptr<opmath_t>();
    for (int64_t c = 0; c < channels; ++c) {
      const auto [sum, squares] = channel_totals(sums.data(), parts, channels, c);
      const double shift = sum / static_cast<double>(rows);
      const double var = std::max(squares / static_cast<double>(rows) - shift * shift, 0.0);
      mp[c] = static_cast<opmath_t>(static_cast<double>(origin[c]) + shift);
      ip[c] = static_cast<opmath_t>(1.0 / std::sqrt(var + eps));
    }
  });
}

void affine_add_rows(const at::Tensor& y, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                     const at::Tensor& out) {
  const int64_t rows = x.size(0), channels = x.size(1);
  const auto dtype = x.scalar_type(), opmath = opmath_of(dtype);
  check_rows(x, "x", rows, channels, dtype);
  check_rows(y, "y", rows, channels, dtype);
  check_rows(out, "out", rows, channels, dtype);
  check_vector(scale, "scale", channels, opmath);
  check_vector(shift, "shift", channels, opmath);
  TORCH_CHECK(!out.is_same(y) && !out.is_same(x), "out must be a tensor of its own");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "affine_add_rows", [&] {
    using S = Storage<scalar_t>;
    using opmath_t = typename S::opmath_t;
    const auto* yp = values<S>(y);
    const auto* xp = values<S>(x);
    auto* op = mutable_values<S>(out);
    const opmath_t* a = scale.const_data_ptr<opmath_t>();
    const opmath_t* b = shift.const_data_ptr<opmath_t>();
    const int64_t ldy = y.stride(0), ldx = x.stride(0), ldo = out.stride(0);
    at::parallel_for(0, rows, grain_rows(channels), [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        affine_add_row<S>(op + m * ldo, yp + m * ldy, xp + m * ldx, a, b, channels);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> bn_relu_backward_rows(
    const at::Tensor& grad, const at::Tensor& grad_relu, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& shift, const at::Tensor& mean, const at::Tensor& invstd) {
  check_bn_relu_backward(grad_relu, x, scale, shift, mean, invstd);
  check_rows(grad, "grad", x.size(0), x.size(1), x.scalar_type());
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "bn_relu_backward_rows", [&] {
    result = sums_over_rows<scalar_t, true>(grad, grad_relu, x, scale, shift, mean, invstd);
  });
  return result;
}

std::tuple<at::Tensor, at::Tensor> bn_relu_backward_full_rows(
    const at::Tensor& grad_relu, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
    const at::Tensor& mean, const at::Tensor& invstd, bool training, const at::Tensor& out) {
  check_bn_relu_backward(grad_relu, x, scale, shift, mean, invstd);
  const int64_t rows = x.size(0), channels = x.size(1);
  check_rows(out, "out", rows, channels, x.scalar_type());
  TORCH_CHECK(!out.is_same(grad_relu) && !out.is_same(x), "out must be a tensor of its own");
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "bn_relu_backward_full_rows", [&] {
    using S = Storage<scalar_t>;
    using opmath_t = typename S::opmath_t;
    // ∂L/∂γ = Σδx̂ and ∂L/∂β = Σδ (wanted with running statistics too: γ and β are parameters)
    result = sums_over_rows<scalar_t, false>(out, grad_relu, x, scale, shift, mean, invstd);
    // training: ∂L/∂x = a·(δ − (Σδ + x̂·Σδx̂)/M) = a·δ + (c + d·x) with d = −a·invstd·Σδx̂/M, c = −a·Σδ/M − d·μ;
    // running statistics: ∂L/∂x = a·δ (c = d = 0)
    auto offset = at::zeros({channels}, scale.options());
    auto slope = at::zeros({channels}, scale.options());
    if (training) {
      const auto& [grad_weight, grad_bias] = result;
      slope = -scale * invstd * grad_weight / static_cast<double>(rows);
      offset = -scale * grad_bias / static_cast<double>(rows) - slope * mean;
    }
    auto* op = mutable_values<S>(out);
    const auto* rp = values<S>(grad_relu);
    const auto* xp = values<S>(x);
    const opmath_t* a = scale.const_data_ptr<opmath_t>();
    const opmath_t* b = shift.const_data_ptr<opmath_t>();
    const opmath_t* c0 = offset.const_data_ptr<opmath_t>();
    const opmath_t* d = slope.const_data_ptr<opmath_t>();
    const int64_t ldo = out.stride(0), ldr = grad_relu.stride(0), ldx = x.stride(0);
    at::parallel_for(0, rows, grain_rows(channels), [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        bn_relu_input_grad_row<S>(op + m * ldo, rp + m * ldr, xp + m * ldx, a, b, c0, d, channels);
      }
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY(densenet, m) {
  m.def("affine_relu_rows(Tensor x, Tensor scale, Tensor shift, Tensor(a!) out) -> ()");
  m.def("bn_relu_backward_rows(Tensor(a!) grad, Tensor grad_relu, Tensor x, Tensor scale, Tensor shift, "
        "Tensor mean, Tensor invstd) -> (Tensor, Tensor)");
  m.def("copy_rows_with_stats(Tensor src, Tensor(a!) dst, float eps, Tensor(b!) mean, Tensor(c!) invstd) -> ()");
  m.def("affine_add_rows(Tensor y, Tensor x, Tensor scale, Tensor shift, Tensor(a!) out) -> ()");
  m.def("bn_relu_backward_full_rows(Tensor grad_relu, Tensor x, Tensor scale, Tensor shift, Tensor mean, "
        "Tensor invstd, bool training, Tensor(a!) out) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(densenet, CPU, m) {
  m.impl("affine_relu_rows", &affine_relu_rows);
  m.impl("bn_relu_backward_rows", &bn_relu_backward_rows);
  m.impl("bn_relu_backward_full_rows", &bn_relu_backward_full_rows);
  m.impl("affine_add_rows", &affine_add_rows);
  m.impl("copy_rows_with_stats", &copy_rows_with_stats);
}
