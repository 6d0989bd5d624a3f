// Inference on oneDNN primitives made once per input shape (densenet.deploy.onednn_loop): a dense block's layer
// loop (BlockPlan), the stem (StemPlan), a transition (TransitionPlan), the head's pooled features and classifier
// (HeadPlan), and the version watch that tells when a plan's weights changed in place (VersionWatch).
//
// Per layer l [F2], on the channels-last buffer [x_0, ..., x_L] (rows of `total` channels, one row per pixel):
//     r = clamp([x_0, ..., x_{l-1}], lo_l, hi_l)     y = relu(W1_l * r + b1_l)     x_l = W2_l * y
// float32 / bfloat16: the folded network of densenet.deploy.optimize; int8 [Q1]: u8 codes, s8 weights with a scale
// per output channel, the requantization to the next map's code (s, z) fused into each convolution.
//
// PyTorch's convolution operators build oneDNN's primitive descriptor and allocate its scratchpad on every call
// (~20-35 us each, ~120 calls per DenseNet-121 forward); here each convolution's primitive and reordered weights
// are made once, and a call is one `execute` on the caller's tensors and scratchpad.
//
// One file over the usual ~400 lines: the plans share the helpers of one anonymous namespace (convolutions,
// pools, clamps) and build as one extension; split, they would need a header between translation units for what
// is one concern.

#include <torch/extension.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using dnnl::memory;
using DataType = memory::data_type;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Channels-last strides of an (N, C, *spatial) tensor whose rows (pixels) are `row` elements apart.
memory::dims channels_last_strides(const memory::dims& dims, int64_t row) {
  memory::dims strides(dims.size());
  int64_t step = row;
  strides[1] = 1;
  for (size_t axis = dims.size() - 1; axis >= 2; --axis) {
    strides[axis] = step;
    step *= dims[axis];
  }
  strides[0] = step;
  return strides;
}

DataType data_type_of(const torch::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case torch::kFloat: return DataType::f32;
    case torch::kBFloat16: return DataType::bf16;
    case torch::kUInt8: return DataType::u8;
    case torch::kChar: return DataType::s8;
    default: TORCH_CHECK(false, "onednn_loop: unsupported dtype ", tensor.scalar_type());
  }
}

// A tensor's values as float32 (per-channel scales, a bias).
std::vector<float> to_floats(const torch::Tensor& values) {
  torch::Tensor dense = values.to(torch::kFloat).contiguous();
  return std::vector<float>(dense.data_ptr<float>(), dense.data_ptr<float>() + dense.numel());
}

memory small_vector(const std::vector<float>& values) {
  memory result({{static_cast<int64_t>(values.size())}, DataType::f32, memory::format_tag::x}, cpu_engine());
  std::memcpy(result.get_data_handle(), values.data(), values.size() * sizeof(float));
  return result;
}

// One convolution: its primitive, its weights in the primitive's layout, bias and (int8) scales and zero point.
struct Convolution {
  dnnl::convolution_forward primitive;
  memory::desc source, destination;
  std::unordered_map<int, memory> fixed_arguments;  // everything but the source, destination and scratchpad
  size_t scratchpad_bytes = 0;
};

struct Quantization {  // int8: x = s_x (q_x - z_x), w_o = s_o (q_w), y = s_y (q_y - z_y)
  float input_scale;
  std::vector<float> weight_scale;
  float output_scale;
  int32_t output_zero_point;
  int32_t input_zero_point = 0;  // subtracted by oneDNN (the padding then holds a real zero)
};

memory scalar_s32(int32_t value) {
  memory result({{1}, DataType::s32, memory::format_tag::x}, cpu_engine());
  *static_cast<int32_t*>(result.get_data_handle()) = value;
  return result;
}

// The output side of a window of `kernel` at `stride` with `padding` before (PyTorch's floor rule), and the padding
// after that oneDNN needs to reach it exactly.
std::pair<int64_t, int64_t> window_output(int64_t side, int64_t kernel, int64_t stride, int64_t padding) {
  const int64_t output = (side + 2 * padding - kernel) / stride + 1;
  return {output, (output - 1) * stride + kernel - side - padding};
}

// The attributes of a convolution: the caller's scratchpad; int8: scales (per output channel for the weights) and
// zero points; the ReLU as a post-op.
dnnl::primitive_attr convolution_attributes(const Quantization* quantization, bool relu) {
  dnnl::primitive_attr attributes;
  attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // the caller's, per thread
  if (quantization != nullptr) {
    attributes.set_scales_mask(DNNL_ARG_SRC, 0);
    attributes.set_scales_mask(DNNL_ARG_WEIGHTS, 1);  // per output channel
    attributes.set_scales_mask(DNNL_ARG_DST, 0);
    attributes.set_zero_points_mask(DNNL_ARG_DST, 0);
    if (quantization->input_zero_point != 0) attributes.set_zero_points_mask(DNNL_ARG_SRC, 0);
  }
  if (relu) {
    dnnl::post_ops post_ops;
    post_ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attributes.set_post_ops(post_ops);
  }
  return attributes;
}

