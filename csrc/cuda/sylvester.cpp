// CUDA glue of the sylvester family (sylvester_flow): checks, dtypes, the current stream, and
// calls into kernels/sylvester.cu. The math is in csrc/sylvester.h; the CPU twin is
// csrc/cpu/sylvester.cpp. Ran green on an H100 (2026-11-26); tests/cuda_emulator runs it on the CPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../../kernels/sylvester.cuh"
#include "../sylvester.h"
#include "dispatch.h"

namespace lvmfast {
namespace {

constexpr const char* kOp = "sylvester_flow";
using cuda_glue::check_cuda_float;
using cuda_glue::check_launch;
using cuda_glue::dispatch;

template <typename T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}
template <typename T>
T* mut_ptr(at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? static_cast<T*>(t.data_ptr()) : nullptr;
}

struct Contiguous {
  at::Tensor z, r1, r2, b, q;  // q undefined when None
  bool q_columns;              // q's matrices column-major (the kernels read them so)
};

Contiguous contiguous_inputs(const at::Tensor& z, const at::Tensor& r1, const at::Tensor& r2,
                             const at::Tensor& b, const std::optional<at::Tensor>& q) {
  // q's matrices column-major with the batch outermost, as torch.linalg.qr returns them on a GPU,
  // are read in place: the copy took 3/4 of the orthogonal kernel's time (H100, 2026-11-26)
  const bool q_columns = q.has_value() && !q->is_contiguous() && q->mT().is_contiguous();
  return {z.contiguous(), r1.contiguous(), r2.contiguous(), b.contiguous(),
          !q.has_value() ? at::Tensor() : q_columns ? *q : q->contiguous(), q_columns};
}

kernels::SylvesterDims dims_of(const SylvesterShape& s, const Contiguous& in) {
  return {s.B,
          s.D,
          s.M,
          sylvester_batch_stride(in.r1, 3),
          sylvester_batch_stride(in.r2, 3),
          sylvester_batch_stride(in.b, 2),
          in.q.defined() ? sylvester_batch_stride(in.q, 3) : 0,
          static_cast<int>(s.qkind),
          in.q_columns};
}

int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

std::tuple<at::Tensor, at::Tensor> sylvester_flow_cuda(const at::Tensor& z, const at::Tensor& r1,
                                                       const at::Tensor& r2, const at::Tensor& b,
                                                       const std::optional<at::Tensor>& q,
                                                       bool reverse) {
  const SylvesterShape s = check_sylvester_inputs(z, r1, r2, b, q, reverse);
  check_cuda_float(kOp, "z", z);
  const c10::cuda::CUDAGuard guard(z.device());
  const Contiguous in = contiguous_inputs(z, r1, r2, b, q);
  at::Tensor out = at::empty({s.B, s.D}, z.options());
  at::Tensor logdet = at::empty({s.B}, z.options());
  if (s.B == 0) return {out, logdet};
  const kernels::SylvesterDims dims = dims_of(s, in);
  dispatch(kOp, z.scalar_type(), [&](auto types) {
    using T = typename decltype(types)::scalar;
    using A = typename decltype(types)::acc;
    check_launch(kOp, kernels::sylvester_forward<T, A>(
        ptr<T>(in.z), ptr<T>(in.r1), ptr<T>(in.r2), ptr<T>(in.b), ptr<T>(in.q), mut_ptr<T>(out),
        mut_ptr<T>(logdet), dims, num_sms(), at::cuda::getCurrentCUDAStream()));
  });
  return {out, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sylvester_flow_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& grad_logdet, const at::Tensor& z,
    const at::Tensor& r1, const at::Tensor& r2, const at::Tensor& b,
    const std::optional<at::Tensor>& q, bool reverse) {
  const SylvesterShape s = check_sylvester_inputs(z, r1, r2, b, q, reverse);
  check_cuda_float(kOp, "z", z);
  TORCH_CHECK_VALUE(grad_out.sizes() == z.sizes() && grad_logdet.dim() == 1 &&
                        grad_logdet.size(0) == s.B,
                    "sylvester_flow_backward: grad_out must have the shape of z and grad_logdet (B,)");
  TORCH_CHECK(grad_out.device() == z.device() && grad_logdet.device() == z.device(),
              "sylvester_flow_backward: all tensors must be on one device, got z on ", z.device(),
              ", grad_out on ", grad_out.device(), " and grad_logdet on ", grad_logdet.device());
  const c10::cuda::CUDAGuard guard(z.device());
  const Contiguous in = contiguous_inputs(z, r1, r2, b, q);
  const auto dtype = z.scalar_type();
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  // read in place whatever their strides (an expanded gradient from a sum is not copied)
  const at::Tensor g = grad_out.to(dtype), gl = grad_logdet.to(dtype);
  const kernels::SylvesterGradStrides grad_strides{g.stride(0), g.stride(1), gl.stride(0)};
  const bool sh_r1 = in.r1.dim() == 2, sh_r2 = in.r2.dim() == 2, sh_b = in.b.dim() == 1,
             sh_q = in.q.defined() && in.q.dim() == 2;
  const int64_t MM = s.M * s.M, DM = s.D * s.M;
  // Amortized gradients are fully written by the kernel; shared ones come from the workspace.
  at::Tensor gz = at::empty({s.B, s.D}, z.options());
  at::Tensor gr1 = sh_r1 ? at::Tensor() : at::empty(in.r1.sizes(), z.options());
  at::Tensor gr2 = sh_r2 ? at::Tensor() : at::empty(in.r2.sizes(), z.options());
  at::Tensor gb = sh_b ? at::Tensor() : at::empty(in.b.sizes(), z.options());
  at::Tensor gq = in.q.defined() && !sh_q ? at::empty(in.q.sizes(), z.options()) : at::Tensor();
  const int64_t shared_size =
      (sh_r1 ? MM : 0) + (sh_r2 ? MM : 0) + (sh_b ? s.M : 0) + (sh_q ? DM : 0);
  const int sms = num_sms();
  const int blocks = kernels::sylvester_backward_blocks(s.B, shared_size > 0, sms);
  at::Tensor workspace;  // (blocks, shared_size) partial sums, only with shared parameters
  if (shared_size > 0)
    workspace = at::zeros({std::max(blocks, 1), shared_size}, z.options().dtype(acc));
  if (s.B > 0) {
    const kernels::SylvesterDims dims = dims_of(s, in);
    dispatch(kOp, dtype, [&](auto types) {
      using T = typename decltype(types)::scalar;
      using A = typename decltype(types)::acc;
      check_launch(kOp, kernels::sylvester_backward<T, A>(
          ptr<T>(g), ptr<T>(gl), ptr<T>(in.z), ptr<T>(in.r1), ptr<T>(in.r2), ptr<T>(in.b),
          ptr<T>(in.q), mut_ptr<T>(gz), mut_ptr<T>(gr1), mut_ptr<T>(gr2), mut_ptr<T>(gb),
          mut_ptr<T>(gq), shared_size > 0 ? workspace.data_ptr<A>() : nullptr, shared_size, dims,
          grad_strides, blocks, sms, at::cuda::getCurrentCUDAStream()));
    });
  }
  // Shared parameters: sum the blocks' partial sums (zeros for an empty batch), same layout
  // as the kernel's [r1][r2][b][q].
  if (shared_size > 0) {
    const at::Tensor total = workspace.sum(0);
    int64_t offset = 0;
    auto take = [&](at::Tensor& grad, bool shared, int64_t size, const at::Tensor& like) {
      if (!shared) return;
      grad = total.narrow(0, offset, size).view(like.sizes()).to(dtype).contiguous();
      offset += size;
    };
    take(gr1, sh_r1, MM, in.r1);
    take(gr2, sh_r2, MM, in.r2);
    take(gb, sh_b, s.M, in.b);
    if (in.q.defined()) take(gq, sh_q, DM, in.q);
  }
  if (!gq.defined()) gq = at::empty({0}, z.options());
  return {gz, gr1, gr2, gb, gq};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CUDA, m) {
  m.impl("sylvester_flow", &sylvester_flow_cuda);
  m.impl("sylvester_flow_backward", &sylvester_flow_backward_cuda);
}

}  // namespace lvmfast
