// CUDA kernels of the orthogonal family: Björck–Bowie orthonormalization, forward and backward.
// Math contract: csrc/orthogonal.h. Launchers: orthogonal.cuh. No torch headers here.
//
// Floor at the benchmark shape, N = 1024 matrices of 64 x 32, float32 (benchmarks/floors.py, with
// the H100's measured 51 TFLOP/s of float32 FMA; TF32 tensor cores would break the 1e-6
// convergence test, so they are not used). A matrix takes k steps (a mean of 11.6 in floors.py's
// float32 loop, 11.1 on the H100):
//   forward : k + 1 Gram products A = Q^T Q (D M (M + 1) flops, being symmetric) and k updates
//             Q A (2 D M^2): 2.4 GFLOP for the batch, 48 us. Bytes: 8.4 MB in + 8.4 MB out, 6 us:
//             compute-bound.
//   backward: the iterates re-created (k Gram products, k - 1 updates) and 3 products of 2 D M^2
//             a step, S = Q^T G, G A and Q (S + S^T): 6.9 GFLOP, 135 us.
// The Gram products here compute the 2 x 2 blocks of 4 x 4 tiles on or above the diagonal (40 of
// the 64 tiles at M = 32; kSymmetricGram) and mirror them, so the forward does about 1.1x its
// least work.
//
// Design: one thread block per matrix (blocks loop over matrices), Q, Q' and A in shared memory
// (20 KB at 64 x 32 float; the forward has 128 threads a block and up to 8 blocks an SM, all
// resident at the 48 registers ptxas gives the float kernel for sm_90). Products are
// register-tiled 4 x 4 per thread over the shared operands when M and D are multiples of 8
// (gemm_tn_quads, gemm_nn_quads), else 2 x 2 with paired loads when M is even. The convergence
// test is a block reduction whose result every thread reads from shared memory, so the whole block
// leaves the loop together and a converged matrix is not touched again; nothing goes back to the
// host. The backward re-runs the very same forward device function (so it takes the same number of
// steps) in shared memory, copying each executed iterate Q_j, A_j out to the block's slice of a
// global workspace (per block, not per matrix: memory does not grow with the batch); it then walks
// them back, loading Q_j and A_j into shared memory beside the gradient buffers, the next step's
// pair with asynchronous copies while the current step computes. The slice holds at most 33
// iterates (kBjorckSlots + 1), so memory does not grow with max_steps either: past 32 executed
// steps the walk replays the iteration from multi-level checkpoints (orthogonal_checkpoints.cuh;
// the benchmark's max_steps = 30 never does). Matrices too large for shared memory run the same
// code on buffers in the global workspace.
//
// History (H100, benchmarks/results/gpu-h100-2026-11-26*.md): the backward in global memory ran
// at 5.8x the arithmetic floor in kernel time; the shared-memory backward with 2 x 2 tiles and
// paired loads at 3.9x. Shared memory returns one register per lane and cycle, so 2 x 2 tiles
// (4 registers loaded per 4 FMAs) cap the products near a quarter of the FMA rate; 4 x 4 tiles
// load 8 per 16: 2.25x forward and 3.05x forward + backward. The backward, 2 blocks of 256
// threads an SM for its per-block workspace, is the larger gap (3.3x); it waited out the
// workspace's latency at every step, which the prefetch of the next step's Q and A now overlaps
// with the products. Session 8 (H100, against session 10's floors): 3.3x forward, 3.4x the
// backward at 4 blocks of 128 threads an SM. Session 11 (H100): the symmetric Gram products
// took the forward from 157.7 to 148.7 us and the backward from 461.6 to 453.4 (3.1x and 3.4x):
// the products are not most of a step. Session 13 (no GPU; SASS): the products' loops are close
// to their FFMAs (84 instructions for 64 in the Gram product, 94 in the update), but the shared
// loads' bank conflicts and a 4-byte prefetch (12 instructions a copy) were not; see kPad and
// copy_async_block.
#include "orthogonal.cuh"
#include "orthogonal_checkpoints.cuh"
#include "async_copy.cuh"
#include "convert.cuh"
#include "launch.cuh"

#include <cstdint>

