// CUDA kernels of the mixture family: log_mog forward and backward.
// Math contract: csrc/mixture.h. Launchers: mixture.cuh. No torch headers here.
//
// Work and floors at the benchmark's big shape, N = 65536, K = 1024, L = 64 (float32):
//   N*K*L = 4.29e9 (row, component, dimension) terms.
//   forward : 3 FP32 instructions a term (d = z - m; d*d; fma with prec) = 12.9e9
//             instructions (17.2 GFLOP, an FMA counted as 2) + N*K = 6.7e7 exp.
//             On an H100 SXM (132 SMs x 128 lanes x 1.98 GHz = 33.5e12 instr/s) that is
//             0.38 ms. Bytes: z 16.8 MB + means/prec 0.5 MB + out 0.26 MB = 17.6 MB,
//             5 us at 3.35 TB/s: compute-bound by ~70x, so the kernel is organised like
//             a register-tiled GEMM whose inner product is the direct form.
//   backward: the responsibilities need the whole sum over l before any reduction can
//             start, so the terms are recomputed (3) and then visited twice more:
//             grad_z (d, d*p, fma: 3) and wdiff/wsq (d, d*p, r*dp, add, fma: 5) = 11
//             instructions a term = 47e9 = 1.4 ms on an H100 (the fused minimum would be
//             9 a term, 1.15 ms). Bytes: z + grad_z 33.6 MB + 1 MB of parameters and
//             reductions, 10 us; plus 2*K*L*N/128 = 6.7e7 float atomic adds for wdiff/wsq
//             (1.7e7 float4 atomics on sm_90), spread over the whole kernel.
//
// Design (float; double uses half-size tiles):
//   * A block owns BN = 128 rows and walks the components in tiles of BK = 64 (a block may
//     own only a range of the K tiles: "splits", used when N alone cannot fill the GPU;
//     partial (max, sum) pairs are then merged by a second small kernel, and grad_z is
//     accumulated with atomics).
//   * Score phase: 256 threads as a 16 x 16 grid, each owning 8 rows x 4 components
//     (rows ty + 16 i, components tx + 16 j: conflict-free float4 shared loads), summing
//     (z - m)^2 * prec over L in chunks of BL = 32 staged in shared memory (zero-padded,
//     so any N, K, L works). Forward: an online (max, sum) log-sum-exp per row in
//     registers, then merged across the 16 lanes that share the rows with shuffles.
//   * Backward: r = grad * exp(s - out) for the tile goes to shared memory (r is exactly 0
//     for s = -inf, i.e. a switched-off component, and for padding rows); then, per
//     L chunk (the last one is still staged from the score phase), two GEMM-like passes:
//     grad_z (thread = 4 rows x 4 dims, reduce over the tile's components; accumulated
//     in global memory across K tiles, rows are owned by the block) and wdiff/wsq
//     (thread = 2 components x 4 dims, reduce over the block's rows in registers, then
//     one atomic add per element per block and K tile). wsum is a row sum of r.
//   * float32 accumulation for half/bfloat16; the direct form (z - m)^2 * prec throughout
//     (the expanded quadratic loses digits in float32 for tight components far from 0).
//   * -inf safety: exp(a - m) is never evaluated with a = m = -inf (rescale() and the
//     s == -inf test), so switched-off components add exactly 0 and never NaN.
#include "mixture.cuh"
#include "convert.cuh"

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace lvmfast {
namespace kernels {
namespace {

constexpr int kThreads = 256;  // 16 x 16 threads in the score phase

// Tile shapes per accumulation type. BN = 16 TN rows and BK = 16 TK components a tile,
// BL dimensions a staged chunk, VEC elements a 16-byte shared-memory load.
template <typename acc_t>
struct Tile;
template <>
struct Tile<float> {
  static constexpr int TN = 8, TK = 4, BL = 32, VEC = 4, MIN_BLOCKS = 2;
};
template <>
struct Tile<double> {
  static constexpr int TN = 4, TK = 2, BL = 16, VEC = 2, MIN_BLOCKS = 1;
};

template <typename acc_t>
struct Geo : Tile<acc_t> {
  using T = Tile<acc_t>;
  static constexpr int BN = 16 * T::TN, BK = 16 * T::TK;
  static constexpr int ZS = T::BL + T::VEC;  // row stride of the z / means / prec tiles
  static constexpr int RS = BN + T::VEC;     // row stride of the (BK, BN) responsibility tile
  static constexpr int AN = BN / 32;         // grad_z pass: rows a thread (32 x 8 threads)
  static constexpr int AK = BK / 32;         // wdiff pass: components a thread (32 x 8 threads)
  static_assert(AN == T::VEC && T::BL == 8 * T::VEC, "tile shapes do not match the passes");
  static_assert(kThreads % T::BL == 0 && BN % (kThreads / T::BL) == 0 &&
                    BK % (kThreads / T::BL) == 0, "staging");
  static constexpr size_t fwd_smem = size_t(BN + 2 * BK) * ZS * sizeof(acc_t);
  static constexpr size_t bwd_smem = fwd_smem + size_t(BK) * RS * sizeof(acc_t);
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};
template <int N, typename T>
__device__ __forceinline__ Vec<T, N> ldv(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// exp via exp2: two instructions for float, ~2 ulp; exp(-inf) = 0.
__device__ __forceinline__ float exp_acc(float x) { return exp2f(x * 1.4426950408889634f); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float max_acc(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_acc(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float fma_acc(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return fma(a, b, c); }
template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -static_cast<T>(INFINITY);
}

// exp(a - m) for a <= m: the online-max rescale factor, exactly 1 for a == m (also when both
// are -inf, where exp(a - m) would be NaN).
template <typename T>
__device__ __forceinline__ T rescale(T a, T m) {
  return a == m ? T(1) : exp_acc(a - m);
}

// Merges the log-sum-exp state (om, os) into (mx, sm): the sum is relative to the max.
template <typename T>
__device__ __forceinline__ void lse_merge(T& mx, T& sm, T om, T os) {
  const T m = max_acc(mx, om);
  sm = sm * rescale(mx, m) + os * rescale(om, m);
  mx = m;
}

// Copies rows [row0, row0 + ROWS) x columns [l0, l0 + BL) of the row-major (nrows, L) array
// src into the shared tile dst (row stride ZS) in acc_t, zero outside the array. A thread
// keeps one column and walks rows kThreads / BL apart (coalesced along the rows of src).
template <int ROWS, typename acc_t, typename src_t>
__device__ __forceinline__ void stage(acc_t* __restrict__ dst, const src_t* __restrict__ src,
                                      int64_t row0, int64_t nrows, int64_t L, int64_t l0) {
  using G = Geo<acc_t>;
  constexpr int STEP = kThreads / G::BL;
  const int c = threadIdx.x % G::BL, r0 = threadIdx.x / G::BL;
  const bool col_ok = l0 + c < L;
  const src_t* p = src + (row0 + r0) * L + l0 + c;
  int left = static_cast<int>(imin(nrows - row0 - r0, ROWS));  // rows left from this one on
#pragma unroll
  for (int it = 0; it < ROWS / STEP; ++it) {
    acc_t v = acc_t(0);
    if (col_ok && left > 0) v = to_acc<acc_t>(*p);
    dst[(r0 + it * STEP) * G::ZS + c] = v;
    p += STEP * L;
    left -= STEP;
  }
}

// acc[i][j] = sum_l (z[n0 + ty + 16 i, l] - m[k0 + tx + 16 j, l])^2 prec[k0 + tx + 16 j, l]
// over all L, staging chunk by chunk. The last chunk is left staged in zs / ms / ps.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ void score_tile(acc_t (&acc)[Tile<acc_t>::TN][Tile<acc_t>::TK],
                                           const scalar_t* __restrict__ z,
                                           const acc_t* __restrict__ means,
                                           const acc_t* __restrict__ prec, acc_t* zs, acc_t* ms,
                                           acc_t* ps, int64_t n0, int64_t k0, int64_t N,
                                           int64_t K, int64_t L) {
  using G = Geo<acc_t>;
  constexpr int TN = G::TN, TK = G::TK, VEC = G::VEC, ZS = G::ZS;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int i = 0; i < TN; ++i)
#pragma unroll
    for (int j = 0; j < TK; ++j) acc[i][j] = acc_t(0);
  for (int64_t l0 = 0; l0 < L; l0 += G::BL) {
    __syncthreads();  // everyone is done with the previous contents
    stage<G::BN>(zs, z, n0, N, L, l0);
    stage<G::BK>(ms, means, k0, K, L, l0);
    stage<G::BK>(ps, prec, k0, K, L, l0);
    __syncthreads();
    const int lc = static_cast<int>(imin(G::BL, L - l0));
    for (int l = 0; l < lc; l += VEC) {
      Vec<acc_t, VEC> m[TK], p[TK];
#pragma unroll
      for (int j = 0; j < TK; ++j) {
        m[j] = ldv<VEC>(ms + (tx + 16 * j) * ZS + l);
        p[j] = ldv<VEC>(ps + (tx + 16 * j) * ZS + l);
      }
#pragma unroll
      for (int i = 0; i < TN; ++i) {
        const Vec<acc_t, VEC> zv = ldv<VEC>(zs + (ty + 16 * i) * ZS + l);
#pragma unroll
        for (int j = 0; j < TK; ++j)
#pragma unroll
          for (int v = 0; v < VEC; ++v) {
            const acc_t d = zv.v[v] - m[j].v[v];
            acc[i][j] = fma_acc(d * d, p[j].v[v], acc[i][j]);
          }
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, Tile<acc_t>::MIN_BLOCKS)
    log_mog_forward_kernel(const scalar_t* __restrict__ z, const acc_t* __restrict__ means,
                           const acc_t* __restrict__ prec, const acc_t* __restrict__ consts,
                           acc_t* __restrict__ out, acc_t* __restrict__ part_max,
                           acc_t* __restrict__ part_sum, int64_t N, int64_t K, int64_t L,
                           int64_t tiles_per_split) {
  using G = Geo<acc_t>;
  constexpr int TN = G::TN, TK = G::TK;
  __shared__ __align__(16) acc_t zs[G::BN * G::ZS];
  __shared__ __align__(16) acc_t ms[G::BK * G::ZS];
  __shared__ __align__(16) acc_t ps[G::BK * G::ZS];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t n0 = int64_t(blockIdx.x) * G::BN;
  const int64_t kt0 = int64_t(blockIdx.y) * tiles_per_split;
  const int64_t kt1 = imin(kt0 + tiles_per_split, ceil_div(K, G::BK));

  acc_t mx[TN], sm[TN];
#pragma unroll
  for (int i = 0; i < TN; ++i) mx[i] = neg_inf<acc_t>(), sm[i] = acc_t(0);

  for (int64_t kt = kt0; kt < kt1; ++kt) {
    const int64_t k0 = kt * G::BK;
    acc_t acc[TN][TK];
    score_tile(acc, z, means, prec, zs, ms, ps, n0, k0, N, K, L);
    acc_t c[TK];
#pragma unroll
    for (int j = 0; j < TK; ++j) {
      const int64_t k = k0 + tx + 16 * j;
      c[j] = k < K ? consts[k] : neg_inf<acc_t>();  // padding components weigh 0
    }
#pragma unroll
    for (int i = 0; i < TN; ++i) {
      acc_t s[TK], m = mx[i];
#pragma unroll
      for (int j = 0; j < TK; ++j) {
        s[j] = c[j] - acc_t(0.5) * acc[i][j];
        m = max_acc(m, s[j]);
      }
      acc_t total = sm[i] * rescale(mx[i], m);
#pragma unroll
      for (int j = 0; j < TK; ++j) total += s[j] == neg_inf<acc_t>() ? acc_t(0) : exp_acc(s[j] - m);
      mx[i] = m;
      sm[i] = total;
    }
  }
  // The 16 lanes with equal ty (one half warp) hold the same rows: merge their states.
#pragma unroll
  for (int i = 0; i < TN; ++i)
#pragma unroll
    for (int off = 8; off >= 1; off /= 2) {
      const acc_t om = __shfl_xor_sync(0xffffffffu, mx[i], off);
      const acc_t os = __shfl_xor_sync(0xffffffffu, sm[i], off);
      lse_merge(mx[i], sm[i], om, os);
    }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < TN; ++i) {
      const int64_t row = n0 + ty + 16 * i;
      if (row >= N) continue;
      if (part_max != nullptr) {
        part_max[int64_t(blockIdx.y) * N + row] = mx[i];
        part_sum[int64_t(blockIdx.y) * N + row] = sm[i];
      } else {
        out[row] = mx[i] + log_acc(sm[i]);
      }
    }
  }
}

// out[n] from the per-split (max, sum) pairs.
template <typename acc_t>
__global__ void log_mog_combine_kernel(const acc_t* __restrict__ part_max,
                                       const acc_t* __restrict__ part_sum,
                                       acc_t* __restrict__ out, int64_t N, int splits) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  acc_t mx = part_max[n], sm = part_sum[n];
  for (int s = 1; s < splits; ++s) lse_merge(mx, sm, part_max[s * N + n], part_sum[s * N + n]);
  out[n] = mx + log_acc(sm);
}

// dst[0 .. nvalid) += v[0 .. nvalid): one float4 atomic on sm_90 when allowed, else scalars.
template <int VEC, typename acc_t>
__device__ __forceinline__ void atomic_add_run(acc_t* dst, const acc_t (&v)[VEC], int nvalid,
                                               bool vec_ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same<acc_t, float>::value && VEC == 4) {
    if (vec_ok && nvalid >= 4) {
      atomicAdd(reinterpret_cast<float4*>(dst), make_float4(v[0], v[1], v[2], v[3]));
      return;
    }
  }
#endif
#pragma unroll
  for (int i = 0; i < VEC; ++i)
    if (i < nvalid) atomicAdd(dst + i, v[i]);
}

// gz (N, L) must be zero on entry; it receives grad_z in acc_t. wdiff, wsq, wsum are added to.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, Tile<acc_t>::MIN_BLOCKS)
    log_mog_backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ z,
                            const acc_t* __restrict__ means, const acc_t* __restrict__ prec,
                            const acc_t* __restrict__ consts, const acc_t* __restrict__ out,
                            acc_t* __restrict__ gz, acc_t* __restrict__ wdiff,
                            acc_t* __restrict__ wsq, acc_t* __restrict__ wsum, int64_t N,
                            int64_t K, int64_t L, int64_t tiles_per_split, bool atomic_gz,
                            bool vec_atomics) {
  using G = Geo<acc_t>;
  constexpr int TN = G::TN, TK = G::TK, VEC = G::VEC, ZS = G::ZS, RS = G::RS;
  constexpr int AN = G::AN, AK = G::AK;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* zs = reinterpret_cast<acc_t*>(smem_raw);  // (BN, ZS)
  acc_t* ms = zs + G::BN * ZS;                      // (BK, ZS)
  acc_t* ps = ms + G::BK * ZS;                      // (BK, ZS)
  acc_t* rs = ps + G::BK * ZS;                      // (BK, RS): r transposed
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;  // score phase: 16 x 16
  const int lg = tid % 8, g32 = tid / 8;   // reduction passes: 32 x 8
  const int64_t n0 = int64_t(blockIdx.x) * G::BN;
  const int64_t kt0 = int64_t(blockIdx.y) * tiles_per_split;
  const int64_t kt1 = imin(kt0 + tiles_per_split, ceil_div(K, G::BK));
  const int nchunks = static_cast<int>(ceil_div(L, G::BL));
  // Rows of this block that exist, rounded up to VEC (the extra ones have r = 0).
  const int nrows = static_cast<int>(ceil_div(imin(G::BN, N - n0), VEC) * VEC);

  for (int64_t kt = kt0; kt < kt1; ++kt) {
    const int64_t k0 = kt * G::BK;
    const int kc = static_cast<int>(imin(G::BK, K - k0));
    {
      acc_t acc[TN][TK];
      score_tile(acc, z, means, prec, zs, ms, ps, n0, k0, N, K, L);
      acc_t gr[TN], orow[TN];  // (re)read here rather than held through the score loop
#pragma unroll
      for (int i = 0; i < TN; ++i) {
        const int64_t row = n0 + ty + 16 * i;
        gr[i] = row < N ? grad[row] : acc_t(0);  // grad 0 marks padding: r = 0 below
        orow[i] = row < N ? out[row] : acc_t(0);
      }
#pragma unroll
      for (int j = 0; j < TK; ++j) {
        const int64_t k = k0 + tx + 16 * j;
        const acc_t c = k < K ? consts[k] : neg_inf<acc_t>();
#pragma unroll
        for (int i = 0; i < TN; ++i) {
          const acc_t s = c - acc_t(0.5) * acc[i][j];
          const bool zero = s == neg_inf<acc_t>() || gr[i] == acc_t(0);
          rs[(tx + 16 * j) * RS + ty + 16 * i] = zero ? acc_t(0) : gr[i] * exp_acc(s - orow[i]);
        }
      }
    }
    __syncthreads();  // r visible to all

    if (tid < G::BK && tid < kc) {  // wsum[k] += sum_n r[n, k]
      acc_t total = acc_t(0);
      for (int n = 0; n < nrows; n += VEC) {
        const Vec<acc_t, VEC> rv = ldv<VEC>(rs + tid * RS + n);
#pragma unroll
        for (int v = 0; v < VEC; ++v) total += rv.v[v];
      }
      atomicAdd(wsum + k0 + tid, total);
    }

    // The last chunk is still staged from the score phase: walk the chunks backwards.
    for (int ch = nchunks - 1; ch >= 0; --ch) {
      const int64_t l0 = int64_t(ch) * G::BL;
      if (ch != nchunks - 1) {
        __syncthreads();
        stage<G::BN>(zs, z, n0, N, L, l0);
        stage<G::BK>(ms, means, k0, K, L, l0);
        stage<G::BK>(ps, prec, k0, K, L, l0);
        __syncthreads();
      }
      const int64_t col0 = l0 + lg * VEC;  // this thread's first dimension in both passes
      const int ncol = static_cast<int>(imin(L - col0, VEC));  // how many exist (may be <= 0)

      // grad_z[n, l] -= sum_k r[n, k] (z[n, l] - m[k, l]) prec[k, l]: rows g32*AN + a.
      {
        acc_t zr[AN][VEC], g[AN][VEC];
#pragma unroll
        for (int a = 0; a < AN; ++a) {
          const Vec<acc_t, VEC> zv = ldv<VEC>(zs + (g32 * AN + a) * ZS + lg * VEC);
#pragma unroll
          for (int v = 0; v < VEC; ++v) zr[a][v] = zv.v[v], g[a][v] = acc_t(0);
        }
        for (int k = 0; k < kc; ++k) {
          const Vec<acc_t, AN> rv = ldv<AN>(rs + k * RS + g32 * AN);
          const Vec<acc_t, VEC> mv = ldv<VEC>(ms + k * ZS + lg * VEC);
          const Vec<acc_t, VEC> pv = ldv<VEC>(ps + k * ZS + lg * VEC);
#pragma unroll
          for (int a = 0; a < AN; ++a)
#pragma unroll
            for (int v = 0; v < VEC; ++v) {
              const acc_t d = zr[a][v] - mv.v[v];
              g[a][v] = fma_acc(-rv.v[a], d * pv.v[v], g[a][v]);
            }
        }
        if (ncol > 0) {
#pragma unroll
          for (int a = 0; a < AN; ++a) {
            const int64_t row = n0 + g32 * AN + a;
            if (row >= N) continue;
            acc_t* dst = gz + row * L + col0;
            if (atomic_gz) {
              atomic_add_run<VEC>(dst, g[a], ncol, vec_atomics);
            } else {  // this block owns the row: plain read-modify-write
#pragma unroll
              for (int v = 0; v < VEC; ++v)
                if (v < ncol) dst[v] += g[a][v];
            }
          }
        }
      }

      // wdiff[k, l] += sum_n r (z - m) prec, wsq[k, l] += sum_n r (z - m)^2 prec:
      // components g32*AK + b, summed over the block's rows, then one atomic each.
      {
        acc_t mr[AK][VEC], pr[AK][VEC], wd[AK][VEC], wq[AK][VEC];
#pragma unroll
        for (int b = 0; b < AK; ++b) {
          const Vec<acc_t, VEC> mv = ldv<VEC>(ms + (g32 * AK + b) * ZS + lg * VEC);
          const Vec<acc_t, VEC> pv = ldv<VEC>(ps + (g32 * AK + b) * ZS + lg * VEC);
#pragma unroll
          for (int v = 0; v < VEC; ++v)
            mr[b][v] = mv.v[v], pr[b][v] = pv.v[v], wd[b][v] = acc_t(0), wq[b][v] = acc_t(0);
        }
        for (int n = 0; n < nrows; n += VEC) {
          Vec<acc_t, VEC> rv[AK];
#pragma unroll
          for (int b = 0; b < AK; ++b) rv[b] = ldv<VEC>(rs + (g32 * AK + b) * RS + n);
#pragma unroll
          for (int q = 0; q < VEC; ++q) {
            const Vec<acc_t, VEC> zv = ldv<VEC>(zs + (n + q) * ZS + lg * VEC);
#pragma unroll
            for (int b = 0; b < AK; ++b)
#pragma unroll
              for (int v = 0; v < VEC; ++v) {
                const acc_t d = zv.v[v] - mr[b][v];
                const acc_t u = rv[b].v[q] * (d * pr[b][v]);
                wd[b][v] += u;
                wq[b][v] = fma_acc(u, d, wq[b][v]);
              }
          }
        }
        if (ncol > 0) {
#pragma unroll
          for (int b = 0; b < AK; ++b) {
            const int kk = g32 * AK + b;
            if (kk >= kc) continue;
            const int64_t off = (k0 + kk) * L + col0;
            atomic_add_run<VEC>(wdiff + off, wd[b], ncol, vec_atomics);
            atomic_add_run<VEC>(wsq + off, wq[b], ncol, vec_atomics);
          }
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void cast_kernel(const acc_t* __restrict__ src, scalar_t* __restrict__ dst,
                            int64_t n) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = from_acc<scalar_t>(src[i]);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Tiles per split and the number of non-empty splits, from the caller's request.
void split_tiles(int64_t K, int64_t bk, int splits, int64_t& tiles_per_split, int64_t& nsplits) {
  const int64_t kt = ceil_div(K, bk);
  tiles_per_split = ceil_div(kt, splits < 1 ? 1 : imin(splits, kt));
  nsplits = ceil_div(kt, tiles_per_split);
}

}  // namespace

template <typename acc_t>
int log_mog_num_splits(int64_t N, int64_t K, int num_sms) {
  using G = Geo<acc_t>;
  if (N <= 0 || K <= 0 || num_sms <= 0) return 1;
  const int64_t nb = ceil_div(N, G::BN), kt = ceil_div(K, G::BK);
  const int64_t target = 2 * int64_t(num_sms);  // about one wave of resident blocks
  if (nb >= target) return 1;
  int64_t tiles_per_split, nsplits;
  split_tiles(K, G::BK, static_cast<int>(imin(kt, ceil_div(target, nb))), tiles_per_split, nsplits);
  return static_cast<int>(nsplits);
}

template <typename scalar_t, typename acc_t>
cudaError_t log_mog_forward(const scalar_t* z, const acc_t* means, const acc_t* prec,
                            const acc_t* consts, acc_t* out, int64_t N, int64_t K, int64_t L,
                            int splits, acc_t* workspace, cudaStream_t stream) {
  using G = Geo<acc_t>;
  if (N <= 0) return cudaSuccess;
  if (K <= 0 || L <= 0) return cudaErrorInvalidValue;
  const int64_t nb = ceil_div(N, G::BN);
  int64_t tps, nsplits;
  split_tiles(K, G::BK, workspace == nullptr ? 1 : splits, tps, nsplits);
  if (nb > INT32_MAX || nsplits > 65535) return cudaErrorInvalidValue;
  acc_t* part_max = nsplits > 1 ? workspace : nullptr;
  acc_t* part_sum = nsplits > 1 ? workspace + nsplits * N : nullptr;
  const dim3 grid(static_cast<unsigned>(nb), static_cast<unsigned>(nsplits));
  log_mog_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(z, means, prec, consts, out, part_max, part_sum, N, K, L, tps);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || nsplits == 1) return err;
  const unsigned cblocks = static_cast<unsigned>(ceil_div(N, 256));
  log_mog_combine_kernel<acc_t><<<cblocks, 256, 0, stream>>>(part_max, part_sum, out, N, static_cast<int>(nsplits));
  return cudaGetLastError();
}

template <typename scalar_t, typename acc_t>
cudaError_t log_mog_backward(const acc_t* grad, const scalar_t* z, const acc_t* means,
                             const acc_t* prec, const acc_t* consts, const acc_t* out,
                             scalar_t* grad_z, acc_t* wdiff, acc_t* wsq, acc_t* wsum, int64_t N,
                             int64_t K, int64_t L, int splits, acc_t* workspace,
                             cudaStream_t stream) {
  using G = Geo<acc_t>;
  constexpr bool same = std::is_same<scalar_t, acc_t>::value;
  if (N <= 0) return cudaSuccess;
  if (K <= 0 || L <= 0) return cudaErrorInvalidValue;
  acc_t* gz = workspace;
  if constexpr (same) gz = grad_z;
  if (gz == nullptr) return cudaErrorInvalidValue;
  const int64_t nb = ceil_div(N, G::BN);
  int64_t tps, nsplits;
  split_tiles(K, G::BK, splits, tps, nsplits);
  if (nb > INT32_MAX || nsplits > 65535) return cudaErrorInvalidValue;
  const bool vec_atomics = std::is_same<acc_t, float>::value && L % 4 == 0 && aligned16(gz) &&
                           aligned16(wdiff) && aligned16(wsq);

  cudaError_t err = cudaMemsetAsync(gz, 0, static_cast<size_t>(N * L) * sizeof(acc_t), stream);
  if (err != cudaSuccess) return err;
  auto kernel = log_mog_backward_kernel<scalar_t, acc_t>;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(G::bwd_smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(nb), static_cast<unsigned>(nsplits));
  kernel<<<grid, kThreads, G::bwd_smem, stream>>>(grad, z, means, prec, consts, out, gz, wdiff, wsq, wsum, N, K, L, tps, nsplits > 1, vec_atomics);
  err = cudaGetLastError();
  if (err != cudaSuccess || same) return err;
  const int64_t total = N * L;
  const unsigned cblocks = static_cast<unsigned>(imin(ceil_div(total, 256), 65536));
  cast_kernel<scalar_t, acc_t><<<cblocks, 256, 0, stream>>>(gz, grad_z, total);
  return cudaGetLastError();
}

#define LVMFAST_INSTANTIATE(S, A)                                                             \
  template cudaError_t log_mog_forward<S, A>(const S*, const A*, const A*, const A*, A*,      \
                                             int64_t, int64_t, int64_t, int, A*, cudaStream_t); \
  template cudaError_t log_mog_backward<S, A>(const A*, const S*, const A*, const A*,         \
                                              const A*, const A*, S*, A*, A*, A*, int64_t,     \
                                              int64_t, int64_t, int, A*, cudaStream_t);
LVMFAST_INSTANTIATE(float, float)
LVMFAST_INSTANTIATE(double, double)
LVMFAST_INSTANTIATE(__half, float)
LVMFAST_INSTANTIATE(__nv_bfloat16, float)
#undef LVMFAST_INSTANTIATE
template int log_mog_num_splits<float>(int64_t, int64_t, int);
template int log_mog_num_splits<double>(int64_t, int64_t, int);

}  // namespace kernels
}  // namespace lvmfast
