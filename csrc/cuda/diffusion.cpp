// CUDA glue of the diffusion family: checks, dtypes, the current stream, and calls into
// kernels/diffusion.cu. The math is in csrc/diffusion.h; the CPU twin is csrc/cpu/diffusion.cpp.
// Nothing here reads device memory: the seed stays a device tensor and a bad t trips the
// kernels' device-side assert, so every op is asynchronous and CUDA-graph capturable.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#define LVMFAST_DIFFUSION_LAUNCHERS
#include "../../kernels/diffusion.cuh"
#include "../diffusion.h"
#include "dispatch.h"

namespace lvmfast {
namespace {

using cuda_glue::check_launch;
using cuda_glue::dispatch;

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
template <typename T>
const T* cptr(const c10::optional<at::Tensor>& t) {
  return t && t->defined() && t->numel() > 0 ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

void check_noise_or_seed(const char* op, const c10::optional<at::Tensor>& noise,
                         const c10::optional<at::Tensor>& seed, const char* xname,
                         const at::Tensor& x) {
  TORCH_CHECK_VALUE(noise.has_value() != seed.has_value(), op,
                    ": exactly one of noise and seed must be given");
  if (noise) diffusion_check_like(op, "noise", *noise, xname, x);
  if (seed) diffusion_check_seed(op, *seed, x);
}

std::tuple<at::Tensor, at::Tensor> q_sample_cuda(const at::Tensor& x0_in, const at::Tensor& t_in,
                                                 const at::Tensor& coefs_in,
                                                 const c10::optional<at::Tensor>& noise_in,
                                                 const c10::optional<at::Tensor>& seed) {
  const char* op = "q_sample";
  diffusion_check_rows(op, "x0", x0_in, t_in, coefs_in, 2, /*allow_half=*/true);
  check_noise_or_seed(op, noise_in, seed, "x0", x0_in);
  const c10::cuda::CUDAGuard guard(x0_in.device());
  const at::Tensor x0 = x0_in.contiguous(), t = t_in.contiguous(), coefs = coefs_in.contiguous();
  c10::optional<at::Tensor> noise;
  if (noise_in) noise = noise_in->contiguous();
  at::Tensor out = at::empty(x0.sizes(), x0.options());
  at::Tensor noise_out = noise_in ? at::empty({0}, x0.options()) : at::empty(x0.sizes(), x0.options());
  dispatch(op, x0.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    check_launch(op, kernels::diffusion_rows<scalar_t, acc_t>(
                         ptr<scalar_t>(x0), nullptr, cptr<scalar_t>(noise),
                         seed ? ptr<int64_t>(*seed) : nullptr, ptr<int64_t>(t), ptr<acc_t>(coefs),
                         coefs.size(0), 2, 1, false, ptr<scalar_t>(out),
                         noise_in ? nullptr : ptr<scalar_t>(noise_out), nullptr, 0, x0.size(0),
                         diffusion_row_size(x0), at::cuda::getCurrentCUDAStream()));
  });
  return {out, noise_out};
}

std::tuple<at::Tensor, at::Tensor> q_posterior_cuda(const at::Tensor& x0_in, const at::Tensor& xt_in,
                                                    const at::Tensor& t_in, const at::Tensor& coefs_in) {
  const char* op = "q_posterior";
  diffusion_check_rows(op, "x0", x0_in, t_in, coefs_in, 3, true);
  diffusion_check_like(op, "xt", xt_in, "x0", x0_in);
  const c10::cuda::CUDAGuard guard(x0_in.device());
  const at::Tensor x0 = x0_in.contiguous(), xt = xt_in.contiguous(), t = t_in.contiguous(),
                   coefs = coefs_in.contiguous();
  at::Tensor mean = at::empty(x0.sizes(), x0.options());
  at::Tensor var = at::empty({x0.size(0)}, x0.options());
  dispatch(op, x0.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    check_launch(op, kernels::diffusion_rows<scalar_t, acc_t>(
                         ptr<scalar_t>(x0), ptr<scalar_t>(xt), nullptr, nullptr, ptr<int64_t>(t),
                         ptr<acc_t>(coefs), coefs.size(0), 3, -1, false, ptr<scalar_t>(mean),
                         nullptr, ptr<scalar_t>(var), 2, x0.size(0), diffusion_row_size(x0),
                         at::cuda::getCurrentCUDAStream()));
  });
  return {mean, var};
}

at::Tensor p_step_cuda(const at::Tensor& xt_in, const at::Tensor& eps_in, const at::Tensor& t_in,
                       const at::Tensor& coefs_in, const c10::optional<at::Tensor>& noise_in,
                       const c10::optional<at::Tensor>& seed) {
  const char* op = "p_step";
  diffusion_check_rows(op, "xt", xt_in, t_in, coefs_in, 3, true);
  diffusion_check_like(op, "eps_pred", eps_in, "xt", xt_in);
  check_noise_or_seed(op, noise_in, seed, "xt", xt_in);
  const c10::cuda::CUDAGuard guard(xt_in.device());
  const at::Tensor xt = xt_in.contiguous(), eps = eps_in.contiguous(), t = t_in.contiguous(),
                   coefs = coefs_in.contiguous();
  c10::optional<at::Tensor> noise;
  if (noise_in) noise = noise_in->contiguous();
  at::Tensor out = at::empty(xt.sizes(), xt.options());
  dispatch(op, xt.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    check_launch(op, kernels::diffusion_rows<scalar_t, acc_t>(
                         ptr<scalar_t>(xt), ptr<scalar_t>(eps), cptr<scalar_t>(noise),
                         seed ? ptr<int64_t>(*seed) : nullptr, ptr<int64_t>(t), ptr<acc_t>(coefs),
                         coefs.size(0), 3, 2, true, ptr<scalar_t>(out), nullptr, nullptr, 0,
                         xt.size(0), diffusion_row_size(xt), at::cuda::getCurrentCUDAStream()));
  });
  return out;
}