// The weights (O, I, *k), reordered once into the layout `layout` the primitive chose.
memory reordered_weights(const torch::Tensor& weight, const memory::desc& layout) {
  const size_t spatial = weight.dim() - 2;
  const auto user_tag = spatial == 1 ? memory::format_tag::oiw
                        : spatial == 2 ? memory::format_tag::oihw : memory::format_tag::oidhw;
  torch::Tensor dense = weight.contiguous();
  memory user_weights({memory::dims(weight.sizes().begin(), weight.sizes().end()), data_type_of(weight), user_tag},
                      cpu_engine(), dense.data_ptr());
  memory weights(layout, cpu_engine());
  dnnl::stream stream(cpu_engine());
  dnnl::reorder(user_weights, weights).execute(stream, user_weights, weights);
  stream.wait();
  return weights;
}

Convolution make_convolution(const memory::dims& input_dims, int64_t input_row, int64_t output_row,
                             const torch::Tensor& weight, const torch::Tensor& bias, bool relu, DataType activations,
                             const Quantization* quantization, int64_t stride = 1, int64_t pad = -1) {
  const int64_t out_channels = weight.size(0);
  memory::dims weight_dims(weight.sizes().begin(), weight.sizes().end());
  memory::dims output_dims = input_dims;
  output_dims[1] = out_channels;
  const size_t spatial = input_dims.size() - 2;
  memory::dims strides(spatial, stride), padding(spatial), padding_after(spatial);
  for (size_t axis = 0; axis < spatial; ++axis) {
    padding[axis] = pad >= 0 ? pad : (weight.size(2 + axis) - 1) / 2;  // default: a "same" convolution
    const auto [side, after] = window_output(input_dims[2 + axis], weight.size(2 + axis), stride, padding[axis]);
    output_dims[2 + axis] = side;
    padding_after[axis] = after;
  }

  Convolution conv;
  conv.source = memory::desc(input_dims, activations, channels_last_strides(input_dims, input_row));
  conv.destination = memory::desc(output_dims, activations, channels_last_strides(output_dims, output_row));
  const memory::desc any_weights(weight_dims, data_type_of(weight), memory::format_tag::any);
  const memory::desc bias_desc({out_channels}, DataType::f32, memory::format_tag::x);

  const dnnl::primitive_attr attributes = convolution_attributes(quantization, relu);
  const bool has_bias = bias.defined() && bias.numel() > 0;
  auto descriptor = has_bias
      ? dnnl::convolution_forward::primitive_desc(cpu_engine(), dnnl::prop_kind::forward_inference,
                                                  dnnl::algorithm::convolution_direct, conv.source, any_weights,
                                                  bias_desc, conv.destination, strides, padding, padding_after,
                                                  attributes)
      : dnnl::convolution_forward::primitive_desc(cpu_engine(), dnnl::prop_kind::forward_inference,
                                                  dnnl::algorithm::convolution_direct, conv.source, any_weights,
                                                  conv.destination, strides, padding, padding_after, attributes);
  conv.primitive = dnnl::convolution_forward(descriptor);
  conv.scratchpad_bytes = descriptor.scratchpad_desc().get_size();

  conv.fixed_arguments[DNNL_ARG_WEIGHTS] = reordered_weights(weight, descriptor.weights_desc());
  if (has_bias) conv.fixed_arguments[DNNL_ARG_BIAS] = small_vector(to_floats(bias));
  if (quantization != nullptr) {
    conv.fixed_arguments[DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC] = small_vector({quantization->input_scale});
    conv.fixed_arguments[DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS] = small_vector(quantization->weight_scale);
    conv.fixed_arguments[DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST] = small_vector({quantization->output_scale});
    conv.fixed_arguments[DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST] = scalar_s32(quantization->output_zero_point);
    if (quantization->input_zero_point != 0)
      conv.fixed_arguments[DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC] = scalar_s32(quantization->input_zero_point);
  }
  return conv;
}

void execute(const Convolution& conv, dnnl::stream& stream, void* source, void* destination, void* scratchpad) {
  std::unordered_map<int, memory> arguments(conv.fixed_arguments);
  arguments[DNNL_ARG_SRC] = memory(conv.source, cpu_engine(), source);
  arguments[DNNL_ARG_DST] = memory(conv.destination, cpu_engine(), destination);
  arguments[DNNL_ARG_SCRATCHPAD] =
      memory({{static_cast<int64_t>(conv.scratchpad_bytes)}, DataType::u8, memory::format_tag::x}, cpu_engine(),
             scratchpad);
  conv.primitive.execute(stream, arguments);
}

// One row: out[c] = min(max(in[c], lo[c]), hi[c]) (the pointers never alias: vectorised at full width).
template <typename T>
void clamp_row(const T* __restrict in, T* __restrict out, const T* __restrict lo, const T* __restrict hi,
               int64_t channels) {
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) out[c] = std::min(std::max(in[c], lo[c]), hi[c]);
}

// A bfloat16's bits as the float32 they denote (exact: a bf16 is a float32's upper half).
inline float from_bfloat16(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof value);
  return value;
}

