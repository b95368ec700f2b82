// A float32 3x3 convolution (stride 1, padding 1), channels_last, by Winograd's F(2x2, 3x3) on AVX2, and its weight
// gradient. Where oneDNN runs its AVX2 kernels it has no Winograd path, and its direct kernels already run these
// layers near the machine's fp32 GEMM peak: only fewer multiplications can make them faster. F(2x2, 3x3) computes
// each 2x2 block of outputs from its 4x4 input window with 16 products per (input, output) channel pair instead of
// 36, so 2.25x fewer:
//
//   Y = A^T [ U (.) V ] A,  U = G g G^T (the 3x3 kernel g),  V = B^T d B (the window d),
//
// where (.) is, over channels, one GEMM for each of the 16 positions xi of the 4x4 transformed tile:
// M[xi] (tiles x K) = V[xi] (tiles x C) @ U[xi] (C x K). The transforms' entries are 0, +-1 and +-1/2, so the
// float32 results keep oneDNN's accuracy (tests/test_winograd_conv.py checks against float64). The weight
// gradient is the adjoint: dU[xi] = V[xi]^T @ (A dY A^T)[xi] summed over tiles, then dW = G^T dU G (in Python).
//
// Tiles are processed in blocks that keep V and M in the core's L2; each thread sums its own dU. Without AVX2 and
// FMA the kernel is not compiled and simclrv2.models.conv leaves these passes to oneDNN.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#if defined(__AVX2__) && defined(__FMA__)
#define SIMCLRV2_WINOGRAD_CONV 1
#include <immintrin.h>
#endif

namespace {

#if defined(SIMCLRV2_WINOGRAD_CONV)
constexpr int kRows = 6;              // GEMM rows per register block: 6 x 16 outputs in 12 of AVX2's 16 registers
constexpr int64_t kBlockBytes = 1 << 18;  // V and M of one block of tiles: 256 KiB, inside one core's L2
constexpr int64_t kMaxBlock = 240;

// The tiles of an (N, C, H, W) image batch: 2x2 output blocks, ceil(H/2) x ceil(W/2) per image.
struct Geometry {
  int64_t height, width, tiles_w, tiles_per_image, tiles;
  explicit Geometry(const at::Tensor& x)
      : height(x.size(2)), width(x.size(3)), tiles_w((x.size(3) + 1) / 2),
        tiles_per_image(((x.size(2) + 1) / 2) * ((x.size(3) + 1) / 2)), tiles(x.size(0) * tiles_per_image) {}
};

// A tile's image and top-left output pixel, stepped through the tiles in order without a division per tile.
struct Tile {
  int64_t n, row, col;
  Tile(const Geometry& g, int64_t t)
      : n(t / g.tiles_per_image), row(2 * ((t % g.tiles_per_image) / g.tiles_w)),
        col(2 * ((t % g.tiles_per_image) % g.tiles_w)) {}
  void next(const Geometry& g) {
    col += 2;
    if (col < g.width) return;
    col = 0;
    row += 2;
    if (row < g.height) return;
    row = 0;
    ++n;
  }
};

// Tiles per block: the most whose V and M fit kBlockBytes, but at least C*K/1024 so that the 16 matrices U[xi] read
// from the outer caches for each block are used for enough products (256 channels' forward at 7 px, one process:
// 148-177 ms in blocks of 6 tiles, 120-147 in blocks of 128-240).
int64_t block_tiles(int64_t in_ch, int64_t out_ch) {
  const int64_t fit = kBlockBytes / (16 * static_cast<int64_t>(sizeof(float)) * (in_ch + out_ch));
  const int64_t tiles = std::min(kMaxBlock, std::max<int64_t>({kRows, fit, in_ch * out_ch / 1024}));
  return tiles / kRows * kRows;
}

// V[xi][b][c] (xi = 4 i + j) = (B^T d B)[i][j] of the tile's 4x4 input window d (zero outside the image), for every
// channel c. B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]. kInterior: the window lies inside.
template <bool kInterior>
inline void input_transform_of(const float* x, const Geometry& g, int64_t channels, const Tile& tile, float* v_block,
                               int64_t block, int64_t b) {
  const int64_t row0 = tile.row - 1, col0 = tile.col - 1;
  const float* src[4][4];
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      const int64_t r = row0 + i, c = col0 + j;
      const bool inside = kInterior || (r >= 0 && r < g.height && c >= 0 && c < g.width);
      src[i][j] = inside ? x + ((tile.n * g.height + r) * g.width + c) * channels : nullptr;
    }
  }
  const int64_t plane = block * channels;  // from one xi to the next
  float* out = v_block + b * channels;
  const __m256 zero = _mm256_setzero_ps();
  auto at = [&](int i, int j, int64_t c) { return (kInterior || src[i][j]) ? _mm256_loadu_ps(src[i][j] + c) : zero; };
  for (int64_t c = 0; c < channels; c += 8) {
    #pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {  // row i of B^T d, then B's combinations of its columns
      __m256 t[4];
      #pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        if (i == 0) t[j] = _mm256_sub_ps(at(0, j, c), at(2, j, c));
        else if (i == 1) t[j] = _mm256_add_ps(at(1, j, c), at(2, j, c));
        else if (i == 2) t[j] = _mm256_sub_ps(at(2, j, c), at(1, j, c));
        else t[j] = _mm256_sub_ps(at(1, j, c), at(3, j, c));
      }
      _mm256_storeu_ps(out + (4 * i + 0) * plane + c, _mm256_sub_ps(t[0], t[2]));
      _mm256_storeu_ps(out + (4 * i + 1) * plane + c, _mm256_add_ps(t[1], t[2]));
      _mm256_storeu_ps(out + (4 * i + 2) * plane + c, _mm256_sub_ps(t[2], t[1]));
      _mm256_storeu_ps(out + (4 * i + 3) * plane + c, _mm256_sub_ps(t[1], t[3]));
    }
  }
}

