// CUDA kernels of the sylvester family: sylvester_flow forward and backward.
// Math contract: csrc/sylvester.h. Launchers: sylvester.cuh. No torch headers here.
//
// Work and floors at the benchmark shape, B = 1024, D = M = 64, amortized float32, on an
// H100 SXM (3.35 TB/s HBM3, 67 TFLOP/s FP32):
//   forward : per sample two triangular mat-vecs (R2 y, R1 h), 2 * M(M+1)/2 multiply-adds,
//             plus 2 D M for a dense Q: 8.3 kFLOP (triangular) .. 25 kFLOP (Householder) a
//             sample, 8.5 .. 25 MFLOP a step: under 0.4 us of arithmetic. Bytes: the two upper
//             triangles, 2 * 2080 * 4 = 16.6 kB a sample = 17.0 MB a step (+ 16.8 MB for a
//             (B, 64, 64) Householder Q, + 8.4 MB for an orthogonal (B, 64, 32) one): 5.1 us
//             (triangular) .. 10 us (Householder) at 3.35 TB/s. Memory-bound by ~20x.
//   backward: reads the triangles (and Q) again, writes the full (B, M, M) gradients of R1 and
//             R2 (33.6 MB, zeros below the diagonal included) and of Q: 51 MB = 15 us
//             (triangular) .. 101 MB = 30 us (Householder).
//   Four triangular flows, forward + backward: ~4 x 20 us = 80 us floor, plus ~8 launches.
//
// Design: a block of 128 threads owns one sample at a time (grid-stride over the batch).
// The sample's vectors (z, y, h, c, gradients: O(D + M)) live in shared memory. Its matrices
// are staged there too when they fit (kStagedSmemLimit): every thread issues its share of
// the upper triangles (and of a dense Q) at once, as asynchronous copies (cp.async, sm_80+) when
// no conversion is needed, so a sample's loads overlap. The mat-vecs then read shared memory:
//   * R v and Q v (rows): a group of g threads of one warp per row, all rows of a pass at once
//     (g = 2 at M = 64), a shuffle reduction per group, and tanh, log and the gradient terms of
//     every row evaluated in parallel. Row strides are padded (staged_ld) so that the groups of
//     a warp hit 32 distinct banks.
//   * R^T v and Q^T v (columns): one thread per column, rows in the loop (consecutive threads
//     read consecutive addresses: coalesced, free of bank conflicts).
//   * gradients of R1, R2, Q: rows by warps, columns by lanes, one coalesced store per element
//     (the zeros below the diagonal are written in the same pass, no memset).
// Matrices too large for shared memory are read from global memory, one warp per row with the
// lanes along it. The backward pass recomputes y, h and c; nothing but the inputs is saved.
// A shared parameter is staged once per block, and its gradient is accumulated into the block's
// own workspace slice (no atomics: each element is owned by one thread of one block); the host
// sums the slices.
//
// History (H100, benchmarks/results/gpu-h100-2026-11-26*.md): mat-vecs reading global memory
// took 4-6x the floor in kernel time; staging with register batches and one warp per row, in
// series over the rows, still took 4.0-9.1x: the rows' shuffle reductions, tanh and log ran one
// after another. The row groups and asynchronous copies address that.
#include "convert.cuh"
#include "sylvester.cuh"

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace lvmfast {
namespace kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
// Staged kernels only up to this much shared memory a block: two blocks still fit on an SM.
constexpr size_t kStagedSmemLimit = 96 * 1024;

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t load(const T* p, int64_t i) {
  return to_acc<acc_t>(p[i]);
}

// tanh and log|x| in double for float: setup.py builds with fast math, which turns tanhf into
// the tanh.approx.f32 instruction (2^-11 relative error) and logf into lg2.approx. The double
// routines are not affected and round to within an ulp of float; M of them per sample, run
// by M threads at once, cost little next to the sample's M^2 loads.
__device__ __forceinline__ float tanh_acc(float x) {
  return static_cast<float>(tanh(static_cast<double>(x)));
}
__device__ __forceinline__ double tanh_acc(double x) { return tanh(x); }
__device__ __forceinline__ float log_abs(float x) {
  return static_cast<float>(log(fabs(static_cast<double>(x))));
}
__device__ __forceinline__ double log_abs(double x) { return log(fabs(x)); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Threads that share a row in the staged row dots: the largest power of two g <= 32 with
// g * rows <= kThreads, so that every row of a pass runs at once and a group sits in one warp.
__host__ __device__ __forceinline__ int group_size(int64_t rows) {
  int g = 1;
  while (g < 32 && 2 * g * rows <= kThreads) g *= 2;
  return g;
}

// Row stride of a staged rows x cols matrix. Lane j of row m's group starts at column
// m + j (upper triangle) or j (dense), i.e. at element m (ld + 1) + j or m ld + j; with
// ld + 1 (upper) or ld (dense) = g mod 32, the 32 / g rows of a warp times g lanes fall on
// 32 distinct banks.
__host__ __device__ __forceinline__ int64_t staged_ld(int64_t rows, int64_t cols, bool upper) {
  const int64_t want = (group_size(rows) - (upper ? 1 : 0)) % 32;
  return cols + ((want - cols % 32) % 32 + 32) % 32;
}

// sum_{k >= k0} row[k] v[k], by one warp (all lanes get the result).
template <typename acc_t, typename mat_t>
__device__ __forceinline__ acc_t warp_row_dot(const mat_t* row, const acc_t* v, int64_t k0,
                                              int64_t n, int lane) {
  acc_t s = 0;
  for (int64_t k = k0 + lane; k < n; k += 32) s += load<acc_t>(row, k) * v[k];
  return warp_sum(s);
}

// emit(m, sum_{k >= k0} A[m ld + k] v[k]) for every row m < rows, on one thread per row, with
// k0 = m for an upper triangle and 0 for a dense matrix. Staged (shared memory): a group of
// group_size(rows) lanes per row. Global memory: a warp per row, lanes along it (coalesced).
// Every thread of the block must call it (the shuffles need whole warps).
template <bool kStaged, typename acc_t, typename mat_t, typename Emit>
__device__ __forceinline__ void row_dots(const mat_t* A, int64_t ld, const acc_t* v,
                                         int64_t rows, int64_t cols, bool upper, int tid,
                                         Emit&& emit) {
  if constexpr (kStaged) {
    // staged sizes are small (kStagedSmemLimit): 32-bit indices
    const int g = group_size(rows), j = tid & (g - 1), per_pass = kThreads / g;
    const int n = static_cast<int>(cols), lda = static_cast<int>(ld);
    for (int base = 0; base < rows; base += per_pass) {
      const int m = base + tid / g;
      acc_t s = 0;
      if (m < rows) {
        const mat_t* row = A + m * lda;
        for (int k = (upper ? m : 0) + j; k < n; k += g) s += load<acc_t>(row, k) * v[k];
      }
      for (int offset = g >> 1; offset > 0; offset >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, offset);
      if (m < rows && j == 0) emit(m, s);
    }
  } else {
    const int lane = tid & 31, warp = tid >> 5;
    for (int64_t m = warp; m < rows; m += kWarps) {
      const acc_t s = warp_row_dot(A + m * ld, v, upper ? m : 0, cols, lane);
      if (lane == 0) emit(m, s);
    }
  }
}

// sum_{m <= k} R[m ld + k] v[m]: column k of the upper triangle, by one thread.
template <typename acc_t, typename mat_t>
__device__ __forceinline__ acc_t column_dot(const mat_t* R, int64_t ld, const acc_t* v,
                                            int64_t k) {
  acc_t s = 0;
  for (int64_t m = 0; m <= k; ++m) s += load<acc_t>(R, m * ld + k) * v[m];
  return s;
}

// Stores an amortized gradient element, or adds a shared one into the block's slice.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void put(scalar_t* own, acc_t* shared, int64_t i, acc_t v) {
  if (shared != nullptr)
    shared[i] += v;
  else
    own[i] = from_acc<scalar_t>(v);
}

// Global-to-shared copy of one element without a register round trip (cp.async, sm_80+), so a
// thread can have all of its share of a sample in flight at once. Plain copy elsewhere (older
// GPUs, the CPU emulation).
template <typename T>
__device__ __forceinline__ void copy_async(T* dst, const T* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "cp.async copies 4, 8 or 16 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(dst))),
               "l"(src), "n"(static_cast<int>(sizeof(T))));
#else
  *dst = *src;
#endif
}
__device__ __forceinline__ void wait_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// Shared-memory copies of one sample's matrices: the upper triangles of R1 and R2 (the lower
// triangles are neither read nor written) and a dense Q, row strides padded (staged_ld).
template <typename acc_t>
struct Staged {
  acc_t *r1, *r2, *q;
  int64_t ldr, ldq;
};

