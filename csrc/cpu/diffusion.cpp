// CPU kernels of the diffusion family: the per-sample-t steps (q_sample, q_posterior, p_step),
// their shared backward, and forward_chain with its backward. The math is in csrc/diffusion.h,
// the random numbers (Philox-4x32 + Box-Muller, a pure function of seed, stream and element
// index) in kernels/diffusion.cuh.
//
// Threads split the flat element range into chunks of 64 elements (16 Philox groups); a chunk
// makes its 64 normals at once (Philox with AVX-512 or AVX2 intrinsics where the CPU has them;
// log, sqrt, sin/cos written with compiler vector types of 16 lanes with AVX-512 and 8 without,
// so that they vectorize on every x86 level), then walks the rows it overlaps, gathering each
// row's coefficients once. float64 uses libm for the normals: it is the accuracy path.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "../../kernels/diffusion.cuh"
#include "../diffusion.h"
#include "memory.h"
#include "simd.h"

namespace lvmfast {
namespace {

constexpr int kChunk = 64;            // elements per generator call
constexpr int kGroups = kChunk / 4;   // Philox groups per chunk

// The lanes of a Bytes-byte vector: 16 with AVX-512, 8 without (simd.h: GCC 12 lowers the math
// below on 64-byte vectors lane by lane through the stack in the AVX2 clone, where q_sample with
// drawn noise then ran at 0.55x the speed of the torch form).
template <int Bytes>
struct Lanes {
  typedef typename Simd<uint32_t, Bytes>::vec U;
  typedef typename Simd<int32_t, Bytes>::vec I;
  typedef typename Simd<float, Bytes>::vec F;
  typedef typename Simd<uint64_t, 2 * Bytes>::vec U64;  // U widened lane by lane
  static constexpr int n = Simd<float, Bytes>::width;
};

template <typename To, typename From>
LVMFAST_INLINE To bitcast(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "bitcast sizes");
  To r;
  std::memcpy(&r, &v, sizeof(To));
  return r;
}

// log(u) for u in [2^-32, 1]: u = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m) by a degree-9
// minimax polynomial in m - 1 (the classic single-precision scheme), ~1 ulp.
template <typename F, typename I>
LVMFAST_INLINE F vlog(F u) {
  const I bits = bitcast<I>(u);
  I e = ((bits >> 23) & 0xff) - 127;
  F m = bitcast<F>((bits & 0x7fffff) | 0x3f800000);  // [1, 2)
  const I big = m > 1.41421356f;                     // all ones where true
  m = big ? m * 0.5f : m;
  e -= big;
  const F f = m - 1.0f;
  const F z = f * f;
  F p = 7.0376836292e-2f + F{};
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const F ef = __builtin_convertvector(e, F);
  F y = f * z * p - 2.12194440e-4f * ef - 0.5f * z;
  return f + y + 0.693359375f * ef;
}

// sin and cos of 2 pi u for u in [0, 1): quadrant q = round(4u), r = 2 pi (u - q/4) in
// [-pi/4, pi/4], minimax polynomials there, then the quadrant's swap and signs.
template <typename F, typename I>
LVMFAST_INLINE void vsincos_turn(F u, F* s_out, F* c_out) {
  const I q = __builtin_convertvector(u * 4.0f + 0.5f, I);  // u >= 0: truncation is floor
  const F r = (u - __builtin_convertvector(q, F) * 0.25f) * 6.28318530717958648f;
  const F r2 = r * r;
  F s = -1.9515295891e-4f + F{};
  s = s * r2 + 8.3321608736e-3f;
  s = s * r2 - 1.6666654611e-1f;
  s = s * r2 * r + r;
  F c = 2.443315711809948e-5f + F{};
  c = c * r2 - 1.388731625493765e-3f;
  c = c * r2 + 4.166664568298827e-2f;
  c = c * r2 * r2 - 0.5f * r2 + 1.0f;
  const I swap = (q & 1) != 0;
  F sin_v = swap ? c : s;
  F cos_v = swap ? s : c;
  sin_v = (q & 2) != 0 ? -sin_v : sin_v;
  cos_v = ((q + 1) & 2) != 0 ? -cos_v : cos_v;
  *s_out = sin_v;
  *c_out = cos_v;
}

// sqrt(x) for x >= 0 as x / sqrt(x) from a bit-level first guess of 1 / sqrt(x) and three
// Newton steps (~1 ulp): plain arithmetic that vectorizes in every clone, where a per-lane
// sqrtf keeps its errno path and stays scalar. x = 0 gives 0.
template <typename F, typename I>
LVMFAST_INLINE F vsqrt(F x) {
  F y = bitcast<F>(0x5f3759df - (bitcast<I>(x) >> 1));
  const F half_x = 0.5f * x;
  y = y * (1.5f - half_x * y * y);
  y = y * (1.5f - half_x * y * y);
  y = y * (1.5f - half_x * y * y);
  return x * y;
}

// Philox words of the kGroups groups g0 .. g0 + 15 of stream `stream`: words[k][l] is word k of
// group g0 + l. The implementation is chosen once at load (pick_philox): Philox needs a
// 32 x 32 -> 64-bit multiply per lane (vpmuludq), which compilers do not find from generic vector
// code, so AVX-512 and AVX2 have intrinsics; every version gives the same words.
typedef void (*PhiloxFn)(uint64_t seed, uint32_t stream, uint64_t g0, uint32_t words[4][kGroups]);

// The counters of the n groups g0 .. g0 + n - 1: (g0 + l as two words, stream, 0).
template <int Bytes>
LVMFAST_INLINE void philox_setup(uint32_t stream, uint64_t g0, typename Lanes<Bytes>::U c[4]) {
  typedef typename Lanes<Bytes>::U U;
  U iota;
  for (int l = 0; l < Lanes<Bytes>::n; ++l) iota[l] = static_cast<uint32_t>(l);
  const uint32_t lo = static_cast<uint32_t>(g0);
  c[0] = lo + iota;
  c[1] = static_cast<uint32_t>(g0 >> 32) + U{};
  c[1] -= (U)(c[0] < lo);  // carry into the high word (the compare gives all ones where it wrapped)
  c[2] = stream + U{};
  c[3] = U{};
}

void philox_generic(uint64_t seed, uint32_t stream, uint64_t g0, uint32_t words[4][kGroups]) {
  typedef Lanes<64>::U U;
  typedef Lanes<64>::U64 U64;
  static_assert(Lanes<64>::n == kGroups, "one vector of groups");
  U c[4];
  philox_setup<64>(stream, g0, c);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const U64 p0 = __builtin_convertvector(c[0], U64) * 0xD2511F53ull;
    const U64 p1 = __builtin_convertvector(c[2], U64) * 0xCD9E8D57ull;
    const U hi0 = __builtin_convertvector(p0 >> 32, U), lo0 = __builtin_convertvector(p0, U);
    const U hi1 = __builtin_convertvector(p1 >> 32, U), lo1 = __builtin_convertvector(p1, U);
    c[0] = hi1 ^ c[1] ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c[3] ^ k1;
    c[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  std::memcpy(words, c, sizeof(c));
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) void philox_avx512(uint64_t seed, uint32_t stream, uint64_t g0,
                                                        uint32_t words[4][kGroups]) {
  Lanes<64>::U c[4];
  philox_setup<64>(stream, g0, c);
  __m512i x[4];
  std::memcpy(x, c, sizeof(x));
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53u), m1 = _mm512_set1_epi64(0xCD9E8D57u);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    // even lanes multiply in place, odd lanes after a shift; blend the halves back together
    const __m512i e0 = _mm512_mul_epu32(x[0], m0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(x[0], 32), m0);
    const __m512i e1 = _mm512_mul_epu32(x[2], m1), o1 = _mm512_mul_epu32(_mm512_srli_epi64(x[2], 32), m1);
    const __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, e0, _mm512_slli_epi64(o0, 32));
    const __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e0, 32), o0);
    const __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, e1, _mm512_slli_epi64(o1, 32));
    const __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e1, 32), o1);
    x[0] = _mm512_xor_si512(_mm512_xor_si512(hi1, x[1]), _mm512_set1_epi32(static_cast<int>(k0)));
    x[1] = lo1;
    x[2] = _mm512_xor_si512(_mm512_xor_si512(hi0, x[3]), _mm512_set1_epi32(static_cast<int>(k1)));
    x[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  std::memcpy(words, x, sizeof(x));
}

