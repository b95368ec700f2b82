// A float32 3x3 convolution (stride 1, padding 1), channels_last, by Winograd's F(m x m, 3x3) on AVX2 (m = 2 or 4),
// and its weight gradient. Where oneDNN runs its AVX2 kernels it has no Winograd path, and its direct kernels already
// run these layers near the machine's fp32 GEMM peak: only fewer multiplications can make them faster. F(m x m, 3x3)
// computes each m x m block of outputs from its (m+2) x (m+2) input window with (m+2)^2 products per (input, output)
// channel pair instead of 9 m^2: F(2x2) 16 for 4 outputs (2.25x fewer than direct), F(4x4) 36 for 16 (4x fewer).
//
//   Y = A^T [ U (.) V ] A,  U = G g G^T (the 3x3 kernel g),  V = B^T d B (the window d),
//
// where (.) is, over channels, one GEMM for each position xi of the transformed tile:
// M[xi] (tiles x K) = V[xi] (tiles x C) @ U[xi] (C x K). F(2x2)'s transforms have entries 0, +-1 and +-1/2, so its
// float32 results keep oneDNN's accuracy; F(4x4)'s have entries up to 8 and lose about a decimal digit more
// (tests/test_winograd_conv.py checks both against float64). The weight gradient is the adjoint:
// dU[xi] = V[xi]^T @ (A dY A^T)[xi] summed over tiles, then dW = G^T dU G (in Python).
//
// Tiles are processed in blocks that keep V and M in the core's L2; each thread sums its own dU (within a memory
// budget, weight_grad_tiles). Without AVX2 and
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

// The tiles of an (N, C, H, W) image batch: m x m output blocks, ceil(H/m) x ceil(W/m) per image.
struct Geometry {
  int64_t height, width, tile, tiles_w, tiles_per_image, tiles;
  Geometry(const at::Tensor& x, int64_t m)
      : height(x.size(2)), width(x.size(3)), tile(m), tiles_w((x.size(3) + m - 1) / m),
        tiles_per_image(((x.size(2) + m - 1) / m) * ((x.size(3) + m - 1) / m)), tiles(x.size(0) * tiles_per_image) {}
};

// A tile's image and top-left output pixel, stepped through the tiles in order without a division per tile.
struct Tile {
  int64_t n, row, col;
  Tile(const Geometry& g, int64_t t)
      : n(t / g.tiles_per_image), row(g.tile * ((t % g.tiles_per_image) / g.tiles_w)),
        col(g.tile * ((t % g.tiles_per_image) % g.tiles_w)) {}
  void next(const Geometry& g) {
    col += g.tile;
    if (col < g.width) return;
    col = 0;
    row += g.tile;
    if (row < g.height) return;
    row = 0;
    ++n;
  }
};

// Tiles per block: the most whose V and M (`positions` planes each) fit kBlockBytes, but at least C*K/1024 so that
// the matrices U[xi] read from the outer caches for each block are used for enough products (256 channels' forward
// at 7 px, F(2x2), one process: 148-177 ms in blocks of 6 tiles, 120-147 in blocks of 128-240). Then evened out so
// that each thread gets as many blocks, of as many tiles: 512 channels' one-tile 4 px images in blocks of 240 had
// left one of two threads 32 of the 512 tiles.
int64_t block_tiles(int positions, int64_t in_ch, int64_t out_ch, int64_t tiles) {
  const int64_t fit = kBlockBytes / (positions * static_cast<int64_t>(sizeof(float)) * (in_ch + out_ch));
  const int64_t most = std::min(kMaxBlock, std::max<int64_t>({kRows, fit, in_ch * out_ch / 1024})) / kRows * kRows;
  const int64_t threads = std::max(1, at::get_num_threads());
  const int64_t blocks = ((tiles + most - 1) / most + threads - 1) / threads * threads;
  const int64_t even = (tiles + blocks - 1) / blocks;
  return std::max<int64_t>(kRows, (even + kRows - 1) / kRows * kRows);
}

// The three 1-D transforms of F(m, 3) on 8 channels at once; the 2-D ones apply them to columns, then rows.
// Input: B^T d, (m+2) values to (m+2).
template <int M>
inline void input_1d(const __m256* d, __m256* out);

template <>
inline void input_1d<2>(const __m256* d, __m256* out) {  // B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]
  out[0] = _mm256_sub_ps(d[0], d[2]);
  out[1] = _mm256_add_ps(d[1], d[2]);
  out[2] = _mm256_sub_ps(d[2], d[1]);
  out[3] = _mm256_sub_ps(d[1], d[3]);
}

