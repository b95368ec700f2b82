// Python bindings of the package's compiled CPU kernels (simclrv2.models.cpu_kernels builds this extension).
#include "kernels.h"

// pybind11 and its conversions of tensors and optionals; <torch/extension.h> adds the whole C++ frontend (modules,
// optimisers) and took 34 s of a ~60 s first build against 9 s for this.
#include <torch/csrc/utils/pybind.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bn_relu_forward", &simclrv2::bn_relu_forward,
        "relu(batch_norm(x) [+ residual]) or batch_norm(x), training mode, channels_last");
  m.def("bn_relu_backward", &simclrv2::bn_relu_backward, "gradients of bn_relu_forward");
  m.def("bn_relu_eval", &simclrv2::bn_relu_eval,
        "relu(batch_norm(x) [+ residual]) or batch_norm(x), evaluation mode (running statistics), channels_last");
  m.def("patches", &simclrv2::patches, "im2col of a channels_last tensor, (N*Ho*Wo, k*k*C)");
  m.def("transpose", &simclrv2::transpose, "a contiguous 2-D tensor transposed, contiguous");
  m.def("has_direct_conv", &simclrv2::has_direct_conv,
        "whether direct_conv3x3 was compiled (AVX2 with FMA, or AVX-512)");
  m.def("direct_conv3x3", &simclrv2::direct_conv3x3,
        "float32 16->16 3x3 convolution, stride 1, padding 1, channels_last (or its input gradient)");
  m.def("has_winograd_conv", &simclrv2::has_winograd_conv, "whether winograd_conv3x3 was compiled (AVX2 with FMA)");
  m.def("winograd_conv3x3", &simclrv2::winograd_conv3x3,
        "float32 3x3 convolution, stride 1, padding 1, channels_last, by Winograd F(2x2, 3x3) or F(4x4, 3x3) from G g G^T");
  m.def("winograd_weight_grad", &simclrv2::winograd_weight_grad,
        "its weight gradient before the kernel transform: ((m+2)^2, C, K), dW = G^T dU G");
  m.def("winograd_transformed_weight", &simclrv2::winograd_transformed_weight,
        "G g G^T of a (K, C, 3, 3) weight (or of it flipped with its channels swapped), packed for winograd_conv3x3");
  m.def("winograd_weight_from_transformed", &simclrv2::winograd_weight_from_transformed,
        "G^T dU G of winograd_weight_grad's sum: the weight gradient, channels_last");
  m.def("stem_conv_forward", &simclrv2::stem_conv_forward, "stride-1 convolution of a one-channel input");
  m.def("stem_conv_weight_grad", &simclrv2::stem_conv_weight_grad, "its weight gradient, float32");
  m.def("add", &simclrv2::add, "a + b, two dense tensors of one layout");
  m.def("sk_mix_forward", &simclrv2::sk_mix_forward,
        "Selective Kernels' mix a * gate[:, :C] + b * gate[:, C:] of channels_last (N, 2C, H, W) streams");
  m.def("spatial_mean", &simclrv2::spatial_mean, "mean over H and W of a channels_last tensor, float32 (N, C)");
  m.def("sk_mix_backward", &simclrv2::sk_mix_backward, "gradients of sk_mix_forward: (streams, gate)");
}
