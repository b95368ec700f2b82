// Memory re-layouts for the convolutions that run as GEMMs (simclrv2.models.conv): the im2col patches of a
// channels_last input, and the transpose of a gradient's rows. Both only move memory, so they are written to move
// it once, in long runs, on every core (through at::parallel_for, as bn_relu.cpp: it follows torch.set_num_threads
// and runs serially when called from inside another parallel region).
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

// memcpy, but a short run (one-channel images: a pixel is 2-4 bytes) is copied inline, not through a call.
inline void copy_run(char* d, const char* s, int64_t bytes) {
  if (bytes <= 32) {
    for (int64_t b = 0; b < bytes; ++b) d[b] = s[b];
  } else {
    std::memcpy(d, s, bytes);
  }
}

template <typename T>
void transpose_tiles(const T* a, T* out, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile;
  at::parallel_for(0, row_tiles, 1, [&](int64_t first, int64_t last) {
    for (int64_t tile = first; tile < last; ++tile) {
      const int64_t r0 = tile * kTile, r1 = std::min(r0 + kTile, rows);
      for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
        const int64_t c1 = std::min(c0 + kTile, cols);
        for (int64_t cc = c0; cc < c1; ++cc) {
          T* o = out + cc * rows;
          for (int64_t r = r0; r < r1; ++r) o[r] = a[r * cols + cc];
        }
      }
    }
  });
}

}  // namespace

namespace simclrv2 {

// (N, C, H, W) channels_last -> (N*Ho*Wo, k*k*C): one row per output pixel, kernel offsets outer, channels inner,
// zeros where a tap falls in the padding. A tap row's k inputs are neighbours in memory (channels_last), so an
// interior window row is one copy of k*C elements.
at::Tensor patches(const at::Tensor& x, int64_t k, int64_t stride, int64_t pad) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "patches: expected a 4-D channels_last tensor");
  TORCH_CHECK(k > 0 && stride > 0 && pad >= 0 && pad < k, "patches: bad kernel size, stride or padding");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
  auto out = at::empty({n * ho * wo, k * k * c}, x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t es = x.element_size(), pixel = c * es, row = k * k * pixel;
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t image_rows = n * ho;  // one output row of one image per task
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, wo * row));
  at::parallel_for(0, image_rows, grain, [&](int64_t first, int64_t last) {
    for (int64_t index = first; index < last; ++index) {
      const int64_t b = index / ho, oh = index % ho;
      const char* image = src + b * h * w * pixel;
      char* d = dst + index * wo * row;
      for (int64_t ow = 0; ow < wo; ++ow) {
        const int64_t w0 = ow * stride - pad;
        const bool inside = w0 >= 0 && w0 + k <= w;
        for (int64_t i = 0; i < k; ++i, d += k * pixel) {
          const int64_t ih = oh * stride - pad + i;
          if (ih < 0 || ih >= h) {
            std::memset(d, 0, k * pixel);
          } else if (inside) {
            copy_run(d, image + (ih * w + w0) * pixel, k * pixel);
          } else {
            for (int64_t j = 0; j < k; ++j) {
              const int64_t iw = w0 + j;
              if (iw < 0 || iw >= w) std::memset(d + j * pixel, 0, pixel);
              else copy_run(d + j * pixel, image + (ih * w + iw) * pixel, pixel);
            }
          }
        }
      }
    }
  });
  return out;
}

// A contiguous (R, C) matrix as a contiguous (C, R) one, tile by tile so that reads and writes both stay in cache.
at::Tensor transpose(const at::Tensor& a) {
  TORCH_CHECK(a.dim() == 2 && a.is_contiguous(), "transpose: expected a contiguous 2-D tensor");
  const int64_t rows = a.size(0), cols = a.size(1);
  auto out = at::empty({cols, rows}, a.options());
  if (a.element_size() == 2) {
    transpose_tiles(static_cast<const uint16_t*>(a.data_ptr()), static_cast<uint16_t*>(out.data_ptr()), rows, cols);
  } else if (a.element_size() == 4) {
    transpose_tiles(static_cast<const uint32_t*>(a.data_ptr()), static_cast<uint32_t*>(out.data_ptr()), rows, cols);
  } else {
    out.copy_(a.t());
  }
  return out;
}

}  // namespace simclrv2