constexpr int kBatch = 8;

// dst_a, dst_b (row stride ld) = a, b (rows x cols, row-major), the upper triangles only if
// `upper`; b is skipped unless copy_b, a unless copy_a. Each thread walks the flat index in
// steps of the block (coalesced), (row, col) advanced without a division per step. Without a
// conversion the copies are asynchronous (the caller waits: wait_async_copies); with one, each
// thread issues kBatch loads per matrix before storing any, so that many loads are in flight.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_pair(acc_t* dst_a, const scalar_t* a, bool copy_a,
                                           acc_t* dst_b, const scalar_t* b, bool copy_b,
                                           int rows, int cols, int ld, bool upper, int tid) {
  if (!copy_a && !copy_b) return;
  const int n = rows * cols, dr = kThreads / cols, dc = kThreads % cols;
  int i = tid, r = tid / cols, c = tid % cols;
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
#pragma unroll 1
    for (; i < n; i += kThreads, r += dr, c += dc) {
      if (c >= cols) c -= cols, ++r;
      if (upper && c < r) continue;
      if (copy_a) copy_async(dst_a + r * ld + c, a + i);
      if (copy_b) copy_async(dst_b + r * ld + c, b + i);
    }
  } else {
    while (i < n) {
      acc_t va[kBatch], vb[kBatch];
      int at[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const bool keep = i < n && (!upper || c >= r);
        at[u] = keep ? r * ld + c : -1;
        va[u] = keep && copy_a ? load<acc_t>(a, i) : acc_t(0);
        vb[u] = keep && copy_b ? load<acc_t>(b, i) : acc_t(0);
        i += kThreads, r += dr, c += dc;
        if (c >= cols) c -= cols, ++r;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (at[u] < 0) continue;
        if (copy_a) dst_a[at[u]] = va[u];
        if (copy_b) dst_b[at[u]] = vb[u];
      }
    }
  }
}

