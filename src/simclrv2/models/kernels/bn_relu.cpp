// Training-mode BatchNorm + (residual add) + ReLU over channels_last CPU tensors, forward and backward, in few
// passes over memory; and BatchNorm alone (a projection shortcut's), which PyTorch also runs in several passes. In
// evaluation mode (running statistics) the same layers are one pass: read x (and the residual), write the output. On a
// 2-core CPU these layers are memory-bound: PyTorch's separate BatchNorm, ReLU and
// backward ops read or write every activation 13-14 times (16-17 with the add); here the forward reads it twice and
// writes it once, and the backward reads (gradient, input) twice and writes once, recomputing ReLU's mask from the
// input. With a residual the forward reads it too, and the backward's first pass reads the saved output for the mask
// and writes the residual's gradient, which its second pass reads in place of the gradient and the output.
//
// A channels_last (N, C, H, W) tensor is a row-major (M = N*H*W, C) matrix: every loop runs over rows in
// parallel and over channels innermost, so the compiler vectorises it. Sums are float within blocks of rows and
// double across blocks; the statistics are shifted by each channel's first value so the variance does not
// cancel when a channel's mean is large against its spread.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

using simclrv2::store;
using simclrv2::to_float;

constexpr int64_t kRowBlock = 32;   // rows summed in float before the double accumulator
constexpr int64_t kGrain = 256;     // rows per parallel task at least

// Two per-channel sums over all rows, in double: `body(row, a, b)` adds one row's terms to the float accumulators
// a[c] and b[c]. Threads keep their own partial sums, added in thread order, so a given thread count gives the same
// result every time. The bodies' channel loops are kept loops (unroll 1): fully unrolled where 16 channels are known
// at compile time, gcc vectorised the loop over rows instead (a lane per row, not per channel), at half the speed.
template <int kC, typename Body>
void channel_sums(int64_t rows, int64_t channels, Body body, std::vector<double>& sum_a, std::vector<double>& sum_b) {
  const int threads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(2 * channels * threads), 0.0);
  at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
    double* part_a = partial.data() + 2 * channels * at::get_thread_num();
    double* part_b = part_a + channels;
    // The block's sums: local arrays where the channel count is known at compile time, else on the heap.
    alignas(64) float fixed_a[kC > 0 ? kC : 1], fixed_b[kC > 0 ? kC : 1];
    std::vector<float> block_a(kC > 0 ? 0 : channels), block_b(kC > 0 ? 0 : channels);
    float* a = kC > 0 ? fixed_a : block_a.data();
    float* b = kC > 0 ? fixed_b : block_b.data();
    const int64_t C = kC > 0 ? kC : channels;
    for (int64_t start = begin; start < end; start += kRowBlock) {
      const int64_t stop = std::min(end, start + kRowBlock);
      for (int64_t c = 0; c < C; ++c) a[c] = b[c] = 0.f;
      for (int64_t row = start; row < stop; ++row) body(row, a, b);
      #pragma GCC ivdep  // distinct arrays: the thread's partial sums and this block's
      for (int64_t c = 0; c < C; ++c) {
        part_a[c] += a[c];
        part_b[c] += b[c];
      }
    }
  });
  sum_a.assign(channels, 0.0);
  sum_b.assign(channels, 0.0);
  for (int t = 0; t < threads; ++t) {
    for (int64_t c = 0; c < channels; ++c) {
      sum_a[c] += partial[2 * channels * t + c];
      sum_b[c] += partial[2 * channels * t + channels + c];
    }
  }
}