// The same rounds on two 8-lane halves, interleaved so that each multiply's latency is hidden
// behind the other half's.
__attribute__((target("avx2"))) void philox_avx2(uint64_t seed, uint32_t stream, uint64_t g0,
                                                   uint32_t words[4][kGroups]) {
  constexpr int kHalves = kGroups / Lanes<32>::n;
  __m256i x[kHalves][4];
  for (int h = 0; h < kHalves; ++h) {
    Lanes<32>::U c[4];
    philox_setup<32>(stream, g0 + h * Lanes<32>::n, c);
    std::memcpy(x[h], c, sizeof(c));
  }
  const __m256i m0 = _mm256_set1_epi64x(0xD2511F53u), m1 = _mm256_set1_epi64x(0xCD9E8D57u);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int h = 0; h < kHalves; ++h) {
      __m256i* v = x[h];
      const __m256i e0 = _mm256_mul_epu32(v[0], m0), o0 = _mm256_mul_epu32(_mm256_srli_epi64(v[0], 32), m0);
      const __m256i e1 = _mm256_mul_epu32(v[2], m1), o1 = _mm256_mul_epu32(_mm256_srli_epi64(v[2], 32), m1);
      const __m256i lo0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(e0, 32), o0, 0xAA);
      const __m256i lo1 = _mm256_blend_epi32(e1, _mm256_slli_epi64(o1, 32), 0xAA);
      const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(e1, 32), o1, 0xAA);
      v[0] = _mm256_xor_si256(_mm256_xor_si256(hi1, v[1]), key0);
      v[1] = lo1;
      v[2] = _mm256_xor_si256(_mm256_xor_si256(hi0, v[3]), key1);
      v[3] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int h = 0; h < kHalves; ++h)
    for (int k = 0; k < 4; ++k)
      std::memcpy(words[k] + h * Lanes<32>::n, &x[h][k], sizeof(__m256i));
}

