// A float32 3x3 convolution (stride 1, padding 1) with 16 input and 16 output channels, channels_last, on AVX-512
// or AVX2: the first stage of a width-0.25 ResNet. oneDNN runs it at ~60 % of the machine's fp32 peak there (its
// kernels are blocked for wider layers), forward and input gradient alike. Computed directly, a pixel's 16 outputs
// are one 512-bit register (two 256-bit ones on AVX2), so a row block of pixels keeps its accumulators in registers
// (14 pixels on AVX-512's 32 registers, 6 on AVX2's 16) while each weight vector is loaded once for the block and
// each input value is broadcast once into its multiply-adds. The input gradient is the same convolution of the
// output gradient with the kernel flipped and its channels swapped.
//
// Every output is one float32 sum over (kernel row, kernel column, input channel) in that order, as oneDNN's.
// Without AVX2 and FMA the kernel is not compiled and simclrv2.models.conv leaves these passes to oneDNN.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define SIMCLRV2_DIRECT_CONV 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kChannels = 16;
constexpr int64_t kRowGrain = 8;    // output rows per parallel task at least

#if defined(SIMCLRV2_DIRECT_CONV)
// The host's vector registers: how many hold a pixel's 16 channels, and the pixel block that fits the register file
// with them (accumulators, the weight vectors of one input channel and a broadcast input).
#if defined(__AVX512F__)
struct Vec {
  using type = __m512;
  static constexpr int kPerPixel = 1, kBlock = 14;
  static type zero() { return _mm512_setzero_ps(); }
  static type load(const float* p) { return _mm512_loadu_ps(p); }
  static type broadcast(float v) { return _mm512_set1_ps(v); }
  static type fma(type a, type b, type c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, type v) { _mm512_storeu_ps(p, v); }
};
#else
struct Vec {
  using type = __m256;
  static constexpr int kPerPixel = 2, kBlock = 6;
  static type zero() { return _mm256_setzero_ps(); }
  static type load(const float* p) { return _mm256_loadu_ps(p); }
  static type broadcast(float v) { return _mm256_set1_ps(v); }
  static type fma(type a, type b, type c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, type v) { _mm256_storeu_ps(p, v); }
};
#endif
constexpr int kLanes = kChannels / Vec::kPerPixel;

// One block of P output pixels starting at column `col` of output row `oh`: out[p] = sum over the three kernel rows
// that fall inside the image, the three columns and the 16 input channels. kLeft/kRight: the block touches the
// image's left/right border, so the tap reaching past it (column -1 or W) is skipped, as zero padding would add 0.
template <int P, bool kLeft, bool kRight>
inline void output_block(const float* __restrict__ image, const float* __restrict__ packed,
                         float* __restrict__ out_image, int64_t height, int64_t width, int64_t oh, int64_t col) {
  constexpr int V = Vec::kPerPixel;
  typename Vec::type acc[P][V];
  #pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    #pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[p][v] = Vec::zero();
  }
  for (int kh = 0; kh < 3; ++kh) {
    const int64_t ih = oh + kh - 1;
    if (ih < 0 || ih >= height) continue;
    const float* row = image + (ih * width + col) * kChannels;
    #pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      const float* taps = packed + (kh * 3 + kw) * kChannels * kChannels;
      #pragma GCC unroll 1
      for (int ci = 0; ci < kChannels; ++ci) {
        typename Vec::type weights[V];
        #pragma GCC unroll 2
        for (int v = 0; v < V; ++v) weights[v] = Vec::load(taps + ci * kChannels + v * kLanes);
        #pragma GCC unroll 16
        for (int p = 0; p < P; ++p) {
          if ((kLeft && kw == 0 && p == 0) || (kRight && kw == 2 && p == P - 1)) continue;
          const typename Vec::type in = Vec::broadcast(row[(p + kw - 1) * kChannels + ci]);
          #pragma GCC unroll 2
          for (int v = 0; v < V; ++v) acc[p][v] = Vec::fma(in, weights[v], acc[p][v]);
        }
      }
    }
  }
  #pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    #pragma GCC unroll 2
    for (int v = 0; v < V; ++v) Vec::store(out_image + (oh * width + col + p) * kChannels + v * kLanes, acc[p][v]);
  }
}

// The block of `count` (1..kBlock) pixels at `col` with the border flags, as a compile-time block size.
template <bool kLeft, bool kRight, int P = Vec::kBlock>
inline void output_block_of(int count, const float* image, const float* packed, float* out_image, int64_t height,
                            int64_t width, int64_t oh, int64_t col) {
  if constexpr (P > 1) {
    if (count < P) {
      output_block_of<kLeft, kRight, P - 1>(count, image, packed, out_image, height, width, oh, col);
      return;
    }
  }
  output_block<P, kLeft, kRight>(image, packed, out_image, height, width, oh, col);
}

// One output row: blocks of kBlock pixels, the first and last marked as touching the borders.
inline void output_row(const float* image, const float* packed, float* out_image, int64_t height, int64_t width,
                       int64_t oh) {
  constexpr int kBlock = Vec::kBlock;
  if (width <= kBlock) {
    output_block_of<true, true>(static_cast<int>(width), image, packed, out_image, height, width, oh, 0);
    return;
  }
  output_block<kBlock, true, false>(image, packed, out_image, height, width, oh, 0);
  int64_t col = kBlock;
  for (; col + kBlock < width; col += kBlock) {
    output_block<kBlock, false, false>(image, packed, out_image, height, width, oh, col);
  }
  output_block_of<false, true>(static_cast<int>(width - col), image, packed, out_image, height, width, oh, col);
}
#endif

}  // namespace

namespace simclrv2 {

bool has_direct_conv() {
#if defined(SIMCLRV2_DIRECT_CONV)
  return true;
#else
  return false;
#endif
}

// conv2d(x, weight, stride 1, padding 1) for a float32 channels_last x of 16 channels and a (16, 16, 3, 3) weight;
// with `input_grad`, x is the output gradient and the result the input gradient of that convolution.
at::Tensor direct_conv3x3(const at::Tensor& x, const at::Tensor& weight, bool input_grad) {
  TORCH_CHECK(has_direct_conv(), "direct_conv3x3: built without AVX2 or AVX-512");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.scalar_type() == at::kFloat && x.size(1) == kChannels &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "direct_conv3x3: x must be a float32 channels_last CPU tensor of 16 channels");
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat &&
                  weight.sizes() == at::IntArrayRef({16, 16, 3, 3}),
              "direct_conv3x3: weight must be a float32 CPU tensor of shape (16, 16, 3, 3)");
  // packed[kh][kw][in][out]: the weight vector of one input channel at one tap, over the 16 outputs. For the input
  // gradient, the convolution's output channels are its inputs and the kernel is flipped.
  auto packed = input_grad ? weight.flip({2, 3}).permute({2, 3, 0, 1}).contiguous()
                           : weight.permute({2, 3, 1, 0}).contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
#if defined(SIMCLRV2_DIRECT_CONV)
  const int64_t batch = x.size(0), height = x.size(2), width = x.size(3);
  const float* in = x.data_ptr<float>();
  const float* taps = packed.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t image_size = height * width * kChannels;
  at::parallel_for(0, batch * height, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / height;
      output_row(in + n * image_size, taps, o + n * image_size, height, width, r % height);
    }
  });
#endif
  return out;
}

}  // namespace simclrv2
