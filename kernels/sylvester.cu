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
// the upper triangles (and of a dense Q) at once, so the loads overlap, and the mat-vecs then
// read shared memory. Reading the matrices from global memory inside the mat-vecs instead (the
// fallback for large M) serializes a memory latency per row: on an H100 that version took
// 4-6x the floor in kernel time (benchmarks/results/gpu-h100-2026-11-26.md). Access order:
//   * R v (upper part of row m): one warp per row, lanes along the row, shuffle reduction.
//   * R^T v (column k, rows m <= k): one thread per column, rows in the loop (consecutive
//     threads read consecutive addresses of row m: coalesced, and free of bank conflicts).
//   * Q^T v: thread per column; Q v: warp per row.
//   * gradients of R1, R2, Q: rows by warps, columns by lanes, one coalesced store per element
//     (the zeros below the diagonal are written in the same pass, no memset).
// The backward pass recomputes y, h and c; nothing but the inputs is saved. A shared parameter
// is staged once per block, and its gradient is accumulated into the block's own workspace
// slice (no atomics: each element is owned by one thread of one block); the host sums the
// slices.
//
// History: the global-memory version ran green on an H100 (2026-11-26). The staged version and
// the double-precision tanh/log have run only under the CPU emulation of tests/cuda_emulator.
#include "convert.cuh"
#include "sylvester.cuh"

#include <cmath>
#include <cstdint>

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
// routines are not affected and round to within an ulp of float; M of them per sample cost
// nothing next to the sample's M^2 loads.
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

// sum_{k >= k0} row[k] v[k], by one warp (all lanes get the result).
template <typename acc_t, typename mat_t>
__device__ __forceinline__ acc_t warp_row_dot(const mat_t* row, const acc_t* v, int64_t k0,
                                              int64_t n, int lane) {
  acc_t s = 0;
  for (int64_t k = k0 + lane; k < n; k += 32) s += load<acc_t>(row, k) * v[k];
  return warp_sum(s);
}