// By instruction set, and by the vector width the kernels were told to use (LVMFAST_CPU_VECTOR_BYTES,
// simd.h), so that one machine's tests run two of the three versions.
PhiloxFn pick_philox() {
  __builtin_cpu_init();
  if (wide_vectors()) return __builtin_cpu_supports("avx512f") ? &philox_avx512 : &philox_generic;
  return __builtin_cpu_supports("avx2") ? &philox_avx2 : &philox_generic;
}
#else
PhiloxFn pick_philox() { return &philox_generic; }
#endif

const PhiloxFn philox = pick_philox();

// The 64 normals of stream `stream` for the chunk of groups g0 .. g0 + 15: out[16 k + l] is
// normal k of group g0 + l (the element order of kernels/diffusion.cuh), in Bytes-byte vectors.
template <int Bytes>
LVMFAST_INLINE void normals_chunk_impl(uint64_t seed, uint32_t stream, uint64_t g0, float* out) {
  typedef typename Lanes<Bytes>::U U;
  typedef typename Lanes<Bytes>::I I;
  typedef typename Lanes<Bytes>::F F;
  alignas(64) uint32_t words[4][kGroups];
  philox(seed, stream, g0, words);
  for (int l0 = 0; l0 < kGroups; l0 += Lanes<Bytes>::n) {
    U c[4];
    for (int k = 0; k < 4; ++k) std::memcpy(&c[k], words[k] + l0, sizeof(U));
    const F u1a = __builtin_convertvector(bitcast<I>(c[0] >> 1), F) * 4.656612873077393e-10f + 2.3283064365386963e-10f;
    const F u2a = __builtin_convertvector(bitcast<I>(c[1] >> 8), F) * 5.960464477539063e-08f;
    const F u1b = __builtin_convertvector(bitcast<I>(c[2] >> 1), F) * 4.656612873077393e-10f + 2.3283064365386963e-10f;
    const F u2b = __builtin_convertvector(bitcast<I>(c[3] >> 8), F) * 5.960464477539063e-08f;
    const F ra = vsqrt<F, I>(-2.0f * vlog<F, I>(u1a)), rb = vsqrt<F, I>(-2.0f * vlog<F, I>(u1b));
    F sa, ca, sb, cb;
    vsincos_turn<F, I>(u2a, &sa, &ca);
    vsincos_turn<F, I>(u2b, &sb, &cb);
    const F n[4] = {ra * ca, ra * sa, rb * cb, rb * sb};
    for (int k = 0; k < 4; ++k) std::memcpy(out + k * kGroups + l0, &n[k], sizeof(F));
  }
}

