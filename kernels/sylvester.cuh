// CUDA kernels of the sylvester family (sylvester_flow): launchers on raw pointers.
// Device code only, no torch headers: plain nvcc compiles kernels/sylvester.cu anywhere.
// The math (y, a, h, c, the log-det and every gradient) is the contract written at the top
// of csrc/sylvester.h; the design and the H100 floor are described in sylvester.cu.
//
// Types: (scalar_t, acc_t) in {(float, float), (double, double), (__half, float),
// (__nv_bfloat16, float)}. Arrays are in scalar_t and contiguous, but for grad_out and
// grad_logdet (SylvesterGradStrides): z, out, grad_out, grad_z (B, D); r1, r2 (B, M, M) or
// (M, M); b (B, M) or (M,); q (B, D, M) or (D, M); logdet, grad_logdet (B). A shared parameter
// has batch stride 0. All launchers are asynchronous on
// `stream` (no host-device sync, CUDA-graph capturable) and return the launch's cudaError_t.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace lvmfast {
namespace kernels {

struct SylvesterDims {
  int64_t B, D, M;
  int64_t r1_bs, r2_bs, b_bs, q_bs;  // batch strides in elements, 0 for a shared parameter
  int qkind;                         // 0: Q = I, 1: reversal permutation, 2: dense q
  // q's matrices column-major (q[d, m] at d + m D), as torch.linalg.qr returns them on a GPU:
  // read in place rather than copied first
  bool q_columns;
};

// Element strides of the backward's incoming gradients: grad_out's rows and columns, and
// grad_logdet's. Any strides, 0 included: an expanded gradient (as autograd makes for a sum) is
// read in place instead of being copied first.
struct SylvesterGradStrides {
  int64_t out_row, out_col, logdet;
};

// Thread blocks the backward launcher uses (each walks samples blockIdx.x, + gridDim.x, ...).
// With shared parameters every block keeps its own partial gradient sums in the workspace,
// so fewer blocks are used then. Host-only arithmetic.
int sylvester_backward_blocks(int64_t B, bool any_shared, int num_sms);

// out = z + Q R1 tanh(R2 Q^T z + b), logdet (both in scalar_t).
template <typename scalar_t, typename acc_t>
cudaError_t sylvester_forward(const scalar_t* z, const scalar_t* r1, const scalar_t* r2,
                              const scalar_t* b, const scalar_t* q, scalar_t* out,
                              scalar_t* logdet, const SylvesterDims& dims, int num_sms,
                              cudaStream_t stream);

// grad_z always, and the gradients of the amortized parameters (batch stride != 0), fully
// written (zeros below the diagonals of grad_r1, grad_r2). Each shared parameter's gradient
// is instead accumulated per block into `workspace` (blocks x shared_size acc_t, zero-filled by
// the caller, laid out [r1 (M*M)] [r2 (M*M)] [b (M)] [q (D*M)] with only the shared ones
// present); the caller sums it over blocks. Pointers of absent gradients may be nullptr.
// blocks: sylvester_backward_blocks(B, any_shared, num_sms), with the same num_sms.
template <typename scalar_t, typename acc_t>
cudaError_t sylvester_backward(const scalar_t* grad_out, const scalar_t* grad_logdet,
                               const scalar_t* z, const scalar_t* r1, const scalar_t* r2,
                               const scalar_t* b, const scalar_t* q, scalar_t* grad_z,
                               scalar_t* grad_r1, scalar_t* grad_r2, scalar_t* grad_b,
                               scalar_t* grad_q, acc_t* workspace, int64_t shared_size,
                               const SylvesterDims& dims, const SylvesterGradStrides& grad_strides,
                               int blocks, int num_sms, cudaStream_t stream);

}  // namespace kernels
}  // namespace lvmfast
