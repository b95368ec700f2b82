// The package's compiled CPU kernels, one extension built by simclrv2.models.cpu_kernels: what module.cpp binds.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace simclrv2 {

// bn_relu.cpp: training-mode BatchNorm + (residual add) + ReLU, channels_last.
std::vector<at::Tensor> bn_relu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                        const c10::optional<at::Tensor>& residual, double eps);
std::vector<at::Tensor> bn_relu_backward(const at::Tensor& grad_out, const c10::optional<at::Tensor>& out,
                                         const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                                         const at::Tensor& weight, const at::Tensor& scale,
                                         const at::Tensor& shift, bool with_residual);

// layout.cpp: the re-layouts of the convolutions that run as GEMMs.
torch::Tensor patches(const torch::Tensor& x, int64_t k, int64_t stride, int64_t pad);
torch::Tensor transpose(const torch::Tensor& a);

}  // namespace simclrv2