template <>
inline void input_1d<4>(const __m256* d, __m256* out) {
  // B^T = [[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],[0,4,0,-5,0,1]]
  const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f), five = _mm256_set1_ps(5.0f);
  const __m256 a = _mm256_fnmadd_ps(four, d[2], d[4]), b = _mm256_fnmadd_ps(four, d[1], d[3]);
  const __m256 c = _mm256_sub_ps(d[4], d[2]), e = _mm256_sub_ps(d[3], d[1]);
  out[0] = _mm256_fmadd_ps(four, d[0], _mm256_fnmadd_ps(five, d[2], d[4]));
  out[1] = _mm256_add_ps(a, b);
  out[2] = _mm256_sub_ps(a, b);
  out[3] = _mm256_fmadd_ps(two, e, c);
  out[4] = _mm256_fnmadd_ps(two, e, c);
  out[5] = _mm256_fmadd_ps(four, d[1], _mm256_fnmadd_ps(five, d[3], d[5]));
}

// Output: A^T m, (m+2) values to m.
template <int M>
inline void output_1d(const __m256* m, __m256* out);

template <>
inline void output_1d<2>(const __m256* m, __m256* out) {  // A^T = [[1,1,1,0],[0,1,-1,-1]]
  out[0] = _mm256_add_ps(_mm256_add_ps(m[0], m[1]), m[2]);
  out[1] = _mm256_sub_ps(_mm256_sub_ps(m[1], m[2]), m[3]);
}

template <>
inline void output_1d<4>(const __m256* m, __m256* out) {
  // A^T = [[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]]
  const __m256 s12 = _mm256_add_ps(m[1], m[2]), d12 = _mm256_sub_ps(m[1], m[2]);
  const __m256 s34 = _mm256_add_ps(m[3], m[4]), d34 = _mm256_sub_ps(m[3], m[4]);
  out[0] = _mm256_add_ps(_mm256_add_ps(m[0], s12), s34);
  out[1] = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), d34, d12);
  out[2] = _mm256_fmadd_ps(_mm256_set1_ps(4.0f), s34, s12);
  out[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0f), d34, d12), m[5]);
}

// Output gradient: A y, m values to (m+2).
template <int M>
inline void grad_1d(const __m256* y, __m256* out);

template <>
inline void grad_1d<2>(const __m256* y, __m256* out) {  // A = [[1,0],[1,1],[1,-1],[0,-1]]
  out[0] = y[0];
  out[1] = _mm256_add_ps(y[0], y[1]);
  out[2] = _mm256_sub_ps(y[0], y[1]);
  out[3] = _mm256_sub_ps(_mm256_setzero_ps(), y[1]);
}

template <>
inline void grad_1d<4>(const __m256* y, __m256* out) {
  // A = [[1,0,0,0],[1,1,1,1],[1,-1,1,-1],[1,2,4,8],[1,-2,4,-8],[0,0,0,1]]
  const __m256 four = _mm256_set1_ps(4.0f), two = _mm256_set1_ps(2.0f);
  const __m256 s02 = _mm256_add_ps(y[0], y[2]), s13 = _mm256_add_ps(y[1], y[3]);
  const __m256 e02 = _mm256_fmadd_ps(four, y[2], y[0]), e13 = _mm256_fmadd_ps(four, y[3], y[1]);
  out[0] = y[0];
  out[1] = _mm256_add_ps(s02, s13);
  out[2] = _mm256_sub_ps(s02, s13);
  out[3] = _mm256_fmadd_ps(two, e13, e02);
  out[4] = _mm256_fnmadd_ps(two, e13, e02);
  out[5] = y[3];
}

