// CUDA kernels of the orthogonal family (bjorck_orthonormalize): launchers on raw pointers.
// Device code only, no torch headers: plain nvcc compiles kernels/orthogonal.cu anywhere.
// The math is the contract at the top of csrc/orthogonal.h.
//
// Types: (scalar_t, acc_t) in {(float, float), (double, double), (__half, float),
// (__nv_bfloat16, float)}. q, out, grad, grad_q: N matrices of D x M, row-major, contiguous.
// Each matrix runs its own iteration count inside one thread block: no host-device sync,
// CUDA-graph capturable. Launchers are asynchronous on `stream` and return cudaError_t
// (cudaErrorInvalidValue for one matrix over 2^30 elements: indices within a matrix are 32-bit).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace lvmfast {
namespace kernels {

// Thread blocks of the backward: min(N, ctas_per_sm * num_sms); each loops over matrices.
int bjorck_num_blocks(int64_t N, int num_sms);
// Thread blocks of the forward: more per SM when Q, Q' and A fit in shared memory (no
// workspace then), else bjorck_num_blocks.
int bjorck_forward_blocks(int64_t N, int64_t D, int64_t M, size_t acc_size,
                          size_t max_smem_bytes, int num_sms);

// acc_t elements of global workspace. Forward: 0 when Q, Q' and A fit in shared memory
// (max_smem_bytes: the device's opt-in limit per block), else per block 2 D ld + M M.
// Backward: per block bjorck_slots(max_steps) (D ld + M M), at most 33 of them however large
// max_steps (the kept iterates of the block's current matrix, orthogonal_checkpoints.cuh; not
// per matrix), plus 4 D ld + 4 M M (3 M M without the prefetch) of working buffers when those do
// not fit in shared memory.
// ld: the D x M buffers' row stride, M (M + 4 in a build with -DLVMFAST_BJORCK_PAD=4).
int64_t bjorck_forward_workspace(int64_t D, int64_t M, int blocks, size_t acc_size,
                                 size_t max_smem_bytes);
int64_t bjorck_backward_workspace(int64_t D, int64_t M, int64_t max_steps, int blocks,
                                  size_t acc_size, size_t max_smem_bytes);

template <typename scalar_t, typename acc_t>
cudaError_t bjorck_forward(const scalar_t* q, scalar_t* out, int64_t N, int64_t D, int64_t M,
                           int64_t max_steps, double tol, int blocks, acc_t* workspace,
                           size_t max_smem_bytes, cudaStream_t stream);

template <typename scalar_t, typename acc_t>
cudaError_t bjorck_backward(const scalar_t* grad, const scalar_t* q, scalar_t* grad_q, int64_t N,
                            int64_t D, int64_t M, int64_t max_steps, double tol, int blocks,
                            acc_t* workspace, size_t max_smem_bytes, cudaStream_t stream);

}  // namespace kernels
}  // namespace lvmfast