std::vector<at::Tensor> diffusion_backward_cuda(const at::Tensor& grad_in, const at::Tensor& t_in,
                                                const at::Tensor& coefs_in, at::IntArrayRef cols) {
  const char* op = "diffusion_backward";
  diffusion_check_rows(op, "grad", grad_in, t_in, coefs_in,
                       coefs_in.dim() == 2 ? coefs_in.size(1) : -1, true);
  TORCH_CHECK_VALUE(cols.size() <= 3, op, ": at most 3 columns, got ", cols.size());
  for (int64_t col : cols)
    TORCH_CHECK_VALUE(col >= 0 && col < coefs_in.size(1), op, ": column ", col, " outside coefs ",
                      coefs_in.sizes());
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous(), t = t_in.contiguous(), coefs = coefs_in.contiguous();
  std::vector<at::Tensor> outs;
  for (size_t k = 0; k < cols.size(); ++k) outs.push_back(at::empty(grad.sizes(), grad.options()));
  dispatch(op, grad.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    int col_idx[3] = {0, 0, 0};
    scalar_t* out_ptrs[3] = {nullptr, nullptr, nullptr};
    for (size_t k = 0; k < cols.size(); ++k) {
      col_idx[k] = static_cast<int>(cols[k]);
      out_ptrs[k] = ptr<scalar_t>(outs[k]);
    }
    check_launch(op, kernels::diffusion_scale_rows<scalar_t, acc_t>(
                         ptr<scalar_t>(grad), ptr<int64_t>(t), ptr<acc_t>(coefs), coefs.size(0),
                         static_cast<int>(coefs.size(1)), col_idx, out_ptrs,
                         static_cast<int>(cols.size()), grad.size(0), diffusion_row_size(grad),
                         at::cuda::getCurrentCUDAStream()));
  });
  return outs;
}

at::Tensor forward_chain_cuda(const at::Tensor& x_in, const at::Tensor& coefs_in, const at::Tensor& seed) {
  const char* op = "forward_chain";
  diffusion_check_chain(op, x_in, coefs_in, seed, true);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), coefs = coefs_in.contiguous();
  std::vector<int64_t> shape{coefs.size(0)};
  for (int64_t s : x.sizes()) shape.push_back(s);
  at::Tensor out = at::empty(shape, x.options());
  dispatch(op, x.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    check_launch(op, kernels::forward_chain_forward<scalar_t, acc_t>(
                         ptr<scalar_t>(x), ptr<acc_t>(coefs), ptr<int64_t>(seed), ptr<scalar_t>(out),
                         coefs.size(0), x.numel(), at::cuda::getCurrentCUDAStream()));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> forward_chain_backward_cuda(const at::Tensor& grad_in,
                                                               const at::Tensor& x_in,
                                                               const at::Tensor& coefs_in,
                                                               const at::Tensor& seed,
                                                               const at::Tensor& out_in) {
  const char* op = "forward_chain_backward";
  diffusion_check_chain(op, x_in, coefs_in, seed, true);
  const int64_t T = coefs_in.size(0), N = x_in.numel();
  diffusion_check_chain_grads(op, grad_in, out_in, x_in, T);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad = grad_in.contiguous(), x = x_in.contiguous(), coefs = coefs_in.contiguous(),
                   out = out_in.contiguous();
  at::Tensor grad_x = at::empty(x.sizes(), x.options());
  at::Tensor grad_coefs = at::zeros(coefs.sizes(), coefs.options());
  dispatch(op, x.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    check_launch(op, kernels::forward_chain_backward<scalar_t, acc_t>(
                         ptr<scalar_t>(grad), ptr<scalar_t>(x), ptr<acc_t>(coefs), ptr<int64_t>(seed),
                         ptr<scalar_t>(out), ptr<scalar_t>(grad_x), ptr<acc_t>(grad_coefs), T, N,
                         at::cuda::getCurrentCUDAStream()));
  });
  return {grad_x, grad_coefs};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CUDA, m) {
  m.impl("q_sample", &q_sample_cuda);
  m.impl("q_posterior", &q_posterior_cuda);
  m.impl("p_step", &p_step_cuda);
  m.impl("diffusion_backward", &diffusion_backward_cuda);
  m.impl("forward_chain", &forward_chain_cuda);
  m.impl("forward_chain_backward", &forward_chain_backward_cuda);
}

}  // namespace lvmfast