// A shared parameter (batch stride 0) is copied for the block's first sample only.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage(const Staged<acc_t>& dst, const scalar_t* R1,
                                      const scalar_t* R2, const scalar_t* Q,
                                      const SylvesterDims& p, bool first, int tid) {
  // staged sizes are small (kStagedSmemLimit): 32-bit indices
  const int M = static_cast<int>(p.M), D = static_cast<int>(p.D);
  stage_pair(dst.r1, R1, first || p.r1_bs != 0, dst.r2, R2, first || p.r2_bs != 0, M, M,
             static_cast<int>(dst.ldr), true, tid);
  if (p.qkind == 2)
    stage_pair(dst.q, Q, first || p.q_bs != 0, dst.q, Q, false, D, M,
               static_cast<int>(dst.ldq), false, tid);
  wait_async_copies();
}

template <typename acc_t>
__host__ __device__ __forceinline__ Staged<acc_t> staged_layout(acc_t* mats,
                                                                const SylvesterDims& p) {
  const int64_t ldr = staged_ld(p.M, p.M, true), ldq = staged_ld(p.D, p.M, false);
  return {mats, mats + p.M * ldr, mats + 2 * p.M * ldr, ldr, ldq};
}

// Shared-memory elements of a block: the vectors, then (staged) the matrices.
__host__ __device__ __forceinline__ int64_t staged_elements(const SylvesterDims& p) {
  return 2 * p.M * staged_ld(p.M, p.M, true) +
         (p.qkind == 2 ? p.D * staged_ld(p.D, p.M, false) : 0);
}
__host__ __device__ __forceinline__ int64_t forward_vector_elements(const SylvesterDims& p) {
  return p.D + 3 * p.M;
}
__host__ __device__ __forceinline__ int64_t backward_vector_elements(const SylvesterDims& p) {
  return 2 * p.D + 9 * p.M;
}