template <int Bytes>
LVMFAST_INLINE void normals_chunk_impl(uint64_t seed, uint32_t stream, uint64_t g0, double* out) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  alignas(64) uint32_t c[4][kGroups];
  philox(seed, stream, g0, c);
  for (int l = 0; l < kGroups; ++l) {
    const double ra = std::sqrt(-2.0 * std::log(rng::uniform_open0_d(c[0][l])));
    const double rb = std::sqrt(-2.0 * std::log(rng::uniform_open0_d(c[2][l])));
    const double ta = kTwoPi * rng::uniform_turn_d(c[1][l]), tb = kTwoPi * rng::uniform_turn_d(c[3][l]);
    out[l] = ra * std::cos(ta);
    out[kGroups + l] = ra * std::sin(ta);
    out[2 * kGroups + l] = rb * std::cos(tb);
    out[3 * kGroups + l] = rb * std::sin(tb);
  }
}

// ---------------------------------------------------------------- per-sample-t rows
template <typename T>
struct RowsArgs {
  const T* x;
  const T* y;          // nullptr: no second input
  const T* noise;      // given noise, or nullptr
  bool generate;       // make the noise from seed (stream 0)
  uint64_t seed;
  const int64_t* t;
  const T* coefs;      // (T, ncols)
  int ncols;
  int noise_col;       // < 0: no noise term
  bool noise_only_t_positive;
  T* out;
  T* noise_out;        // receives generated noise, or nullptr
  int64_t D, N;
};

template <bool HasY, bool HasNoise, bool Stream, int Bytes, typename T>
LVMFAST_INLINE void combine(const T* x, const T* y, const T* n, T* out, int64_t len, T c0, T c1,
                            T cn) {
  using V = typename Simd<T, Bytes>::vec;
  constexpr int W = Simd<T, Bytes>::width;
  auto value = [&](int64_t i) {
    T v = c0 * x[i];
    if (HasY) v += c1 * y[i];
    if (HasNoise) v += cn * n[i];
    return v;
  };
  int64_t i = 0;
  if (Stream) {
    for (; i < len && (reinterpret_cast<uintptr_t>(out + i) & 63) != 0; ++i) out[i] = value(i);
    for (; i + W <= len; i += W) {
      V v = c0 * load<T, Bytes>(x + i);
      if (HasY) v += c1 * load<T, Bytes>(y + i);
      if (HasNoise) v += cn * load<T, Bytes>(n + i);
      stream_copy(out + i, reinterpret_cast<const T*>(&v), W);
    }
  }
  for (; i < len; ++i) out[i] = value(i);
}

template <bool Stream, int Bytes, typename T>
LVMFAST_INLINE void combine_row(const RowsArgs<T>& a, const T* n, int64_t e, int64_t len,
                                const T* cf, bool noisy, T cn) {
  if (a.y != nullptr) {
    if (noisy) combine<true, true, Stream, Bytes>(a.x + e, a.y + e, n + e, a.out + e, len, cf[0], cf[1], cn);
    else combine<true, false, Stream, Bytes>(a.x + e, a.y + e, n, a.out + e, len, cf[0], cf[1], cn);
  } else {
    if (noisy) combine<false, true, Stream, Bytes>(a.x + e, a.y, n + e, a.out + e, len, cf[0], T(0), cn);
    else combine<false, false, Stream, Bytes>(a.x + e, a.y, n, a.out + e, len, cf[0], T(0), cn);
  }
}

template <typename T, int Bytes>
LVMFAST_INLINE void rows_chunks_impl(const RowsArgs<T>& a, int64_t c_begin, int64_t c_end) {
  alignas(64) T buf[kChunk];
  const bool has_noise = a.noise_col >= 0;
  const bool stream = a.N * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int64_t e0 = c * kChunk, e1 = std::min<int64_t>(e0 + kChunk, a.N);
    const T* n = nullptr;  // indexed by flat element
    if (has_noise && a.generate) {
      normals_chunk_impl<Bytes>(a.seed, 0u, static_cast<uint64_t>(c) * kGroups, buf);
      n = buf - e0;
      if (a.noise_out) std::memcpy(a.noise_out + e0, buf, sizeof(T) * (e1 - e0));
    } else if (has_noise) {
      n = a.noise;
    }
    int64_t b = e0 / a.D;
    for (int64_t e = e0; e < e1; ++b) {
      const int64_t end = std::min<int64_t>((b + 1) * a.D, e1);
      const int64_t tb = a.t[b];
      const T* cf = a.coefs + tb * a.ncols;
      const bool noisy = has_noise && (!a.noise_only_t_positive || tb > 0);
      const T cn = noisy ? cf[a.noise_col] : T(0);
      if (stream) combine_row<true, Bytes>(a, n, e, end - e, cf, noisy, cn);
      else combine_row<false, Bytes>(a, n, e, end - e, cf, noisy, cn);
      e = end;
    }
  }
  if (stream) stream_fence();
}