// float32 to bfloat16 bits, rounded to nearest even; NaN as PyTorch's conversion writes it.
inline uint16_t to_bfloat16(float value) {
  if (std::isnan(value)) return 0x7fc0;
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

// bfloat16: compared as float32 (exact), the selected bf16 value copied bit for bit (NaN kept, as torch.clamp).
// Never inlined: GCC drops the `omp simd` vectorisation of a copy inlined into at::parallel_for's serial branch
// (one thread, or a pass below kInlineElements), which then ran a branch per element — 30x slower.
__attribute__((noinline)) void clamp_row_bf16(const uint16_t* __restrict in, uint16_t* __restrict out, const float* __restrict lo,
                    const float* __restrict hi, const uint16_t* __restrict lo_bits,
                    const uint16_t* __restrict hi_bits, int64_t channels) {
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) {
    const float value = from_bfloat16(in[c]);
    const uint16_t kept = value < lo[c] ? lo_bits[c] : in[c];
    out[c] = value > hi[c] ? hi_bits[c] : kept;
  }
}

// Up to this many elements a pass runs on the calling thread: waking the other threads costs more than it saves.
constexpr int64_t kInlineElements = 16384;

// `row_function(row)` for each of `rows` rows of `channels` values, in parallel above kInlineElements.
template <typename Function>
void for_rows(int64_t rows, int64_t channels, const Function& row_function) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kInlineElements / std::max<int64_t>(channels, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t row = begin; row < end; ++row) row_function(row);
                   });
}

// clamp(x, lo, hi) per channel: `rows` rows of `channels` values, `in_row` elements apart in `input`, into
// contiguous rows of `output`. `lo`/`hi`: u8 codes for "int8", else float32 (for "bfloat16" the bounds' own bf16
// bit patterns in `lo_bits`/`hi_bits`).
void clamp_into(const std::string& dtype, const void* input, int64_t in_row, void* output, int64_t rows,
                int64_t channels, const torch::Tensor& lo, const torch::Tensor& hi, const torch::Tensor& lo_bits,
                const torch::Tensor& hi_bits) {
  if (dtype == "int8") {
    const uint8_t *low = lo.data_ptr<uint8_t>(), *high = hi.data_ptr<uint8_t>();
    const auto* in = static_cast<const uint8_t*>(input);
    auto* out = static_cast<uint8_t*>(output);
    for_rows(rows, channels, [&](int64_t row) {
      clamp_row(in + row * in_row, out + row * channels, low, high, channels);
    });
  } else if (dtype == "float32") {
    const float *low = lo.data_ptr<float>(), *high = hi.data_ptr<float>();
    const auto* in = static_cast<const float*>(input);
    auto* out = static_cast<float*>(output);
    for_rows(rows, channels, [&](int64_t row) {
      clamp_row(in + row * in_row, out + row * channels, low, high, channels);
    });
  } else {
    const float *low = lo.data_ptr<float>(), *high = hi.data_ptr<float>();
    const auto* low_bits = static_cast<const uint16_t*>(lo_bits.data_ptr());
    const auto* high_bits = static_cast<const uint16_t*>(hi_bits.data_ptr());
    const auto* in = static_cast<const uint16_t*>(input);
    auto* out = static_cast<uint16_t*>(output);
    for_rows(rows, channels, [&](int64_t row) {
      clamp_row_bf16(in + row * in_row, out + row * channels, low, high, low_bits, high_bits, channels);
    });
  }
}

void copy_rows(const uint8_t* input, uint8_t* output, int64_t out_row, int64_t rows, int64_t row_bytes) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(row_bytes, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) std::memcpy(output + row * out_row, input + row * row_bytes, row_bytes);
  });
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t size : shape) count *= size;
  return count;
}

void check_channels_last(const torch::Tensor& x, const char* what) {
  const auto format = x.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(x.is_contiguous(format), "onednn_loop: ", what, "'s input must be channels-last");
}

// A pooling primitive from `source` into `destination` with the caller's scratchpad.
void execute_pool(const dnnl::pooling_forward& pool, dnnl::stream& stream, const memory::desc& source_desc,
                  const memory::desc& destination_desc, void* source, void* destination, void* scratchpad,
                  int64_t scratchpad_bytes) {
  pool.execute(stream, {{DNNL_ARG_SRC, memory(source_desc, cpu_engine(), source)},
                        {DNNL_ARG_DST, memory(destination_desc, cpu_engine(), destination)},
                        {DNNL_ARG_SCRATCHPAD, memory({{scratchpad_bytes}, DataType::u8, memory::format_tag::x},
                                                     cpu_engine(), scratchpad)}});
}

}  // namespace

