// CUDA kernels of the householder family: householder_flow forward and backward.
// Math contract: csrc/householder.h. Launchers: householder.cuh. No torch headers here.
//
// Floor at the benchmark shape, B = 8192, T = 10, L = 64, amortized v, float32, on an H100 SXM
// (3.35 TB/s): the op is memory-bound (3 L flops per row and step against 4 L bytes of v).
//   forward : z 2.1 MB + v 21.0 MB + out 2.1 MB = 25.2 MB -> 7.5 us.
//   backward: out + grad 4.2 MB + v 21.0 MB + grad_z 2.1 MB + grad_v 21.0 MB = 48.2 MB -> 14.4 us.
//   Arithmetic: 3 B T L = 15.7 M FMAs forward, ~7 B T L backward: under 1 us at 33 TFMA/s.
// Goal: within 2x of these floors, i.e. ~15 us forward and ~30 us backward.
//
// Design: one warp per row; the row's z (and, backward, its gradient) stays in registers,
// EPL = ceil(L / 32) elements a lane (lane owns l = lane + 32 i, so every load of v is one
// coalesced 128-byte line per 32 floats). Each reflection is two (three, backward) warp
// reductions by shuffles and one axpy. v_{t+1} is loaded before step t's reductions, so one
// DRAM latency overlaps the shuffles. L > 256: the same walk over a global acc_t workspace
// (L1/L2-resident rows) instead of registers. Shared v (backward): grad v is summed over the
// block's rows in shared memory when T L fits (48 KB), then one atomicAdd per element and
// block; otherwise atomics straight to global memory.
#include "householder.cuh"
#include "convert.cuh"
#include "launch.cuh"

#include <cstdint>

namespace lvmfast {
namespace kernels {
namespace {

constexpr int kWarps = 8;  // rows (warps) per block
constexpr int kThreads = 32 * kWarps;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// out[i] = element lane + 32 i of a row whose elements are `stride` apart (0 past L).
template <typename scalar_t, typename acc_t, int EPL>
__device__ __forceinline__ void load_v(const scalar_t* vt, int lane, int64_t L, acc_t (&out)[EPL],
                                       int64_t stride = 1) {
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int64_t l = lane + 32 * i;
    out[i] = l < L ? to_acc<acc_t>(vt[l * stride]) : acc_t(0);
  }
}

// ---------------------------------------------------------------- registers (L <= 256)
template <typename scalar_t, typename acc_t, int EPL>
__global__ void __launch_bounds__(kThreads) forward_reg_kernel(const scalar_t* __restrict__ z,
                                                               const scalar_t* __restrict__ v,
                                                               scalar_t* __restrict__ out,
                                                               int64_t B, int64_t T, int64_t L,
                                                               bool shared) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= B || T == 0) {
    if (row < B)
      for (int64_t l = lane; l < L; l += 32) out[row * L + l] = z[row * L + l];
    return;
  }
  const scalar_t* vr = shared ? v : v + row * T * L;
  acc_t zr[EPL], vn[EPL];
  load_v<scalar_t, acc_t, EPL>(z + row * L, lane, L, zr);
  load_v<scalar_t, acc_t, EPL>(vr, lane, L, vn);
  for (int64_t t = 0; t < T; ++t) {
    acc_t vc[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) vc[i] = vn[i];
    if (t + 1 < T) load_v<scalar_t, acc_t, EPL>(vr + (t + 1) * L, lane, L, vn);  // prefetch
    acc_t n = 0, s = 0;
#pragma unroll
    for (int i = 0; i < EPL; ++i) n += vc[i] * vc[i], s += vc[i] * zr[i];
    n = warp_sum(n);
    s = warp_sum(s);
    if (n == acc_t(0)) continue;  // a zero vector: no reflection (warp-uniform)
    const acc_t c = acc_t(2) * s / n;
#pragma unroll
    for (int i = 0; i < EPL; ++i) zr[i] -= c * vc[i];
  }
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int64_t l = lane + 32 * i;
    if (l < L) out[row * L + l] = from_acc<scalar_t>(zr[i]);
  }
}

