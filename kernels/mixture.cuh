// CUDA kernels of the mixture family (log_mog): launchers on raw pointers.
// Device code only, no torch headers: plain nvcc compiles kernels/mixture.cu anywhere.
// The math (prec, consts, s, responsibilities, the four reductions) is the contract
// written at the top of csrc/mixture.h; the design is described in mixture.cu.
//
// Types: (scalar_t, acc_t) in {(float, float), (double, double), (__half, float),
// (__nv_bfloat16, float)}. z is (N, L) row-major in scalar_t; every other array is
// contiguous in acc_t. All launchers are asynchronous on `stream` (no host-device sync,
// CUDA-graph capturable) and return the launch's cudaError_t.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace lvmfast {
namespace kernels {

// How many ranges ("splits") to cut the K components into so that a small batch still
// fills `num_sms` multiprocessors: 1 once N alone gives enough blocks (N >= ~256 * num_sms
// for float). Host-only arithmetic; pass the result to both launchers below.
template <typename acc_t>
int log_mog_num_splits(int64_t N, int64_t K, int num_sms);

// out[n] = logsumexp_k s[n,k] (in acc_t).
// workspace: 2 * splits * N acc_t when splits > 1 (per-split partial max and sum);
// may be nullptr, in which case the launcher uses splits = 1.
template <typename scalar_t, typename acc_t>
cudaError_t log_mog_forward(const scalar_t* z, const acc_t* means, const acc_t* prec,
                            const acc_t* consts, acc_t* out, int64_t N, int64_t K, int64_t L,
                            int splits, acc_t* workspace, cudaStream_t stream);

// grad_z (N, L) in scalar_t (fully written), and adds into wdiff (K, L), wsq (K, L) and
// wsum (K), which the caller zero-fills. `out` is the forward result in acc_t (for half
// inputs recompute it in float: the rounded half output is not accurate enough).
// workspace: N * L acc_t, required when scalar_t != acc_t (grad_z is accumulated there in
// acc_t, then cast); unused (may be nullptr) when scalar_t == acc_t.
template <typename scalar_t, typename acc_t>
cudaError_t log_mog_backward(const acc_t* grad, const scalar_t* z, const acc_t* means,
                             const acc_t* prec, const acc_t* consts, const acc_t* out,
                             scalar_t* grad_z, acc_t* wdiff, acc_t* wsq, acc_t* wsum, int64_t N,
                             int64_t K, int64_t L, int splits, acc_t* workspace,
                             cudaStream_t stream);

}  // namespace kernels
}  // namespace lvmfast