// The layer loop of one dense block for one input shape (N, C_0, *spatial): built once, then run on the caller's
// buffer and scratch tensors (per thread), so one plan serves concurrent calls.
class BlockPlan {
 public:
  // `lo`/`hi`: per layer, the clamp bounds of its C_0 + l*k input channels (the activations' dtype; float32 for
  // bfloat16, whose bit patterns are taken from `lo_bits`/`hi_bits`). int8 only: the scales and codes (else empty).
  BlockPlan(std::vector<int64_t> shape, int64_t growth_rate, std::vector<torch::Tensor> lo, std::vector<torch::Tensor> hi,
            std::vector<torch::Tensor> lo_bits, std::vector<torch::Tensor> hi_bits, std::vector<torch::Tensor> weight1,
            std::vector<torch::Tensor> bias1, std::vector<torch::Tensor> weight2, std::string dtype,
            std::vector<torch::Tensor> weight_scale1, std::vector<double> code_scale1, std::vector<int64_t> code_zero1,
            std::vector<torch::Tensor> weight_scale2, std::vector<double> code_scale2, std::vector<int64_t> code_zero2)
      : shape_(shape), growth_rate_(growth_rate), lo_(lo), hi_(hi), lo_bits_(lo_bits), hi_bits_(hi_bits), dtype_(dtype) {
    const int64_t layers = static_cast<int64_t>(weight1.size());
    TORCH_CHECK(layers > 0 && lo.size() == weight1.size() && hi.size() == weight1.size() &&
                    weight2.size() == weight1.size() && bias1.size() == weight1.size(),
                "onednn_loop: one clamp, bias and two weights per layer");
    const bool int8 = dtype == "int8";
    TORCH_CHECK(int8 || dtype == "float32" || dtype == "bfloat16", "onednn_loop: dtype ", dtype);
    const DataType activations = int8 ? DataType::u8 : dtype == "bfloat16" ? DataType::bf16 : DataType::f32;
    rows_ = shape[0];
    for (size_t axis = 2; axis < shape.size(); ++axis) rows_ *= shape[axis];
    width_ = weight2[0].size(1);
    total_ = shape[1] + layers * growth_rate;
    for (int64_t index = 0; index < layers; ++index) {
      const int64_t channels = shape[1] + index * growth_rate;
      memory::dims input(shape.begin(), shape.end());
      input[1] = channels;
      memory::dims middle = input;
      middle[1] = width_;
      Quantization first, second;
      if (int8) {
        first = {1.f, to_floats(weight_scale1[index]), static_cast<float>(code_scale1[index]),
                 static_cast<int32_t>(code_zero1[index])};
        second = {static_cast<float>(code_scale1[index]), to_floats(weight_scale2[index]),
                  static_cast<float>(code_scale2[index]), static_cast<int32_t>(code_zero2[index])};
      }
      conv1_.push_back(make_convolution(input, channels, width_, weight1[index], bias1[index], true, activations,
                                        int8 ? &first : nullptr));
      conv2_.push_back(make_convolution(middle, width_, growth_rate, weight2[index], torch::Tensor(), false,
                                        activations, int8 ? &second : nullptr));
      scratchpad_bytes_ = std::max({scratchpad_bytes_, conv1_.back().scratchpad_bytes, conv2_.back().scratchpad_bytes});
    }
  }

  int64_t scratchpad_bytes() const { return static_cast<int64_t>(scratchpad_bytes_); }
  // the elements of the bottleneck (N*S*width) and of the new map (N*S*k), the work tensors `run` takes
  std::pair<int64_t, int64_t> work_elements() const { return {rows_ * width_, rows_ * growth_rate_}; }

  // buffer: N*S*total elements, the block input already in its first C_0 channels of each row; scratch: N*S*(total - k);
  // middle: N*S*width; fresh: N*S*k; scratchpad: scratchpad_bytes() bytes (u8).
  void run(torch::Tensor buffer, torch::Tensor scratch, torch::Tensor middle, torch::Tensor fresh,
           torch::Tensor scratchpad) const {
    const int64_t element = buffer.element_size();
    TORCH_CHECK(buffer.numel() >= rows_ * total_ && scratch.numel() >= rows_ * (total_ - growth_rate_) &&
                    middle.numel() >= rows_ * width_ && fresh.numel() >= rows_ * growth_rate_ &&
                    scratchpad.numel() >= static_cast<int64_t>(scratchpad_bytes_),
                "onednn_loop: a work tensor is too small for this plan");
    for (const auto* tensor : {&buffer, &scratch, &middle, &fresh, &scratchpad})
      TORCH_CHECK(tensor->is_contiguous() && tensor->device().is_cpu(), "onednn_loop: work tensors are contiguous CPU tensors");
    auto* base = static_cast<uint8_t*>(buffer.data_ptr());
    dnnl::stream stream(cpu_engine());
    for (size_t index = 0; index < conv1_.size(); ++index) {
      const int64_t channels = shape_[1] + static_cast<int64_t>(index) * growth_rate_;
      clamp_into(dtype_, base, total_, scratch.data_ptr(), rows_, channels, lo_[index], hi_[index],
                 lo_bits_.empty() ? torch::Tensor() : lo_bits_[index], hi_bits_.empty() ? torch::Tensor() : hi_bits_[index]);
      execute(conv1_[index], stream, scratch.data_ptr(), middle.data_ptr(), scratchpad.data_ptr());
      execute(conv2_[index], stream, middle.data_ptr(), fresh.data_ptr(), scratchpad.data_ptr());
      copy_rows(static_cast<uint8_t*>(fresh.data_ptr()), base + channels * element, total_ * element, rows_,
                growth_rate_ * element);
    }
  }