namespace lvmfast {
namespace kernels {
namespace {

// The forward's two products have 4 x 4 tiles for every one of 128 threads at 64 x 32 (gemm_tn
// with its D rows split in two); 128 threads also let 8 blocks an SM stay resident. The backward
// re-runs the forward's steps on kForwardThreads threads (run_steps), so it has as many, 4 blocks
// an SM (its 48 KB of shared memory allow no more). On the H100 (2026-11-26, 1024 matrices of
// 64 x 32) that took 460 us against 590 us for 2 blocks of 256 threads and 608 us for 3, at twice
// the workspace of 2 (it is per block). The two constants can be overridden with -D, so that
// benchmarks/gpu_kernels.sh can time several builds of these kernels in one call on a GPU.
#ifndef LVMFAST_BJORCK_BACKWARD_THREADS
#define LVMFAST_BJORCK_BACKWARD_THREADS 128
#endif
#ifndef LVMFAST_BJORCK_BLOCKS_PER_SM
#define LVMFAST_BJORCK_BLOCKS_PER_SM 4
#endif
// 0: the walk back loads each step's Q and A after the previous step instead of during it (no
// second A buffer); for benchmarks/gpu_kernels.sh to time the prefetch against.
#ifndef LVMFAST_BJORCK_PREFETCH
#define LVMFAST_BJORCK_PREFETCH 1
#endif
constexpr bool kPrefetch = LVMFAST_BJORCK_PREFETCH != 0;
// 1: the Gram products A = Q^T Q compute the tiles of their upper triangle only (5/8 of them at
// M = 32, the work packed into the first warps so that the others skip it) and mirror them,
// bitwise the same A as the full product (gemm_tn_quads). 0: the full product, for
// benchmarks/gpu_kernels.sh to time against.
#ifndef LVMFAST_BJORCK_SYMMETRIC_GRAM
#define LVMFAST_BJORCK_SYMMETRIC_GRAM 1
#endif
constexpr bool kSymmetricGram = LVMFAST_BJORCK_SYMMETRIC_GRAM != 0;
// 1 (benchmarks/gpu_kernels.sh's bjswizzle, off by default until timed): the D x M buffers (Q, its
// kept iterates, G) hold row r's 4-element chunks permuted by chunk_xor(r), where M is a multiple
// of 32 and D of 8 (swizzled()). A row of 32 floats spans the 32 banks once, so without it a
// warp's loads of one column quad or pair in several rows fall on the same banks: rows d and
// d + 1 (the Gram products' two K splits, X quads at columns 0 and 4: 2-way) and rows r, r + 4,
// r + 8, r + 12 (an update's tile rows, X pairs: 4-way). Derived from the code, not yet measured:
// gpu_kernels.sh's ncu counters report the conflicts. Same arithmetic, so the same bits.
#ifndef LVMFAST_BJORCK_SWIZZLE
#define LVMFAST_BJORCK_SWIZZLE 0
#endif
constexpr bool kSwizzle = LVMFAST_BJORCK_SWIZZLE != 0;
// 4 (benchmarks/gpu_kernels.sh's bjpad, off by default until timed): the same bank conflicts
// removed with affine addresses instead. The D x M buffers' rows are M + 4 elements apart (where
// padded(): M % 32 == 0, D % 16 == 0), so row r + 1 starts 4 banks after row r; the Gram
// products split K over blocks of 4 rows (split s takes rows 4 s .. 4 s + 3, then 4 (s + splits)
// ..., so that its two splits read rows 4 apart: 16 banks apart) and an update's tile holds rows
// t, t + D / 4, t + D / 2, t + 3 D / 4 (a warp's tiles then read 4 consecutive rows, 4 banks
// apart, where rows 4 apart hold the same banks again). By benchmarks/kernels/bjorck_banks.py,
// 768 wavefronts a step like the swizzle, whose XOR costs issue slots where these offsets fold
// into the loads (SASS of the float kernels, CUDA 13.0: the Gram product's loop, 64 FFMAs, has
// 84 instructions in the default build, 114 swizzled, 86 padded; the update's 94, 108, 95).
// 12.5% more shared memory (8 forward blocks an SM still fit); the Gram products sum K in
// another order (other bits than the default's, the same in forward, backward and replays).
#ifndef LVMFAST_BJORCK_PAD
#define LVMFAST_BJORCK_PAD 0
#endif
constexpr int kPad = LVMFAST_BJORCK_PAD;
static_assert(kPad == 0 || (kPad % 4 == 0 && !kSwizzle),
              "rows must stay 16-byte aligned for the quad loads; pad or swizzle, not both");
constexpr int kForwardThreads = 128;
constexpr int kBackwardThreads = LVMFAST_BJORCK_BACKWARD_THREADS;
static_assert(kBackwardThreads >= kForwardThreads && kBackwardThreads % 32 == 0,
              "the backward re-runs the forward's products on kForwardThreads of its threads");
// The backward's workspace is per block, so it keeps few; a shared-memory forward has none.
constexpr int kBlocksPerSm = LVMFAST_BJORCK_BLOCKS_PER_SM;
constexpr int kForwardBlocksPerSm = 8;

// Sum over the block; every thread gets the result. red: 32 acc_t of shared memory.
template <typename acc_t>
__device__ acc_t block_sum(acc_t x, acc_t* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = x;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < (blockDim.x >> 5); ++w) total += red[w];
  return total;
}

// Two adjacent elements in one shared-memory load. A warp's 2 x 2 tiles read 2 distinct x pairs
// and 16 distinct y pairs per step: one wavefront each as pairs, against one per element, so the
// products are less bound by shared-memory bandwidth (with scalar loads, 4 B per FMA held them
// to a quarter of the FMA rate).
template <typename acc_t>
struct Pair;
template <>
struct Pair<float> {
  using type = float2;
};
template <>
struct Pair<double> {
  using type = double2;
};
template <typename acc_t>
__device__ __forceinline__ typename Pair<acc_t>::type load_pair(const acc_t* p) {
  return *reinterpret_cast<const typename Pair<acc_t>::type*>(p);
}

// Tile walk over a grid of `cols` columns: tile t = threadIdx.x + s stride is at (row, col).
// Stepping by the stride adds a precomputed (step_row, step_col) with one carry, so the per-step
// loops divide only when the walk starts (32-bit; hoisted out of the step loop where inlined).
struct TileWalk {
  int row, col, step_row, step_col, cols;
  __device__ __forceinline__ TileWalk(int cols_, int stride) : cols(cols_) {
    const unsigned c = static_cast<unsigned>(cols_), st = static_cast<unsigned>(stride);
    row = threadIdx.x / c, col = threadIdx.x % c;
    step_row = st / c, step_col = st % c;
  }
  __device__ __forceinline__ void next() {
    row += step_row, col += step_col;
    if (col >= cols) col -= cols, ++row;
  }
};

// Whether the D x M buffers are swizzled (kSwizzle): the XOR below stays inside a row when M is
// a multiple of 32, and D % 8 == 0 keeps every product on its quad path, which knows the layout.
__device__ __forceinline__ bool swizzled(int D, int M) {
  return kSwizzle && M % 32 == 0 && D % 8 == 0;
}
// Row r's chunk permutation: bit 2 from r's bit 0 sends the chunks a Gram warp loads from row d
// (d even; at most 4 chunks, {0, 1}, {2, ..., 5} or {4, ..., 7} at M = 32) and from row d + 1 to
// disjoint sets; bits 0 and 1 from r's bits 2 and 3 give rows r, r + 4, r + 8, r + 12 four
// different chunks for one column.
__device__ __forceinline__ int chunk_xor(int r) {
  return ((r & 1) << 2) | ((r >> 2) & 3);
}
// Whether the D x M buffers are padded (kPad): rows 32 banks wide (M % 32 == 0), every product
// on its quad path and the Gram's row blocks whole for up to 4 splits (D % 16 == 0).
__host__ __device__ __forceinline__ bool padded(int64_t D, int64_t M) {
  return kPad > 0 && M % 32 == 0 && D % 16 == 0;
}
// Row stride of the D x M buffers, in shared memory and in the workspace (kept iterates too).
__host__ __device__ __forceinline__ int64_t buffer_ld(int64_t D, int64_t M) {
  return padded(D, M) ? M + kPad : M;
}

// Where a D x M buffer keeps element (r, c): rows ld apart, each row's chunks permuted when swz.
struct Layout {
  int ld;
  bool swz;
  // a quad (c % 4 == 0) or a pair stays contiguous
  __device__ __forceinline__ int at(int r, int c) const {
    return r * ld + (swz ? c ^ (chunk_xor(r) << 2) : c);
  }
  // element i of a row-major matrix of M columns
  __device__ __forceinline__ int index(int i, int M) const {
    if (!swz && (kPad == 0 || ld == M)) return i;
    const int r = i / M;
    return at(r, i - r * M);
  }
  // the padded layout's placement of the products' rows (kPad)
  __device__ __forceinline__ bool row_blocks(int M) const { return kPad > 0 && ld != M; }
};
__device__ __forceinline__ Layout layout_of(int D, int M) {
  return {static_cast<int>(buffer_ld(D, M)), swizzled(D, M)};
}

// Indices within one matrix (< D M or M M) are 32-bit: the launchers refuse larger matrices.
// Offsets over the batch and the workspace stay 64-bit.
constexpr int64_t kMaxMatrixElements = int64_t(1) << 30;

// Register tiles of 4 x 4 (the fast path, M and D multiples of 8). Shared memory returns one
// 32-bit register per lane and cycle, so a product's speed is set by the registers it loads per
// multiply-add: 2 x 2 tiles load 4 for 4 FMAs (a quarter of the FMA rate), 4 x 4 tiles 8 for 16.
// Lanes are placed so that lane n and n ^ 1 load the same X address and n and n ^ 2 the same Y
// address: such loads are packed and cost half (rule documented for CC 7.x). Four adjacent
// lanes hold a 2 x 2 block of tiles; the bits above pick the K split, then the block.
template <typename acc_t>
struct Quad {
  acc_t v[4];
};
__device__ __forceinline__ Quad<float> load_quad(const float* p) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  return {{t.x, t.y, t.z, t.w}};
}
__device__ __forceinline__ Quad<double> load_quad(const double* p) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  return {{a.x, a.y, b.x, b.y}};
}
__device__ __forceinline__ void store_quad(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_quad(double* p, const double (&v)[4]) {
  *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
  *reinterpret_cast<double2*>(p + 2) = make_double2(v[2], v[3]);
}

// Tile (row, col) of work item w on a grid of `cols` tile columns (rows and cols even): the low
// two bits pick the tile within a 2 x 2 block, the next split_bits the K split, the rest the block:
// over the whole grid, or (upper) over the blocks on or above the diagonal of a square grid, row
// by row.
struct QuadTile {
  int row, col;
  __device__ __forceinline__ QuadTile(int w, int cols, int split_bits, bool upper) {
    int block = (w >> 2) >> split_bits, block_row = 0, block_col;
    const int half_cols = cols >> 1;
    if (upper) {
      while (block >= half_cols - block_row) block -= half_cols - block_row, ++block_row;
      block_col = block_row + block;
    } else {
      block_row = block / half_cols, block_col = block % half_cols;
    }
    row = 2 * block_row + ((w >> 1) & 1);
    col = 2 * block_col + (w & 1);
  }
};

// When `threads` has threads to spare, a tile's K range is split over 2^b lanes (b <= 2, lane
// bits 2 and 3), and their partial sums are combined with shuffles inside the warp. The split,
// so the rounding, depends on `threads` only, not on the block actually running the product.
constexpr int kMaxSplitBits = 2;
__device__ __forceinline__ int split_bits_for(int tiles, int threads) {
  int bits = 0;
  while (bits < kMaxSplitBits && (tiles << (bits + 1)) <= threads) ++bits;
  return bits;
}
template <typename acc_t>
__device__ __forceinline__ void sum_splits(acc_t (&c)[4][4], int split_bits) {
  for (int offset = 4; offset < (4 << split_bits); offset <<= 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) c[i][j] += __shfl_xor_sync(0xffffffffu, c[i][j], offset);
  }
}

