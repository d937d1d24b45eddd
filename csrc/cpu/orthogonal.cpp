// CPU kernels of the orthogonal family: Björck–Bowie orthonormalization, one matrix per task
// step, the whole iteration in L1/L2-resident thread-local buffers. The math is in
// csrc/orthogonal.h.
//
// Each matrix is copied into a zero-padded (Dr x Mp) buffer (Dr: D rounded up to the row block,
// Mp: M rounded up to the vector width), so every product below is a register-blocked
// micro-kernel over full vectors: zero rows and columns do not change Q^T Q or Q A.
// Per step: A = Q^T Q (upper block triangle only, then mirrored: ~D M^2 / 2 multiply-adds
// for large M), Q <- 1.5 Q - 0.5 Q A (D M^2). The backward re-runs the forward through the
// very same function (so it takes the same number of steps), keeping the executed iterates
// Q_j, A_j in a per-thread scratch of at most bjorck_slots(max_steps) pairs (not per batch: the
// autograd graph saves only q; not per step: past kBjorckSlots steps the backward replays from
// checkpoints, kernels/orthogonal_checkpoints.cuh), then walks them back: S = Q^T G (D M^2),
// G <- 1.5 G - 0.5 (G A + Q (S + S^T)) (2 D M^2).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../../kernels/orthogonal_checkpoints.cuh"
#include "../orthogonal.h"
#include "memory.h"
#include "simd.h"