 private:
  std::vector<int64_t> shape_;
  int64_t growth_rate_, rows_ = 0, width_ = 0, total_ = 0;
  std::vector<torch::Tensor> lo_, hi_, lo_bits_, hi_bits_;
  std::string dtype_;
  std::vector<Convolution> conv1_, conv2_;
  size_t scratchpad_bytes_ = 1;
};

// The stem of an ImageNet-style network: sigma(W0 * x + b0) (stride 2, padding 3 for DenseNet), then a max pool
// (kernel 3, stride 2, padding 1), written into the caller's tensors: PyTorch's operators return fresh tensors (and
// its CPU max pool also int64 indices, 4x the output's bytes in bfloat16), whose pages fault in on every forward.
class StemPlan {
 public:
  // int8 ("int8"): the float32 image is encoded first, q = clamp(round(x / s) + z, 0, 255) with the image's code
  // (s, z) = (image_scale, image_zero_point); `weight_scale` per output channel, the output's code (s_y, z_y).
  StemPlan(std::vector<int64_t> shape, torch::Tensor weight, torch::Tensor bias, int64_t stride, int64_t padding,
           bool relu, std::string dtype, int64_t pool_kernel, int64_t pool_stride, int64_t pool_padding,
           double image_scale, int64_t image_zero_point, torch::Tensor weight_scale, double output_scale,
           int64_t output_zero_point)
      : int8_(dtype == "int8"), image_scale_(static_cast<float>(image_scale)),
        image_zero_point_(static_cast<int32_t>(image_zero_point)) {
    TORCH_CHECK(int8_ || dtype == "float32" || dtype == "bfloat16", "onednn_loop: the stem plan takes float32, "
                "bfloat16 or int8");
    const DataType activations = int8_ ? DataType::u8 : dtype == "bfloat16" ? DataType::bf16 : DataType::f32;
    memory::dims input(shape.begin(), shape.end());
    Quantization quantization;
    if (int8_) {
      quantization = {image_scale_, to_floats(weight_scale), static_cast<float>(output_scale),
                      static_cast<int32_t>(output_zero_point), image_zero_point_};
    }
    conv_ = make_convolution(input, shape[1], weight.size(0), weight, bias, relu, activations,
                             int8_ ? &quantization : nullptr, stride, padding);
    memory::dims conv_dims = conv_.destination.get_dims(), pooled = conv_dims;
    const size_t spatial = shape.size() - 2;
    memory::dims kernel(spatial, pool_kernel), strides(spatial, pool_stride), before(spatial, pool_padding),
        after(spatial), dilation(spatial, 0);
    for (size_t axis = 0; axis < spatial; ++axis) {
      const auto [side, pad_after] = window_output(conv_dims[2 + axis], pool_kernel, pool_stride, pool_padding);
      pooled[2 + axis] = side;
      after[axis] = pad_after;
    }
    dnnl::primitive_attr attributes;
    attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    pool_source_ = conv_.destination;
    pool_destination_ = memory::desc(pooled, activations, channels_last_strides(pooled, pooled[1]));
    auto descriptor = dnnl::pooling_forward::primitive_desc(
        cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_max, pool_source_,
        pool_destination_, strides, kernel, dilation, before, after, attributes);
    pool_ = dnnl::pooling_forward(descriptor);
    scratchpad_bytes_ = std::max({conv_.scratchpad_bytes, descriptor.scratchpad_desc().get_size(), size_t{1}});
    conv_shape_ = std::vector<int64_t>(conv_dims.begin(), conv_dims.end());
    output_shape_ = std::vector<int64_t>(pooled.begin(), pooled.end());
  }

  std::vector<int64_t> conv_shape() const { return conv_shape_; }
  std::vector<int64_t> output_shape() const { return output_shape_; }
  int64_t scratchpad_bytes() const { return static_cast<int64_t>(scratchpad_bytes_); }

  // x: the input, channels-last and dense; codes (int8: the image's u8 codes, x.numel() elements), conv_out and
  // out: flat tensors of the conv's and the pool's elements.
  void run(torch::Tensor x, torch::Tensor codes, torch::Tensor conv_out, torch::Tensor out,
           torch::Tensor scratchpad) const {
    check_channels_last(x, "the stem");
    TORCH_CHECK(conv_out.numel() >= element_count(conv_shape_) && out.numel() >= element_count(output_shape_) &&
                    scratchpad.numel() >= scratchpad_bytes() && (!int8_ || codes.numel() >= x.numel()),
                "onednn_loop: a work tensor is too small for this plan");
    void* source = x.data_ptr();
    if (int8_) {
      TORCH_CHECK(x.scalar_type() == torch::kFloat, "onednn_loop: the int8 stem takes float32 images");
      encode(x.data_ptr<float>(), static_cast<uint8_t*>(codes.data_ptr()), x.numel());
      source = codes.data_ptr();
    }
    dnnl::stream stream(cpu_engine());
    execute(conv_, stream, source, conv_out.data_ptr(), scratchpad.data_ptr());
    execute_pool(pool_, stream, pool_source_, pool_destination_, conv_out.data_ptr(), out.data_ptr(),
                 scratchpad.data_ptr(), scratchpad_bytes());
  }

