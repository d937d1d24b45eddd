// CUDA kernels of the diffusion family; contract in diffusion.cuh and csrc/diffusion.h.
//
// Per-sample-t ops: one thread per Philox group, so that a thread makes exactly the 4 normals
// its 4 elements need (stateless: an element's normal is a pure function of (seed, stream,
// element)); the elements are 16 apart (the layout of diffusion.cuh), so 16 neighbouring threads
// touch 16 neighbouring elements. For each element the thread gathers coefs[t[b]] of its row b,
// reads x (and y, noise), writes out (and the noise).
// forward_chain: one thread per group walks the T steps with its 4 latents in registers; its
// backward walks them in reverse with the adjoint in registers, regenerating the same normals,
// and reduces the two per-step coefficient gradients per warp before one atomicAdd each.
//
// The step range check is a device-side assert: checking on the host would synchronize.
#ifdef NDEBUG
#undef NDEBUG  // keep the device-side range check of t in release builds
#endif
#include <cassert>

#include "convert.cuh"
#include "diffusion.cuh"

namespace lvmfast {
namespace kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void normals4(uint64_t seed, uint32_t stream, uint64_t g, float n[4]) {
  const rng::Uint4 w = rng::philox_group(seed, stream, g);
  // fast math makes logf lg2.approx, whose absolute error (~2^-22) can give log(u) > 0 for u
  // just below 1: clamp, or sqrtf would return NaN
  const float ra = sqrtf(fmaxf(-2.0f * logf(rng::uniform_open0(w.x)), 0.0f));
  const float rb = sqrtf(fmaxf(-2.0f * logf(rng::uniform_open0(w.z)), 0.0f));
  float sa, ca, sb, cb;
  sincospif(2.0f * rng::uniform_turn(w.y), &sa, &ca);
  sincospif(2.0f * rng::uniform_turn(w.w), &sb, &cb);
  n[0] = ra * ca;
  n[1] = ra * sa;
  n[2] = rb * cb;
  n[3] = rb * sb;
}

__device__ __forceinline__ void normals4(uint64_t seed, uint32_t stream, uint64_t g, double n[4]) {
  const rng::Uint4 w = rng::philox_group(seed, stream, g);
  const double ra = sqrt(-2.0 * log(rng::uniform_open0_d(w.x)));
  const double rb = sqrt(-2.0 * log(rng::uniform_open0_d(w.z)));
  double sa, ca, sb, cb;
  sincospi(2.0 * rng::uniform_turn_d(w.y), &sa, &ca);
  sincospi(2.0 * rng::uniform_turn_d(w.w), &sb, &cb);
  n[0] = ra * ca;
  n[1] = ra * sa;
  n[2] = rb * cb;
  n[3] = rb * sb;
}

__device__ __forceinline__ int64_t checked_step(const int64_t* t, int64_t b, int64_t T) {
  const int64_t tb = t[b];
  assert(tb >= 0 && tb < T && "lvmfast diffusion: t must lie in [0, T-1]");
  return tb;
}

inline unsigned blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > (1 << 20) ? (1 << 20) : blocks));
}

template <typename scalar_t, typename acc_t>
__global__ void rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                            const scalar_t* __restrict__ noise, const int64_t* __restrict__ seed_ptr,
                            const int64_t* __restrict__ t, const acc_t* __restrict__ coefs,
                            int64_t T, int ncols, int noise_col, bool noise_only_t_positive,
                            scalar_t* __restrict__ out, scalar_t* __restrict__ noise_out,
                            int64_t D, int64_t N) {
  const bool has_noise = noise_col >= 0;
  const bool generate = has_noise && noise == nullptr;
  const uint64_t seed = generate ? static_cast<uint64_t>(*seed_ptr) : 0;
  const int64_t groups = 16 * ((N + 63) / 64);  // whole chunks; elements past N are skipped
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t n[4] = {0, 0, 0, 0};
    if (generate) normals4(seed, 0u, static_cast<uint64_t>(g), n);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t e = rng::group_element(g, k);
      if (e >= N) continue;
      const int64_t tb = checked_step(t, e / D, T);
      const acc_t* cf = coefs + tb * ncols;
      acc_t v = cf[0] * to_acc<acc_t>(x[e]);
      if (y != nullptr) v += cf[1] * to_acc<acc_t>(y[e]);
      if (has_noise && (!noise_only_t_positive || tb > 0))
        v += cf[noise_col] * (generate ? n[k] : to_acc<acc_t>(noise[e]));
      out[e] = from_acc<scalar_t>(v);
      if (noise_out != nullptr) noise_out[e] = from_acc<scalar_t>(n[k]);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void column_kernel(const int64_t* __restrict__ t, const acc_t* __restrict__ coefs,
                              int64_t T, int ncols, int col, scalar_t* __restrict__ out, int64_t B) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < B;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[b] = from_acc<scalar_t>(coefs[checked_step(t, b, T) * ncols + col]);
}