// For every 4 x 4 tile of a rows x cols output: accumulate(c, row0, col0, s, splits) adds split
// s's share of the tile's sums to c; the splits are then summed and store(c, row0, col0) runs on
// split 0. Every lane runs the same trip count: the shuffles need whole warps. kUpper (square
// output): only the 2 x 2 blocks of tiles on or above the diagonal, split as the whole grid
// would be (so that each tile rounds as it does there).
template <bool kUpper, typename acc_t, typename Accumulate, typename Store>
__device__ __forceinline__ void for_each_quad_tile(int rows, int cols, int split_threads,
                                                   Accumulate&& accumulate, Store&& store) {
  const int tiles = (rows / 4) * (cols / 4), nt = blockDim.x, side = cols / 8;
  const int split_bits = split_bits_for(tiles, split_threads), splits = 1 << split_bits;
  const int items = (kUpper ? 4 * (side * (side + 1) / 2) : tiles) << split_bits;
  for (int base = 0; base < items; base += nt) {
    const int w = base + static_cast<int>(threadIdx.x);
    const bool active = w < items;
    const int s = (w >> 2) & (splits - 1);
    const QuadTile t(active ? w : 0, cols / 4, split_bits, kUpper);
    acc_t c[4][4] = {};
    if (active) accumulate(c, 4 * t.row, 4 * t.col, s, splits);
    sum_splits(c, split_bits);
    if (active && s == 0) store(c, 4 * t.row, 4 * t.col);
  }
}