LVMFAST_MULTIVERSION void rows_chunks(const RowsArgs<float>& a, int64_t c0, int64_t c1) {
  if (wide_vectors()) rows_chunks_impl<float, 64>(a, c0, c1);
  else rows_chunks_impl<float, 32>(a, c0, c1);
}
LVMFAST_MULTIVERSION void rows_chunks(const RowsArgs<double>& a, int64_t c0, int64_t c1) {
  if (wide_vectors()) rows_chunks_impl<double, 64>(a, c0, c1);
  else rows_chunks_impl<double, 32>(a, c0, c1);
}

// ---------------------------------------------------------------- forward_chain
template <typename T, int Bytes>
LVMFAST_INLINE void chain_forward_impl(const T* x, const T* coefs, uint64_t seed, T* out,
                                       int64_t T_, int64_t N, int64_t c_begin,
                                       int64_t c_end) {
  alignas(64) T z[kChunk], eps[kChunk];
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int64_t e0 = c * kChunk, len = std::min<int64_t>(kChunk, N - e0);
    std::fill(z, z + kChunk, T(0));
    std::memcpy(z, x + e0, sizeof(T) * len);
    for (int64_t i = 0; i < T_; ++i) {
      normals_chunk_impl<Bytes>(seed, static_cast<uint32_t>(i), static_cast<uint64_t>(c) * kGroups, eps);
      const T a = coefs[2 * i], s = coefs[2 * i + 1];
      for (int k = 0; k < kChunk; ++k) z[k] = a * z[k] + s * eps[k];
      std::memcpy(out + i * N + e0, z, sizeof(T) * len);
    }
  }
}

// acc: this thread's (T, 2) accumulators in double.
template <typename T, int Bytes>
LVMFAST_INLINE void chain_backward_impl(const T* grad, const T* x, const T* coefs,
                                        uint64_t seed, const T* out, T* grad_x,
                                        double* acc, int64_t T_, int64_t N,
                                        int64_t c_begin, int64_t c_end) {
  alignas(64) T adj[kChunk], eps[kChunk], prev[kChunk], g[kChunk];
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int64_t e0 = c * kChunk, len = std::min<int64_t>(kChunk, N - e0);
    std::fill(adj, adj + kChunk, T(0));
    std::fill(prev, prev + kChunk, T(0));
    std::fill(g, g + kChunk, T(0));
    for (int64_t i = T_ - 1; i >= 0; --i) {
      std::memcpy(g, grad + i * N + e0, sizeof(T) * len);
      std::memcpy(prev, i > 0 ? out + (i - 1) * N + e0 : x + e0, sizeof(T) * len);
      normals_chunk_impl<Bytes>(seed, static_cast<uint32_t>(i), static_cast<uint64_t>(c) * kGroups, eps);
      T s0 = 0, s1 = 0;
      for (int k = 0; k < kChunk; ++k) {  // padding lanes carry zeros (g, prev = 0 there)
        adj[k] += g[k];
        s0 += adj[k] * prev[k];
        s1 += k < len ? adj[k] * eps[k] : T(0);
      }
      acc[2 * i] += s0;
      acc[2 * i + 1] += s1;
      const T a = coefs[2 * i];
      for (int k = 0; k < kChunk; ++k) adj[k] *= a;
    }
    std::memcpy(grad_x + e0, adj, sizeof(T) * len);
  }
}

