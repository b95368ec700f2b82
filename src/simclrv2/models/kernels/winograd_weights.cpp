// The per-weight transforms of the Winograd layers (winograd_conv.cpp), compiled: U = G g G^T for every channel pair,
// packed as the convolution reads it, and the weight gradient G^T dU G, channels_last. They are paid on every call
// whatever the batch: as one PyTorch GEMM with G (x) G over all channel pairs (16 or 36 x 9 by 9 x C K, a shape BLAS
// runs far below the machine) plus the re-layouts around it, they took a few ms of a small-batch float32 step
// (benchmarks/winograd_transform_ab.py). Here each is one pass: a block of 16 x 16 channel pairs is read once,
// transformed separably in registers (G g, then (G g) G^T: 162 multiply-adds a pair for F(4x4) against the Kronecker
// product's 324) and written once in the layout its reader wants. simclrv2.models.winograd keeps the same transforms
// in PyTorch ops as the tests' reference.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kStrip = 16;  // the convolution reads U in strips of 16 output channels (winograd.STRIP)
constexpr int kTaps = 9;

// G of F(m, 3), (m+2) x 3; U = G g G^T.
constexpr float kG2[4][3] = {{1.0f, 0.0f, 0.0f}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0.0f, 0.0f, 1.0f}};
constexpr float kG4[6][3] = {{1.0f / 4, 0.0f, 0.0f},         {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                             {-1.0f / 6, 1.0f / 6, -1.0f / 6}, {1.0f / 24, 1.0f / 12, 1.0f / 6},
                             {1.0f / 24, -1.0f / 12, 1.0f / 6}, {0.0f, 0.0f, 1.0f}};

// The G of a tile of A = m + 2 positions a side, known when the loops are compiled, so its zeros and entries fold in.
template <int A>
constexpr const float (*g_of())[3] {
  if constexpr (A == 4) {
    return kG2;
  } else {
    return kG4;
  }
}

// 16 floats, one strip of channels: GCC's vector extension, so that each line below is one AVX-512 operation (two on
// AVX2) whatever the build's instruction set; loads and stores through memcpy, which need no alignment.
typedef float Strip __attribute__((vector_size(kStrip * sizeof(float))));

inline Strip load(const float* p) {
  Strip v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, const Strip& v) { std::memcpy(p, &v, sizeof v); }

// U[xi][s][n][kk] (xi = (m+2) a + b, output channel o = 16 s + kk, input channel n) = (G T(o, n) G^T)[a][b], where
// tap (i, j) of T(o, n) is at w + o*so + n*sn + i*si + j*sj: the strides say whether T is the weight (forward) or
// the weight with its channels swapped and its taps flipped (the input gradient's convolution).
template <int A>
void transform(const float* w, int64_t so, int64_t sn, int64_t si, int64_t sj, int64_t outs, int64_t ins, float* u) {
  constexpr const float (*g)[3] = g_of<A>();
  const int64_t strips = outs / kStrip, in_blocks = (ins + kStrip - 1) / kStrip;
  at::parallel_for(0, strips * in_blocks, 1, [&](int64_t first, int64_t last) {
    float taps[kStrip][kTaps][kStrip];  // [n][tap][kk]
    for (int64_t index = first; index < last; ++index) {
      const int64_t s = index / in_blocks, n0 = (index % in_blocks) * kStrip;
      const int64_t count = std::min(kStrip, ins - n0);
      const float* first_tap = w + s * kStrip * so + n0 * sn;
      if (so == 1) {  // the output channels are contiguous (the input gradient's T of a channels_last weight)
        for (int64_t n = 0; n < count; ++n) {
          for (int t = 0; t < kTaps; ++t) std::memcpy(taps[n][t], first_tap + n * sn + (t / 3) * si + (t % 3) * sj,
                                                      sizeof taps[n][t]);
        }
      } else {  // a transpose, read along n (contiguous in a channels_last weight)
        for (int64_t kk = 0; kk < kStrip; ++kk) {
          for (int t = 0; t < kTaps; ++t) {
            const float* src = first_tap + kk * so + (t / 3) * si + (t % 3) * sj;
            for (int64_t n = 0; n < count; ++n) taps[n][t][kk] = src[n * sn];
          }
        }
      }
      for (int64_t n = 0; n < count; ++n) {
        Strip tap[kTaps];
        for (int t = 0; t < kTaps; ++t) tap[t] = load(taps[n][t]);
        #pragma GCC unroll 6
        for (int a = 0; a < A; ++a) {
          Strip gt[3];  // row a of G T
          for (int j = 0; j < 3; ++j) gt[j] = g[a][0] * tap[j] + g[a][1] * tap[3 + j] + g[a][2] * tap[6 + j];
          #pragma GCC unroll 6
          for (int b = 0; b < A; ++b) {
            store(u + (((a * A + b) * strips + s) * ins + n0 + n) * kStrip,
                  g[b][0] * gt[0] + g[b][1] * gt[1] + g[b][2] * gt[2]);
          }
        }
      }
    }
  });
}

// dW[k][c][i][j] = (G^T dU[.][c][k] G)[i][j] from dU ((m+2)^2, C, K) contiguous (C and K multiples of 16), into a
// channels_last (K, C, 3, 3) dW (memory order k, i, j, c).
template <int A>
void untransform(const float* du, int64_t in_ch, int64_t out_ch, float* dw) {
  constexpr const float (*g)[3] = g_of<A>();
  const int64_t in_blocks = in_ch / kStrip, out_blocks = out_ch / kStrip, plane = in_ch * out_ch;
  at::parallel_for(0, in_blocks * out_blocks, 1, [&](int64_t first, int64_t last) {
    float result[kStrip][kTaps][kStrip];  // [c][tap][k]
    for (int64_t index = first; index < last; ++index) {
      const int64_t c0 = (index / out_blocks) * kStrip, k0 = (index % out_blocks) * kStrip;
      for (int64_t c = 0; c < kStrip; ++c) {
        const float* column = du + (c0 + c) * out_ch + k0;
        Strip gtd[3][A];  // G^T dU
        for (int i = 0; i < 3; ++i) {
          for (int b = 0; b < A; ++b) gtd[i][b] = Strip{};
        }
        #pragma GCC unroll 6
        for (int a = 0; a < A; ++a) {
          #pragma GCC unroll 6
          for (int b = 0; b < A; ++b) {
            const Strip row = load(column + (a * A + b) * plane);
            for (int i = 0; i < 3; ++i) gtd[i][b] += g[a][i] * row;
          }
        }
        for (int i = 0; i < 3; ++i) {
          for (int j = 0; j < 3; ++j) {
            Strip sum{};
            #pragma GCC unroll 6
            for (int b = 0; b < A; ++b) sum += g[b][j] * gtd[i][b];
            store(result[c][3 * i + j], sum);
          }
        }
      }
      for (int64_t k = 0; k < kStrip; ++k) {  // a transpose, written along c (contiguous in channels_last)
        for (int t = 0; t < kTaps; ++t) {
          float* dst = dw + ((k0 + k) * kTaps + t) * in_ch + c0;
          for (int64_t c = 0; c < kStrip; ++c) dst[c] = result[c][t][k];
        }
      }
    }
  });
}

}  // namespace