// c += a b^T for one row of X and Y.
template <typename acc_t>
__device__ __forceinline__ void fma_quads(acc_t (&c)[4][4], const Quad<acc_t>& a,
                                          const Quad<acc_t>& b) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) c[i][j] += a.v[i] * b.v[j];
}

// gemm_tn's fast path: C (M x M) = X^T Y with 4 x 4 tiles; split s of a tile takes the rows
// d = s, s + splits, ... (padded: the blocks of 4 rows from 4 s, 4 (s + splits), ...). kUpper (a
// Gram product, X = Y): only the 2 x 2 blocks of tiles on or above the diagonal, those above the
// diagonal blocks also stored transposed; each tile rounds as in the full product, whose lower
// tiles round exactly as the upper ones (x y = y x).
template <bool kUpper, typename acc_t>
__device__ void gemm_tn_quads(acc_t* C, const acc_t* X, const acc_t* Y, int D, int M,
                              int split_threads, Layout L) {
  for_each_quad_tile<kUpper, acc_t>(
      M, M, split_threads,
      [&](acc_t (&c)[4][4], int i0, int j0, int s, int splits) {
        if (L.row_blocks(M)) {  // D % 16 == 0: whole blocks for every split
          for (int d = 4 * s; d < D; d += 4 * splits) {
            const acc_t* x = X + d * L.ld + i0;
            const acc_t* y = Y + d * L.ld + j0;
#pragma unroll
            for (int e = 0; e < 4; ++e)
              fma_quads(c, load_quad(x + e * L.ld), load_quad(y + e * L.ld));
          }
          return;
        }
#pragma unroll 4
        for (int d = s; d < D; d += splits)
          fma_quads(c, load_quad(X + L.at(d, i0)), load_quad(Y + L.at(d, j0)));
      },
      [&](const acc_t (&c)[4][4], int i0, int j0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) store_quad(C + (i0 + i) * M + j0, c[i]);
        if (!kUpper || i0 / 8 == j0 / 8) return;  // a diagonal block computes its lower tile
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const acc_t column[4] = {c[0][j], c[1][j], c[2][j], c[3][j]};
          store_quad(C + (j0 + j) * M + i0, column);
        }
      });
}

// gemm_nn's fast path: C (D x M) = alpha (X1 Y1 + X2 Y2) + beta Z with 4 x 4 tiles, two steps of
// k at a time (X's pairs along its rows, Y's quads along two rows); split s of a tile takes the
// pairs k = 2 s, 2 (s + splits), ... Tile row t holds rows 4 t .. 4 t + 3, or (padded) rows
// t + i D / 4, i < 4: the same sums, each by another thread.
template <typename acc_t>
__device__ void gemm_nn_quads(acc_t* C, const acc_t* X1, const acc_t* Y1, const acc_t* X2,
                              const acc_t* Y2, const acc_t* Z, acc_t alpha, acc_t beta, int D,
                              int M, int split_threads, Layout L) {
  const bool strided = L.row_blocks(M);
  // row i of the tile whose first row for_each_quad_tile names r0 (= 4 t)
  auto row = [&](int r0, int i) { return strided ? (r0 >> 2) + i * (D >> 2) : r0 + i; };
  for_each_quad_tile<false, acc_t>(
      D, M, split_threads,
      [&](acc_t (&c)[4][4], int r0, int c0, int s, int splits) {
        for (int pass = 0; pass < (X2 != nullptr ? 2 : 1); ++pass) {
          const acc_t* X = pass == 0 ? X1 : X2;
          const acc_t* Y = (pass == 0 ? Y1 : Y2) + c0;
#pragma unroll 2
          for (int k = 2 * s; k < M; k += 2 * splits) {
            const Quad<acc_t> y0 = load_quad(Y + k * M), y1 = load_quad(Y + (k + 1) * M);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const auto x = load_pair(X + L.at(row(r0, i), k));
#pragma unroll
              for (int j = 0; j < 4; ++j) c[i][j] = x.y * y1.v[j] + (x.x * y0.v[j] + c[i][j]);
            }
          }
        }
      },
      [&](const acc_t (&c)[4][4], int r0, int c0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const Quad<acc_t> z = load_quad(Z + L.at(row(r0, i), c0));
          acc_t out[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) out[j] = alpha * c[i][j] + beta * z.v[j];
          store_quad(C + L.at(row(r0, i), c0), out);
        }
      });
}

// C (M x M) = X^T Y for X, Y (D x M) buffers (laid out by L, plain but on the quad path); 2 x 2
// outputs per thread. Paired loads when M is even (every row then starts on a
// pair boundary). split_threads: see split_bits_for.
template <typename acc_t>
__device__ void gemm_tn(acc_t* C, const acc_t* X, const acc_t* Y, int D, int M,
                        int split_threads, Layout L) {
  if (M % 8 == 0) return gemm_tn_quads<false>(C, X, Y, D, M, split_threads, L);
  const int tiles = (M + 1) / 2;
  for (TileWalk w(tiles, blockDim.x); w.row < tiles; w.next()) {
    const int i0 = 2 * w.row, j0 = 2 * w.col;
    const bool i1ok = i0 + 1 < M, j1ok = j0 + 1 < M;
    acc_t c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    if (M % 2 == 0) {
      for (int d = 0; d < D; ++d) {
        const auto a = load_pair(X + d * M + i0);
        const auto b = load_pair(Y + d * M + j0);
        c00 += a.x * b.x, c01 += a.x * b.y, c10 += a.y * b.x, c11 += a.y * b.y;
      }
    } else {
      for (int d = 0; d < D; ++d) {
        const acc_t* x = X + d * M;
        const acc_t* y = Y + d * M;
        const acc_t a0 = x[i0], a1 = i1ok ? x[i0 + 1] : acc_t(0);
        const acc_t b0 = y[j0], b1 = j1ok ? y[j0 + 1] : acc_t(0);
        c00 += a0 * b0, c01 += a0 * b1, c10 += a1 * b0, c11 += a1 * b1;
      }
    }
    C[i0 * M + j0] = c00;
    if (j1ok) C[i0 * M + j0 + 1] = c01;
    if (i1ok) C[(i0 + 1) * M + j0] = c10;
    if (i1ok && j1ok) C[(i0 + 1) * M + j0 + 1] = c11;
  }
}

