// CUDA glue of the householder family (householder_flow): checks, dtypes, the current stream,
// and calls into kernels/householder.cu. The math is in csrc/householder.h; the CPU twin is
// csrc/cpu/householder.cpp.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../../kernels/householder.cuh"
#include "../householder.h"
#include "dispatch.h"

namespace lvmfast {
namespace {

constexpr const char* kOp = "householder_flow";
using cuda_glue::acc_type;
using cuda_glue::check_cuda_float;
using cuda_glue::check_launch;
using cuda_glue::dispatch;

at::Tensor householder_flow_cuda(const at::Tensor& z, const at::Tensor& v) {
  check_householder_inputs("householder_flow", z, v);
  check_cuda_float("householder_flow", "z", z);
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t B = z.size(0), L = z.size(1), T = v.size(-2);
  const bool shared = v.dim() == 2;
  const at::Tensor zc = z.contiguous(), vc = v.contiguous();
  at::Tensor out = at::empty({B, L}, z.options());
  if (B == 0 || L == 0) return out;
  const int64_t ws = kernels::householder_workspace(B, L);
  at::Tensor work;
  if (ws > 0) work = at::empty({ws}, z.options().dtype(acc_type(z.scalar_type())));
  dispatch(kOp, z.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    check_launch(kOp, kernels::householder_forward<scalar_t, acc_t>(
        static_cast<const scalar_t*>(zc.data_ptr()), static_cast<const scalar_t*>(vc.data_ptr()),
        static_cast<scalar_t*>(out.data_ptr()), B, T, L, shared,
        ws > 0 ? work.data_ptr<acc_t>() : nullptr, at::cuda::getCurrentCUDAStream()));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> householder_flow_backward_cuda(const at::Tensor& grad,
                                                                  const at::Tensor& out,
                                                                  const at::Tensor& v) {
  check_householder_backward_inputs(grad, out, v);
  check_cuda_float("householder_flow_backward", "z", out);
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t B = out.size(0), L = out.size(1), T = v.size(-2);
  const bool shared = v.dim() == 2;
  const auto acc = acc_type(out.scalar_type());
  // grad is read in place whatever its strides (an expanded gradient from a sum is not copied)
  const at::Tensor gc = grad.to(out.scalar_type()), oc = out.contiguous(), vc = v.contiguous();
  at::Tensor grad_z = at::empty({B, L}, out.options());
  at::Tensor grad_v = at::empty(v.sizes(), v.options());
  if (B == 0 || L == 0 || T == 0) {
    grad_z.copy_(gc);
    grad_v.zero_();
    return {grad_z, grad_v};
  }
  at::Tensor gacc;  // shared v: the sum over rows, in acc dtype
  if (shared) gacc = at::zeros({T, L}, out.options().dtype(acc));
  const int64_t ws = kernels::householder_workspace(B, L);
  at::Tensor work;
  if (ws > 0) work = at::empty({ws}, out.options().dtype(acc));
  dispatch(kOp, out.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    check_launch(kOp, kernels::householder_backward<scalar_t, acc_t>(
        static_cast<const scalar_t*>(gc.data_ptr()), static_cast<const scalar_t*>(oc.data_ptr()),
        static_cast<const scalar_t*>(vc.data_ptr()), static_cast<scalar_t*>(grad_z.data_ptr()),
        shared ? nullptr : static_cast<scalar_t*>(grad_v.data_ptr()),
        shared ? gacc.data_ptr<acc_t>() : nullptr, B, T, L, shared, gc.stride(0), gc.stride(1),
        ws > 0 ? work.data_ptr<acc_t>() : nullptr, at::cuda::getCurrentCUDAStream()));
  });
  if (shared) grad_v.copy_(gacc);
  if (L == 1) grad_v.zero_();  // H_t = -1 whatever v_t (csrc/householder.h)
  return {grad_z, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CUDA, m) {
  m.impl("householder_flow", &householder_flow_cuda);
  m.impl("householder_flow_backward", &householder_flow_backward_cuda);
}

}  // namespace lvmfast
