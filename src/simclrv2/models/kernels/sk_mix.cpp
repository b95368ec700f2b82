// Selective Kernels' mix of two streams (simclrv2.models.selective_kernel): out = a * w_a + b * w_b, where a and b
// are the two C-channel halves of (N, 2C, H, W) channels_last streams and w = (w_a, w_b) is each image's (2C) softmax
// gate. As PyTorch ops the forward is two passes over memory (a multiply, then an in-place multiply-add that reads the
// output again) and the backward four (each half's gradient, a broadcast product the size of the streams for the
// gate's gradient, its sum); on a 2-core AMD EPYC they were ~18 % of a width-0.25 bf16 pretraining step with Selective
// Kernels. Here the forward reads the streams once and writes the output once; the backward reads the output's
// gradient and the streams once, writes the streams' gradient once and sums the gate's gradient on the way.
//
// A channels_last (N, 2C, H, W) tensor is N*H*W rows of 2C values, a before b: loops run over rows and, innermost,
// over channels, which the compiler vectorises. Arithmetic is float32 on float32 or bfloat16 storage, rounded once per
// output (PyTorch rounds the bf16 product before the add); the gate stays float32. The gate's gradient sums each
// image's pixels in float within blocks of rows and in double across them.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

using simclrv2::store;
using simclrv2::to_float;

constexpr int64_t kMixGrain = 1 << 10;   // rows per parallel task at least (forward)
constexpr int64_t kMixRowBlock = 32;     // rows whose gate-gradient terms are summed in float

template <typename T>
void mix_forward(const T* streams, const float* gate, T* out, int64_t pixels, int64_t channels, int64_t rows) {
  at::parallel_for(0, rows, kMixGrain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* __restrict__ a = streams + row * 2 * channels;
      const T* __restrict__ b = a + channels;
      const float* __restrict__ w_a = gate + (row / pixels) * 2 * channels;
      const float* __restrict__ w_b = w_a + channels;
      T* __restrict__ o = out + row * channels;
      #pragma GCC ivdep  // a fresh output: no aliasing with the inputs
      for (int64_t c = 0; c < channels; ++c) store(o + c, to_float(a[c]) * w_a[c] + to_float(b[c]) * w_b[c]);
    }
  });
}

// Per image n, the sums over its pixel rows of the terms `body(row, sum)` adds to width float accumulators, divided by
// `divisor`, into out[n * width + c]: float within blocks of kMixRowBlock rows, double across them. Images are shared
// out between threads, so that each image is summed by one thread in a fixed order: the same result on every run with
// a given thread count.
template <typename Body>
void per_image_sums(int64_t images, int64_t pixels, int64_t width, double divisor, float* out, Body body) {
  at::parallel_for(0, images, 1, [&](int64_t first, int64_t last) {
    std::vector<float> block(width);
    std::vector<double> total(width);
    for (int64_t n = first; n < last; ++n) {
      std::fill(total.begin(), total.end(), 0.0);
      for (int64_t start = 0; start < pixels; start += kMixRowBlock) {
        std::fill(block.begin(), block.end(), 0.0f);
        const int64_t stop = n * pixels + std::min(pixels, start + kMixRowBlock);
        for (int64_t row = n * pixels + start; row < stop; ++row) body(row, block.data());
        for (int64_t c = 0; c < width; ++c) total[c] += block[c];
      }
      for (int64_t c = 0; c < width; ++c) out[n * width + c] = static_cast<float>(total[c] / divisor);
    }
  });
}

// The streams' gradient, row by row, and the gate's: each image's sums of the output gradient times each stream.
template <typename T>
void mix_backward(const T* grad, const T* streams, const float* gate, T* grad_streams, float* grad_gate,
                  int64_t images, int64_t pixels, int64_t channels) {
  const int64_t width = 2 * channels;
  per_image_sums(images, pixels, width, 1.0, grad_gate, [&](int64_t row, float* sums) {
    const T* __restrict__ g = grad + row * channels;
    const T* __restrict__ a = streams + row * width;
    const T* __restrict__ b = a + channels;
    const float* __restrict__ w_a = gate + (row / pixels) * width;
    const float* __restrict__ w_b = w_a + channels;
    T* __restrict__ g_a = grad_streams + row * width;
    T* __restrict__ g_b = g_a + channels;
    float* __restrict__ sum_a = sums;
    float* __restrict__ sum_b = sums + channels;
    #pragma GCC ivdep  // distinct tensors and the thread's own sums
    for (int64_t c = 0; c < channels; ++c) {
      const float gv = to_float(g[c]);
      store(g_a + c, gv * w_a[c]);
      store(g_b + c, gv * w_b[c]);
      sum_a[c] += gv * to_float(a[c]);
      sum_b[c] += gv * to_float(b[c]);
    }
  });
}

