// CPU kernels of the mixture family (log_mog): threads over blocks of rows,
// register-blocked SIMD over components. The math is in csrc/mixture.h.
//
// Layout: means and precisions are transposed to (L, Kp), Kp = K rounded up to
// the vector width, so one vector holds one dimension of W consecutive
// components; padded components get consts = -inf and so weigh exactly zero.
// Their rows are ld >= Kp elements apart (see row_stride).
// Each row block keeps ROWS x W partial quadratic forms in registers while it
// walks the L dimensions (the direct form (z - m)^2 / var: no cancellation).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../mixture.h"
#include "memory.h"
#include "simd.h"

namespace lvmfast {
namespace {

constexpr int kRows = 6;  // rows per register block: 6 x W accumulators stay in registers

template <typename T>
struct Params {
  int64_t K, Kp, L;
  int64_t ld;       // row stride of the (L, Kp) tables
  const T* meansT;  // (L, Kp), rows ld apart
  const T* precT;   // (L, Kp), rows ld apart
  const T* consts;  // (Kp), -inf on padding
};

// s[r] for `rows` rows against the W components starting at k0.
template <typename T, int B>
LVMFAST_INLINE void block_scores(const Params<T>& p, const T* zb, int64_t k0,
                                 typename Simd<T, B>::vec* s) {
  using V = typename Simd<T, B>::vec;
  V acc[kRows] = {};
  for (int64_t l = 0; l < p.L; ++l) {
    V m, q;
    std::memcpy(&m, p.meansT + l * p.ld + k0, sizeof(V));
    std::memcpy(&q, p.precT + l * p.ld + k0, sizeof(V));
    for (int r = 0; r < kRows; ++r) {
      const V d = zb[r * p.L + l] - m;
      acc[r] += d * d * q;
    }
  }
  V c;
  std::memcpy(&c, p.consts + k0, sizeof(V));
  for (int r = 0; r < kRows; ++r) s[r] = c - T(0.5) * acc[r];
}

template <typename T, int B>
LVMFAST_INLINE void forward_rows_impl(const Params<T>& p, const T* zb, T* out) {
  using V = typename Simd<T, B>::vec;
  constexpr int W = Simd<T, B>::width;
  const T ninf = -std::numeric_limits<T>::infinity();
  T mx[kRows], sum[kRows];
  for (int r = 0; r < kRows; ++r) mx[r] = ninf, sum[r] = 0;
  for (int64_t k0 = 0; k0 < p.Kp; k0 += W) {
    V s[kRows];
    block_scores<T, B>(p, zb, k0, s);
    for (int r = 0; r < kRows; ++r) {
      const T bm = hmax<T, B>(s[r]);
      if (bm == ninf) continue;  // all components of this block switched off
      if (bm > mx[r]) {
        sum[r] *= std::exp(mx[r] - bm);
        mx[r] = bm;
      }
      sum[r] += hsum<T, B>(vexp(s[r] - mx[r]));
    }
  }
  for (int r = 0; r < kRows; ++r) out[r] = mx[r] + std::log(sum[r]);
}

// Accumulates this row block's share of grad_z (into gz), wdiff, wsq (L, Kp, rows ld apart) and
// wsum (Kp).
template <typename T, int B>
LVMFAST_INLINE void backward_rows_impl(const Params<T>& p, const T* zb, const T* grad,
                                       const T* out, T* gz, T* gzv, T* wdiff, T* wsq, T* wsum) {
  using V = typename Simd<T, B>::vec;
  constexpr int W = Simd<T, B>::width;
  // gzv: (kRows, L) vectors of per-lane partial sums of grad_z, reduced across lanes at the end.
  // Sizes and pointers are read once into locals: the stores below go through memcpy, which may
  // alias anything, so fields read through p were reloaded (and multiplied out) at every row.
  const int64_t L = p.L, Kp = p.Kp, ld = p.ld;
  const T* const meansT = p.meansT;
  const T* const precT = p.precT;
  std::fill(gzv, gzv + kRows * L * W, T(0));
  for (int64_t k0 = 0; k0 < Kp; k0 += W) {
    V s[kRows];
    block_scores<T, B>(p, zb, k0, s);
    V resp[kRows];
    V rsum{};
    for (int r = 0; r < kRows; ++r) {
      resp[r] = grad[r] * vexp(s[r] - out[r]);
      rsum += resp[r];
    }
    V ws;
    std::memcpy(&ws, wsum + k0, sizeof(V));
    ws += rsum;
    std::memcpy(wsum + k0, &ws, sizeof(V));
    for (int64_t l = 0; l < L; ++l) {
      V m, q, wd, wq;
      std::memcpy(&m, meansT + l * ld + k0, sizeof(V));
      std::memcpy(&q, precT + l * ld + k0, sizeof(V));
      std::memcpy(&wd, wdiff + l * ld + k0, sizeof(V));
      std::memcpy(&wq, wsq + l * ld + k0, sizeof(V));
      for (int r = 0; r < kRows; ++r) {
        const V d = zb[r * L + l] - m;
        const V u = resp[r] * (d * q);
        V acc;
        std::memcpy(&acc, gzv + (r * L + l) * W, sizeof(V));
        acc += u;
        std::memcpy(gzv + (r * L + l) * W, &acc, sizeof(V));
        wd += u;
        wq += u * d;
      }
      std::memcpy(wdiff + l * ld + k0, &wd, sizeof(V));
      std::memcpy(wsq + l * ld + k0, &wq, sizeof(V));
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int64_t l = 0; l < L; ++l) gz[r * L + l] = -hsum<T, B>(load<T, B>(gzv + (r * L + l) * W));
}

// The multiversioned entry points (non-template, so target_clones applies), in 64-byte vectors
// with AVX-512 and 32-byte ones otherwise (simd.h); Kp and gzv are sized for 64, enough for both.
LVMFAST_MULTIVERSION void forward_rows(const Params<float>& p, const float* zb, float* out) {
  if (wide_vectors())
    forward_rows_impl<float, 64>(p, zb, out);
  else
    forward_rows_impl<float, 32>(p, zb, out);
}
LVMFAST_MULTIVERSION void forward_rows(const Params<double>& p, const double* zb, double* out) {
  if (wide_vectors())
    forward_rows_impl<double, 64>(p, zb, out);
  else
    forward_rows_impl<double, 32>(p, zb, out);
}
LVMFAST_MULTIVERSION void backward_rows(const Params<float>& p, const float* zb, const float* grad,
                                        const float* out, float* gz, float* gzv, float* wdiff,
                                        float* wsq, float* wsum) {
  if (wide_vectors())
    backward_rows_impl<float, 64>(p, zb, grad, out, gz, gzv, wdiff, wsq, wsum);
  else
    backward_rows_impl<float, 32>(p, zb, grad, out, gz, gzv, wdiff, wsq, wsum);
}
LVMFAST_MULTIVERSION void backward_rows(const Params<double>& p, const double* zb,
                                        const double* grad, const double* out, double* gz,
                                        double* gzv, double* wdiff, double* wsq, double* wsum) {
  if (wide_vectors())
    backward_rows_impl<double, 64>(p, zb, grad, out, gz, gzv, wdiff, wsq, wsum);
  else
    backward_rows_impl<double, 32>(p, zb, grad, out, gz, gzv, wdiff, wsq, wsum);
}

// The row stride of the (L, Kp) tables. The kernels walk down a column of four of them (means,
// precisions and, backward, two accumulators) for every vector of components. With rows an even
// number of cache lines apart, the rows of a column share a fraction of the L1's sets (K = 512
// floats, 2 KiB a row: all of them fall in 2 of a 32 KiB 8-way L1's 64 sets), which then holds
// only a few rows of each table: the backward at B = 4096, K = 512, L = 64 spent a fifth of its
// cycles on loads at the top of the column. An odd number of lines spreads them over all sets.
template <typename T>
int64_t row_stride(int64_t Kp) {
  constexpr int64_t kLine = 64 / sizeof(T);  // Kp is a multiple of a line (Simd<T>::width)
  return (Kp / kLine) % 2 == 0 ? Kp + kLine : Kp;
}

// The vector {at(0), ..., at(W - 1)}: built in registers (lane inserts), not stored lane by lane
// and reloaded, which stalls on store forwarding.
template <typename V, typename F, size_t... J>
LVMFAST_INLINE V gather_lanes(F at, std::index_sequence<J...>) {
  return V{at(J)...};
}

// meansT and precT = exp(-logvars), transposed from (K, L) to (L, Kp) with rows ld apart, zero
// on padded components, W components a vector.
template <typename T, int B>
LVMFAST_INLINE void pack_tables_impl(const T* means, const T* logvars, int64_t K, int64_t L,
                                     int64_t Kp, int64_t ld, T* meansT, T* precT) {
  using V = typename Simd<T, B>::vec;
  constexpr int W = Simd<T, B>::width;  // divides Kp
  for (int64_t k0 = 0; k0 < Kp; k0 += W) {
    const int64_t n = std::max<int64_t>(0, std::min<int64_t>(W, K - k0));  // real components
    for (int64_t l = 0; l < L; ++l) {
      const T* mcol = means + k0 * L + l;
      const T* lcol = logvars + k0 * L + l;
      auto lane = [&](const T* col) {
        return [=](size_t j) { return static_cast<int64_t>(j) < n ? col[j * L] : T(0); };
      };
      const V m = gather_lanes<V>(lane(mcol), std::make_index_sequence<W>{});
      V p = vexp(-gather_lanes<V>(lane(lcol), std::make_index_sequence<W>{}));
      for (int64_t j = n; j < W; ++j) p[j] = T(0);
      store<T, B>(meansT + l * ld + k0, m);
      store<T, B>(precT + l * ld + k0, p);
    }
  }
}
LVMFAST_MULTIVERSION void pack_tables(const float* means, const float* logvars, int64_t K,
                                      int64_t L, int64_t Kp, int64_t ld, float* meansT,
                                      float* precT) {
  pack_tables_impl<float, 32>(means, logvars, K, L, Kp, ld, meansT, precT);
}
LVMFAST_MULTIVERSION void pack_tables(const double* means, const double* logvars, int64_t K,
                                      int64_t L, int64_t Kp, int64_t ld, double* meansT,
                                      double* precT) {
  pack_tables_impl<double, 32>(means, logvars, K, L, Kp, ld, meansT, precT);
}

// log sum_k exp(logits[k]), in double.
template <typename T>
double log_sum_exp(const T* logits, int64_t K) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t k = 0; k < K; ++k) mx = std::max<double>(mx, logits[k]);
  double sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += std::exp(logits[k] - mx);
  return mx + std::log(sum);
}

// Transposed, padded copies of the component parameters (csrc/mixture.h's prec and consts),
// made in one pass: the ten torch ops they replace cost about 160 us a call at the VampPrior
// shape (B = 100, K = 500, L = 40), as much as the forward kernel itself.
template <typename T>
struct PackedParams {
  at::Tensor storage;  // meansT (L, ld), precT (L, ld), consts (Kp); a row's [Kp, ld) is unread
  at::Tensor logits;   // contiguous
  double lse;          // log sum_k exp(logits[k])
  Params<T> view;
  PackedParams(const at::Tensor& means, const at::Tensor& logvars, const at::Tensor& logits_in) {
    const int64_t K = means.size(0), L = means.size(1);
    const int64_t Kp = (K + Simd<T>::width - 1) / Simd<T>::width * Simd<T>::width;
    const int64_t ld = row_stride<T>(Kp);
    const at::Tensor m = means.contiguous(), lv = logvars.contiguous();
    logits = logits_in.contiguous();
    const T* mp = m.data_ptr<T>();
    const T* lvp = lv.data_ptr<T>();
    const T* lgp = logits.data_ptr<T>();
    storage = at::empty({2 * L * ld + Kp}, means.options());
    T* meansT = storage.data_ptr<T>();
    T* precT = meansT + L * ld;
    T* consts = precT + L * ld;
    pack_tables(mp, lvp, K, L, Kp, ld, meansT, precT);
    // consts[k] = log_softmax(logits)[k] - 0.5 sum_l logvars[k, l] - 0.5 L log(2 pi), in double
    lse = log_sum_exp(lgp, K);
    const double half_log_2pi = 0.5 * std::log(2.0 * M_PI);
    for (int64_t k = 0; k < K; ++k) {
      double lv_sum = 0;
      for (int64_t l = 0; l < L; ++l) lv_sum += lvp[k * L + l];
      consts[k] = static_cast<T>(lgp[k] - lse - 0.5 * lv_sum - half_log_2pi * static_cast<double>(L));
    }
    std::fill(consts + K, consts + Kp, -std::numeric_limits<T>::infinity());
    view = {K, Kp, L, ld, meansT, precT, consts};
  }
};

// Copies up to kRows rows of z into a zero-padded (kRows, L) block.
template <typename T>
void load_rows(const T* z, int64_t row0, int64_t rows, int64_t L, T* zb) {
  std::memcpy(zb, z + row0 * L, sizeof(T) * rows * L);
  std::fill(zb + rows * L, zb + kRows * L, T(0));
}

// Row blocks per parallel task: about 2^19 (row, component, dimension) terms, enough that
// scheduling is noise. (The former 12.6M terms a task ran the VampPrior shape, B = 100, K = 500,
// L = 40: 2M terms, on one thread.)
int64_t grain_blocks(int64_t K, int64_t L) {
  return std::max<int64_t>(1, (int64_t(1) << 19) / std::max<int64_t>(1, kRows * K * L));
}

void check_cpu(const at::Tensor& z) {
  TORCH_CHECK_VALUE(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
                    "log_mog: on the CPU z must be float32 or float64, got ", z.scalar_type());
}

at::Tensor log_mog_cpu(const at::Tensor& z, const at::Tensor& means, const at::Tensor& logvars,
                       const at::Tensor& logits) {
  check_log_mog_inputs(z, means, logvars, logits);
  check_cpu(z);
  const int64_t L = means.size(1);
  const at::Tensor z2 = z.reshape({-1, L}).contiguous();
  const int64_t N = z2.size(0);
  at::Tensor out = empty_for_writing({N}, z.options());
  if (N > 0) {
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "log_mog_cpu", [&] {
      PackedParams<scalar_t> packed(means, logvars, logits);
      const scalar_t* zp = z2.data_ptr<scalar_t>();
      scalar_t* op = out.data_ptr<scalar_t>();
      const int64_t nblocks = (N + kRows - 1) / kRows;
      at::parallel_for(0, nblocks, grain_blocks(means.size(0), L), [&](int64_t b0, int64_t b1) {
        std::vector<scalar_t> zb(kRows * L);
        scalar_t res[kRows];
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t row0 = b * kRows, rows = std::min<int64_t>(kRows, N - row0);
          load_rows(zp, row0, rows, L, zb.data());
          forward_rows(packed.view, zb.data(), res);
          std::copy(res, res + rows, op + row0);
        }
      });
    });
  }
  auto shape = z.sizes().vec();
  shape.pop_back();
  return out.reshape(shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> log_mog_backward_cpu(
    const at::Tensor& grad, const at::Tensor& z, const at::Tensor& means,
    const at::Tensor& logvars, const at::Tensor& logits, const at::Tensor& out) {
  check_log_mog_inputs(z, means, logvars, logits);
  check_cpu(z);
  const int64_t K = means.size(0), L = means.size(1);
  const at::Tensor z2 = z.reshape({-1, L}).contiguous();
  const int64_t N = z2.size(0);
  TORCH_CHECK_VALUE(grad.numel() == N && out.numel() == N,
                    "log_mog_backward: grad and out must have shape z.shape[:-1]");
  const at::Tensor g = grad.reshape({N}).to(z.scalar_type()).contiguous();
  const at::Tensor o = out.reshape({N}).to(z.scalar_type()).contiguous();
  at::Tensor gz = empty_for_writing(z2.sizes(), z2.options());
  at::Tensor gm, glv, glg;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "log_mog_backward_cpu", [&] {
    PackedParams<scalar_t> packed(means, logvars, logits);
    const int64_t Kp = packed.view.Kp, ld = packed.view.ld;
    // One (wdiff, wsq, wsum) accumulator per thread, summed at the end: no atomics, deterministic.
    const int threads = at::get_num_threads();
    at::Tensor acc = at::zeros({threads, 2 * L * ld + Kp}, z2.options());
    const scalar_t* zp = z2.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* opp = o.data_ptr<scalar_t>();
    scalar_t* gzp = gz.data_ptr<scalar_t>();
    scalar_t* accp = acc.data_ptr<scalar_t>();
    const int64_t nblocks = (N + kRows - 1) / kRows;
    at::parallel_for(0, nblocks, grain_blocks(K, L), [&](int64_t b0, int64_t b1) {
      scalar_t* mine = accp + at::get_thread_num() * (2 * L * ld + Kp);
      std::vector<scalar_t> zb(kRows * L), gzb(kRows * L);
      std::vector<scalar_t> gzv(kRows * L * Simd<scalar_t>::width);
      scalar_t gr[kRows], ob[kRows];
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t row0 = b * kRows, rows = std::min<int64_t>(kRows, N - row0);
        load_rows(zp, row0, rows, L, zb.data());
        for (int r = 0; r < kRows; ++r) {
          // Padded rows: zero weight, and out = +inf makes their responsibilities exactly 0.
          gr[r] = r < rows ? gp[row0 + r] : scalar_t(0);
          ob[r] = r < rows ? opp[row0 + r] : std::numeric_limits<scalar_t>::infinity();
        }
        backward_rows(packed.view, zb.data(), gr, ob, gzb.data(), gzv.data(), mine,
                      mine + L * ld, mine + 2 * L * ld);
        std::copy(gzb.begin(), gzb.begin() + rows * L, gzp + row0 * L);
      }
    });
    // The threads' sums, transposed back to (K, L), and csrc/mixture.h's assembly in one pass:
    // grad_means = wdiff, grad_logvars = (wsq - wsum) / 2, grad_logits = wsum - softmax sum(wsum).
    gm = at::empty({K, L}, means.options());
    glv = at::empty({K, L}, means.options());
    glg = at::empty({K}, means.options());
    const int64_t stride = 2 * L * ld + Kp;
    auto thread_sum = [&](int64_t i) {
      scalar_t total = 0;
      for (int t = 0; t < threads; ++t) total += accp[t * stride + i];
      return total;
    };
    const scalar_t* lgp = packed.logits.data_ptr<scalar_t>();
    scalar_t* gmp = gm.data_ptr<scalar_t>();
    scalar_t* glvp = glv.data_ptr<scalar_t>();
    scalar_t* glgp = glg.data_ptr<scalar_t>();
    std::vector<scalar_t> wsum(K);
    double wsum_total = 0;
    for (int64_t k = 0; k < K; ++k) wsum_total += wsum[k] = thread_sum(2 * L * ld + k);
    for (int64_t k = 0; k < K; ++k) {
      glgp[k] = static_cast<scalar_t>(wsum[k] - std::exp(lgp[k] - packed.lse) * wsum_total);
      for (int64_t l = 0; l < L; ++l) {
        gmp[k * L + l] = thread_sum(l * ld + k);
        glvp[k * L + l] = scalar_t(0.5) * (thread_sum(L * ld + l * ld + k) - wsum[k]);
      }
    }
  });
  return {gz.view(z.sizes()), gm, glv, glg};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CPU, m) {
  m.impl("log_mog", &log_mog_cpu);
  m.impl("log_mog_backward", &log_mog_backward_cpu);
}

}  // namespace lvmfast