namespace simclrv2 {

// G g G^T of a (K, C, 3, 3) float32 weight (any strides), packed ((m+2)^2, K / 16, C, 16) for winograd_conv3x3; with
// swapped_flipped, of the weight with its taps flipped and its channels swapped ((C, K, 3, 3), the input gradient's
// convolution), packed ((m+2)^2, C / 16, K, 16).
at::Tensor winograd_transformed_weight(const at::Tensor& weight, int64_t tile, bool swapped_flipped) {
  TORCH_CHECK(tile == 2 || tile == 4, "winograd_transformed_weight: the tile must be 2 or 4 outputs wide, not ", tile);
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 4 &&
                  weight.size(2) == 3 && weight.size(3) == 3,
              "winograd_transformed_weight: the weight must be a float32 (K, C, 3, 3) CPU tensor");
  const int64_t outs = weight.size(swapped_flipped ? 1 : 0), ins = weight.size(swapped_flipped ? 0 : 1);
  TORCH_CHECK(outs % kStrip == 0, "winograd_transformed_weight: the convolution's output channels (", outs,
              ") must be a multiple of 16");
  const int alpha = static_cast<int>(tile) + 2;
  auto u = at::empty({alpha * alpha, outs / kStrip, ins, kStrip}, weight.options());
  const float* w = weight.data_ptr<float>();
  int64_t so = weight.stride(0), sn = weight.stride(1), si = weight.stride(2), sj = weight.stride(3);
  if (swapped_flipped) {  // T(o, n)[i][j] = g[n][o][2 - i][2 - j]
    std::swap(so, sn);
    w += 2 * si + 2 * sj;
    si = -si;
    sj = -sj;
  }
  if (tile == 2) {
    transform<4>(w, so, sn, si, sj, outs, ins, u.data_ptr<float>());
  } else {
    transform<6>(w, so, sn, si, sj, outs, ins, u.data_ptr<float>());
  }
  return u;
}

// G^T dU G of winograd_weight_grad's ((m+2)^2, C, K) sum: the weight gradient (K, C, 3, 3), channels_last.
at::Tensor winograd_weight_from_transformed(const at::Tensor& du) {
  TORCH_CHECK(du.device().is_cpu() && du.scalar_type() == at::kFloat && du.dim() == 3 && du.is_contiguous() &&
                  (du.size(0) == 16 || du.size(0) == 36),
              "winograd_weight_from_transformed: dU must be a contiguous float32 (16 or 36, C, K) CPU tensor");
  TORCH_CHECK(du.size(1) % kStrip == 0 && du.size(2) % kStrip == 0,
              "winograd_weight_from_transformed: dU's channels must be multiples of 16, not ", du.size(1), " and ",
              du.size(2));
  const int64_t in_ch = du.size(1), out_ch = du.size(2);
  auto dw = at::empty({out_ch, in_ch, 3, 3}, du.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (du.size(0) == 16) {
    untransform<4>(du.data_ptr<float>(), in_ch, out_ch, dw.data_ptr<float>());
  } else {
    untransform<6>(du.data_ptr<float>(), in_ch, out_ch, dw.data_ptr<float>());
  }
  return dw;
}

}  // namespace simclrv2