template <typename scalar_t>
struct ScaleOuts {
  scalar_t* ptr[3];
  int col[3];
  int n;
};

template <typename scalar_t, typename acc_t>
__global__ void scale_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ t,
                             const acc_t* __restrict__ coefs, int64_t T, int ncols,
                             ScaleOuts<scalar_t> outs, int64_t D, int64_t N) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < N;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t* cf = coefs + checked_step(t, e / D, T) * ncols;
    const acc_t g = to_acc<acc_t>(grad[e]);
    for (int k = 0; k < outs.n; ++k) outs.ptr[k][e] = from_acc<scalar_t>(cf[outs.col[k]] * g);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void chain_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ coefs,
                                     const int64_t* __restrict__ seed_ptr, scalar_t* __restrict__ out,
                                     int64_t T, int64_t N) {
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const int64_t groups = 16 * ((N + 63) / 64);
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t e[4];
    acc_t z[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      e[k] = rng::group_element(g, k);
      z[k] = e[k] < N ? to_acc<acc_t>(x[e[k]]) : acc_t(0);
    }
    for (int64_t i = 0; i < T; ++i) {
      acc_t n[4];
      normals4(seed, static_cast<uint32_t>(i), static_cast<uint64_t>(g), n);
      const acc_t a = coefs[2 * i], s = coefs[2 * i + 1];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        z[k] = a * z[k] + s * n[k];
        if (e[k] < N) out[i * N + e[k]] = from_acc<scalar_t>(z[k]);
      }
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// One thread per group, no grid-stride loop: every lane of a warp walks all T steps (lanes past
// the end carry zeros), so the warp shuffles always see the full warp.
template <typename scalar_t, typename acc_t>
__global__ void chain_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                      const acc_t* __restrict__ coefs,
                                      const int64_t* __restrict__ seed_ptr,
                                      const scalar_t* __restrict__ out, scalar_t* __restrict__ grad_x,
                                      acc_t* __restrict__ grad_coefs, int64_t T, int64_t N) {
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  int64_t e[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) e[k] = rng::group_element(g, k);
  const bool lane_valid = e[0] < N;  // e[0] is the group's smallest element
  acc_t adj[4] = {0, 0, 0, 0};
  for (int64_t i = T - 1; i >= 0; --i) {
    acc_t s0 = 0, s1 = 0;
    if (lane_valid) {
      acc_t n[4];
      normals4(seed, static_cast<uint32_t>(i), static_cast<uint64_t>(g), n);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (e[k] < N) {
          adj[k] += to_acc<acc_t>(grad[i * N + e[k]]);
          const acc_t prev = to_acc<acc_t>(i > 0 ? out[(i - 1) * N + e[k]] : x[e[k]]);
          s0 += adj[k] * prev;
          s1 += adj[k] * n[k];
        }
      }
    }
    s0 = warp_sum(s0);
    s1 = warp_sum(s1);
    if ((threadIdx.x & 31) == 0) {
      atomicAdd(grad_coefs + 2 * i, s0);
      atomicAdd(grad_coefs + 2 * i + 1, s1);
    }
    const acc_t a = coefs[2 * i];
#pragma unroll
    for (int k = 0; k < 4; ++k) adj[k] *= a;
  }
#pragma unroll
  for (int k = 0; k < 4; ++k)
    if (e[k] < N) grad_x[e[k]] = from_acc<scalar_t>(adj[k]);
}

}  // namespace

