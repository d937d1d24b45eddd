// Portable SIMD building blocks shared by the CPU kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace lvmfast {

// One vector of 64 bytes (by default): the compiler lowers it to one AVX-512 register, two AVX2
// registers or four SSE registers, depending on the clone being compiled (LVMFAST_MULTIVERSION).
// Without AVX-512, GCC 12 lowers register blocks of 64-byte vectors badly (spills, broadcasts
// built element by element on the stack: Björck ran 145x slower on an AVX2-only EPYC than on an
// AVX-512 one), so kernels with such blocks also take Bytes = 32 there (wide_vectors()).
template <typename T, int Bytes = 64>
struct Simd {
  typedef T vec __attribute__((vector_size(Bytes)));
  static constexpr int width = Bytes / int(sizeof(T));
};

// Whether the kernels take 64-byte blocks: with AVX-512, unless LVMFAST_CPU_VECTOR_BYTES=32
// (or =64 to force them, as the tests do to check both kinds on one machine).
inline bool wide_vectors() {
  static const bool wide = [] {
    const char* env = std::getenv("LVMFAST_CPU_VECTOR_BYTES");
    if (env != nullptr && (std::strcmp(env, "32") == 0 || std::strcmp(env, "64") == 0))
      return std::strcmp(env, "64") == 0;
#if defined(__x86_64__) && defined(__GNUC__)
    return __builtin_cpu_supports("avx512f") != 0;
#else
    return true;
#endif
  }();
  return wide;
}

}  // namespace lvmfast

// Hot non-template entry points are compiled for AVX-512, AVX2 and baseline x86-64 and the
// best one is picked at load time, so one build runs well on any x86-64 machine.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LVMFAST_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LVMFAST_MULTIVERSION
#endif
// Inlined into each clone, so the helper is compiled for that clone's instruction set.
#define LVMFAST_INLINE inline __attribute__((always_inline))