 private:
  // q = clamp(round(x / s) + z, 0, 255), rounding half to even (torch.round's rule)
  void encode(const float* x, uint8_t* codes, int64_t count) const {
    const float scale = image_scale_, zero = static_cast<float>(image_zero_point_);
    at::parallel_for(0, count, kInlineElements, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const float code = std::nearbyint(x[index] / scale) + zero;
        codes[index] = static_cast<uint8_t>(std::min(std::max(code, 0.f), 255.f));
      }
    });
  }

  bool int8_;
  float image_scale_;
  int32_t image_zero_point_;
  Convolution conv_;
  dnnl::pooling_forward pool_;
  memory::desc pool_source_, pool_destination_;
  std::vector<int64_t> conv_shape_, output_shape_;
  size_t scratchpad_bytes_ = 1;
};

// A transition [F3]: W' * pool(clamp(x, lo, hi)) + b' (the BN-ReLU folded into a clamp and the conv, the 2x2
// average pool first), each step into the caller's tensors. Even spatial sides only (the pool then covers all).
class TransitionPlan {
 public:
  // int8 ("int8"): u8 codes read at scale 1 (their offsets folded into `bias` [Q1]), `weight_scale` per output
  // channel, the output's code (s_y, z_y); the pooled codes rounded half to even.
  TransitionPlan(std::vector<int64_t> shape, torch::Tensor lo, torch::Tensor hi, torch::Tensor lo_bits,
                 torch::Tensor hi_bits, torch::Tensor weight, torch::Tensor bias, std::string dtype,
                 torch::Tensor weight_scale, double output_scale, int64_t output_zero_point)
      : lo_(lo), hi_(hi), lo_bits_(lo_bits), hi_bits_(hi_bits), dtype_(dtype) {
    const bool int8 = dtype == "int8";
    TORCH_CHECK(int8 || dtype == "float32" || dtype == "bfloat16", "onednn_loop: the transition plan takes "
                "float32, bfloat16 or int8");
    const DataType activations = int8 ? DataType::u8 : dtype == "bfloat16" ? DataType::bf16 : DataType::f32;
    const size_t spatial = shape.size() - 2;
    memory::dims input(shape.begin(), shape.end()), pooled = input;
    rows_ = shape[0];
    for (size_t axis = 2; axis < shape.size(); ++axis) {
      TORCH_CHECK(shape[axis] % 2 == 0, "onednn_loop: the transition plan takes even sides");
      pooled[axis] = shape[axis] / 2;
      rows_ *= shape[axis];
    }
    channels_ = shape[1];
    const memory::dims two(spatial, 2), none(spatial, 0);
    dnnl::primitive_attr attributes;
    attributes.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    pool_source_ = memory::desc(input, activations, channels_last_strides(input, channels_));
    pool_destination_ = memory::desc(pooled, activations, channels_last_strides(pooled, channels_));
    auto descriptor = dnnl::pooling_forward::primitive_desc(
        cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_avg_exclude_padding, pool_source_,
        pool_destination_, two, two, none, none, none, attributes);
    pool_ = dnnl::pooling_forward(descriptor);
    Quantization quantization;
    if (int8) {
      quantization = {1.f, to_floats(weight_scale), static_cast<float>(output_scale),
                      static_cast<int32_t>(output_zero_point)};
    }
    conv_ = make_convolution(pooled, channels_, weight.size(0), weight, bias, false, activations,
                             int8 ? &quantization : nullptr);
    scratchpad_bytes_ = std::max({conv_.scratchpad_bytes, descriptor.scratchpad_desc().get_size(), size_t{1}});
    pooled_elements_ = element_count(std::vector<int64_t>(pooled.begin(), pooled.end()));
    output_shape_ = std::vector<int64_t>(pooled.begin(), pooled.end());
    output_shape_[1] = weight.size(0);
  }

  std::vector<int64_t> output_shape() const { return output_shape_; }
  int64_t scratchpad_bytes() const { return static_cast<int64_t>(scratchpad_bytes_); }

  // x: channels-last and dense; clamped: N*S*C elements; pooled: N*S*C/2^d; out: the output's elements.
  void run(torch::Tensor x, torch::Tensor clamped, torch::Tensor pooled, torch::Tensor out,
           torch::Tensor scratchpad) const {
    check_channels_last(x, "the transition");
    TORCH_CHECK(clamped.numel() >= rows_ * channels_ && pooled.numel() >= pooled_elements_ &&
                    out.numel() >= element_count(output_shape_) && scratchpad.numel() >= scratchpad_bytes(),
                "onednn_loop: a work tensor is too small for this plan");
    clamp_into(dtype_, x.data_ptr(), channels_, clamped.data_ptr(), rows_, channels_, lo_, hi_, lo_bits_, hi_bits_);
    dnnl::stream stream(cpu_engine());
    execute_pool(pool_, stream, pool_source_, pool_destination_, clamped.data_ptr(), pooled.data_ptr(),
                 scratchpad.data_ptr(), scratchpad_bytes());
    execute(conv_, stream, pooled.data_ptr(), out.data_ptr(), scratchpad.data_ptr());
  }

