// Pieces every CUDA glue file needs: the input check, the dtype dispatch onto (storage,
// accumulation) kernel types, and the check of a launcher's return code.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace lvmfast {
namespace cuda_glue {

template <typename scalar_t, typename acc_t>
struct Types {
  using scalar = scalar_t;
  using acc = acc_t;
};

// Calls f(Types<storage, accumulation>{}): double accumulates in double, the rest in float.
template <typename F>
void dispatch(const char* op, at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(Types<float, float>{});
    case at::kDouble: return f(Types<double, double>{});
    case at::kHalf: return f(Types<__half, float>{});
    case at::kBFloat16: return f(Types<__nv_bfloat16, float>{});
    default: TORCH_CHECK_VALUE(false, op, ": unsupported dtype on CUDA: ", t);
  }
}

// RuntimeError unless `t` is on CUDA; ValueError unless the kernels take its dtype.
inline void check_cuda_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": expected CUDA tensors, got ", t.device());
  const auto s = t.scalar_type();
  TORCH_CHECK_VALUE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op,
                    ": on CUDA ", name, " must be float32, float64, float16 or bfloat16, got ", s);
}

// The accumulation dtype of the kernels' workspaces: double for double, float otherwise.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, " CUDA kernel failed: ", cudaGetErrorString(err));
}

}  // namespace cuda_glue
}  // namespace lvmfast