LVMFAST_MULTIVERSION void chain_forward(const float* x, const float* coefs, uint64_t seed,
                                        float* out, int64_t T_, int64_t N, int64_t c0,
                                        int64_t c1) {
  if (wide_vectors()) chain_forward_impl<float, 64>(x, coefs, seed, out, T_, N, c0, c1);
  else chain_forward_impl<float, 32>(x, coefs, seed, out, T_, N, c0, c1);
}
LVMFAST_MULTIVERSION void chain_forward(const double* x, const double* coefs,
                                        uint64_t seed, double* out, int64_t T_,
                                        int64_t N, int64_t c0, int64_t c1) {
  if (wide_vectors()) chain_forward_impl<double, 64>(x, coefs, seed, out, T_, N, c0, c1);
  else chain_forward_impl<double, 32>(x, coefs, seed, out, T_, N, c0, c1);
}
LVMFAST_MULTIVERSION void chain_backward(const float* grad, const float* x,
                                         const float* coefs, uint64_t seed,
                                         const float* out, float* grad_x, double* acc,
                                         int64_t T_, int64_t N, int64_t c0, int64_t c1) {
  if (wide_vectors()) chain_backward_impl<float, 64>(grad, x, coefs, seed, out, grad_x, acc, T_, N, c0, c1);
  else chain_backward_impl<float, 32>(grad, x, coefs, seed, out, grad_x, acc, T_, N, c0, c1);
}
LVMFAST_MULTIVERSION void chain_backward(const double* grad, const double* x,
                                         const double* coefs, uint64_t seed,
                                         const double* out, double* grad_x, double* acc,
                                         int64_t T_, int64_t N, int64_t c0, int64_t c1) {
  if (wide_vectors()) chain_backward_impl<double, 64>(grad, x, coefs, seed, out, grad_x, acc, T_, N, c0, c1);
  else chain_backward_impl<double, 32>(grad, x, coefs, seed, out, grad_x, acc, T_, N, c0, c1);
}

// ---------------------------------------------------------------- glue
int64_t num_chunks(int64_t N) { return (N + kChunk - 1) / kChunk; }

// forward_chain chunks per thread task: at least ~16K generated normals (T per element).
int64_t chain_grain(int64_t T) { return std::max<int64_t>(1, 256 / std::max<int64_t>(T, 1)); }

// ValueError for a t outside [0, T - 1] (on the CPU the check costs one pass over B longs).
void check_t_range(const char* op, const at::Tensor& t, int64_t T) {
  const int64_t* p = t.data_ptr<int64_t>();
  for (int64_t b = 0; b < t.numel(); ++b)
    TORCH_CHECK_VALUE(p[b] >= 0 && p[b] < T, op, ": t must lie in [0, ", T - 1, "] (T = ", T,
                      "), got t[", b, "] = ", p[b]);
}

uint64_t read_seed(const at::Tensor& seed) {
  return static_cast<uint64_t>(seed.contiguous().data_ptr<int64_t>()[0]);
}

template <typename T>
void run_rows(RowsArgs<T> a, bool needs_noise_randomness) {
  const int64_t chunks = num_chunks(a.N);
  // Threads only for work that outweighs waking them (tens of microseconds, and far more on a
  // loaded machine): 32K elements of plain passes (torch's own grain), 16K with generated noise
  // (~10x the work per element). A sampling step at B=256, D=64 stays on one thread.
  const int64_t grain = needs_noise_randomness ? 256 : 512;
  at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) { rows_chunks(a, c0, c1); });
}

std::tuple<at::Tensor, at::Tensor> q_sample_cpu(const at::Tensor& x0_in, const at::Tensor& t_in,
                                                const at::Tensor& coefs_in,
                                                const c10::optional<at::Tensor>& noise_in,
                                                const c10::optional<at::Tensor>& seed) {
  const char* op = "q_sample";
  diffusion_check_rows(op, "x0", x0_in, t_in, coefs_in, 2, /*allow_half=*/false);
  TORCH_CHECK_VALUE(noise_in.has_value() != seed.has_value(), op,
                    ": exactly one of noise and seed must be given");
  if (noise_in) diffusion_check_like(op, "noise", *noise_in, "x0", x0_in);
  if (seed) diffusion_check_seed(op, *seed, x0_in);
  const at::Tensor x0 = x0_in.contiguous(), t = t_in.contiguous(), coefs = coefs_in.contiguous();
  check_t_range(op, t, coefs.size(0));
  at::Tensor out = empty_for_writing(x0.sizes(), x0.options());
  at::Tensor noise = noise_in ? noise_in->contiguous() : at::Tensor();
  at::Tensor noise_out = noise_in ? at::empty({0}, x0.options()) : at::empty(x0.sizes(), x0.options());
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "q_sample_cpu", [&] {
    RowsArgs<scalar_t> a{x0.data_ptr<scalar_t>(), nullptr,
                         noise_in ? noise.data_ptr<scalar_t>() : nullptr, !noise_in,
                         seed ? read_seed(*seed) : 0, t.data_ptr<int64_t>(),
                         coefs.data_ptr<scalar_t>(), 2, 1, false, out.data_ptr<scalar_t>(),
                         noise_in ? nullptr : noise_out.data_ptr<scalar_t>(),
                         diffusion_row_size(x0), x0.numel()};
    run_rows(a, !noise_in);
  });
  return {out, noise_out};
}