template <typename scalar_t, typename acc_t>
cudaError_t diffusion_rows(const scalar_t* x, const scalar_t* y, const scalar_t* noise,
                           const int64_t* seed, const int64_t* t, const acc_t* coefs, int64_t T,
                           int ncols, int noise_col, bool noise_only_t_positive, scalar_t* out,
                           scalar_t* noise_out, scalar_t* var_out, int var_col, int64_t B,
                           int64_t D, cudaStream_t stream) {
  const int64_t N = B * D;
  if (N > 0) {
    rows_kernel<scalar_t, acc_t><<<blocks_for(16 * ((N + 63) / 64)), kThreads, 0, stream>>>(
        x, y, noise, seed, t, coefs, T, ncols, noise_col, noise_only_t_positive, out, noise_out, D, N);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (var_out != nullptr && B > 0) {
    column_kernel<scalar_t, acc_t><<<blocks_for(B), kThreads, 0, stream>>>(t, coefs, T, ncols,
                                                                           var_col, var_out, B);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

template <typename scalar_t, typename acc_t>
cudaError_t diffusion_scale_rows(const scalar_t* grad, const int64_t* t, const acc_t* coefs,
                                 int64_t T, int ncols, const int* cols, scalar_t* const* outs,
                                 int nouts, int64_t B, int64_t D, cudaStream_t stream) {
  const int64_t N = B * D;
  if (N == 0 || nouts == 0) return cudaSuccess;
  if (nouts > 3) return cudaErrorInvalidValue;
  ScaleOuts<scalar_t> o{};
  o.n = nouts;
  for (int k = 0; k < nouts; ++k) {
    o.ptr[k] = outs[k];
    o.col[k] = cols[k];
  }
  scale_kernel<scalar_t, acc_t><<<blocks_for(N), kThreads, 0, stream>>>(grad, t, coefs, T, ncols, o, D, N);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t forward_chain_forward(const scalar_t* x, const acc_t* coefs, const int64_t* seed,
                                  scalar_t* out, int64_t T, int64_t N, cudaStream_t stream) {
  if (N == 0 || T == 0) return cudaSuccess;
  chain_forward_kernel<scalar_t, acc_t><<<blocks_for(16 * ((N + 63) / 64)), kThreads, 0, stream>>>(
      x, coefs, seed, out, T, N);
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t forward_chain_backward(const scalar_t* grad, const scalar_t* x, const acc_t* coefs,
                                   const int64_t* seed, const scalar_t* out, scalar_t* grad_x,
                                   acc_t* grad_coefs, int64_t T, int64_t N, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  const int64_t groups = 16 * ((N + 63) / 64);
  const int64_t blocks = (groups + kThreads - 1) / kThreads;  // every group gets its own thread
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  chain_backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      grad, x, coefs, seed, out, grad_x, grad_coefs, T, N);
  return cudaGetLastError();
}

#define LVMFAST_DIFFUSION_INSTANTIATE(scalar_t, acc_t)                                            \
  template cudaError_t diffusion_rows<scalar_t, acc_t>(                                           \
      const scalar_t*, const scalar_t*, const scalar_t*, const int64_t*, const int64_t*,          \
      const acc_t*, int64_t, int, int, bool, scalar_t*, scalar_t*, scalar_t*, int, int64_t,       \
      int64_t, cudaStream_t);                                                                     \
  template cudaError_t diffusion_scale_rows<scalar_t, acc_t>(const scalar_t*, const int64_t*,     \
                                                             const acc_t*, int64_t, int,          \
                                                             const int*, scalar_t* const*, int,   \
                                                             int64_t, int64_t, cudaStream_t);     \
  template cudaError_t forward_chain_forward<scalar_t, acc_t>(                                    \
      const scalar_t*, const acc_t*, const int64_t*, scalar_t*, int64_t, int64_t, cudaStream_t);  \
  template cudaError_t forward_chain_backward<scalar_t, acc_t>(                                   \
      const scalar_t*, const scalar_t*, const acc_t*, const int64_t*, const scalar_t*, scalar_t*, \
      acc_t*, int64_t, int64_t, cudaStream_t);

LVMFAST_DIFFUSION_INSTANTIATE(float, float)
LVMFAST_DIFFUSION_INSTANTIATE(double, double)
LVMFAST_DIFFUSION_INSTANTIATE(__half, float)
LVMFAST_DIFFUSION_INSTANTIATE(__nv_bfloat16, float)
#undef LVMFAST_DIFFUSION_INSTANTIATE

}  // namespace kernels
}  // namespace lvmfast