// V[xi][b][c] (xi = (m+2) i + j) = (B^T d B)[i][j] of the tile's (m+2) x (m+2) input window d (zero outside the
// image), for every channel c. kInterior: the window lies inside.
template <int M, bool kInterior>
inline void input_transform_of(const float* x, const Geometry& g, int64_t channels, const Tile& tile, float* v_block,
                               int64_t block, int64_t b) {
  constexpr int kAlpha = M + 2;
  const int64_t row0 = tile.row - 1, col0 = tile.col - 1;
  const float* src[kAlpha][kAlpha];
  for (int i = 0; i < kAlpha; ++i) {
    for (int j = 0; j < kAlpha; ++j) {
      const int64_t r = row0 + i, c = col0 + j;
      const bool inside = kInterior || (r >= 0 && r < g.height && c >= 0 && c < g.width);
      src[i][j] = inside ? x + ((tile.n * g.height + r) * g.width + c) * channels : nullptr;
    }
  }
  const int64_t plane = block * channels;  // from one xi to the next
  float* out = v_block + b * channels;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t c = 0; c < channels; c += 8) {
    __m256 t[kAlpha][kAlpha];  // B^T d
    #pragma GCC unroll 6
    for (int j = 0; j < kAlpha; ++j) {
      __m256 column[kAlpha], transformed[kAlpha];
      #pragma GCC unroll 6
      for (int i = 0; i < kAlpha; ++i) {
        column[i] = (kInterior || src[i][j]) ? _mm256_loadu_ps(src[i][j] + c) : zero;
      }
      input_1d<M>(column, transformed);
      #pragma GCC unroll 6
      for (int i = 0; i < kAlpha; ++i) t[i][j] = transformed[i];
    }
    #pragma GCC unroll 6
    for (int i = 0; i < kAlpha; ++i) {  // then B's combinations of each row's columns
      __m256 row[kAlpha];
      input_1d<M>(t[i], row);
      #pragma GCC unroll 6
      for (int j = 0; j < kAlpha; ++j) _mm256_storeu_ps(out + (kAlpha * i + j) * plane + c, row[j]);
    }
  }
}

template <int M>
inline void input_transform(const float* x, const Geometry& g, int64_t channels, const Tile& tile, float* v_block,
                            int64_t block, int64_t b) {
  if (tile.row >= 1 && tile.row + M + 1 <= g.height && tile.col >= 1 && tile.col + M + 1 <= g.width) {
    input_transform_of<M, true>(x, g, channels, tile, v_block, block, b);
  } else {
    input_transform_of<M, false>(x, g, channels, tile, v_block, block, b);
  }
}

// The tile's m x m outputs A^T M A from M[xi][b][k]; those past the image's bottom or right edge are dropped.
template <int M>
inline void output_transform(const float* m_block, int64_t block, int64_t b, const Geometry& g, int64_t channels,
                             const Tile& tile, float* y) {
  constexpr int kAlpha = M + 2;
  const int rows = static_cast<int>(std::min<int64_t>(M, g.height - tile.row));
  const int cols = static_cast<int>(std::min<int64_t>(M, g.width - tile.col));
  const int64_t plane = block * channels, down = g.width * channels;
  const float* in = m_block + b * channels;
  float* dst = y + ((tile.n * g.height + tile.row) * g.width + tile.col) * channels;
  for (int64_t k = 0; k < channels; k += 8) {
    __m256 s[M][kAlpha];  // A^T M
    #pragma GCC unroll 6
    for (int j = 0; j < kAlpha; ++j) {
      __m256 column[kAlpha], transformed[M];
      #pragma GCC unroll 6
      for (int i = 0; i < kAlpha; ++i) column[i] = _mm256_loadu_ps(in + (kAlpha * i + j) * plane + k);
      output_1d<M>(column, transformed);
      #pragma GCC unroll 4
      for (int i = 0; i < M; ++i) s[i][j] = transformed[i];
    }
    for (int i = 0; i < rows; ++i) {
      __m256 row[M];
      output_1d<M>(s[i], row);
      float* at = dst + i * down + k;
      for (int j = 0; j < cols; ++j) _mm256_storeu_ps(at + j * channels, row[j]);
    }
  }
}