// Adds g into the shared-v accumulator: block shared memory when given, else global atomics.
template <typename acc_t>
__device__ __forceinline__ void add_shared_grad(acc_t* smem_acc, acc_t* gacc, int64_t idx, acc_t g) {
  if (smem_acc != nullptr) {
    atomicAdd(smem_acc + idx, g);
  } else {
    atomicAdd(gacc + idx, g);
  }
}

template <typename acc_t>
__device__ void flush_shared_grad(acc_t* smem_acc, acc_t* gacc, int64_t n) {
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    if (smem_acc[i] != acc_t(0)) atomicAdd(gacc + i, smem_acc[i]);
}

template <typename scalar_t, typename acc_t, int EPL>
__global__ void __launch_bounds__(kThreads) backward_reg_kernel(
    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ out,
    const scalar_t* __restrict__ v, scalar_t* __restrict__ grad_z, scalar_t* __restrict__ grad_v,
    acc_t* __restrict__ gacc, int64_t B, int64_t T, int64_t L, bool shared, bool use_smem,
    int64_t grad_rs, int64_t grad_cs) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem_acc = use_smem ? reinterpret_cast<acc_t*>(smem_raw) : nullptr;
  if (use_smem) {
    for (int64_t i = threadIdx.x; i < T * L; i += blockDim.x) smem_acc[i] = acc_t(0);
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row < B) {
    const scalar_t* vr = shared ? v : v + row * T * L;
    acc_t zr[EPL], gr[EPL], vn[EPL];
    load_v<scalar_t, acc_t, EPL>(out + row * L, lane, L, zr);
    load_v<scalar_t, acc_t, EPL>(grad + row * grad_rs, lane, L, gr, grad_cs);
    if (T > 0) load_v<scalar_t, acc_t, EPL>(vr + (T - 1) * L, lane, L, vn);
    for (int64_t t = T - 1; t >= 0; --t) {
      acc_t vc[EPL];
#pragma unroll
      for (int i = 0; i < EPL; ++i) vc[i] = vn[i];
      if (t > 0) load_v<scalar_t, acc_t, EPL>(vr + (t - 1) * L, lane, L, vn);
      acc_t n = 0, s = 0, h = 0;
#pragma unroll
      for (int i = 0; i < EPL; ++i) n += vc[i] * vc[i], s += vc[i] * zr[i], h += vc[i] * gr[i];
      n = warp_sum(n);
      s = warp_sum(s);
      h = warp_sum(h);
      const acc_t c = n == acc_t(0) ? acc_t(0) : acc_t(2) / n;  // zero vector: identity, grad 0
      const acc_t cs = c * s, ch = c * h, c2sh = c * c * s * h;
#pragma unroll
      for (int i = 0; i < EPL; ++i) {
        const int64_t l = lane + 32 * i;
        const acc_t zp = zr[i] - cs * vc[i];
        const acc_t gv = cs * gr[i] - ch * zp - c2sh * vc[i];
        gr[i] -= ch * vc[i];
        zr[i] = zp;
        if (l < L) {
          if (shared) {
            add_shared_grad(smem_acc, gacc, t * L + l, gv);
          } else {
            grad_v[(row * T + t) * L + l] = from_acc<scalar_t>(gv);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      const int64_t l = lane + 32 * i;
      if (l < L) grad_z[row * L + l] = from_acc<scalar_t>(gr[i]);
    }
  }
  if (use_smem) flush_shared_grad(smem_acc, gacc, T * L);
}

// ---------------------------------------------------------------- workspace rows (L > 256)
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) forward_ws_kernel(const scalar_t* __restrict__ z,
                                                              const scalar_t* __restrict__ v,
                                                              scalar_t* __restrict__ out,
                                                              acc_t* __restrict__ ws, int64_t B,
                                                              int64_t T, int64_t L, bool shared) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= B) return;
  acc_t* zr = ws + row * L;
  const scalar_t* vr = shared ? v : v + row * T * L;
  for (int64_t l = lane; l < L; l += 32) zr[l] = to_acc<acc_t>(z[row * L + l]);
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* vt = vr + t * L;
    acc_t n = 0, s = 0;
    for (int64_t l = lane; l < L; l += 32) {
      const acc_t x = to_acc<acc_t>(vt[l]);
      n += x * x, s += x * zr[l];
    }
    n = warp_sum(n);
    s = warp_sum(s);
    if (n == acc_t(0)) continue;
    const acc_t c = acc_t(2) * s / n;
    for (int64_t l = lane; l < L; l += 32) zr[l] -= c * to_acc<acc_t>(vt[l]);
  }
  for (int64_t l = lane; l < L; l += 32) out[row * L + l] = from_acc<scalar_t>(zr[l]);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) backward_ws_kernel(
    const scalar_t* __restrict__ grad, const scalar_t* __restrict__ out,
    const scalar_t* __restrict__ v, scalar_t* __restrict__ grad_z, scalar_t* __restrict__ grad_v,
    acc_t* __restrict__ gacc, acc_t* __restrict__ ws, int64_t B, int64_t T, int64_t L, bool shared,
    bool use_smem, int64_t grad_rs, int64_t grad_cs) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem_acc = use_smem ? reinterpret_cast<acc_t*>(smem_raw) : nullptr;
  if (use_smem) {
    for (int64_t i = threadIdx.x; i < T * L; i += blockDim.x) smem_acc[i] = acc_t(0);
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row < B) {
    acc_t* zr = ws + row * L;
    acc_t* gr = ws + (B + row) * L;
    const scalar_t* vr = shared ? v : v + row * T * L;
    for (int64_t l = lane; l < L; l += 32) {
      zr[l] = to_acc<acc_t>(out[row * L + l]);
      gr[l] = to_acc<acc_t>(grad[row * grad_rs + l * grad_cs]);
    }
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* vt = vr + t * L;
      acc_t n = 0, s = 0, h = 0;
      for (int64_t l = lane; l < L; l += 32) {
        const acc_t x = to_acc<acc_t>(vt[l]);
        n += x * x, s += x * zr[l], h += x * gr[l];
      }
      n = warp_sum(n);
      s = warp_sum(s);
      h = warp_sum(h);
      const acc_t c = n == acc_t(0) ? acc_t(0) : acc_t(2) / n;
      const acc_t cs = c * s, ch = c * h, c2sh = c * c * s * h;
      for (int64_t l = lane; l < L; l += 32) {
        const acc_t x = to_acc<acc_t>(vt[l]);
        const acc_t zp = zr[l] - cs * x;
        const acc_t gv = cs * gr[l] - ch * zp - c2sh * x;
        gr[l] -= ch * x;
        zr[l] = zp;
        if (shared) {
          add_shared_grad(smem_acc, gacc, t * L + l, gv);
        } else {
          grad_v[(row * T + t) * L + l] = from_acc<scalar_t>(gv);
        }
      }
    }
    for (int64_t l = lane; l < L; l += 32) grad_z[row * L + l] = from_acc<scalar_t>(gr[l]);
  }
  if (use_smem) flush_shared_grad(smem_acc, gacc, T * L);
}