// A (M x M) = X^T X for X (D x M) row-major: gemm_tn_quads' upper blocks (kSymmetricGram), else
// gemm_tn.
template <typename acc_t>
__device__ void gram(acc_t* A, const acc_t* X, int D, int M, int split_threads, Layout L) {
  if (kSymmetricGram && M % 8 == 0) return gemm_tn_quads<true>(A, X, X, D, M, split_threads, L);
  gemm_tn(A, X, X, D, M, split_threads, L);
}

// C (D x M) = alpha (X1 Y1 + X2 Y2) + beta Z, X (D x M), Y (M x M); X2 may be null. Paired loads
// when M is even: two steps of k at once, X's pair along its row, Y's pair along each row.
template <typename acc_t>
__device__ void gemm_nn(acc_t* C, const acc_t* X1, const acc_t* Y1, const acc_t* X2,
                        const acc_t* Y2, const acc_t* Z, acc_t alpha, acc_t beta, int D, int M,
                        int split_threads, Layout L) {
  if (D % 8 == 0 && M % 8 == 0)
    return gemm_nn_quads(C, X1, Y1, X2, Y2, Z, alpha, beta, D, M, split_threads, L);
  const int rt = (D + 1) / 2, ct = (M + 1) / 2;
  for (TileWalk w(ct, blockDim.x); w.row < rt; w.next()) {
    const int r0 = 2 * w.row, c0 = 2 * w.col;
    const bool r1ok = r0 + 1 < D, c1ok = c0 + 1 < M;
    acc_t c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    for (int pass = 0; pass < (X2 != nullptr ? 2 : 1); ++pass) {
      const acc_t* X = pass == 0 ? X1 : X2;
      const acc_t* Y = pass == 0 ? Y1 : Y2;
      if (M % 2 == 0) {
        const int r1 = r1ok ? r0 + 1 : r0;  // a last odd row repeats r0; its sums are dropped
        for (int k = 0; k < M; k += 2) {
          const auto x0 = load_pair(X + r0 * M + k), x1 = load_pair(X + r1 * M + k);
          const auto y0 = load_pair(Y + k * M + c0), y1 = load_pair(Y + (k + 1) * M + c0);
          // two chained multiply-adds each (c += p + q would cost a multiply and an add more)
          c00 = x0.y * y1.x + (x0.x * y0.x + c00), c01 = x0.y * y1.y + (x0.x * y0.y + c01);
          c10 = x1.y * y1.x + (x1.x * y0.x + c10), c11 = x1.y * y1.y + (x1.x * y0.y + c11);
        }
      } else {
        for (int k = 0; k < M; ++k) {
          const acc_t a0 = X[r0 * M + k], a1 = r1ok ? X[(r0 + 1) * M + k] : acc_t(0);
          const acc_t b0 = Y[k * M + c0], b1 = c1ok ? Y[k * M + c0 + 1] : acc_t(0);
          c00 += a0 * b0, c01 += a0 * b1, c10 += a1 * b0, c11 += a1 * b1;
        }
      }
    }
    C[r0 * M + c0] = alpha * c00 + beta * Z[r0 * M + c0];
    if (c1ok) C[r0 * M + c0 + 1] = alpha * c01 + beta * Z[r0 * M + c0 + 1];
    if (r1ok) C[(r0 + 1) * M + c0] = alpha * c10 + beta * Z[(r0 + 1) * M + c0];
    if (r1ok && c1ok) C[(r0 + 1) * M + c0 + 1] = alpha * c11 + beta * Z[(r0 + 1) * M + c0 + 1];
  }
}