// One sample of the forward pass; R1, R2, Q point to global memory (row stride M) or to the
// staged copies (row strides ldr, ldq).
template <bool kStaged, typename scalar_t, typename acc_t, typename mat_t>
__device__ __forceinline__ void forward_sample(const scalar_t* zn, const mat_t* R1,
                                               const mat_t* R2, const scalar_t* bn,
                                               const mat_t* Q, int64_t ldr, int64_t ldq,
                                               scalar_t* outn, scalar_t* logdetn,
                                               acc_t* vectors, acc_t* warp_logdet,
                                               const SylvesterDims& p, int tid) {
  const int64_t D = p.D, M = p.M;
  const int lane = tid & 31, warp = tid >> 5;
  acc_t* zs = vectors;
  acc_t* y = zs + D;
  acc_t* h = y + M;
  acc_t* c = h + M;
  for (int64_t d = tid; d < D; d += kThreads) zs[d] = load<acc_t>(zn, d);
  __syncthreads();
  for (int64_t m = tid; m < M; m += kThreads) {
    if (p.qkind == 0) {
      y[m] = zs[m];
    } else if (p.qkind == 1) {
      y[m] = zs[D - 1 - m];
    } else {
      acc_t s = 0;
      for (int64_t d = 0; d < D; ++d) s += load<acc_t>(Q, d * ldq + m) * zs[d];
      y[m] = s;
    }
  }
  __syncthreads();
  acc_t my_logdet = 0;
  row_dots<kStaged>(R2, ldr, y, M, M, true, tid, [&](int64_t m, acc_t a) {
    const acc_t hm = tanh_acc(a + load<acc_t>(bn, m));
    h[m] = hm;
    const acc_t diag = load<acc_t>(R1, m * ldr + m) * load<acc_t>(R2, m * ldr + m);
    my_logdet += log_abs(acc_t(1) + (acc_t(1) - hm * hm) * diag);
  });
  __syncthreads();
  row_dots<kStaged>(R1, ldr, h, M, M, true, tid, [&](int64_t m, acc_t s) { c[m] = s; });
  __syncthreads();
  if (p.qkind != 2) {
    for (int64_t d = tid; d < D; d += kThreads)
      outn[d] = from_acc<scalar_t>(zs[d] + c[p.qkind == 0 ? d : D - 1 - d]);
  } else {
    row_dots<kStaged>(Q, ldq, c, D, M, false, tid,
                      [&](int64_t d, acc_t s) { outn[d] = from_acc<scalar_t>(zs[d] + s); });
  }
  my_logdet = warp_sum(my_logdet);
  if (lane == 0) warp_logdet[warp] = my_logdet;
  __syncthreads();
  if (tid == 0) {
    acc_t total = 0;
    for (int w = 0; w < kWarps; ++w) total += warp_logdet[w];
    *logdetn = from_acc<scalar_t>(total);
  }
}

template <typename scalar_t, typename acc_t, bool kStaged>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ r1,
                   const scalar_t* __restrict__ r2, const scalar_t* __restrict__ b,
                   const scalar_t* __restrict__ q, scalar_t* __restrict__ out,
                   scalar_t* __restrict__ logdet, SylvesterDims p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ acc_t warp_logdet[kWarps];
  acc_t* vectors = reinterpret_cast<acc_t*>(smem_raw);
  const Staged<acc_t> staged = staged_layout(vectors + forward_vector_elements(p), p);
  const int tid = threadIdx.x;
  for (int64_t n = blockIdx.x; n < p.B; n += gridDim.x) {
    const scalar_t* R1 = r1 + n * p.r1_bs;
    const scalar_t* R2 = r2 + n * p.r2_bs;
    const scalar_t* bn = b + n * p.b_bs;
    const scalar_t* Q = p.qkind == 2 ? q + n * p.q_bs : nullptr;
    if constexpr (kStaged) {
      // forward_sample's first barrier orders these copies before their use
      stage(staged, R1, R2, Q, p, n == blockIdx.x, tid);
      forward_sample<true>(z + n * p.D, staged.r1, staged.r2, bn, staged.q, staged.ldr,
                           staged.ldq, out + n * p.D, logdet + n, vectors, warp_logdet, p, tid);
    } else {
      forward_sample<false>(z + n * p.D, R1, R2, bn, Q, p.M, p.M, out + n * p.D, logdet + n,
                            vectors, warp_logdet, p, tid);
    }
    __syncthreads();  // the next sample's copies overwrite what this one read
  }
}

