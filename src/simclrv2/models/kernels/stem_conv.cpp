// A stride-1 convolution of a one-channel input (a grayscale image into the network's stem), forward and weight
// gradient, float32 or bfloat16, output channels_last. With one input channel each output pixel is k*k
// multiply-adds per output channel: nothing for a GEMM to block, and oneDNN ran it at 1-13 % of peak (for 1->16 at
// 28 px and batch 512 on 2-core AMX Xeons, 2.2-3.2 ms forward and 3.0-5.3 ms weight gradient, fp32 and bf16). Here
// each image is first copied into a zero-padded float buffer, so every tap of every pixel is in range and a pixel's
// outputs are one vector accumulator over the output channels: the forward is one sweep over the output at memory
// speed (0.9-1.1 ms), the weight gradient one tap at a time over each image while it is in cache (2.3-2.4 ms).
//
// Sums are float32 per output (forward) and per image (weight gradient), the weight gradient's images added in
// double, in thread order: a given thread count gives the same result every time.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

using simclrv2::store;
using simclrv2::to_float;

// Image `n` of a (N, 1, H, W) tensor into `buffer`, (H + 2p) x (W + 2p), zero borders.
template <typename T>
void pad_image(const T* x, int64_t height, int64_t width, int64_t pad, std::vector<float>& buffer) {
  const int64_t padded_width = width + 2 * pad;
  buffer.assign(static_cast<size_t>((height + 2 * pad) * padded_width), 0.f);
  for (int64_t h = 0; h < height; ++h) {
    float* dst = buffer.data() + (h + pad) * padded_width + pad;
    for (int64_t w = 0; w < width; ++w) dst[w] = to_float(x[h * width + w]);
  }
}

// kK, kC: the kernel size and output channel count where known at compile time (0: read at run time).
template <int kK, int kC, typename T>
void forward(const T* x, const float* taps, T* out, int64_t batch, int64_t height, int64_t width, int64_t k,
             int64_t pad, int64_t out_channels) {
  const int64_t K = kK > 0 ? kK : k, C = kC > 0 ? kC : out_channels;
  const int64_t out_h = height + 2 * pad - K + 1, out_w = width + 2 * pad - K + 1;
  const int64_t padded_width = width + 2 * pad;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> image, heap_acc(kC > 0 ? 0 : C);
    alignas(64) float fixed_acc[kC > 0 ? kC : 1];
    float* __restrict__ acc = kC > 0 ? fixed_acc : heap_acc.data();
    for (int64_t n = begin; n < end; ++n) {
      pad_image(x + n * height * width, height, width, pad, image);
      T* out_image = out + n * out_h * out_w * C;
      for (int64_t oh = 0; oh < out_h; ++oh) {
        for (int64_t ow = 0; ow < out_w; ++ow) {
          #pragma GCC unroll 1  // vectorised over channels (fully unrolled, gcc vectorised other loops)
          for (int64_t c = 0; c < C; ++c) acc[c] = 0.f;
          for (int64_t kh = 0; kh < K; ++kh) {
            const float* window = image.data() + (oh + kh) * padded_width + ow;
            for (int64_t kw = 0; kw < K; ++kw) {
              const float v = window[kw];
              const float* __restrict__ tap = taps + (kh * K + kw) * C;
              #pragma GCC unroll 1  // vectorised over channels (fully unrolled, gcc vectorised other loops)
              for (int64_t c = 0; c < C; ++c) acc[c] += v * tap[c];
            }
          }
          T* __restrict__ dst = out_image + (oh * out_w + ow) * C;
          #pragma GCC unroll 1  // vectorised over channels (fully unrolled, gcc vectorised other loops)
          for (int64_t c = 0; c < C; ++c) store(dst + c, acc[c]);
        }
      }
    }
  });
}

template <int kK, int kC, typename T>
void weight_grad(const T* x, const T* grad, double* result, int64_t batch, int64_t height, int64_t width, int64_t k,
                 int64_t pad, int64_t out_channels) {
  const int64_t K = kK > 0 ? kK : k, C = kC > 0 ? kC : out_channels;
  const int64_t out_h = height + 2 * pad - K + 1, out_w = width + 2 * pad - K + 1;
  const int64_t padded_width = width + 2 * pad;
  const int64_t size = K * K * C;  // (kh, kw, c)
  const int threads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(threads * size), 0.0);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    double* part = partial.data() + at::get_thread_num() * size;
    std::vector<float> image, heap_acc(kC > 0 ? 0 : C);
    alignas(64) float fixed_acc[kC > 0 ? kC : 1];
    float* __restrict__ acc = kC > 0 ? fixed_acc : heap_acc.data();
    for (int64_t n = begin; n < end; ++n) {
      pad_image(x + n * height * width, height, width, pad, image);
      const T* grad_image = grad + n * out_h * out_w * C;
      // One tap at a time over the image (in cache), its C sums in registers.
      for (int64_t kh = 0; kh < K; ++kh) {
        for (int64_t kw = 0; kw < K; ++kw) {
          #pragma GCC unroll 1  // see forward
          for (int64_t c = 0; c < C; ++c) acc[c] = 0.f;
          for (int64_t oh = 0; oh < out_h; ++oh) {
            const float* window = image.data() + (oh + kh) * padded_width + kw;
            const T* grad_row = grad_image + oh * out_w * C;
            for (int64_t ow = 0; ow < out_w; ++ow) {
              const float v = window[ow];
              const T* __restrict__ g = grad_row + ow * C;
              #pragma GCC unroll 1  // see forward
              for (int64_t c = 0; c < C; ++c) acc[c] += v * to_float(g[c]);
            }
          }
          double* __restrict__ tap = part + (kh * K + kw) * C;
          for (int64_t c = 0; c < C; ++c) tap[c] += acc[c];
        }
      }
    }
  });
  std::fill(result, result + size, 0.0);
  for (int t = 0; t < threads; ++t) {
    for (int64_t i = 0; i < size; ++i) result[i] += partial[t * size + i];
  }
}

