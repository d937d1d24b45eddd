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
// Design: a block of 128 threads owns one sample at a time (grid-stride over the batch); 256
// when the sample's staged matrices leave fewer than 8 blocks an SM (kWideAboveBytes) and the
// batch is small (kWideMaxSamplesPerSm).
// The sample's vectors (z, y, h, c, gradients: O(D + M)) live in shared memory. Its matrices
// are staged there too when they fit (kStagedSmemLimit): every thread issues its share of
// the upper triangles (and of a dense Q), with z, b (and the backward's grad_out), at once, as
// asynchronous copies (cp.async, sm_80+) when no conversion is needed, so that a sample waits
// out one memory latency. Both triangles share one M x (M + 1) array (triangles_ld): 18.4 kB a
// forward block at M = 64 with the vectors, so 11 blocks fit on an SM (10 by registers,
// kMinBlocksPerSm) and the benchmark's 1024 samples run in one wave. The mat-vecs then read
// shared memory:
//   * R v and Q v (rows): a group of g lanes of one warp per row, all rows of a pass at once
//     (g = 2 at M = 64), a shuffle reduction per group, and the tanh, log and gradient terms of
//     every row evaluated in parallel. Strides are padded so that a warp hits 32 distinct banks.
//   * R^T v and Q^T v (columns): a thread per column, with the rows split over kThreads / M
//     threads when M < kThreads (column_dots, transposed_dots).
//   * gradients of R1, R2, Q: rows by warps, columns by lanes, one coalesced store per element
//     (the zeros below the diagonal are written in the same pass, no memset).
// Matrices too large for shared memory are read from global memory, a warp per row with the
// lanes along it. The backward pass recomputes y, h and c; nothing but the inputs is saved.
// A shared parameter is staged once per block, and its gradient is accumulated into the block's
// own workspace slice (no atomics: each element is owned by one thread of one block); the host
// sums the slices.
//
// History (H100, benchmarks/results/gpu-h100-2026-11-26*.md): mat-vecs reading global memory
// took 4-6x the floor in kernel time. Staging each triangle in its own square with register
// batches, with one warp per row and the rows in series, still took 4.0-9.1x: the rows'
// shuffle reductions, tanh and log ran one after another, and 6 blocks an SM needed two waves.
// With the row groups, the shared triangle array and the asynchronous copies: 2.1-4.0x fwd+bwd,
// 2.7-5.4x forward alone (the orthogonal kind the farthest). Then (not yet run on a GPU): z, b and
// grad_out staged with the matrices, which had each cost a memory latency after the wait, and
// Q^T v split over the block (at M = 32 a quarter of it had run the 64-long dots). Also not yet
// run: the tuning constants below can be overridden with -D, and one such build double-buffers
// the staging (LVMFAST_SYLVESTER_PIPELINE_BLOCKS), for benchmarks/gpu_kernels.sh to time.
// Session 8 (H100): loading the triangles alone took 0.68 of the triangular forward, and
// double-buffering was slower (fewer blocks, fewer bytes in flight). Session 11 (H100): copies
// in three groups, each phase waiting only for its own, ran up to 16% slower than one wait, and
// were removed. Session 13 (read in the SASS, not yet run on a GPU): the staging loop spent 53
// instructions on each pair of triangle elements, about 5 us of issue for the 8 samples of an
// SM at B = 1024, as long as DRAM takes to serve them; stepped pointers take 17 (stage_pair).
// And the mat-vecs' inner loops, rolled, spent 10 instructions an element behind one shared load
// each; unrolled by 4 (the same order of sums), 6, with the loads issued together. Session 14
// (SASS, no GPU): the backward's gradient stores took 11 instructions an element, now 16-byte
// stores (quad_rows), the zeros below the diagonals stored during the loads; the rows'
// double-precision tanh and log ran on one lane of each row group in every warp, now on M
// consecutive threads.
#include "async_copy.cuh"
#include "convert.cuh"
#include "launch.cuh"
#include "sylvester.cuh"

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace lvmfast {
namespace kernels {
namespace {

// Tuning constants. Each can be overridden with -D at compile time, so that
// benchmarks/gpu_kernels.sh can time several builds of these kernels in one call on a GPU.
#ifndef LVMFAST_SYLVESTER_THREADS
#define LVMFAST_SYLVESTER_THREADS 128
#endif
#ifndef LVMFAST_SYLVESTER_WIDE_THREADS
#define LVMFAST_SYLVESTER_WIDE_THREADS 256
#endif
#ifndef LVMFAST_SYLVESTER_MIN_BLOCKS
#define LVMFAST_SYLVESTER_MIN_BLOCKS 10
#endif
#ifndef LVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS
#define LVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS 8
#endif
// Threads a block. The staged kernels of a sample whose shared-memory footprint leaves fewer than
// 8 blocks an SM (kWideAboveBytes) get the wide count instead: on the H100 (2026-11-26, builds
// of one count each) 256 threads took the Householder kind (a 64 x 64 Q beside the triangles,
// 35 kB a forward block, 6 blocks an SM) from 33.0 to 30.4 us forward and from 65.5 to 55.1 us
// backward, and slowed the triangular (18 kB) and orthogonal (14 kB) kinds: 18.8 -> 20.6 and
// 16.1 -> 20.7 us forward. The footprint is the rule, the kind its one measured case. Picked per
// launch (this build, against gpu_kernels.sh's sy128, H100, session 11): the Householder kind at
// B = 1024 31.0 against 33.3 us forward, 55.4 against 65.9 backward, but at B = 4096 107.4
// against 96.7 forward, 200.0 against 196.7 backward. So wide blocks only up to
// kWideMaxSamplesPerSm samples an SM: 7.8 at B = 1024 on 132 SMs (wide faster), 31 at 4096
// (narrow faster); the crossover between them is not measured, 16 is their geometric mean.
#ifndef LVMFAST_SYLVESTER_WIDE_MAX_SAMPLES_PER_SM
#define LVMFAST_SYLVESTER_WIDE_MAX_SAMPLES_PER_SM 16
#endif
constexpr int kNarrowThreads = LVMFAST_SYLVESTER_THREADS;
constexpr int kWideThreads = LVMFAST_SYLVESTER_WIDE_THREADS;
constexpr size_t kWideAboveBytes = 28 * 1024;
constexpr int64_t kWideMaxSamplesPerSm = LVMFAST_SYLVESTER_WIDE_MAX_SAMPLES_PER_SM;
constexpr bool valid_threads(int threads) {
  return threads % 32 == 0 && (threads & (threads - 1)) == 0;
}
static_assert(valid_threads(kNarrowThreads) && valid_threads(kWideThreads),
              "the row groups and column splits need a power-of-two block of whole warps");
// Registers for at least this many resident blocks of kNarrowThreads an SM (as many threads for
// other counts): the benchmark's 1024 samples need 8 on an H100 (132 SMs) to run in one wave.
// Left free, ptxas gave the backward 128 registers after a small change (4 blocks an SM). The
// forward fits 10 blocks' worth (48 registers) without spilling; the backward spills there, and
// gets 8 (64 registers).
constexpr int kMinBlocksPerSm = LVMFAST_SYLVESTER_MIN_BLOCKS;
constexpr int kMinBackwardBlocksPerSm = LVMFAST_SYLVESTER_MIN_BACKWARD_BLOCKS;
constexpr int min_blocks(int narrow_blocks, int threads) {
  return narrow_blocks * kNarrowThreads >= threads ? narrow_blocks * kNarrowThreads / threads : 1;
}
// Double-buffered staging (off by default; benchmarks/gpu_kernels.sh times it): fewer blocks, each
// walking several samples and loading the next one's matrices while it computes the current one,
// instead of one wave of blocks that all load and then all compute.
#ifndef LVMFAST_SYLVESTER_PIPELINE_BLOCKS
#define LVMFAST_SYLVESTER_PIPELINE_BLOCKS 0
#endif
constexpr int kPipelineBlocksPerSm = LVMFAST_SYLVESTER_PIPELINE_BLOCKS;  // 0: off
// Staged kernels only up to this much shared memory a block: two blocks still fit on an SM.
// -D LVMFAST_SYLVESTER_STAGED_LIMIT_KB=0 sends every launch to the kernel that reads the matrices
// from global memory (gpu_kernels.sh's syglobal), to time staging against.
#ifndef LVMFAST_SYLVESTER_STAGED_LIMIT_KB
#define LVMFAST_SYLVESTER_STAGED_LIMIT_KB 96
#endif
constexpr size_t kStagedSmemLimit = size_t{LVMFAST_SYLVESTER_STAGED_LIMIT_KB} * 1024;
// -D LVMFAST_SYLVESTER_STAGE_Q=0 (gpu_kernels.sh's systageq0): the staged kernels stage the
// triangles only and read a dense Q from global memory (twice: the second pass mostly from L2),
// so that a Householder-kind block needs 17 kB instead of 33 and the benchmark's 1024 samples
// fit one wave; to time against staging Q.
#ifndef LVMFAST_SYLVESTER_STAGE_Q
#define LVMFAST_SYLVESTER_STAGE_Q 1
#endif
constexpr bool kStageQ = LVMFAST_SYLVESTER_STAGE_Q != 0;
// -D LVMFAST_SYLVESTER_QUAD_STORES=0 (gpu_kernels.sh's syelem): the backward stores its
// gradients an element at a time, by lanes along the rows, as before session 14 (quad_stores);
// LVMFAST_SYLVESTER_EARLY_ZEROS=0 (sylatezeros): by quads, but the zeros below the triangles'
// diagonals among the other stores after the computation (put_lower_zeros).
#ifndef LVMFAST_SYLVESTER_QUAD_STORES
#define LVMFAST_SYLVESTER_QUAD_STORES 1
#endif
#ifndef LVMFAST_SYLVESTER_EARLY_ZEROS
#define LVMFAST_SYLVESTER_EARLY_ZEROS 1
#endif
constexpr bool kQuadStores = LVMFAST_SYLVESTER_QUAD_STORES != 0;
constexpr bool kEarlyZeros = LVMFAST_SYLVESTER_EARLY_ZEROS != 0;

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
template <int kThreads>
__host__ __device__ __forceinline__ int group_size(int64_t rows) {
  int g = 1;
  while (g < 32 && 2 * g * rows <= kThreads) g *= 2;
  return g;
}

// Element (m, k) of a matrix at p[m row + k col + off]: the same mat-vec code then reads a
// row-major matrix in global memory, a padded copy in shared memory or a transposed triangle.
// I: int64_t for global memory, int for the (small) staged copies.
template <typename T, typename I>
struct View {
  T* p;
  I row, col, off;
  __device__ __forceinline__ T& operator()(I m, I k) const { return p[m * row + k * col + off]; }
};

// The least odd multiple of g that is >= lo.
__host__ __device__ __forceinline__ int64_t odd_multiple(int64_t lo, int64_t g) {
  const int64_t q = (lo + g - 1) / g;
  return (q % 2 == 0 ? q + 1 : q) * g;
}

// Row stride of the staged triangles. One M x ld array W holds R2's upper triangle shifted a
// column right (R2[m, k] at W[m, k + 1]) and R1's transposed into the lower triangle with the
// diagonal (R1[m, k] at W[k, m]): half the shared memory of two squares, so twice as many
// blocks stay resident. Lane j < g of row m's group starts at W[m, m + 1 + j] (a row of R2:
// element m (ld + 1) + 1 + j) or at W[m + j, m] (a row of R1: m (ld + 1) + j ld). With ld + 1
// an odd multiple of g, m (ld + 1) takes 32 / g distinct multiples of g mod 32 over a warp's
// rows, and 1 + j or j ld (= -j mod g) g distinct residues: 32 distinct banks. Column walks
// (R^T v) read along a row or column of W, consecutive threads on consecutive banks.
template <int kThreads>
__host__ __device__ __forceinline__ int64_t triangles_ld(int64_t M) {
  return odd_multiple(M + 2, group_size<kThreads>(M)) - 1;
}

// Row stride of a staged dense Q (D x M): lane j of row d's group starts at element d ld + j;
// ld an odd multiple of g gives a warp's rows and lanes 32 distinct banks.
template <int kThreads>
__host__ __device__ __forceinline__ int64_t dense_ld(int64_t rows, int64_t cols) {
  return odd_multiple(cols, group_size<kThreads>(rows));
}

// emit(m, sum_{k >= k0} A(m, k) v[k]) for every row m < rows, on one thread per row, with
// k0 = m for an upper triangle and 0 for a dense matrix. A group of g lanes of one warp shares
// a row: group_size(rows) for shared memory, so that all rows of a pass run at once; a whole
// warp for global memory, so that its loads along the row coalesce. Every thread of the block
// must call it (the shuffles need whole warps).
template <int kThreads, bool kStaged, typename acc_t, typename T, typename I, typename Emit>
__device__ __forceinline__ void row_dots(const View<T, I>& A, const acc_t* v, I rows, I cols,
                                         bool upper, int tid, Emit&& emit) {
  const int g = kStaged ? group_size<kThreads>(rows) : 32, j = tid & (g - 1);
  const int per_pass = kThreads / g;
  for (I base = 0; base < rows; base += per_pass) {
    const I m = base + tid / g;
    acc_t s = 0;
    // unrolled: a row's loads issue together instead of one behind each multiply-add (the
    // rolled loop spent 10 SASS instructions an element, each waiting out a shared load), the
    // sum in the same order
    if (m < rows)
#pragma unroll 4
      for (I k = (upper ? m : 0) + j; k < cols; k += g) s += to_acc<acc_t>(A(m, k)) * v[k];
    for (int offset = g >> 1; offset > 0; offset >>= 1)
      s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (m < rows && j == 0) emit(m, s);
  }
}

// Threads that share a column of a transposed product (R^T v, Q^T v): the largest power of two
// with parts * cols <= kThreads, so that a short column count (M = 32) keeps the whole block
// busy instead of a quarter of it.
template <int kThreads>
__host__ __device__ __forceinline__ int column_parts(int64_t cols) {
  int parts = 1;
  while (2 * parts * cols <= kThreads) parts *= 2;
  return parts;
}

// sum_m A(m, k) v[m] for every column k < cols, over m <= k for an upper triangle or m < rows
// for a dense matrix, and likewise with v2 when it is given (one pass over A for both). The rows
// of a column are split over column_parts(cols) threads: split p's sums land in
// partial[p cols + k] (v2's at partial[kThreads + p cols + k]), or in dst[k] (dst2[k]) when there
// is one split; column_sum adds them up in a fixed order. No barrier: the caller's next one
// publishes the sums.
template <int kThreads, typename acc_t, typename T, typename I>
__device__ __forceinline__ void column_dots(const View<T, I>& A, I rows, I cols, bool upper,
                                            const acc_t* v, acc_t* dst, const acc_t* v2,
                                            acc_t* dst2, acc_t* partial, int tid) {
  const int parts = column_parts<kThreads>(cols);
  const int part = parts > 1 ? tid / static_cast<int>(cols) : 0;
  if (part >= parts) return;
  // with splits, parts * cols <= kThreads: one column a thread
  for (I k = parts > 1 ? tid % cols : tid; k < cols; k += kThreads) {
    const I end = upper ? k + 1 : rows;
    acc_t s = 0, s2 = 0;
#pragma unroll 4
    for (I m = part; m < end; m += parts) {
      const acc_t a = to_acc<acc_t>(A(m, k));
      s += a * v[m];
      if (v2 != nullptr) s2 += a * v2[m];
    }
    if (parts == 1) {
      dst[k] = s;
      if (v2 != nullptr) dst2[k] = s2;
    } else {
      partial[part * cols + k] = s;
      if (v2 != nullptr) partial[kThreads + part * cols + k] = s2;
    }
  }
}
template <int kThreads, typename acc_t, typename I>
__device__ __forceinline__ acc_t column_sum(const acc_t* dst, const acc_t* partial, I M, I k) {
  const int parts = column_parts<kThreads>(M);
  if (parts == 1) return dst[k];
  acc_t s = 0;
  for (int p = 0; p < parts; ++p) s += partial[p * M + k];
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

// 16-byte stores of a row-major gradient of `cols` columns (quad_rows): float, the sample's own
// (amortized) output, 16-byte aligned rows, and a column quad count that divides the block, so
// that a thread keeps one column quad, and the column's values in registers, for every row it
// writes. Element stores by lanes along the rows spent 11 SASS instructions an element (CUDA
// 13.0, sm_90: the row's values reloaded from shared memory after every store, which the
// compiler cannot tell apart from the output).
template <typename scalar_t, typename acc_t>
constexpr bool kQuadStoreTypes =
    kQuadStores && std::is_same<scalar_t, float>::value && std::is_same<acc_t, float>::value;
template <int kThreads, typename I>
__device__ __forceinline__ bool quad_stores(const float* own, I cols) {
  return own != nullptr && cols % 4 == 0 && kThreads % (cols / 4) == 0 &&
         reinterpret_cast<uintptr_t>(own) % 16 == 0;
}
// Which quad of a row thread tid writes in quad_rows, and the first row it writes: kByColumn
// false, the threads of a row are consecutive (a warp's store covers whole rows); true, the
// threads of a column quad are (a warp covers few column quads, so that its trip count over a
// triangle's rows follows the triangle's shape: at M = 64, 20 trips a block instead of 32).
template <int kThreads, bool kByColumn, typename I>
__device__ __forceinline__ I quad_column(int tid, I cols) {
  const int quads = static_cast<int>(cols / 4);
  return 4 * (kByColumn ? tid / (kThreads / quads) : tid % quads);
}
template <int kThreads, bool kByColumn, typename I>
__device__ __forceinline__ I quad_first_row(int tid, I cols) {
  const int quads = static_cast<int>(cols / 4);
  return kByColumn ? tid % (kThreads / quads) : tid / quads;
}
// own[r cols + k .. k + 3] = quad(r) for every row r in [begin, end), k = quad_column(tid, cols),
// each thread stepping its rows by kThreads / (cols / 4).
template <int kThreads, bool kByColumn, typename I, typename Quad>
__device__ __forceinline__ void quad_rows(float* own, I begin, I end, I cols, int tid,
                                          Quad&& quad) {
  const int row_step = kThreads / static_cast<int>(cols / 4);
  I r = quad_first_row<kThreads, kByColumn>(tid, cols);
  if (r < begin) r += (begin - r + row_step - 1) / row_step * row_step;
  float* dst = own + r * cols + quad_column<kThreads, kByColumn>(tid, cols);
  for (; r < end; r += row_step, dst += row_step * cols) *reinterpret_cast<float4*>(dst) = quad(r);
}

// Whether a gradient of `cols` columns goes out by quad_rows: the sample's own output (not a
// shared parameter's slice) of the types and shape quad_stores takes. A triangle's then has its
// zeros below the diagonal stored early (put_lower_zeros), the rest by put_upper_outer.
template <int kThreads, typename scalar_t, typename acc_t, typename I>
__device__ __forceinline__ bool quad_output(const scalar_t* own, const acc_t* shared, I cols) {
  if constexpr (kQuadStoreTypes<scalar_t, acc_t>) {
    return shared == nullptr && quad_stores<kThreads>(own, cols);
  } else {
    return false;
  }
}

// The quads of a triangle's gradient that lie wholly below the diagonal (rows past k + 3 of
// column quad k: 44% of them at M = 64), stored before the sample's computation instead of among
// its stores after it: they depend on nothing, and the threads would otherwise wait out the
// loads idle.
template <int kThreads, typename scalar_t, typename acc_t, typename I>
__device__ __forceinline__ void put_lower_zeros(scalar_t* own, const acc_t* shared, I M, int tid) {
  if constexpr (kEarlyZeros && kQuadStoreTypes<scalar_t, acc_t>) {
    if (!quad_output<kThreads>(own, shared, M)) return;
    const I k = quad_column<kThreads, true>(tid, M);
    quad_rows<kThreads, true>(own, k + 4, M, M, tid,
                              [](I) { return make_float4(0.f, 0.f, 0.f, 0.f); });
  }
}

// A triangle's gradient: (m, k) = u[m] v[k] on and above the diagonal, plus diag[m] on it, and 0
// below (written too, the output being the whole M x M matrix: the quads wholly below by
// put_lower_zeros where quad_output); added into the block's slice for a shared parameter.
template <int kThreads, typename scalar_t, typename acc_t, typename I>
__device__ __forceinline__ void put_upper_outer(scalar_t* own, acc_t* shared, const acc_t* u,
                                                const acc_t* v, const acc_t* diag, I M, int tid) {
  if constexpr (kQuadStoreTypes<scalar_t, acc_t>) {
    if (quad_output<kThreads>(own, shared, M)) {  // the rows past k + 3: put_lower_zeros
      const I k = quad_column<kThreads, true>(tid, M);
      const float v0 = v[k], v1 = v[k + 1], v2 = v[k + 2], v3 = v[k + 3];
      const I end = kEarlyZeros && k + 4 < M ? k + 4 : M;
      quad_rows<kThreads, true>(own, I(0), end, M, tid, [&](I m) {
        const float um = u[m];
        float4 x = make_float4(k >= m ? um * v0 : 0.f, k + 1 >= m ? um * v1 : 0.f,
                               k + 2 >= m ? um * v2 : 0.f, k + 3 >= m ? um * v3 : 0.f);
        if (m >= k && m < k + 4) {
          const float d = diag[m];
          const I j = m - k;
          if (j == 0) x.x += d;
          else if (j == 1) x.y += d;
          else if (j == 2) x.z += d;
          else x.w += d;
        }
        return x;
      });
      return;
    }
  }
  const int lane = tid & 31, warp = tid >> 5;
  constexpr int kWarps = kThreads / 32;
  for (I m = warp; m < M; m += kWarps) {
    for (I k = lane; k < M; k += 32) {
      acc_t x = k >= m ? u[m] * v[k] : acc_t(0);
      if (k == m) x += diag[m];
      put(own, shared, m * M + k, x);
    }
  }
}

// Q's gradient: (d, m) = a[d] x[m] + b[d] y[m] for a D x M output, or added into the block's
// slice for a shared Q.
template <int kThreads, typename scalar_t, typename acc_t, typename I>
__device__ __forceinline__ void put_outer_pair(scalar_t* own, acc_t* shared, const acc_t* a,
                                               const acc_t* x, const acc_t* b, const acc_t* y, I D,
                                               I M, int tid) {
  if constexpr (kQuadStoreTypes<scalar_t, acc_t>) {
    if (quad_output<kThreads>(own, shared, M)) {
      const I k = quad_column<kThreads, false>(tid, M);
      const float x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
      const float y0 = y[k], y1 = y[k + 1], y2 = y[k + 2], y3 = y[k + 3];
      quad_rows<kThreads, false>(own, I(0), D, M, tid, [&](I d) {
        const float ad = a[d], bd = b[d];
        return make_float4(ad * x0 + bd * y0, ad * x1 + bd * y1, ad * x2 + bd * y2,
                           ad * x3 + bd * y3);
      });
      return;
    }
  }
  const int lane = tid & 31, warp = tid >> 5;
  constexpr int kWarps = kThreads / 32;
  for (I d = warp; d < D; d += kWarps)
    for (I m = lane; m < M; m += 32) put(own, shared, d * M + m, a[d] * x[m] + b[d] * y[m]);
}

// Shared-memory copies of one sample's matrices: the upper triangles of R1 and R2, in one array
// (triangles_ld), and a dense Q.
template <typename acc_t>
struct Staged {
  View<acc_t, int> r1, r2, q;
};

constexpr int kBatch = 8;

// dst_a(r, c), dst_b(r, c) = a, b (rows x cols, row-major), the upper triangles only if `upper`;
// b is skipped unless copy_b, a unless copy_a. Each thread walks the flat index in steps of the
// block (coalesced), (row, col) advanced without a division per step. Without a conversion the
// copies are asynchronous (the caller waits: wait_async_copies); with one, each thread issues
// kBatch loads per matrix before storing any, so that many loads are in flight.
template <int kThreads, typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_pair(const View<acc_t, int>& dst_a, const scalar_t* a,
                                           bool copy_a, const View<acc_t, int>& dst_b,
                                           const scalar_t* b, bool copy_b, int rows, int cols,
                                           bool upper, int tid) {
  if (!copy_a && !copy_b) return;
  const int n = rows * cols, dr = kThreads / cols, dc = kThreads % cols;
  int i = tid, r = tid / cols, c = tid % cols;
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
    if (dc == 0) {
      // A thread keeps its column c (cols divides the block: M = 32, 64) and steps its rows by
      // dr, up to the diagonal in a triangle: the same copies in the same order as the loop
      // below, with the source pointers and shared addresses stepped instead of recomputed. In
      // the SASS (CUDA 13.0, sm_90) that loop spent 53 instructions on each element pair (the
      // View's index, the batch offset, the kernel's parameters reloaded, the shared window's
      // base): by a count, issuing a wave's copies took about as long as DRAM takes to serve
      // them (benchmarks/kernels/NOTES.md, session 13).
      const int end = upper ? (c + 1 < rows ? c + 1 : rows) : rows;
      if (r >= end) return;
      SharedAddress da = shared_address(&dst_a(r, c)), db = shared_address(&dst_b(r, c));
      const int step_a = dr * dst_a.row * int(sizeof(acc_t));
      const int step_b = dr * dst_b.row * int(sizeof(acc_t));
      const scalar_t* sa = a + i;
      const scalar_t* sb = b + i;
#pragma unroll 1
      for (; r < end; r += dr, da += step_a, db += step_b, sa += dr * cols, sb += dr * cols) {
        if (copy_a) copy_async_to(da, sa);
        if (copy_b) copy_async_to(db, sb);
      }
      return;
    }
#pragma unroll 1
    for (; i < n; i += kThreads, r += dr, c += dc) {
      if (c >= cols) c -= cols, ++r;
      if (upper && c < r) continue;
      if (copy_a) copy_async(&dst_a(r, c), a + i);
      if (copy_b) copy_async(&dst_b(r, c), b + i);
    }
  } else {
    while (i < n) {
      acc_t va[kBatch], vb[kBatch];
      int rs[kBatch], cs[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const bool keep = i < n && (!upper || c >= r);
        rs[u] = keep ? r : -1;
        cs[u] = c;
        va[u] = keep && copy_a ? load<acc_t>(a, i) : acc_t(0);
        vb[u] = keep && copy_b ? load<acc_t>(b, i) : acc_t(0);
        i += kThreads, r += dr, c += dc;
        if (c >= cols) c -= cols, ++r;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (rs[u] < 0) continue;
        if (copy_a) dst_a(rs[u], cs[u]) = va[u];
        if (copy_b) dst_b(rs[u], cs[u]) = vb[u];
      }
    }
  }
}

// Issues the copies of one sample's matrices; the caller waits (wait_async_copies). A shared
// parameter (batch stride 0) is copied for the block's first sample only.
template <int kThreads, typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage(const Staged<acc_t>& dst, const scalar_t* R1,
                                      const scalar_t* R2, const scalar_t* Q,
                                      const SylvesterDims& p, bool first, int tid) {
  // staged sizes are small (kStagedSmemLimit): 32-bit indices
  const int M = static_cast<int>(p.M), D = static_cast<int>(p.D);
  stage_pair<kThreads>(dst.r1, R1, first || p.r1_bs != 0, dst.r2, R2, first || p.r2_bs != 0, M, M,
                       true, tid);
  if (kStageQ && p.qkind == 2) {
    // q_columns: the source is a row-major M x D matrix (Q^T), staged through the transposed view
    const bool t = p.q_columns;
    const View<acc_t, int> q{dst.q.p, t ? dst.q.col : dst.q.row, t ? dst.q.row : dst.q.col,
                             dst.q.off};
    stage_pair<kThreads>(q, Q, first || p.q_bs != 0, q, Q, false, t ? M : D, t ? D : M, false, tid);
  }
}

// dst[0, n) = src[0, n stride) in acc_t: issued with the sample's matrices (asynchronously when
// no conversion is needed), so that z, grad_out and b arrive in the same wait as the matrices
// instead of one memory latency each after it.
template <int kThreads, typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_vector(acc_t* dst, const scalar_t* src, int n, int tid,
                                             int64_t stride = 1) {
  for (int i = tid; i < n; i += kThreads) {
    if constexpr (std::is_same<scalar_t, acc_t>::value)
      copy_async(dst + i, src + i * stride);
    else
      dst[i] = load<acc_t>(src, i * stride);
  }
}

// ys = Q^T zs (and gs = Q^T g when g is given) for a dense D x M Q, by column_dots, with the
// splits added up (partial: kThreads acc_t, twice that with g). Every thread must call it; it
// ends with a barrier.
template <int kThreads, typename acc_t, typename T, typename I>
__device__ __forceinline__ void transposed_dots(const View<T, I>& Q, const acc_t* zs,
                                                const acc_t* g, I D, I M, acc_t* ys, acc_t* gs,
                                                acc_t* partial, int tid) {
  column_dots<kThreads>(Q, D, M, false, zs, ys, g, gs, partial, tid);
  __syncthreads();
  if (column_parts<kThreads>(M) == 1) return;
  for (I m = tid; m < M; m += kThreads) {
    ys[m] = column_sum<kThreads>(ys, partial, M, m);
    if (g != nullptr) gs[m] = column_sum<kThreads>(gs, partial + kThreads, M, m);
  }
  __syncthreads();
}

template <int kThreads, typename acc_t>
__device__ __forceinline__ Staged<acc_t> staged_layout(acc_t* mats, const SylvesterDims& p) {
  const int M = static_cast<int>(p.M), ld = static_cast<int>(triangles_ld<kThreads>(p.M));
  return {{mats, 1, ld, 0}, {mats, ld, 1, 1},
          {mats + M * ld, static_cast<int>(dense_ld<kThreads>(p.D, p.M)), 1, 0}};
}

// Shared-memory elements of a block: the vectors, then (staged) the matrices.
template <int kThreads>
__host__ __device__ __forceinline__ int64_t staged_elements(const SylvesterDims& p) {
  return p.M * triangles_ld<kThreads>(p.M) +
         (kStageQ && p.qkind == 2 ? p.D * dense_ld<kThreads>(p.D, p.M) : 0);
}
// A block's vectors: z, y, h, c, then b (staged with the matrices) and the partial sums of one
// column_dots (forward); z, grad_out, nine of size M, then b and the partial sums of two
// (backward). The *_bias_offset functions place b for both the kernels and the sample functions.
__host__ __device__ __forceinline__ int64_t forward_bias_offset(const SylvesterDims& p) {
  return p.D + 3 * p.M;
}
__host__ __device__ __forceinline__ int64_t backward_bias_offset(const SylvesterDims& p) {
  return 2 * p.D + 9 * p.M;
}
template <int kThreads>
__host__ __device__ __forceinline__ int64_t forward_vector_elements(const SylvesterDims& p) {
  return forward_bias_offset(p) + p.M + kThreads;
}
template <int kThreads>
__host__ __device__ __forceinline__ int64_t backward_vector_elements(const SylvesterDims& p) {
  return backward_bias_offset(p) + p.M + 2 * kThreads;
}

// Views of one sample's matrices in global memory (row-major; Q column-major with q_columns), for
// the unstaged kernels.
template <typename scalar_t>
struct Global {
  View<const scalar_t, int64_t> r1, r2, q;
};
template <typename scalar_t>
__device__ __forceinline__ Global<scalar_t> global_views(const scalar_t* R1, const scalar_t* R2,
                                                         const scalar_t* Q,
                                                         const SylvesterDims& p) {
  return {{R1, p.M, 1, 0}, {R2, p.M, 1, 0},
          {Q, p.q_columns ? int64_t(1) : p.M, p.q_columns ? p.D : int64_t(1), 0}};
}

// A staged sample's matrices as the sample functions read them: the staged views, or without
// kStageQ the staged triangles and the sample's Q in global memory (Q: its first element).
template <typename acc_t, typename scalar_t>
struct StagedTriangles {
  View<acc_t, int> r1, r2;
  View<const scalar_t, int> q;
};
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ auto sample_mats(const Staged<acc_t>& staged, const scalar_t* Q,
                                            const SylvesterDims& p) {
  if constexpr (kStageQ) {
    return staged;
  } else {
    const int D = static_cast<int>(p.D), M = static_cast<int>(p.M);
    return StagedTriangles<acc_t, scalar_t>{
        staged.r1, staged.r2, {Q, p.q_columns ? 1 : M, p.q_columns ? D : 1, 0}};
  }
}

// One sample of the forward pass; `mats` holds views of R1, R2 and Q, staged (Staged, I = int;
// StagedTriangles without kStageQ) or in global memory (Global, I = int64_t).
template <int kThreads, bool kStaged, typename I, typename scalar_t, typename acc_t, typename Mats>
__device__ __forceinline__ void forward_sample(const scalar_t* zn, const Mats& mats,
                                               const scalar_t* bn, scalar_t* outn,
                                               scalar_t* logdetn, acc_t* vectors,
                                               acc_t* warp_logdet, const SylvesterDims& p,
                                               int tid) {
  const I D = static_cast<I>(p.D), M = static_cast<I>(p.M);
  const auto &R1 = mats.r1, &R2 = mats.r2;
  const auto &Q = mats.q;  // another type than the triangles' without kStageQ
  const int lane = tid & 31, warp = tid >> 5;
  constexpr int kWarps = kThreads / 32;
  acc_t* zs = vectors;
  acc_t* y = zs + D;
  acc_t* h = y + M;
  acc_t* c = h + M;
  const acc_t* bs = vectors + forward_bias_offset(p);  // staged with the matrices (kStaged)
  acc_t* partial = vectors + forward_bias_offset(p) + M;
  if constexpr (!kStaged)
    for (I d = tid; d < D; d += kThreads) zs[d] = load<acc_t>(zn, d);
  __syncthreads();
  if (p.qkind == 2) {
    transposed_dots<kThreads>(Q, zs, static_cast<const acc_t*>(nullptr), D, M, y, y, partial, tid);
  } else {
    for (I m = tid; m < M; m += kThreads) y[m] = zs[p.qkind == 0 ? m : D - 1 - m];
    __syncthreads();
  }
  row_dots<kThreads, kStaged>(R2, y, M, M, true, tid, [&](I m, acc_t a) { h[m] = a; });
  __syncthreads();
  // Each row's tanh and log on a thread of its own, M consecutive threads (whole warps), rather
  // than on the first lane of each row group, spread over every warp: the double-precision
  // routines then take the issue slots of M / 32 warps (2 at M = 64, 1 at 32) instead of all 4.
  acc_t my_logdet = 0;
  for (I m = tid; m < M; m += kThreads) {
    const acc_t hm = tanh_acc(h[m] + (kStaged ? bs[m] : load<acc_t>(bn, m)));
    h[m] = hm;
    const acc_t diag = to_acc<acc_t>(R1(m, m)) * to_acc<acc_t>(R2(m, m));
    my_logdet += log_abs(acc_t(1) + (acc_t(1) - hm * hm) * diag);
  }
  __syncthreads();
  row_dots<kThreads, kStaged>(R1, h, M, M, true, tid, [&](I m, acc_t s) { c[m] = s; });
  __syncthreads();
  if (p.qkind != 2) {
    for (I d = tid; d < D; d += kThreads)
      outn[d] = from_acc<scalar_t>(zs[d] + c[p.qkind == 0 ? d : D - 1 - d]);
  } else {
    row_dots<kThreads, kStaged && kStageQ>(
        Q, c, D, M, false, tid, [&](I d, acc_t s) { outn[d] = from_acc<scalar_t>(zs[d] + s); });
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

// The staging schedule of a kernel's loop over samples, with kBuffers sample buffers.
// issue(n, k, first) issues the copies of sample n into buffer k (`first`: the buffer's first
// sample, which also stages a shared parameter). The block's i-th sample uses buffer_of(i).
template <int kBuffers>
__device__ __forceinline__ int buffer_of(int64_t i) {
  return kBuffers == 2 ? static_cast<int>(i & 1) : 0;
}
// Before the loop: with two buffers, the first sample's copies.
template <int kBuffers, typename Issue>
__device__ __forceinline__ void stage_first(Issue&& issue, int64_t B) {
  if constexpr (kBuffers == 2) {
    if (blockIdx.x < B) issue(static_cast<int64_t>(blockIdx.x), 0, true);
    commit_async_copies();
  }
}
// At the top of the block's i-th sample n: once its own copies have landed (for this thread),
// the next sample's are in flight (two buffers) or none are (one). The caller's next barrier
// makes the copies visible to the block.
template <int kBuffers, typename Issue>
__device__ __forceinline__ void stage_sample(Issue&& issue, int64_t n, int64_t i, int64_t B) {
  if constexpr (kBuffers == 1) {
    issue(n, 0, i == 0);
    wait_async_copies();
  } else if (n + gridDim.x < B) {
    // the other buffer's last reader finished at the previous sample's final barrier
    issue(n + gridDim.x, buffer_of<kBuffers>(i + 1), i == 0);
    commit_async_copies();
    wait_async_copies_but<1>();
  } else {
    wait_async_copies();
  }
}

// kBuffers = 2 (staged only): double-buffered staging, the next sample's copies issued before
// the current sample's computation (kPipelineBlocksPerSm).
template <int kThreads, typename scalar_t, typename acc_t, bool kStaged, int kBuffers>
__global__ void __launch_bounds__(kThreads, min_blocks(kMinBlocksPerSm, kThreads))
    forward_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ r1,
                   const scalar_t* __restrict__ r2, const scalar_t* __restrict__ b,
                   const scalar_t* __restrict__ q, scalar_t* __restrict__ out,
                   scalar_t* __restrict__ logdet, SylvesterDims p) {
  static_assert(kBuffers == 1 || (kBuffers == 2 && kStaged), "double buffers are staged ones");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ acc_t warp_logdet[kThreads / 32];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t vector_elements = forward_vector_elements<kThreads>(p);
  const int64_t per_buffer = vector_elements + (kStaged ? staged_elements<kThreads>(p) : 0);
  const int tid = threadIdx.x;
  auto layout = [&](acc_t* vectors) {
    return staged_layout<kThreads>(vectors + vector_elements, p);
  };
  // Issues the copies of sample n into buffer k; `first`: the buffer's first sample (a shared
  // parameter is staged once per buffer).
  auto issue = [&](int64_t n, int k, bool first) {
    acc_t* vectors = smem + k * per_buffer;
    const int D = static_cast<int>(p.D), M = static_cast<int>(p.M);
    stage<kThreads>(layout(vectors), r1 + n * p.r1_bs, r2 + n * p.r2_bs,
                    p.qkind == 2 ? q + n * p.q_bs : nullptr, p, first, tid);
    stage_vector<kThreads>(vectors, z + n * p.D, D, tid);
    if (first || p.b_bs != 0)
      stage_vector<kThreads>(vectors + forward_bias_offset(p), b + n * p.b_bs, M, tid);
  };
  if constexpr (kStaged) stage_first<kBuffers>(issue, p.B);
  int64_t i = 0;
  for (int64_t n = blockIdx.x; n < p.B; n += gridDim.x, ++i) {
    acc_t* vectors = smem + buffer_of<kBuffers>(i) * per_buffer;
    const scalar_t* bn = b + n * p.b_bs;
    if constexpr (kStaged) {
      stage_sample<kBuffers>(issue, n, i, p.B);
      // forward_sample's first barrier orders these copies before their use
      forward_sample<kThreads, true, int>(
          z + n * p.D, sample_mats(layout(vectors), p.qkind == 2 ? q + n * p.q_bs : q, p), bn,
          out + n * p.D, logdet + n, vectors, warp_logdet, p, tid);
    } else {
      forward_sample<kThreads, false, int64_t>(
          z + n * p.D,
          global_views(r1 + n * p.r1_bs, r2 + n * p.r2_bs, p.qkind == 2 ? q + n * p.q_bs : nullptr, p),
          bn, out + n * p.D, logdet + n, vectors, warp_logdet, p, tid);
    }
    __syncthreads();  // a later sample's copies overwrite what this one read
  }
}

// Gradient outputs of one sample: amortized pointers (already offset to the sample) or, for a
// shared parameter, the block's workspace slice ws_* (its own pointer is then null).
template <typename scalar_t, typename acc_t>
struct SampleGrads {
  scalar_t *z, *r1, *r2, *b, *q;
  acc_t *ws_r1, *ws_r2, *ws_b, *ws_q;
};

// gn: the sample's row of grad_out, its elements `g_stride` apart.
template <int kThreads, bool kStaged, typename I, typename scalar_t, typename acc_t, typename Mats>
__device__ __forceinline__ void backward_sample(const scalar_t* gn, int64_t g_stride, acc_t gl,
                                                const scalar_t* zn, const Mats& mats,
                                                const scalar_t* bn,
                                                const SampleGrads<scalar_t, acc_t>& out,
                                                acc_t* vectors, const SylvesterDims& p, int tid) {
  const I D = static_cast<I>(p.D), M = static_cast<I>(p.M);
  const auto &R1 = mats.r1, &R2 = mats.r2;
  const auto &Q = mats.q;  // another type than the triangles' without kStageQ
  const bool dense = p.qkind == 2;
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
  const acc_t* bs = vectors + backward_bias_offset(p);  // staged with the matrices (kStaged)
  acc_t* partial = vectors + backward_bias_offset(p) + M;
  if constexpr (!kStaged) {
    for (I d = tid; d < D; d += kThreads) {
      zs[d] = load<acc_t>(zn, d);
      gs[d] = load<acc_t>(gn, d * g_stride);
    }
  }
  __syncthreads();
  // y = Q^T z and gc = Q^T g, in one pass over Q.
  if (dense) {
    transposed_dots<kThreads>(Q, zs, static_cast<const acc_t*>(gs), D, M, y, gc, partial, tid);
  } else {
    for (I m = tid; m < M; m += kThreads) {
      const I d = p.qkind == 0 ? m : D - 1 - m;
      y[m] = zs[d];
      gc[m] = gs[d];
    }
    __syncthreads();
  }
  // h, and the log-det's gradients: w.r.t. h (kept in ga until gh is known) and the diagonals,
  // each row's on a thread of its own (as in forward_sample).
  row_dots<kThreads, kStaged>(R2, y, M, M, true, tid, [&](I m, acc_t a) { h[m] = a; });
  __syncthreads();
  for (I m = tid; m < M; m += kThreads) {
    const acc_t hm = tanh_acc(h[m] + (kStaged ? bs[m] : load<acc_t>(bn, m)));
    const acc_t r1d = to_acc<acc_t>(R1(m, m)), r2d = to_acc<acc_t>(R2(m, m));
    const acc_t s = acc_t(1) - hm * hm;
    const acc_t w = gl / (acc_t(1) + s * r1d * r2d);
    h[m] = hm;
    ga[m] = acc_t(-2) * hm * r1d * r2d * w;
    dg1[m] = s * r2d * w;
    dg2[m] = s * r1d * w;
  }
  __syncthreads();
  // gh = R1^T gc (split sums, added up below); c = R1 h (needed for grad_q only).
  column_dots<kThreads>(R1, M, M, true, static_cast<const acc_t*>(gc), gh,
                        static_cast<const acc_t*>(nullptr), gh, partial, tid);
  if (dense) row_dots<kThreads, kStaged>(R1, h, M, M, true, tid, [&](I m, acc_t s) { c[m] = s; });
  __syncthreads();
  // grad_r1 = triu(gc h^T) + diag(dg1); then ga = s * (gh + d logdet / dh) = grad_b.
  put_upper_outer<kThreads>(out.r1, out.ws_r1, gc, h, dg1, M, tid);
  for (I m = tid; m < M; m += kThreads) {
    const acc_t v = (acc_t(1) - h[m] * h[m]) * (column_sum<kThreads>(gh, partial, M, m) + ga[m]);
    ga[m] = v;
    put(out.b, out.ws_b, m, v);
  }
  __syncthreads();
  // gy = R2^T ga (split sums, added up below); grad_r2 = triu(ga y^T) + diag(dg2).
  column_dots<kThreads>(R2, M, M, true, static_cast<const acc_t*>(ga), gy,
                        static_cast<const acc_t*>(nullptr), gy, partial, tid);
  put_upper_outer<kThreads>(out.r2, out.ws_r2, ga, y, dg2, M, tid);
  __syncthreads();
  if (column_parts<kThreads>(M) > 1) {
    for (I k = tid; k < M; k += kThreads) gy[k] = column_sum<kThreads>(gy, partial, M, k);
    __syncthreads();
  }
  // grad_z = g + Q gy; grad_q = z gy^T + g c^T.
  if (!dense) {
    for (I d = tid; d < D; d += kThreads)
      out.z[d] = from_acc<scalar_t>(gs[d] + gy[p.qkind == 0 ? d : D - 1 - d]);
  } else {
    row_dots<kThreads, kStaged && kStageQ>(
        Q, gy, D, M, false, tid, [&](I d, acc_t s) { out.z[d] = from_acc<scalar_t>(gs[d] + s); });
    put_outer_pair<kThreads>(out.q, out.ws_q, zs, gy, gs, c, D, M, tid);
  }
  __syncthreads();
}

// kBuffers: as forward_kernel's.
template <int kThreads, typename scalar_t, typename acc_t, bool kStaged, int kBuffers>
__global__ void __launch_bounds__(kThreads, min_blocks(kMinBackwardBlocksPerSm, kThreads))
    backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ grad_logdet,
                    const scalar_t* __restrict__ z, const scalar_t* __restrict__ r1,
                    const scalar_t* __restrict__ r2, const scalar_t* __restrict__ b,
                    const scalar_t* __restrict__ q, scalar_t* __restrict__ grad_z,
                    scalar_t* __restrict__ grad_r1, scalar_t* __restrict__ grad_r2,
                    scalar_t* __restrict__ grad_b, scalar_t* __restrict__ grad_q,
                    acc_t* __restrict__ workspace, int64_t shared_size, SylvesterDims p,
                    SylvesterGradStrides gst) {
  static_assert(kBuffers == 1 || (kBuffers == 2 && kStaged), "double buffers are staged ones");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t D = p.D, M = p.M, MM = M * M;
  const bool dense = p.qkind == 2;
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t vector_elements = backward_vector_elements<kThreads>(p);
  const int64_t per_buffer = vector_elements + (kStaged ? staged_elements<kThreads>(p) : 0);
  // This block's slices of the shared parameters' gradient sums (nullptr: amortized).
  acc_t* slice = workspace == nullptr ? nullptr : workspace + blockIdx.x * shared_size;
  SampleGrads<scalar_t, acc_t> out{};
  if (p.r1_bs == 0) out.ws_r1 = slice, slice += MM;
  if (p.r2_bs == 0) out.ws_r2 = slice, slice += MM;
  if (p.b_bs == 0) out.ws_b = slice, slice += M;
  if (dense && p.q_bs == 0) out.ws_q = slice;
  const int tid = threadIdx.x;
  auto layout = [&](acc_t* vectors) {
    return staged_layout<kThreads>(vectors + vector_elements, p);
  };
  // Sample n's zeros below the triangles' diagonals (amortized float gradients: put_lower_zeros).
  auto lower_zeros = [&](int64_t n) {
    const acc_t* none = nullptr;
    put_lower_zeros<kThreads>(p.r1_bs != 0 ? grad_r1 + n * MM : nullptr, none, M, tid);
    put_lower_zeros<kThreads>(p.r2_bs != 0 ? grad_r2 + n * MM : nullptr, none, M, tid);
  };
  // Issues the copies of sample n into buffer k (`first`: as in forward_kernel), then stores its
  // gradients' zeros.
  auto issue = [&](int64_t n, int k, bool first) {
    acc_t* vectors = smem + k * per_buffer;
    const int Di = static_cast<int>(D), Mi = static_cast<int>(M);
    stage<kThreads>(layout(vectors), r1 + n * p.r1_bs, r2 + n * p.r2_bs,
                    dense ? q + n * p.q_bs : nullptr, p, first, tid);
    stage_vector<kThreads>(vectors, z + n * D, Di, tid);
    stage_vector<kThreads>(vectors + Di, grad_out + n * gst.out_row, Di, tid, gst.out_col);
    if (first || p.b_bs != 0)
      stage_vector<kThreads>(vectors + backward_bias_offset(p), b + n * p.b_bs, Mi, tid);
    lower_zeros(n);  // while the copies land
  };
  if constexpr (kStaged) stage_first<kBuffers>(issue, p.B);
  int64_t i = 0;
  for (int64_t n = blockIdx.x; n < p.B; n += gridDim.x, ++i) {
    acc_t* vectors = smem + buffer_of<kBuffers>(i) * per_buffer;
    const scalar_t* bn = b + n * p.b_bs;
    if constexpr (!kStaged) lower_zeros(n);
    out.z = grad_z + n * D;
    out.r1 = out.ws_r1 != nullptr ? nullptr : grad_r1 + n * MM;
    out.r2 = out.ws_r2 != nullptr ? nullptr : grad_r2 + n * MM;
    out.b = out.ws_b != nullptr ? nullptr : grad_b + n * M;
    out.q = !dense || out.ws_q != nullptr ? nullptr : grad_q + n * D * M;
    const acc_t gl = load<acc_t>(grad_logdet, n * gst.logdet);
    if constexpr (kStaged) {
      stage_sample<kBuffers>(issue, n, i, p.B);
      // backward_sample's first barrier orders these copies before their use, and its last
      // one their reuse
      backward_sample<kThreads, true, int>(
          grad_out + n * gst.out_row, gst.out_col, gl, z + n * D,
          sample_mats(layout(vectors), dense ? q + n * p.q_bs : q, p), bn, out, vectors, p, tid);
    } else {
      backward_sample<kThreads, false, int64_t>(
          grad_out + n * gst.out_row, gst.out_col, gl, z + n * D,
          global_views(r1 + n * p.r1_bs, r2 + n * p.r2_bs, dense ? q + n * p.q_bs : nullptr, p),
          bn, out, vectors, p, tid);
    }
  }
}

// Shared-memory bytes of a block of kThreads threads: its vectors, and the staged matrices.
template <int kThreads, typename acc_t>
size_t forward_bytes(const SylvesterDims& p, bool staged) {
  const int64_t matrices = staged ? staged_elements<kThreads>(p) : 0;
  return size_t(forward_vector_elements<kThreads>(p) + matrices) * sizeof(acc_t);
}
template <int kThreads, typename acc_t>
size_t backward_bytes(const SylvesterDims& p, bool staged) {
  const int64_t matrices = staged ? staged_elements<kThreads>(p) : 0;
  return size_t(backward_vector_elements<kThreads>(p) + matrices) * sizeof(acc_t);
}

int grid_size(int64_t B, int per_sm, int num_sms) {
  const int64_t cap = static_cast<int64_t>(per_sm) * (num_sms > 0 ? num_sms : 1);
  return static_cast<int>(B < cap ? B : cap);
}

// The kernel a launch gets, by the shared memory a block stages and the batch (the same rule
// forward and backward): double-buffered (kPipelineBlocksPerSm), wide blocks where a narrow one
// would stage over kWideAboveBytes and the batch is at most kWideMaxSamplesPerSm an SM, narrow
// staged blocks, or the kernel that reads global memory.
enum class Launch { kPipelined, kWide, kNarrow, kGlobal };
Launch pick_launch(size_t narrow_staged, size_t wide_staged, int64_t B, int num_sms) {
  if (kPipelineBlocksPerSm > 0 && 2 * narrow_staged <= kStagedSmemLimit) return Launch::kPipelined;
  if (narrow_staged > kWideAboveBytes && wide_staged <= kStagedSmemLimit &&
      B <= kWideMaxSamplesPerSm * (num_sms > 0 ? num_sms : 1))
    return Launch::kWide;
  return narrow_staged <= kStagedSmemLimit ? Launch::kNarrow : Launch::kGlobal;
}

}  // namespace

int sylvester_backward_blocks(int64_t B, bool any_shared, int num_sms) {
  return grid_size(B, any_shared ? 2 : (kPipelineBlocksPerSm > 0 ? kPipelineBlocksPerSm : 16), num_sms);
}

template <typename scalar_t, typename acc_t>
cudaError_t sylvester_forward(const scalar_t* z, const scalar_t* r1, const scalar_t* r2,
                              const scalar_t* b, const scalar_t* q, scalar_t* out,
                              scalar_t* logdet, const SylvesterDims& dims, int num_sms,
                              cudaStream_t stream) {
  if (dims.B == 0) return cudaSuccess;
  const size_t staged = forward_bytes<kNarrowThreads, acc_t>(dims, true);
  const size_t wide = forward_bytes<kWideThreads, acc_t>(dims, true);
  const int blocks = grid_size(dims.B, 16, num_sms);
  auto go = [&](auto kernel, int grid, int threads, size_t smem) {
    return launch_with_smem(kernel, grid, threads, smem, stream, z, r1, r2, b, q, out, logdet,
                            dims);
  };
  switch (pick_launch(staged, wide, dims.B, num_sms)) {
    case Launch::kPipelined:
      if constexpr (kPipelineBlocksPerSm > 0)
        return go(forward_kernel<kNarrowThreads, scalar_t, acc_t, true, 2>,
                  grid_size(dims.B, kPipelineBlocksPerSm, num_sms), kNarrowThreads, 2 * staged);
      break;
    case Launch::kWide:
      return go(forward_kernel<kWideThreads, scalar_t, acc_t, true, 1>, blocks, kWideThreads,
                wide);
    case Launch::kNarrow:
      return go(forward_kernel<kNarrowThreads, scalar_t, acc_t, true, 1>, blocks, kNarrowThreads,
                staged);
    case Launch::kGlobal:
      break;
  }
  return go(forward_kernel<kNarrowThreads, scalar_t, acc_t, false, 1>, blocks, kNarrowThreads,
            forward_bytes<kNarrowThreads, acc_t>(dims, false));
}

template <typename scalar_t, typename acc_t>
cudaError_t sylvester_backward(const scalar_t* grad_out, const scalar_t* grad_logdet,
                               const scalar_t* z, const scalar_t* r1, const scalar_t* r2,
                               const scalar_t* b, const scalar_t* q, scalar_t* grad_z,
                               scalar_t* grad_r1, scalar_t* grad_r2, scalar_t* grad_b,
                               scalar_t* grad_q, acc_t* workspace, int64_t shared_size,
                               const SylvesterDims& dims, const SylvesterGradStrides& grad_strides,
                               int blocks, int num_sms, cudaStream_t stream) {
  if (dims.B == 0 || blocks <= 0) return cudaSuccess;
  const size_t staged = backward_bytes<kNarrowThreads, acc_t>(dims, true);
  const size_t wide = backward_bytes<kWideThreads, acc_t>(dims, true);
  acc_t* slices = shared_size > 0 ? workspace : nullptr;
  auto go = [&](auto kernel, int threads, size_t smem) {
    return launch_with_smem(kernel, blocks, threads, smem, stream, grad_out, grad_logdet, z, r1,
                            r2, b, q, grad_z, grad_r1, grad_r2, grad_b, grad_q, slices,
                            shared_size, dims, grad_strides);
  };
  switch (pick_launch(staged, wide, dims.B, num_sms)) {
    case Launch::kPipelined:
      if constexpr (kPipelineBlocksPerSm > 0)
        return go(backward_kernel<kNarrowThreads, scalar_t, acc_t, true, 2>, kNarrowThreads,
                  2 * staged);
      break;
    case Launch::kWide:
      return go(backward_kernel<kWideThreads, scalar_t, acc_t, true, 1>, kWideThreads, wide);
    case Launch::kNarrow:
      return go(backward_kernel<kNarrowThreads, scalar_t, acc_t, true, 1>, kNarrowThreads, staged);
    case Launch::kGlobal:
      break;
  }
  return go(backward_kernel<kNarrowThreads, scalar_t, acc_t, false, 1>, kNarrowThreads,
            backward_bytes<kNarrowThreads, acc_t>(dims, false));
}

#define LVMFAST_INSTANTIATE(scalar_t, acc_t)                                                     \
  template cudaError_t sylvester_forward<scalar_t, acc_t>(                                      \
      const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*,      \
      scalar_t*, scalar_t*, const SylvesterDims&, int, cudaStream_t);                           \
  template cudaError_t sylvester_backward<scalar_t, acc_t>(                                     \
      const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*,      \
      const scalar_t*, const scalar_t*, scalar_t*, scalar_t*, scalar_t*, scalar_t*, scalar_t*,  \
      acc_t*, int64_t, const SylvesterDims&, const SylvesterGradStrides&, int, int, cudaStream_t);

LVMFAST_INSTANTIATE(float, float)
LVMFAST_INSTANTIATE(double, double)
LVMFAST_INSTANTIATE(__half, float)
LVMFAST_INSTANTIATE(__nv_bfloat16, float)
#undef LVMFAST_INSTANTIATE

}  // namespace kernels
}  // namespace lvmfast