template <int kC, typename T>
void batch_stats(const T* x, int64_t rows, int64_t channel_count, float* mean, float* var) {
  const int64_t channels = kC > 0 ? kC : channel_count;
  std::vector<float> pivot(channels);
  for (int64_t c = 0; c < channels; ++c) pivot[c] = to_float(x[c]);
  const float* p = pivot.data();
  std::vector<double> sum, sum_sq;
  channel_sums<kC>(rows, channels, [&](int64_t row, float* __restrict__ a, float* __restrict__ b) {
    const T* __restrict__ in = x + row * channels;
    #pragma GCC ivdep  // distinct tensors: no aliasing between rows' inputs and outputs
    #pragma GCC unroll 1  // see channel_sums
    for (int64_t c = 0; c < channels; ++c) {
      const float d = to_float(in[c]) - p[c];
      a[c] += d;
      b[c] += d * d;
    }
  }, sum, sum_sq);
  for (int64_t c = 0; c < channels; ++c) {
    const double shifted_mean = sum[c] / rows;
    mean[c] = static_cast<float>(p[c] + shifted_mean);
    var[c] = static_cast<float>(std::max(0.0, sum_sq[c] / rows - shifted_mean * shifted_mean));
  }
}

// What follows the normalisation: ReLU, the shortcut's add and ReLU, or nothing (a projection shortcut's own
// BatchNorm). A template parameter, so that each inner loop is branch-free and vectorises.
enum class Tail { kRelu, kAddRelu, kNone };

// One pass: out = max(x * scale + shift [+ residual], 0), or x * scale + shift.
template <int kC, Tail kTail, typename T>
void normalise(const T* x, const T* residual, T* out, int64_t rows, int64_t channel_count, const float* scale,
               const float* shift) {
  const int64_t channels = kC > 0 ? kC : channel_count;
  at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
    const float* __restrict__ sc = scale;
    const float* __restrict__ sh = shift;
    for (int64_t row = begin; row < end; ++row) {
      const T* __restrict__ in = x + row * channels;
      const T* __restrict__ r = kTail == Tail::kAddRelu ? residual + row * channels : nullptr;
      T* __restrict__ o = out + row * channels;
      #pragma GCC ivdep  // distinct tensors: no aliasing between rows' inputs and outputs
      for (int64_t c = 0; c < channels; ++c) {
        float v = to_float(in[c]) * sc[c] + sh[c];
        if constexpr (kTail == Tail::kAddRelu) v += to_float(r[c]);
        store(o + c, kTail != Tail::kNone && v <= 0.f ? 0.f : v);  // NaN stays NaN, as in torch.relu
      }
    }
  });
}

// ReLU's gradient is kept where the output is positive, as PyTorch's threshold_backward does. Without a residual
// the output's sign is recomputed from the input with the forward's own scale and shift (the same float operations,
// so the same mask) instead of reading the output; with one, the saved output is read. Without ReLU all of it.
template <Tail kTail, typename T>
inline float kept_grad(const T* g, const T* y, const T* in, const float* scale, const float* shift, int64_t c) {
  if constexpr (kTail == Tail::kNone) {
    return to_float(g[c]);
  } else if constexpr (kTail == Tail::kAddRelu) {
    return to_float(y[c]) <= 0.f ? 0.f : to_float(g[c]);
  } else {
    const float v = to_float(in[c]) * scale[c] + shift[c];
    return v <= 0.f ? 0.f : to_float(g[c]);
  }
}

