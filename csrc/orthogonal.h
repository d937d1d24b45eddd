// Host-side pieces of the orthogonal family (Björck–Bowie) shared by the CPU and CUDA glue.
//
// Kernel contract (CPU: csrc/cpu/orthogonal.cpp, CUDA: kernels/orthogonal.cu), per matrix
// Q_0 = q[i] (D x M), for j = 0, 1, ... while j < max_steps:
//   A_j = Q_j^T Q_j;  stop if NOT (||A_j - I||_F^2 > tol^2)   (so a NaN also stops);
//   Q_{j+1} = 1.5 Q_j - 0.5 Q_j A_j.
// Backward (k = the executed step count, found by re-running the very same forward code, so
// it equals the forward's): G_k = grad[i], and for j = k-1 .. 0 with S = Q_j^T G_{j+1}:
//   G_j = 1.5 G_{j+1} - 0.5 G_{j+1} A_j - 0.5 Q_j (S + S^T);   grad q[i] = G_0.
#pragma once

#include <ATen/ATen.h>

namespace lvmfast {

inline void check_bjorck_inputs(const char* op, const at::Tensor& q, int64_t max_steps,
                                double tol) {
  TORCH_CHECK_VALUE(q.dim() >= 2, op, ": q must have shape (..., D, M), got ", q.sizes());
  TORCH_CHECK_VALUE(q.size(-1) <= q.size(-2), op, ": q must have shape (..., D, M) with M <= D, got ",
                    q.sizes());
  TORCH_CHECK_VALUE(max_steps >= 0, op, ": max_steps must be >= 0, got ", max_steps);
  TORCH_CHECK_VALUE(tol >= 0, op, ": tol must be >= 0, got ", tol);
}

}  // namespace lvmfast
