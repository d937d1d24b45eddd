// CPU kernels of the householder family: threads over rows, each row's z kept in an L1-resident
// buffer while all T reflections are applied; SIMD along L. The math is in csrc/householder.h.
//
// The op is memory-bound: per row it reads z, T*L of v (amortized) and writes out (forward);
// the backward reads out, grad, v and writes grad_z, grad_v. Nothing per step is stored: the
// backward re-creates z_{t-1} from z_t by reflecting again.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../householder.h"
#include "memory.h"
#include "simd.h"

namespace lvmfast {
namespace {

// Row buffers are padded to Lp (a multiple of the width) with zeros, so the vector loops need
// no tail; amortized v rows are read in place when L == Lp and through a padded copy otherwise.
// The padded copy of row `src` (length L) in `dst` (length Lp).
template <typename T>
LVMFAST_INLINE void load_padded(const T* src, T* dst, int64_t L, int64_t Lp) {
  std::memcpy(dst, src, sizeof(T) * L);
  std::fill(dst + L, dst + Lp, T(0));
}

// v . v and v . a over a padded row.
template <typename T, int B>
LVMFAST_INLINE void dots2(const T* v, const T* a, int64_t Lp, T& vv, T& va) {
  using V = typename Simd<T, B>::vec;
  constexpr int W = Simd<T, B>::width;
  V s0{}, s1{};
  for (int64_t l = 0; l < Lp; l += W) {
    const V x = load<T, B>(v + l);
    s0 += x * x;
    s1 += x * load<T, B>(a + l);
  }
  // hsum is a tree (simd.h): each reflection waits on these dot products, so their latency sets
  // the pace
  vv = hsum<T, B>(s0), va = hsum<T, B>(s1);
}

// v . v, v . a and v . b over a padded row.
template <typename T, int B>
LVMFAST_INLINE void dots3(const T* v, const T* a, const T* b, int64_t Lp, T& vv, T& va, T& vb) {
  using V = typename Simd<T, B>::vec;
  constexpr int W = Simd<T, B>::width;
  V s0{}, s1{}, s2{};
  for (int64_t l = 0; l < Lp; l += W) {
    const V x = load<T, B>(v + l);
    s0 += x * x;
    s1 += x * load<T, B>(a + l);
    s2 += x * load<T, B>(b + l);
  }
  vv = hsum<T, B>(s0), va = hsum<T, B>(s1), vb = hsum<T, B>(s2);
}

// Asks for the next row's v_t while this row works on its own: the walk over v is
// DRAM-bound, and one thread's demand loads alone leave most of the bandwidth unused.
template <typename T>
LVMFAST_INLINE void prefetch_row_chunk(const T* p, int64_t L) {
  for (int64_t l = 0; l < L; l += 64 / sizeof(T)) __builtin_prefetch(p + l);
}

template <typename T, int B>
LVMFAST_INLINE void axpy(T* z, T c, const T* v, int64_t Lp) {
  using V = typename Simd<T, B>::vec;
  for (int64_t l = 0; l < Lp; l += Simd<T, B>::width)
    store<T, B>(z + l, load<T, B>(z + l) - c * load<T, B>(v + l));
}

// Forward for rows [r0, r1). v_stride: elements between rows of v (0 when shared).
// vbuf: T * Lp scratch holding the padded v rows of the current row.
template <typename T, int B>
LVMFAST_INLINE void forward_rows_impl(const T* z, const T* v, T* out, int64_t r0, int64_t r1,
                                      int64_t T_, int64_t L, int64_t Lp, int64_t v_stride,
                                      const T* shared_coef, T* zb, T* vbuf) {
  for (int64_t r = r0; r < r1; ++r) {
    load_padded(z + r * L, zb, L, Lp);
    const T* vr = v + r * v_stride;
    for (int64_t t = 0; t < T_; ++t) {
      const T* vt;
      if (v_stride == 0) {
        vt = vbuf + t * Lp;  // shared: padded once per task
      } else {
        if (r + 1 < r1) prefetch_row_chunk(vr + v_stride + t * L, L);
        if (L == Lp) {
          vt = vr + t * L;
        } else {
          load_padded(vr + t * L, vbuf, L, Lp);
          vt = vbuf;
        }
      }
      T n, s;
      dots2<T, B>(vt, zb, Lp, n, s);
      if (v_stride == 0) n = shared_coef[t];
      if (n == T(0)) continue;  // a zero vector: no reflection
      axpy<T, B>(zb, T(2) * s / n, vt, Lp);
    }
    std::memcpy(out + r * L, zb, sizeof(T) * L);
  }
}

// Backward for rows [r0, r1): writes grad_z rows, and grad_v rows (amortized) or adds into the
// (T, Lp) per-thread accumulator gv_acc (shared).
template <typename T, int B>
LVMFAST_INLINE void backward_rows_impl(const T* grad, const T* out, const T* v, T* gz, T* gv,
                                       T* gv_acc, int64_t r0, int64_t r1, int64_t T_, int64_t L,
                                       int64_t Lp, int64_t v_stride, const T* shared_coef, T* zb,
                                       T* gb, T* vbuf, T* gvb) {
  using V = typename Simd<T, B>::vec;
  constexpr int W = Simd<T, B>::width;
  for (int64_t r = r0; r < r1; ++r) {
    load_padded(out + r * L, zb, L, Lp);
    load_padded(grad + r * L, gb, L, Lp);
    const T* vr = v + r * v_stride;
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const T* vt;
      if (v_stride == 0) {
        vt = vbuf + t * Lp;
      } else {
        if (r + 1 < r1) prefetch_row_chunk(vr + v_stride + t * L, L);
        if (L == Lp) {
          vt = vr + t * L;
        } else {
          load_padded(vr + t * L, vbuf, L, Lp);
          vt = vbuf;
        }
      }
      T n, s, h;
      dots3<T, B>(vt, zb, gb, Lp, n, s, h);
      if (v_stride == 0) n = shared_coef[t];
      if (n == T(0)) {
        if (v_stride != 0) std::fill(gv + (r * T_ + t) * L, gv + (r * T_ + t + 1) * L, T(0));
        continue;
      }
      const T c = T(2) / n;
      const T cs = c * s, ch = c * h, c2sh = c * c * s * h;
      // amortized rows with L a multiple of the width are written in place
      T* const gv_row = v_stride == 0 ? nullptr : gv + (r * T_ + t) * L;
      T* dst = v_stride == 0 ? gv_acc + t * Lp : (L == Lp ? gv_row : gvb);
      for (int64_t l = 0; l < Lp; l += W) {
        const V x = load<T, B>(vt + l), zt = load<T, B>(zb + l), gt = load<T, B>(gb + l);
        const V zp = zt - cs * x;
        const V g = cs * gt - ch * zp - c2sh * x;
        if (v_stride == 0) {
          store<T, B>(dst + l, load<T, B>(dst + l) + g);
        } else {
          store<T, B>(dst + l, g);
        }
        store<T, B>(zb + l, zp);
        store<T, B>(gb + l, gt - ch * x);
      }
      if (v_stride != 0 && L != Lp) std::memcpy(gv_row, gvb, sizeof(T) * L);
    }
    std::memcpy(gz + r * L, gb, sizeof(T) * L);
  }
}

// Multiversioned entry points (non-template, so target_clones applies), in 64-byte vectors with
// AVX-512 and 32-byte ones otherwise (simd.h); Lp, padded to 64 bytes, is a multiple of both.
#define LVMFAST_HH_ENTRY(T)                                                                      \
  LVMFAST_MULTIVERSION void forward_rows(const T* z, const T* v, T* out, int64_t r0, int64_t r1, \
                                         int64_t T_, int64_t L, int64_t Lp, int64_t vs,          \
                                         const T* sc, T* zb, T* vbuf) {                          \
    if (wide_vectors())                                                                          \
      forward_rows_impl<T, 64>(z, v, out, r0, r1, T_, L, Lp, vs, sc, zb, vbuf);                  \
    else                                                                                         \
      forward_rows_impl<T, 32>(z, v, out, r0, r1, T_, L, Lp, vs, sc, zb, vbuf);                  \
  }                                                                                              \
  LVMFAST_MULTIVERSION void backward_rows(const T* grad, const T* out, const T* v, T* gz, T* gv, \
                                          T* acc, int64_t r0, int64_t r1, int64_t T_, int64_t L, \
                                          int64_t Lp, int64_t vs, const T* sc, T* zb, T* gb,     \
                                          T* vbuf, T* gvb) {                                     \
    if (wide_vectors())                                                                          \
      backward_rows_impl<T, 64>(grad, out, v, gz, gv, acc, r0, r1, T_, L, Lp, vs, sc, zb, gb,    \
                                vbuf, gvb);                                                      \
    else                                                                                         \
      backward_rows_impl<T, 32>(grad, out, v, gz, gv, acc, r0, r1, T_, L, Lp, vs, sc, zb, gb,    \
                                vbuf, gvb);                                                      \
  }
LVMFAST_HH_ENTRY(float)
LVMFAST_HH_ENTRY(double)
#undef LVMFAST_HH_ENTRY

void check_cpu(const char* op, const at::Tensor& z) {
  TORCH_CHECK_VALUE(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, op,
                    ": on the CPU z must be float32 or float64, got ", z.scalar_type());
}

int64_t padded(int64_t L, int64_t width) { return std::max<int64_t>(1, (L + width - 1) / width) * width; }

// Shared v: its rows padded once, and |v_t|^2 computed once.
template <typename T>
void pad_shared(const at::Tensor& v, int64_t Lp, std::vector<T>& vpad, std::vector<T>& norms) {
  const int64_t T_ = v.size(0), L = v.size(1);
  const T* vp = v.data_ptr<T>();
  vpad.assign(T_ * Lp, T(0));
  norms.assign(T_, T(0));
  for (int64_t t = 0; t < T_; ++t) {
    std::memcpy(vpad.data() + t * Lp, vp + t * L, sizeof(T) * L);
    T n = 0;
    for (int64_t l = 0; l < L; ++l) n += vp[t * L + l] * vp[t * L + l];
    norms[t] = n;
  }
}

// Rows per parallel task: a few tens of kilobytes of v each.
int64_t grain_rows(int64_t T_, int64_t L) {
  return std::max<int64_t>(16, 8192 / std::max<int64_t>(1, T_ * L));
}

at::Tensor householder_flow_cpu(const at::Tensor& z, const at::Tensor& v) {
  check_householder_inputs("householder_flow", z, v);
  check_cpu("householder_flow", z);
  const int64_t B = z.size(0), L = z.size(1);
  const bool shared = v.dim() == 2;
  const int64_t T_ = v.size(-2);
  const at::Tensor zc = z.contiguous(), vc = v.contiguous();
  at::Tensor out = empty_for_writing({B, L}, z.options());
  if (B == 0 || L == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "householder_flow_cpu", [&] {
    const int64_t Lp = padded(L, Simd<scalar_t>::width);
    std::vector<scalar_t> vpad, norms;
    if (shared) pad_shared<scalar_t>(vc, Lp, vpad, norms);
    const scalar_t* zp = zc.data_ptr<scalar_t>();
    const scalar_t* vp = vc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, grain_rows(T_, L), [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> zb(Lp), vbuf(shared ? 0 : Lp);
      scalar_t* vb = shared ? vpad.data() : vbuf.data();
      forward_rows(zp, vp, op, r0, r1, T_, L, Lp, shared ? 0 : T_ * L, norms.data(), zb.data(), vb);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> householder_flow_backward_cpu(const at::Tensor& grad,
                                                                 const at::Tensor& out,
                                                                 const at::Tensor& v) {
  check_householder_backward_inputs(grad, out, v);
  check_cpu("householder_flow_backward", out);
  const int64_t B = out.size(0), L = out.size(1);
  const bool shared = v.dim() == 2;
  const int64_t T_ = v.size(-2);
  const at::Tensor gc = grad.to(out.scalar_type()).contiguous(), oc = out.contiguous(),
                   vc = v.contiguous();
  at::Tensor gz = empty_for_writing({B, L}, out.options());
  at::Tensor gv = shared ? at::zeros(v.sizes(), v.options()) : empty_for_writing(v.sizes(), v.options());
  if (B == 0 || L == 0 || T_ == 0) {
    gz.copy_(gc);
    if (!shared) gv.zero_();
    return {gz, gv};
  }
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "householder_flow_backward_cpu", [&] {
    const int64_t Lp = padded(L, Simd<scalar_t>::width);
    std::vector<scalar_t> vpad, norms;
    if (shared) pad_shared<scalar_t>(vc, Lp, vpad, norms);
    // Shared v: one (T, Lp) accumulator per thread, summed at the end (deterministic, no atomics).
    const int threads = shared ? at::get_num_threads() : 0;
    at::Tensor acc = at::zeros({threads, T_, Lp}, out.options());
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* opp = oc.data_ptr<scalar_t>();
    const scalar_t* vp = vc.data_ptr<scalar_t>();
    scalar_t* gzp = gz.data_ptr<scalar_t>();
    scalar_t* gvp = gv.data_ptr<scalar_t>();
    scalar_t* accp = acc.data_ptr<scalar_t>();
    at::parallel_for(0, B, grain_rows(T_, L), [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> zb(Lp), gb(Lp), vbuf(shared ? 0 : Lp), gvb(Lp);
      scalar_t* vb = shared ? vpad.data() : vbuf.data();
      scalar_t* mine = shared ? accp + at::get_thread_num() * T_ * Lp : nullptr;
      backward_rows(gp, opp, vp, gzp, gvp, mine, r0, r1, T_, L, Lp, shared ? 0 : T_ * L,
                    norms.data(), zb.data(), gb.data(), vb, gvb.data());
    });
    if (shared) gv.copy_(acc.sum(0).narrow(1, 0, L));
  });
  if (L == 1) gv.zero_();  // H_t = -1 whatever v_t (csrc/householder.h)
  return {gz, gv};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CPU, m) {
  m.impl("householder_flow", &householder_flow_cpu);
  m.impl("householder_flow_backward", &householder_flow_backward_cpu);
}

}  // namespace lvmfast