namespace lvmfast {
namespace {

constexpr int kRows = 4;   // rows of C per micro-kernel call (kWideRows for narrow C, below)
constexpr int kWideRows = 8;
// vectors of C per row per micro-kernel call: 4 x 4 accumulators fill 16 of the 32 AVX-512
// registers; with 32-byte vectors (AVX2, 16 registers) 4 x 2 and the loaded row leave room
template <int B>
constexpr int chunks_per_block() { return B >= 64 ? 4 : 2; }

// Rows per micro-kernel call for C of `nchunks` vectors a row. A 4 x 1 or 4 x 2 block keeps
// too few independent FMAs in flight (latency 4, two pipes) and loads a broadcast per FMA or
// two; 8 rows double that, and 8 x 2 accumulators still fit the 32 AVX-512 registers (with
// AVX2 they would spill: 16 registers of half the width).
inline int rows_per_block(int64_t nchunks) { return nchunks <= 2 && wide_vectors() ? kWideRows : kRows; }

// acc[r][c] += sum_k left[r * lr + k * lk] * right[k * rs + c * W], k < K: an R x NC block
// of C = Left * Right, with left broadcast from memory and right read as vectors.
template <typename T, int B, int R, int NC>
LVMFAST_INLINE void mk(typename Simd<T, B>::vec (&acc)[R][NC], const T* left, int64_t lr,
                       int64_t lk, const T* right, int64_t rs, int64_t K) {
  using V = typename Simd<T, B>::vec;
  constexpr int W = Simd<T, B>::width;
  for (int64_t k = 0; k < K; ++k) {
    V rv[NC];
    for (int c = 0; c < NC; ++c) rv[c] = load<T, B>(right + k * rs + c * W);
    for (int r = 0; r < R; ++r) {
      const T a = left[r * lr + k * lk];
      for (int c = 0; c < NC; ++c) acc[r][c] += a * rv[c];
    }
  }
}

// What to do with a finished block: C = alpha * acc + beta * X (X may be null).
template <typename T, int B, int R, int NC>
LVMFAST_INLINE void put(const typename Simd<T, B>::vec (&acc)[R][NC], T* out, int64_t os,
                        T alpha, T beta, const T* x, int64_t xs) {
  constexpr int W = Simd<T, B>::width;
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NC; ++c) {
      typename Simd<T, B>::vec y = alpha * acc[r][c];
      if (x != nullptr) y += beta * load<T, B>(x + r * xs + c * W);
      store<T, B>(out + r * os + c * W, y);
    }
}

// One R x (NC vectors) block of out = alpha * (L1 R1 [+ L2 R2]) + beta X; left operands
// are addressed as left[row * lr + k * lk], right ones are (K x Mp) row-major. The accumulators
// are locals of this always-inlined function, so they live in registers.
template <typename T, int B, int R, int NC>
LVMFAST_INLINE void gemm_block(T* o, int64_t Mp, const T* l1, int64_t lr1, int64_t lk1,
                               const T* r1, int64_t K1, const T* l2, int64_t lr2, int64_t lk2,
                               const T* r2, int64_t K2, T alpha, T beta, const T* xb) {
  typename Simd<T, B>::vec acc[R][NC] = {};
  mk<T, B, R, NC>(acc, l1, lr1, lk1, r1, Mp, K1);
  if (l2 != nullptr) mk<T, B, R, NC>(acc, l2, lr2, lk2, r2, Mp, K2);
  put<T, B, R, NC>(acc, o, Mp, alpha, beta, xb, Mp);
}

// out (rows x Mp, rows a multiple of R) = alpha * (L1 R1 [+ L2 R2]) + beta X, blocked.
// upper: only the blocks on or right of the diagonal (the symmetric Gram matrix).
template <typename T, int B, int R>
LVMFAST_INLINE void gemm_rows(T* out, int64_t rows, int64_t Mp, const T* l1, int64_t lr1,
                              int64_t lk1, const T* r1, int64_t K1, const T* l2, int64_t lr2,
                              int64_t lk2, const T* r2, int64_t K2, T alpha, T beta, const T* x,
                              bool upper) {
  constexpr int W = Simd<T, B>::width;
  const int64_t nchunks = Mp / W;
  for (int64_t i = 0; i < rows; i += R) {
    constexpr int chunks = chunks_per_block<B>();
    for (int64_t c0 = upper ? i / W : 0; c0 < nchunks; c0 += chunks) {
      const int64_t col = c0 * W;
      T* o = out + i * Mp + col;
      const T* a1 = l1 + i * lr1;
      const T* a2 = l2 != nullptr ? l2 + i * lr2 : nullptr;
      const T* b2 = r2 != nullptr ? r2 + col : nullptr;
      const T* xb = x != nullptr ? x + i * Mp + col : nullptr;
      switch (std::min<int64_t>(chunks, nchunks - c0)) {
        case 1: gemm_block<T, B, R, 1>(o, Mp, a1, lr1, lk1, r1 + col, K1, a2, lr2, lk2, b2, K2, alpha, beta, xb); break;
        case 2: gemm_block<T, B, R, 2>(o, Mp, a1, lr1, lk1, r1 + col, K1, a2, lr2, lk2, b2, K2, alpha, beta, xb); break;
        case 3: gemm_block<T, B, kRows, 3>(o, Mp, a1, lr1, lk1, r1 + col, K1, a2, lr2, lk2, b2, K2, alpha, beta, xb); break;
        default: gemm_block<T, B, kRows, 4>(o, Mp, a1, lr1, lk1, r1 + col, K1, a2, lr2, lk2, b2, K2, alpha, beta, xb); break;
      }
    }
  }
}

struct Dims {
  int64_t D, M, Dr, Mp;  // true and padded sizes
  int rows;              // rows per micro-kernel block: Dr and Mp are multiples of it
};

// out = alpha * (L1 R1 [+ L2 R2]) + beta X with the dims' row blocking (see rows_per_block).
template <typename T, int B>
LVMFAST_INLINE void gemm(T* out, int64_t rows, const Dims& d, const T* l1, int64_t lr1, int64_t lk1,
                         const T* r1, int64_t K1, const T* l2, int64_t lr2, int64_t lk2,
                         const T* r2, int64_t K2, T alpha, T beta, const T* x, bool upper) {
  if (d.rows == kWideRows)
    gemm_rows<T, B, kWideRows>(out, rows, d.Mp, l1, lr1, lk1, r1, K1, l2, lr2, lk2, r2, K2, alpha, beta, x, upper);
  else
    gemm_rows<T, B, kRows>(out, rows, d.Mp, l1, lr1, lk1, r1, K1, l2, lr2, lk2, r2, K2, alpha, beta, x, upper);
}

// A = Q^T Q (Mp x Mp, symmetric: the block upper triangle is computed and mirrored).
template <typename T, int B>
LVMFAST_INLINE void gram(const T* q, T* a, const Dims& d) {
  constexpr int W = Simd<T, B>::width;
  gemm<T, B>(a, d.Mp, d, q, 1, d.Mp, q, d.Dr, static_cast<const T*>(nullptr), 0, 0,
          static_cast<const T*>(nullptr), 0, T(1), T(0), static_cast<const T*>(nullptr), true);
  for (int64_t i = 0; i < d.Mp; ++i)
    for (int64_t j = 0; j < (i / W) * W; ++j) a[i * d.Mp + j] = a[j * d.Mp + i];
}

// ||A - I||_F^2 over the true M x M block (the padding of A is zero), a vector per row chunk:
// the scalar double loop cost as much as the products themselves for M = 16.
template <typename T, int B>
LVMFAST_INLINE T distance_to_identity2(const T* a, const Dims& d) {
  using V = typename Simd<T, B>::vec;
  constexpr int W = Simd<T, B>::width;
  V acc = {};
  for (int64_t i = 0; i < d.M; ++i)
    for (int64_t c = 0; c < d.Mp / W; ++c) {
      V v = load<T, B>(a + i * d.Mp + c * W);
      if (c == i / W) v[i % W] -= T(1);
      acc += v * v;
    }
  T sum = 0;
  for (int l = 0; l < W; ++l) sum += acc[l];
  return sum;
}

// The backward's kept iterates: slot i of `slots` holds Q (qs + i QS) and A (as + i AS); `run`
// says which step of the current run goes where (kernels/orthogonal_checkpoints.cuh).
template <typename T>
struct Keep {
  T* qs;
  T* as;
  int64_t slots;
  kernels::BjorckReplay run;
  int64_t slot(int64_t j) const { return run.kept_slot(j, slots); }
};

// Runs up to `steps` steps from the padded matrix in work[0] (work: two Q buffers, and one A).
// test: stop at the first step whose ||A - I||_F <= tol (the forward; the step count is
// returned), else run exactly `steps` Gram products and steps - 1 updates (a replay of steps
// taken before). keep (may be null): the steps to keep; a kept step's update is written straight
// into its successor's slot when that is kept too, so storing every step copies nothing.
// *result: the last Q, where the forward's output is.
template <typename T, int B>
LVMFAST_INLINE int64_t run_steps_impl(T* work, T* work_a, const Dims& d, int64_t steps, T tol2,
                                      bool test, const Keep<T>* keep, const T** result) {
  const int64_t QS = d.Dr * d.Mp, AS = d.Mp * d.Mp;
  T* q = work;
  int64_t k = 0;
  for (; k < steps; ++k) {
    const int64_t slot = keep != nullptr ? keep->slot(k) : -1;
    T* a = slot >= 0 ? keep->as + slot * AS : work_a;
    gram<T, B>(q, a, d);
    if (test && !(distance_to_identity2<T, B>(a, d) > tol2)) break;  // converged (or not a number): this matrix stops here
    if (slot >= 0 && q != keep->qs + slot * QS) std::memcpy(keep->qs + slot * QS, q, sizeof(T) * QS);
    if (!test && k + 1 == steps) break;
    // Q_{j+1} = 1.5 Q - 0.5 Q A
    const int64_t next = keep != nullptr ? keep->slot(k + 1) : -1;
    T* qn = next >= 0 ? keep->qs + next * QS : (q == work ? work + QS : work);
    gemm<T, B>(qn, d.Dr, d, q, d.Mp, 1, a, d.M, static_cast<const T*>(nullptr), 0, 0,
            static_cast<const T*>(nullptr), 0, T(-0.5), T(1.5), q, false);
    q = qn;
  }
  *result = q;
  return k;
}

// One step of the walk back through Q_{j+1} = 1.5 Q_j - 0.5 Q_j A_j: G <- 1.5 G - 0.5 (G A +
// Q (S + S^T)) with S = Q^T G, into gn. S + S^T: for one vector a row (M <= W) the two-product
// gemm Q^T G + G^T Q costs less than a scalar transpose; wider S is computed once and summed with
// its transpose on the triangle.
template <typename T, int B>
LVMFAST_INLINE void backward_step_impl(const T* q, const T* a, const T* g, T* gn, T* s, T* ssym,
                                       const Dims& d) {
  constexpr int W = Simd<T, B>::width;
  if (d.Mp == W) {
    gemm<T, B>(ssym, d.Mp, d, q, 1, d.Mp, g, d.Dr, g, 1, d.Mp, q, d.Dr, T(1), T(0),
            static_cast<const T*>(nullptr), false);
  } else {
    gemm<T, B>(s, d.Mp, d, q, 1, d.Mp, g, d.Dr, static_cast<const T*>(nullptr), 0, 0,
            static_cast<const T*>(nullptr), 0, T(1), T(0), static_cast<const T*>(nullptr), false);
    for (int64_t i = 0; i < d.Mp; ++i)
      for (int64_t c = i; c < d.Mp; ++c)
        ssym[i * d.Mp + c] = ssym[c * d.Mp + i] = s[i * d.Mp + c] + s[c * d.Mp + i];
  }
  gemm<T, B>(gn, d.Dr, d, g, d.Mp, 1, a, d.M, q, d.Mp, 1, ssym, d.M, T(-0.5), T(1.5), g, false);
}

// Multiversioned entry points; the backward calls the same run_steps as the forward. 64-byte
// vectors with AVX-512, 32-byte ones otherwise (simd.h): the same sums in the same order but
// the norm's lanes, and Dims' padding (to 64 bytes) is a multiple of both.
#define LVMFAST_BJ_ENTRY(T)                                                                    \
  LVMFAST_MULTIVERSION int64_t run_steps(T* work, T* work_a, const Dims& d, int64_t steps,     \
                                         T tol2, bool test, const Keep<T>* keep,               \
                                         const T** result) {                                   \
    return wide_vectors() ? run_steps_impl<T, 64>(work, work_a, d, steps, tol2, test, keep, result) \
                          : run_steps_impl<T, 32>(work, work_a, d, steps, tol2, test, keep, result); \
  }                                                                                            \
  LVMFAST_MULTIVERSION void backward_step(const T* q, const T* a, const T* g, T* gn, T* s,     \
                                          T* ssym, const Dims& d) {                            \
    if (wide_vectors())                                                                        \
      backward_step_impl<T, 64>(q, a, g, gn, s, ssym, d);                                      \
    else                                                                                       \
      backward_step_impl<T, 32>(q, a, g, gn, s, ssym, d);                                      \
  }
LVMFAST_BJ_ENTRY(float)
LVMFAST_BJ_ENTRY(double)
#undef LVMFAST_BJ_ENTRY

// Copies matrix src (D x M, row-major) into a zeroed (Dr x Mp) buffer, and back.
template <typename T>
void pad_in(const T* src, T* dst, const Dims& d) {
  std::fill(dst, dst + d.Dr * d.Mp, T(0));
  for (int64_t i = 0; i < d.D; ++i) std::memcpy(dst + i * d.Mp, src + i * d.M, sizeof(T) * d.M);
}
template <typename T>
void pad_out(const T* src, T* dst, const Dims& d) {
  for (int64_t i = 0; i < d.D; ++i) std::memcpy(dst + i * d.M, src + i * d.Mp, sizeof(T) * d.M);
}

template <typename T>
Dims dims_of(const at::Tensor& q) {
  const int64_t D = q.size(-2), M = q.size(-1), W = Simd<T>::width;
  const int64_t Mp = std::max<int64_t>(W, (M + W - 1) / W * W);
  const int rows = rows_per_block(Mp / W);  // W >= 8 = kWideRows, so Mp is a multiple too
  return {D, M, std::max<int64_t>(rows, (D + rows - 1) / rows * rows), Mp, rows};
}

void check_cpu(const char* op, const at::Tensor& q) {
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, op,
                    ": on the CPU q must be float32 or float64, got ", q.scalar_type());
}

