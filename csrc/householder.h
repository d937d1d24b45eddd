// Host-side pieces of the householder family shared by the CPU and CUDA glue.
//
// Kernel contract (CPU: csrc/cpu/householder.cpp, CUDA: kernels/householder.cu, Triton:
// lvmfast/triton/householder.py), per row b, with z_0 = z[b] and v_t = v[b,t] (or v[t]):
//   n_t = |v_t|^2;  z_t = z_{t-1} - (2 (v_t . z_{t-1}) / n_t) v_t,  skipped where n_t == 0.
//   forward:  out[b] = z_T.
//   backward: from g_T = grad[b] and z_T = out[b], for t = T..1 with c = 2 / n_t,
//             s = v_t . z_t, h = v_t . g_t:
//               z_{t-1}  = z_t - c s v_t                (H_t is its own inverse)
//               grad v_t = c (s g_t - h z_{t-1}) - c^2 s h v_t   (v_t . z_{t-1} = -s)
//               g_{t-1}  = g_t - c h v_t
//             and grad v_t = 0 where n_t == 0. Shared v sums grad v_t over the rows.
//   L == 1: every nonzero v_t gives H_t = -1, so grad v = 0 exactly; the glue zeroes it after the
//   kernel, whose terms (of order |z| |g| / |v_t|, cancelling) would leave their rounding there:
//   6e-4 in float32 at |v_t| = 0.004 (a test draw, 2026-11-27).
#pragma once

#include <ATen/ATen.h>

namespace lvmfast {

inline void check_householder_inputs(const char* op, const at::Tensor& z, const at::Tensor& v) {
  TORCH_CHECK_VALUE(z.dim() == 2, op, ": z must have shape (B, L), got ", z.sizes());
  const int64_t B = z.size(0), L = z.size(1);
  TORCH_CHECK_VALUE((v.dim() == 3 && v.size(0) == B && v.size(2) == L) ||
                        (v.dim() == 2 && v.size(1) == L),
                    op, ": v must have shape (", B, ", T, ", L, ") or (T, ", L, "), got ",
                    v.sizes());
  TORCH_CHECK_VALUE(v.scalar_type() == z.scalar_type(), op, ": v must have the dtype of z (",
                    z.scalar_type(), "), got ", v.scalar_type());
  TORCH_CHECK(v.device() == z.device(), op, ": all tensors must be on one device, got ",
              z.device(), " and ", v.device());
}

inline void check_householder_backward_inputs(const at::Tensor& grad, const at::Tensor& out,
                                              const at::Tensor& v) {
  check_householder_inputs("householder_flow_backward", out, v);
  TORCH_CHECK_VALUE(grad.sizes() == out.sizes(), "householder_flow_backward: grad must have shape ",
                    out.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(grad.device() == out.device(),
              "householder_flow_backward: all tensors must be on one device, got ", out.device(),
              " and ", grad.device());
}

}  // namespace lvmfast