// Gradient outputs of one sample: amortized pointers (already offset to the sample) or, for a
// shared parameter, the block's workspace slice ws_* (its own pointer is then null).
template <typename scalar_t, typename acc_t>
struct SampleGrads {
  scalar_t *z, *r1, *r2, *b, *q;
  acc_t *ws_r1, *ws_r2, *ws_b, *ws_q;
};

template <bool kStaged, typename scalar_t, typename acc_t, typename mat_t>
__device__ __forceinline__ void backward_sample(const scalar_t* gn, acc_t gl, const scalar_t* zn,
                                                const mat_t* R1, const mat_t* R2,
                                                const scalar_t* bn, const mat_t* Q, int64_t ldr,
                                                int64_t ldq,
                                                const SampleGrads<scalar_t, acc_t>& out,
                                                acc_t* vectors, const SylvesterDims& p, int tid) {
  const int64_t D = p.D, M = p.M;
  const bool dense = p.qkind == 2;
  const int lane = tid & 31, warp = tid >> 5;
  acc_t* zs = vectors;
  acc_t* gs = zs + D;
  acc_t* y = gs + D;
  acc_t* h = y + M;
  acc_t* gc = h + M;
  acc_t* gh = gc + M;
  acc_t* ga = gh + M;
  acc_t* gy = ga + M;
  acc_t* c = gy + M;
  acc_t* dg1 = c + M;
  acc_t* dg2 = dg1 + M;
  for (int64_t d = tid; d < D; d += kThreads) {
    zs[d] = load<acc_t>(zn, d);
    gs[d] = load<acc_t>(gn, d);
  }
  __syncthreads();
  // y = Q^T z and gc = Q^T g, in one pass over Q.
  for (int64_t m = tid; m < M; m += kThreads) {
    if (!dense) {
      const int64_t d = p.qkind == 0 ? m : D - 1 - m;
      y[m] = zs[d];
      gc[m] = gs[d];
    } else {
      acc_t sy = 0, sc = 0;
      for (int64_t d = 0; d < D; ++d) {
        const acc_t qv = load<acc_t>(Q, d * ldq + m);
        sy += qv * zs[d];
        sc += qv * gs[d];
      }
      y[m] = sy;
      gc[m] = sc;
    }
  }
  __syncthreads();
  // h, and the log-det's gradients: w.r.t. h (kept in ga until gh is known) and the diagonals.
  row_dots<kStaged>(R2, ldr, y, M, M, true, tid, [&](int64_t m, acc_t a) {
    const acc_t hm = tanh_acc(a + load<acc_t>(bn, m));
    const acc_t r1d = load<acc_t>(R1, m * ldr + m), r2d = load<acc_t>(R2, m * ldr + m);
    const acc_t s = acc_t(1) - hm * hm;
    const acc_t w = gl / (acc_t(1) + s * r1d * r2d);
    h[m] = hm;
    ga[m] = acc_t(-2) * hm * r1d * r2d * w;
    dg1[m] = s * r2d * w;
    dg2[m] = s * r1d * w;
  });
  __syncthreads();
  // gh = R1^T gc; c = R1 h (needed for grad_q only).
  for (int64_t k = tid; k < M; k += kThreads) gh[k] = column_dot(R1, ldr, gc, k);
  if (dense) row_dots<kStaged>(R1, ldr, h, M, M, true, tid, [&](int64_t m, acc_t s) { c[m] = s; });
  __syncthreads();
  // grad_r1 = triu(gc h^T) + diag(dg1); then ga = s * (gh + d logdet / dh) = grad_b.
  for (int64_t m = warp; m < M; m += kWarps) {
    for (int64_t k = lane; k < M; k += 32) {
      acc_t v = k >= m ? gc[m] * h[k] : acc_t(0);
      if (k == m) v += dg1[m];
      put(out.r1, out.ws_r1, m * M + k, v);
    }
  }
  for (int64_t m = tid; m < M; m += kThreads) {
    const acc_t v = (acc_t(1) - h[m] * h[m]) * (gh[m] + ga[m]);
    ga[m] = v;
    put(out.b, out.ws_b, m, v);
  }
  __syncthreads();
  // gy = R2^T ga; grad_r2 = triu(ga y^T) + diag(dg2).
  for (int64_t k = tid; k < M; k += kThreads) gy[k] = column_dot(R2, ldr, ga, k);
  for (int64_t m = warp; m < M; m += kWarps) {
    for (int64_t k = lane; k < M; k += 32) {
      acc_t v = k >= m ? ga[m] * y[k] : acc_t(0);
      if (k == m) v += dg2[m];
      put(out.r2, out.ws_r2, m * M + k, v);
    }
  }
  __syncthreads();
  // grad_z = g + Q gy; grad_q = z gy^T + g c^T.
  if (!dense) {
    for (int64_t d = tid; d < D; d += kThreads)
      out.z[d] = from_acc<scalar_t>(gs[d] + gy[p.qkind == 0 ? d : D - 1 - d]);
  } else {
    row_dots<kStaged>(Q, ldq, gy, D, M, false, tid,
                      [&](int64_t d, acc_t s) { out.z[d] = from_acc<scalar_t>(gs[d] + s); });
    for (int64_t d = warp; d < D; d += kWarps)
      for (int64_t m = lane; m < M; m += 32)
        put(out.q, out.ws_q, d * M + m, zs[d] * gy[m] + gs[d] * c[m]);
  }
  __syncthreads();
}

