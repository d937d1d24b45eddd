// Host-side pieces of the mixture family: argument checks (CPU and CUDA glue), and
// for the CUDA glue the per-component precomputation and the assembly of the four
// gradients from what the kernels reduce (the CPU glue does both in one pass of its
// own, csrc/cpu/mixture.cpp: the torch ops cost as much as the kernel at small shapes).
//
// Kernel contract (CPU: csrc/cpu/mixture.cpp, CUDA: kernels/mixture.cu, Triton:
// lvmfast/triton/mixture.py). With acc_t = double for double inputs, float otherwise:
//   prec[k,l]  = exp(-logvars[k,l])
//   consts[k]  = log_softmax(logits)[k] - 0.5 * sum_l logvars[k,l] - 0.5 * L * log(2 pi)
//   s[n,k]     = consts[k] - 0.5 * sum_l (z[n,l] - means[k,l])^2 * prec[k,l]   (direct form)
//   forward:   out[n] = logsumexp_k s[n,k]                         (online max/sum)
//   backward:  r[n,k] = grad[n] * exp(s[n,k] - out[n])             (recomputed)
//              grad_z[n,l] = -sum_k r[n,k] (z[n,l] - means[k,l]) prec[k,l]
//              wdiff[k,l]  =  sum_n r[n,k] (z[n,l] - means[k,l]) prec[k,l]   (= grad_means)
//              wsq[k,l]    =  sum_n r[n,k] (z[n,l] - means[k,l])^2 prec[k,l]
//              wsum[k]     =  sum_n r[n,k]
#pragma once

#include <ATen/ATen.h>
#include <cmath>
#include <tuple>

namespace lvmfast {

inline void check_log_mog_inputs(const at::Tensor& z, const at::Tensor& means,
                                 const at::Tensor& logvars, const at::Tensor& logits) {
  TORCH_CHECK_VALUE(z.dim() >= 1, "log_mog: z must have shape (..., L), got ", z.sizes());
  TORCH_CHECK_VALUE(means.dim() == 2, "log_mog: means must have shape (K, L), got ", means.sizes());
  const int64_t K = means.size(0), L = means.size(1);
  TORCH_CHECK_VALUE(K >= 1 && L >= 1, "log_mog: means must have K >= 1 and L >= 1, got ",
                    means.sizes());
  TORCH_CHECK_VALUE(z.size(-1) == L, "log_mog: z must have shape (..., ", L, ") to match means, got ",
                    z.sizes());
  TORCH_CHECK_VALUE(logvars.sizes() == means.sizes(), "log_mog: logvars must have shape ",
                    means.sizes(), " like means, got ", logvars.sizes());
  TORCH_CHECK_VALUE(logits.dim() == 1 && logits.size(0) == K, "log_mog: logits must have shape (",
                    K, ",), got ", logits.sizes());
  for (const at::Tensor* t : {&means, &logvars, &logits}) {
    TORCH_CHECK_VALUE(t->scalar_type() == z.scalar_type(),
                      "log_mog: means, logvars and logits must have the dtype of z (",
                      z.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == z.device(), "log_mog: all tensors must be on one device, got ",
                z.device(), " and ", t->device());
  }
}

inline at::ScalarType log_mog_acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// (prec, consts) in the accumulation dtype, contiguous.
inline std::tuple<at::Tensor, at::Tensor> log_mog_precompute(const at::Tensor& logvars,
                                                             const at::Tensor& logits) {
  const auto acc = log_mog_acc_type(logvars.scalar_type());
  const at::Tensor lv = logvars.to(acc);
  const double half_log_2pi = 0.5 * std::log(2.0 * M_PI);
  at::Tensor prec = at::exp(-lv).contiguous();
  at::Tensor consts = (at::log_softmax(logits.to(acc), 0) - 0.5 * lv.sum(1) -
                       half_log_2pi * static_cast<double>(lv.size(1)))
                          .contiguous();
  return {prec, consts};
}

// grad_means, grad_logvars, grad_logits from the kernels' reductions (all in acc dtype),
// contiguous like the fake kernels promise.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> log_mog_assemble_param_grads(
    const at::Tensor& wdiff, const at::Tensor& wsq, const at::Tensor& wsum,
    const at::Tensor& logits) {
  const auto dtype = logits.scalar_type();
  const at::Tensor softmax = at::softmax(logits.to(wsum.scalar_type()), 0);
  return {wdiff.to(dtype).contiguous(), (0.5 * (wsq - wsum.unsqueeze(1))).to(dtype).contiguous(),
          (wsum - softmax * wsum.sum()).to(dtype).contiguous()};
}

}  // namespace lvmfast