// (A dY A^T)[xi] of the tile's m x m output gradient (zero past the image's edge) into M[xi][b][k].
template <int M>
inline void grad_transform(const float* dy, const Geometry& g, int64_t channels, const Tile& tile, float* m_block,
                           int64_t block, int64_t b) {
  constexpr int kAlpha = M + 2;
  const int rows = static_cast<int>(std::min<int64_t>(M, g.height - tile.row));
  const int cols = static_cast<int>(std::min<int64_t>(M, g.width - tile.col));
  const float* src = dy + ((tile.n * g.height + tile.row) * g.width + tile.col) * channels;
  const int64_t down = g.width * channels, plane = block * channels;
  float* out = m_block + b * channels;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t k = 0; k < channels; k += 8) {
    __m256 t[kAlpha][M];  // A dY
    #pragma GCC unroll 4
    for (int j = 0; j < M; ++j) {
      __m256 column[M], transformed[kAlpha];
      #pragma GCC unroll 4
      for (int i = 0; i < M; ++i) {
        column[i] = i < rows && j < cols ? _mm256_loadu_ps(src + i * down + j * channels + k) : zero;
      }
      grad_1d<M>(column, transformed);
      #pragma GCC unroll 6
      for (int i = 0; i < kAlpha; ++i) t[i][j] = transformed[i];
    }
    #pragma GCC unroll 6
    for (int i = 0; i < kAlpha; ++i) {
      __m256 row[kAlpha];
      grad_1d<M>(t[i], row);
      #pragma GCC unroll 6
      for (int j = 0; j < kAlpha; ++j) _mm256_storeu_ps(out + (kAlpha * i + j) * plane + k, row[j]);
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
// conv2d by F(m x m, 3x3) into y, from u packed as ((m+2)^2, K / 16, C, 16).
template <int M>
void forward_tiles(const at::Tensor& x, const at::Tensor& u, at::Tensor& y) {
  constexpr int kPositions = (M + 2) * (M + 2);
  const int64_t in_ch = x.size(1), out_ch = y.size(1);
  const Geometry g(x, M);
  const int64_t block = block_tiles(kPositions, in_ch, out_ch, g.tiles), blocks = (g.tiles + block - 1) / block;
  const float* xp = x.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    std::unique_ptr<float[]> v(new float[kPositions * block * in_ch]), m(new float[kPositions * block * out_ch]);
    for (int64_t index = first; index < last; ++index) {
      const int64_t t0 = index * block, count = std::min(block, g.tiles - t0);
      Tile tile(g, t0);
      for (int64_t b = 0; b < count; ++b, tile.next(g)) input_transform<M>(xp, g, in_ch, tile, v.get(), block, b);
      for (int xi = 0; xi < kPositions; ++xi) {
        const float* v_xi = v.get() + xi * block * in_ch;
        float* m_xi = m.get() + xi * block * out_ch;
        for (int64_t b = 0; b < count; b += kRows) {
          product_rows_of(static_cast<int>(std::min<int64_t>(kRows, count - b)), v_xi + b * in_ch,
                          up + xi * in_ch * out_ch, m_xi + b * out_ch, in_ch, out_ch);
        }
      }
      tile = Tile(g, t0);
      for (int64_t b = 0; b < count; ++b, tile.next(g)) output_transform<M>(m.get(), block, b, g, out_ch, tile, yp);
    }
  });
}

// dU, ((m+2)^2, C, K), summed over the tiles of F(m x m, 3x3). Each thread sums its tiles' products into its own
// copy (no atomics), and the copies are added at the end. A copy of all positions is (m+2)^2 C K floats, 37.7 MB for
// F(4x4) at 512 channels: with many threads, past budget_bytes for all copies, the positions are taken in groups,
// one pass over the tiles per group, each recomputing the tiles' transforms (O(C + K) work a tile against the
// products' O(C K); the cost is unmeasured on a many-core CPU).
template <int M>
void weight_grad_tiles(const at::Tensor& x, const at::Tensor& grad_out, at::Tensor& du, int64_t budget_bytes) {
  constexpr int kPositions = (M + 2) * (M + 2);
  const int64_t in_ch = x.size(1), out_ch = grad_out.size(1);
  const Geometry g(x, M);
  const int64_t block = block_tiles(kPositions, in_ch, out_ch, g.tiles), blocks = (g.tiles + block - 1) / block;
  const int64_t per_position = in_ch * out_ch;
  const int threads = at::get_num_threads();
  const int64_t group = std::clamp<int64_t>(
      budget_bytes / (threads * per_position * static_cast<int64_t>(sizeof(float))), 1, kPositions);
  std::unique_ptr<float[]> partial(new float[threads * group * per_position]);
  const float* xp = x.data_ptr<float>();
  const float* dyp = grad_out.data_ptr<float>();
  float* out = du.data_ptr<float>();
  for (int64_t first_position = 0; first_position < kPositions; first_position += group) {
    const int64_t positions = std::min<int64_t>(group, kPositions - first_position);
    const int64_t size = positions * per_position;
    std::fill(partial.get(), partial.get() + threads * size, 0.0f);
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      std::unique_ptr<float[]> v(new float[kPositions * block * in_ch]), m(new float[kPositions * block * out_ch]);
      float* sum = partial.get() + at::get_thread_num() * size;
      for (int64_t index = first; index < last; ++index) {
        const int64_t t0 = index * block, count = std::min(block, g.tiles - t0);
        Tile tile(g, t0);
        for (int64_t b = 0; b < count; ++b, tile.next(g)) {
          input_transform<M>(xp, g, in_ch, tile, v.get(), block, b);
          grad_transform<M>(dyp, g, out_ch, tile, m.get(), block, b);
        }
        for (int64_t p = 0; p < positions; ++p) {
          const int64_t xi = first_position + p;
          const float* v_xi = v.get() + xi * block * in_ch;
          const float* m_xi = m.get() + xi * block * out_ch;
          float* sum_xi = sum + p * per_position;
          for (int64_t c = 0; c < in_ch; c += kRows) {
            weight_rows_of(static_cast<int>(std::min<int64_t>(kRows, in_ch - c)), v_xi + c, m_xi,
                           sum_xi + c * out_ch, count, in_ch, out_ch);
          }
        }
      }
    });
    float* out_group = out + first_position * per_position;
    at::parallel_for(0, size, 4096, [&](int64_t begin, int64_t end) {
      std::copy(partial.get() + begin, partial.get() + end, out_group + begin);  // dU needs no zeroing first
      for (int th = 1; th < threads; ++th) {
        const float* p = partial.get() + th * size;
        for (int64_t i = begin; i < end; ++i) out_group[i] += p[i];
      }
    });
  }
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

