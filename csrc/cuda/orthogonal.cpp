// CUDA glue of the orthogonal family (bjorck_orthonormalize): checks, dtypes, workspaces, the
// current stream, and calls into kernels/orthogonal.cu. The math is in csrc/orthogonal.h; the
// CPU twin is csrc/cpu/orthogonal.cpp.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../../kernels/orthogonal.cuh"
#include "../orthogonal.h"
#include "dispatch.h"

namespace lvmfast {
namespace {

constexpr const char* kOp = "bjorck_orthonormalize";
using cuda_glue::acc_type;
using cuda_glue::check_cuda_float;
using cuda_glue::check_launch;
using cuda_glue::dispatch;

at::Tensor bjorck_orthonormalize_cuda(const at::Tensor& q, int64_t max_steps, double tol) {
  check_bjorck_inputs("bjorck_orthonormalize", q, max_steps, tol);
  check_cuda_float("bjorck_orthonormalize", "q", q);
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor qc = q.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
  if (q.numel() == 0) return out;
  const int64_t D = q.size(-2), M = q.size(-1), N = q.numel() / (D * M);
  const auto* props = at::cuda::getCurrentDeviceProperties();
  const auto acc = acc_type(q.scalar_type());
  const size_t max_smem = props->sharedMemPerBlockOptin - 32 * 8;  // less the reduction buffer
  const int blocks = kernels::bjorck_forward_blocks(N, D, M, at::elementSize(acc), max_smem,
                                                    props->multiProcessorCount);
  const int64_t ws = kernels::bjorck_forward_workspace(D, M, blocks, at::elementSize(acc), max_smem);
  at::Tensor work;
  if (ws > 0) work = at::empty({ws}, q.options().dtype(acc));
  dispatch(kOp, q.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    check_launch(kOp, kernels::bjorck_forward<scalar_t, acc_t>(
        static_cast<const scalar_t*>(qc.data_ptr()), static_cast<scalar_t*>(out.data_ptr()), N, D,
        M, max_steps, tol, blocks, ws > 0 ? work.data_ptr<acc_t>() : nullptr, max_smem,
        at::cuda::getCurrentCUDAStream()));
  });
  return out;
}

at::Tensor bjorck_orthonormalize_backward_cuda(const at::Tensor& grad, const at::Tensor& q,
                                               int64_t max_steps, double tol) {
  check_bjorck_inputs("bjorck_orthonormalize_backward", q, max_steps, tol);
  check_cuda_float("bjorck_orthonormalize_backward", "q", q);
  TORCH_CHECK_VALUE(grad.sizes() == q.sizes(), "bjorck_orthonormalize_backward: grad must have shape ",
                    q.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(grad.device() == q.device(),
              "bjorck_orthonormalize_backward: all tensors must be on one device, got ", q.device(),
              " and ", grad.device());
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor qc = q.contiguous(), gc = grad.to(q.scalar_type()).contiguous();
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  if (q.numel() == 0) return grad_q;
  const int64_t D = q.size(-2), M = q.size(-1), N = q.numel() / (D * M);
  const auto* props = at::cuda::getCurrentDeviceProperties();
  const int blocks = kernels::bjorck_num_blocks(N, props->multiProcessorCount);
  const auto acc = acc_type(q.scalar_type());
  const size_t max_smem = props->sharedMemPerBlockOptin - 32 * 8;  // less the reduction buffer
  // Per block (not per matrix): the executed iterates of the block's current matrix.
  at::Tensor work = at::empty(
      {kernels::bjorck_backward_workspace(D, M, max_steps, blocks, at::elementSize(acc), max_smem)},
      q.options().dtype(acc));
  dispatch(kOp, q.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    check_launch(kOp, kernels::bjorck_backward<scalar_t, acc_t>(
        static_cast<const scalar_t*>(gc.data_ptr()), static_cast<const scalar_t*>(qc.data_ptr()),
        static_cast<scalar_t*>(grad_q.data_ptr()), N, D, M, max_steps, tol, blocks,
        work.data_ptr<acc_t>(), max_smem, at::cuda::getCurrentCUDAStream()));
  });
  return grad_q;
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CUDA, m) {
  m.impl("bjorck_orthonormalize", &bjorck_orthonormalize_cuda);
  m.impl("bjorck_orthonormalize_backward", &bjorck_orthonormalize_backward_cuda);
}

}  // namespace lvmfast
