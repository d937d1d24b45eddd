// CPU kernels of the sylvester family (sylvester_flow): threads over samples, SIMD along the
// rows of R1, R2 and Q. The math is in csrc/sylvester.h.
//
// Every matrix is visited row by row so that each access is contiguous: R v and Q^T v as
// dot products or axpys over rows, and only the upper part R[m, m:] of a triangular row is
// read. One sample's R1, R2 (and Q) stay in L1/L2 while the sample is processed, so the
// backward pass recomputes y, h and c at the cost of a second, cached read.
// Memory floor at the benchmark shape (B = 1024, D = M = 64, amortized float32): the forward
// reads the two upper triangles (16.6 MB), the backward reads them again and writes the two
// full (B, M, M) gradients (33.6 MB): the op is memory-bound (about 4 flops a byte loaded).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../sylvester.h"
#include "memory.h"
#include "simd.h"

namespace lvmfast {
namespace {

template <typename T, int B>
LVMFAST_INLINE T dot(const T* x, const T* y, int64_t n) {
  using V = typename Simd<T, B>::vec;
  constexpr int W = Simd<T, B>::width;
  V acc0{}, acc1{};
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    V a0, b0, a1, b1;
    std::memcpy(&a0, x + i, sizeof(V));
    std::memcpy(&b0, y + i, sizeof(V));
    std::memcpy(&a1, x + i + W, sizeof(V));
    std::memcpy(&b1, y + i + W, sizeof(V));
    acc0 += a0 * b0;
    acc1 += a1 * b1;
  }
  if (i + W <= n) {
    V a0, b0;
    std::memcpy(&a0, x + i, sizeof(V));
    std::memcpy(&b0, y + i, sizeof(V));
    acc0 += a0 * b0;
    i += W;
  }
  acc0 += acc1;
  T s = 0;
  for (int j = 0; j < W; ++j) s += acc0[j];
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

// y[0:n] += alpha * x[0:n] (the compiler vectorizes these plain loops in every clone).
template <typename T>
LVMFAST_INLINE void axpy(T alpha, const T* __restrict x, T* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// dst[0:n] (=|+=) alpha * x[0:n] + beta * w[0:n]; w may be null (beta ignored).
template <typename T>
LVMFAST_INLINE void write_scaled(T* __restrict dst, bool accumulate, T alpha, const T* __restrict x,
                                 T beta, const T* __restrict w, int64_t n) {
  if (w == nullptr) {
    if (accumulate)
      for (int64_t i = 0; i < n; ++i) dst[i] += alpha * x[i];
    else
      for (int64_t i = 0; i < n; ++i) dst[i] = alpha * x[i];
  } else {
    if (accumulate)
      for (int64_t i = 0; i < n; ++i) dst[i] += alpha * x[i] + beta * w[i];
    else
      for (int64_t i = 0; i < n; ++i) dst[i] = alpha * x[i] + beta * w[i];
  }
}

// dst (M, M) (=|+=) triu(u v^T) + diag(extra): the gradient of an upper-triangular factor,
// exact zeros below the diagonal when stored.
template <typename T>
LVMFAST_INLINE void write_triangle(T* dst, bool accumulate, const T* u, const T* v,
                                   const T* extra, int64_t M) {
  for (int64_t m = 0; m < M; ++m) {
    T* __restrict row = dst + m * M;
    const T um = u[m];
    if (accumulate) {
      for (int64_t k = m; k < M; ++k) row[k] += um * v[k];
    } else {
      // The whole row in one branch-free pass (zeros by select): vectorizes with no scalar
      // prologue or epilogue at the ragged start of the triangle.
      for (int64_t k = 0; k < M; ++k) row[k] = k >= m ? um * v[k] : T(0);
    }
    row[m] += extra[m];
  }
}

template <typename T>
struct Args {
  const T *z, *r1, *r2, *b, *q;
  int64_t D, M;
  int64_t r1_bs, r2_bs, b_bs, q_bs;  // batch strides, 0 for a shared parameter
  SylvesterQ qkind;
};

// Where one sample's gradient of a parameter goes: its own slice (stored), or the calling
// thread's accumulator of a shared parameter (added).
template <typename T>
struct GradSink {
  T* base;
  int64_t stride;  // per-sample stride when stored; 0 when accumulating
  bool accumulate;
  LVMFAST_INLINE T* at(int64_t n) const { return base + n * stride; }
};

// y = Q^T v for the three kinds of Q.
template <typename T>
LVMFAST_INLINE void apply_qt(const Args<T>& p, const T* Q, const T* v, T* y) {
  const int64_t D = p.D, M = p.M;
  if (p.qkind == SylvesterQ::kIdentity) {
    std::copy(v, v + M, y);
  } else if (p.qkind == SylvesterQ::kReverse) {
    for (int64_t m = 0; m < M; ++m) y[m] = v[D - 1 - m];
  } else {
    std::fill(y, y + M, T(0));
    for (int64_t d = 0; d < D; ++d) axpy(v[d], Q + d * M, y, M);
  }
}

// out = base + Q c (out may alias nothing).
template <typename T, int B>
LVMFAST_INLINE void apply_q_add(const Args<T>& p, const T* Q, const T* base, const T* c, T* out) {
  const int64_t D = p.D, M = p.M;
  if (p.qkind == SylvesterQ::kIdentity) {
    for (int64_t d = 0; d < D; ++d) out[d] = base[d] + c[d];
  } else if (p.qkind == SylvesterQ::kReverse) {
    for (int64_t d = 0; d < D; ++d) out[d] = base[d] + c[D - 1 - d];
  } else {
    for (int64_t d = 0; d < D; ++d) out[d] = base[d] + dot<T, B>(Q + d * M, c, M);
  }
}

// a = R2 y + b (upper triangle only), h = tanh(a).
template <typename T, int B>
LVMFAST_INLINE void hidden(const T* R2, const T* bv, const T* y, T* h, int64_t M) {
  for (int64_t m = 0; m < M; ++m) h[m] = dot<T, B>(R2 + m * M + m, y + m, M - m) + bv[m];
  tanh_inplace<T, B>(h, M);
}

// scratch: 3 M elements.
template <typename T, int B>
LVMFAST_INLINE void forward_sample(const Args<T>& p, int64_t n, T* out, T* logdet, T* scratch) {
  const int64_t D = p.D, M = p.M;
  const T* z = p.z + n * D;
  const T* R1 = p.r1 + n * p.r1_bs;
  const T* R2 = p.r2 + n * p.r2_bs;
  const T* Q = p.q == nullptr ? nullptr : p.q + n * p.q_bs;
  T *y = scratch, *h = scratch + M, *c = scratch + 2 * M;
  apply_qt(p, Q, z, y);
  hidden<T, B>(R2, p.b + n * p.b_bs, y, h, M);
  T ld = 0;
  for (int64_t m = 0; m < M; ++m) {
    ld += std::log(std::abs(T(1) + (T(1) - h[m] * h[m]) * R1[m * M + m] * R2[m * M + m]));
    c[m] = dot<T, B>(R1 + m * M + m, h + m, M - m);
  }
  apply_q_add<T, B>(p, Q, z, c, out + n * D);
  logdet[n] = ld;
}

template <typename T>
struct BackwardSinks {
  GradSink<T> r1, r2, b, q;
};

// scratch: 9 M elements.
template <typename T, int B>
LVMFAST_INLINE void backward_sample(const Args<T>& p, int64_t n, const T* gout, const T* glog,
                                    T* gz_all, const BackwardSinks<T>& sink, T* scratch) {
  const int64_t D = p.D, M = p.M;
  const bool dense = p.qkind == SylvesterQ::kDense;
  const T* z = p.z + n * D;
  const T* g = gout + n * D;
  const T gl = glog[n];
  const T* R1 = p.r1 + n * p.r1_bs;
  const T* R2 = p.r2 + n * p.r2_bs;
  const T* Q = dense ? p.q + n * p.q_bs : nullptr;
  T *y = scratch, *h = y + M, *gc = h + M, *gh = gc + M, *ga = gh + M, *gy = ga + M;
  T *c = gy + M, *dg1 = c + M, *dg2 = dg1 + M;
  // Recompute the forward quantities; gc = Q^T g shares the pass over Q's rows with y.
  if (dense) {
    std::fill(y, y + M, T(0));
    std::fill(gc, gc + M, T(0));
    for (int64_t d = 0; d < D; ++d) {
      axpy(z[d], Q + d * M, y, M);
      axpy(g[d], Q + d * M, gc, M);
    }
  } else {
    apply_qt(p, Q, z, y);
    apply_qt(p, Q, g, gc);
  }
  hidden<T, B>(R2, p.b + n * p.b_bs, y, h, M);
  // log-det terms: their h-gradient goes into ga (below), their diagonal ones into dg1, dg2.
  for (int64_t m = 0; m < M; ++m) {
    const T r1d = R1[m * M + m], r2d = R2[m * M + m];
    const T s = T(1) - h[m] * h[m];
    const T w = gl / (T(1) + s * r1d * r2d);
    ga[m] = -T(2) * h[m] * r1d * r2d * w;  // d logdet / d h_m, completed after gh
    dg1[m] = s * r2d * w;
    dg2[m] = s * r1d * w;
  }
  // Reads of a matrix and writes of its gradient are kept in separate loops: the two sit at
  // the same offset modulo 4 KiB (equal-sized arrays), and interleaving them makes every load
  // wait on the 4K-aliased store before it (measured 3x slower).
  // Pass over R1's rows: c (for grad_q) and gh = R1^T gc; then grad_r1.
  std::fill(gh, gh + M, T(0));
  for (int64_t m = 0; m < M; ++m) {
    const T* row = R1 + m * M + m;
    if (dense) c[m] = dot<T, B>(row, h + m, M - m);
    axpy(gc[m], row, gh + m, M - m);
  }
  write_triangle(sink.r1.at(n), sink.r1.accumulate, gc, h, dg1, M);
  for (int64_t m = 0; m < M; ++m) ga[m] = (T(1) - h[m] * h[m]) * (gh[m] + ga[m]);
  write_scaled(sink.b.at(n), sink.b.accumulate, T(1), ga, T(0), static_cast<const T*>(nullptr), M);
  // Pass over R2's rows: gy = R2^T ga; then grad_r2.
  std::fill(gy, gy + M, T(0));
  for (int64_t m = 0; m < M; ++m) axpy(ga[m], R2 + m * M + m, gy + m, M - m);
  write_triangle(sink.r2.at(n), sink.r2.accumulate, ga, y, dg2, M);
  // grad_z = g + Q gy; then grad_q = z gy^T + g c^T.
  T* gz = gz_all + n * D;
  if (dense) {
    for (int64_t d = 0; d < D; ++d) gz[d] = g[d] + dot<T, B>(Q + d * M, gy, M);
    T* gq = sink.q.at(n);
    for (int64_t d = 0; d < D; ++d) write_scaled(gq + d * M, sink.q.accumulate, z[d], gy, g[d], c, M);
  } else {
    apply_q_add<T, B>(p, Q, g, gy, gz);
  }
}

// Multiversioned entry points over a range of samples (non-template, so target_clones applies),
// in 64-byte vectors with AVX-512 and 32-byte ones otherwise (simd.h).
LVMFAST_MULTIVERSION void forward_range(const Args<float>& p, int64_t n0, int64_t n1, float* out,
                                        float* logdet, float* scratch) {
  if (wide_vectors())
    for (int64_t n = n0; n < n1; ++n) forward_sample<float, 64>(p, n, out, logdet, scratch);
  else
    for (int64_t n = n0; n < n1; ++n) forward_sample<float, 32>(p, n, out, logdet, scratch);
}
LVMFAST_MULTIVERSION void forward_range(const Args<double>& p, int64_t n0, int64_t n1, double* out,
                                        double* logdet, double* scratch) {
  if (wide_vectors())
    for (int64_t n = n0; n < n1; ++n) forward_sample<double, 64>(p, n, out, logdet, scratch);
  else
    for (int64_t n = n0; n < n1; ++n) forward_sample<double, 32>(p, n, out, logdet, scratch);
}
LVMFAST_MULTIVERSION void backward_range(const Args<float>& p, int64_t n0, int64_t n1,
                                         const float* gout, const float* glog, float* gz,
                                         const BackwardSinks<float>& sink, float* scratch) {
  if (wide_vectors())
    for (int64_t n = n0; n < n1; ++n) backward_sample<float, 64>(p, n, gout, glog, gz, sink, scratch);
  else
    for (int64_t n = n0; n < n1; ++n) backward_sample<float, 32>(p, n, gout, glog, gz, sink, scratch);
}
LVMFAST_MULTIVERSION void backward_range(const Args<double>& p, int64_t n0, int64_t n1,
                                         const double* gout, const double* glog, double* gz,
                                         const BackwardSinks<double>& sink, double* scratch) {
  if (wide_vectors())
    for (int64_t n = n0; n < n1; ++n) backward_sample<double, 64>(p, n, gout, glog, gz, sink, scratch);
  else
    for (int64_t n = n0; n < n1; ++n) backward_sample<double, 32>(p, n, gout, glog, gz, sink, scratch);
}

void check_cpu(const at::Tensor& z) {
  TORCH_CHECK_VALUE(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
                    "sylvester_flow: on the CPU z must be float32 or float64, got ", z.scalar_type());
}

// Samples per parallel task: about 64K multiply-adds of work each.
int64_t grain(int64_t D, int64_t M) { return std::max<int64_t>(1, 65536 / (2 * D * M + M * M + 1)); }

template <typename T>
Args<T> make_args(const SylvesterShape& s, const at::Tensor& z, const at::Tensor& r1,
                  const at::Tensor& r2, const at::Tensor& b, const at::Tensor* q) {
  return {z.data_ptr<T>(), r1.data_ptr<T>(), r2.data_ptr<T>(), b.data_ptr<T>(),
          q == nullptr ? nullptr : q->data_ptr<T>(), s.D, s.M,
          sylvester_batch_stride(r1, 3), sylvester_batch_stride(r2, 3),
          sylvester_batch_stride(b, 2), q == nullptr ? 0 : sylvester_batch_stride(*q, 3),
          s.qkind};
}

std::tuple<at::Tensor, at::Tensor> sylvester_flow_cpu(const at::Tensor& z_in, const at::Tensor& r1_in,
                                                      const at::Tensor& r2_in, const at::Tensor& b_in,
                                                      const std::optional<at::Tensor>& q_in,
                                                      bool reverse) {
  const SylvesterShape s = check_sylvester_inputs(z_in, r1_in, r2_in, b_in, q_in, reverse);
  check_cpu(z_in);
  const at::Tensor z = z_in.contiguous(), r1 = r1_in.contiguous(), r2 = r2_in.contiguous(),
                   b = b_in.contiguous();
  const at::Tensor q = q_in.has_value() ? q_in->contiguous() : at::Tensor();
  at::Tensor out = empty_for_writing({s.B, s.D}, z.options());
  at::Tensor logdet = at::empty({s.B}, z.options());
  if (s.B == 0) return {out, logdet};
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "sylvester_flow_cpu", [&] {
    const Args<scalar_t> p = make_args<scalar_t>(s, z, r1, r2, b, q.defined() ? &q : nullptr);
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* lp = logdet.data_ptr<scalar_t>();
    at::parallel_for(0, s.B, grain(s.D, s.M), [&](int64_t n0, int64_t n1) {
      std::vector<scalar_t> scratch(3 * s.M);
      forward_range(p, n0, n1, op, lp, scratch.data());
    });
  });
  return {out, logdet};
}

// A fresh tensor whose data start half a page (mod 4 KiB) away from `avoid`'s. Equal-sized
// large tensors all start at the same offset within a page, so the gradient rows being stored
// and the next sample's matrix rows being loaded would share their address bits 0-11, and each
// such load waits on the store before it (4K aliasing: measured 3x slower backward).
at::Tensor empty_apart(at::IntArrayRef sizes, const at::TensorOptions& options, const void* avoid) {
  const int64_t n = c10::multiply_integers(sizes);
  const int64_t elem = static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  at::Tensor buf = empty_for_writing({n + 4096 / elem}, options);
  const int64_t base = static_cast<int64_t>(reinterpret_cast<uintptr_t>(buf.data_ptr()) % 4096);
  const int64_t target = static_cast<int64_t>((reinterpret_cast<uintptr_t>(avoid) + 2048) % 4096);
  const int64_t shift = ((target - base + 4096) % 4096) / 64 * 64 / elem;  // 64-byte aligned
  return buf.narrow(0, shift, n).view(sizes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sylvester_flow_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& grad_logdet, const at::Tensor& z_in,
    const at::Tensor& r1_in, const at::Tensor& r2_in, const at::Tensor& b_in,
    const std::optional<at::Tensor>& q_in, bool reverse) {
  const SylvesterShape s = check_sylvester_inputs(z_in, r1_in, r2_in, b_in, q_in, reverse);
  check_cpu(z_in);
  TORCH_CHECK_VALUE(grad_out.sizes() == z_in.sizes() && grad_logdet.dim() == 1 &&
                        grad_logdet.size(0) == s.B,
                    "sylvester_flow_backward: grad_out must have the shape of z and grad_logdet (B,)");
  const auto dtype = z_in.scalar_type();
  const at::Tensor z = z_in.contiguous(), r1 = r1_in.contiguous(), r2 = r2_in.contiguous(),
                   b = b_in.contiguous();
  const at::Tensor q = q_in.has_value() ? q_in->contiguous() : at::Tensor();
  const at::Tensor g = grad_out.to(dtype).contiguous(), gl = grad_logdet.to(dtype).contiguous();
  at::Tensor gz = empty_for_writing({s.B, s.D}, z.options());
  // Amortized gradients are fully written by the kernel; shared ones are summed from per-thread
  // accumulators (no atomics, deterministic for a fixed thread count).
  at::Tensor gr1 = empty_apart(r1.sizes(), z.options(), r1.data_ptr());
  at::Tensor gr2 = empty_apart(r2.sizes(), z.options(), r2.data_ptr());
  at::Tensor gb = at::empty(b.sizes(), z.options());
  at::Tensor gq = q.defined() ? empty_apart(q.sizes(), z.options(), q.data_ptr())
                              : at::empty({0}, z.options());
  const bool sh_r1 = r1.dim() == 2, sh_r2 = r2.dim() == 2, sh_b = b.dim() == 1,
             sh_q = q.defined() && q.dim() == 2;
  const int64_t MM = s.M * s.M, DM = s.D * s.M;
  const int64_t acc_size = (sh_r1 ? MM : 0) + (sh_r2 ? MM : 0) + (sh_b ? s.M : 0) + (sh_q ? DM : 0);
  const int threads = at::get_num_threads();
  at::Tensor acc = at::zeros({threads, std::max<int64_t>(acc_size, 1)}, z.options());
  if (s.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "sylvester_flow_backward_cpu", [&] {
      const Args<scalar_t> p = make_args<scalar_t>(s, z, r1, r2, b, q.defined() ? &q : nullptr);
      scalar_t* accp = acc.data_ptr<scalar_t>();
      const scalar_t* gp = g.data_ptr<scalar_t>();
      const scalar_t* glp = gl.data_ptr<scalar_t>();
      scalar_t* gzp = gz.data_ptr<scalar_t>();
      at::parallel_for(0, s.B, grain(s.D, s.M), [&](int64_t n0, int64_t n1) {
        scalar_t* mine = accp + at::get_thread_num() * acc.size(1);
        auto sink = [&](at::Tensor& grad, bool shared, int64_t size) {
          if (!shared) return GradSink<scalar_t>{grad.numel() ? grad.data_ptr<scalar_t>() : nullptr, size, false};
          GradSink<scalar_t> k{mine, 0, true};
          mine += size;
          return k;
        };
        BackwardSinks<scalar_t> sinks;
        sinks.r1 = sink(gr1, sh_r1, MM);
        sinks.r2 = sink(gr2, sh_r2, MM);
        sinks.b = sink(gb, sh_b, s.M);
        sinks.q = q.defined() ? sink(gq, sh_q, DM) : GradSink<scalar_t>{nullptr, 0, false};
        std::vector<scalar_t> scratch(9 * s.M);
        backward_range(p, n0, n1, gp, glp, gzp, sinks, scratch.data());
      });
    });
  }
  // Sum the per-thread accumulators of the shared parameters (zeros for an empty batch).
  const at::Tensor total = acc.sum(0);
  int64_t offset = 0;
  auto take = [&](at::Tensor& grad, bool shared, int64_t size) {
    if (!shared) return;
    grad.copy_(total.narrow(0, offset, size).view(grad.sizes()));
    offset += size;
  };
  take(gr1, sh_r1, MM);
  take(gr2, sh_r2, MM);
  take(gb, sh_b, s.M);
  if (q.defined()) take(gq, sh_q, DM);
  return {gz, gr1, gr2, gb, gq};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CPU, m) {
  m.impl("sylvester_flow", &sylvester_flow_cpu);
  m.impl("sylvester_flow_backward", &sylvester_flow_backward_cpu);
}

}  // namespace lvmfast