template <int kC, Tail kTail, typename T>
void backward_impl(const T* grad, const T* out, const T* x, int64_t rows, int64_t channel_count, const float* mean,
                   const float* invstd, const float* weight, const float* scale, const float* shift, T* grad_x,
                   T* grad_residual, float* grad_weight, float* grad_bias) {
  const int64_t channels = kC > 0 ? kC : channel_count;
  std::vector<double> sum_g, sum_g_xhat;
  // With a residual the kept gradient is the residual's gradient: written in this first pass, it is what the
  // second reads instead of the gradient and the saved output (one pass less over memory, the same values).
  channel_sums<kC>(rows, channels, [&](int64_t row, float* __restrict__ a, float* __restrict__ b) {
    const T* __restrict__ g = grad + row * channels;
    const T* __restrict__ y = kTail == Tail::kAddRelu ? out + row * channels : nullptr;
    const T* __restrict__ in = x + row * channels;
    T* __restrict__ gr = kTail == Tail::kAddRelu ? grad_residual + row * channels : nullptr;
    const float* __restrict__ m = mean;
    #pragma GCC ivdep  // distinct tensors: no aliasing between rows' inputs and outputs
    #pragma GCC unroll 1  // see channel_sums
    for (int64_t c = 0; c < channels; ++c) {
      const float kept = kept_grad<kTail>(g, y, in, scale, shift, c);
      if constexpr (kTail == Tail::kAddRelu) store(gr + c, kept);  // exact: kept is g[c] or 0
      a[c] += kept;
      b[c] += kept * (to_float(in[c]) - m[c]);
    }
  }, sum_g, sum_g_xhat);
  std::vector<float> mean_g(channels), proj(channels), gain(channels);
  for (int64_t c = 0; c < channels; ++c) {
    grad_bias[c] = static_cast<float>(sum_g[c]);
    grad_weight[c] = static_cast<float>(sum_g_xhat[c] * invstd[c]);
    mean_g[c] = static_cast<float>(sum_g[c] / rows);
    proj[c] = static_cast<float>(sum_g_xhat[c] / rows) * invstd[c] * invstd[c];
    gain[c] = weight[c] * invstd[c];
  }
  at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
    const float* __restrict__ mg = mean_g.data();
    const float* __restrict__ pj = proj.data();
    const float* __restrict__ gn = gain.data();
    const float* __restrict__ m = mean;
    for (int64_t row = begin; row < end; ++row) {
      const T* __restrict__ g = kTail == Tail::kAddRelu ? nullptr : grad + row * channels;  // read via gr there
      const T* __restrict__ in = x + row * channels;
      const T* __restrict__ gr = kTail == Tail::kAddRelu ? grad_residual + row * channels : nullptr;
      T* __restrict__ gx = grad_x + row * channels;
      #pragma GCC ivdep  // distinct tensors: no aliasing between rows' inputs and outputs
      for (int64_t c = 0; c < channels; ++c) {
        float kept;
        if constexpr (kTail == Tail::kAddRelu) {
          kept = to_float(gr[c]);
        } else {
          kept = kept_grad<kTail>(g, static_cast<const T*>(nullptr), in, scale, shift, c);
        }
        store(gx + c, (kept - mg[c] - (to_float(in[c]) - m[c]) * pj[c]) * gn[c]);
      }
    }
  });
}

// Calls `body` with the channel count as a compile-time constant where it is one the encoders have at width <= 1
// (std::integral_constant<int, 16..512>), else with 0 (counted at run time). Known, a row's loop is whole vectors
// without a remainder: forward + backward of the bf16 BatchNorm-ReLU took 18.2 instead of 22.1 ms for 64 channels
// at 28 px and 3.6 instead of 4.9 for 16 (benchmarks/bn_relu_shapes.py, batch 512, on an AMX Xeon).
template <typename Body>
void with_channel_count(int64_t channels, Body body) {
  switch (channels) {
    case 16: body(std::integral_constant<int, 16>{}); break;
    case 32: body(std::integral_constant<int, 32>{}); break;
    case 64: body(std::integral_constant<int, 64>{}); break;
    case 128: body(std::integral_constant<int, 128>{}); break;
    case 256: body(std::integral_constant<int, 256>{}); break;
    case 512: body(std::integral_constant<int, 512>{}); break;
    default: body(std::integral_constant<int, 0>{});
  }
}

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast),
              name, " must be a channels_last 4-D CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name, " must be float32 or bfloat16");
}

// The residual to add before the ReLU (nullptr: none), checked against x; a residual comes with the ReLU only.
const at::Tensor* checked_residual(const at::Tensor& x, const c10::optional<at::Tensor>& residual, bool relu) {
  const at::Tensor* res = nullptr;
  if (residual.has_value()) {
    check_input(*residual, "residual");
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->scalar_type() == x.scalar_type(),
                "residual must match the input's shape and dtype");
    res = &*residual;
  }
  TORCH_CHECK(relu || res == nullptr, "a residual is added before the ReLU: give relu=true with it");
  return res;
}