// Each image's mean over its pixels, per channel, into out (N, width) float32.
template <typename T>
void mean_over_pixels(const T* x, float* out, int64_t images, int64_t pixels, int64_t width) {
  per_image_sums(images, pixels, width, static_cast<double>(pixels), out, [&](int64_t row, float* sums) {
    const T* __restrict__ in = x + row * width;
    float* __restrict__ sum = sums;
    #pragma GCC ivdep  // the thread's own sums
    for (int64_t c = 0; c < width; ++c) sum[c] += to_float(in[c]);
  });
}

void check_streams(const at::Tensor& t, const char* what, const char* kernel = "sk_mix") {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4 && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16)
                  && t.is_contiguous(at::MemoryFormat::ChannelsLast),
              kernel, ": ", what, " must be a float32 or bfloat16 channels_last CPU tensor");
}

void check_gate(const at::Tensor& gate, const at::Tensor& streams) {
  TORCH_CHECK(gate.device().is_cpu() && gate.scalar_type() == at::kFloat && gate.is_contiguous() && gate.dim() == 2 &&
                  gate.size(0) == streams.size(0) && gate.size(1) == streams.size(1),
              "sk_mix: the gate must be a contiguous float32 (N, 2C) tensor for (N, 2C, H, W) streams");
}

}  // namespace

namespace simclrv2 {

// The mean over H and W of a channels_last (N, C, H, W) tensor: (N, C) float32. PyTorch's mean of a bfloat16 tensor
// first copies the whole tensor to float32 (15 ms of a 28 ms SK layer's forward and backward in a profile).
at::Tensor spatial_mean(const at::Tensor& x) {
  check_streams(x, "the input", "spatial_mean");
  auto out = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kFloat));
  const int64_t pixels = x.size(2) * x.size(3);
  if (out.numel() == 0) return out;
  TORCH_CHECK(pixels > 0, "spatial_mean: the input has no pixels");
  if (x.scalar_type() == at::kFloat) {
    mean_over_pixels(x.data_ptr<float>(), out.data_ptr<float>(), x.size(0), pixels, x.size(1));
  } else {
    mean_over_pixels(x.data_ptr<at::BFloat16>(), out.data_ptr<float>(), x.size(0), pixels, x.size(1));
  }
  return out;
}

// out (N, C, H, W) = a * gate[:, :C] + b * gate[:, C:] for the halves a, b of streams (N, 2C, H, W), per image and
// channel; channels_last, in the streams' dtype.
at::Tensor sk_mix_forward(const at::Tensor& streams, const at::Tensor& gate) {
  check_streams(streams, "the streams");
  TORCH_CHECK(streams.size(1) % 2 == 0, "sk_mix: the streams must have an even number of channels");
  check_gate(gate, streams);
  const int64_t channels = streams.size(1) / 2, pixels = streams.size(2) * streams.size(3);
  auto out = at::empty({streams.size(0), channels, streams.size(2), streams.size(3)},
                       streams.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const float* g = gate.data_ptr<float>();
  if (streams.scalar_type() == at::kFloat) {
    mix_forward(streams.data_ptr<float>(), g, out.data_ptr<float>(), pixels, channels, streams.size(0) * pixels);
  } else {
    mix_forward(streams.data_ptr<at::BFloat16>(), g, out.data_ptr<at::BFloat16>(), pixels, channels,
                streams.size(0) * pixels);
  }
  return out;
}

// (the streams' gradient (N, 2C, H, W) channels_last in their dtype, the gate's gradient (N, 2C) float32) of
// sk_mix_forward, given the output's gradient.
std::vector<at::Tensor> sk_mix_backward(const at::Tensor& grad, const at::Tensor& streams, const at::Tensor& gate) {
  check_streams(grad, "the output gradient");
  check_streams(streams, "the streams");
  check_gate(gate, streams);
  TORCH_CHECK(grad.scalar_type() == streams.scalar_type() && grad.size(0) == streams.size(0) &&
                  2 * grad.size(1) == streams.size(1) && grad.size(2) == streams.size(2) &&
                  grad.size(3) == streams.size(3),
              "sk_mix: the output gradient must be (N, C, H, W) of (N, 2C, H, W) streams, in their dtype");
  const int64_t images = streams.size(0), channels = grad.size(1), pixels = streams.size(2) * streams.size(3);
  auto grad_streams = at::empty_like(streams);  // dense: keeps the channels_last strides
  auto grad_gate = at::zeros({images, 2 * channels}, gate.options());
  if (grad_streams.numel() == 0) return {grad_streams, grad_gate};
  const float* g = gate.data_ptr<float>();
  if (streams.scalar_type() == at::kFloat) {
    mix_backward(grad.data_ptr<float>(), streams.data_ptr<float>(), g, grad_streams.data_ptr<float>(),
                 grad_gate.data_ptr<float>(), images, pixels, channels);
  } else {
    mix_backward(grad.data_ptr<at::BFloat16>(), streams.data_ptr<at::BFloat16>(), g,
                 grad_streams.data_ptr<at::BFloat16>(), grad_gate.data_ptr<float>(), images, pixels, channels);
  }
  return {grad_streams, grad_gate};
}

}  // namespace simclrv2
