// The sum of two gradients of one tensor (a residual block's input is read by both of its paths). PyTorch's autograd
// adds them with an in-place add_, which for bfloat16 ran at 12 GB/s on a 2-core AMX Xeon against 34 GB/s here
// (51 MB channels_last tensors: 12.95 ms against 4.56, benchmarks/bn_relu_shapes.py); in float32 PyTorch's in-place
// add was faster, so simclrv2.models.branch calls this for bfloat16 only. One vectorised pass over the two
// tensors' memory, in parallel, float32 arithmetic rounded once as PyTorch's add.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <cstdint>

namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel task at least

template <typename T>
void add_into(const T* a, const T* b, T* out, int64_t count) {
  at::parallel_for(0, count, kGrain, [&](int64_t begin, int64_t end) {
    const T* __restrict__ x = a;
    const T* __restrict__ y = b;
    T* __restrict__ o = out;
    #pragma GCC ivdep  // a fresh output: no aliasing with the inputs
    for (int64_t i = begin; i < end; ++i) simclrv2::store(o + i, simclrv2::to_float(x[i]) + simclrv2::to_float(y[i]));
  });
}

}  // namespace

namespace simclrv2 {

// a + b for two CPU tensors of one shape, dtype (float32 or bfloat16) and strides, dense in memory (contiguous in
// any memory format): the result has their layout.
at::Tensor add(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "add: expected CPU tensors");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kBFloat16),
              "add: expected two float32 or two bfloat16 tensors");
  TORCH_CHECK(a.sizes() == b.sizes() && a.strides() == b.strides() && a.is_non_overlapping_and_dense(),
              "add: expected two dense tensors of one shape and layout");
  auto out = at::empty_like(a);  // keeps the strides of a dense tensor
  if (a.scalar_type() == at::kFloat) {
    add_into(a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), a.numel());
  } else {
    add_into(a.data_ptr<at::BFloat16>(), b.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), a.numel());
  }
  return out;
}

}  // namespace simclrv2