inline void input_transform(const float* x, const Geometry& g, int64_t channels, const Tile& tile, float* v_block,
                            int64_t block, int64_t b) {
  if (tile.row >= 1 && tile.row + 3 <= g.height && tile.col >= 1 && tile.col + 3 <= g.width) {
    input_transform_of<true>(x, g, channels, tile, v_block, block, b);
  } else {
    input_transform_of<false>(x, g, channels, tile, v_block, block, b);
  }
}

// The tile's 2x2 outputs A^T M A from M[xi][b][k], A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]; those past the image's
// bottom or right edge (odd sizes) are dropped.
inline void output_transform(const float* m_block, int64_t block, int64_t b, const Geometry& g, int64_t channels,
                             const Tile& tile, float* y) {
  const bool row1 = tile.row + 1 < g.height, col1 = tile.col + 1 < g.width;
  const int64_t plane = block * channels, down = g.width * channels;
  const float* in = m_block + b * channels;
  float* dst = y + ((tile.n * g.height + tile.row) * g.width + tile.col) * channels;
  for (int64_t k = 0; k < channels; k += 8) {
    __m256 s[2][4];
    for (int j = 0; j < 4; ++j) {
      const __m256 m0 = _mm256_loadu_ps(in + j * plane + k), m1 = _mm256_loadu_ps(in + (4 + j) * plane + k);
      const __m256 m2 = _mm256_loadu_ps(in + (8 + j) * plane + k), m3 = _mm256_loadu_ps(in + (12 + j) * plane + k);
      s[0][j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
      s[1][j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
    }
    for (int i = 0; i < (row1 ? 2 : 1); ++i) {
      float* row = dst + i * down + k;
      _mm256_storeu_ps(row, _mm256_add_ps(_mm256_add_ps(s[i][0], s[i][1]), s[i][2]));
      if (col1) _mm256_storeu_ps(row + channels, _mm256_sub_ps(_mm256_sub_ps(s[i][1], s[i][2]), s[i][3]));
    }
  }
}

// (A dY A^T)[xi] of the tile's 2x2 output gradient (zero past the image's edge) into M[xi][b][k],
// A = [[1, 0], [1, 1], [1, -1], [0, -1]].
inline void grad_transform(const float* dy, const Geometry& g, int64_t channels, const Tile& tile, float* m_block,
                           int64_t block, int64_t b) {
  const bool row1 = tile.row + 1 < g.height, col1 = tile.col + 1 < g.width;
  const float* src = dy + ((tile.n * g.height + tile.row) * g.width + tile.col) * channels;
  const int64_t down = g.width * channels, plane = block * channels;
  float* out = m_block + b * channels;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t k = 0; k < channels; k += 8) {
    const __m256 y00 = _mm256_loadu_ps(src + k);
    const __m256 y01 = col1 ? _mm256_loadu_ps(src + channels + k) : zero;
    const __m256 y10 = row1 ? _mm256_loadu_ps(src + down + k) : zero;
    const __m256 y11 = row1 && col1 ? _mm256_loadu_ps(src + down + channels + k) : zero;
    const __m256 r[4][2] = {{y00, y01},
                            {_mm256_add_ps(y00, y10), _mm256_add_ps(y01, y11)},
                            {_mm256_sub_ps(y00, y10), _mm256_sub_ps(y01, y11)},
                            {_mm256_sub_ps(zero, y10), _mm256_sub_ps(zero, y11)}};
    for (int i = 0; i < 4; ++i) {
      _mm256_storeu_ps(out + (4 * i + 0) * plane + k, r[i][0]);
      _mm256_storeu_ps(out + (4 * i + 1) * plane + k, _mm256_add_ps(r[i][0], r[i][1]));
      _mm256_storeu_ps(out + (4 * i + 2) * plane + k, _mm256_sub_ps(r[i][0], r[i][1]));
      _mm256_storeu_ps(out + (4 * i + 3) * plane + k, _mm256_sub_ps(zero, r[i][1]));
    }
  }
}

// M[P rows][K] = V[P rows][C] @ U[C][K] for one xi, U packed as [K / 16][C][16] so that each 16-output strip is
// read as one contiguous run.
template <int P>
inline void product_rows(const float* __restrict__ v, const float* __restrict__ u, float* __restrict__ m,
                         int64_t in_ch, int64_t out_ch) {
  for (int64_t k0 = 0; k0 < out_ch; k0 += 16) {
    __m256 acc[P][2];
    for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = _mm256_setzero_ps();
    const float* strip = u + k0 * in_ch;
    for (int64_t c = 0; c < in_ch; ++c) {
      const __m256 w0 = _mm256_loadu_ps(strip + c * 16), w1 = _mm256_loadu_ps(strip + c * 16 + 8);
      for (int p = 0; p < P; ++p) {
        const __m256 a = _mm256_broadcast_ss(v + p * in_ch + c);
        acc[p][0] = _mm256_fmadd_ps(a, w0, acc[p][0]);
        acc[p][1] = _mm256_fmadd_ps(a, w1, acc[p][1]);
      }
    }
    for (int p = 0; p < P; ++p) {
      _mm256_storeu_ps(m + p * out_ch + k0, acc[p][0]);
      _mm256_storeu_ps(m + p * out_ch + k0 + 8, acc[p][1]);
    }
  }
}

// dU[P rows of C][K] += V^T dM over `tiles` tiles of one xi: V[b][C] from column c0 on, dM[b][K].
template <int P>
inline void weight_rows(const float* __restrict__ v, const float* __restrict__ dm, float* __restrict__ du,
                        int64_t tiles, int64_t in_ch, int64_t out_ch) {
  for (int64_t k0 = 0; k0 < out_ch; k0 += 16) {
    __m256 acc[P][2];
    for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < tiles; ++b) {
      const __m256 g0 = _mm256_loadu_ps(dm + b * out_ch + k0), g1 = _mm256_loadu_ps(dm + b * out_ch + k0 + 8);
      for (int p = 0; p < P; ++p) {
        const __m256 a = _mm256_broadcast_ss(v + b * in_ch + p);
        acc[p][0] = _mm256_fmadd_ps(a, g0, acc[p][0]);
        acc[p][1] = _mm256_fmadd_ps(a, g1, acc[p][1]);
      }
    }
    for (int p = 0; p < P; ++p) {
      float* o = du + p * out_ch + k0;
      _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), acc[p][0]));
      _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), acc[p][1]));
    }
  }
}