// out = x * scale + shift, then the tail: the residual added and ReLU, ReLU alone, or nothing.
template <int kC, typename T>
void normalise_with_tail(const at::Tensor& x, const at::Tensor* res, bool relu, at::Tensor& out, int64_t rows,
                         int64_t channels, const float* scale, const float* shift) {
  const T* in = x.data_ptr<T>();
  T* o = out.data_ptr<T>();
  if (res != nullptr) {
    normalise<kC, Tail::kAddRelu, T>(in, res->data_ptr<T>(), o, rows, channels, scale, shift);
  } else if (relu) {
    normalise<kC, Tail::kRelu, T>(in, nullptr, o, rows, channels, scale, shift);
  } else {
    normalise<kC, Tail::kNone, T>(in, nullptr, o, rows, channels, scale, shift);
  }
}

}  // namespace

namespace simclrv2 {

// (output, mean, biased variance, invstd, scale, shift) of relu(batch_norm(x) [+ residual]) with batch statistics,
// or of batch_norm(x) alone where `relu` is false; scale and shift (x * scale + shift is the normalised, affine x)
// are what the backward recomputes the mask with.
std::vector<at::Tensor> bn_relu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                        const c10::optional<at::Tensor>& residual, double eps, bool relu) {
  check_input(x, "input");
  const int64_t channels = x.size(1);
  const int64_t rows = x.numel() / channels;
  TORCH_CHECK(rows > 1, "BatchNorm needs more than one value per channel in training");
  auto w = weight.to(at::kFloat).contiguous();
  auto b = bias.to(at::kFloat).contiguous();
  auto mean = at::empty({channels}, x.options().dtype(at::kFloat));
  auto var = at::empty({channels}, x.options().dtype(at::kFloat));
  auto invstd = at::empty({channels}, x.options().dtype(at::kFloat));
  auto scale = at::empty({channels}, x.options().dtype(at::kFloat));
  auto shift = at::empty({channels}, x.options().dtype(at::kFloat));
  auto out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  const at::Tensor* res = checked_residual(x, residual, relu);
  auto run = [&](auto tag, auto count) {
    using scalar_t = decltype(tag);
    constexpr int kC = decltype(count)::value;
    batch_stats<kC>(x.data_ptr<scalar_t>(), rows, channels, mean.data_ptr<float>(), var.data_ptr<float>());
    for (int64_t c = 0; c < channels; ++c) {
      const float inv = 1.f / std::sqrt(var.data_ptr<float>()[c] + static_cast<float>(eps));
      invstd.data_ptr<float>()[c] = inv;
      scale.data_ptr<float>()[c] = w.data_ptr<float>()[c] * inv;
      shift.data_ptr<float>()[c] = b.data_ptr<float>()[c] - mean.data_ptr<float>()[c] * w.data_ptr<float>()[c] * inv;
    }
    normalise_with_tail<kC, scalar_t>(x, res, relu, out, rows, channels, scale.data_ptr<float>(),
                                      shift.data_ptr<float>());
  };
  with_channel_count(channels, [&](auto count) {
    if (x.scalar_type() == at::kFloat) run(float{}, count); else run(at::BFloat16{}, count);
  });
  return {out, mean, var, invstd, scale, shift};
}