at::Tensor bjorck_orthonormalize_cpu(const at::Tensor& q, int64_t max_steps, double tol) {
  check_bjorck_inputs("bjorck_orthonormalize", q, max_steps, tol);
  check_cpu("bjorck_orthonormalize", q);
  const at::Tensor qc = q.contiguous();
  at::Tensor out = empty_for_writing(q.sizes(), q.options());
  if (q.numel() == 0) return out;
  const int64_t D = q.size(-2), M = q.size(-1), N = q.numel() / (D * M);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "bjorck_orthonormalize_cpu", [&] {
    const Dims d = dims_of<scalar_t>(q);
    const scalar_t tol2 = static_cast<scalar_t>(tol * tol);
    const scalar_t* qp = qc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t m0, int64_t m1) {
      std::vector<scalar_t> work(2 * d.Dr * d.Mp), work_a(d.Mp * d.Mp);
      for (int64_t m = m0; m < m1; ++m) {
        pad_in(qp + m * D * M, work.data(), d);
        const scalar_t* result = nullptr;
        run_steps(work.data(), work_a.data(), d, max_steps, tol2, true,
                  static_cast<const Keep<scalar_t>*>(nullptr), &result);
        pad_out(result, op + m * D * M, d);
      }
    });
  });
  return out;
}

