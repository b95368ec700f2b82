// Python bindings of the package's compiled CPU kernels (simclrv2.models.cpu_kernels builds this extension).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bn_relu_forward", &simclrv2::bn_relu_forward,
        "relu(batch_norm(x) [+ residual]) or batch_norm(x), training mode, channels_last");
  m.def("bn_relu_backward", &simclrv2::bn_relu_backward, "gradients of bn_relu_forward");
  m.def("patches", &simclrv2::patches, "im2col of a channels_last tensor, (N*Ho*Wo, k*k*C)");
  m.def("transpose", &simclrv2::transpose, "a contiguous 2-D tensor transposed, contiguous");
  m.def("add", &simclrv2::add, "a + b, two dense tensors of one layout");
}