// dst[0, n) = src[0, n) by the whole block with cp.async (the caller waits): in float, 16-byte
// copies where both start 16-byte aligned (the kept iterates and the shared buffers do at every
// shape with M % 4 == 0), an element at a time for the rest. The walk back's prefetch spent 12
// SASS instructions (CUDA 13.0) on each 4-byte copy, about a sixth of a step's instructions
// beside its products; a 16-byte copy takes 9. (The same for the keeping of an iterate, a load
// and a store, made the float backward spill; double stays an element at a time, as its 16-byte
// pieces raised its spills.)
template <typename acc_t>
__device__ __forceinline__ void copy_async_block(acc_t* dst, const acc_t* src, int n) {
  int done = 0;
  if constexpr (sizeof(acc_t) == 4) {
    if (((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % 16) == 0) {
      done = n - n % 4;
      for (int i = 4 * int(threadIdx.x); i < done; i += 4 * int(blockDim.x))
        copy_async(reinterpret_cast<float4*>(dst + i), reinterpret_cast<const float4*>(src + i));
    }
  }
  for (int i = done + int(threadIdx.x); i < n; i += int(blockDim.x)) copy_async(dst + i, src + i);
}

// The backward's kept iterates in its workspace slice: slot i of `slots` holds Q (q + i D ld, in
// the buffers' layout, ld = buffer_ld) and A (a + i M M); `run` says which step of the current
// run goes where (orthogonal_checkpoints.cuh).
template <typename acc_t>
struct Keep {
  acc_t* q;
  acc_t* a;
  int64_t slots;
  BjorckReplay run;
  __device__ __forceinline__ int64_t slot(int64_t j) const { return run.kept_slot(j, slots); }
};

// Runs up to `steps` steps from the matrix already loaded into qs[0]; qs[0], qs[1] (D x M buffers,
// D ld elements each) alternate and as holds A. test: stop at the first step whose
// ||A - I||_F <= tol (the forward; returns the step count k, the result is in qs + (k % 2) D ld);
// else run exactly `steps` Gram products and steps - 1 updates (a replay of steps taken before).
// keep (may be null): the steps to copy out to the workspace. The same function serves forward,
// backward and replays, so all take the same steps with the same rounding: its arithmetic is
// that of kForwardThreads threads whatever the block (products split as for them, the norm
// summed from their partial sums; other threads add zeros), since in float32 the stopping test
// sits at the rounding floor and the backward's larger block would otherwise round the norm
// differently and stop at another step.
template <typename acc_t>
__device__ int64_t run_steps(acc_t* qs, acc_t* as, int D, int M, int64_t steps, acc_t tol2,
                             bool test, const Keep<acc_t>* keep, acc_t* red) {
  const Layout L = layout_of(D, M);
  const int BE = D * L.ld, MM = M * M;  // BE: a buffer's elements, padding included
  int64_t k = 0;
  for (; k < steps; ++k) {
    const acc_t* q = qs + ((k & 1) ? BE : 0);
    acc_t* qn = qs + ((k & 1) ? 0 : BE);
    gram(as, q, D, M, kForwardThreads, L);
    __syncthreads();
    if (test) {
      acc_t e2 = 0;
      if (threadIdx.x < kForwardThreads) {
        TileWalk rc(M, kForwardThreads);  // (row, col) of element i of A, without a division
        for (int i = threadIdx.x; i < MM; i += kForwardThreads, rc.next()) {
          const acc_t e = as[i] - (rc.row == rc.col ? acc_t(1) : acc_t(0));
          e2 += e * e;
        }
      }
      e2 = block_sum(e2, red);
      if (!(e2 > tol2)) break;  // block-uniform: every thread holds the same sum
    }
    const int64_t slot = keep != nullptr ? keep->slot(k) : -1;
    if (slot >= 0) {  // reads what gemm_nn reads; the barrier below orders the reuse
      acc_t* kq = keep->q + slot * BE;  // 64-bit offsets: the workspace spans many matrices
      acc_t* ka = keep->a + slot * MM;
      for (int i = threadIdx.x; i < BE; i += blockDim.x) kq[i] = q[i];
      for (int i = threadIdx.x; i < MM; i += blockDim.x) ka[i] = as[i];
    }
    if (!test && k + 1 == steps) break;
    gemm_nn(qn, q, as, static_cast<const acc_t*>(nullptr), static_cast<const acc_t*>(nullptr), q,
            acc_t(-0.5), acc_t(1.5), D, M, kForwardThreads, L);
    __syncthreads();
  }
  __syncthreads();  // a replay's last copies read qs and as, which the caller overwrites next
  return k;
}

// dst[0, n) = src[0, n) by the whole block: each thread issues kCopyBatch loads before storing
// any, so that a copy waits out about one memory latency per batch, not one per element. With a
// layout L, src is a row-major matrix of M columns and dst a D x M buffer (L.index).
constexpr int kCopyBatch = 8;

template <typename dst_t, typename src_t>
__device__ __forceinline__ void block_copy(dst_t* dst, const src_t* src, int n, int M = 0,
                                           Layout L = Layout{0, false}) {
  const int nt = blockDim.x;
  for (int base = threadIdx.x; base < n; base += kCopyBatch * nt) {
    dst_t v[kCopyBatch];
#pragma unroll
    for (int u = 0; u < kCopyBatch; ++u) {
      const int i = base + u * nt;
      v[u] = i < n ? to_acc<dst_t>(src[i]) : dst_t(0);
    }
#pragma unroll
    for (int u = 0; u < kCopyBatch; ++u) {
      const int i = base + u * nt;
      if (i < n) dst[L.index(i, M)] = v[u];
    }
  }
}

// A row-major D x M matrix into a D x M buffer and back (laid out by layout_of(D, M)).
template <typename scalar_t, typename acc_t>
__device__ void load_matrix(const scalar_t* src, acc_t* dst, int D, int M) {
  block_copy(dst, src, D * M, M, layout_of(D, M));
  __syncthreads();
}

template <typename scalar_t, typename acc_t>
__device__ void store_matrix(const acc_t* src, scalar_t* dst, int D, int M) {
  const Layout L = layout_of(D, M);
  for (int i = threadIdx.x; i < D * M; i += blockDim.x)
    dst[i] = from_acc<scalar_t>(src[L.index(i, M)]);
  __syncthreads();
}

// kShared: Q, Q' and A in dynamic shared memory (a template argument, so that the products
// load with LDS and 32-bit addresses rather than generic loads), else in the block's workspace.
template <typename scalar_t, typename acc_t, bool kShared>
__global__ void __launch_bounds__(kForwardThreads) forward_kernel(const scalar_t* __restrict__ q,
                                                           scalar_t* __restrict__ out, int64_t N,
                                                           int D, int M, int64_t max_steps,
                                                           acc_t tol2, acc_t* workspace) {
  extern __shared__ __align__(16) unsigned char smem_raw[];  // paired loads need 16 B
  __shared__ acc_t red[32];
  const int64_t DM = int64_t(D) * M, BE = D * buffer_ld(D, M);  // BE: a buffer's elements
  acc_t* buf = kShared ? reinterpret_cast<acc_t*>(smem_raw)
                       : workspace + blockIdx.x * (2 * BE + int64_t(M) * M);
  for (int64_t m = blockIdx.x; m < N; m += gridDim.x) {
    load_matrix(q + m * DM, buf, D, M);
    const int64_t k = run_steps(buf, buf + 2 * BE, D, M, max_steps, tol2, true,
                                static_cast<const Keep<acc_t>*>(nullptr), red);
    store_matrix(buf + ((k & 1) ? BE : 0), out + m * DM, D, M);
  }
}

// Replays r (orthogonal_checkpoints.cuh) into the slots, from the input matrix q0 (r.source < 0)
// or from a slot. keep: the block's Keep in shared memory (the block-uniform values of the rarely
// taken replays stay out of the registers of the backward's step loop).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void replay(const scalar_t* q0, Keep<acc_t>* keep, acc_t* qs, acc_t* as,
                                       int D, int M, acc_t tol2, const BjorckReplay& r, acc_t* red) {
  const int be = D * static_cast<int>(buffer_ld(D, M));  // a buffer's elements
  if (r.source < 0)
    block_copy(qs, q0, D * M, M, layout_of(D, M));
  else  // kept in the buffers' layout
    block_copy(qs, keep->q + r.source * be, be);
  if (threadIdx.x == 0) keep->run = r;
  __syncthreads();
  run_steps(qs, as, D, M, r.steps, tol2, false, keep, red);
}

