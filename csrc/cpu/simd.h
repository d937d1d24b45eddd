// Portable SIMD building blocks shared by the CPU kernels.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace lvmfast {

// One vector of 64 bytes: the compiler lowers it to one AVX-512 register, two AVX2 registers or
// four SSE registers, depending on the clone being compiled (LVMFAST_MULTIVERSION).
template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(64)));
  static constexpr int width = 64 / sizeof(T);
};

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
template <typename T>
LVMFAST_INLINE typename Simd<T>::vec load(const T* p) {
  typename Simd<T>::vec x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
template <typename T>
LVMFAST_INLINE void store(T* p, typename Simd<T>::vec x) {
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

}  // namespace lvmfast