namespace lvmfast {

// Unaligned vector load and store (memcpy: no aliasing or alignment assumptions; compiles to
// one vector move).
template <typename T, int Bytes = 64>
LVMFAST_INLINE typename Simd<T, Bytes>::vec load(const T* p) {
  typename Simd<T, Bytes>::vec x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
template <typename T, int Bytes = 64>
LVMFAST_INLINE void store(T* p, typename Simd<T, Bytes>::vec x) {
  std::memcpy(p, &x, sizeof(x));
}

// Outputs at least this large are written with non-temporal stores: they would not stay in the
// caches anyway, and streaming skips reading each output line before it is overwritten.
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// dst[0:n] = src[0:n], with 16-byte SSE streaming stores (present in every x86-64 clone) for the
// 16-byte aligned part of dst. Call stream_fence() before other threads read the results.
template <typename T>
LVMFAST_INLINE void stream_copy(T* dst, const T* src, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
  constexpr int64_t per = 16 / sizeof(T);
  for (; i + per <= n; i += per) {
    __m128 part;
    std::memcpy(&part, src + i, 16);
    _mm_stream_ps(reinterpret_cast<float*>(dst + i), part);
  }
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::memcpy(dst, src, sizeof(T) * n);
#endif
}

// Streamed stores are weakly ordered: publish them before returning to other threads.
inline void stream_fence() {
#if defined(__x86_64__) && defined(__GNUC__)
  _mm_sfence();
#endif
}

// Horizontal reductions as trees (halving the vector to 16 bytes, then lane by lane): a lane-by-lane
// chain of W dependent operations is the latency on a kernel's critical path.
template <typename T, int B, typename Op>
LVMFAST_INLINE T hreduce(typename Simd<T, B>::vec v, Op op) {
  static_assert(B == 32 || B == 64, "16-byte halves of a 32- or 64-byte vector");
  typedef T half_vec __attribute__((vector_size(32)));
  typedef T quarter_vec __attribute__((vector_size(16)));
  half_vec a;
  std::memcpy(&a, &v, 32);
  if constexpr (B == 64) {
    half_vec b;
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + 32, 32);
    a = op(a, b);
  }
  quarter_vec c, d;
  std::memcpy(&c, &a, 16);
  std::memcpy(&d, reinterpret_cast<const char*>(&a) + 16, 16);
  c = op(c, d);
  T s = c[0];
  for (size_t i = 1; i < 16 / sizeof(T); ++i) s = op(s, c[i]);
  return s;
}
template <typename T, int B>
LVMFAST_INLINE T hsum(typename Simd<T, B>::vec v) {
  return hreduce<T, B>(v, [](auto a, auto b) { return a + b; });
}
// Lanes that are NaN may be skipped: callers carry NaN on through their sums.
template <typename T, int B>
LVMFAST_INLINE T hmax(typename Simd<T, B>::vec v) {
  return hreduce<T, B>(v, [](auto a, auto b) { return a > b ? a : b; });
}

// The lane type of a vector type V (Simd<T, Bytes>::vec).
template <typename V>
using lane_t = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;

// f applied to each lane of x (the double paths: libm, exact).
template <typename V, typename F>
LVMFAST_INLINE V lanewise(V x, F f) {
  V y;
  for (size_t i = 0; i < sizeof(V) / sizeof(lane_t<V>); ++i) y[i] = f(x[i]);
  return y;
}

// exp for a vector of any width, accurate to ~2 ulp for float, using only arithmetic the
// compiler vectorizes: x = n ln2 + r, exp(r) by a polynomial, 2^n by exponent bits.
// Inputs below the underflow threshold (including -inf) give exactly 0. Double inputs are the
// accuracy path (tests, float64 users): exact libm exp.
template <typename V>
LVMFAST_INLINE V vexp(V x) {
  if constexpr (std::is_same_v<lane_t<V>, double>) {
    return lanewise(x, [](double v) { return std::exp(v); });
  } else {
    typedef int32_t VI __attribute__((vector_size(sizeof(V))));
    const VI lo = x < -87.0f;  // all ones where the result underflows
    x = x < -87.0f ? V{} - 87.0f : x;
    x = x > 88.0f ? V{} + 88.0f : x;
    V n = x * 1.44269504088896341f + 0.5f;
    VI ni = __builtin_convertvector(n, VI);
    ni -= (VI)(n < __builtin_convertvector(ni, V)) & 1;  // floor for negative n
    const V fn = __builtin_convertvector(ni, V);
    V r = x - fn * 0.693359375f;
    r = r + fn * 2.12194440e-4f;
    V p = 1.9875691500e-4f + V{};
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    VI bits = (ni + 127) << 23;
    V scale;
    std::memcpy(&scale, &bits, sizeof(V));
    V y = p * scale;
    VI ybits;
    std::memcpy(&ybits, &y, sizeof(V));
    ybits &= ~lo;
    std::memcpy(&y, &ybits, sizeof(V));
    return y;
  }
}

// tanh for a vector of any width: an odd Taylor polynomial (to x^15) below |x| = 0.5, where its
// truncation error is under 1e-8 relative, and 1 - 2 / (e^{2|x|} + 1) above, where the fraction
// is at most 0.54 so the subtraction loses no digits. Past |x| = 9.01 the fraction is under half
// an ulp of 1 and the result rounds to +-1 exactly, as libm's does (the clamp at 10 only keeps
// exp finite for huge or infinite x). At most 2 ulp; NaN stays NaN. (libm's scalar tanhf went
// through expm1f and was a quarter of the Sylvester flow's CPU time.) Double: libm.
template <typename V>
LVMFAST_INLINE V vtanh(V x) {
  if constexpr (std::is_same_v<lane_t<V>, double>) {
    return lanewise(x, [](double v) { return std::tanh(v); });
  } else {
    const V ax = x < 0.0f ? -x : x;
    const V e = vexp(2.0f * (ax < 10.0f ? ax : V{} + 10.0f));
    const V big = 1.0f - 2.0f / (e + 1.0f);
    const V x2 = ax * ax;
    V p = V{} - 929569.0f / 638512875.0f;
    p = p * x2 + 21844.0f / 6081075.0f;
    p = p * x2 - 1382.0f / 155925.0f;
    p = p * x2 + 62.0f / 2835.0f;
    p = p * x2 - 17.0f / 315.0f;
    p = p * x2 + 2.0f / 15.0f;
    p = p * x2 - 1.0f / 3.0f;
    const V small = ax + ax * x2 * p;
    const V t = ax < 0.5f ? small : big;
    const V signed_t = x < 0.0f ? -t : t;
    return x != x ? x : signed_t;
  }
}

// x[0:n] = tanh(x[0:n]), whole vectors; the ragged end goes through one zero-padded vector.
template <typename T, int Bytes = 64>
LVMFAST_INLINE void tanh_inplace(T* x, int64_t n) {
  constexpr int W = Simd<T, Bytes>::width;
  int64_t i = 0;
  for (; i + W <= n; i += W) store<T, Bytes>(x + i, vtanh(load<T, Bytes>(x + i)));
  if (i < n) {
    typename Simd<T, Bytes>::vec v{};
    std::memcpy(&v, x + i, sizeof(T) * (n - i));
    v = vtanh(v);
    std::memcpy(x + i, &v, sizeof(T) * (n - i));
  }
}

}  // namespace lvmfast