// sum_{m <= k} R[m, k] v[m]: column k of the upper triangle, by one thread.
template <typename acc_t, typename mat_t>
__device__ __forceinline__ acc_t column_dot(const mat_t* R, const acc_t* v, int64_t k,
                                            int64_t M) {
  acc_t s = 0;
  for (int64_t m = 0; m <= k; ++m) s += load<acc_t>(R, m * M + k) * v[m];
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

// Shared-memory copies of one sample's matrices: the upper triangles of R1 and R2 (the lower
// triangles are neither read nor written) and a dense Q. A shared parameter (batch stride 0) is
// copied for the block's first sample only. Each thread walks the flat index in steps of the
// block (coalesced) and issues kBatch loads per matrix before storing any, so that many loads
// are in flight: a load-then-store loop would wait out one memory latency per element.
template <typename acc_t>
struct Staged {
  acc_t *r1, *r2, *q;
};

constexpr int kBatch = 8;

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage(const Staged<acc_t>& dst, const scalar_t* R1,
                                      const scalar_t* R2, const scalar_t* Q,
                                      const SylvesterDims& p, bool first, int tid) {
  // staged sizes are small (kStagedSmemLimit): 32-bit indices
  const int M = static_cast<int>(p.M), MM = M * M;
  const bool copy_r1 = first || p.r1_bs != 0, copy_r2 = first || p.r2_bs != 0;
  // (m, k) of the flat index i = m M + k, advanced by kThreads without a division per step
  const int dm = kThreads / M, dk = kThreads % M;
  int i = tid, m = tid / M, k = tid % M;
  while (i < MM) {
    acc_t v1[kBatch], v2[kBatch];
    int at[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const bool upper = i < MM && k >= m;
      at[u] = upper ? i : -1;
      v1[u] = upper && copy_r1 ? load<acc_t>(R1, i) : acc_t(0);
      v2[u] = upper && copy_r2 ? load<acc_t>(R2, i) : acc_t(0);
      i += kThreads, m += dm, k += dk;
      if (k >= M) k -= M, ++m;
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (at[u] < 0) continue;
      if (copy_r1) dst.r1[at[u]] = v1[u];
      if (copy_r2) dst.r2[at[u]] = v2[u];
    }
  }
  if (p.qkind != 2 || !(first || p.q_bs != 0)) return;
  const int DM = static_cast<int>(p.D) * M;
  for (int base = tid; base < DM; base += kBatch * kThreads) {
    acc_t v[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int j = base + u * kThreads;
      v[u] = j < DM ? load<acc_t>(Q, j) : acc_t(0);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int j = base + u * kThreads;
      if (j < DM) dst.q[j] = v[u];
    }
  }
}

// Shared-memory elements of a block: the vectors, then (staged) the matrices.
__host__ __device__ __forceinline__ int64_t staged_elements(const SylvesterDims& p) {
  return 2 * p.M * p.M + (p.qkind == 2 ? p.D * p.M : 0);
}
__host__ __device__ __forceinline__ int64_t forward_vector_elements(const SylvesterDims& p) {
  return p.D + 3 * p.M;
}
__host__ __device__ __forceinline__ int64_t backward_vector_elements(const SylvesterDims& p) {
  return 2 * p.D + 9 * p.M;
}

// One sample of the forward pass; R1, R2, Q point to global memory or to the staged copies.
template <typename scalar_t, typename acc_t, typename mat_t>
__device__ __forceinline__ void forward_sample(const scalar_t* zn, const mat_t* R1,
                                               const mat_t* R2, const scalar_t* bn,
                                               const mat_t* Q, scalar_t* outn, scalar_t* logdetn,
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
      for (int64_t d = 0; d < D; ++d) s += load<acc_t>(Q, d * M + m) * zs[d];
      y[m] = s;
    }
  }
  __syncthreads();
  acc_t my_logdet = 0;
  for (int64_t m = warp; m < M; m += kWarps) {
    const acc_t hm = tanh_acc(warp_row_dot(R2 + m * M, y, m, M, lane) + load<acc_t>(bn, m));
    if (lane == 0) {
      h[m] = hm;
      const acc_t diag = load<acc_t>(R1, m * M + m) * load<acc_t>(R2, m * M + m);
      my_logdet += log_abs(acc_t(1) + (acc_t(1) - hm * hm) * diag);
    }
  }
  __syncthreads();
  for (int64_t m = warp; m < M; m += kWarps) {
    const acc_t cm = warp_row_dot(R1 + m * M, h, m, M, lane);
    if (lane == 0) c[m] = cm;
  }
  __syncthreads();
  if (p.qkind != 2) {
    for (int64_t d = tid; d < D; d += kThreads)
      outn[d] = from_acc<scalar_t>(zs[d] + c[p.qkind == 0 ? d : D - 1 - d]);
  } else {
    for (int64_t d = warp; d < D; d += kWarps) {
      const acc_t s = warp_row_dot(Q + d * M, c, 0, M, lane);
      if (lane == 0) outn[d] = from_acc<scalar_t>(zs[d] + s);
    }
  }
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
  acc_t* mats = vectors + forward_vector_elements(p);
  const Staged<acc_t> staged{mats, mats + p.M * p.M, mats + 2 * p.M * p.M};
  const int tid = threadIdx.x;
  for (int64_t n = blockIdx.x; n < p.B; n += gridDim.x) {
    const scalar_t* R1 = r1 + n * p.r1_bs;
    const scalar_t* R2 = r2 + n * p.r2_bs;
    const scalar_t* bn = b + n * p.b_bs;
    const scalar_t* Q = p.qkind == 2 ? q + n * p.q_bs : nullptr;
    if constexpr (kStaged) {
      // forward_sample's first barrier orders these copies before their use
      stage(staged, R1, R2, Q, p, n == blockIdx.x, tid);
      forward_sample(z + n * p.D, staged.r1, staged.r2, bn, staged.q, out + n * p.D, logdet + n,
                     vectors, warp_logdet, p, tid);
    } else {
      forward_sample(z + n * p.D, R1, R2, bn, Q, out + n * p.D, logdet + n, vectors, warp_logdet,
                     p, tid);
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

template <typename scalar_t, typename acc_t, typename mat_t>
__device__ __forceinline__ void backward_sample(const scalar_t* gn, acc_t gl, const scalar_t* zn,
                                                const mat_t* R1, const mat_t* R2,
                                                const scalar_t* bn, const mat_t* Q,
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
        const acc_t qv = load<acc_t>(Q, d * M + m);
        sy += qv * zs[d];
        sc += qv * gs[d];
      }
      y[m] = sy;
      gc[m] = sc;
    }
  }
  __syncthreads();
  // h, and the log-det's gradients: w.r.t. h (kept in ga until gh is known) and the diagonals.
  for (int64_t m = warp; m < M; m += kWarps) {
    const acc_t hm = tanh_acc(warp_row_dot(R2 + m * M, y, m, M, lane) + load<acc_t>(bn, m));
    if (lane == 0) {
      const acc_t r1d = load<acc_t>(R1, m * M + m), r2d = load<acc_t>(R2, m * M + m);
      const acc_t s = acc_t(1) - hm * hm;
      const acc_t w = gl / (acc_t(1) + s * r1d * r2d);
      h[m] = hm;
      ga[m] = acc_t(-2) * hm * r1d * r2d * w;
      dg1[m] = s * r2d * w;
      dg2[m] = s * r1d * w;
    }
  }
  __syncthreads();
  // gh = R1^T gc; c = R1 h (needed for grad_q only).
  for (int64_t k = tid; k < M; k += kThreads) gh[k] = column_dot(R1, gc, k, M);
  if (dense) {
    for (int64_t m = warp; m < M; m += kWarps) {
      const acc_t cm = warp_row_dot(R1 + m * M, h, m, M, lane);
      if (lane == 0) c[m] = cm;
    }
  }
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
  for (int64_t k = tid; k < M; k += kThreads) gy[k] = column_dot(R2, ga, k, M);
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
    for (int64_t d = warp; d < D; d += kWarps) {
      const acc_t s = warp_row_dot(Q + d * M, gy, 0, M, lane);
      if (lane == 0) out.z[d] = from_acc<scalar_t>(gs[d] + s);
      for (int64_t m = lane; m < M; m += 32) put(out.q, out.ws_q, d * M + m, zs[d] * gy[m] + gs[d] * c[m]);
    }
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
  acc_t* mats = vectors + backward_vector_elements(p);
  const Staged<acc_t> staged{mats, mats + MM, mats + 2 * MM};
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
      backward_sample(grad_out + n * D, gl, z + n * D, staged.r1, staged.r2, bn, staged.q, out,
                      vectors, p, tid);
    } else {
      backward_sample(grad_out + n * D, gl, z + n * D, R1, R2, bn, Q, out, vectors, p, tid);
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
