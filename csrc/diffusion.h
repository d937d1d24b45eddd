// Host-side pieces of the diffusion family shared by the CPU and CUDA glue: argument checks
// (TORCH_CHECK_VALUE -> Python ValueError naming the argument) and sizes.
//
// Kernel contract (CPU: csrc/cpu/diffusion.cpp, CUDA: kernels/diffusion.cu, Triton:
// lvmfast/triton/diffusion.py). coefs is a (T, k) table in acc_t (double for double inputs,
// float otherwise) built by lvmfast.diffusion.Schedule; x is (B, ...) with D = numel / B
// elements per sample; t is (B,) int64 in [0, T-1]. Per sample b, (c0, c1, c2) = coefs[t[b]]:
//   q_sample(x0, noise):      xt = c0 x0 + c1 noise
//   q_posterior(x0, xt):      mean = c0 x0 + c1 xt, variance[b] = c2
//   p_step(xt, eps, noise):   out = c0 xt + c1 eps + (t > 0 ? c2 noise : 0)
//   diffusion_backward:       grad_k = coefs[t, cols[k]] * grad
//   forward_chain(x):         z_i = coefs[i, 0] z_{i-1} + coefs[i, 1] eps_i, z_0 = x
// Generated noise is the Philox-4x32 + Box-Muller stream described in kernels/diffusion.cuh.
#pragma once

#include <ATen/ATen.h>

namespace lvmfast {

inline at::ScalarType diffusion_acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// D: elements per sample of a (B, ...) tensor (well defined for B = 0 too).
inline int64_t diffusion_row_size(const at::Tensor& x) {
  int64_t d = 1;
  for (int64_t i = 1; i < x.dim(); ++i) d *= x.size(i);
  return d;
}

inline void diffusion_check_float(const char* op, const char* name, const at::Tensor& x,
                                  bool allow_half) {
  const auto s = x.scalar_type();
  const bool ok = s == at::kFloat || s == at::kDouble ||
                  (allow_half && (s == at::kHalf || s == at::kBFloat16));
  TORCH_CHECK_VALUE(ok, op, ": ", name, " must be float32 or float64",
                    allow_half ? " (or float16/bfloat16 on CUDA)" : "", ", got ", s);
}

// x: (B, ...) floating; t: (B,) int64; coefs: (T, ncols) in the accumulation dtype of x.
inline void diffusion_check_rows(const char* op, const char* xname, const at::Tensor& x,
                                 const at::Tensor& t, const at::Tensor& coefs, int64_t ncols,
                                 bool allow_half) {
  diffusion_check_float(op, xname, x, allow_half);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": ", xname, " must have shape (B, ...), got ", x.sizes());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), op, ": t must have shape (",
                    x.size(0), ",), got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kLong, op, ": t must be int64 (long), got ",
                    t.scalar_type());
  TORCH_CHECK_VALUE(coefs.dim() == 2 && coefs.size(0) >= 1 && coefs.size(1) == ncols, op,
                    ": coefs must have shape (T, ", ncols, ") with T >= 1, got ", coefs.sizes());
  TORCH_CHECK_VALUE(coefs.scalar_type() == diffusion_acc_type(x.scalar_type()), op,
                    ": coefs must have dtype ", diffusion_acc_type(x.scalar_type()), " for ",
                    x.scalar_type(), " inputs, got ", coefs.scalar_type());
  TORCH_CHECK(t.device() == x.device() && coefs.device() == x.device(), op,
              ": all tensors must be on one device, got ", xname, " on ", x.device(), ", t on ",
              t.device(), ", coefs on ", coefs.device());
}

// `other` must be like x: same shape, dtype and device.
inline void diffusion_check_like(const char* op, const char* name, const at::Tensor& other,
                                 const char* xname, const at::Tensor& x) {
  TORCH_CHECK_VALUE(other.sizes() == x.sizes(), op, ": ", name, " must have the shape of ", xname,
                    " ", x.sizes(), ", got ", other.sizes());
  TORCH_CHECK_VALUE(other.scalar_type() == x.scalar_type(), op, ": ", name,
                    " must have the dtype of ", xname, " (", x.scalar_type(), "), got ",
                    other.scalar_type());
  TORCH_CHECK(other.device() == x.device(), op, ": all tensors must be on one device, got ", xname,
              " on ", x.device(), " and ", name, " on ", other.device());
}

inline void diffusion_check_seed(const char* op, const at::Tensor& seed, const at::Tensor& x) {
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong, op,
                    ": seed must be a one-element int64 tensor, got ", seed.sizes(), " ",
                    seed.scalar_type());
  TORCH_CHECK(seed.device() == x.device(), op, ": all tensors must be on one device, got seed on ",
              seed.device(), " and the data on ", x.device());
}

// forward_chain_backward's grad and out: (T, *x.shape) elements, x's dtype and device (the
// kernels read them as x's type).
inline void diffusion_check_chain_grads(const char* op, const at::Tensor& grad, const at::Tensor& out,
                                        const at::Tensor& x, int64_t T) {
  TORCH_CHECK_VALUE(grad.numel() == T * x.numel() && out.numel() == T * x.numel(), op,
                    ": grad and out must have shape (T, *x.shape)");
  auto like_x = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (",
                      x.scalar_type(), "), got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), op, ": all tensors must be on one device, got x on ",
                x.device(), " and ", name, " on ", t.device());
  };
  like_x("grad", grad);
  like_x("out", out);
}

// forward_chain's inputs: x floating (half types only on CUDA); coefs (T, 2) rows
// [sqrt(1 - beta), sqrt(beta)] in x's accumulation dtype; seed a one-element int64 tensor.
inline void diffusion_check_chain(const char* op, const at::Tensor& x, const at::Tensor& coefs,
                                  const at::Tensor& seed, bool allow_half) {
  diffusion_check_float(op, "x", x, allow_half);
  TORCH_CHECK_VALUE(coefs.dim() == 2 && coefs.size(1) == 2, op,
                    ": coefs must have shape (T, 2), got ", coefs.sizes());
  TORCH_CHECK_VALUE(coefs.scalar_type() == diffusion_acc_type(x.scalar_type()), op,
                    ": coefs must have dtype ", diffusion_acc_type(x.scalar_type()), ", got ",
                    coefs.scalar_type());
  TORCH_CHECK_VALUE(coefs.size(0) < (int64_t(1) << 32), op, ": at most 2^32 - 1 steps");
  TORCH_CHECK(coefs.device() == x.device(), op, ": all tensors must be on one device, got x on ",
              x.device(), " and coefs on ", coefs.device());
  diffusion_check_seed(op, seed, x);
}

}  // namespace lvmfast