// The last, shorter row block (count < kRows) as a compile-time size.
template <int P = kRows>
inline void product_rows_of(int count, const float* v, const float* u, float* m, int64_t in_ch, int64_t out_ch) {
  if constexpr (P > 1) {
    if (count < P) return product_rows_of<P - 1>(count, v, u, m, in_ch, out_ch);
  }
  product_rows<P>(v, u, m, in_ch, out_ch);
}

template <int P = kRows>
inline void weight_rows_of(int count, const float* v, const float* dm, float* du, int64_t tiles, int64_t in_ch,
                           int64_t out_ch) {
  if constexpr (P > 1) {
    if (count < P) return weight_rows_of<P - 1>(count, v, dm, du, tiles, in_ch, out_ch);
  }
  weight_rows<P>(v, dm, du, tiles, in_ch, out_ch);
}
#endif

void check_input(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4 && t.scalar_type() == at::kFloat &&
                  t.is_contiguous(at::MemoryFormat::ChannelsLast) && t.size(1) % 16 == 0,
              "winograd_conv3x3: ", what, " must be a float32 channels_last CPU tensor with a multiple of 16 channels");
}

}  // namespace

namespace simclrv2 {

bool has_winograd_conv() {
#if defined(SIMCLRV2_WINOGRAD_CONV)
  return true;
#else
  return false;
#endif
}

// conv2d(x, g, stride 1, padding 1) given u, the transformed kernel G g G^T packed as (16, K / 16, C, 16).
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& u) {
  TORCH_CHECK(has_winograd_conv(), "winograd_conv3x3: built without AVX2 and FMA");
  check_input(x, "x");
  const int64_t in_ch = x.size(1);
  TORCH_CHECK(u.device().is_cpu() && u.scalar_type() == at::kFloat && u.is_contiguous() && u.dim() == 4 &&
                  u.size(0) == 16 && u.size(2) == in_ch && u.size(3) == 16,
              "winograd_conv3x3: the transformed weight must be a contiguous float32 (16, K / 16, C, 16) tensor");
  const int64_t out_ch = u.size(1) * 16;
  auto y = at::empty({x.size(0), out_ch, x.size(2), x.size(3)},
                     x.options().memory_format(at::MemoryFormat::ChannelsLast));
#if defined(SIMCLRV2_WINOGRAD_CONV)
  const Geometry g(x);
  const int64_t block = block_tiles(in_ch, out_ch), blocks = (g.tiles + block - 1) / block;
  const float* xp = x.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    std::unique_ptr<float[]> v(new float[16 * block * in_ch]), m(new float[16 * block * out_ch]);
    for (int64_t index = first; index < last; ++index) {
      const int64_t t0 = index * block, count = std::min(block, g.tiles - t0);
      Tile tile(g, t0);
      for (int64_t b = 0; b < count; ++b, tile.next(g)) input_transform(xp, g, in_ch, tile, v.get(), block, b);
      for (int xi = 0; xi < 16; ++xi) {
        const float* v_xi = v.get() + xi * block * in_ch;
        float* m_xi = m.get() + xi * block * out_ch;
        for (int64_t b = 0; b < count; b += kRows) {
          product_rows_of(static_cast<int>(std::min<int64_t>(kRows, count - b)), v_xi + b * in_ch,
                          up + xi * in_ch * out_ch, m_xi + b * out_ch, in_ch, out_ch);
        }
      }
      tile = Tile(g, t0);
      for (int64_t b = 0; b < count; ++b, tile.next(g)) output_transform(m.get(), block, b, g, out_ch, tile, yp);
    }
  });