std::tuple<at::Tensor, at::Tensor> q_posterior_cpu(const at::Tensor& x0_in, const at::Tensor& xt_in,
                                                   const at::Tensor& t_in, const at::Tensor& coefs_in) {
  const char* op = "q_posterior";
  diffusion_check_rows(op, "x0", x0_in, t_in, coefs_in, 3, false);
  diffusion_check_like(op, "xt", xt_in, "x0", x0_in);
  const at::Tensor x0 = x0_in.contiguous(), xt = xt_in.contiguous(), t = t_in.contiguous(),
                   coefs = coefs_in.contiguous();
  check_t_range(op, t, coefs.size(0));
  at::Tensor mean = empty_for_writing(x0.sizes(), x0.options());
  at::Tensor var = at::empty({x0.size(0)}, x0.options());
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "q_posterior_cpu", [&] {
    RowsArgs<scalar_t> a{x0.data_ptr<scalar_t>(), xt.data_ptr<scalar_t>(), nullptr, false, 0,
                         t.data_ptr<int64_t>(), coefs.data_ptr<scalar_t>(), 3, -1, false,
                         mean.data_ptr<scalar_t>(), nullptr, diffusion_row_size(x0), x0.numel()};
    run_rows(a, false);
    const int64_t* tp = t.data_ptr<int64_t>();
    const scalar_t* cp = coefs.data_ptr<scalar_t>();
    scalar_t* vp = var.data_ptr<scalar_t>();
    for (int64_t b = 0; b < x0.size(0); ++b) vp[b] = cp[3 * tp[b] + 2];
  });
  return {mean, var};
}

at::Tensor p_step_cpu(const at::Tensor& xt_in, const at::Tensor& eps_in, const at::Tensor& t_in,
                      const at::Tensor& coefs_in, const c10::optional<at::Tensor>& noise_in,
                      const c10::optional<at::Tensor>& seed) {
  const char* op = "p_step";
  diffusion_check_rows(op, "xt", xt_in, t_in, coefs_in, 3, false);
  diffusion_check_like(op, "eps_pred", eps_in, "xt", xt_in);
  TORCH_CHECK_VALUE(noise_in.has_value() != seed.has_value(), op,
                    ": exactly one of noise and seed must be given");
  if (noise_in) diffusion_check_like(op, "noise", *noise_in, "xt", xt_in);
  if (seed) diffusion_check_seed(op, *seed, xt_in);
  const at::Tensor xt = xt_in.contiguous(), eps = eps_in.contiguous(), t = t_in.contiguous(),
                   coefs = coefs_in.contiguous();
  check_t_range(op, t, coefs.size(0));
  at::Tensor noise = noise_in ? noise_in->contiguous() : at::Tensor();
  at::Tensor out = empty_for_writing(xt.sizes(), xt.options());
  AT_DISPATCH_FLOATING_TYPES(xt.scalar_type(), "p_step_cpu", [&] {
    RowsArgs<scalar_t> a{xt.data_ptr<scalar_t>(), eps.data_ptr<scalar_t>(),
                         noise_in ? noise.data_ptr<scalar_t>() : nullptr, !noise_in,
                         seed ? read_seed(*seed) : 0, t.data_ptr<int64_t>(),
                         coefs.data_ptr<scalar_t>(), 3, 2, true, out.data_ptr<scalar_t>(), nullptr,
                         diffusion_row_size(xt), xt.numel()};
    run_rows(a, !noise_in);
  });
  return out;
}

