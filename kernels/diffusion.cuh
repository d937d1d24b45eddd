// Diffusion family (DDPM steps with per-sample t): the counter-based normal generator shared
// by the CPU and CUDA kernels, and the CUDA launchers. No torch headers.
//
// Random numbers. Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011) keyed by a 64-bit seed that the Python side draws from a torch.Generator for every
// call. Group g of stream s (the step i of forward_chain, 0 elsewhere) is the block
// philox(counter = (g lo, g hi, s, 0), key = seed) of four words (x, y, z, w), which become four
// normals by Box-Muller, (n0, n1) from (x, y) and (n2, n3) from (z, w):
//   u1 = (x >> 1) 2^-31 + 2^-32 in (0, 1], u2 = (y >> 8) 2^-24 in [0, 1),
//   (n0, n1) = sqrt(-2 log u1) (cos 2 pi u2, sin 2 pi u2).
// Element e (flat row-major index into x) takes, with p = e % 64, normal p / 16 of group
// 16 (e / 64) + p % 16: a chunk of 64 elements is 16 groups laid out normal-major, so the CPU
// stores each of its four 16-lane vectors contiguously and 16 neighbouring GPU threads write
// 16 neighbouring elements.
// So any element's noise is a pure function of (seed, s, e): every thread, CPU or GPU, makes
// its own without state, and a backward pass regenerates what the forward used.
//
// The per-sample-t ops all have the form (coefs: (T, ncols) table in acc_t, rows of D elements)
//   out[b, j] = c0 * x[b, j] + c1 * y[b, j] + c2 * n[b, j],  (c0, c1, c2) = coefs[t[b], :],
// with y absent (c1 is then the noise column, see below) or noise absent. See diffusion.cu.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LVMFAST_HD __host__ __device__ __forceinline__
#else
#define LVMFAST_HD inline
#endif

namespace lvmfast {
namespace rng {

struct Uint4 {
  uint32_t x, y, z, w;
};

LVMFAST_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// Philox-4x32 with 10 rounds.
LVMFAST_HD Uint4 philox4x32_10(Uint4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(0xD2511F53u, c.x, &hi0);
    const uint32_t lo1 = mulhilo(0xCD9E8D57u, c.z, &hi1);
    c = Uint4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

// The four raw words of group g of stream s.
LVMFAST_HD Uint4 philox_group(uint64_t seed, uint32_t stream, uint64_t g) {
  return philox4x32_10(Uint4{static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), stream, 0u},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Flat element index of normal k (0..3) of group g.
LVMFAST_HD int64_t group_element(int64_t g, int k) { return 64 * (g >> 4) + (g & 15) + 16 * k; }

// Box-Muller inputs as written in the header comment.
LVMFAST_HD float uniform_open0(uint32_t a) {
  return static_cast<float>(static_cast<int32_t>(a >> 1)) * 4.656612873077393e-10f + 2.3283064365386963e-10f;
}
LVMFAST_HD float uniform_turn(uint32_t b) {
  return static_cast<float>(static_cast<int32_t>(b >> 8)) * 5.960464477539063e-08f;
}
LVMFAST_HD double uniform_open0_d(uint32_t a) {
  return static_cast<double>(a >> 1) * 4.656612873077393e-10 + 2.3283064365386963e-10;
}
LVMFAST_HD double uniform_turn_d(uint32_t b) {
  return static_cast<double>(b >> 8) * 5.960464477539063e-08;
}

}  // namespace rng
}  // namespace lvmfast

#if defined(__CUDACC__) || defined(LVMFAST_DIFFUSION_LAUNCHERS)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace lvmfast {
namespace kernels {

// Types: (scalar_t, acc_t) in {(float, float), (double, double), (__half, float),
// (__nv_bfloat16, float)}. x, y, noise, out, noise_out: N = B * D contiguous scalar_t;
// t: B int64 (device-side assert that 0 <= t < T); coefs: (T, ncols) contiguous acc_t;
// seed: one int64 on the device (read by the kernel: no host sync). All launchers are
// asynchronous on `stream` and return the launch's cudaError_t.

// out = c[0] x + (y ? c[1] y : 0) + c[noise_col] n, where n = noise (if given) or the
// Philox normals of stream 0 (seed required then); the noise term only where t > 0 when
// noise_only_t_positive. noise_out (optional) receives the generated normals.
// noise_col < 0: no noise term. var_out (optional, B acc values): var_out[b] = c[var_col].
template <typename scalar_t, typename acc_t>
cudaError_t diffusion_rows(const scalar_t* x, const scalar_t* y, const scalar_t* noise,
                           const int64_t* seed, const int64_t* t, const acc_t* coefs, int64_t T,
                           int ncols, int noise_col, bool noise_only_t_positive, scalar_t* out,
                           scalar_t* noise_out, scalar_t* var_out, int var_col, int64_t B,
                           int64_t D, cudaStream_t stream);

// outs[k][b, j] = coefs[t[b], cols[k]] * grad[b, j] for k < nouts (nouts <= 3).
template <typename scalar_t, typename acc_t>
cudaError_t diffusion_scale_rows(const scalar_t* grad, const int64_t* t, const acc_t* coefs,
                                 int64_t T, int ncols, const int* cols, scalar_t* const* outs,
                                 int nouts, int64_t B, int64_t D, cudaStream_t stream);

// out (T, N): z_i = coefs[i, 0] z_{i-1} + coefs[i, 1] eps_i (Philox stream i), z_0 = x.
template <typename scalar_t, typename acc_t>
cudaError_t forward_chain_forward(const scalar_t* x, const acc_t* coefs, const int64_t* seed,
                                  scalar_t* out, int64_t T, int64_t N, cudaStream_t stream);

// grad (T, N), out (T, N) the forward result: grad_x (N) and adds into grad_coefs (T, 2),
// which the caller zero-fills: grad_coefs[i, 0] = sum_e a_i z_{i-1}, [i, 1] = sum_e a_i eps_i
// with the adjoint a_i = grad_i + coefs[i+1, 0] a_{i+1}.
template <typename scalar_t, typename acc_t>
cudaError_t forward_chain_backward(const scalar_t* grad, const scalar_t* x, const acc_t* coefs,
                                   const int64_t* seed, const scalar_t* out, scalar_t* grad_x,
                                   acc_t* grad_coefs, int64_t T, int64_t N, cudaStream_t stream);

}  // namespace kernels
}  // namespace lvmfast
#endif