 private:
  torch::Tensor lo_, hi_, lo_bits_, hi_bits_;
  std::string dtype_;
  int64_t rows_ = 0, channels_ = 0, pooled_elements_ = 0;
  dnnl::pooling_forward pool_;
  memory::desc pool_source_, pool_destination_;
  Convolution conv_;
  std::vector<int64_t> output_shape_;
  size_t scratchpad_bytes_ = 1;
};

// The head's pooled features [F4] after the final BN-ReLU: out[n][c] = (1/S) sum_s max(a_c x[n][s][c] + b_c, 0), in
// float32 (into `result`, N*C) from channels-last float32, bfloat16 or u8 (codes, their affine code folded into a
// and b) maps — one pass where PyTorch's operators make three (convert, BN-ReLU, mean), each a parallel region on a
// small map at batch 1.
void pool_features(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& shift, float* result) {
  check_channels_last(x, "the head");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat && shift.scalar_type() == torch::kFloat &&
                  scale.is_contiguous() && shift.is_contiguous() && scale.numel() == x.size(1) &&
                  shift.numel() == x.size(1),
              "onednn_loop: the head's scale and shift are contiguous float32 vectors of the channels");
  const int64_t batch = x.size(0), channels = x.size(1), positions = x.numel() / std::max<int64_t>(batch * channels, 1);
  const float *a = scale.data_ptr<float>(), *b = shift.data_ptr<float>();
  auto pool = [&](auto load) {
    at::parallel_for(0, batch, std::max<int64_t>(1, kInlineElements / std::max<int64_t>(positions * channels, 1)),
                     [&](int64_t begin, int64_t end) {
      std::vector<float> sums(channels);
      for (int64_t n = begin; n < end; ++n) {
        std::fill(sums.begin(), sums.end(), 0.f);
        float* __restrict total = sums.data();
        for (int64_t position = 0; position < positions; ++position) {
          const int64_t row = (n * positions + position) * channels;
#pragma omp simd
          for (int64_t c = 0; c < channels; ++c) total[c] += std::max(a[c] * load(row + c) + b[c], 0.f);
        }
        for (int64_t c = 0; c < channels; ++c) result[n * channels + c] = total[c] / static_cast<float>(positions);
      }
    });
  };
  if (x.scalar_type() == torch::kByte) {
    const uint8_t* data = x.data_ptr<uint8_t>();
    pool([data](int64_t index) { return static_cast<float>(data[index]); });
  } else if (x.scalar_type() == torch::kFloat) {
    const float* data = x.data_ptr<float>();
    pool([data](int64_t index) { return data[index]; });
  } else {
    TORCH_CHECK(x.scalar_type() == torch::kBFloat16, "onednn_loop: the head takes float32, bfloat16 or u8 maps");
    const auto* data = static_cast<const uint16_t*>(x.data_ptr());
    pool([data](int64_t index) { return from_bfloat16(data[index]); });
  }
}

torch::Tensor relu_affine_mean(torch::Tensor x, torch::Tensor scale, torch::Tensor shift) {
  torch::Tensor out = torch::empty({x.size(0), x.size(1)}, torch::kFloat);
  pool_features(x, scale, shift, out.data_ptr<float>());
  return out;
}

// The head [F4][F5]: the pooled features after the final BN-ReLU (pool_features), then the classifier O = W p + b
// as a 1x1 convolution of the (N, C, 1, 1) features, in the classifier's dtype (float32, or bfloat16: the features
// rounded to bf16 and the logits written in bf16, as PyTorch's bf16 linear does). Made once per batch size.
class HeadPlan {
 public:
  HeadPlan(int64_t batch, torch::Tensor weight, torch::Tensor bias, torch::Tensor scale, torch::Tensor shift)
      : scale_(scale.to(torch::kFloat).contiguous()), shift_(shift.to(torch::kFloat).contiguous()),
        batch_(batch), channels_(weight.size(1)), classes_(weight.size(0)),
        bf16_(weight.scalar_type() == torch::kBFloat16) {
    TORCH_CHECK(bf16_ || weight.scalar_type() == torch::kFloat, "onednn_loop: the head plan takes a float32 or "
                "bfloat16 classifier");
    conv_ = make_convolution({batch, channels_, 1, 1}, channels_, classes_,
                             weight.reshape({classes_, channels_, 1, 1}), bias, false, data_type_of(weight), nullptr);
    scratchpad_bytes_ = std::max(conv_.scratchpad_bytes, size_t{1});
  }

  int64_t scratchpad_bytes() const { return static_cast<int64_t>(scratchpad_bytes_); }