// `body(kernel size, channel count)` with each as a compile-time constant where it is a common one (3; 16, 32, 64).
template <typename Body>
void with_sizes(int64_t k, int64_t channels, Body body) {
  auto with_k = [&](auto count) {
    if (k == 3) body(std::integral_constant<int, 3>{}, count); else body(std::integral_constant<int, 0>{}, count);
  };
  switch (channels) {
    case 16: with_k(std::integral_constant<int, 16>{}); break;
    case 32: with_k(std::integral_constant<int, 32>{}); break;
    case 64: with_k(std::integral_constant<int, 64>{}); break;
    default: with_k(std::integral_constant<int, 0>{});
  }
}

void check_image(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.size(1) == 1,
              "stem convolution: x must be a (N, 1, H, W) CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "stem convolution: x must be float32 or bfloat16");
}

}  // namespace

namespace simclrv2 {

// conv2d(x, weight, stride 1, padding) for a one-channel x (N, 1, H, W) and weight (C, 1, k, k): channels_last
// output in x's dtype.
at::Tensor stem_conv_forward(const at::Tensor& x, const at::Tensor& weight, int64_t padding) {
  check_image(x);
  TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == weight.size(3),
              "stem convolution: weight must be a (C, 1, k, k) CPU tensor");
  const int64_t k = weight.size(2), channels = weight.size(0);
  TORCH_CHECK(padding >= 0 && padding < k, "stem convolution: padding must be in [0, k)");
  const int64_t batch = x.size(0), height = x.size(2), width = x.size(3);
  TORCH_CHECK(height + 2 * padding >= k && width + 2 * padding >= k, "stem convolution: image smaller than kernel");
  auto input = x.contiguous();
  auto taps = weight.to(at::kFloat).permute({2, 3, 1, 0}).contiguous();  // (kh, kw, 1, C)
  auto out = at::empty({batch, channels, height + 2 * padding - k + 1, width + 2 * padding - k + 1},
                       x.options().memory_format(at::MemoryFormat::ChannelsLast));
  with_sizes(k, channels, [&](auto kk, auto kc) {
    constexpr int K = decltype(kk)::value, C = decltype(kc)::value;
    if (x.scalar_type() == at::kFloat) {
      forward<K, C>(input.data_ptr<float>(), taps.data_ptr<float>(), out.data_ptr<float>(), batch, height, width, k,
                    padding, channels);
    } else {
      forward<K, C>(input.data_ptr<at::BFloat16>(), taps.data_ptr<float>(), out.data_ptr<at::BFloat16>(), batch,
                    height, width, k, padding, channels);
    }
  });
  return out;
}

// The weight gradient (C, 1, k, k), float32, of stem_conv_forward given its output gradient (any layout).
at::Tensor stem_conv_weight_grad(const at::Tensor& x, const at::Tensor& grad_out, int64_t k,
                                    int64_t padding) {
  check_image(x);
  TORCH_CHECK(padding >= 0 && padding < k, "stem convolution: padding must be in [0, k)");
  const int64_t batch = x.size(0), height = x.size(2), width = x.size(3);
  TORCH_CHECK(grad_out.device().is_cpu() && grad_out.dim() == 4 && grad_out.size(0) == batch &&
                  grad_out.size(2) == height + 2 * padding - k + 1 && grad_out.size(3) == width + 2 * padding - k + 1,
              "stem convolution: the output gradient's shape does not match the input's");
  const int64_t channels = grad_out.size(1);
  auto input = x.contiguous();
  auto grad = grad_out.to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
  auto sums = at::empty({k, k, channels}, x.options().dtype(at::kDouble));
  with_sizes(k, channels, [&](auto kk, auto kc) {
    constexpr int K = decltype(kk)::value, C = decltype(kc)::value;
    if (x.scalar_type() == at::kFloat) {
      weight_grad<K, C>(input.data_ptr<float>(), grad.data_ptr<float>(), sums.data_ptr<double>(), batch, height,
                        width, k, padding, channels);
    } else {
      weight_grad<K, C>(input.data_ptr<at::BFloat16>(), grad.data_ptr<at::BFloat16>(), sums.data_ptr<double>(),
                        batch, height, width, k, padding, channels);
    }
  });
  return sums.to(at::kFloat).permute({2, 0, 1}).unsqueeze(1).contiguous();  // (C, 1, k, k)
}

}  // namespace simclrv2
