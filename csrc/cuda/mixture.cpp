// CUDA glue of the mixture family (log_mog): checks, dtypes, the current stream, and calls
// into kernels/mixture.cu. The math is in csrc/mixture.h; the CPU twin is csrc/cpu/mixture.cpp.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../../kernels/mixture.cuh"
#include "../mixture.h"
#include "dispatch.h"

namespace lvmfast {
namespace {

constexpr const char* kOp = "log_mog";
using cuda_glue::check_cuda_float;
using cuda_glue::check_launch;
using cuda_glue::dispatch;

std::vector<int64_t> batch_shape(const at::Tensor& z) {
  auto shape = z.sizes().vec();
  shape.pop_back();
  return shape;
}

// Calls f with (kernel scalar type, accumulation type) as template arguments via tags.
// out (N,) in acc_t = logsumexp over the components, for z2 (N, L) contiguous.
template <typename scalar_t, typename acc_t>
void run_forward(const at::Tensor& z2, const at::Tensor& mu, const at::Tensor& prec,
                 const at::Tensor& consts, at::Tensor& out) {
  const int64_t N = z2.size(0), K = mu.size(0), L = mu.size(1);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int splits = kernels::log_mog_num_splits<acc_t>(N, K, sms);
  at::Tensor work;  // per-split partial (max, sum) pairs
  if (splits > 1) work = at::empty({2 * splits * N}, out.options());
  check_launch(kOp, kernels::log_mog_forward<scalar_t, acc_t>(
      static_cast<const scalar_t*>(z2.data_ptr()), mu.data_ptr<acc_t>(), prec.data_ptr<acc_t>(),
      consts.data_ptr<acc_t>(), out.data_ptr<acc_t>(), N, K, L, splits,
      splits > 1 ? work.data_ptr<acc_t>() : nullptr, at::cuda::getCurrentCUDAStream()));
}

at::Tensor log_mog_cuda(const at::Tensor& z, const at::Tensor& means, const at::Tensor& logvars,
                        const at::Tensor& logits) {
  check_log_mog_inputs(z, means, logvars, logits);
  check_cuda_float(kOp, "z", z);
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t L = means.size(1);
  const at::Tensor z2 = z.reshape({-1, L}).contiguous();
  const int64_t N = z2.size(0);
  if (N == 0) return at::empty(batch_shape(z), z.options());
  const auto acc = log_mog_acc_type(z.scalar_type());
  auto [prec, consts] = log_mog_precompute(logvars, logits);
  const at::Tensor mu = means.to(acc).contiguous();
  at::Tensor out = at::empty({N}, z.options().dtype(acc));
  dispatch(kOp, z.scalar_type(), [&](auto types) {
    using T = decltype(types);
    run_forward<typename T::scalar, typename T::acc>(z2, mu, prec, consts, out);
  });
  return out.to(z.scalar_type()).reshape(batch_shape(z));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> log_mog_backward_cuda(
    const at::Tensor& grad, const at::Tensor& z, const at::Tensor& means,
    const at::Tensor& logvars, const at::Tensor& logits, const at::Tensor& out) {
  check_log_mog_inputs(z, means, logvars, logits);
  check_cuda_float(kOp, "z", z);
  TORCH_CHECK(grad.device() == z.device() && out.device() == z.device(),
              "log_mog_backward: grad and out must be on ", z.device(), ", got ", grad.device(),
              " and ", out.device());
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t K = means.size(0), L = means.size(1);
  const at::Tensor z2 = z.reshape({-1, L}).contiguous();
  const int64_t N = z2.size(0);
  const std::vector<int64_t> bshape = batch_shape(z);
  TORCH_CHECK_VALUE(grad.numel() == N && out.numel() == N,
                    "log_mog_backward: grad and out must have shape z.shape[:-1] = ",
                    at::IntArrayRef(bshape), ", got ", grad.sizes(), " and ", out.sizes());
  if (N == 0)
    return {at::zeros_like(z), at::zeros_like(means), at::zeros_like(logvars),
            at::zeros_like(logits)};
  const auto acc = log_mog_acc_type(z.scalar_type());
  const auto acc_opts = z.options().dtype(acc);
  auto [prec, consts] = log_mog_precompute(logvars, logits);
  const at::Tensor mu = means.to(acc).contiguous();
  const at::Tensor g = grad.reshape({N}).to(acc).contiguous();
  const bool low_precision = acc != z.scalar_type();
  at::Tensor grad_z = at::empty({N, L}, z.options());
  at::Tensor wdiff = at::zeros({K, L}, acc_opts), wsq = at::zeros({K, L}, acc_opts);
  at::Tensor wsum = at::zeros({K}, acc_opts);
  dispatch(kOp, z.scalar_type(), [&](auto types) {
    using scalar_t = typename decltype(types)::scalar;
    using acc_t = typename decltype(types)::acc;
    at::Tensor o;
    if (low_precision) {
      // The saved half / bfloat16 `out` carries ~3 digits: exp(s - out) would inherit that
      // error, so recompute the log-sum-exp in float32 first.
      o = at::empty({N}, acc_opts);
      run_forward<scalar_t, acc_t>(z2, mu, prec, consts, o);
    } else {
      o = out.reshape({N}).to(acc).contiguous();
    }
    at::Tensor work;  // grad_z accumulated in acc_t, then cast
    if (low_precision) work = at::empty({N * L}, acc_opts);
    const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const int splits = kernels::log_mog_num_splits<acc_t>(N, K, sms);
    check_launch(kOp, kernels::log_mog_backward<scalar_t, acc_t>(
        g.data_ptr<acc_t>(), static_cast<const scalar_t*>(z2.data_ptr()), mu.data_ptr<acc_t>(),
        prec.data_ptr<acc_t>(), consts.data_ptr<acc_t>(), o.data_ptr<acc_t>(),
        static_cast<scalar_t*>(grad_z.data_ptr()), wdiff.data_ptr<acc_t>(),
        wsq.data_ptr<acc_t>(), wsum.data_ptr<acc_t>(), N, K, L, splits,
        low_precision ? work.data_ptr<acc_t>() : nullptr, at::cuda::getCurrentCUDAStream()));
  });
  auto [grad_means, grad_logvars, grad_logits] =
      log_mog_assemble_param_grads(wdiff, wsq, wsum, logits);
  return {grad_z.view(z.sizes()), grad_means, grad_logvars, grad_logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CUDA, m) {
  m.impl("log_mog", &log_mog_cuda);
  m.impl("log_mog_backward", &log_mog_backward_cuda);
}

}  // namespace lvmfast
