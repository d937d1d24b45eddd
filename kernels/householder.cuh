// CUDA kernels of the householder family (householder_flow): launchers on raw pointers.
// Device code only, no torch headers: plain nvcc compiles kernels/householder.cu anywhere.
// The math is the contract at the top of csrc/householder.h.
//
// Types: (scalar_t, acc_t) in {(float, float), (double, double), (__half, float),
// (__nv_bfloat16, float)}. z, out, grad_z: (B, L) row-major (grad: any strides, see the
// backward); v: (B, T, L) row-major, or (T, L) when `shared`. All launchers are asynchronous on
// `stream` (no host-device sync, CUDA graph capturable) and return the launch's cudaError_t.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace lvmfast {
namespace kernels {

// Workspace (acc_t elements) the launchers below need: 0 when L <= 256 (z and the gradient
// live in registers), else 2 * B * L.
int64_t householder_workspace(int64_t B, int64_t L);

// out = H_T ... H_1 z.
template <typename scalar_t, typename acc_t>
cudaError_t householder_forward(const scalar_t* z, const scalar_t* v, scalar_t* out, int64_t B,
                                int64_t T, int64_t L, bool shared, acc_t* workspace,
                                cudaStream_t stream);

// grad_z (B, L) fully written. Amortized v: grad_v (B, T, L) in scalar_t, fully written. grad is
// read at any strides (grad_row_stride, grad_col_stride; 0 included: an expanded gradient, as
// autograd makes for a sum, is read in place instead of being copied first).
// Shared v: grad_v_acc (T, L) in acc_t, zero-filled by the caller, receives the sum over rows
// (atomics: one add per element and block); grad_v is unused.
template <typename scalar_t, typename acc_t>
cudaError_t householder_backward(const scalar_t* grad, const scalar_t* out, const scalar_t* v,
                                 scalar_t* grad_z, scalar_t* grad_v, acc_t* grad_v_acc, int64_t B,
                                 int64_t T, int64_t L, bool shared, int64_t grad_row_stride,
                                 int64_t grad_col_stride, acc_t* workspace, cudaStream_t stream);

}  // namespace kernels
}  // namespace lvmfast