at::Tensor bjorck_orthonormalize_backward_cpu(const at::Tensor& grad, const at::Tensor& q,
                                              int64_t max_steps, double tol) {
  check_bjorck_inputs("bjorck_orthonormalize_backward", q, max_steps, tol);
  check_cpu("bjorck_orthonormalize_backward", q);
  TORCH_CHECK_VALUE(grad.sizes() == q.sizes(), "bjorck_orthonormalize_backward: grad must have shape ",
                    q.sizes(), ", got ", grad.sizes());
  const at::Tensor qc = q.contiguous(), gc = grad.to(q.scalar_type()).contiguous();
  at::Tensor gq = empty_for_writing(q.sizes(), q.options());
  if (q.numel() == 0) return gq;
  const int64_t D = q.size(-2), M = q.size(-1), N = q.numel() / (D * M);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "bjorck_orthonormalize_backward_cpu", [&] {
    const Dims d = dims_of<scalar_t>(q);
    const scalar_t tol2 = static_cast<scalar_t>(tol * tol);
    const scalar_t* qp = qc.data_ptr<scalar_t>();
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    scalar_t* gqp = gq.data_ptr<scalar_t>();
    const int64_t QS = d.Dr * d.Mp, AS = d.Mp * d.Mp, slots = kernels::bjorck_slots(max_steps);
    at::parallel_for(0, N, 1, [&](int64_t m0, int64_t m1) {
      // Per-thread scratch: the kept iterates of one matrix at a time, at most bjorck_slots.
      std::vector<scalar_t> kept_q(slots * QS), kept_a(slots * AS), work(2 * QS), work_a(AS);
      std::vector<scalar_t> g(QS), gn(QS), s(AS), ssym(AS);
      const scalar_t* result = nullptr;
      // Replays r (kernels/orthogonal_checkpoints.cuh) from its source into the slots.
      auto replay = [&](const scalar_t* q0, const kernels::BjorckReplay& r) {
        if (r.source < 0)
          pad_in(q0, work.data(), d);
        else
          std::memcpy(work.data(), kept_q.data() + r.source * QS, sizeof(scalar_t) * QS);
        const Keep<scalar_t> keep{kept_q.data(), kept_a.data(), slots, r};
        run_steps(work.data(), work_a.data(), d, r.steps, tol2, false, &keep, &result);
      };
      for (int64_t m = m0; m < m1; ++m) {
        const scalar_t* q0 = qp + m * D * M;
        pad_in(q0, work.data(), d);
        const Keep<scalar_t> rerun{kept_q.data(), kept_a.data(), slots, kernels::bjorck_rerun(max_steps)};
        const int64_t k = run_steps(work.data(), work_a.data(), d, max_steps, tol2, true, &rerun, &result);
        pad_in(gp + m * D * M, g.data(), d);
        const kernels::BjorckCheckpoints plan(k, slots);
        kernels::BjorckReplay r;
        for (int64_t j = k - 1; j >= 0; --j) {
          for (int64_t level = 0; level < plan.levels(); ++level)
            if (plan.refill(level, j, &r)) replay(q0, r);
          if (plan.step_replay(j, &r)) replay(q0, r);
          const int64_t slot = plan.slot(j);
          backward_step(kept_q.data() + slot * QS, kept_a.data() + slot * AS, g.data(), gn.data(),
                        s.data(), ssym.data(), d);
          std::swap(g, gn);
        }
        pad_out(g.data(), gqp + m * D * M, d);
      }
    });
  });
  return gq;
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CPU, m) {
  m.impl("bjorck_orthonormalize", &bjorck_orthonormalize_cpu);
  m.impl("bjorck_orthonormalize_backward", &bjorck_orthonormalize_backward_cpu);
}

}  // namespace lvmfast