template <typename scalar_t, typename acc_t, bool kStaged>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ grad_logdet,
                    const scalar_t* __restrict__ z, const scalar_t* __restrict__ r1,
                    const scalar_t* __restrict__ r2, const scalar_t* __restrict__ b,
                    const scalar_t* __restrict__ q, scalar_t* __restrict__ grad_z,
                    scalar_t* __restrict__ grad_r1, scalar_t* __restrict__ grad_r2,
                    scalar_t* __restrict__ grad_b, scalar_t* __restrict__ grad_q,
                    acc_t* __restrict__ workspace, int64_t shared_size, SylvesterDims p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t D = p.D, M = p.M, MM = M * M;
  const bool dense = p.qkind == 2;
  acc_t* vectors = reinterpret_cast<acc_t*>(smem_raw);
  const Staged<acc_t> staged = staged_layout(vectors + backward_vector_elements(p), p);
  // This block's slices of the shared parameters' gradient sums (nullptr: amortized).
  acc_t* slice = workspace == nullptr ? nullptr : workspace + blockIdx.x * shared_size;
  SampleGrads<scalar_t, acc_t> out{};
  if (p.r1_bs == 0) out.ws_r1 = slice, slice += MM;
  if (p.r2_bs == 0) out.ws_r2 = slice, slice += MM;
  if (p.b_bs == 0) out.ws_b = slice, slice += M;
  if (dense && p.q_bs == 0) out.ws_q = slice;
  const int tid = threadIdx.x;
  for (int64_t n = blockIdx.x; n < p.B; n += gridDim.x) {
    const scalar_t* R1 = r1 + n * p.r1_bs;
    const scalar_t* R2 = r2 + n * p.r2_bs;
    const scalar_t* bn = b + n * p.b_bs;
    const scalar_t* Q = dense ? q + n * p.q_bs : nullptr;
    out.z = grad_z + n * D;
    out.r1 = out.ws_r1 != nullptr ? nullptr : grad_r1 + n * MM;
    out.r2 = out.ws_r2 != nullptr ? nullptr : grad_r2 + n * MM;
    out.b = out.ws_b != nullptr ? nullptr : grad_b + n * M;
    out.q = !dense || out.ws_q != nullptr ? nullptr : grad_q + n * D * M;
    const acc_t gl = load<acc_t>(grad_logdet, n);
    if constexpr (kStaged) {
      // backward_sample's first barrier orders these copies before their use, and its last
      // one their reuse
      stage(staged, R1, R2, Q, p, n == blockIdx.x, tid);
      backward_sample<true>(grad_out + n * D, gl, z + n * D, staged.r1, staged.r2, bn, staged.q,
                            staged.ldr, staged.ldq, out, vectors, p, tid);
    } else {
      backward_sample<false>(grad_out + n * D, gl, z + n * D, R1, R2, bn, Q, M, M, out, vectors,
                             p, tid);
    }
  }
}