// relu(batch_norm(x) [+ residual]), or batch_norm(x), with the running statistics (evaluation mode) in one pass
// over x. scale and shift are formed as PyTorch's CPU BatchNorm forms them in evaluation (invstd = 1/sqrt(var + eps),
// scale = weight * invstd, shift = bias - mean * scale), so BatchNorm alone gives its output.
at::Tensor bn_relu_eval(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& running_mean, const at::Tensor& running_var,
                        const c10::optional<at::Tensor>& residual, double eps, bool relu) {
  check_input(x, "input");
  const int64_t channels = x.size(1);
  for (const at::Tensor* t : {&weight, &bias, &running_mean, &running_var}) {
    TORCH_CHECK(t->dim() == 1 && t->numel() == channels, "BatchNorm parameters and statistics must have one value "
                "per channel");
  }
  const at::Tensor* res = checked_residual(x, residual, relu);
  auto w = weight.to(at::kFloat).contiguous();
  auto b = bias.to(at::kFloat).contiguous();
  auto mean = running_mean.to(at::kFloat).contiguous();
  auto var = running_var.to(at::kFloat).contiguous();
  std::vector<float> scale(channels), shift(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const float inv = 1.f / std::sqrt(var.data_ptr<float>()[c] + static_cast<float>(eps));
    scale[c] = w.data_ptr<float>()[c] * inv;
    shift[c] = b.data_ptr<float>()[c] - mean.data_ptr<float>()[c] * scale[c];
  }
  auto out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  const int64_t rows = x.numel() / std::max<int64_t>(channels, 1);
  if (x.numel() == 0) return out;
  with_channel_count(channels, [&](auto count) {
    constexpr int kC = decltype(count)::value;
    if (x.scalar_type() == at::kFloat) {
      normalise_with_tail<kC, float>(x, res, relu, out, rows, channels, scale.data(), shift.data());
    } else {
      normalise_with_tail<kC, at::BFloat16>(x, res, relu, out, rows, channels, scale.data(), shift.data());
    }
  });
  return out;
}

// (grad_input, grad_weight, grad_bias, grad_residual or an empty tensor). `out` (the forward's output) is needed
// with a residual only; `relu` false is BatchNorm alone.
std::vector<at::Tensor> bn_relu_backward(const at::Tensor& grad_out, const c10::optional<at::Tensor>& out,
                                         const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                                         const at::Tensor& weight, const at::Tensor& scale,
                                         const at::Tensor& shift, bool with_residual, bool relu) {
  check_input(x, "input");
  auto grad = grad_out.contiguous(at::MemoryFormat::ChannelsLast).to(x.scalar_type());
  TORCH_CHECK(!with_residual || (out.has_value() && out->is_contiguous(at::MemoryFormat::ChannelsLast) &&
                                 out->scalar_type() == x.scalar_type() && out->sizes() == x.sizes()),
              "with a residual the saved output must be given, channels_last, of the input's shape and dtype");
  TORCH_CHECK(relu || !with_residual, "a residual is added before the ReLU: give relu=true with it");
  const int64_t channels = x.size(1);
  const int64_t rows = x.numel() / channels;
  auto w = weight.to(at::kFloat).contiguous();
  auto grad_x = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto grad_residual = with_residual ? at::empty_like(x, at::MemoryFormat::ChannelsLast) : at::Tensor();
  auto grad_weight = at::empty({channels}, x.options().dtype(at::kFloat));
  auto grad_bias = at::empty({channels}, x.options().dtype(at::kFloat));
  auto run = [&](auto tag, auto count) {
    using scalar_t = decltype(tag);
    constexpr int kC = decltype(count)::value;
    const auto call = [&](auto kernel, const scalar_t* saved_out, scalar_t* grad_res) {
      kernel(grad.data_ptr<scalar_t>(), saved_out, x.data_ptr<scalar_t>(), rows, channels, mean.data_ptr<float>(),
             invstd.data_ptr<float>(), w.data_ptr<float>(), scale.data_ptr<float>(), shift.data_ptr<float>(),
             grad_x.data_ptr<scalar_t>(), grad_res, grad_weight.data_ptr<float>(), grad_bias.data_ptr<float>());
    };
    const scalar_t* no_out = nullptr;
    scalar_t* no_grad_res = nullptr;
    if (with_residual) {
      call(backward_impl<kC, Tail::kAddRelu, scalar_t>, out->data_ptr<scalar_t>(), grad_residual.data_ptr<scalar_t>());
    } else if (relu) {
      call(backward_impl<kC, Tail::kRelu, scalar_t>, no_out, no_grad_res);
    } else {
      call(backward_impl<kC, Tail::kNone, scalar_t>, no_out, no_grad_res);
    }
  };
  with_channel_count(channels, [&](auto count) {
    if (x.scalar_type() == at::kFloat) run(float{}, count); else run(at::BFloat16{}, count);
  });
  return {grad_x, grad_weight, grad_bias, grad_residual};
}

}  // namespace simclrv2