std::vector<at::Tensor> diffusion_backward_cpu(const at::Tensor& grad_in, const at::Tensor& t_in,
                                               const at::Tensor& coefs_in, at::IntArrayRef cols) {
  const char* op = "diffusion_backward";
  diffusion_check_rows(op, "grad", grad_in, t_in, coefs_in, coefs_in.dim() == 2 ? coefs_in.size(1) : -1, false);
  for (int64_t col : cols)
    TORCH_CHECK_VALUE(col >= 0 && col < coefs_in.size(1), op, ": column ", col, " outside coefs ",
                      coefs_in.sizes());
  const at::Tensor grad = grad_in.contiguous(), t = t_in.contiguous(), coefs = coefs_in.contiguous();
  check_t_range(op, t, coefs.size(0));
  std::vector<at::Tensor> outs;
  for (int64_t col : cols) {
    at::Tensor o = empty_for_writing(grad.sizes(), grad.options());
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "diffusion_backward_cpu", [&] {
      // a row op with x = grad, c0 = coefs[:, col]: shift the table pointer by col
      RowsArgs<scalar_t> a{grad.data_ptr<scalar_t>(), nullptr, nullptr, false, 0,
                           t.data_ptr<int64_t>(), coefs.data_ptr<scalar_t>() + col,
                           static_cast<int>(coefs.size(1)), -1, false, o.data_ptr<scalar_t>(),
                           nullptr, diffusion_row_size(grad), grad.numel()};
      run_rows(a, false);
    });
    outs.push_back(o);
  }
  return outs;
}

at::Tensor forward_chain_cpu(const at::Tensor& x_in, const at::Tensor& coefs_in, const at::Tensor& seed) {
  diffusion_check_chain("forward_chain", x_in, coefs_in, seed, false);
  const at::Tensor x = x_in.contiguous(), coefs = coefs_in.contiguous();
  const int64_t T = coefs.size(0), N = x.numel();
  std::vector<int64_t> shape{T};
  for (int64_t s : x.sizes()) shape.push_back(s);
  at::Tensor out = empty_for_writing(shape, x.options());
  const uint64_t key = read_seed(seed);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "forward_chain_cpu", [&] {
    at::parallel_for(0, num_chunks(N), chain_grain(T), [&](int64_t c0, int64_t c1) {
      chain_forward(x.data_ptr<scalar_t>(), coefs.data_ptr<scalar_t>(), key,
                    out.data_ptr<scalar_t>(), T, N, c0, c1);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> forward_chain_backward_cpu(const at::Tensor& grad_in,
                                                              const at::Tensor& x_in,
                                                              const at::Tensor& coefs_in,
                                                              const at::Tensor& seed,
                                                              const at::Tensor& out_in) {
  const char* op = "forward_chain_backward";
  diffusion_check_chain(op, x_in, coefs_in, seed, false);
  const int64_t T = coefs_in.size(0), N = x_in.numel();
  diffusion_check_chain_grads(op, grad_in, out_in, x_in, T);
  const at::Tensor grad = grad_in.contiguous(), x = x_in.contiguous(), coefs = coefs_in.contiguous(),
                   out = out_in.contiguous();
  at::Tensor grad_x = empty_for_writing(x.sizes(), x.options());
  const int nthreads = at::get_num_threads();
  std::vector<double> acc(static_cast<size_t>(nthreads) * 2 * T, 0.0);
  const uint64_t key = read_seed(seed);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "forward_chain_backward_cpu", [&] {
    at::parallel_for(0, num_chunks(N), chain_grain(T), [&](int64_t c0, int64_t c1) {
      double* mine = acc.data() + static_cast<size_t>(at::get_thread_num()) * 2 * T;
      chain_backward(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), coefs.data_ptr<scalar_t>(),
                     key, out.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(), mine, T, N, c0, c1);
    });
  });
  at::Tensor total = at::zeros({T, 2}, at::kDouble);
  double* tp = total.data_ptr<double>();
  for (int th = 0; th < nthreads; ++th)
    for (int64_t i = 0; i < 2 * T; ++i) tp[i] += acc[static_cast<size_t>(th) * 2 * T + i];
  return {grad_x, total.to(coefs.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmfast, CPU, m) {
  m.impl("q_sample", &q_sample_cpu);
  m.impl("q_posterior", &q_posterior_cpu);
  m.impl("p_step", &p_step_cpu);
  m.impl("diffusion_backward", &diffusion_backward_cpu);
  m.impl("forward_chain", &forward_chain_cpu);
  m.impl("forward_chain_backward", &forward_chain_backward_cpu);
}

}  // namespace lvmfast
