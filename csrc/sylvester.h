// Host-side pieces of the sylvester family shared by the CPU and CUDA glue: argument checks
// and the per-parameter batch strides.
//
// Kernel contract (CPU: csrc/cpu/sylvester.cpp, CUDA: kernels/sylvester.cu), per sample n,
// with R1, R2 the upper triangles (diagonal included) of r1[n], r2[n]:
//   y  = Q^T z            (Q = I, the reversal permutation, or the dense q[n] of shape (D, M))
//   a  = R2 y + b,  h = tanh(a),  s = 1 - h^2,  c = R1 h
//   z' = z + Q c,   logdet = sum_m log|L_m|,  L_m = 1 + s_m R1_mm R2_mm
// Backward, from g = dL/dz' and gl = dL/dlogdet (nothing saved but the inputs: y, h, c are
// recomputed):
//   gc = Q^T g,  gh = R1^T gc,  ga = s * (gh - 2 gl h R1_mm R2_mm / L)
//   gy = R2^T ga,  grad_z = g + Q gy,  grad_b = ga
//   grad_r1 = triu(gc h^T) + diag(gl s R2_mm / L),  grad_r2 = triu(ga y^T) + diag(gl s R1_mm / L)
//   grad_q  = z gy^T + g c^T
// Entries below the diagonal of grad_r1 / grad_r2 are exactly 0. A shared parameter (no batch
// dimension) has batch stride 0 and its gradient is the sum over the batch.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

namespace lvmfast {

// How Q is given: implicit identity (triangular SNF), implicit reversal permutation (odd
// triangular flows), or a dense (D, M) matrix per sample or shared.
enum class SylvesterQ : int { kIdentity = 0, kReverse = 1, kDense = 2 };

struct SylvesterShape {
  int64_t B, D, M;
  SylvesterQ qkind;
};

inline SylvesterShape check_sylvester_inputs(const at::Tensor& z, const at::Tensor& r1,
                                             const at::Tensor& r2, const at::Tensor& b,
                                             const std::optional<at::Tensor>& q, bool reverse) {
  TORCH_CHECK_VALUE(z.dim() == 2, "sylvester_flow: z must have shape (B, D), got ", z.sizes());
  const int64_t B = z.size(0), D = z.size(1);
  TORCH_CHECK_VALUE(D >= 1, "sylvester_flow: z must have D >= 1, got ", z.sizes());
  int64_t M = D;
  SylvesterQ qkind = reverse ? SylvesterQ::kReverse : SylvesterQ::kIdentity;
  if (q.has_value()) {
    TORCH_CHECK_VALUE(!reverse, "sylvester_flow: reverse=True is only valid with q=None");
    const at::Tensor& qt = *q;
    TORCH_CHECK_VALUE((qt.dim() == 3 && qt.size(0) == B) || qt.dim() == 2,
                      "sylvester_flow: q must have shape (", B, ", ", D, ", M) or (", D,
                      ", M), got ", qt.sizes());
    TORCH_CHECK_VALUE(qt.size(-2) == D, "sylvester_flow: q must have shape (", B, ", ", D,
                      ", M) or (", D, ", M) to match z, got ", qt.sizes());
    M = qt.size(-1);
    TORCH_CHECK_VALUE(M >= 1 && M <= D, "sylvester_flow: q must have 1 <= M <= D = ", D,
                      ", got ", qt.sizes());
    qkind = SylvesterQ::kDense;
  }
  const std::pair<const char*, const at::Tensor*> mats[] = {{"r1", &r1}, {"r2", &r2}};
  for (const auto& [name, t] : mats) {
    TORCH_CHECK_VALUE((t->dim() == 3 && t->size(0) == B) || t->dim() == 2, "sylvester_flow: ",
                      name, " must have shape (", B, ", ", M, ", ", M, ") or (", M, ", ", M,
                      "), got ", t->sizes());
    TORCH_CHECK_VALUE(t->size(-1) == M && t->size(-2) == M, "sylvester_flow: ", name,
                      " must be square of size M = ", M, ": shape (", B, ", ", M, ", ", M,
                      ") or (", M, ", ", M, "), got ", t->sizes());
  }
  TORCH_CHECK_VALUE(((b.dim() == 2 && b.size(0) == B) || b.dim() == 1) && b.size(-1) == M,
                    "sylvester_flow: b must have shape (", B, ", ", M, ") or (", M, ",), got ",
                    b.sizes());
  std::vector<const at::Tensor*> params = {&r1, &r2, &b};
  if (q.has_value()) params.push_back(&*q);
  for (const at::Tensor* t : params) {
    TORCH_CHECK_VALUE(t->scalar_type() == z.scalar_type(),
                      "sylvester_flow: r1, r2, b and q must have the dtype of z (",
                      z.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == z.device(), "sylvester_flow: all tensors must be on one device, got ",
                z.device(), " and ", t->device());
  }
  return {B, D, M, qkind};
}

// Elements between consecutive samples of a contiguous parameter: 0 when it is shared.
inline int64_t sylvester_batch_stride(const at::Tensor& t, int64_t batched_dim) {
  if (t.dim() != batched_dim) return 0;
  return t.size(0) == 0 ? 0 : t.numel() / t.size(0);
}

}  // namespace lvmfast