// conv2d(x, g, stride 1, padding 1) given u, the transformed kernel G g G^T packed as ((m+2)^2, K / 16, C, 16): 16
// positions for F(2x2, 3x3), 36 for F(4x4, 3x3).
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& u) {
  TORCH_CHECK(has_winograd_conv(), "winograd_conv3x3: built without AVX2 and FMA");
  check_input(x, "x");
  const int64_t in_ch = x.size(1);
  TORCH_CHECK(u.device().is_cpu() && u.scalar_type() == at::kFloat && u.is_contiguous() && u.dim() == 4 &&
                  (u.size(0) == 16 || u.size(0) == 36) && u.size(2) == in_ch && u.size(3) == 16,
              "winograd_conv3x3: the transformed weight must be a contiguous float32 (16 or 36, K / 16, C, 16) tensor");
  const int64_t out_ch = u.size(1) * 16;
  auto y = at::empty({x.size(0), out_ch, x.size(2), x.size(3)},
                     x.options().memory_format(at::MemoryFormat::ChannelsLast));
#if defined(SIMCLRV2_WINOGRAD_CONV)
  if (u.size(0) == 16) {
    forward_tiles<2>(x, u, y);
  } else {
    forward_tiles<4>(x, u, y);
  }
#endif
  return y;
}

// dU ((m+2)^2, C, K) = the sum over tiles of V[xi]^T (A dY A^T)[xi] for conv2d(x, ., stride 1, padding 1) with
// output gradient grad_out, by F(m x m, 3x3) with m = tile (2 or 4); the weight gradient is G^T dU G. The threads'
// partial sums take at most budget_bytes (more only where one position's per thread does not fit).
at::Tensor winograd_weight_grad(const at::Tensor& x, const at::Tensor& grad_out, int64_t tile, int64_t budget_bytes) {
  TORCH_CHECK(has_winograd_conv(), "winograd_conv3x3: built without AVX2 and FMA");
  TORCH_CHECK(tile == 2 || tile == 4, "winograd_weight_grad: the tile must be 2 or 4 outputs wide, not ", tile);
  TORCH_CHECK(budget_bytes > 0, "winograd_weight_grad: the partial sums' budget must be positive, not ", budget_bytes);
  check_input(x, "x");
  check_input(grad_out, "the output gradient");
  TORCH_CHECK(grad_out.size(0) == x.size(0) && grad_out.size(2) == x.size(2) && grad_out.size(3) == x.size(3),
              "winograd_conv3x3: the output gradient must have x's batch and map size (stride 1, padding 1)");
  const int64_t positions = (tile + 2) * (tile + 2);
  auto du = at::empty({positions, x.size(1), grad_out.size(1)},
                      x.options().memory_format(at::MemoryFormat::Contiguous));
#if defined(SIMCLRV2_WINOGRAD_CONV)
  if (tile == 2) {
    weight_grad_tiles<2>(x, grad_out, du, budget_bytes);
  } else {
    weight_grad_tiles<4>(x, grad_out, du, budget_bytes);
  }
#endif
  return du;
}

}  // namespace simclrv2