  // x: the last block's map (channels-last, dense, batch N); pooled: N*C float32; features: N*C of the classifier's
  // dtype; out: N*classes of it.
  void run(torch::Tensor x, torch::Tensor pooled, torch::Tensor features, torch::Tensor out,
           torch::Tensor scratchpad) const {
    TORCH_CHECK(x.size(0) == batch_ && x.size(1) == channels_ && pooled.numel() >= batch_ * channels_ &&
                    features.numel() >= batch_ * channels_ && out.numel() >= batch_ * classes_ &&
                    scratchpad.numel() >= scratchpad_bytes(),
                "onednn_loop: the head's input or a work tensor does not fit this plan");
    float* means = pooled.data_ptr<float>();
    pool_features(x, scale_, shift_, means);
    if (bf16_) {
      auto* rounded = static_cast<uint16_t*>(features.data_ptr());
      for (int64_t index = 0; index < batch_ * channels_; ++index) rounded[index] = to_bfloat16(means[index]);
    }
    dnnl::stream stream(cpu_engine());
    execute(conv_, stream, bf16_ ? features.data_ptr() : means, out.data_ptr(), scratchpad.data_ptr());
  }

 private:
  torch::Tensor scale_, shift_;
  int64_t batch_, channels_, classes_;
  bool bf16_;
  Convolution conv_;
  size_t scratchpad_bytes_ = 1;
};

// The version counters of the tensors a plan was made from (the module's weights), to tell when one was changed
// in place: one call per forward instead of one Python attribute read per tensor. An inference-mode tensor has no
// counter (only its replacement can be seen, by the caller).
class VersionWatch {
 public:
  explicit VersionWatch(std::vector<torch::Tensor> tensors) : tensors_(std::move(tensors)) {
    for (const auto& tensor : tensors_) versions_.push_back(version(tensor));
  }

  bool changed() const {
    for (size_t index = 0; index < tensors_.size(); ++index)
      if (version(tensors_[index]) != versions_[index]) return true;
    return false;
  }

 private:
  static int64_t version(const torch::Tensor& tensor) { return tensor.is_inference() ? -1 : tensor._version(); }

  std::vector<torch::Tensor> tensors_;
  std::vector<int64_t> versions_;
};

int64_t library_version() {
  const dnnl_version_t* version = dnnl_version();
  return version->major * 10000 + version->minor * 100 + version->patch;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.attr("header_version") = DNNL_VERSION_MAJOR * 10000 + DNNL_VERSION_MINOR * 100 + DNNL_VERSION_PATCH;
  module.def("relu_affine_mean", &relu_affine_mean, "the head's pooled features after the final BN-ReLU",
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("library_version", &library_version, "the version of the oneDNN library loaded (major·10⁴ + minor·10² + patch)");
  pybind11::class_<VersionWatch>(module, "VersionWatch")
      .def(pybind11::init<std::vector<torch::Tensor>>())
      .def("changed", &VersionWatch::changed);
  pybind11::class_<HeadPlan>(module, "HeadPlan")
      .def(pybind11::init<int64_t, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>())
      .def("scratchpad_bytes", &HeadPlan::scratchpad_bytes)
      .def("run", &HeadPlan::run, pybind11::call_guard<pybind11::gil_scoped_release>());
  pybind11::class_<BlockPlan>(module, "BlockPlan")
      .def(pybind11::init<std::vector<int64_t>, int64_t, std::vector<torch::Tensor>, std::vector<torch::Tensor>,
                          std::vector<torch::Tensor>, std::vector<torch::Tensor>, std::vector<torch::Tensor>,
                          std::vector<torch::Tensor>, std::vector<torch::Tensor>, std::string,
                          std::vector<torch::Tensor>, std::vector<double>, std::vector<int64_t>,
                          std::vector<torch::Tensor>, std::vector<double>, std::vector<int64_t>>())
      .def("scratchpad_bytes", &BlockPlan::scratchpad_bytes)
      .def("work_elements", &BlockPlan::work_elements)
      .def("run", &BlockPlan::run, pybind11::call_guard<pybind11::gil_scoped_release>());
  pybind11::class_<StemPlan>(module, "StemPlan")
      .def(pybind11::init<std::vector<int64_t>, torch::Tensor, torch::Tensor, int64_t, int64_t, bool, std::string,
                          int64_t, int64_t, int64_t, double, int64_t, torch::Tensor, double, int64_t>())
      .def("conv_shape", &StemPlan::conv_shape)
      .def("output_shape", &StemPlan::output_shape)
      .def("scratchpad_bytes", &StemPlan::scratchpad_bytes)
      .def("run", &StemPlan::run, pybind11::call_guard<pybind11::gil_scoped_release>());
  pybind11::class_<TransitionPlan>(module, "TransitionPlan")
      .def(pybind11::init<std::vector<int64_t>, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                          torch::Tensor, torch::Tensor, std::string, torch::Tensor, double, int64_t>())
      .def("output_shape", &TransitionPlan::output_shape)
      .def("scratchpad_bytes", &TransitionPlan::scratchpad_bytes)
      .def("run", &TransitionPlan::run, pybind11::call_guard<pybind11::gil_scoped_release>());
}