// Working buffers of the backward: Q double buffer and A (the forward's), then G, G', S,
// S + S^T and, with kPrefetch, a second A (the walk back loads step j - 1's Q and A while it
// computes step j). In shared memory when they fit, else in the block's workspace slice.
__host__ __device__ inline int64_t backward_buffer_elements(int64_t D, int64_t M) {
  return 4 * D * buffer_ld(D, M) + (kPrefetch ? 4 : 3) * M * M;
}

// One step of the walk back through Q_{j+1} = 1.5 Q_j - 0.5 Q_j A_j, from Q_j (q) and A_j (a):
// gn = 1.5 G - 0.5 (G A + Q (S + S^T)) with S = Q^T G. Ends with a barrier.
template <typename acc_t>
__device__ __forceinline__ void backward_step(const acc_t* q, const acc_t* a, const acc_t* g,
                                              acc_t* gn, acc_t* s, acc_t* ssym, int D, int M) {
  const int mm = M * M;
  const Layout L = layout_of(D, M);
  gemm_tn(s, q, g, D, M, blockDim.x, L);  // S = Q_j^T G
  __syncthreads();
  TileWalk rc(M, blockDim.x);  // (row, col) of element i of S
  for (int i = threadIdx.x; i < mm; i += blockDim.x, rc.next()) ssym[i] = s[i] + s[rc.col * M + rc.row];
  __syncthreads();
  gemm_nn(gn, g, a, q, ssym, g, acc_t(-0.5), acc_t(1.5), D, M, blockDim.x, L);
  __syncthreads();
}

// The padded build's shared-memory backward spilled 32 bytes at the 80 registers ptxas chose for
// it unbounded (CUDA 13.0, sm_90); bounded to the kBlocksPerSm it runs at, it takes 101 and
// spills nothing. A minimum of 0 is no bound: the other builds' PTX is unchanged.
template <typename scalar_t, typename acc_t, bool kShared>
__global__ void __launch_bounds__(kBackwardThreads, kShared && kPad > 0 ? kBlocksPerSm : 0)
    backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ q,
                    scalar_t* __restrict__ grad_q, int64_t N, int D, int M, int64_t max_steps,
                    acc_t tol2, acc_t* workspace) {
  extern __shared__ __align__(16) unsigned char smem_raw[];  // paired loads need 16 B
  __shared__ acc_t red[32];
  // Block-uniform, in shared memory rather than in every thread's registers: which steps are kept
  // and the schedule of the walk back (orthogonal_checkpoints.cuh).
  __shared__ Keep<acc_t> keep;
  __shared__ BjorckCheckpoints plan;
  // 64-bit: workspace offsets. DM: a matrix's elements; BE: a D x M buffer's, padding included
  const int64_t DM = int64_t(D) * M, MM = int64_t(M) * M, BE = D * buffer_ld(D, M);
  const int64_t slots = bjorck_slots(max_steps);
  acc_t* keep_q = workspace + blockIdx.x * (slots * (BE + MM) +
                                            (kShared ? 0 : backward_buffer_elements(D, M)));
  acc_t* keep_a = keep_q + slots * BE;
  acc_t* qs = kShared ? reinterpret_cast<acc_t*>(smem_raw) : keep_a + slots * MM;
  acc_t* as = qs + 2 * BE;
  acc_t* g = as + MM;
  acc_t* gn = g + BE;
  acc_t* s = gn + BE;
  acc_t* ssym = s + MM;
  acc_t* as2 = ssym + MM;
  const int be = static_cast<int>(BE), mm = M * M;  // within one matrix
  for (int64_t m = blockIdx.x; m < N; m += gridDim.x) {
    block_copy(qs, q + m * DM, D * M, M, layout_of(D, M));
    if (threadIdx.x == 0) keep = {keep_q, keep_a, slots, bjorck_rerun(max_steps)};
    __syncthreads();
    const int64_t k = run_steps(qs, as, D, M, max_steps, tol2, true, &keep, red);
    load_matrix(grad + m * DM, g, D, M);
    if (threadIdx.x == 0) plan = BjorckCheckpoints(k, slots);
    __syncthreads();
    if (kPrefetch && kShared && plan.direct()) {
      // Q_{j-1} and A_{j-1} land in the other pair of buffers while step j computes, so the
      // workspace's latency hides behind the products (asynchronous copies on sm_80+).
      auto prefetch = [&](acc_t* q_dst, acc_t* a_dst, int64_t j) {
        copy_async_block(q_dst, keep_q + j * BE, be);
        copy_async_block(a_dst, keep_a + j * MM, mm);
      };
      acc_t *q_cur = qs, *a_cur = as, *q_next = qs + BE, *a_next = as2;
      if (k > 0) prefetch(q_cur, a_cur, k - 1);
      for (int64_t j = k - 1; j >= 0; --j) {
        wait_async_copies();
        __syncthreads();  // step j's copies visible; step j + 1 done with the other buffers
        if (j > 0) prefetch(q_next, a_next, j - 1);
        backward_step(q_cur, a_cur, g, gn, s, ssym, D, M);
        acc_t* tmp = g;
        g = gn, gn = tmp;
        tmp = q_cur, q_cur = q_next, q_next = tmp;
        tmp = a_cur, a_cur = a_next, a_next = tmp;
      }
    } else {
      for (int64_t j = k - 1; j >= 0; --j) {
        BjorckReplay r;  // past kBjorckSlots steps: refill the checkpoints that step j needs
        for (int64_t level = 0; level < plan.levels(); ++level)
          if (plan.refill(level, j, &r)) replay(q + m * DM, &keep, qs, as, D, M, tol2, r, red);
        if (plan.step_replay(j, &r)) replay(q + m * DM, &keep, qs, as, D, M, tol2, r, red);
        // Q_j and A_j back from the workspace (the barrier after the copies makes them visible)
        const int64_t slot = plan.slot(j);
        block_copy(qs, keep_q + slot * BE, be);
        block_copy(as, keep_a + slot * MM, mm);
        __syncthreads();
        backward_step(qs, as, g, gn, s, ssym, D, M);
        acc_t* tmp = g;
        g = gn;
        gn = tmp;
      }
    }
    store_matrix(g, grad_q + m * DM, D, M);
  }
}