#endif
  return y;
}

// dU (16, C, K) = the sum over tiles of V[xi]^T (A dY A^T)[xi] for conv2d(x, ., stride 1, padding 1) with output
// gradient grad_out; the weight gradient is G^T dU G.
at::Tensor winograd_weight_grad(const at::Tensor& x, const at::Tensor& grad_out) {
  TORCH_CHECK(has_winograd_conv(), "winograd_conv3x3: built without AVX2 and FMA");
  check_input(x, "x");
  check_input(grad_out, "the output gradient");
  TORCH_CHECK(grad_out.size(0) == x.size(0) && grad_out.size(2) == x.size(2) && grad_out.size(3) == x.size(3),
              "winograd_conv3x3: the output gradient must have x's batch and map size (stride 1, padding 1)");
  const int64_t in_ch = x.size(1), out_ch = grad_out.size(1);
  auto du = at::zeros({16, in_ch, out_ch}, x.options().memory_format(at::MemoryFormat::Contiguous));
#if defined(SIMCLRV2_WINOGRAD_CONV)
  const Geometry g(x);
  const int64_t block = block_tiles(in_ch, out_ch), blocks = (g.tiles + block - 1) / block;
  const int64_t size = 16 * in_ch * out_ch;
  const int threads = at::get_num_threads();
  std::unique_ptr<float[]> partial(new float[threads * size]());  // one sum per thread, zeroed
  const float* xp = x.data_ptr<float>();
  const float* dyp = grad_out.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    std::unique_ptr<float[]> v(new float[16 * block * in_ch]), m(new float[16 * block * out_ch]);
    float* sum = partial.get() + at::get_thread_num() * size;
    for (int64_t index = first; index < last; ++index) {
      const int64_t t0 = index * block, count = std::min(block, g.tiles - t0);
      Tile tile(g, t0);
      for (int64_t b = 0; b < count; ++b, tile.next(g)) {
        input_transform(xp, g, in_ch, tile, v.get(), block, b);
        grad_transform(dyp, g, out_ch, tile, m.get(), block, b);
      }
      for (int xi = 0; xi < 16; ++xi) {
        const float* v_xi = v.get() + xi * block * in_ch;
        const float* m_xi = m.get() + xi * block * out_ch;
        float* sum_xi = sum + xi * in_ch * out_ch;
        for (int64_t c = 0; c < in_ch; c += kRows) {
          weight_rows_of(static_cast<int>(std::min<int64_t>(kRows, in_ch - c)), v_xi + c, m_xi,
                         sum_xi + c * out_ch, count, in_ch, out_ch);
        }
      }
    }
  });
  float* out = du.data_ptr<float>();
  at::parallel_for(0, size, 4096, [&](int64_t begin, int64_t end) {
    for (int th = 0; th < threads; ++th) {
      const float* p = partial.get() + th * size;
      for (int64_t i = begin; i < end; ++i) out[i] += p[i];
    }
  });
#endif
  return du;
}

}  // namespace simclrv2
