// CUDA kernels of the sylvester family: sylvester_flow forward and backward.
// Math contract: csrc/sylvester.h. Launchers: sylvester.cuh. No torch headers here.
// Written and compiled (nvcc, sm_80 and sm_90) on a machine without a GPU: never run yet.
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
// Design: a block of 128 threads owns one sample at a time (grid-stride over the batch);
// the sample's vectors (z, y, h, c, gradients: O(D + M)) live in shared memory, its matrices
// are streamed from global memory exactly in the access order that coalesces:
//   * R v (upper part of row m): one warp per row, lanes along the row, shuffle reduction.
//   * R^T v (column k, rows m <= k): one thread per column, rows in the loop (consecutive
//     threads read consecutive addresses of row m).
//   * Q^T v: thread per column; Q v: warp per row.
//   * gradients of R1, R2, Q: flat loops over the (M, M) / (D, M) index, one coalesced store
//     per element (the zeros below the diagonal are written in the same pass, no memset).
// The backward pass recomputes y, h and c (the second read of a sample's triangles mostly hits
// L2); nothing but the inputs is saved. A shared parameter's gradient is accumulated into the
// block's own workspace slice (no atomics: each element is owned by one thread of one block),
// and the host sums the slices.
#include "convert.cuh"
#include "sylvester.cuh"

#include <cmath>
#include <cstdint>

namespace lvmfast {
namespace kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t load(const scalar_t* p, int64_t i) {
  return to_acc<acc_t>(p[i]);
}

__device__ __forceinline__ float tanh_acc(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_acc(double x) { return tanh(x); }
__device__ __forceinline__ float log_abs(float x) { return logf(fabsf(x)); }
__device__ __forceinline__ double log_abs(double x) { return log(fabs(x)); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// sum_{k >= k0} row[k] v[k], by one warp (all lanes get the result).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t warp_row_dot(const scalar_t* row, const acc_t* v, int64_t k0,
                                              int64_t n, int lane) {
  acc_t s = 0;
  for (int64_t k = k0 + lane; k < n; k += 32) s += load<acc_t>(row, k) * v[k];
  return warp_sum(s);
}

// sum_{m <= k} R[m, k] v[m]: column k of the upper triangle, by one thread.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t column_dot(const scalar_t* R, const acc_t* v, int64_t k,
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

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ r1,
                   const scalar_t* __restrict__ r2, const scalar_t* __restrict__ b,
                   const scalar_t* __restrict__ q, scalar_t* __restrict__ out,
                   scalar_t* __restrict__ logdet, SylvesterDims p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ acc_t warp_logdet[kWarps];
  const int64_t D = p.D, M = p.M;
  acc_t* zs = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* y = zs + D;
  acc_t* h = y + M;
  acc_t* c = h + M;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int64_t n = blockIdx.x; n < p.B; n += gridDim.x) {
    const scalar_t* R1 = r1 + n * p.r1_bs;
    const scalar_t* R2 = r2 + n * p.r2_bs;
    const scalar_t* bn = b + n * p.b_bs;
    const scalar_t* Q = p.qkind == 2 ? q + n * p.q_bs : nullptr;
    for (int64_t d = tid; d < D; d += kThreads) zs[d] = load<acc_t>(z, n * D + d);
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
        out[n * D + d] = from_acc<scalar_t>(zs[d] + c[p.qkind == 0 ? d : D - 1 - d]);
    } else {
      for (int64_t d = warp; d < D; d += kWarps) {
        const acc_t s = warp_row_dot(Q + d * M, c, 0, M, lane);
        if (lane == 0) out[n * D + d] = from_acc<scalar_t>(zs[d] + s);
      }
    }
    if (lane == 0) warp_logdet[warp] = my_logdet;
    __syncthreads();
    if (tid == 0) {
      acc_t total = 0;
      for (int w = 0; w < kWarps; ++w) total += warp_logdet[w];
      logdet[n] = from_acc<scalar_t>(total);
    }
  }
}