// min(N, per_sm * num_sms) blocks, at least one.
int blocks_for(int64_t N, int per_sm, int num_sms) {
  const int64_t b = static_cast<int64_t>(num_sms) * per_sm;
  return static_cast<int>(N < b ? (N > 0 ? N : 1) : b);
}

bool int_indices_fit(int64_t D, int64_t M) {
  return D * buffer_ld(D, M) <= kMaxMatrixElements && M * M <= kMaxMatrixElements;
}

size_t forward_smem(int64_t D, int64_t M, size_t acc_size) {
  return static_cast<size_t>(2 * D * buffer_ld(D, M) + M * M) * acc_size;
}

}  // namespace

int bjorck_num_blocks(int64_t N, int num_sms) { return blocks_for(N, kBlocksPerSm, num_sms); }

int bjorck_forward_blocks(int64_t N, int64_t D, int64_t M, size_t acc_size,
                          size_t max_smem_bytes, int num_sms) {
  const bool in_smem = forward_smem(D, M, acc_size) <= max_smem_bytes;
  return blocks_for(N, in_smem ? kForwardBlocksPerSm : kBlocksPerSm, num_sms);
}

int64_t bjorck_forward_workspace(int64_t D, int64_t M, int blocks, size_t acc_size,
                                 size_t max_smem_bytes) {
  return forward_smem(D, M, acc_size) <= max_smem_bytes ? 0
                                                       : blocks * (2 * D * buffer_ld(D, M) + M * M);
}

int64_t bjorck_backward_workspace(int64_t D, int64_t M, int64_t max_steps, int blocks,
                                  size_t acc_size, size_t max_smem_bytes) {
  const int64_t slots = bjorck_slots(max_steps);
  const bool shared = size_t(backward_buffer_elements(D, M)) * acc_size <= max_smem_bytes;
  return blocks * (slots * (D * buffer_ld(D, M) + M * M) +
                  (shared ? 0 : backward_buffer_elements(D, M)));
}

template <typename scalar_t, typename acc_t>
cudaError_t bjorck_forward(const scalar_t* q, scalar_t* out, int64_t N, int64_t D, int64_t M,
                           int64_t max_steps, double tol, int blocks, acc_t* workspace,
                           size_t max_smem_bytes, cudaStream_t stream) {
  if (N == 0 || D * M == 0) return cudaSuccess;
  if (!int_indices_fit(D, M)) return cudaErrorInvalidValue;
  const int d32 = static_cast<int>(D), m32 = static_cast<int>(M);
  const size_t smem = forward_smem(D, M, sizeof(acc_t));
  const acc_t tol2 = static_cast<acc_t>(tol * tol);
  if (smem > max_smem_bytes) {
    if (workspace == nullptr) return cudaErrorInvalidValue;
    forward_kernel<scalar_t, acc_t, false><<<blocks, kForwardThreads, 0, stream>>>(
        q, out, N, d32, m32, max_steps, tol2, workspace);
    return cudaGetLastError();
  }
  return launch_with_smem(forward_kernel<scalar_t, acc_t, true>, blocks, kForwardThreads, smem,
                          stream, q, out, N, d32, m32, max_steps, tol2,
                          static_cast<acc_t*>(nullptr));
}

template <typename scalar_t, typename acc_t>
cudaError_t bjorck_backward(const scalar_t* grad, const scalar_t* q, scalar_t* grad_q, int64_t N,
                            int64_t D, int64_t M, int64_t max_steps, double tol, int blocks,
                            acc_t* workspace, size_t max_smem_bytes, cudaStream_t stream) {
  if (N == 0 || D * M == 0) return cudaSuccess;
  if (workspace == nullptr || !int_indices_fit(D, M)) return cudaErrorInvalidValue;
  const int d32 = static_cast<int>(D), m32 = static_cast<int>(M);
  const acc_t tol2 = static_cast<acc_t>(tol * tol);
  const size_t smem = size_t(backward_buffer_elements(D, M)) * sizeof(acc_t);
  if (smem > max_smem_bytes) {
    backward_kernel<scalar_t, acc_t, false><<<blocks, kBackwardThreads, 0, stream>>>(
        grad, q, grad_q, N, d32, m32, max_steps, tol2, workspace);
    return cudaGetLastError();
  }
  return launch_with_smem(backward_kernel<scalar_t, acc_t, true>, blocks, kBackwardThreads,
                          smem, stream, grad, q, grad_q, N, d32, m32, max_steps, tol2, workspace);
}

#define LVMFAST_BJ_INSTANTIATE(S, A)                                                            \
  template cudaError_t bjorck_forward<S, A>(const S*, S*, int64_t, int64_t, int64_t, int64_t,   \
                                            double, int, A*, size_t, cudaStream_t);             \
  template cudaError_t bjorck_backward<S, A>(const S*, const S*, S*, int64_t, int64_t, int64_t, \
                                             int64_t, double, int, A*, size_t, cudaStream_t);
LVMFAST_BJ_INSTANTIATE(float, float)
LVMFAST_BJ_INSTANTIATE(double, double)
LVMFAST_BJ_INSTANTIATE(__half, float)
LVMFAST_BJ_INSTANTIATE(__nv_bfloat16, float)
#undef LVMFAST_BJ_INSTANTIATE

}  // namespace kernels
}  // namespace lvmfast