// Launches `kernel` with `smem` bytes of dynamic shared memory (opting in past 48 KB).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), int blocks, size_t smem, cudaStream_t stream,
                   Args... args) {
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<blocks, kThreads, smem, stream>>>(args...);
  return cudaGetLastError();
}

int grid_size(int64_t B, int per_sm, int num_sms) {
  const int64_t cap = static_cast<int64_t>(per_sm) * (num_sms > 0 ? num_sms : 1);
  return static_cast<int>(B < cap ? B : cap);
}

}  // namespace

int sylvester_backward_blocks(int64_t B, bool any_shared, int num_sms) {
  return grid_size(B, any_shared ? 2 : 16, num_sms);
}

template <typename scalar_t, typename acc_t>
cudaError_t sylvester_forward(const scalar_t* z, const scalar_t* r1, const scalar_t* r2,
                              const scalar_t* b, const scalar_t* q, scalar_t* out,
                              scalar_t* logdet, const SylvesterDims& dims, int num_sms,
                              cudaStream_t stream) {
  if (dims.B == 0) return cudaSuccess;
  const size_t vectors = size_t(forward_vector_elements(dims)) * sizeof(acc_t);
  const size_t staged = vectors + size_t(staged_elements(dims)) * sizeof(acc_t);
  const int blocks = grid_size(dims.B, 16, num_sms);
  if (staged <= kStagedSmemLimit) {
    return launch(forward_kernel<scalar_t, acc_t, true>, blocks, staged, stream, z, r1, r2, b, q,
                  out, logdet, dims);
  }
  return launch(forward_kernel<scalar_t, acc_t, false>, blocks, vectors, stream, z, r1, r2, b, q,
                out, logdet, dims);
}

template <typename scalar_t, typename acc_t>
cudaError_t sylvester_backward(const scalar_t* grad_out, const scalar_t* grad_logdet,
                               const scalar_t* z, const scalar_t* r1, const scalar_t* r2,
                               const scalar_t* b, const scalar_t* q, scalar_t* grad_z,
                               scalar_t* grad_r1, scalar_t* grad_r2, scalar_t* grad_b,
                               scalar_t* grad_q, acc_t* workspace, int64_t shared_size,
                               const SylvesterDims& dims, int blocks, cudaStream_t stream) {
  if (dims.B == 0 || blocks <= 0) return cudaSuccess;
  const size_t vectors = size_t(backward_vector_elements(dims)) * sizeof(acc_t);
  const size_t staged = vectors + size_t(staged_elements(dims)) * sizeof(acc_t);
  acc_t* slices = shared_size > 0 ? workspace : nullptr;
  if (staged <= kStagedSmemLimit) {
    return launch(backward_kernel<scalar_t, acc_t, true>, blocks, staged, stream, grad_out,
                  grad_logdet, z, r1, r2, b, q, grad_z, grad_r1, grad_r2, grad_b, grad_q, slices,
                  shared_size, dims);
  }
  return launch(backward_kernel<scalar_t, acc_t, false>, blocks, vectors, stream, grad_out,
                grad_logdet, z, r1, r2, b, q, grad_z, grad_r1, grad_r2, grad_b, grad_q, slices,
                shared_size, dims);
}

#define LVMFAST_INSTANTIATE(scalar_t, acc_t)                                                     \
  template cudaError_t sylvester_forward<scalar_t, acc_t>(                                      \
      const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*,      \
      scalar_t*, scalar_t*, const SylvesterDims&, int, cudaStream_t);                           \
  template cudaError_t sylvester_backward<scalar_t, acc_t>(                                     \
      const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*,      \
      const scalar_t*, const scalar_t*, scalar_t*, scalar_t*, scalar_t*, scalar_t*, scalar_t*,  \
      acc_t*, int64_t, const SylvesterDims&, int, cudaStream_t);

LVMFAST_INSTANTIATE(float, float)
LVMFAST_INSTANTIATE(double, double)
LVMFAST_INSTANTIATE(__half, float)
LVMFAST_INSTANTIATE(__nv_bfloat16, float)
#undef LVMFAST_INSTANTIATE

}  // namespace kernels
}  // namespace lvmfast