template <typename scalar_t, typename acc_t>
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
  acc_t* zs = reinterpret_cast<acc_t*>(smem_raw);
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
  // This block's slices of the shared parameters' gradient sums (nullptr: amortized).
  acc_t* slice = workspace == nullptr ? nullptr : workspace + blockIdx.x * shared_size;
  acc_t *ws_r1 = nullptr, *ws_r2 = nullptr, *ws_b = nullptr, *ws_q = nullptr;
  if (p.r1_bs == 0) ws_r1 = slice, slice += MM;
  if (p.r2_bs == 0) ws_r2 = slice, slice += MM;
  if (p.b_bs == 0) ws_b = slice, slice += M;
  if (dense && p.q_bs == 0) ws_q = slice;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int64_t n = blockIdx.x; n < p.B; n += gridDim.x) {
    const scalar_t* R1 = r1 + n * p.r1_bs;
    const scalar_t* R2 = r2 + n * p.r2_bs;
    const scalar_t* bn = b + n * p.b_bs;
    const scalar_t* Q = dense ? q + n * p.q_bs : nullptr;
    const acc_t gl = load<acc_t>(grad_logdet, n);
    for (int64_t d = tid; d < D; d += kThreads) {
      zs[d] = load<acc_t>(z, n * D + d);
      gs[d] = load<acc_t>(grad_out, n * D + d);
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
    for (int64_t i = tid; i < MM; i += kThreads) {
      const int64_t m = i / M, k = i - m * M;
      acc_t v = k >= m ? gc[m] * h[k] : acc_t(0);
      if (k == m) v += dg1[m];
      put(grad_r1 + n * MM, ws_r1, i, v);
    }
    for (int64_t m = tid; m < M; m += kThreads) {
      const acc_t v = (acc_t(1) - h[m] * h[m]) * (gh[m] + ga[m]);
      ga[m] = v;
      put(grad_b + n * M, ws_b, m, v);
    }
    __syncthreads();
    // gy = R2^T ga; grad_r2 = triu(ga y^T) + diag(dg2).
    for (int64_t k = tid; k < M; k += kThreads) gy[k] = column_dot(R2, ga, k, M);
    for (int64_t i = tid; i < MM; i += kThreads) {
      const int64_t m = i / M, k = i - m * M;
      acc_t v = k >= m ? ga[m] * y[k] : acc_t(0);
      if (k == m) v += dg2[m];
      put(grad_r2 + n * MM, ws_r2, i, v);
    }
    __syncthreads();
    // grad_z = g + Q gy; grad_q = z gy^T + g c^T.
    if (!dense) {
      for (int64_t d = tid; d < D; d += kThreads)
        grad_z[n * D + d] = from_acc<scalar_t>(gs[d] + gy[p.qkind == 0 ? d : D - 1 - d]);
    } else {
      for (int64_t d = warp; d < D; d += kWarps) {
        const acc_t s = warp_row_dot(Q + d * M, gy, 0, M, lane);
        if (lane == 0) grad_z[n * D + d] = from_acc<scalar_t>(gs[d] + s);
      }
      for (int64_t i = tid; i < D * M; i += kThreads) {
        const int64_t d = i / M, m = i - d * M;
        put(grad_q + n * D * M, ws_q, i, zs[d] * gy[m] + gs[d] * c[m]);
      }
    }
    __syncthreads();
  }
}

template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
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
  const size_t smem = size_t(dims.D + 3 * dims.M) * sizeof(acc_t);
  auto kernel = forward_kernel<scalar_t, acc_t>;
  cudaError_t err = allow_shared_memory(kernel, smem);
  if (err != cudaSuccess) return err;
  kernel<<<grid_size(dims.B, 16, num_sms), kThreads, smem, stream>>>(z, r1, r2, b, q, out, logdet,
                                                                     dims);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t sylvester_backward(const scalar_t* grad_out, const scalar_t* grad_logdet,
                               const scalar_t* z, const scalar_t* r1, const scalar_t* r2,
                               const scalar_t* b, const scalar_t* q, scalar_t* grad_z,
                               scalar_t* grad_r1, scalar_t* grad_r2, scalar_t* grad_b,
                               scalar_t* grad_q, acc_t* workspace, int64_t shared_size,
                               const SylvesterDims& dims, int blocks, cudaStream_t stream) {
  if (dims.B == 0 || blocks <= 0) return cudaSuccess;
  const size_t smem = size_t(2 * dims.D + 9 * dims.M) * sizeof(acc_t);
  auto kernel = backward_kernel<scalar_t, acc_t>;
  cudaError_t err = allow_shared_memory(kernel, smem);
  if (err != cudaSuccess) return err;
  kernel<<<blocks, kThreads, smem, stream>>>(grad_out, grad_logdet, z, r1, r2, b, q, grad_z,
                                             grad_r1, grad_r2, grad_b, grad_q,
                                             shared_size > 0 ? workspace : nullptr, shared_size,
                                             dims);
  return cudaGetLastError();
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