int epl_of(int64_t L) {
  const int64_t e = (L + 31) / 32;
  return e <= 1 ? 1 : e <= 2 ? 2 : e <= 4 ? 4 : e <= 8 ? 8 : 0;
}

// The shared gradient's rows go in shared memory up to the 48 KB that needs no opt-in (the kernels
// have no static shared memory; launch_with_smem opts in should that change).
constexpr size_t kSmemLimit = kNoOptInSharedBytes;

}  // namespace

int64_t householder_workspace(int64_t B, int64_t L) { return epl_of(L) == 0 ? 2 * B * L : 0; }

template <typename scalar_t, typename acc_t>
cudaError_t householder_forward(const scalar_t* z, const scalar_t* v, scalar_t* out, int64_t B,
                                int64_t T, int64_t L, bool shared, acc_t* workspace,
                                cudaStream_t stream) {
  if (B == 0 || L == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((B + kWarps - 1) / kWarps));
  switch (epl_of(L)) {
    case 1: forward_reg_kernel<scalar_t, acc_t, 1><<<grid, kThreads, 0, stream>>>(z, v, out, B, T, L, shared); break;
    case 2: forward_reg_kernel<scalar_t, acc_t, 2><<<grid, kThreads, 0, stream>>>(z, v, out, B, T, L, shared); break;
    case 4: forward_reg_kernel<scalar_t, acc_t, 4><<<grid, kThreads, 0, stream>>>(z, v, out, B, T, L, shared); break;
    case 8: forward_reg_kernel<scalar_t, acc_t, 8><<<grid, kThreads, 0, stream>>>(z, v, out, B, T, L, shared); break;
    default:
      if (workspace == nullptr) return cudaErrorInvalidValue;
      forward_ws_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(z, v, out, workspace, B, T, L, shared);
  }
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t householder_backward(const scalar_t* grad, const scalar_t* out, const scalar_t* v,
                                 scalar_t* grad_z, scalar_t* grad_v, acc_t* grad_v_acc, int64_t B,
                                 int64_t T, int64_t L, bool shared, int64_t grad_row_stride,
                                 int64_t grad_col_stride, acc_t* workspace, cudaStream_t stream) {
  if (B == 0 || L == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((B + kWarps - 1) / kWarps));
  const size_t acc_bytes = static_cast<size_t>(T * L) * sizeof(acc_t);
  const bool use_smem = shared && acc_bytes <= kSmemLimit;
  const size_t smem = use_smem ? acc_bytes : 0;
  const int blocks = static_cast<int>(grid.x);
  switch (epl_of(L)) {
#define LVMFAST_HH_BWD(E)                                                                    \
  case E:                                                                                    \
    return launch_with_smem(backward_reg_kernel<scalar_t, acc_t, E>, blocks, kThreads, smem, \
                            stream, grad, out, v, grad_z, grad_v, grad_v_acc, B, T, L,       \
                            shared, use_smem, grad_row_stride, grad_col_stride);
    LVMFAST_HH_BWD(1)
    LVMFAST_HH_BWD(2)
    LVMFAST_HH_BWD(4)
    LVMFAST_HH_BWD(8)
#undef LVMFAST_HH_BWD
    default:
      if (workspace == nullptr) return cudaErrorInvalidValue;
      return launch_with_smem(backward_ws_kernel<scalar_t, acc_t>, blocks, kThreads, smem, stream,
                              grad, out, v, grad_z, grad_v, grad_v_acc, workspace, B, T, L,
                              shared, use_smem, grad_row_stride, grad_col_stride);
  }
}

#define LVMFAST_HH_INSTANTIATE(S, A)                                                           \
  template cudaError_t householder_forward<S, A>(const S*, const S*, S*, int64_t, int64_t,     \
                                                 int64_t, bool, A*, cudaStream_t);             \
  template cudaError_t householder_backward<S, A>(const S*, const S*, const S*, S*, S*, A*,    \
                                                  int64_t, int64_t, int64_t, bool, int64_t,    \
                                                  int64_t, A*, cudaStream_t);
LVMFAST_HH_INSTANTIATE(float, float)
LVMFAST_HH_INSTANTIATE(double, double)
LVMFAST_HH_INSTANTIATE(__half, float)
LVMFAST_HH_INSTANTIATE(__nv_bfloat16, float)
#undef LVMFAST_HH_INSTANTIATE

}  // namespace kernels
}  // namespace lvmfast
