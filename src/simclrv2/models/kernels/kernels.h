// The package's compiled CPU kernels, one extension built by simclrv2.models.cpu_kernels: what module.cpp binds.
#pragma once

// The tensor class and the few factory functions the kernels call, not <ATen/ATen.h> (every op's declaration):
// each file compiles ~1.5 s faster in the extension's first build on a machine.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace simclrv2 {

// float32 arithmetic on float32 or bfloat16 storage, as PyTorch computes bf16 ops: widen exactly, compute in float,
// round once to nearest even. Written with integer bit operations so that loops over them vectorise.
inline float to_float(float v) { return v; }
inline float to_float(at::BFloat16 v) {  // exact: bf16 is the high half of a float
  uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store(float* out, float v) { *out = v; }
inline void store(at::BFloat16* out, float v) {  // round to nearest even, as PyTorch's conversion does
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  out->x = (v != v) ? static_cast<uint16_t>(0x7FC0) : rounded;
}

// bn_relu.cpp: training-mode BatchNorm + (residual add) + ReLU, or BatchNorm alone, channels_last.
std::vector<at::Tensor> bn_relu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                        const c10::optional<at::Tensor>& residual, double eps, bool relu);
std::vector<at::Tensor> bn_relu_backward(const at::Tensor& grad_out, const c10::optional<at::Tensor>& out,
                                         const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                                         const at::Tensor& weight, const at::Tensor& scale,
                                         const at::Tensor& shift, bool with_residual, bool relu);
// The same layers in evaluation mode (the running statistics), forward only.
at::Tensor bn_relu_eval(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& running_mean, const at::Tensor& running_var,
                        const c10::optional<at::Tensor>& residual, double eps, bool relu);

// layout.cpp: the re-layouts of the convolutions that run as GEMMs.
at::Tensor patches(const at::Tensor& x, int64_t k, int64_t stride, int64_t pad);
at::Tensor transpose(const at::Tensor& a);

// direct_conv.cpp: a float32 16->16 3x3 convolution (stride 1, padding 1) and its input gradient, on AVX2 or AVX-512.
bool has_direct_conv();
at::Tensor direct_conv3x3(const at::Tensor& x, const at::Tensor& weight, bool input_grad);

// winograd_conv.cpp: a float32 3x3 convolution (stride 1, padding 1) by Winograd's F(2x2, 3x3) or F(4x4, 3x3), and its weight
// gradient's transformed sum, on AVX2 with FMA.
bool has_winograd_conv();
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& u);
at::Tensor winograd_weight_grad(const at::Tensor& x, const at::Tensor& grad_out, int64_t tile, int64_t budget_bytes);
// winograd_weights.cpp: its per-weight transforms, G g G^T packed for winograd_conv3x3 and the gradient's G^T dU G.
at::Tensor winograd_transformed_weight(const at::Tensor& weight, int64_t tile, bool swapped_flipped);
at::Tensor winograd_weight_from_transformed(const at::Tensor& du);

// stem_conv.cpp: a one-input-channel convolution (stride 1) and its weight gradient.
at::Tensor stem_conv_forward(const at::Tensor& x, const at::Tensor& weight, int64_t padding);
at::Tensor stem_conv_weight_grad(const at::Tensor& x, const at::Tensor& grad_out, int64_t k, int64_t padding);

// sk_mix.cpp: Selective Kernels' mix of two streams by a per-image gate, and its gradients; the spatial mean its gate
// reads.
at::Tensor spatial_mean(const at::Tensor& x);
at::Tensor sk_mix_forward(const at::Tensor& streams, const at::Tensor& gate);
std::vector<at::Tensor> sk_mix_backward(const at::Tensor& grad, const at::Tensor& streams, const at::Tensor& gate);

// sum.cpp: the sum of a tensor's two gradients (simclrv2.models.branch).
at::Tensor add(const at::Tensor& a, const at::Tensor& b);

}  // namespace simclrv2
